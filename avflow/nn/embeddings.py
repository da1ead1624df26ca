"""Sinusoidal embeddings: token positions, continuous flow time and rotary position embeddings (RoPE)."""
import math

import jax
import jax.numpy as jnp


def sinusoidal_positions(n: int, d: int) -> jax.Array:
  """The VisAH `PositionalEncoding` table for positions `0..n-1`, shape `(n, d)`.

  Channel `2i` holds `sin(p * div_i)` and channel `2i+1` holds `cos(p * div_i)`, with
  `div_i = exp(-ln(1e4) * 2i / d)`, as the `pe` / `pe_context` buffers of the public code.
  """
  pos = jnp.arange(n, dtype=jnp.float32)[:, None]
  div = jnp.exp(jnp.arange(0, d, 2, dtype=jnp.float32) * (-math.log(10000.0) / d))
  angles = pos * div
  table = jnp.zeros((n, d), jnp.float32)
  table = table.at[:, 0::2].set(jnp.sin(angles))
  return table.at[:, 1::2].set(jnp.cos(angles[:, :d // 2]))


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0,
                       scale: float = 1000.0, sin_first: bool = False, freq_shift: float = 0.0) -> jax.Array:
  """Diffusion-style embedding `(B, dim)` of a continuous time `t (B,)` in [0, 1].

  `t` is first multiplied by `scale` (1000 by default, so that t in [0, 1] spans the range of
  the integer diffusion steps this embedding was designed for and its slowest frequencies
  still vary). Layout as in latent diffusion: `[cos(s*t*f_j), sin(s*t*f_j)]` with
  `f_j = max_period**(-j/(half - freq_shift))`, `half = dim // 2`; an odd `dim` gets one trailing
  zero. `sin_first=True, freq_shift=1` is the `SinusoidalPosEmb` of DDPM U-Nets (DAVIS):
  `[sin, cos]` with `f_j = max_period**(-j/(half - 1))`.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
  args = (scale * jnp.asarray(t, jnp.float32))[:, None] * freqs[None, :]
  parts = [jnp.sin(args), jnp.cos(args)] if sin_first else [jnp.cos(args), jnp.sin(args)]
  emb = jnp.concatenate(parts, axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def rotary_embedding(x: jax.Array, positions: jax.Array, num_heads: int, rope_dim: int,
                     base: float = 10000.0) -> jax.Array:
  """1-D rotary position embedding (RoPE, Su et al.) of queries or keys `x (B, L, H*Dh)` at `positions (L,)`.

  In each head, the first `rope_dim` channels rotate in pairs `(c_j, c_{j + rope_dim/2})`, j < rope_dim/2, by the
  angle `p · base**(-2j / rope_dim)` (the "rotate half" layout of GPT-NeoX and Stable Audio Open's transformer);
  the remaining `Dh - rope_dim` channels pass unchanged. A dot product of a query rotated at p and a key rotated
  at p' then depends on the positions only through p − p'.
  """
  b, length, inner = x.shape
  if inner % num_heads:
    raise ValueError(f"width {inner} is not divisible by {num_heads} heads")
  d_head = inner // num_heads
  if rope_dim % 2 or not 0 < rope_dim <= d_head:
    raise ValueError(f"rope_dim must be even and in (0, {d_head}] (the head width), got {rope_dim}")
  half = rope_dim // 2
  freqs = base**(-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(positions, jnp.float32)[:, None] * freqs[None, :]  # (L, half)
  cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
  heads = x.reshape(b, length, num_heads, d_head)
  x1, x2, rest = heads[..., :half], heads[..., half:rope_dim], heads[..., rope_dim:]
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1).astype(x.dtype)
  return rotated.reshape(b, length, inner)

"""Sinusoidal embeddings: token positions and continuous flow time."""
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

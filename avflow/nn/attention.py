"""Attention and feed-forward layers of the VisAH latent transformer.

Three layers, each mirroring one PyTorch layer of the public VisAH code so that weights
convert mechanically (a Flax `kernel` is the transposed PyTorch `weight`):

- `Attention`: the latent-diffusion `CrossAttention` used by the `BasicTransformerBlock`s
  (`to_q`, `to_k`, `to_v` without bias, `to_out` with bias, scale `d_head**-0.5`).
- `MultiheadAttention`: `torch.nn.MultiheadAttention` with one packed q/k/v projection
  (`in_proj_kernel` = `in_proj_weight.T`, `in_proj_bias`) and `out_proj`; used by the
  context encoder. Inputs are batch-first `(B, L, D)`.
- `GEGLUFeedForward`: `Linear(d, 2*hidden)` split into value and gate,
  `value * gelu(gate)` with the exact (erf) GELU, then `Linear(hidden, d)`.
- `BasicTransformerBlock`: the latent-diffusion block built from them (pre-LN self-attention, cross-attention,
  GEGLU); VisAH's latent transformer and, with rotary positions in its self-attention, the VAFlow DiT.
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow.nn.embeddings import rotary_embedding

_LN_EPS = 1e-5  # torch.nn.LayerNorm default


def layer_norm(name: str) -> nn.LayerNorm:
  """`torch.nn.LayerNorm` (eps 1e-5, two-pass variance)."""
  return nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, name=name)


def multi_head_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
  """Softmax attention of `q (B, Lq, H*Dh)` over `k (B, Lk, H*Dh)`, `v (B, Lk, H*Dv)`; scale `Dh**-0.5`.

  Returns the concatenated heads `(B, Lq, H*Dv)` (head-major channels, as `q`, `k` and `v`); the value width
  `Dv` may differ from `Dh`. The softmax runs in float32.
  """
  b, lq, inner = q.shape
  if inner % num_heads or v.shape[-1] % num_heads:
    raise ValueError(f"widths {inner} (query) and {v.shape[-1]} (value) are not divisible by {num_heads} heads")
  dh, dv = inner // num_heads, v.shape[-1] // num_heads
  q = q.reshape(b, lq, num_heads, dh)
  k = k.reshape(b, k.shape[1], num_heads, dh)
  v = v.reshape(b, v.shape[1], num_heads, dv)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * dh**-0.5
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
  return out.reshape(b, lq, num_heads * dv)


class Attention(nn.Module):
  """Multi-head (cross-)attention, the latent-diffusion `CrossAttention` of VisAH.

  `x (B, Lq, Dq)` attends to `context (B, Lk, Dk)` (to itself when `context` is None);
  the output has the width of `x`. PyTorch keys: `to_{q,k,v}.weight`, `to_out.0.{weight,bias}`.
  `rope_dim > 0` (self-attention only) rotates the first `rope_dim` channels of every query and key head by
  the token's position `0..Lq-1` (`avflow.nn.embeddings.rotary_embedding`, base `rope_base`).
  """
  heads: int
  dim_head: int
  rope_dim: int = 0
  rope_base: float = 10000.0

  @nn.compact
  def __call__(self, x: jax.Array, context: Optional[jax.Array] = None) -> jax.Array:
    if self.rope_dim and context is not None:
      raise ValueError("rotary positions (rope_dim > 0) are for self-attention; cross-attention got a context")
    context = x if context is None else context
    inner = self.heads * self.dim_head
    q = nn.Dense(inner, use_bias=False, name="to_q")(x)
    k = nn.Dense(inner, use_bias=False, name="to_k")(context)
    v = nn.Dense(inner, use_bias=False, name="to_v")(context)
    if self.rope_dim:
      positions = jnp.arange(x.shape[1])
      q, k = (rotary_embedding(a, positions, self.heads, self.rope_dim, self.rope_base) for a in (q, k))
    out = multi_head_attention(q, k, v, self.heads)
    return nn.Dense(x.shape[-1], name="to_out")(out)


class MultiheadAttention(nn.Module):
  """`torch.nn.MultiheadAttention` (no dropout, no masks) on batch-first inputs.

  `query (B, Lq, D)`, `key`/`value (B, Lk, D)`; `D` must be divisible by `num_heads`.
  The packed projection keeps PyTorch's row order q, k, v: `in_proj_kernel[:, :D]` projects
  the query, `[:, D:2D]` the key, `[:, 2D:]` the value.
  """
  num_heads: int

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
    d = query.shape[-1]
    kernel = self.param("in_proj_kernel", nn.initializers.xavier_uniform(), (d, 3 * d))
    bias = self.param("in_proj_bias", nn.initializers.zeros_init(), (3 * d,))
    q = query @ kernel[:, :d] + bias[:d]
    k = key @ kernel[:, d:2 * d] + bias[d:2 * d]
    v = value @ kernel[:, 2 * d:] + bias[2 * d:]
    out = multi_head_attention(q, k, v, self.num_heads)
    return nn.Dense(d, name="out_proj")(out)


class GEGLUFeedForward(nn.Module):
  """GEGLU feed-forward `d -> 2*hidden -> (value * gelu(gate)) -> d` (exact erf GELU).

  PyTorch keys: `net.0.proj.{weight,bias}` (`proj`) and `net.2.{weight,bias}` (`out`).
  """
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    value, gate = jnp.split(nn.Dense(2 * self.hidden, name="proj")(x), 2, axis=-1)
    return nn.Dense(x.shape[-1], name="out")(value * nn.gelu(gate, approximate=False))


class BasicTransformerBlock(nn.Module):
  """Latent-diffusion `BasicTransformerBlock`: pre-LN self-attn, cross-attn to `context (B, N, Dc)`, GEGLU (4x).

  `rope_dim > 0` gives the self-attention rotary positions (`Attention`); 0 is VisAH's block, which has none.
  """
  n_heads: int
  d_head: int
  rope_dim: int = 0
  rope_base: float = 10000.0

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    self_attention = Attention(self.n_heads, self.d_head, self.rope_dim, self.rope_base, name="attn1")
    x = x + self_attention(layer_norm("norm1")(x))
    x = x + Attention(self.n_heads, self.d_head, name="attn2")(layer_norm("norm2")(x), context)
    return x + GEGLUFeedForward(4 * x.shape[-1], name="ff")(layer_norm("norm3")(x))

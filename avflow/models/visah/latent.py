"""The VisAH latent audio-visual transformer (`AV_Transformer` of the public VisAH code).

It sits at the bottleneck of the hybrid U-Net: audio tokens `x (B, T, C)` cross-attend to
context tokens (CLIP frame features) that first pass through a small transformer encoder.

    x_in = x
    x = proj_in(GroupNorm(x))                       # C -> inner = n_heads * d_head
    c = context_encoder(context_proj(context))      # context_dim -> inner, pre-LN layers
    c = [c, time_token]                             # optional, see below
    x = transformer_blocks(x, c)                    # self-attn, cross-attn to c, GEGLU
    return proj_out(x) + x_in                       # proj_out is zero-initialised

There is no positional encoding on the audio tokens (the public code registers one but does
not use it); the context encoder adds sinusoidal positions to its queries and keys only.

Time token (VisAH-FM). When `time_token (B, inner)` is given it is appended as one extra
context token *after* the context encoder, so the encoder (and the public weights loaded
into it) is untouched and the token reaches every cross-attention unchanged.

Context attention (`cfg.context_attention`):
- "frames": each example's context encoder attends over its N frames.
- "legacy_batch_axis": the public code feeds `(B, N, D)` to `nn.MultiheadAttention` with
  `batch_first=False`, so attention runs across the batch axis, separately for each frame
  index. With B=1 every frame attends only to itself (the encoder is a per-frame MLP) and
  with B>1 outputs depend on the batch composition. Needed for parity with the public weights.

GroupNorm uses 32 groups (eps 1e-6) as in the paper; when 32 does not divide C (small test
configs) it uses gcd(32, C) groups. LayerNorms use PyTorch's eps 1e-5.

Mapping to the PyTorch keys (prefix `model.latent_transformer.`). Flax `kernel` -> `weight`
with `.T` (for the 1x1 convs a `(1, in, out)` kernel becomes `(out, in, 1)`), GroupNorm and
LayerNorm `scale` -> `weight`, `bias` -> `bias`; `_{i}` in a Flax name -> `.{i}`:

    norm/{scale,bias}                          norm.{weight,bias}
    proj_in/{kernel,bias}                      proj_in.{weight,bias}
    context_proj/{kernel,bias}                 context_proj.{weight,bias}
    context_encoder_layers_{i}/...             context_transformer_encoder.layers.{i}....
      self_attn/in_proj_kernel                   self_attn.in_proj_weight (transposed)
      self_attn/in_proj_bias                     self_attn.in_proj_bias
      self_attn/out_proj/*                       self_attn.out_proj.*
      {linear1,linear2,norm1,norm2}/*            {linear1,linear2,norm1,norm2}.*
    transformer_blocks_{i}/...                 transformer_blocks.{i}....
      attn{1,2}/to_{q,k,v}/kernel                attn{1,2}.to_{q,k,v}.weight
      attn{1,2}/to_out/*                         attn{1,2}.to_out.0.*
      ff/proj/*                                  ff.net.0.proj.*
      ff/out/*                                   ff.net.2.*
      norm{1,2,3}/*                              norm{1,2,3}.*
    proj_out/{kernel,bias}                     proj_out.{weight,bias}

The PyTorch checkpoint also holds two persistent buffers that have no Flax parameter:
`pe.pe = sinusoidal_positions(5000, C)[None]` (unused) and
`pe_context.pe = sinusoidal_positions(5000, inner)[None]`.
"""
import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.nn.attention import BasicTransformerBlock, MultiheadAttention, layer_norm
from avflow.nn.demucs_layers import flax_conv
from avflow.nn.embeddings import sinusoidal_positions

CONTEXT_ATTENTION_MODES = ("frames", "legacy_batch_axis")
class ContextEncoderLayer(nn.Module):
  """Pre-LN DETR-style encoder layer (`normalize_before=True`, GELU, no dropout).

  `h = LN1(src)`; `src += MHA(q=k=h+pos, v=h)`; `src += linear2(gelu(linear1(LN2(src))))`.
  """
  num_heads: int
  ff_dim: int
  attention: str = "frames"

  @nn.compact
  def __call__(self, src: jax.Array, pos: jax.Array) -> jax.Array:
    h = layer_norm("norm1")(src)
    qk = h + pos
    if self.attention == "legacy_batch_axis":
      # (B, N, D) read as (sequence, batch, feature): attend over B for each frame index.
      qk, h = jnp.swapaxes(qk, 0, 1), jnp.swapaxes(h, 0, 1)
    out = MultiheadAttention(self.num_heads, name="self_attn")(qk, qk, h)
    if self.attention == "legacy_batch_axis":
      out = jnp.swapaxes(out, 0, 1)
    src = src + out
    h = nn.Dense(self.ff_dim, name="linear1")(layer_norm("norm2")(src))
    return src + nn.Dense(src.shape[-1], name="linear2")(nn.gelu(h, approximate=False))


class AVLatentTransformer(nn.Module):
  """VisAH latent transformer; `cfg` is `config.model.latent`, `in_channels` = C of `x`, `conv_impl` is
  `config.model.conv_impl`."""
  cfg: ml_collections.ConfigDict
  in_channels: int
  conv_impl: str = "auto"

  def setup(self):
    cfg = self.cfg
    if cfg.context_attention not in CONTEXT_ATTENTION_MODES:
      raise ValueError(f"unknown context_attention {cfg.context_attention!r}; "
                       f"expected one of {CONTEXT_ATTENTION_MODES}")
    inner = cfg.n_heads * cfg.d_head
    self.norm = nn.GroupNorm(num_groups=math.gcd(32, self.in_channels), epsilon=1e-6,
                             use_fast_variance=False)
    conv = functools.partial(flax_conv, impl=self.conv_impl)
    self.proj_in = nn.Conv(inner, kernel_size=(1,), conv_general_dilated=conv)
    self.context_proj = nn.Dense(inner)
    self.context_encoder_layers = [
        ContextEncoderLayer(cfg.context_heads, cfg.context_ff, cfg.context_attention)
        for _ in range(cfg.context_layers)]
    self.transformer_blocks = [
        BasicTransformerBlock(cfg.n_heads, cfg.d_head) for _ in range(cfg.depth)]
    self.proj_out = nn.Conv(self.in_channels, kernel_size=(1,), conv_general_dilated=conv,
                            kernel_init=nn.initializers.zeros_init(),
                            bias_init=nn.initializers.zeros_init())

  def encode_context(self, context: jax.Array) -> jax.Array:
    """`context (B, N, context_dim)` -> encoded context tokens `(B, N, inner)`."""
    c = self.context_proj(context)
    pos = sinusoidal_positions(c.shape[1], c.shape[2]).astype(c.dtype)
    return self._in_turn(self.context_encoder_layers, c, pos)

  def __call__(self, x: jax.Array, context: jax.Array,
               time_token: Optional[jax.Array] = None) -> jax.Array:
    """`x (B, T, C)`, `context (B, N, context_dim)`, `time_token (B, inner)` -> `(B, T, C)`."""
    x_in = x
    x = self.proj_in(self.norm(x))
    c = self.encode_context(context)
    if time_token is not None:
      if time_token.shape != (c.shape[0], c.shape[2]):
        raise ValueError(f"time_token must be {(c.shape[0], c.shape[2])}, got {time_token.shape}")
      c = jnp.concatenate([c, time_token[:, None, :].astype(c.dtype)], axis=1)
    x = self._in_turn(self.transformer_blocks, x, c)
    return self.proj_out(x) + x_in

  def _in_turn(self, layers, x: jax.Array, *args) -> jax.Array:
    """`x` through identical `layers` in turn, as one `lax.scan` over their stacked parameters: the compiled graph
    holds one layer instead of `len(layers)` (compile time). The parameters stay per layer (`{name}_{i}`)."""
    if self.is_initializing() or len(layers) == 1:
      for layer in layers:
        x = layer(x, *args)
      return x
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *(layer.variables["params"] for layer in layers))
    unbound = layers[0].clone(parent=None)
    return jax.lax.scan(lambda h, params: (unbound.apply({"params": params}, h, *args), None), x, stacked)[0]

"""The DAVIS Separation U-Net (Sec. 3.3, Fig. 2–3) in Flax, channels-last `(B, F, T, C)`.

    x    = init_conv([mixture, x_t])                          1x1 conv; the mixture is a conditioning channel
    temb = MLP(sinusoidal(1000 t))                            dim -> 4 dim (GELU), fed to every CA block
    down level i:  ResnetBlock -> TF attention -> time attention -> skip -> downsample
    FIM:           [tile(visual), x] -> ResnetBlock(visual + C -> C) -> full attention -> ResnetBlock
    up level i:    [x, skip] -> ResnetBlock -> TF attention -> time attention -> upsample
    out  = final_conv(final_res_block([x, init features]))   1 channel: the velocity (FM) or the noise (DDPM)

Blocks (the public DAVIS code; lucidrains' DDPM U-Net plus TF-GridNet's full-band time attention):
- `ResnetBlock`: two `Block`s (weight-standardised 3x3 conv, GroupNorm, SiLU), the first with the time FiLM
  `h·(1 + scale) + shift` between GroupNorm and SiLU, plus a 1x1 residual conv when the width changes.
- TF attention: `Residual(PreNorm(LinearAttention))`, the efficient attention of Shen et al. over all F·T
  positions (softmax of q over channels, of k over positions), time FiLM after the channel LayerNorm.
- time attention: `Residual(TimeAttention)`, time FiLM first, then per head 1x1 convs + PReLU + a LayerNorm over
  (C, F) give q, k of `E = ceil(qk_dim / F)` channels and v of `C / heads`; each head attends over T with the
  whole band (`F·E` features) as one token; the heads are concatenated and projected the same way.
- downsample: 2x2 pixel-unshuffle + 1x1 conv (a 3x3 conv at the last level); upsample: nearest x2 + 3x3 conv.
- FIM (the Feature Interaction Module, the only place the video enters): the visual vector is tiled over the
  bottleneck and concatenated before the first ResnetBlock.

Time conditioning of the FIM (`model.fim_time`). The paper conditions every sub-block but the up/down-sampling
layers on t; the public code builds the FIM's three time MLPs (789,504 parameters at the `paper` scale, counted in
its 36,549,603) but calls the FIM without the time embedding. `fim_time=True` applies them (the paper, and the
public parameter count); `fim_time=False` is the public forward, without those parameters.

Differences from the public code, all without parameters: input sizes are read from the arrays (the public code
fixes F = 256 per level 256/128/64/32/16; here `model.freq_bins` is checked against the input), and `t` is flow
time in [0, 1], embedded as `1000 t` (DDPM step n is t = n / 1000).

Flax name -> PyTorch key of the public `Unet` (Dense `kernel` = `weight.T`; conv `kernel (kh, kw, in, out)` =
`weight.transpose(2, 3, 1, 0)`; LayerNorm `scale` = `g` or GroupNorm `weight`); X is `downs` or `ups`:

    init_conv, time_mlp_{1,3}, final_res_block, final_conv      init_conv, time_mlp.{1,3}, final_res_block, ...
    X_{i}_0/{mlp, block{1,2}/{proj,norm}, res_conv}             X.{i}.0.{mlp.1, block{1,2}.{proj,norm}, res_conv}
    X_{i}_1/{norm, mlp, to_qkv, to_out, out_norm}               X.{i}.1.fn.{norm.g, fn.mlp.1, fn.to_qkv, fn.to_out.0,
                                                                fn.to_out.1.g}
    X_{i}_2/mlp                                                 X.{i}.2.fn.mlp.1
    X_{i}_2/{query,key,value}/*[h]                              X.{i}.2.fn.attn_conv_{Q,K,V}_{h}
    X_{i}_2/concat_proj/*[0]                                    X.{i}.2.fn.attn_concat_proj
      kernel[h] (C, W), bias[h], slope[h], gamma[h] (F, W)        .0.weight[:, :, 0, 0].T, .0.bias, .1.weight[0],
                                                                  .2.gamma[0, :, 0, :].T (beta alike)
    X_{i}_3/conv (last level: X_{i}_3)                          X.{i}.3.1 (last level: X.{i}.3)
    mid_block{1,2}, mid_attn/{norm, mlp, to_qkv, to_out}        mid_block{1,2}, mid_attn.fn.{norm.g, fn.mlp.1, ...}
"""
import functools
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.nn.attention import multi_head_attention
from avflow.nn.demucs_layers import dense, flax_conv, gelu, group_norm, torch_uniform
from avflow.nn.embeddings import timestep_embedding

_EPS = 1e-5


def weight_standardize(kernel: jax.Array, eps: float = _EPS) -> jax.Array:
  """Weight standardisation (Qiao et al. 2019) of a conv `kernel (..., in, out)`: zero mean, unit (biased)
  variance per output channel."""
  axes = tuple(range(kernel.ndim - 1))
  mean = jnp.mean(kernel, axis=axes, keepdims=True)
  var = jnp.var(kernel, axis=axes, keepdims=True)
  return (kernel - mean) * jax.lax.rsqrt(var + eps)


def layer_norm_fc(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = _EPS) -> jax.Array:
  """TF-GridNet's `LayerNormalization4DCF` on `x (..., F, T, C)`: statistics over (F, C) for every frame,
  affine `gamma, beta (..., F, C)` per frequency and channel."""
  mean = jnp.mean(x, axis=(-3, -1), keepdims=True)
  var = jnp.var(x, axis=(-3, -1), keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * gamma[..., None, :] + beta[..., None, :]


def _conv(x: jax.Array, features: int, kernel: int, impl: str, name: str, use_bias: bool = True,
          standardize: bool = False, kernel_init=None) -> jax.Array:
  """A same-padded `kernel x kernel` conv of `x` with PyTorch's default init (`kernel_init` overrides the weight's);
  `standardize` convolves with the weight-standardised kernel."""
  conv_fn = functools.partial(flax_conv, impl=impl)
  if standardize:
    conv_fn = lambda lhs, rhs, *args, **kwargs: flax_conv(lhs, weight_standardize(rhs), *args, impl=impl, **kwargs)
  init = torch_uniform(x.shape[-1] * kernel * kernel)
  return nn.Conv(features, (kernel, kernel), padding=kernel // 2, use_bias=use_bias, kernel_init=kernel_init or init,
                 bias_init=init, conv_general_dilated=conv_fn, name=name)(x)


def _channel_norm(name: str) -> nn.LayerNorm:
  """The U-Net's channel `LayerNorm` (gain only, eps 1e-5)."""
  return nn.LayerNorm(epsilon=_EPS, use_bias=False, use_fast_variance=False, name=name)


def _time_scale_shift(temb: Optional[jax.Array], width: int, name: str) -> Optional[tuple]:
  """The time FiLM's `(scale, shift) = split(Linear(SiLU(temb)))`, each `(B, 1, 1, width)`; None without `temb`."""
  if temb is None:
    return None
  return tuple(jnp.split(dense(2 * width, temb.shape[-1], name)(nn.silu(temb))[:, None, None], 2, axis=-1))


def _modulate(x: jax.Array, scale_shift: Optional[tuple]) -> jax.Array:
  """`x·(1 + scale) + shift`; `x` when `scale_shift` is None."""
  if scale_shift is None:
    return x
  scale, shift = scale_shift
  return x * (1 + scale) + shift


def _film(x: jax.Array, temb: Optional[jax.Array], name: str) -> jax.Array:
  """The time FiLM of the attentions: `x` modulated per channel by `temb` (unchanged when `temb` is None)."""
  return _modulate(x, _time_scale_shift(temb, x.shape[-1], name))


class Block(nn.Module):
  """Weight-standardised 3x3 conv, GroupNorm, optional FiLM `(scale, shift)`, SiLU."""
  features: int
  groups: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array, scale_shift=None) -> jax.Array:
    x = _conv(x, self.features, 3, self.impl, "proj", standardize=True)
    return nn.silu(_modulate(group_norm(self.groups, "norm")(x), scale_shift))


class ResnetBlock(nn.Module):
  """`block2(block1(x, FiLM(temb))) + res_conv(x)`; no time MLP when `temb` is None."""
  features: int
  groups: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    scale_shift = _time_scale_shift(temb, self.features, "mlp")
    h = Block(self.features, self.groups, self.impl, name="block1")(x, scale_shift)
    h = Block(self.features, self.groups, self.impl, name="block2")(h)
    if x.shape[-1] != self.features:
      x = _conv(x, self.features, 1, self.impl, "res_conv")
    return h + x


def _qkv(x: jax.Array, temb: Optional[jax.Array], heads: int, dim_head: int, impl: str) -> tuple:
  """PreNorm, FiLM and the bias-free 1x1 `to_qkv` of the U-Net attentions: q, k, v `(B, F·T, heads·dim_head)`."""
  h = _film(_channel_norm("norm")(x), temb, "mlp")
  qkv = _conv(h, 3 * heads * dim_head, 1, impl, "to_qkv", use_bias=False)
  b, f, t, _ = qkv.shape
  return jnp.split(qkv.reshape(b, f * t, -1), 3, axis=-1)


class LinearAttention(nn.Module):
  """`x + LinearAttention(FiLM(LayerNorm(x)))` over all F·T positions (the TF attention of a CA block)."""
  heads: int
  dim_head: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    b, f, t, c = x.shape
    qkv = _qkv(x, temb, self.heads, self.dim_head, self.impl)
    q, k, v = (a.reshape(b, f * t, self.heads, self.dim_head) for a in qkv)
    q = jax.nn.softmax(q, axis=-1) * self.dim_head**-0.5
    k = jax.nn.softmax(k, axis=1)
    context = jnp.einsum("bnhd,bnhe->bhde", k, v / (f * t))
    out = jnp.einsum("bhde,bnhd->bnhe", context, q).reshape(b, f, t, self.heads * self.dim_head)
    out = _channel_norm("out_norm")(_conv(out, c, 1, self.impl, "to_out"))
    return x + out


class Attention(nn.Module):
  """`x + Attention(FiLM(LayerNorm(x)))`, softmax attention over all F·T positions (the FIM's)."""
  heads: int
  dim_head: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    b, f, t, c = x.shape
    out = multi_head_attention(*_qkv(x, temb, self.heads, self.dim_head, self.impl), self.heads)
    return x + _conv(out.reshape(b, f, t, -1), c, 1, self.impl, "to_out")


class HeadProjection(nn.Module):
  """Per head h: 1x1 conv `C -> width`, PReLU (one slope), `layer_norm_fc` over (F, width).

  `(B, F, T, C) -> (B, heads, F, T, width)`; the parameters of all heads are stacked on a leading axis."""
  heads: int
  width: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f, c = x.shape[1], x.shape[-1]
    kernel = self.param("kernel", torch_uniform(c), (self.heads, c, self.width))
    bias = self.param("bias", torch_uniform(c), (self.heads, self.width))
    slope = self.param("slope", nn.initializers.constant(0.25), (self.heads,))
    gamma = self.param("gamma", nn.initializers.ones, (self.heads, f, self.width))
    beta = self.param("beta", nn.initializers.zeros, (self.heads, f, self.width))
    y = jnp.einsum("bftc,hcw->bhftw", x, kernel) + bias[:, None, None, :]
    y = jnp.where(y >= 0, y, slope[:, None, None, None] * y)
    return layer_norm_fc(y, gamma, beta)


class TimeAttention(nn.Module):
  """`x + TimeAttention(FiLM(x))`: TF-GridNet full-band self-attention along time.

  Head h attends over the T frames with tokens `q_h, k_h (F·E)` and `v_h (F·C/heads)`, scale `(F·E)**-0.5`."""
  heads: int
  qk_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, temb: Optional[jax.Array]) -> jax.Array:
    b, f, t, c = x.shape
    if c % self.heads:
      raise ValueError(f"time attention: {c} channels are not divisible by {self.heads} heads")
    h = _film(x, temb, "mlp")
    e = math.ceil(self.qk_dim / f)
    tokens = lambda a: jnp.transpose(a, (0, 3, 1, 2, 4)).reshape(b, t, -1)  # (B, H, F, T, W) -> (B, T, H·F·W)
    out = multi_head_attention(tokens(HeadProjection(self.heads, e, name="query")(h)),
                               tokens(HeadProjection(self.heads, e, name="key")(h)),
                               tokens(HeadProjection(self.heads, c // self.heads, name="value")(h)), self.heads)
    out = jnp.transpose(out.reshape(b, t, self.heads, f, c // self.heads), (0, 3, 1, 2, 4)).reshape(b, f, t, c)
    return x + HeadProjection(1, c, name="concat_proj")(out)[:, 0]


class Downsample(nn.Module):
  """2x2 pixel-unshuffle (channel index `4c + 2i + j`, as einops' `(c p1 p2)`) + 1x1 conv."""
  features: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, f, t, c = x.shape
    x = x.reshape(b, f // 2, 2, t // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, f // 2, t // 2, 4 * c)
    return _conv(x, self.features, 1, self.impl, "conv")


class Upsample(nn.Module):
  """Nearest-neighbour x2 on both axes + 3x3 conv."""
  features: int
  impl: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x, self.features, 3, self.impl, "conv")


def level_widths(cfg: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """`(width in, width out)` of each down level: `dims = [dim, dim·m for m in dim_mults]`, consecutive pairs."""
  dims = [cfg.dim] + [cfg.dim * m for m in cfg.dim_mults]
  return list(zip(dims[:-1], dims[1:]))


class SeparationUNet(nn.Module):
  """`x_t, mixture (B, F, T, 1)`, `t (B,)` in [0, 1], `visual (B, D)` -> `(B, F, T, 1)`; `cfg` is `config.model`.

  F must be `model.freq_bins`, and F and T multiples of `2**(levels − 1)`. `model.attention_levels` lists the
  levels (0 = full resolution) whose CA blocks have the TF and time attentions (None: all, as the paper)."""
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, visual: jax.Array, mixture: jax.Array) -> jax.Array:
    cfg = self.cfg
    impl, groups = cfg.get("conv_impl", "auto"), cfg.resnet_groups
    widths = level_widths(cfg)
    levels = len(widths)
    attention_levels = range(levels) if cfg.attention_levels is None else tuple(cfg.attention_levels)
    if any(not 0 <= i < levels for i in attention_levels):
      raise ValueError(f"model.attention_levels={tuple(attention_levels)}; expected levels in [0, {levels})")
    _, f, t_frames, _ = x_t.shape
    stride = 2**(levels - 1)
    if f != cfg.freq_bins or f % stride or t_frames % stride:
      raise ValueError(f"the U-Net input has {f} bins x {t_frames} frames; expected model.freq_bins={cfg.freq_bins} "
                       f"bins and both multiples of {stride}")
    if x_t.shape != mixture.shape:
      raise ValueError(f"x_t {x_t.shape} and mixture {mixture.shape} differ in shape")
    res = functools.partial(ResnetBlock, groups=groups, impl=impl)
    lin = cfg.linear_attention

    def ca_attention(x, temb, prefix, level):
      if level not in attention_levels:
        return x
      x = LinearAttention(lin.heads, lin.dim_head, impl, name=f"{prefix}_1")(x, temb)
      return TimeAttention(cfg.time_attention.heads, cfg.time_attention.qk_dim, name=f"{prefix}_2")(x, temb)

    x = _conv(jnp.concatenate([mixture, x_t], axis=-1), cfg.dim, 1, impl, "init_conv")
    temb = timestep_embedding(t, cfg.dim, sin_first=True, freq_shift=1)
    temb = dense(4 * cfg.dim, cfg.dim, "time_mlp_1")(temb)
    temb = dense(4 * cfg.dim, 4 * cfg.dim, "time_mlp_3")(gelu(temb))

    init_features, skips = x, []
    for i, (width_in, width_out) in enumerate(widths):
      x = res(width_in, name=f"downs_{i}_0")(x, temb)
      x = ca_attention(x, temb, f"downs_{i}", i)
      skips.append(x)
      x = (_conv(x, width_out, 3, impl, f"downs_{i}_3") if i == levels - 1
           else Downsample(width_out, impl, name=f"downs_{i}_3")(x))

    fim_temb = temb if cfg.fim_time else None
    b, fb, tb, _ = x.shape
    tiled = jnp.broadcast_to(visual[:, None, None, :].astype(x.dtype), (b, fb, tb, visual.shape[-1]))
    x = res(widths[-1][1], name="mid_block1")(jnp.concatenate([tiled, x], axis=-1), fim_temb)
    x = Attention(cfg.attention.heads, cfg.attention.dim_head, impl, name="mid_attn")(x, fim_temb)
    x = res(widths[-1][1], name="mid_block2")(x, fim_temb)

    for i, (width_in, width_out) in enumerate(reversed(widths)):
      x = res(width_out, name=f"ups_{i}_0")(jnp.concatenate([x, skips.pop()], axis=-1), temb)
      x = ca_attention(x, temb, f"ups_{i}", levels - 1 - i)
      x = (_conv(x, width_in, 3, impl, f"ups_{i}_3") if i == levels - 1
           else Upsample(width_in, impl, name=f"ups_{i}_3")(x))

    x = res(cfg.dim, name="final_res_block")(jnp.concatenate([x, init_features], axis=-1), temb)
    kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    return _conv(x, 1, 1, impl, "final_conv", kernel_init=kaiming)

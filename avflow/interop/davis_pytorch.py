"""Self-contained PyTorch DAVIS / DAVIS-Flow separator in the public checkpoint layout (channels first).

This file imports only torch and the standard library. It rebuilds what `avflow.models.davis.separator.Separator`
computes after the frame encoder, from the paper (Sec. 3.3, Fig. 2-3) and the module names of the public code:

    visual = mean_j temporal_transformer(I, I)_j        `nn.Transformer`, frames as source and target, no dropout
    out    = net_unet(x_t, t, visual, mixture)          the Separation U-Net: v (DAVIS-Flow) or ε (DAVIS)

`x_t, mixture (B, 1, F, T)`, `t (B,)` in [0, 1] (embedded as 1000 t, the public code's step scale), per-frame
features `I (B, N, d_model)` (CLIP image embeddings in the public model; CLIP itself is not part of this module).
The U-Net blocks are those of `avflow.models.davis.unet` (its docstring lists them and the Flax names):
weight-standardised ResnetBlocks with the time FiLM, the TF linear attention, TF-GridNet's full-band time
attention, the FIM at the bottleneck where the visual vector enters.

`DavisSeparator(cfg)` takes the fields of `avflow.models.davis.presets.model_config` (a dict or a ConfigDict).
Its state dict holds `net_unet.` + the keys of the public `Unet` and `temporal_transformer.` + those of
`nn.Transformer`: at the paper scale exactly the tensors of the public `unet_*.pth` without the wrapper's unused
`time_mlp.*` and of `frame_*.pth` without the CLIP tower `model.*` (`tests/data/davis_state_dict_shapes.json`),
so that it loads them with `strict=True`. Generalisations, shared with the Flax model: the frequency size of
each level follows `freq_bins` (the public code fixes 256/128/64/32/16), the visual width is `temporal.d_model`
(512), `attention_levels` may leave the attentions out of some levels (their slots stay empty, so the key indices
do not move), and `fim_time` applies the FIM's time MLPs (True, the paper; the module then has them, as the
public `Unet` does) or builds it without them (False: the public forward, which never calls them).
"""
import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-5


def _film(x: torch.Tensor, mlp: Optional[nn.Module], temb: Optional[torch.Tensor]) -> torch.Tensor:
  """`x·(1 + scale) + shift` with `(scale, shift)` per channel from `mlp(temb)`; `x` without either."""
  if mlp is None or temb is None:
    return x
  scale, shift = mlp(temb)[:, :, None, None].chunk(2, dim=1)
  return x * (1 + scale) + shift


def _time_mlp(time_dim: Optional[int], width: int) -> Optional[nn.Module]:
  """The FiLM's `Linear(SiLU(temb))` giving scale and shift; None without a time embedding."""
  return nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * width)) if time_dim else None


class StandardizedConv2d(nn.Conv2d):
  """Conv with weight standardisation (Qiao et al. 2019): zero mean, unit biased variance per output channel."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), unbiased=False, keepdim=True)
    return self._conv_forward(x, (self.weight - mean) * torch.rsqrt(var + _EPS), self.bias)


class ChannelNorm(nn.Module):
  """Layer norm over the channels of `(B, C, F, T)`, gain `g` only."""

  def __init__(self, dim: int):
    super().__init__()
    self.g = nn.Parameter(torch.ones(1, dim, 1, 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + _EPS) * self.g


class BandNorm(nn.Module):
  """TF-GridNet's layer norm of `(B, C, T, F)` over (C, F) for every frame, affine per channel and frequency."""

  def __init__(self, channels: int, freqs: int):
    super().__init__()
    self.gamma = nn.Parameter(torch.ones(1, channels, 1, freqs))
    self.beta = nn.Parameter(torch.zeros(1, channels, 1, freqs))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    var, mean = torch.var_mean(x, dim=(1, 3), unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + _EPS) * self.gamma + self.beta


class Block(nn.Module):
  """Standardised 3x3 conv, GroupNorm, optional FiLM, SiLU."""

  def __init__(self, dim: int, dim_out: int, groups: int):
    super().__init__()
    self.proj = StandardizedConv2d(dim, dim_out, 3, padding=1)
    self.norm = nn.GroupNorm(groups, dim_out)

  def forward(self, x: torch.Tensor, mlp: Optional[nn.Module] = None, temb: Optional[torch.Tensor] = None):
    return F.silu(_film(self.norm(self.proj(x)), mlp, temb))


class ResnetBlock(nn.Module):
  """`block2(block1(x) with the time FiLM) + res_conv(x)`; no time MLP when `time_dim` is None."""

  def __init__(self, dim: int, dim_out: int, time_dim: Optional[int], groups: int):
    super().__init__()
    self.mlp = _time_mlp(time_dim, dim_out)
    self.block1 = Block(dim, dim_out, groups)
    self.block2 = Block(dim_out, dim_out, groups)
    self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    return self.block2(self.block1(x, self.mlp, temb)) + self.res_conv(x)


class LinearAttention(nn.Module):
  """Efficient attention (Shen et al.) over all F·T positions: softmax of q over its channels, of k over the
  positions; the time FiLM first, a ChannelNorm after the output conv."""

  def __init__(self, dim: int, heads: int, dim_head: int, time_dim: int):
    super().__init__()
    self.heads, self.scale = heads, dim_head**-0.5
    self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
    self.to_out = nn.Sequential(nn.Conv2d(heads * dim_head, dim, 1), ChannelNorm(dim))
    self.mlp = _time_mlp(time_dim, dim)

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    b, _, f, t = x.shape
    q, k, v = (a.reshape(b, self.heads, -1, f * t) for a in self.to_qkv(_film(x, self.mlp, temb)).chunk(3, dim=1))
    context = torch.einsum("bhdn,bhen->bhde", k.softmax(dim=-1), v / (f * t))
    out = torch.einsum("bhde,bhdn->bhen", context, q.softmax(dim=-2) * self.scale)
    return self.to_out(out.reshape(b, -1, f, t))


class Attention(nn.Module):
  """Softmax attention over all F·T positions (the FIM's), the time FiLM first."""

  def __init__(self, dim: int, heads: int, dim_head: int, time_dim: Optional[int]):
    super().__init__()
    self.heads, self.scale = heads, dim_head**-0.5
    self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
    self.to_out = nn.Conv2d(heads * dim_head, dim, 1)
    self.mlp = _time_mlp(time_dim, dim)

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    b, _, f, t = x.shape
    q, k, v = (a.reshape(b, self.heads, -1, f * t) for a in self.to_qkv(_film(x, self.mlp, temb)).chunk(3, dim=1))
    weights = torch.einsum("bhdi,bhdj->bhij", q * self.scale, k).softmax(dim=-1)
    return self.to_out(torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(b, -1, f, t))


class PreNorm(nn.Module):
  """`fn(ChannelNorm(x), temb)`."""

  def __init__(self, dim: int, fn: nn.Module):
    super().__init__()
    self.fn = fn
    self.norm = ChannelNorm(dim)

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    return self.fn(self.norm(x), temb)


class Residual(nn.Module):
  """`x + fn(x, temb)`."""

  def __init__(self, fn: nn.Module):
    super().__init__()
    self.fn = fn

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    return x + self.fn(x, temb)


def _head_projection(dim: int, width: int, freqs: int) -> nn.Sequential:
  """1x1 conv, PReLU (one slope), BandNorm: one head's q, k or v (or the concatenated heads' projection)."""
  return nn.Sequential(nn.Conv2d(dim, width, 1), nn.PReLU(), BandNorm(width, freqs))


class TimeAttention(nn.Module):
  """TF-GridNet full-band self-attention along time: head h attends over the T frames with the whole band as one
  token, q and k of `E = ceil(qk_dim / F)` channels per frequency, v of `C / heads`; the time FiLM first."""

  def __init__(self, dim: int, freqs: int, heads: int, qk_dim: int, time_dim: int):
    super().__init__()
    if dim % heads:
      raise ValueError(f"time attention: {dim} channels are not divisible by {heads} heads")
    self.heads, qk = heads, math.ceil(qk_dim / freqs)
    for h in range(heads):
      for name, width in (("Q", qk), ("K", qk), ("V", dim // heads)):
        self.add_module(f"attn_conv_{name}_{h}", _head_projection(dim, width, freqs))
    self.attn_concat_proj = _head_projection(dim, dim, freqs)
    self.mlp = _time_mlp(time_dim, dim)

  def forward(self, x: torch.Tensor, temb: Optional[torch.Tensor]) -> torch.Tensor:
    x = _film(x, self.mlp, temb).transpose(2, 3)  # (B, C, T, F)

    def heads(name):  # (B, H, T, W·F): one token per frame and head
      return torch.stack([getattr(self, f"attn_conv_{name}_{h}")(x) for h in range(self.heads)], 1).transpose(2, 3)

    q, k, v = heads("Q").flatten(3), heads("K").flatten(3), heads("V")
    weights = (q @ k.transpose(2, 3) / math.sqrt(q.shape[-1])).softmax(dim=-1)
    out = (weights @ v.flatten(3)).unflatten(3, v.shape[3:]).transpose(2, 3).flatten(1, 2)  # (B, H·C/H, T, F)
    return self.attn_concat_proj(out).transpose(2, 3)


class SinusoidalEmbedding(nn.Module):
  """`[sin(n f_j), cos(n f_j)]`, `f_j = 10000**(-j / (dim/2 - 1))`, of the step `n (B,)`."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, n: torch.Tensor) -> torch.Tensor:
    half = self.dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=n.device) / (half - 1))
    args = n.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


class SeparationUNet(nn.Module):
  """`x_t, mixture (B, 1, F, T)`, `t (B,)` in [0, 1], `visual (B, D)` -> `(B, 1, F, T)` (the public `Unet` with
  `self_condition=True`: the mixture is the first input channel)."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    dim, groups = cfg["dim"], cfg["resnet_groups"]
    dims = [dim] + [dim * m for m in cfg["dim_mults"]]
    widths = list(zip(dims[:-1], dims[1:]))
    levels = len(widths)
    self.attention_levels = set(range(levels) if cfg["attention_levels"] is None else cfg["attention_levels"])
    self.freq_bins, self.fim_time = cfg["freq_bins"], cfg["fim_time"]
    time_dim = 4 * dim
    self.init_conv = nn.Conv2d(2, dim, 1)
    self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, time_dim), nn.GELU(),
                                  nn.Linear(time_dim, time_dim))
    self.downs, self.ups = nn.ModuleList(), nn.ModuleList()

    def level(res, width, i, sample):
      """A CA block: ResnetBlock, TF attention, time attention (empty slots where level i has none), sampler."""
      if i not in self.attention_levels:
        return nn.ModuleList([res, nn.Identity(), nn.Identity(), sample])
      lin, tat = cfg["linear_attention"], cfg["time_attention"]
      return nn.ModuleList([
          res, Residual(PreNorm(width, LinearAttention(width, lin["heads"], lin["dim_head"], time_dim))),
          Residual(TimeAttention(width, self.freq_bins // 2**i, tat["heads"], tat["qk_dim"], time_dim)), sample])

    for i, (w_in, w_out) in enumerate(widths):
      down = (nn.Conv2d(w_in, w_out, 3, padding=1) if i == levels - 1
              else nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * w_in, w_out, 1)))
      self.downs.append(level(ResnetBlock(w_in, w_in, time_dim, groups), w_in, i, down))
    for i, (w_in, w_out) in enumerate(reversed(widths)):
      up = (nn.Conv2d(w_out, w_in, 3, padding=1) if i == levels - 1
            else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(w_out, w_in, 3, padding=1)))
      self.ups.append(level(ResnetBlock(w_out + w_in, w_out, time_dim, groups), w_out, levels - 1 - i, up))
    mid, fim_dim = dims[-1], time_dim if self.fim_time else None
    full = cfg["attention"]
    self.mid_block1 = ResnetBlock(mid + cfg["temporal"]["d_model"], mid, fim_dim, groups)
    self.mid_attn = Residual(PreNorm(mid, Attention(mid, full["heads"], full["dim_head"], fim_dim)))
    self.mid_block2 = ResnetBlock(mid, mid, fim_dim, groups)
    self.final_res_block = ResnetBlock(2 * dim, dim, time_dim, groups)
    self.final_conv = nn.Conv2d(dim, 1, 1)
    nn.init.kaiming_normal_(self.final_conv.weight)

  def _ca_block(self, blocks: nn.ModuleList, level: int, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    if level in self.attention_levels:
      x = blocks[2](blocks[1](x, temb), temb)
    return x

  def forward(self, x_t: torch.Tensor, t: torch.Tensor, visual: torch.Tensor,
              mixture: torch.Tensor) -> torch.Tensor:
    stride = 2**(len(self.downs) - 1)
    f, frames = x_t.shape[2:]
    if f != self.freq_bins or f % stride or frames % stride:
      raise ValueError(f"the U-Net input has {f} bins x {frames} frames; expected freq_bins={self.freq_bins} bins "
                       f"and both multiples of {stride}")
    x = self.init_conv(torch.cat([mixture, x_t], dim=1))
    temb = self.time_mlp(1000 * t)
    init_features, skips = x, []
    for i, blocks in enumerate(self.downs):
      x = self._ca_block(blocks, i, blocks[0](x, temb), temb)
      skips.append(x)
      x = blocks[3](x)
    fim_temb = temb if self.fim_time else None
    tiled = visual[:, :, None, None].expand(-1, -1, *x.shape[2:])
    x = self.mid_block1(torch.cat([tiled, x], dim=1), fim_temb)
    x = self.mid_block2(self.mid_attn(x, fim_temb), fim_temb)
    for i, blocks in enumerate(self.ups):
      x = blocks[0](torch.cat([x, skips.pop()], dim=1), temb)
      x = blocks[3](self._ca_block(blocks, len(self.ups) - 1 - i, x, temb))
    return self.final_conv(self.final_res_block(torch.cat([x, init_features], dim=1), temb))


class DavisSeparator(nn.Module):
  """The separator after the frame encoder: `encode(features)` once per clip and source, `forward` per step;
  `cfg` is a `config.model` (dict or ConfigDict). `eval()` it: nothing differs but PyTorch's fast paths."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    temporal = cfg["temporal"]
    if temporal["decoder_layers"] < 1:
      raise ValueError(f"temporal.decoder_layers={temporal['decoder_layers']}; the transformer's output is its "
                       "decoder's, so it needs at least one decoder layer")
    self.net_unet = SeparationUNet(cfg)
    self.temporal_transformer = nn.Transformer(
        temporal["d_model"], temporal["heads"], temporal["encoder_layers"], temporal["decoder_layers"],
        temporal["ff_dim"], dropout=0.0, batch_first=True)

  def encode(self, features: torch.Tensor) -> torch.Tensor:
    """Per-frame features `(B, N, d_model)` -> the visual vector `(B, d_model)`: the frames' mean after the
    transformer (source and target both the frames; no positional encoding)."""
    return self.temporal_transformer(features, features).mean(dim=1)

  def forward(self, x_t: torch.Tensor, t: torch.Tensor, features: torch.Tensor,
              mixture: torch.Tensor) -> torch.Tensor:
    """v (DAVIS-Flow) or ε (DAVIS) `(B, 1, F, T)` at `x_t` and flow time `t (B,)` in [0, 1]."""
    return self.net_unet(x_t, t, self.encode(features), mixture)


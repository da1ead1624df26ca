"""Self-contained PyTorch VisAH / VisAH-FM network in the public checkpoint layout.

This file imports only torch and the standard library (and safetensors in `load_export`), so
it can be copied next to a PyTorch project on its own. It rebuilds the network of the public
VisAH code (`HDemucsRemixer` with its `AV_Transformer` bottleneck, built on demucs v3 layers)
as that code behaves:

- frequency branch: STFT with `normalized=False` and the hybrid padding/cropping, the raw
  (un-normalized) magnitude in, an unbounded real mask out, the mixture phase reused;
- time branch: per-example mean/std normalization, de-normalized and added at the end;
- DConv residual branches in the encoder (BLSTM windowed over 200 steps with stride 100 and
  LocalState from layer `dconv_lstm`/`dconv_attn`), GroupNorm from layer `norm_starts`;
- the frequency embedding stored divided by `emb_scale`; the latent transformer output is
  fed to the decoder (not zeros, unlike upstream demucs);
- the latent transformer's context encoder in two modes: "frames" (each clip attends over
  its frames) or "legacy_batch_axis" (the public code's `batch_first=False` misuse: attention
  across the batch axis, separately for each frame index).

`build_visah(cfg)` takes the same fields as `avflow.models.visah.presets.model_config` (a plain
dict or a ConfigDict). With the paper config, `model.state_dict()` has exactly the 561 keys
and shapes of the released Lightning checkpoint after removing the `model.` prefix;
`lightning_state_dict` adds the prefix and the three `mr_stft_loss` windows (564 keys).
Smaller configs follow the same construction, with one generalisation shared with the Flax
model so that any `nfft` fits (see `layer_plan`).

VisAH-FM (`time_conditioning != "none"`) adds keys under `time_embed.` only: the flow time
becomes one extra context token of the latent transformer and, optionally, a bias in every
encoder layer; `VisAHFMHighlighter` integrates the flow. The layout and numerics match
`avflow.models.visah.network.VisAH`, whose parameters `avflow.interop.visah_convert` converts.

`LightningVisAH` has the state layout of the public Lightning module (the 564-key `.ckpt`
that `python -m avflow export --format=visah` writes loads into it with `strict=True`);
`load_export` reads a `python -m avflow export --format=torch` file: the network with its
time conditioning, the avflow config and the conditioner tensors, which have no PyTorch module
here (the context tokens are the caller's).
"""
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

CONTEXT_ATTENTION_MODES = ("frames", "legacy_batch_axis")
TIME_CONDITIONING_MODES = ("none", "latent_token", "latent_token+encoder")
LOSS_WINDOW_SIZES = (2048, 1024, 512)  # the `mr_stft_loss` resolutions of the training code
EXPORT_CONFIG_KEY = "avflow_config"  # safetensors metadata of an `avflow export --format=torch` file
_PE_MAX_LEN = 5000


# --------------------------------------------------------------------------------------------
# STFT (the demucs `spectro`/`ispectro` wrappers as modified by VisAH: normalized=False).


def _pad1d_reflect(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
  """Reflect padding that also works when the signal is shorter than the padding.

  As demucs `pad1d`: a too-short signal first gets zeros on the right (then the left) so that
  the reflection is defined.
  """
  length = x.shape[-1]
  if length <= max(left, right):
    extra = max(left, right) - length + 1
    extra_right = min(right, extra)
    extra_left = extra - extra_right
    left, right = left - extra_left, right - extra_right
    x = F.pad(x, (extra_left, extra_right))
  return F.pad(x, (left, right), mode="reflect")


def spectro(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
  """Complex STFT `(..., n_fft//2+1, frames)`: periodic Hann, center, reflect, not normalized."""
  *other, length = x.shape
  z = torch.stft(x.reshape(-1, length), n_fft, hop, window=torch.hann_window(n_fft).to(x),
                 win_length=n_fft, normalized=False, center=True, return_complex=True,
                 pad_mode="reflect")
  return z.view(*other, z.shape[-2], z.shape[-1])


def ispectro(z: torch.Tensor, hop: int, length: int) -> torch.Tensor:
  """Inverse of `spectro` (`normalized=False`), trimmed or padded to `length` samples."""
  *other, freqs, frames = z.shape
  n_fft = 2 * freqs - 2
  x = torch.istft(z.reshape(-1, freqs, frames), n_fft, hop,
                  window=torch.hann_window(n_fft).to(z.real), win_length=n_fft,
                  normalized=False, length=length, center=True)
  return x.view(*other, length)


def hybrid_spec(x: torch.Tensor, nfft: int) -> torch.Tensor:
  """`HDemucs._spec`: `(..., L)` -> `(..., nfft//2, ceil(L/hop))` with `hop = nfft//4`.

  The signal is reflect-padded by `3*hop/2` on the left and up to a multiple of `hop` plus
  `3*hop/2` on the right; the Nyquist bin and two frames on each side are dropped.
  """
  hop = nfft // 4
  le = int(math.ceil(x.shape[-1] / hop))
  pad = hop // 2 * 3
  x = _pad1d_reflect(x, pad, pad + le * hop - x.shape[-1])
  return spectro(x, nfft, hop)[..., :-1, 2:2 + le]


def hybrid_ispec(z: torch.Tensor, length: int) -> torch.Tensor:
  """`HDemucs._ispec`: the inverse of `hybrid_spec`, cropped to `length` samples."""
  hop = z.shape[-2] // 2
  z = F.pad(z, (2, 2, 0, 1))
  pad = hop // 2 * 3
  x = ispectro(z, hop, hop * int(math.ceil(length / hop)) + 2 * pad)
  return x[..., pad:pad + length]


# --------------------------------------------------------------------------------------------
# demucs building blocks.


class ScaledEmbedding(nn.Module):
  """Frequency embedding whose table is stored divided by `scale` (demucs `ScaledEmbedding`).

  `smooth` initialises it as a cumulative sum of Gaussians divided by sqrt(n).
  """

  def __init__(self, num_embeddings: int, embedding_dim: int, scale: float = 10.0,
               smooth: bool = True):
    super().__init__()
    self.embedding = nn.Embedding(num_embeddings, embedding_dim)
    with torch.no_grad():
      if smooth:
        weight = torch.cumsum(self.embedding.weight, dim=0)
        weight = weight / torch.arange(1, num_embeddings + 1).to(weight).sqrt()[:, None]
        self.embedding.weight.copy_(weight)
      self.embedding.weight.div_(scale)
    self.scale = scale

  def forward(self, idx: torch.Tensor) -> torch.Tensor:
    return self.embedding(idx) * self.scale


class LayerScale(nn.Module):
  """Per-channel scale of a residual branch on `(B, C, T)` (demucs `LayerScale`)."""

  def __init__(self, channels: int, init: float):
    super().__init__()
    self.scale = nn.Parameter(torch.full((channels,), float(init)))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.scale[:, None] * x


class BLSTM(nn.Module):
  """Two-layer bidirectional LSTM + Linear(2h, h) with a skip, on `(B, C, T)` (demucs `BLSTM`).

  When `T > max_steps` it runs on windows of `max_steps` frames with stride `max_steps/2`
  (the input zero-padded to `(n-1)*stride + max_steps`); the windows are stitched by keeping
  all but the last `stride/2` frames of the first, the middle `stride` frames of the inner
  ones and all but the first `stride/2` of the last, then cropped to T.
  """

  def __init__(self, dim: int, layers: int = 2, max_steps: Optional[int] = 200):
    super().__init__()
    if max_steps is not None and max_steps % 4:
      raise ValueError(f"max_steps must be a multiple of 4, got {max_steps}")
    self.max_steps = max_steps
    self.lstm = nn.LSTM(bidirectional=True, num_layers=layers, hidden_size=dim, input_size=dim)
    self.linear = nn.Linear(2 * dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, t = x.shape
    y = x
    framed = self.max_steps is not None and t > self.max_steps
    if framed:
      width, stride = self.max_steps, self.max_steps // 2
      nframes = math.ceil(t / stride)
      padded = F.pad(x, (0, (nframes - 1) * stride + width - t))
      frames = padded.unfold(-1, width, stride)  # (B, C, nframes, width)
      x = frames.permute(0, 2, 1, 3).reshape(-1, c, width)
    x = self.linear(self.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0)
    if framed:
      frames = x.reshape(b, nframes, c, width)
      limit = stride // 2
      pieces = [frames[:, 0, :, :-limit]]
      pieces += [frames[:, k, :, limit:-limit] for k in range(1, nframes - 1)]
      pieces.append(frames[:, -1, :, limit:])
      x = torch.cat(pieces, -1)[..., :t]
    return x + y


class LocalState(nn.Module):
  """Local attention over time with learned decay penalties (demucs `LocalState`, no freqs).

  `dots[t, s] = k_t . q_s / sqrt(d) - sum_f sigmoid(qd_f[s]) / 2 * f * |t - s| / sqrt(ndecay)`,
  the diagonal set to -100, softmax over keys t; output `x + proj(attention . content)`.
  """

  def __init__(self, channels: int, heads: int = 4, ndecay: int = 4):
    super().__init__()
    if channels % heads:
      raise ValueError(f"LocalState channels {channels} not divisible by {heads} heads")
    self.heads = heads
    self.ndecay = ndecay
    self.content = nn.Conv1d(channels, channels, 1)
    self.query = nn.Conv1d(channels, channels, 1)
    self.key = nn.Conv1d(channels, channels, 1)
    self.query_decay = nn.Conv1d(channels, heads * ndecay, 1)
    with torch.no_grad():
      self.query_decay.weight.mul_(0.01)
      self.query_decay.bias.fill_(-2.0)
    self.proj = nn.Conv1d(channels, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, c, t = x.shape
    h = self.heads
    idx = torch.arange(t, device=x.device, dtype=x.dtype)
    delta = idx[:, None] - idx[None, :]
    queries = self.query(x).view(b, h, -1, t)
    keys = self.key(x).view(b, h, -1, t)
    dots = torch.einsum("bhct,bhcs->bhts", keys, queries) / keys.shape[2]**0.5
    decays = torch.arange(1, self.ndecay + 1, device=x.device, dtype=x.dtype)
    decay_q = torch.sigmoid(self.query_decay(x).view(b, h, -1, t)) / 2
    decay_kernel = -decays.view(-1, 1, 1) * delta.abs() / self.ndecay**0.5
    dots = dots + torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)
    dots = dots.masked_fill(torch.eye(t, device=x.device, dtype=torch.bool), -100.0)
    weights = torch.softmax(dots, dim=2)
    content = self.content(x).view(b, h, -1, t)
    result = torch.einsum("bhts,bhct->bhcs", weights, content).reshape(b, -1, t)
    return x + self.proj(result)


class DConv(nn.Module):
  """Residual branches `x + layer_d(x)` with dilations 1, 2, ... (demucs `DConv`).

  Each branch (a `Sequential`, whose indices are the checkpoint's) is
  Conv1d(C, C/compress, 3, dilation) -> GroupNorm(1) -> GELU [-> BLSTM] [-> LocalState]
  -> Conv1d(., 2C, 1) -> GroupNorm(1) -> GLU -> LayerScale.
  """

  def __init__(self, channels: int, compress: float, depth: int, init: float, lstm: bool,
               attn: bool, lstm_max_steps: int):
    super().__init__()
    hidden = int(channels / compress)
    self.layers = nn.ModuleList()
    for d in range(depth):
      dilation = 2**d
      mods: List[nn.Module] = [
          nn.Conv1d(channels, hidden, 3, dilation=dilation, padding=dilation),
          nn.GroupNorm(1, hidden), nn.GELU()]
      if lstm:
        mods.append(BLSTM(hidden, layers=2, max_steps=lstm_max_steps))
      if attn:
        mods.append(LocalState(hidden, heads=4, ndecay=4))
      mods += [nn.Conv1d(hidden, 2 * channels, 1), nn.GroupNorm(1, 2 * channels), nn.GLU(1),
               LayerScale(channels, init)]
      self.layers.append(nn.Sequential(*mods))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    for layer in self.layers:
      x = x + layer(x)
    return x


def _norm(enabled: bool, groups: int, channels: int) -> nn.Module:
  return nn.GroupNorm(groups, channels) if enabled else nn.Identity()


class HEncLayer(nn.Module):
  """Encoder layer of either branch (demucs `HEncLayer`, `rewrite=True`, `context_enc=0`).

  `y = GELU(norm1(conv(x) + inject + time_bias))`, `y = DConv(y)` (per frequency row),
  `z = GLU(norm2(rewrite(y)))`. Frequency layers use `[k, 1]` kernels and strides; time
  layers right-pad the input to a multiple of the stride. An `empty` layer is just the conv.
  """

  def __init__(self, chin: int, chout: int, kernel_size: int, stride: int, freq: bool,
               pad: bool, norm: bool, norm_groups: int, dconv_kw: Dict[str, Any],
               empty: bool = False):
    super().__init__()
    self.freq, self.stride, self.empty = freq, stride, empty
    pad_size = kernel_size // 4 if pad else 0
    if freq:
      self.conv = nn.Conv2d(chin, chout, [kernel_size, 1], [stride, 1], [pad_size, 0])
    else:
      self.conv = nn.Conv1d(chin, chout, kernel_size, stride, pad_size)
    if empty:
      return
    klass = nn.Conv2d if freq else nn.Conv1d
    self.norm1 = _norm(norm, norm_groups, chout)
    self.rewrite = klass(chout, 2 * chout, 1)
    self.norm2 = _norm(norm, norm_groups, 2 * chout)
    self.dconv = DConv(chout, **dconv_kw)

  def forward(self, x: torch.Tensor, inject: Optional[torch.Tensor] = None,
              time_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if not self.freq:
      if x.dim() == 4:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
      if x.shape[-1] % self.stride:
        x = F.pad(x, (0, self.stride - x.shape[-1] % self.stride))
    y = self.conv(x)
    if self.empty:
      return y
    if inject is not None:
      y = y + (inject[:, :, None] if y.dim() == 4 and inject.dim() == 3 else inject)
    if time_bias is not None:
      y = y + time_bias.view(*time_bias.shape, *([1] * (y.dim() - 2)))
    y = F.gelu(self.norm1(y))
    if self.freq:
      b, c, fr, t = y.shape
      y = self.dconv(y.permute(0, 2, 1, 3).reshape(-1, c, t))
      y = y.view(b, fr, c, t).permute(0, 2, 1, 3)
    else:
      y = self.dconv(y)
    return F.glu(self.norm2(self.rewrite(y)), dim=1)


class HDecLayer(nn.Module):
  """Decoder layer of either branch (demucs `HDecLayer`, no DConv, `context=1`).

  `y = GLU(norm1(rewrite(x + skip)))` with a 3x3 (2-D) or 3 (1-D) `rewrite`, then
  `z = norm2(conv_tr(y))`, cropped by `kernel/4` on the frequency axis (padded frequency
  layers) or to `[pad, pad + length)` on time; GELU unless `last`. An `empty` layer is only
  `conv_tr` + `norm2` applied to its input. Returns `(z, y)`.
  """

  def __init__(self, chin: int, chout: int, kernel_size: int, stride: int, freq: bool,
               pad: bool, norm: bool, norm_groups: int, last: bool, empty: bool = False):
    super().__init__()
    self.chin, self.freq, self.last, self.empty = chin, freq, last, empty
    self.pad = kernel_size // 4 if pad else 0
    if freq:
      self.conv_tr = nn.ConvTranspose2d(chin, chout, [kernel_size, 1], [stride, 1])
    else:
      self.conv_tr = nn.ConvTranspose1d(chin, chout, kernel_size, stride)
    self.norm2 = _norm(norm, norm_groups, chout)
    if empty:
      return
    klass = nn.Conv2d if freq else nn.Conv1d
    self.rewrite = klass(chin, 2 * chin, 3, 1, 1)
    self.norm1 = _norm(norm, norm_groups, 2 * chin)

  def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor],
              length: int) -> Tuple[torch.Tensor, torch.Tensor]:
    if self.freq and x.dim() == 3:
      x = x.view(x.shape[0], self.chin, -1, x.shape[-1])
    if self.empty:
      y = x
    else:
      y = F.glu(self.norm1(self.rewrite(x + skip)), dim=1)
    z = self.norm2(self.conv_tr(y))
    if self.freq:
      if self.pad:
        z = z[..., self.pad:-self.pad, :]
    else:
      z = z[..., self.pad:self.pad + length]
    if not self.last:
      z = F.gelu(z)
    return z, y


# --------------------------------------------------------------------------------------------
# Latent audio-visual transformer (`visah/models/attention.py` of the public code).


class PositionalEncoding(nn.Module):
  """Persistent sinusoidal table `pe (1, 5000, d)`: sin on even, cos on odd channels."""

  def __init__(self, d_model: int, max_len: int = _PE_MAX_LEN):
    super().__init__()
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, :d_model // 2]
    self.register_buffer("pe", pe[None])


class CrossAttention(nn.Module):
  """Latent-diffusion `CrossAttention`: bias-free q/k/v, `to_out.0` with bias."""

  def __init__(self, dim: int, heads: int, dim_head: int):
    super().__init__()
    inner = heads * dim_head
    self.heads = heads
    self.to_q = nn.Linear(dim, inner, bias=False)
    self.to_k = nn.Linear(dim, inner, bias=False)
    self.to_v = nn.Linear(dim, inner, bias=False)
    self.to_out = nn.Sequential(nn.Linear(inner, dim))

  def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
    context = x if context is None else context
    b, h = x.shape[0], self.heads
    q, k, v = (p.view(b, p.shape[1], h, -1).transpose(1, 2)
               for p in (self.to_q(x), self.to_k(context), self.to_v(context)))
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1]**-0.5
    out = torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)
    return self.to_out(out.transpose(1, 2).reshape(b, x.shape[1], -1))


class GEGLU(nn.Module):
  """`Linear(d, 2h)` split into value and gate: `value * gelu(gate)` (exact GELU)."""

  def __init__(self, dim_in: int, dim_out: int):
    super().__init__()
    self.proj = nn.Linear(dim_in, dim_out * 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    value, gate = self.proj(x).chunk(2, dim=-1)
    return value * F.gelu(gate)


class FeedForward(nn.Module):
  """GEGLU feed-forward with 4x width; `net.1` is the (p=0) dropout slot of the public code."""

  def __init__(self, dim: int, mult: int = 4):
    super().__init__()
    self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.net(x)


class BasicTransformerBlock(nn.Module):
  """Pre-LN self-attention, cross-attention to the context, GEGLU feed-forward."""

  def __init__(self, dim: int, n_heads: int, d_head: int):
    super().__init__()
    self.attn1 = CrossAttention(dim, n_heads, d_head)
    self.ff = FeedForward(dim)
    self.attn2 = CrossAttention(dim, n_heads, dim // n_heads)
    self.norm1 = nn.LayerNorm(dim)
    self.norm2 = nn.LayerNorm(dim)
    self.norm3 = nn.LayerNorm(dim)

  def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    x = self.attn1(self.norm1(x)) + x
    x = self.attn2(self.norm2(x), context) + x
    return self.ff(self.norm3(x)) + x


class ContextEncoderLayer(nn.Module):
  """DETR-style pre-LN encoder layer: `src += MHA(q=k=LN1(src)+pos, v=LN1(src))`, GELU FF.

  The attention is a `torch.nn.MultiheadAttention` (packed `in_proj_weight`) with the default
  `batch_first=False`. "legacy_batch_axis" feeds it `(B, N, D)` as the public code does, so it
  attends across the batch; "frames" transposes to `(N, B, D)` so each clip attends over its
  own frames.
  """

  def __init__(self, d_model: int, nhead: int, dim_feedforward: int, attention: str):
    super().__init__()
    self.attention = attention
    self.self_attn = nn.MultiheadAttention(d_model, nhead)
    self.linear1 = nn.Linear(d_model, dim_feedforward)
    self.linear2 = nn.Linear(dim_feedforward, d_model)
    self.norm1 = nn.LayerNorm(d_model)
    self.norm2 = nn.LayerNorm(d_model)

  def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    h = self.norm1(src)
    qk = h + pos
    if self.attention == "frames":
      qk, h = qk.transpose(0, 1), h.transpose(0, 1)
    out = self.self_attn(qk, qk, h, need_weights=False)[0]
    if self.attention == "frames":
      out = out.transpose(0, 1)
    src = src + out
    return src + self.linear2(F.gelu(self.linear1(self.norm2(src))))


class ContextEncoder(nn.Module):
  """Stack of `ContextEncoderLayer`s, no final norm (`context_transformer_encoder`)."""

  def __init__(self, layers: List[ContextEncoderLayer]):
    super().__init__()
    self.layers = nn.ModuleList(layers)

  def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    for layer in self.layers:
      src = layer(src, pos)
    return src


class AVTransformer(nn.Module):
  """The public `AV_Transformer` on audio tokens `x (B, C, T)` and context `(B, N, Dc)`.

  `x_in + proj_out(blocks(proj_in(GroupNorm(x)), c))` with
  `c = context_encoder(context_proj(context))`, sinusoidal positions on the encoder's
  queries/keys only, and `proj_out` zero-initialised. An optional `time_token (B, inner)`
  (VisAH-FM) is appended to `c` after the encoder. GroupNorm uses gcd(32, C) groups
  (32 for the paper's C=768), eps 1e-6. `pe` is stored but unused, as in the public code.
  """

  def __init__(self, in_channels: int, latent: Mapping[str, Any]):
    super().__init__()
    inner = latent["n_heads"] * latent["d_head"]
    self.norm = nn.GroupNorm(math.gcd(32, in_channels), in_channels, eps=1e-6)
    self.proj_in = nn.Conv1d(in_channels, inner, 1)
    self.transformer_blocks = nn.ModuleList(
        [BasicTransformerBlock(inner, latent["n_heads"], latent["d_head"])
         for _ in range(latent["depth"])])
    self.context_proj = nn.Linear(latent["context_dim"], inner)
    self.context_transformer_encoder = ContextEncoder(
        [ContextEncoderLayer(inner, latent["context_heads"], latent["context_ff"],
                             latent["context_attention"])
         for _ in range(latent["context_layers"])])
    self.proj_out = nn.Conv1d(inner, in_channels, 1)
    with torch.no_grad():
      self.proj_out.weight.zero_()
      self.proj_out.bias.zero_()
    self.pe = PositionalEncoding(in_channels)
    self.pe_context = PositionalEncoding(inner)

  def forward(self, x: torch.Tensor, context: torch.Tensor,
              time_token: Optional[torch.Tensor] = None) -> torch.Tensor:
    x_in = x
    x = self.proj_in(self.norm(x)).transpose(1, 2)
    c = self.context_proj(context)
    c = self.context_transformer_encoder(c, self.pe_context.pe[:, :c.shape[1]])
    if time_token is not None:
      c = torch.cat([c, time_token[:, None, :].to(c)], dim=1)
    for block in self.transformer_blocks:
      x = block(x, c)
    return self.proj_out(x.transpose(1, 2)) + x_in


# --------------------------------------------------------------------------------------------
# VisAH-FM time conditioning (not in the public code: keys under `time_embed.`).


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0,
                       scale: float = 1000.0) -> torch.Tensor:
  """Latent-diffusion timestep embedding of `scale * t`: `[cos(.f_j), sin(.f_j)]`, `(B, dim)`.

  `f_j = max_period**(-j/half)`, `half = dim // 2`; an odd `dim` gets a trailing zero.
  """
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
  args = (scale * t.float())[:, None] * freqs.to(t.device)[None, :]
  emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
  return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
  """Flow time -> context token, and optionally per-encoder-layer channel biases.

  `token = linear_2(SiLU(linear_1(timestep_embedding(t))))`, `(B, inner)`. With encoder
  injection, `encoder.{i}` / `tencoder.{i}` (zero-initialised) map `SiLU(token)` to a bias
  added after the conv of encoder layer i of the frequency / time branch (empty layers
  excepted).
  """

  def __init__(self, embed_dim: int, inner: int, encoder_channels: Optional[List[int]] = None,
               tencoder_channels: Optional[List[int]] = None):
    super().__init__()
    self.embed_dim = embed_dim
    self.linear_1 = nn.Linear(embed_dim, inner)
    self.linear_2 = nn.Linear(inner, inner)
    self.encoder = self.tencoder = None
    if encoder_channels is not None:
      self.encoder = nn.ModuleList([nn.Linear(inner, c) for c in encoder_channels])
      self.tencoder = nn.ModuleList([nn.Linear(inner, c) for c in tencoder_channels])
      with torch.no_grad():
        for linear in [*self.encoder, *self.tencoder]:
          linear.weight.zero_()
          linear.bias.zero_()

  def forward(self, t: torch.Tensor) -> torch.Tensor:
    return self.linear_2(F.silu(self.linear_1(timestep_embedding(t, self.embed_dim))))


# --------------------------------------------------------------------------------------------
# The hybrid U-Net with its latent transformer.


def _cfg(cfg: Mapping[str, Any], name: str) -> Any:
  try:
    return cfg[name]
  except KeyError:
    raise KeyError(f"model config has no field {name!r}") from None


def layer_plan(cfg: Mapping[str, Any]) -> List[Dict[str, Any]]:
  """Per-layer structure of the hybrid U-Net, as `HDemucs.__init__` derives it.

  Frequency layers stride the frequency axis by `stride` until `freqs <= kernel_size`; that
  layer ("last_freq") takes all remaining bins without padding and the time branch meets it
  with an empty layer (conv only). Later layers are time layers with kernel `2*time_stride`.

  Generalisation shared with the Flax model (exact for the public `nfft=4096`): upstream needs
  the time branch's total stride `stride**n_freq` to equal the hop `nfft // 4`; here the empty
  merge layer takes the stride `hop // stride**(n_freq - 1)` (kernel scaled alike), so that
  e.g. `nfft=512` gets a stride-2 merge layer. Each entry's `t_kernel`/`t_stride` give the
  time-branch twin of a frequency layer.
  """
  depth, nfft = _cfg(cfg, "depth"), _cfg(cfg, "nfft")
  kernel, stride = _cfg(cfg, "kernel_size"), _cfg(cfg, "stride")
  if nfft % 4:
    raise ValueError(f"nfft must be a multiple of 4, got {nfft}")
  n_freq, freqs = 0, nfft // 2
  while freqs > 1:
    n_freq += 1
    freqs = 1 if freqs <= kernel else freqs // stride
  if depth < n_freq:
    raise ValueError(f"depth {depth} < {n_freq} frequency layers: the branches never merge")
  before_merge = stride**(n_freq - 1)
  merge_stride = nfft // 4 // before_merge
  merge_kernel = kernel * merge_stride // stride
  if ((nfft // 4) % before_merge or kernel * merge_stride % stride
      or merge_kernel - 2 * (merge_kernel // 4) != merge_stride):
    raise ValueError(f"nfft={nfft} does not fit the time branch (stride {stride}, "
                     f"{n_freq} frequency layers)")

  chin, chout = _cfg(cfg, "audio_channels"), _cfg(cfg, "channels")
  freqs = nfft // 2
  plan = []
  for index in range(depth):
    freq = freqs > 1
    ker, stri, pad, last_freq = kernel, stride, True, False
    if not freq:
      ker, stri = 2 * _cfg(cfg, "time_stride"), _cfg(cfg, "time_stride")
    elif freqs <= kernel:
      ker, pad, last_freq = freqs, False, True
    if freq:
      freqs = 1 if freqs <= kernel else freqs // stride
    plan.append(dict(
        index=index, chin=chin, chout=chout, kernel_size=ker, stride=stri, freq=freq, pad=pad,
        last_freq=last_freq, freqs_out=freqs, norm=index >= _cfg(cfg, "norm_starts"),
        lstm=index >= _cfg(cfg, "dconv_lstm"), attn=index >= _cfg(cfg, "dconv_attn"),
        t_kernel=merge_kernel if last_freq else kernel,
        t_stride=merge_stride if last_freq else stride))
    chin, chout = chout, int(_cfg(cfg, "growth") * chout)
  return plan


class HDemucsRemixer(nn.Module):
  """The VisAH network `u(mix, context[, t])`: mono `(B, C, L)` -> `(B, C, L)`.

  Build it with `build_visah(cfg)`. Frequency-branch encoder layers are `encoder.i`, the
  time branch `tencoder.i` (its last one empty), decoders `decoder.j`/`tdecoder.j`, then
  `freq_emb`, `latent_transformer` and, for VisAH-FM, `time_embed`.
  """

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    latent = _cfg(cfg, "latent")
    if latent["context_attention"] not in CONTEXT_ATTENTION_MODES:
      raise ValueError(f"unknown context_attention {latent['context_attention']!r}; "
                       f"expected one of {CONTEXT_ATTENTION_MODES}")
    time_mode = cfg.get("time_conditioning", "none")
    if time_mode not in TIME_CONDITIONING_MODES:
      raise ValueError(f"unknown time_conditioning {time_mode!r}; "
                       f"expected one of {TIME_CONDITIONING_MODES}")
    self.nfft = _cfg(cfg, "nfft")
    self.freq_emb_scale = _cfg(cfg, "freq_emb")
    groups = _cfg(cfg, "norm_groups")
    plan = layer_plan(cfg)
    self.encoder = nn.ModuleList()
    self.decoder = nn.ModuleList()
    self.tencoder = nn.ModuleList()
    self.tdecoder = nn.ModuleList()
    for p in plan:
      dconv_kw = dict(compress=_cfg(cfg, "dconv_comp"), depth=_cfg(cfg, "dconv_depth"),
                      init=_cfg(cfg, "dconv_init"), lstm=p["lstm"], attn=p["attn"],
                      lstm_max_steps=_cfg(cfg, "lstm_max_steps"))
      shape = dict(kernel_size=p["kernel_size"], stride=p["stride"], freq=p["freq"], pad=p["pad"],
                   norm=p["norm"], norm_groups=groups)
      tshape = dict(shape, kernel_size=p["t_kernel"], stride=p["t_stride"], freq=False, pad=True)
      self.encoder.append(HEncLayer(p["chin"], p["chout"], dconv_kw=dconv_kw, **shape))
      self.decoder.insert(0, HDecLayer(p["chout"], p["chin"], last=p["index"] == 0, **shape))
      if p["freq"]:
        self.tencoder.append(HEncLayer(p["chin"], p["chout"], empty=p["last_freq"],
                                       dconv_kw=dconv_kw, **tshape))
        self.tdecoder.insert(0, HDecLayer(p["chout"], p["chin"], last=p["index"] == 0,
                                          empty=p["last_freq"], **tshape))
    if self.freq_emb_scale:
      self.freq_emb = ScaledEmbedding(plan[0]["freqs_out"], plan[0]["chout"],
                                      scale=_cfg(cfg, "emb_scale"), smooth=True)
    rescale = _cfg(cfg, "rescale")
    if rescale:
      _rescale_convs(self, rescale)
    bottleneck = plan[-1]["chout"]
    self.latent_transformer = AVTransformer(bottleneck, latent)
    self.time_conditioning = time_mode
    if time_mode != "none":
      channels = tchannels = None
      if time_mode == "latent_token+encoder":
        channels = [p["chout"] for p in plan]
        tchannels = [p["chout"] for p in plan if p["freq"] and not p["last_freq"]]
      self.time_embed = TimeEmbedding(_cfg(cfg, "time_embed_dim"),
                                      latent["n_heads"] * latent["d_head"], channels, tchannels)

  def forward(self, mix: torch.Tensor, context: torch.Tensor,
              t: Optional[torch.Tensor] = None) -> torch.Tensor:
    """`mix (B, C, L)`, `context (B, N, context_dim)`, `t (B,)` (VisAH-FM only) -> `(B, C, L)`."""
    if (t is None) != (self.time_conditioning == "none"):
      raise ValueError(f"time_conditioning={self.time_conditioning!r} "
                       f"{'needs' if t is None else 'takes no'} flow time t")
    length = mix.shape[-1]
    z = hybrid_spec(mix, self.nfft)
    mag, phase = z.abs(), z.angle()
    meant = mix.mean(dim=(1, 2), keepdim=True)
    stdt = mix.std(dim=(1, 2), keepdim=True)
    xt = (mix - meant) / (1e-5 + stdt)
    time_token = enc_bias = tenc_bias = None
    if t is not None:
      time_token = self.time_embed(t)
      if self.time_embed.encoder is not None:
        act = F.silu(time_token)
        enc_bias = [linear(act) for linear in self.time_embed.encoder]
        tenc_bias = [linear(act) for linear in self.time_embed.tencoder]

    x = mag
    saved, saved_t, lengths, lengths_t = [], [], [], []
    for idx, encode in enumerate(self.encoder):
      lengths.append(x.shape[-1])
      inject = None
      if idx < len(self.tencoder):
        lengths_t.append(xt.shape[-1])
        tenc = self.tencoder[idx]
        xt = tenc(xt, time_bias=None if tenc.empty or tenc_bias is None else tenc_bias[idx])
        if tenc.empty:
          inject = xt
        else:
          saved_t.append(xt)
      x = encode(x, inject, None if enc_bias is None else enc_bias[idx])
      if idx == 0 and self.freq_emb_scale:
        emb = self.freq_emb(torch.arange(x.shape[-2], device=x.device)).t()
        x = x + self.freq_emb_scale * emb[None, :, :, None]
      saved.append(x)

    if x.dim() == 4:  # the merge layer was the last: the bottleneck still has its single frequency row
      x = x[:, :, 0]
    x = self.latent_transformer(x, context, time_token)

    offset = len(self.decoder) - len(self.tdecoder)
    for idx, decode in enumerate(self.decoder):
      x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
      if idx >= offset:
        tdec = self.tdecoder[idx - offset]
        if tdec.empty:
          xt, _ = tdec(pre[:, :, 0], None, lengths_t.pop(-1))
        else:
          xt, _ = tdec(xt, saved_t.pop(-1), lengths_t.pop(-1))

    zout = mag * x * torch.exp(1j * phase)
    return hybrid_ispec(zout, length) + xt * stdt + meant


def _rescale_convs(module: nn.Module, reference: float) -> None:
  """demucs `rescale_module`: divide each conv's weight and bias by sqrt(std(w) / reference)."""
  convs = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)
  with torch.no_grad():
    for sub in module.modules():
      if isinstance(sub, convs):
        scale = (sub.weight.std() / reference)**0.5
        sub.weight.div_(scale)
        if sub.bias is not None:
          sub.bias.div_(scale)


def build_visah(cfg: Mapping[str, Any]) -> HDemucsRemixer:
  """The VisAH (or, with `time_conditioning != "none"`, VisAH-FM) network for a model config."""
  return HDemucsRemixer(cfg)


# --------------------------------------------------------------------------------------------
# VisAH-FM sampling and the Lightning checkpoint container.


class VisAHFMHighlighter(nn.Module):
  """Euler integration of the VisAH-FM flow from the input mix (t=0) towards t=1.

  `x_{k+1} = x_k + v(x_k, k/N) / N` with `v = u(x_t, t, c) - x0` (warm start: the network
  predicts the target and `x0` is the input mix) or `v = u(x_t, t, c)` without warm start.
  `stop_after=k` runs only the first k of the N steps (a partial amount of remixing).
  """

  def __init__(self, model: HDemucsRemixer, num_steps: int = 4, warm_start: bool = True):
    super().__init__()
    if model.time_conditioning == "none":
      raise ValueError("VisAHFMHighlighter needs a model built with time conditioning")
    self.model = model
    self.num_steps = num_steps
    self.warm_start = warm_start

  def velocity(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor,
               context: torch.Tensor) -> torch.Tensor:
    u = self.model(x_t, context, t)
    return u - x0 if self.warm_start else u

  def forward(self, x0: torch.Tensor, context: torch.Tensor, num_steps: Optional[int] = None,
              stop_after: Optional[int] = None,
              return_trajectory: bool = False) -> Union[torch.Tensor, List[torch.Tensor]]:
    """`x0 (B, C, L)` -> the state after `stop_after` (default all) of `num_steps` steps.

    With `return_trajectory` it returns every state `[x0, x_1, ..., x_k]`.
    """
    n = self.num_steps if num_steps is None else num_steps
    if n < 1:
      raise ValueError(f"num_steps must be >= 1, got {n}")
    k = n if stop_after is None else stop_after
    if not 0 <= k <= n:
      raise ValueError(f"stop_after must be in [0, {n}], got {stop_after}")
    states = [x0]
    x = x0
    for i in range(k):
      t = torch.full((x0.shape[0],), i / n, dtype=x0.dtype, device=x0.device)
      x = x + self.velocity(x, t, x0, context) / n
      states.append(x)
    return states if return_trajectory else x


def lightning_state_dict(
    model: Union[nn.Module, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
  """The Lightning `state_dict` of the public training module around a network.

  `model` is the network or its `state_dict`. Keys are `model.` + the network's keys, plus
  `mr_stft_loss.stft_losses.{0,1,2}.window` (periodic Hann windows of 2048, 1024 and 512
  samples): 564 keys for the paper VisAH config.
  """
  state = model.state_dict() if isinstance(model, nn.Module) else model
  out = {f"model.{k}": v for k, v in state.items()}
  for i, n in enumerate(LOSS_WINDOW_SIZES):
    out[f"mr_stft_loss.stft_losses.{i}.window"] = torch.hann_window(n)
  return out


def load_lightning_state_dict(model: HDemucsRemixer,
                              state_dict: Mapping[str, torch.Tensor]) -> None:
  """Loads a Lightning checkpoint's `state_dict` (or a bare network dict) strictly into `model`.

  Accepts the full checkpoint (a dict holding `state_dict`) too; loss buffers are dropped.
  """
  if "state_dict" in state_dict:
    state_dict = state_dict["state_dict"]
  sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in state_dict.items()
        if not k.startswith("mr_stft_loss.")}
  model.load_state_dict(sd, strict=True)


class _LossWindow(nn.Module):
  """One resolution of the public `MultiResolutionSTFTLoss`: its periodic Hann `window` buffer."""

  def __init__(self, n_fft: int):
    super().__init__()
    self.register_buffer("window", torch.hann_window(n_fft))


class LightningVisAH(nn.Module):
  """The state layout of the public Lightning `VisAH` module: `model` (the network) and
  `mr_stft_loss.stft_losses.{0,1,2}.window`, so its checkpoint loads with `strict=True`."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    self.model = build_visah(cfg)
    self.mr_stft_loss = nn.Module()
    self.mr_stft_loss.stft_losses = nn.ModuleList([_LossWindow(n) for n in LOSS_WINDOW_SIZES])

  def forward(self, mix: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    return self.model(mix, context)


def load_export(path: str) -> Tuple[HDemucsRemixer, Dict[str, Any], Dict[str, torch.Tensor]]:
  """Reads an `avflow export --format=torch` `.safetensors` file.

  Returns `(network, config, conditioner)`: the network built from `config["model"]` with
  the `model.` tensors loaded strictly (eval mode), the avflow config as a dict, and the other
  tensors by key (`frame_encoder.`, `clip.`, `clap.`). The VisAH-FM highlighter is
  `VisAHFMHighlighter(network, config["inference"]["num_steps"], config["model"]["warm_start"])`.
  """
  try:
    from safetensors import safe_open
  except ImportError as e:
    raise ImportError("load_export reads .safetensors files and needs the safetensors package "
                      "(pip install safetensors)") from e
  with safe_open(path, framework="pt") as f:
    metadata = f.metadata() or {}
    if EXPORT_CONFIG_KEY not in metadata:
      raise ValueError(f"{path} has no {EXPORT_CONFIG_KEY!r} metadata: not written by "
                       f"`avflow export --format=torch`")
    tensors = {k: f.get_tensor(k) for k in f.keys()}
  config = json.loads(metadata[EXPORT_CONFIG_KEY])
  with torch.device("meta"):  # no random init: every tensor comes from the file
    model = build_visah(config["model"])
  model.load_state_dict({k[len("model."):]: v for k, v in tensors.items()
                         if k.startswith("model.")}, strict=True, assign=True)
  conditioner = {k: v for k, v in tensors.items() if not k.startswith("model.")}
  return model.eval(), config, conditioner

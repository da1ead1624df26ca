"""`HDemucsRemixer`: the hybrid Demucs U-Net of the public VisAH code, in Flax (channels-last).

A frequency branch (magnitude of the hybrid STFT, `(B, F, T, C)`) and a time branch
(normalised waveform, `(B, L, C)`) are encoded in parallel until the time branch reaches the
STFT hop; it is then added into the frequency branch ("merge"). Time-only layers follow
(stride `time_stride`), the latent audio-visual transformer runs on the bottleneck tokens
`(B, T', C')`, and the decoders mirror the encoders with U-Net skips. The frequency decoder
outputs an unbounded real mask on the mixture magnitude (mixture phase kept); the time
decoder outputs a waveform. Output: `ispec(mask * mix_spec) + de-normalised time branch`.

The construction follows `HDemucs.__init__` generically from `config.model`: frequency
layers divide the `nfft // 2` bins by `stride` until at most `kernel_size` remain, then a
"last_freq" layer (kernel = remaining bins, no padding) reaches one bin; its time-branch
twin is an "empty" layer (conv only) whose output is injected after the frequency conv.
Layers after the merge are time convs with kernel `2 * time_stride`. GroupNorm from layer
`norm_starts` on, BLSTM / LocalState in `DConv` from `dconv_lstm` / `dconv_attn` on.

Generalisation (exact for the public `nfft=4096`): upstream requires the time branch's total
stride before the merge, `stride**n_freq`, to equal the hop `nfft // 4`. Here the empty merge
layer takes the stride that makes them equal, `hop // stride**(n_freq - 1)` (kernel scaled
alike), so that e.g. `nfft=512` (4 frequency layers, hop 128) gets a stride-2 merge layer.
The public model (and any `nfft = 4**k`) is unchanged.

Parameter tree -> PyTorch keys (`model.` prefix in the VisAH checkpoint). A Flax name
`xxx_{i}` is the PyTorch `xxx.{i}`; sub-modules of a DConv branch keep their PyTorch
`Sequential` index as name. Leaves: conv and conv-transpose `kernel` -> `weight` by `.T`
(1-D) or `transpose(3, 2, 0, 1)` (2-D; the inverse is `transpose(2, 3, 1, 0)`), see
`avflow.nn.demucs_layers`; GroupNorm `scale` -> `weight` (a `scale` next to a `bias`),
Dense `kernel` -> `weight` (`.T`); `bias`, LayerScale `scale` (no `bias` beside it) and the
LSTM tensors unchanged; `freq_emb/embedding` -> `freq_emb.embedding.weight`.

| Flax path                                      | PyTorch key                                    |
|------------------------------------------------|------------------------------------------------|
| encoder_{i}/conv/{kernel,bias}                 | encoder.{i}.conv.{weight,bias}                 |
| encoder_{i}/{norm1,norm2} (i >= norm_starts)   | encoder.{i}.{norm1,norm2}                      |
| encoder_{i}/rewrite                            | encoder.{i}.rewrite                            |
| encoder_{i}/dconv/layers_{d}/{0,1,3,4,6}       | encoder.{i}.dconv.layers.{d}.{0,1,3,4,6}       |
| encoder_{i}/dconv/layers_{d}/3/lstm/*          | encoder.{i}.dconv.layers.{d}.3.lstm.*          |
| encoder_{i}/dconv/layers_{d}/3/linear          | encoder.{i}.dconv.layers.{d}.3.linear          |
| encoder_{i}/dconv/layers_{d}/4/{query,...}     | encoder.{i}.dconv.layers.{d}.4.{query,...}     |
| encoder_{i}/dconv/layers_{d}/{5,6,8}           | encoder.{i}.dconv.layers.{d}.{5,6,8}           |
| tencoder_{i}/...                               | tencoder.{i}....                               |
| decoder_{j}/{conv_tr,rewrite,norm1,norm2}      | decoder.{j}.{conv_tr,rewrite,norm1,norm2}      |
| tdecoder_{j}/{conv_tr,rewrite,norm2}           | tdecoder.{j}.{conv_tr,rewrite,norm2}           |
| freq_emb/embedding                             | freq_emb.embedding.weight (stored / emb_scale) |
| latent_transformer/...                         | latent_transformer.... (`avflow.models.visah.latent`) |

Extra parameters with no PyTorch counterpart (only with
`time_conditioning == "latent_token+encoder"`): `encoder_time_{i}` and `tencoder_time_{i}`,
Dense layers from the time token to the channels of encoder layer i (zero-initialised).
"""
import dataclasses
from typing import List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.models.visah.latent import AVLatentTransformer
from avflow.nn.demucs_layers import (Conv, ConvTranspose, DConv, ScaledEmbedding, gelu, glu,
                                     group_norm)
from avflow.nn.stft import hybrid_ispec, hybrid_spec

TIME_CONDITIONING = ("none", "latent_token", "latent_token+encoder")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """Arguments of one `HEncLayer` / `HDecLayer` (`pad` resolved to a sample count)."""
  chin: int
  chout: int
  kernel: int
  stride: int
  freq: bool
  pad: int
  norm: bool
  empty: bool = False
  lstm: bool = False
  attn: bool = False
  last: bool = False


@dataclasses.dataclass(frozen=True)
class UNetPlan:
  """All layers of the U-Net; decoders listed in the order they are applied."""
  encoder: Tuple[LayerSpec, ...]
  tencoder: Tuple[LayerSpec, ...]
  decoder: Tuple[LayerSpec, ...]
  tdecoder: Tuple[LayerSpec, ...]
  freq_emb: Optional[Tuple[int, int]]  # (bins after encoder_0, channels)


def unet_plan(cfg: ml_collections.ConfigDict) -> UNetPlan:
  """The `HDemucs.__init__` construction for `config.model` (magnitude input, one source)."""
  if cfg.nfft % 4:
    raise ValueError(f"nfft must be a multiple of 4, got {cfg.nfft}")
  hop = cfg.nfft // 4
  n_freq, freqs = 0, cfg.nfft // 2
  while freqs > 1:
    n_freq += 1
    freqs = 1 if freqs <= cfg.kernel_size else freqs // cfg.stride
  if cfg.depth < n_freq:
    raise ValueError(f"depth {cfg.depth} < {n_freq} frequency layers: the branches never merge")
  before_merge = cfg.stride**(n_freq - 1)
  merge_stride = hop // before_merge
  merge_kernel = cfg.kernel_size * merge_stride // cfg.stride
  # A time conv (kernel k, padding k // 4) must map n * stride samples to exactly n.
  if (hop % before_merge or cfg.kernel_size * merge_stride % cfg.stride
      or merge_kernel - 2 * (merge_kernel // 4) != merge_stride):
    raise ValueError(f"nfft={cfg.nfft} does not fit the time branch (stride {cfg.stride}, "
                     f"{n_freq} frequency layers)")

  encoder, tencoder, decoder, tdecoder = [], [], [], []
  freq_emb = None
  chin = chin_z = cfg.audio_channels
  chout = chout_z = cfg.channels
  freqs = cfg.nfft // 2
  for index in range(cfg.depth):
    freq = freqs > 1
    kernel, stride, pad = cfg.kernel_size, cfg.stride, cfg.kernel_size // 4
    if not freq:
      kernel, stride = 2 * cfg.time_stride, cfg.time_stride
      pad = kernel // 4
    last_freq = freq and freqs <= cfg.kernel_size
    if last_freq:
      kernel, pad = freqs, 0
      chout_z = chout = max(chout, chout_z)
    norm = index >= cfg.norm_starts
    dconv = dict(lstm=index >= cfg.dconv_lstm, attn=index >= cfg.dconv_attn)
    encoder.append(LayerSpec(chin_z, chout_z, kernel, stride, freq, pad, norm, **dconv))
    if freq:
      t_kernel, t_stride = ((merge_kernel, merge_stride) if last_freq
                            else (cfg.kernel_size, cfg.stride))
      tencoder.append(LayerSpec(chin, chout, t_kernel, t_stride, False, t_kernel // 4, norm,
                                empty=last_freq, **dconv))
    if index == 0:
      chin = chin_z = cfg.audio_channels
    decoder.insert(0, LayerSpec(chout_z, chin_z, kernel, stride, freq, pad, norm,
                                last=index == 0))
    if freq:
      tdecoder.insert(0, LayerSpec(chout, chin, t_kernel, t_stride, False, t_kernel // 4, norm,
                                   empty=last_freq, last=index == 0))
    chin, chin_z = chout, chout_z
    chout, chout_z = int(cfg.growth * chout), int(cfg.growth * chout_z)
    if freq:
      freqs = 1 if freqs <= cfg.kernel_size else freqs // cfg.stride
    if index == 0 and cfg.freq_emb:
      freq_emb = (freqs, chin_z)
  return UNetPlan(tuple(encoder), tuple(tencoder), tuple(decoder), tuple(tdecoder), freq_emb)


class HEncLayer(nn.Module):
  """Hybrid encoder layer (frequency `(B, F, T, C)` or time `(B, T, C)`).

  `y = GELU(norm1(conv(x) + inject + time_bias))`, `y = DConv(y)` (per frequency row),
  `z = GLU(norm2(rewrite(y)))` with `rewrite` a 1x1 conv to 2C. An `empty` layer is the
  conv only. Time layers right-pad the input to a multiple of the stride.
  """
  spec: LayerSpec
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, inject: Optional[jax.Array] = None,
               time_bias: Optional[jax.Array] = None) -> jax.Array:
    s, cfg = self.spec, self.cfg
    rescale, impl = cfg.rescale or None, cfg.get("conv_impl", "auto")
    if s.freq:
      conv = Conv(s.chout, (s.kernel, 1), (s.stride, 1), ((s.pad, s.pad), (0, 0)),
                  rescale=rescale, impl=impl, name="conv")
    else:
      if x.ndim == 4:  # (B, F, T, C) -> (B, T, C * F) as the PyTorch view(B, -1, T)
        b, f, t, c = x.shape
        x = jnp.transpose(x, (0, 2, 3, 1)).reshape(b, t, c * f)
      x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % s.stride), (0, 0)))
      conv = Conv(s.chout, (s.kernel,), (s.stride,), ((s.pad, s.pad),), rescale=rescale,
                  impl=impl, name="conv")
    y = conv(x)
    if s.empty:
      return y
    if inject is not None:
      y = y + (inject[:, None] if y.ndim == 4 else inject)
    if time_bias is not None:
      y = y + time_bias.reshape(time_bias.shape[0], *(1,) * (y.ndim - 2), -1)
    if s.norm:
      y = group_norm(cfg.norm_groups, "norm1")(y)
    y = gelu(y)
    dconv = DConv(s.chout, compress=cfg.dconv_comp, depth=cfg.dconv_depth,
                  scale_init=cfg.dconv_init, lstm=s.lstm, attn=s.attn,
                  lstm_max_steps=cfg.lstm_max_steps, rescale=rescale, conv_impl=impl, name="dconv")
    if s.freq:
      b, f, t, c = y.shape
      y = dconv(y.reshape(b * f, t, c)).reshape(b, f, t, c)
    else:
      y = dconv(y)
    kernel = (1, 1) if s.freq else (1,)
    z = Conv(2 * s.chout, kernel, rescale=rescale, impl=impl, name="rewrite")(y)
    if s.norm:
      z = group_norm(cfg.norm_groups, "norm2")(z)
    return glu(z)


class HDecLayer(nn.Module):
  """Hybrid decoder layer; returns `(z, y)`, `y` the input of the transposed conv.

  `x = x + skip`, `y = GLU(norm1(rewrite(x)))` (3x3 conv in 2-D, k3 in 1-D),
  `z = norm2(conv_tr(y))` cropped by `pad` (frequency axis; time: `[pad : pad + length]`),
  GELU unless last. An `empty` layer is `norm2(conv_tr(x))` only.
  """
  spec: LayerSpec
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x: jax.Array, skip: Optional[jax.Array],
               length: int) -> Tuple[jax.Array, jax.Array]:
    s, cfg = self.spec, self.cfg
    rescale, impl = cfg.rescale or None, cfg.get("conv_impl", "auto")
    if s.freq and x.ndim == 3:
      x = x[:, None]
    if s.empty:
      y = x
    else:
      x = x + skip
      if s.freq:
        rewrite = Conv(2 * s.chin, (3, 3), padding=((1, 1), (1, 1)), rescale=rescale, impl=impl,
                       name="rewrite")
      else:
        rewrite = Conv(2 * s.chin, (3,), padding=((1, 1),), rescale=rescale, impl=impl,
                       name="rewrite")
      y = rewrite(x)
      if s.norm:
        y = group_norm(cfg.norm_groups, "norm1")(y)
      y = glu(y)
    if s.freq:
      z = ConvTranspose(s.chout, (s.kernel, 1), (s.stride, 1), rescale=rescale, impl=impl,
                        name="conv_tr")(y)
    else:
      z = ConvTranspose(s.chout, (s.kernel,), (s.stride,), rescale=rescale, impl=impl,
                        name="conv_tr")(y)
    if s.norm:
      z = group_norm(cfg.norm_groups, "norm2")(z)
    if s.freq:
      if s.pad:
        z = z[:, s.pad:-s.pad]
    else:
      z = z[:, s.pad:s.pad + length]
    if not s.last:
      z = gelu(z)
    return z, y


class HDemucsRemixer(nn.Module):
  """The VisAH U-Net: `mix (B, L, C)`, `context (B, N, context_dim)` -> `(B, L, C)`.

  `cfg` is `config.model`. `time_token (B, n_heads * d_head)` (optional) is appended to the
  latent transformer's context and, with `time_conditioning == "latent_token+encoder"`,
  also added (through SiLU + a zero-initialised Dense) after the conv of every non-empty
  encoder layer of both branches.
  """
  cfg: ml_collections.ConfigDict

  def setup(self):
    cfg = self.cfg
    if cfg.time_conditioning not in TIME_CONDITIONING:
      raise ValueError(f"unknown time_conditioning {cfg.time_conditioning!r}; "
                       f"expected one of {TIME_CONDITIONING}")
    plan = unet_plan(cfg)
    self.plan = plan
    self.encoder = [HEncLayer(s, cfg) for s in plan.encoder]
    self.tencoder = [HEncLayer(s, cfg) for s in plan.tencoder]
    self.decoder = [HDecLayer(s, cfg) for s in plan.decoder]
    self.tdecoder = [HDecLayer(s, cfg) for s in plan.tdecoder]
    if plan.freq_emb:
      self.freq_emb = ScaledEmbedding(*plan.freq_emb, scale=cfg.emb_scale, smooth=True)
    self.latent_transformer = AVLatentTransformer(cfg=cfg.latent, in_channels=plan.encoder[-1].chout,
                                                  conv_impl=cfg.get("conv_impl", "auto"))
    if cfg.time_conditioning == "latent_token+encoder":
      zeros = nn.initializers.zeros_init()
      self.encoder_time = {str(i): nn.Dense(s.chout, kernel_init=zeros)
                           for i, s in enumerate(plan.encoder)}
      self.tencoder_time = {str(i): nn.Dense(s.chout, kernel_init=zeros)
                            for i, s in enumerate(plan.tencoder) if not s.empty}

  def __call__(self, mix: jax.Array, context: jax.Array,
               time_token: Optional[jax.Array] = None) -> jax.Array:
    cfg, plan = self.cfg, self.plan
    if (time_token is None) != (cfg.time_conditioning == "none"):
      raise ValueError(f"time_conditioning={cfg.time_conditioning!r} "
                       f"{'needs' if time_token is None else 'takes no'} time_token")
    length = mix.shape[1]
    z = jnp.moveaxis(hybrid_spec(jnp.moveaxis(mix, -1, 1), cfg.nfft), 1, -1)  # (B, F, T, C)
    x = jnp.abs(z)  # the frequency branch sees the raw, un-normalised magnitude
    mean = jnp.mean(mix, axis=(1, 2), keepdims=True)
    std = jnp.std(mix, axis=(1, 2), keepdims=True, ddof=1)
    xt = (mix - mean) / (1e-5 + std)

    encoder_bias = tencoder_bias = None
    if cfg.time_conditioning == "latent_token+encoder":
      act = nn.silu(time_token)
      encoder_bias = {k: layer(act) for k, layer in self.encoder_time.items()}
      tencoder_bias = {k: layer(act) for k, layer in self.tencoder_time.items()}

    saved: List[jax.Array] = []
    saved_t: List[jax.Array] = []
    lengths: List[int] = []
    lengths_t: List[int] = []
    for idx, encode in enumerate(self.encoder):
      lengths.append(x.shape[-2] if x.ndim == 4 else x.shape[1])
      inject = None
      if idx < len(self.tencoder):
        lengths_t.append(xt.shape[1])
        bias = tencoder_bias.get(str(idx)) if tencoder_bias else None
        xt = self.tencoder[idx](xt, time_bias=bias)
        if plan.tencoder[idx].empty:
          inject = xt
        else:
          saved_t.append(xt)
      bias = encoder_bias[str(idx)] if encoder_bias else None
      x = encode(x, inject, bias)
      if idx == 0 and plan.freq_emb:
        emb = self.freq_emb(jnp.arange(x.shape[1]))
        x = x + cfg.freq_emb * emb[None, :, None, :]
      saved.append(x)

    if x.ndim == 4:  # bottleneck still has its single frequency row
      x = x[:, 0]
    x = self.latent_transformer(x, context, time_token)

    offset = len(self.decoder) - len(self.tdecoder)
    for idx, decode in enumerate(self.decoder):
      x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
      if idx >= offset:
        tdec = self.tdecoder[idx - offset]
        if plan.tdecoder[idx - offset].empty:
          xt, _ = tdec(pre[:, 0], None, lengths_t.pop(-1))
        else:
          xt, _ = tdec(xt, saved_t.pop(-1), lengths_t.pop(-1))

    # Real mask on the mixture spectrogram: |z| * mask * exp(i angle z) == mask * z.
    spec = jnp.moveaxis(z * x, -1, 1)
    out = jnp.moveaxis(hybrid_ispec(spec, length), 1, -1)
    return out + xt * std + mean

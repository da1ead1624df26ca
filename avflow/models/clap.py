"""CLAP audio encoder (HTSAT) in Flax: the audio features E of the VisAH-FM adapter (Eq. 6).

The network reproduces transformers' `ClapAudioModelWithProjection` for non-fused
checkpoints (`enable_fusion=False`, e.g. `laion/clap-htsat-unfused`):

    mel (B, M, T, 1) --BatchNorm over mel bins (running statistics)--> reshape to a square
    "image": time is stretched to spec_size * r frames (bicubic, align_corners=True) and cut
    into r = spec_size / M chunks stacked along frequency -> (B, spec_size, spec_size, 1)
    -> patch embedding (conv + LayerNorm) -> Swin stages (windowed attention with relative
    position bias, shifted windows in odd blocks, patch merging between stages) -> LayerNorm
    -> tokens regrouped to (B, F', T', C) with T' covering the whole clip
    -> audio_embeds = audio_projection(mean of all tokens)   # Linear, ReLU, Linear

`tokens (B, F'*T', C)` (F'-major, as transformers flattens `last_hidden_state`) is the
sequence E fed to the CLIP adapter; `audio_embeds` is the pooled projected embedding.

Front end, in JAX so that it runs inside the training graph on the remixed x0:
- `resample`: band-limited sinc resampling with a Hann window (torchaudio's default
  `sinc_interp_hann`, 6 zero crossings, rolloff 0.99), e.g. 44.1 kHz -> 48 kHz;
- `fit_length`: `ClapFeatureExtractor` with `truncation="rand_trunc"`: longer clips are
  cropped to `max_samples` (random start with a key, the first samples without), shorter ones
  padded per `padding` (`repeatpad`: whole repeats then zeros; `repeat`: repeats cut to length;
  `pad`: zeros);
- `log_mel_spectrogram`: `avflow.nn.stft.stft` (centered, reflect-padded, periodic Hann), power
  spectrum, Slaney-scale Slaney-normalized mel filters (f_min..f_max), 10·log10 with a 1e-10
  floor, exactly the extractor's non-fusion path.
Not reproduced: `truncation="fusion"` (the random 3-crop + downsampled 4-channel mel with the
HTK filter bank) and the fused model's attentional feature fusion block, which only fused
checkpoints use.

The input BatchNorm runs in inference mode; its running statistics are stored as parameters
(`batch_norm/{mean,var}`) behind `stop_gradient`, so the tree has a single `params`
collection. The encoder is meant to be frozen (`avflow.train.partition.freeze`).

Full variant: `ClapAudioConfig()` defaults, 28,190,872 PyTorch parameters (Flax: +128 for the
BatchNorm statistics). The paper's "~31M" presumably also counts the original HTSAT's AudioSet
head (`tscam_conv` 768->527 with a 2x3 kernel plus a 527x527 Linear, ~2.7M, 30.9M in all),
which transformers and this port drop.
"""
import dataclasses
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avflow.nn.stft import stft

PADDING_MODES = ("repeatpad", "repeat", "pad")


@dataclasses.dataclass(frozen=True)
class CLAPConfig:
  """Front end (`ClapFeatureExtractor`) and HTSAT sizes (`ClapAudioConfig` names in brackets)."""
  sample_rate: int = 48000
  n_fft: int = 1024                 # fft_window_size
  hop_length: int = 480
  num_mel_bins: int = 64            # feature_size / num_mel_bins
  f_min: float = 0.0
  f_max: float = 14000.0
  max_samples: int = 480000         # max_length_s * sampling_rate
  padding: str = "repeatpad"
  spec_size: int = 256
  patch_size: int = 4
  patch_stride: int = 4
  window_size: int = 8
  embed_dim: int = 96               # patch_embeds_hidden_size
  depths: tuple = (2, 2, 6, 2)
  heads: tuple = (4, 8, 16, 32)     # num_attention_heads
  mlp_ratio: float = 4.0
  projection_dim: int = 512
  layer_norm_eps: float = 1e-5
  dtype: Any = jnp.float32          # compute dtype; parameters stay float32

  @property
  def hidden_size(self) -> int:
    return self.embed_dim * 2 ** (len(self.depths) - 1)

  @property
  def freq_ratio(self) -> int:
    return self.spec_size // self.num_mel_bins

  @property
  def num_frames(self) -> int:
    return self.max_samples // self.hop_length + 1

  def resolutions(self) -> list[int]:
    grid = self.spec_size // self.patch_stride
    return [grid // 2 ** i for i in range(len(self.depths))]

  def __post_init__(self):
    object.__setattr__(self, "depths", tuple(self.depths))   # hashable, for static jit arguments
    object.__setattr__(self, "heads", tuple(self.heads))
    if self.padding not in PADDING_MODES:
      raise ValueError(f"padding {self.padding!r} is not one of {PADDING_MODES}")
    if len(self.depths) != len(self.heads):
      raise ValueError("depths and heads must have one entry per stage")
    if self.spec_size % self.num_mel_bins:
      raise ValueError(f"spec_size {self.spec_size} is not a multiple of num_mel_bins {self.num_mel_bins}")
    if self.num_frames > self.spec_size * self.freq_ratio:
      raise ValueError(f"{self.num_frames} mel frames exceed the model's {self.spec_size * self.freq_ratio}")
    if (self.patch_size - self.patch_stride) % 2 or self.spec_size % self.patch_stride:
      raise ValueError("patch_size - patch_stride must be even and patch_stride must divide spec_size")
    for res in self.resolutions():
      if res < self.window_size or res % self.window_size:
        raise ValueError(f"stage resolution {res} must be a multiple of window_size {self.window_size}")
    if self.resolutions()[-1] % self.freq_ratio:
      raise ValueError("the last stage's resolution must be a multiple of spec_size / num_mel_bins")


VARIANTS = {
    "full": CLAPConfig(),
    "tiny": CLAPConfig(num_mel_bins=16, max_samples=96000, spec_size=64, window_size=4, embed_dim=16,
                       depths=(2, 2, 2), heads=(1, 2, 4), projection_dim=32),
}


def clap_config(name: str, **overrides) -> CLAPConfig:
  """A named variant (`full`, `tiny`) with optional field overrides."""
  if name not in VARIANTS:
    raise ValueError(f"unknown CLAP variant {name!r}; expected one of {', '.join(VARIANTS)}")
  return dataclasses.replace(VARIANTS[name], **overrides)


# ----------------------------------------------------------------------------- front end


def resample(x: jax.Array, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> jax.Array:
  """Resample `x (..., L)` from `orig_sr` to `new_sr` (torchaudio `resample` semantics).

  In JAX beside the host's `avflow.audio.resample` because CLAP resamples the mix inside the jitted model.

  Output length `ceil(L * new_sr / orig_sr)`.
  """
  if orig_sr == new_sr:
    return x
  g = math.gcd(int(orig_sr), int(new_sr))
  orig, new = int(orig_sr) // g, int(new_sr) // g
  base = min(orig, new) * rolloff
  width = math.ceil(lowpass_filter_width * orig / base)
  idx = np.arange(-width, width + orig, dtype=np.float64) / orig
  t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx[None]) * base
  t = np.clip(t, -lowpass_filter_width, lowpass_filter_width)
  window = np.cos(t * np.pi / lowpass_filter_width / 2) ** 2
  t = t * np.pi
  safe = np.where(t == 0, 1.0, t)
  kernel = np.where(t == 0, 1.0, np.sin(safe) / safe) * window * base / orig    # (new, taps)
  shape, length = x.shape[:-1], x.shape[-1]
  flat = jnp.pad(x.reshape(-1, length), ((0, 0), (width, width + orig)))
  out = jax.lax.conv_general_dilated(
      flat[:, :, None], jnp.asarray(kernel.T[:, None, :], x.dtype), (orig,), "VALID",
      dimension_numbers=("NWC", "WIO", "NWC"))                                  # (N, frames, new)
  target = math.ceil(new * length / orig)
  return out.reshape(out.shape[0], -1)[:, :target].reshape(*shape, target)


def fit_length(audio: jax.Array, max_samples: int, padding: str = "repeatpad",
               key: Optional[jax.Array] = None) -> jax.Array:
  """Crop or pad `audio (B, L)` to `max_samples` as the extractor's `rand_trunc` mode."""
  b, length = audio.shape
  if length > max_samples:
    if key is None:
      return audio[:, :max_samples]
    starts = jax.random.randint(key, (b,), 0, length - max_samples + 1)
    return jax.vmap(lambda a, s: jax.lax.dynamic_slice_in_dim(a, s, max_samples))(audio, starts)
  if length < max_samples:
    if padding == "repeat":
      audio = jnp.tile(audio, (1, max_samples // length + 1))[:, :max_samples]
    elif padding == "repeatpad":
      audio = jnp.tile(audio, (1, max_samples // length))
    elif padding != "pad":
      raise ValueError(f"padding {padding!r} is not one of {PADDING_MODES}")
    audio = jnp.pad(audio, ((0, 0), (0, max_samples - audio.shape[1])))
  return audio


def _hz_to_mel(f):
  f = np.asarray(f, np.float64)
  log_region = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * 27.0 / np.log(6.4)
  return np.where(f >= 1000.0, log_region, 3.0 * f / 200.0)


def _mel_to_hz(m):
  m = np.asarray(m, np.float64)
  return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)


def mel_filter_bank(num_freqs: int, num_mels: int, f_min: float, f_max: float, sample_rate: int) -> np.ndarray:
  """Slaney-scale, Slaney-normalized triangular filters `(num_freqs, num_mels)` (librosa default)."""
  filter_freqs = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), num_mels + 2))
  fft_freqs = np.linspace(0, sample_rate // 2, num_freqs)
  slopes = filter_freqs[None, :] - fft_freqs[:, None]
  diff = np.diff(filter_freqs)
  down = -slopes[:, :-2] / diff[:-1]
  up = slopes[:, 2:] / diff[1:]
  filters = np.maximum(0.0, np.minimum(down, up))
  return filters * (2.0 / (filter_freqs[2:] - filter_freqs[:-2]))[None, :]


def log_mel_spectrogram(audio: jax.Array, config: "CLAPConfig") -> jax.Array:
  """`audio (B, L)` at `config.sample_rate` -> log-mel in dB `(B, M, T, 1)` (freq, time, channel)."""
  n = config.n_fft
  power = jnp.abs(stft(audio, n, config.hop_length)) ** 2
  filters = mel_filter_bank(n // 2 + 1, config.num_mel_bins, config.f_min, config.f_max, config.sample_rate)
  mel = jnp.einsum("bft,fm->bmt", power, jnp.asarray(filters, power.dtype))
  return (10.0 * jnp.log10(jnp.maximum(mel, 1e-10)))[..., None]


def audio_features(audio: jax.Array, sample_rate: int, config: "CLAPConfig",
                   key: Optional[jax.Array] = None) -> jax.Array:
  """Waveform `(B, L, 1)` or `(B, L)` at `sample_rate` -> model input `(B, M, num_frames, 1)`."""
  x = audio[..., 0] if audio.ndim == 3 else audio
  x = resample(x.astype(jnp.float32), sample_rate, config.sample_rate)
  x = fit_length(x, config.max_samples, config.padding, key)
  return log_mel_spectrogram(x, config)


def _cubic_interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
  """`(n_out, n_in)` weights of torch's bicubic resize (A = -0.75, align_corners=True)."""
  a = -0.75
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  real = scale * np.arange(n_out)
  base = np.floor(real).astype(int)
  t = real - base
  c1 = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1
  c2 = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  weights = np.stack([c2(t + 1), c1(t), c1(1 - t), c2(2 - t)], axis=1)
  matrix = np.zeros((n_out, n_in))
  for j in range(4):
    np.add.at(matrix, (np.arange(n_out), np.clip(base - 1 + j, 0, n_in - 1)), weights[:, j])
  return matrix


# ----------------------------------------------------------------------------- network


def _dense(features: int, dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(0.02))


def _layer_norm(eps: float, dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32)


class FrozenBatchNorm(nn.Module):
  """Inference-mode BatchNorm over the last axis; running statistics are constant parameters."""
  eps: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, (c,), jnp.float32))
    var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, (c,), jnp.float32))
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


def _relative_position_index(w: int) -> np.ndarray:
  coords = np.stack(np.meshgrid(np.arange(w), np.arange(w), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (w - 1)
  return rel[..., 0] * (2 * w - 1) + rel[..., 1]                     # (w*w, w*w)


def _shift_mask(size: int, w: int, shift: int) -> np.ndarray:
  """`(num_windows, w*w, w*w)` additive mask (0 / -100) of shifted-window attention."""
  idx = np.arange(size)
  region = (idx >= size - w).astype(int) + (idx >= size - shift).astype(int)
  labels = (region[:, None] * 3 + region[None, :]).astype(np.float32)
  windows = labels.reshape(size // w, w, size // w, w).transpose(0, 2, 1, 3).reshape(-1, w * w)
  diff = windows[:, None, :] - windows[:, :, None]
  return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class ClapAudioSelfAttention(nn.Module):
  """Window attention with a learned relative position bias table."""
  dim: int
  heads: int
  window: int
  dtype: Any = jnp.float32

  def setup(self):
    self.query = _dense(self.dim, self.dtype)
    self.key = _dense(self.dim, self.dtype)
    self.value = _dense(self.dim, self.dtype)
    self.relative_position_bias_table = self.param(
        "relative_position_bias_table", nn.initializers.normal(0.02),
        ((2 * self.window - 1) ** 2, self.heads), jnp.float32)

  def __call__(self, x: jax.Array, mask: Optional[np.ndarray]) -> jax.Array:
    n, length, _ = x.shape                                            # n = batch * windows
    dh = self.dim // self.heads
    split = lambda t: t.reshape(n, length, self.heads, dh)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(dh)
    bias = self.relative_position_bias_table[_relative_position_index(self.window).reshape(-1)]
    scores = scores + bias.reshape(length, length, self.heads).transpose(2, 0, 1)[None].astype(scores.dtype)
    if mask is not None:
      nw = mask.shape[0]
      scores = scores.reshape(n // nw, nw, self.heads, length, length) + jnp.asarray(mask)[None, :, None]
      scores = scores.reshape(n, self.heads, length, length)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(n, length, self.dim)


class ClapAudioDense(nn.Module):
  """A module holding one `dense` (transformers' `intermediate` / `output` wrappers)."""
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.dense = _dense(self.features, self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.dense(x)


class ClapAudioAttention(nn.Module):
  dim: int
  heads: int
  window: int
  dtype: Any = jnp.float32

  def setup(self):
    self.self = ClapAudioSelfAttention(self.dim, self.heads, self.window, self.dtype)
    self.output = ClapAudioDense(self.dim, self.dtype)

  def __call__(self, x: jax.Array, mask: Optional[np.ndarray]) -> jax.Array:
    return self.output(self.self(x, mask))


class ClapAudioLayer(nn.Module):
  """Swin block on a `size x size` grid: (shifted-)window attention and a GELU MLP, pre-LN."""
  dim: int
  heads: int
  window: int
  shift: int
  size: int
  mlp_ratio: float
  eps: float
  dtype: Any = jnp.float32

  def setup(self):
    self.layernorm_before = _layer_norm(self.eps, self.dtype)
    self.attention = ClapAudioAttention(self.dim, self.heads, self.window, self.dtype)
    self.layernorm_after = _layer_norm(self.eps, self.dtype)
    self.intermediate = ClapAudioDense(int(self.mlp_ratio * self.dim), self.dtype)
    self.output = ClapAudioDense(self.dim, self.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, s, w, c = x.shape[0], self.size, self.window, self.dim
    h = self.layernorm_before(x).reshape(b, s, s, c)
    if self.shift:
      h = jnp.roll(h, (-self.shift, -self.shift), axis=(1, 2))
    h = h.reshape(b, s // w, w, s // w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)
    h = self.attention(h, _shift_mask(s, w, self.shift) if self.shift else None)
    h = h.reshape(b, s // w, s // w, w, w, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, s, s, c)
    if self.shift:
      h = jnp.roll(h, (self.shift, self.shift), axis=(1, 2))
    x = x + h.reshape(b, s * s, c)
    return x + self.output(jax.nn.gelu(self.intermediate(self.layernorm_after(x)), approximate=False))


class ClapAudioPatchMerging(nn.Module):
  """2x2 neighbourhood concat (transformers order) -> LayerNorm(4C) -> Linear(4C -> 2C, no bias)."""
  dim: int
  size: int
  dtype: Any = jnp.float32

  def setup(self):
    self.norm = _layer_norm(1e-5, self.dtype)
    self.reduction = _dense(2 * self.dim, self.dtype, use_bias=False)

  def __call__(self, x: jax.Array) -> jax.Array:
    b = x.shape[0]
    x = x.reshape(b, self.size, self.size, self.dim)
    x = jnp.concatenate([x[:, row::2, col::2] for col in range(2) for row in range(2)], axis=-1)
    return self.reduction(self.norm(x.reshape(b, -1, 4 * self.dim)))


class ClapAudioStage(nn.Module):
  cfg: CLAPConfig
  index: int

  def setup(self):
    cfg, i = self.cfg, self.index
    dim, size = cfg.embed_dim * 2 ** i, cfg.resolutions()[i]
    shift = lambda j: cfg.window_size // 2 if j % 2 and size > cfg.window_size else 0
    self.blocks = [ClapAudioLayer(dim, cfg.heads[i], cfg.window_size, shift(j), size, cfg.mlp_ratio,
                                  cfg.layer_norm_eps, cfg.dtype) for j in range(cfg.depths[i])]
    if i < len(cfg.depths) - 1:
      self.downsample = ClapAudioPatchMerging(dim, size, cfg.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    for block in self.blocks:
      x = block(x)
    return self.downsample(x) if self.index < len(self.cfg.depths) - 1 else x


class ClapAudioPatchEmbed(nn.Module):
  cfg: CLAPConfig

  def setup(self):
    cfg = self.cfg
    pad = (cfg.patch_size - cfg.patch_stride) // 2
    self.proj = nn.Conv(cfg.embed_dim, (cfg.patch_size,) * 2, strides=(cfg.patch_stride,) * 2,
                        padding=((pad, pad), (pad, pad)), dtype=cfg.dtype, param_dtype=jnp.float32)
    self.norm = _layer_norm(1e-5, cfg.dtype)

  def __call__(self, image: jax.Array) -> jax.Array:
    x = self.proj(image)
    return self.norm(x.reshape(x.shape[0], -1, x.shape[-1]))


class ClapAudioEncoder(nn.Module):
  """HTSAT: mel `(B, M, T, 1)` -> (`last_hidden_state (B, F', T', C)`, pooled `(B, C)`)."""
  cfg: CLAPConfig

  def setup(self):
    cfg = self.cfg
    self.batch_norm = FrozenBatchNorm()
    self.patch_embed = ClapAudioPatchEmbed(cfg)
    self.layers = [ClapAudioStage(cfg, i) for i in range(len(cfg.depths))]
    self.norm = _layer_norm(1e-5, cfg.dtype)

  def mel_to_image(self, mel: jax.Array) -> jax.Array:
    """`(B, M, T)` -> `(B, spec_size, spec_size, 1)`: stretch time, stack r time chunks on freq."""
    cfg = self.cfg
    b, m, t = mel.shape
    r, width = cfg.freq_ratio, cfg.spec_size * cfg.freq_ratio
    if t > width or m != cfg.num_mel_bins:
      raise ValueError(f"expected (B, {cfg.num_mel_bins}, <= {width}) mel frames, got {mel.shape}")
    if t < width:
      mel = jnp.einsum("bmt,st->bms", mel, jnp.asarray(_cubic_interpolation_matrix(t, width), mel.dtype))
    x = mel.reshape(b, m, r, width // r).transpose(0, 2, 1, 3)
    return x.reshape(b, r * m, width // r, 1)

  def __call__(self, mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    cfg = self.cfg
    x = self.batch_norm(mel[..., 0].transpose(0, 2, 1)).transpose(0, 2, 1)   # BN over mel bins
    x = self.patch_embed(self.mel_to_image(x.astype(cfg.dtype)))
    for stage in self.layers:
      x = stage(x)
    x = self.norm(x)
    b, size, c, r = x.shape[0], cfg.resolutions()[-1], cfg.hidden_size, cfg.freq_ratio
    bins = size // r
    x = x.reshape(b, r, bins, size, c).transpose(0, 2, 1, 3, 4).reshape(b, bins, r * size, c)
    return x, jnp.mean(x, axis=(1, 2))


class ClapAudioModel(nn.Module):
  """transformers' `ClapAudioModel` namespace (`audio_model/audio_encoder/...`)."""
  cfg: CLAPConfig

  def setup(self):
    self.audio_encoder = ClapAudioEncoder(self.cfg)

  def __call__(self, mel: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.audio_encoder(mel)


class ClapProjectionLayer(nn.Module):
  cfg: CLAPConfig

  def setup(self):
    self.linear1 = _dense(self.cfg.projection_dim, self.cfg.dtype)
    self.linear2 = _dense(self.cfg.projection_dim, self.cfg.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear2(jax.nn.relu(self.linear1(x)))


class CLAPAudio(nn.Module):
  """`ClapAudioModelWithProjection`: `__call__(mel (B, M, T, 1))` -> dict with `tokens`
  `(B, F'*T', C)` (the adapter's E), `last_hidden_state (B, F', T', C)`, `pooled (B, C)`,
  `audio_embeds (B, projection_dim)` and its L2-normalized `audio_features`.
  `encode_audio(waveform, sample_rate)` runs the JAX front end first.
  """
  config: CLAPConfig

  def setup(self):
    self.audio_model = ClapAudioModel(self.config)
    self.audio_projection = ClapProjectionLayer(self.config)

  def __call__(self, mel: jax.Array) -> dict:
    hidden, pooled = self.audio_model(mel)
    embeds = self.audio_projection(pooled).astype(jnp.float32)
    return dict(tokens=hidden.reshape(hidden.shape[0], -1, hidden.shape[-1]), last_hidden_state=hidden,
                pooled=pooled, audio_embeds=embeds,
                audio_features=embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True))

  def encode_audio(self, audio: jax.Array, sample_rate: int, key: Optional[jax.Array] = None) -> dict:
    """Waveform `(B, L, 1)` at `sample_rate` -> outputs of `__call__`."""
    return self(audio_features(audio, sample_rate, self.config, key))


def init_clap(key: jax.Array, config: CLAPConfig) -> dict:
  """Random parameters."""
  mel = jnp.zeros((1, config.num_mel_bins, config.num_frames, 1))
  return CLAPAudio(config).init(key, mel)["params"]


def clap_forward(params: dict, mel: jax.Array, *, config: CLAPConfig) -> dict:
  """Pure-function form of `CLAPAudio.__call__`."""
  return CLAPAudio(config).apply({"params": params}, mel)


def encode_audio(params: dict, audio: jax.Array, sample_rate: int, *, config: CLAPConfig,
                 key: Optional[jax.Array] = None) -> dict:
  """Pure-function form of `CLAPAudio.encode_audio`."""
  return CLAPAudio(config).apply({"params": params}, audio, sample_rate, key, method=CLAPAudio.encode_audio)

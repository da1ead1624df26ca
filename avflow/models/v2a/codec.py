"""Latent audio codecs: the waveform <-> latent interface of video-to-audio generation, and a log-mel codec.

VAFlow (Sec. 3.2) generates in the latent space of a frozen 1-D "WaveVAE" (Stable Audio Open's: x_a ∈ ℝ^{215×64}
for 10 s at 44.1 kHz). `LatentCodec` is what such a codec offers the rest of avflow:

    encode(wave (B, L)) -> latents (B, T_a, D_a)     in JAX, so that it runs inside a jitted step
    decode(latents (B, T_a, D_a)) -> wave (B, L)     on the host (numpy)
    sample_rate, latent_rate (frames per second), latent_dim = D_a, num_frames(L) = T_a

`MelCodec` is the toy's codec, with nothing learned: a log-mel spectrogram whose decoder inverts it with
librosa's non-negative least squares (mel -> linear magnitude) and Griffin-Lim phase retrieval, so the audio of a
generated latent can be listened to.
"""
import abc
import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import librosa
import numpy as np

from avflow.nn.stft import stft


class LatentCodec(abc.ABC):
  """A frozen waveform codec: mono float32 audio at `sample_rate` <-> latent frames `(T_a, latent_dim)`."""
  sample_rate: int

  @property
  @abc.abstractmethod
  def latent_rate(self) -> float:
    """Latent frames per second of audio."""

  @property
  @abc.abstractmethod
  def latent_dim(self) -> int:
    """D_a, the width of one latent frame."""

  @abc.abstractmethod
  def num_frames(self, num_samples: int) -> int:
    """T_a, the latent frames `encode` gives for `num_samples` samples."""

  @abc.abstractmethod
  def encode(self, wave: jax.Array) -> jax.Array:
    """`wave (B, L)` -> latents `(B, num_frames(L), latent_dim)`; traceable by `jax.jit`."""

  @abc.abstractmethod
  def decode(self, latents, num_samples: Optional[int] = None) -> np.ndarray:
    """`latents (B, T_a, latent_dim)` -> float32 waveforms `(B, num_samples)` on the host; `num_samples=None` gives
    the codec's own length for T_a frames."""


@dataclasses.dataclass(frozen=True)
class MelCodec(LatentCodec):
  """Log-mel spectrogram codec.

  encode:  |STFT| (`avflow.nn.stft`: centred, reflect padding, periodic Hann of `n_fft`, hop `hop`)
           -> mel magnitude m (librosa's Slaney mel filterbank of `n_mels` bands in [fmin, fmax], `power=1`)
           -> latent = 2 · ln(max(m, floor) / floor) / ln(ceiling / floor) − 1
  The log scale maps mel magnitudes [floor, ceiling] = [1e-5, 10] linearly in ln onto [−1, 1]: silence is −1 and
  the loudest band of a full-scale sine (m ≈ 7–8 with n_fft = 1024) is ≈ 0.97. Frames: T_a = 1 + L // hop.
  decode:  m = floor · (ceiling / floor)^((latent + 1) / 2), then `librosa.feature.inverse.mel_to_stft` and
           `librosa.griffinlim` (`griffin_lim_iters` iterations, random initial phase from `seed`), as
           `librosa.feature.inverse.mel_to_audio` does but with a seeded initial phase.
  """
  sample_rate: int = 16000
  n_fft: int = 1024
  hop: int = 256
  n_mels: int = 64
  fmin: float = 0.0
  fmax: Optional[float] = None  # None: sample_rate / 2
  floor: float = 1e-5
  ceiling: float = 10.0
  griffin_lim_iters: int = 32
  seed: int = 0

  def __post_init__(self):
    if not 0.0 < self.floor < self.ceiling:
      raise ValueError(f"codec floor and ceiling must satisfy 0 < floor < ceiling, got {self.floor}, {self.ceiling}")
    if self.hop < 1 or self.hop > self.n_fft:
      raise ValueError(f"codec hop must be in [1, n_fft={self.n_fft}], got {self.hop}")

  @property
  def latent_rate(self) -> float:
    return self.sample_rate / self.hop

  @property
  def latent_dim(self) -> int:
    return self.n_mels

  def num_frames(self, num_samples: int) -> int:
    return 1 + num_samples // self.hop

  def _filterbank_args(self) -> dict:
    """`librosa.filters.mel` arguments besides `n_mels` (which `mel_to_stft` reads from its input)."""
    return dict(sr=self.sample_rate, n_fft=self.n_fft, fmin=self.fmin, fmax=self.fmax, htk=False, norm="slaney")

  def filterbank(self) -> np.ndarray:
    """The mel filterbank `(n_mels, n_fft // 2 + 1)` (`librosa.filters.mel`), float32."""
    return librosa.filters.mel(n_mels=self.n_mels, **self._filterbank_args()).astype(np.float32)

  @property
  def _log_span(self) -> float:
    return math.log(self.ceiling / self.floor)

  def encode(self, wave: jax.Array) -> jax.Array:
    magnitude = jnp.abs(stft(jnp.asarray(wave, jnp.float32), self.n_fft, self.hop))  # (B, F, T)
    mel = jnp.einsum("mf,bft->btm", self.filterbank(), magnitude, precision=jax.lax.Precision.HIGHEST)
    return 2.0 * jnp.log(jnp.maximum(mel, self.floor) / self.floor) / self._log_span - 1.0

  def decode(self, latents, num_samples: Optional[int] = None) -> np.ndarray:
    latents = np.asarray(latents, np.float64)
    if latents.ndim != 3 or latents.shape[-1] != self.n_mels:
      raise ValueError(f"latents must be (B, T_a, {self.n_mels}), got {latents.shape}")
    mel = self.floor * np.exp((latents + 1.0) / 2.0 * self._log_span)
    magnitude = librosa.feature.inverse.mel_to_stft(np.swapaxes(mel, 1, 2), power=1.0, **self._filterbank_args())
    length = self.hop * (latents.shape[1] - 1) if num_samples is None else num_samples
    wave = librosa.griffinlim(magnitude, n_iter=self.griffin_lim_iters, hop_length=self.hop, n_fft=self.n_fft,
                              window="hann", center=True, length=length, pad_mode="reflect",
                              random_state=self.seed)
    return wave.astype(np.float32)

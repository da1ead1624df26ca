"""The DAVIS audio front end: STFT magnitude, log-frequency warp, log compression, mixture-phase resynthesis.

DAVIS (Sec. 3.4–3.5, App. C, Alg. 1–2) separates in a compressed log-frequency magnitude domain:

    X = |STFT(a)|                                  Hann n_fft = 1022, hop 256 at 11.025 kHz -> 512 bins
    W = warp(X)                                    the Sound-of-Pixels log-frequency resampling to 256 bins
    x = clip(σ · log(1 + W), 0, 1)                 σ = 0.15, the model's domain
    â = iSTFT(unwarp(exp(|x̂| / σ) − 1) · e^{i∠STFT(a_mix)})   magnitude estimate with the mixture phase

The STFT is `avflow.nn.stft` with the defaults of the librosa the public code pins (0.9: `center`, reflect
padding, periodic Hann window). The warp and unwarp are the public code's bilinear `grid_sample` (align_corners)
on the `warpgrid` grids, written here as fixed interpolation matrices along the frequency axis (the time grid of
`warpgrid` is the identity):

    warp:   output row i of n_out samples input bin p_i = (n_in − 1) · (21^{i/(n_out−1)} − 1) / 20
    unwarp: output bin j of n_out samples warped row q_j = (n_in − 1) · log(1 + 20 j/(n_out−1)) / log 21

(with a 1022-point STFT, n_in = 512 and n_out = 256 for the warp, 256 → 512 for the unwarp). The unwarp inverts
the warp's frequency map, so unwarp ∘ warp is the identity on spectra that are smooth on the scale of the warp's
coarsest row spacing (about 6 bins at the top of 512). Sizes are parameters, so toy configs use small ones.
"""
import dataclasses
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from avflow.nn.stft import istft, stft

LOG_SCALE = 0.15  # σ of DAVIS (Alg. 1)


def interpolation_matrix(positions: np.ndarray, n_in: int) -> np.ndarray:
  """`(len(positions), n_in)` float32 matrix of 1-D linear interpolation at fractional `positions` (input
  index units), zero outside `[0, n_in − 1]` as `grid_sample(padding_mode="zeros")`."""
  positions = np.asarray(positions, np.float64)
  lower = np.floor(positions).astype(np.int64)
  frac = positions - lower
  matrix = np.zeros((positions.size, n_in), np.float64)
  rows = np.arange(positions.size)
  for index, weight in ((lower, 1.0 - frac), (lower + 1, frac)):
    inside = (index >= 0) & (index < n_in)
    matrix[rows[inside], index[inside]] += weight[inside]
  return matrix.astype(np.float32)


def warp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The log-frequency warp `(n_out, n_in)`: linear bins -> log-spaced rows (`warpgrid(warp=True)`)."""
  y = np.linspace(-1.0, 1.0, n_out)
  grid = (np.power(21.0, (y + 1.0) / 2.0) - 11.0) / 10.0
  return interpolation_matrix((grid + 1.0) / 2.0 * (n_in - 1), n_in)


def unwarp_matrix(n_in: int, n_out: int) -> np.ndarray:
  """The inverse warp `(n_out, n_in)`: log-spaced rows -> linear bins (`warpgrid(warp=False)`)."""
  y = np.linspace(-1.0, 1.0, n_out)
  grid = np.log(y * 10.0 + 11.0) / math.log(21.0) * 2.0 - 1.0
  return interpolation_matrix((grid + 1.0) / 2.0 * (n_in - 1), n_in)


def apply_along_frequency(matrix: np.ndarray, spec: jax.Array, axis: int) -> jax.Array:
  """`matrix (F_out, F_in)` applied to the frequency `axis` of `spec` (size F_in) -> size F_out there."""
  out = jnp.tensordot(jnp.asarray(matrix, spec.dtype), spec, axes=((1,), (axis,)))
  return jnp.moveaxis(out, 0, axis)


def compress(magnitude: jax.Array, scale: float = LOG_SCALE) -> jax.Array:
  """`clip(scale · log(1 + |X|), 0, 1)`, the model's magnitude domain (Alg. 1)."""
  return jnp.clip(scale * jnp.log1p(magnitude), 0.0, 1.0)


def expand(x: jax.Array, scale: float = LOG_SCALE) -> jax.Array:
  """The inverse of `compress` on [0, 1]: `exp(|x| / scale) − 1` (Alg. 2; the absolute value as the public code,
  so that a negative estimate still gives a non-negative magnitude)."""
  return jnp.expm1(jnp.abs(x) / scale)


def mixture_phase_istft(magnitude: jax.Array, mixture_spec: jax.Array, n_fft: int, hop: int,
                        length: Optional[int] = None) -> jax.Array:
  """Waveform `(..., L)` of a magnitude estimate `(..., F, T)` with the phase of the mixture's STFT `(..., F, T)`.

  Bins where the mixture is exactly zero take phase 0 (`np.angle(0)`)."""
  spec = magnitude * jnp.exp(1j * jnp.angle(mixture_spec))
  return istft(spec, n_fft, hop, length=length)


@dataclasses.dataclass(frozen=True)
class Spectrogram:
  """The front end of one configuration: `n_fft`, `hop`, `bins` (rows of the model input after the log-frequency
  warp; None keeps the `n_fft // 2 + 1` linear bins) and the compression `scale` σ.

  Layouts: waveforms `(B, L)`, complex spectra `(B, n_fft // 2 + 1, T)` (torch's), model inputs and outputs
  channels-last `(B, bins, T, 1)`.
  """
  n_fft: int = 1022
  hop: int = 256
  bins: Optional[int] = 256
  scale: float = LOG_SCALE

  @property
  def linear_bins(self) -> int:
    return self.n_fft // 2 + 1

  def spec(self, wave: jax.Array) -> jax.Array:
    """Complex STFT `(B, n_fft // 2 + 1, T)` of `wave (B, L)` (`librosa.stft` with reflect padding)."""
    return stft(wave, self.n_fft, self.hop)

  def to_model(self, spec: jax.Array) -> jax.Array:
    """`(B, F, T)` complex (or magnitude) -> model domain `(B, bins, T, 1)` in [0, 1]: warp, then compress."""
    magnitude = jnp.abs(spec)
    if self.bins is not None:
      magnitude = apply_along_frequency(warp_matrix(self.linear_bins, self.bins), magnitude, axis=-2)
    return compress(magnitude, self.scale)[..., None]

  def magnitude(self, x: jax.Array) -> jax.Array:
    """Model domain `(B, bins, T, 1)` -> linear-frequency magnitude `(B, n_fft // 2 + 1, T)`: expand, unwarp."""
    magnitude = expand(x[..., 0], self.scale)
    if self.bins is not None:
      magnitude = apply_along_frequency(unwarp_matrix(self.bins, self.linear_bins), magnitude, axis=-2)
    return magnitude

  def resynthesize(self, x: jax.Array, mixture_spec: jax.Array, length: Optional[int] = None) -> jax.Array:
    """Waveform `(B, L)` of a model-domain estimate `x (B, bins, T, 1)` with the mixture's phase (Alg. 2)."""
    return mixture_phase_istft(self.magnitude(x), mixture_spec, self.n_fft, self.hop, length)

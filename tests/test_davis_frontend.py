"""The DAVIS front end: log-frequency warp against `grid_sample`, STFT against librosa, round trips, compression,
mixture-phase resynthesis."""
import librosa
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avflow.models.davis import presets
from avflow.nn.spectrogram import (Spectrogram, apply_along_frequency, compress, expand, mixture_phase_istft,
                                   unwarp_matrix, warp_matrix)


def _grid(rows: int, cols: int, warp: bool) -> np.ndarray:
  """The Sound-of-Pixels sampling grid `(1, rows, cols, 2)` in float64: x linear, y log-warped or its inverse."""
  x, y = np.meshgrid(np.linspace(-1, 1, cols), np.linspace(-1, 1, rows))
  y = (21.0**((y + 1) / 2) - 11) / 10 if warp else np.log(10 * y + 11) / np.log(21) * 2 - 1
  return np.stack([x, y], axis=-1)[None]


@pytest.mark.parametrize("n_in,n_out,warp", [(512, 256, True), (256, 512, False), (64, 32, True), (32, 64, False)])
def test_warp_matrices_match_grid_sample(n_in, n_out, warp):
  frames = 7
  spec = np.random.default_rng(0).uniform(0, 3, (2, n_in, frames))
  grid = torch.from_numpy(_grid(n_out, frames, warp)).expand(2, -1, -1, -1)
  ref = F.grid_sample(torch.from_numpy(spec[:, None]), grid, align_corners=True).numpy()[:, 0]
  matrix = warp_matrix(n_in, n_out) if warp else unwarp_matrix(n_in, n_out)
  np.testing.assert_allclose(np.asarray(apply_along_frequency(matrix, spec.astype(np.float32), axis=-2)), ref,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_in,n_warped,tol", [(512, 256, 5e-4), (64, 32, 2e-2)])
def test_unwarp_inverts_the_warp_on_smooth_spectra(n_in, n_warped, tol):
  f = np.linspace(0, 1, n_in)
  smooth = 1 + np.exp(-((f - 0.3) / 0.15)**2) + 0.5 * np.cos(2 * np.pi * f) + f
  rough = np.random.default_rng(0).uniform(0, 2, n_in)
  roundtrip = unwarp_matrix(n_warped, n_in) @ warp_matrix(n_in, n_warped)
  assert np.abs(roundtrip @ smooth - smooth).max() < tol * smooth.max()
  # The warp halves the resolution: bin-to-bin noise at high frequencies is not recovered.
  assert np.abs(roundtrip @ rough - rough).max() > 0.3


def test_stft_matches_librosa_and_round_trips():
  audio = presets.audio_config("paper")
  front = presets.spectrogram(audio)
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, (1, audio.clip_samples)).astype(np.float32)
  spec = np.asarray(front.spec(wave))
  assert spec.shape == (1, 512, 256)
  ref = librosa.stft(wave[0], n_fft=audio.n_fft, hop_length=audio.hop, pad_mode="reflect")
  np.testing.assert_allclose(spec[0], ref, atol=1e-4)
  back = np.asarray(mixture_phase_istft(np.abs(spec), spec, front.n_fft, front.hop))
  assert back.shape == (1, 255 * 256)  # librosa.istft without a length, as the public evaluation
  np.testing.assert_allclose(back, wave[:, :back.shape[1]], atol=1e-5)


def test_compression_inverse_is_exact_inside_the_clamp():
  sigma = 0.15
  top = np.expm1(1 / sigma)  # the largest magnitude below the clamp
  magnitude = np.concatenate([[0.0], np.geomspace(1e-4, 0.999 * top, 50)]).astype(np.float32)
  x = np.asarray(compress(magnitude, sigma))
  np.testing.assert_allclose(x, sigma * np.log1p(magnitude.astype(np.float64)), rtol=1e-6)
  assert x.max() < 1
  np.testing.assert_allclose(np.asarray(expand(x, sigma)), magnitude, rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(compress(np.float32([2 * top, 1e6]), sigma)), [1.0, 1.0])
  np.testing.assert_array_equal(np.asarray(expand(-x, sigma)), np.asarray(expand(x, sigma)))  # |x̂| as the code


def test_mixture_phase_resynthesis_recovers_sources_disjoint_in_time():
  """No STFT frame sees both sources (a silent gap of n_fft samples), so in every bin the mixture's phase is the
  phase of the only source present there, and its true magnitude with the mixture phase gives it back exactly."""
  front = Spectrogram(n_fft=126, hop=32, bins=None)
  rng = np.random.default_rng(0)
  n = 1024
  a, b = np.zeros(n, np.float32), np.zeros(n, np.float32)
  a[:400] = rng.uniform(-1, 1, 400)
  b[400 + front.n_fft:] = np.sin(0.3 * np.arange(n - 400 - front.n_fft))
  mixture_spec = front.spec((a + b)[None])
  for source in (a, b):
    estimate = front.resynthesize(front.to_model(front.spec(source[None])), mixture_spec, length=n)
    np.testing.assert_allclose(np.asarray(estimate)[0], source, atol=1e-5)
  # The phase is what carries it: the same magnitude with the phase of a different signal is far off.
  other_spec = front.spec(rng.uniform(-1, 1, (1, n)).astype(np.float32))
  wrong = front.resynthesize(front.to_model(front.spec(a[None])), other_spec, length=n)
  assert np.abs(np.asarray(wrong)[0] - a).max() > 0.5


def test_model_domain_round_trip_through_the_warp():
  audio = presets.audio_config("toy")
  front = Spectrogram(n_fft=126, hop=64, bins=32)  # 64 linear bins warped to 32 rows
  t = np.arange(audio.clip_samples) / audio.sample_rate
  wave = (0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(t.size)).astype(np.float32)[None]
  spec = front.spec(wave)
  x = np.asarray(front.to_model(spec))
  assert x.shape == (1, front.bins, 32, 1) and 0 <= x.min() and x.max() <= 1
  warped = apply_along_frequency(warp_matrix(front.linear_bins, front.bins), np.abs(np.asarray(spec)), axis=-2)
  np.testing.assert_allclose(np.asarray(front.magnitude(x)),
                             apply_along_frequency(unwarp_matrix(front.bins, front.linear_bins), warped, axis=-2),
                             rtol=1e-4, atol=1e-5)

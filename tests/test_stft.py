"""STFT / iSTFT against torch.stft / torch.istft, round trips, and the hybrid Demucs spectrogram."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avflow.nn.stft import hann_window, hybrid_ispec, hybrid_spec, istft, stft

# (n_fft, hop, win_length, length, normalized, center)
CASES = [
    (512, 128, None, 3000, False, True),
    (2048, 441, 1764, 9000, False, True),  # the Mag metric: Hann(1764) zero-padded to 2048
    (400, 160, 300, 2001, True, True),
    (256, 100, None, 1500, False, False),
    (64, 16, 63, 700, False, True),  # odd window in an even frame
]


def _signal(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _torch_stft(x, n_fft, hop, win, normalized, center):
  wl = win or n_fft
  return torch.stft(torch.from_numpy(x), n_fft, hop, wl, window=torch.hann_window(wl),
                    center=center, normalized=normalized, pad_mode="reflect",
                    return_complex=True).numpy()


def test_hann_window_matches_torch():
  for n in (1, 8, 1764, 4096):
    np.testing.assert_allclose(hann_window(n), torch.hann_window(n).numpy(), atol=1e-6)


@pytest.mark.parametrize("n_fft,hop,win,length,normalized,center", CASES)
def test_stft_matches_torch(n_fft, hop, win, length, normalized, center):
  x = _signal((2, length))
  ref = _torch_stft(x, n_fft, hop, win, normalized, center)
  out = np.asarray(jax.jit(lambda s: stft(s, n_fft, hop, win, center=center,
                                          normalized=normalized))(x))
  assert out.shape == ref.shape and out.dtype == np.complex64
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-5)


# A Hann window without centring violates NOLA at the first sample: torch.istft refuses it.
@pytest.mark.parametrize("n_fft,hop,win,length,normalized,center", [c for c in CASES if c[-1]])
def test_istft_matches_torch_and_inverts(n_fft, hop, win, length, normalized, center):
  x = _signal((3, length), seed=1)
  z = _torch_stft(x, n_fft, hop, win, normalized, center)
  wl = win or n_fft
  for out_len in (None, length):
    ref = torch.istft(torch.from_numpy(z), n_fft, hop, wl, window=torch.hann_window(wl),
                      center=center, normalized=normalized, length=out_len).numpy()
    out = np.asarray(jax.jit(lambda s: istft(s, n_fft, hop, win, center=center,
                                             normalized=normalized, length=out_len))(z))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-4)
    n = min(out.shape[-1], length)  # perfect reconstruction where frames cover the signal
    np.testing.assert_allclose(out[..., :n], x[..., :n], atol=1e-5)


def test_istft_length_longer_than_signal_zero_pads():
  x = _signal((1, 1000))
  z = stft(x, 256, 64)
  y = istft(z, 256, 64, length=1300)
  assert y.shape == (1, 1300)
  np.testing.assert_allclose(np.asarray(y[:, :1000]), x, atol=1e-5)
  # torch crops at the last frame's end, (16 - 1) * 64 + 256 - 128 = 1088, then zero-pads
  assert np.all(np.asarray(y[:, 1088:]) == 0) and np.any(np.asarray(y[:, 1000:1088]))


def test_istft_rejects_window_without_overlap():
  with pytest.raises(ValueError, match="NOLA"):
    istft(jnp.zeros((1, 33, 5), jnp.complex64), 64, 64, win_length=32)


def test_stft_batch_axes_and_gradient():
  x = _signal((2, 3, 800))
  z = stft(x, 128, 32)
  assert z.shape == (2, 3, 65, 26)
  np.testing.assert_allclose(np.asarray(z[1, 2]), np.asarray(stft(x[1, 2], 128, 32)), atol=1e-5)
  g = jax.grad(lambda s: jnp.sum(jnp.abs(stft(s, 128, 32)) ** 2))(jnp.asarray(x))
  assert g.shape == x.shape and np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------------------------
# Hybrid Demucs spectrogram: a torch reference written from the description of `_spec` /
# `_ispec` (demucs `pad1d` reflect padding, not normalized as in VisAH).

def _torch_pad_reflect(x, left, right):
  length = x.shape[-1]
  if length <= max(left, right):
    extra = max(left, right) - length + 1
    extra_right = min(right, extra)
    extra_left = extra - extra_right
    x = F.pad(x, (extra_left, extra_right))
    left, right = left - extra_left, right - extra_right
  return F.pad(x, (left, right), mode="reflect")


def _torch_hybrid_spec(x, nfft):
  hop = nfft // 4
  le = math.ceil(x.shape[-1] / hop)
  pad = hop // 2 * 3
  xp = _torch_pad_reflect(x[:, None], pad, pad + le * hop - x.shape[-1])[:, 0]
  z = torch.stft(xp, nfft, hop, nfft, window=torch.hann_window(nfft), center=True,
                 normalized=False, pad_mode="reflect", return_complex=True)[..., :-1, :]
  assert z.shape[-1] == le + 4
  return z[..., 2:2 + le]


def _torch_hybrid_ispec(z, length):
  nfft = 2 * z.shape[-2]
  hop = nfft // 4
  z = F.pad(F.pad(z, (0, 0, 0, 1)), (2, 2))
  pad = hop // 2 * 3
  le = hop * math.ceil(length / hop) + 2 * pad
  x = torch.istft(z, nfft, hop, nfft, window=torch.hann_window(nfft), normalized=False,
                  length=le, center=True)
  return x[..., pad:pad + length]


@pytest.mark.parametrize("nfft,length", [(4096, 44100), (512, 32000), (512, 1000), (256, 100)])
def test_hybrid_spec_and_ispec_match_torch(nfft, length):
  x = _signal((2, length), seed=2)
  ref = _torch_hybrid_spec(torch.from_numpy(x), nfft)
  out = hybrid_spec(jnp.asarray(x), nfft)
  assert out.shape == (2, nfft // 2, math.ceil(length / (nfft // 4)))
  np.testing.assert_allclose(np.asarray(out), ref.numpy(), atol=2e-4, rtol=1e-5)
  back_ref = _torch_hybrid_ispec(ref, length).numpy()
  back = np.asarray(hybrid_ispec(out, length))
  assert back.shape == (2, length)
  np.testing.assert_allclose(back, back_ref, atol=1e-4)


def test_hybrid_round_trip_of_band_limited_signal():
  # Only the Nyquist bin is dropped, so a signal far below Nyquist comes back, except in the
  # first and last two hops, where frames dropped by the cropping are missing.
  length, nfft = 6000, 512
  n = np.arange(length)
  x = sum(a * np.sin(2 * np.pi * f * n + p) for a, f, p in [(0.5, 0.01, 0.3), (0.3, 0.07, 1.0),
                                                           (0.2, 0.19, 2.0)])
  x = x[None].astype(np.float32)
  y = np.asarray(hybrid_ispec(hybrid_spec(jnp.asarray(x), nfft), length))
  hop = nfft // 4
  np.testing.assert_allclose(y[:, 2 * hop:-2 * hop], x[:, 2 * hop:-2 * hop], atol=1e-4)

"""Short-time Fourier transform with PyTorch semantics, and the hybrid Demucs spectrogram.

`stft` / `istft` follow `torch.stft` / `torch.istft` (`return_complex=True`, one-sided):
`center=True` pads `n_fft // 2` samples on both sides (reflect by default), the default
window is the periodic Hann window of `win_length` (default `n_fft`) samples, a window
shorter than `n_fft` is zero-padded on both sides to `n_fft` (left pad
`(n_fft - win_length) // 2`, as torch does), and `normalized=True` scales by `n_fft**-0.5`.

Layout: a batch of 1-D signals `(..., L)` maps to complex spectrograms `(..., F, T)` with
`F = n_fft // 2 + 1` bins and `T` frames, the torch layout; appending a channel axis gives
the `(B, F, T, C)` layout of the rest of avflow.

Framing and overlap-add are done with reshapes and shifted slices (no gathers or
scatters), so both are cheap to differentiate on any backend.

`hybrid_spec` / `hybrid_ispec` are the padding and cropping of the hybrid Demucs model
(`_spec` / `_ispec` of the public VisAH and demucs code): the output has exactly
`ceil(L / hop)` frames and `nfft // 2` bins (the Nyquist bin is dropped), `hop = nfft // 4`.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np


def hann_window(n: int) -> np.ndarray:
  """Periodic Hann window of length `n` (`torch.hann_window(n)`, ones for n = 1), float32."""
  if n == 1:
    return np.ones(1, np.float32)
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)).astype(np.float32)


def _full_window(n_fft: int, win_length: Optional[int], window) -> np.ndarray:
  """The analysis window as applied to an `n_fft`-sample frame (zero-padded, centred)."""
  win_length = n_fft if win_length is None else win_length
  if not 0 < win_length <= n_fft:
    raise ValueError(f"win_length must be in [1, n_fft={n_fft}], got {win_length}")
  window = hann_window(win_length) if window is None else np.asarray(window, np.float32)
  if window.shape != (win_length,):
    raise ValueError(f"window must have shape ({win_length},), got {window.shape}")
  left = (n_fft - win_length) // 2
  return np.pad(window, (left, n_fft - win_length - left))


def _frames(x: jax.Array, frame_length: int, hop: int) -> jax.Array:
  """`x (..., L)` -> frames `(..., T, frame_length)` starting every `hop` samples."""
  n_frames = 1 + (x.shape[-1] - frame_length) // hop
  r = -(-frame_length // hop)  # blocks of `hop` samples spanned by one frame
  needed = (n_frames + r - 1) * hop
  x = x[..., :needed]
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, needed - x.shape[-1])])
  blocks = x.reshape(*x.shape[:-1], n_frames + r - 1, hop)
  frames = jnp.concatenate([blocks[..., k:k + n_frames, :] for k in range(r)], axis=-1)
  return frames[..., :frame_length]


def _overlap_add(frames: jax.Array, hop: int) -> jax.Array:
  """Inverse of `_frames` by summation: `(..., T, N)` -> `(..., (T - 1) * hop + N)`."""
  n_frames, frame_length = frames.shape[-2:]
  r = -(-frame_length // hop)
  lead = [(0, 0)] * (frames.ndim - 2)
  frames = jnp.pad(frames, lead + [(0, 0), (0, r * hop - frame_length)])
  blocks = frames.reshape(*frames.shape[:-1], r, hop)
  out = sum(jnp.pad(blocks[..., k, :], lead + [(k, r - 1 - k), (0, 0)]) for k in range(r))
  out = out.reshape(*out.shape[:-2], (n_frames + r - 1) * hop)
  return out[..., :(n_frames - 1) * hop + frame_length]


def stft(x: jax.Array, n_fft: int, hop_length: Optional[int] = None,
         win_length: Optional[int] = None, window=None, center: bool = True,
         pad_mode: str = "reflect", normalized: bool = False) -> jax.Array:
  """`torch.stft(..., return_complex=True)` of real signals `x (..., L)` -> `(..., F, T)`.

  `window` (optional) is a concrete array of `win_length` samples; default periodic Hann.
  `pad_mode` is a `jnp.pad` mode ("reflect" and "constant" match torch).
  """
  hop = n_fft // 4 if hop_length is None else hop_length
  win = _full_window(n_fft, win_length, window)
  if center:
    p = n_fft // 2
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(p, p)], mode=pad_mode)
  if x.shape[-1] < n_fft:
    raise ValueError(f"signal of {x.shape[-1]} samples is shorter than n_fft={n_fft}")
  spec = jnp.fft.rfft(_frames(x, n_fft, hop) * win, axis=-1)
  if normalized:
    spec = spec * n_fft**-0.5
  return jnp.swapaxes(spec, -1, -2)


def istft(z: jax.Array, n_fft: int, hop_length: Optional[int] = None,
          win_length: Optional[int] = None, window=None, center: bool = True,
          normalized: bool = False, length: Optional[int] = None) -> jax.Array:
  """`torch.istft` of one-sided spectrograms `z (..., n_fft // 2 + 1, T)` -> `(..., L)`.

  Windowed overlap-add divided by the overlap-added squared window. Without `length` the
  output has `(T - 1) * hop` samples when `center` (torch's default); with `length` it is
  cropped, or zero-padded at the end, to exactly `length` samples.
  """
  hop = n_fft // 4 if hop_length is None else hop_length
  if z.shape[-2] != n_fft // 2 + 1:
    raise ValueError(f"expected {n_fft // 2 + 1} frequency bins, got {z.shape[-2]}")
  win = _full_window(n_fft, win_length, window)
  n_frames = z.shape[-1]
  if normalized:
    z = z * n_fft**0.5
  frames = jnp.fft.irfft(jnp.swapaxes(z, -1, -2), n=n_fft, axis=-1) * win
  y = _overlap_add(frames, hop)
  full = (n_frames - 1) * hop + n_fft
  envelope = np.zeros(full, np.float64)
  np.add.at(envelope, hop * np.arange(n_frames)[:, None] + np.arange(n_fft), win**2)
  start = n_fft // 2 if center else 0
  if length is not None:
    end = start + length
  else:
    end = full - n_fft // 2 if center else full
  envelope = envelope[start:end].astype(np.float32)
  if envelope.size and envelope.min() < 1e-11:
    raise ValueError("window overlap-add is zero somewhere (NOLA condition fails)")
  y = y[..., start:end] / envelope
  if end > full:
    y = jnp.pad(y, [(0, 0)] * (y.ndim - 1) + [(0, end - full)])
  return y


def _pad_reflect(x: jax.Array, left: int, right: int) -> jax.Array:
  """Reflect padding that also works when the signal is not longer than the padding.

  As the demucs `pad1d`: if `L <= max(left, right)`, zeros are first added (to the right
  first, then to the left) so that the reflection is defined.
  """
  length = x.shape[-1]
  lead = [(0, 0)] * (x.ndim - 1)
  if length <= max(left, right):
    extra = max(left, right) - length + 1
    extra_right = min(right, extra)
    extra_left = extra - extra_right
    x = jnp.pad(x, lead + [(extra_left, extra_right)])
    left, right = left - extra_left, right - extra_right
  return jnp.pad(x, lead + [(left, right)], mode="reflect")


def hybrid_spec(x: jax.Array, nfft: int, normalized: bool = False) -> jax.Array:
  """Hybrid Demucs spectrogram of `x (..., L)` -> complex `(..., nfft // 2, ceil(L / hop))`.

  Reflect-pads by `3 * hop / 2` on the left and `3 * hop / 2 + ceil(L / hop) * hop - L` on
  the right, takes the STFT (`hop = nfft // 4`, Hann window of `nfft`, not normalized as in
  the public VisAH code), drops the Nyquist bin and keeps frames `[2, 2 + ceil(L / hop))`.
  """
  hop = nfft // 4
  length = x.shape[-1]
  le = math.ceil(length / hop)
  pad = hop // 2 * 3
  x = _pad_reflect(x, pad, pad + le * hop - length)
  z = stft(x, nfft, hop, normalized=normalized)[..., :-1, :]
  return z[..., 2:2 + le]


def hybrid_ispec(z: jax.Array, length: int, normalized: bool = False) -> jax.Array:
  """Inverse of `hybrid_spec`: `z (..., nfft // 2, T)` -> real `(..., length)`.

  Adds back a zero Nyquist row and two zero frames on each side, takes the iSTFT of length
  `hop * ceil(length / hop) + 3 * hop` and crops `[3 * hop / 2, 3 * hop / 2 + length)`.
  """
  nfft = 2 * z.shape[-2]
  hop = nfft // 4
  lead = [(0, 0)] * (z.ndim - 2)
  z = jnp.pad(z, lead + [(0, 1), (2, 2)])
  pad = hop // 2 * 3
  le = hop * math.ceil(length / hop) + 2 * pad
  x = istft(z, nfft, hop, normalized=normalized, length=le)
  return x[..., pad:pad + length]

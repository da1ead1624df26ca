"""Host-side audio shared by data preparation, inference and the metrics (numpy; no JAX)."""
import librosa
import numpy as np


def resample(x, orig_sr: int, target_sr: int) -> np.ndarray:
  """`x (..., L)` resampled along the last axis from `orig_sr` to `target_sr` Hz: float32 `(..., ceil(L · target_sr /
  orig_sr))`, `x` unchanged (as float32) at equal rates.

  The one host resampler: soxr at high quality, as `librosa.load` in the public Muddy Mix generator, so records,
  `highlight` and the metrics hear audio resampled alike. The in-graph `models.clap.resample` is its JAX twin.
  """
  x = np.asarray(x, np.float32)
  if orig_sr == target_sr:
    return x
  return librosa.resample(x, orig_sr=orig_sr, target_sr=target_sr)

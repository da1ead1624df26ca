"""Signal metrics of VisAH / VisAH-FM: Mag, Env and Was (W-dis), on the host in numpy/scipy.

Each follows the public VisAH evaluation code (`calculate_metrics` and its losses), quirks included:
Env pools the RMSE over a batch of clips (`envelope_distance`), and a set of clips is scored as that
code reports it, per batch of 20 clips averaged over batches (`envelope_distance_over_batches`); Was
compares the distributions of raw sample values, and no metric is scaled. The ×100 in the VisAH-FM
tables (Table 1 caption: "all values except the LDif are multiplied by 100") is applied only for
display, by `paper_display`.

Inputs are `(B, L)` or channels-last `(B, L, C)` float arrays (avflow's audio layout).
"""
import librosa
import numpy as np
import scipy.signal
import scipy.stats

MAG_FFT = 2048  # `fft_bins` of the public `FourierTransform`.
# The public evaluation's test batch (`testing.batch_size: 20` in visah/configs/main_config.yaml); Lightning logs
# each batch's Env with the constant batch_size=20 and reports the mean over the epoch's batches.
ENV_BATCH = 20


def _as_channels(x) -> np.ndarray:
  """`(B, L)` or `(B, L, C)` -> float64 `(C, B, L)`."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim == 2:
    return x[None]
  if x.ndim == 3:
    return np.moveaxis(x, -1, 0)
  raise ValueError(f"expected audio of shape (B, L) or (B, L, C), got {x.shape}")


def _check_pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
  p, t = _as_channels(pred), _as_channels(target)
  if p.shape != t.shape:
    raise ValueError(f"pred and target differ in shape: {np.shape(pred)} vs {np.shape(target)}")
  return p, t


def _stft_magnitude(x: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
  """`sqrt(re² + im² + 1e-8)` of `torch.stft(x, n_fft, hop, win_length, hann_window(win_length))`, by `librosa.stft`
  with torch's semantics: center=True with reflect padding of n_fft // 2, the periodic Hann window zero-padded
  centered to n_fft, not normalized, one-sided. `x (N, L)` -> `(N, n_fft // 2 + 1, frames)`.
  """
  if win_length > n_fft:
    raise ValueError(f"win_length {win_length} exceeds n_fft {n_fft}")
  pad = n_fft // 2
  if x.shape[-1] <= pad:
    raise ValueError(f"reflect padding of {pad} needs more than {pad} samples, got {x.shape[-1]}")
  spec = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win_length, window="hann", center=True,
                      pad_mode="reflect")
  return np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-8)


def mag_distance(pred, target, sample_rate: int) -> float:
  """Mag: mean |‖STFT(pred)‖ − ‖STFT(target)‖| over batch × bins × frames.

  As the public VisAH `AmplitudeLoss` (linear magnitudes): FFT 2048, window int(sr · 0.040)
  (1764 at 44.1 kHz), hop int(sr / 100) (441), Hann, torch.stft conventions.
  """
  p, t = _check_pair(pred, target)
  win_length, hop = int(sample_rate * 0.040), int(sample_rate / 100)
  total, count = 0.0, 0
  for p_row, t_row in zip(p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])):
    diff = np.abs(_stft_magnitude(p_row[None], MAG_FFT, hop, win_length)
                  - _stft_magnitude(t_row[None], MAG_FFT, hop, win_length))
    total += diff.sum()
    count += diff.size
  return float(total / count)


def envelope_distance(pred, target) -> float:
  """Env: RMSE between Hilbert envelopes, pooled over the whole batch, summed over channels.

  As the public VisAH `Envelop_distance`: envelope = |analytic signal| along time (no smoothing);
  per channel sqrt(mean((env_p − env_t)²)) over the (B, L) array, not per clip.
  """
  p, t = _check_pair(pred, target)
  env_p = np.abs(scipy.signal.hilbert(p, axis=-1))
  env_t = np.abs(scipy.signal.hilbert(t, axis=-1))
  return float(np.sqrt(np.mean((env_p - env_t) ** 2, axis=(1, 2))).sum())


def envelope_distance_over_batches(pred, target, batch_size: int = ENV_BATCH) -> float:
  """Env of a set of clips as the public VisAH evaluation reports it: `envelope_distance` pooled within each batch
  of `batch_size` consecutive clips, then the plain mean over batches (a smaller last batch counts as one, as
  Lightning's epoch mean with a constant logged batch size counts it). `batch_size=0` pools the whole set."""
  if batch_size < 0:
    raise ValueError(f"Env batch size must be >= 0 (0: pool the whole set), got {batch_size}")
  _check_pair(pred, target)
  pred, target = np.asarray(pred), np.asarray(target)
  size = batch_size or len(pred)
  return float(np.mean([envelope_distance(pred[i:i + size], target[i:i + size]) for i in range(0, len(pred), size)]))


def wasserstein(pred, target) -> float:
  """Was: 1-D Wasserstein-1 between the raw sample-value distributions, mean over B·C rows.

  As the public VisAH `WassersteinDistance`: each row's samples are an unordered empirical
  distribution, so time alignment plays no part.
  """
  p, t = _check_pair(pred, target)
  rows = zip(p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1]))
  return float(np.mean([scipy.stats.wasserstein_distance(t_row, p_row) for p_row, t_row in rows]))


def paper_display(metrics: dict) -> dict:
  """The VisAH-FM table scaling: every value ×100 except LDif (keys containing "ldif").

  The scaling comes from the paper's Table 1 caption; the public VisAH code logs raw values, so
  keep raw values everywhere else and call this only to print tables.
  """
  return {k: v if "ldif" in k.lower() else 100.0 * v for k, v in metrics.items()}

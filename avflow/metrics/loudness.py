"""LDif, the remixing metric of VisAH-FM (Eq. 8): mean over the 3 sources of |loud(s_k(x̂)) − loud(s_k(x))|.

The public VisAH code has no LDif; loudness here is the one the Muddy Mix generator uses
(`integrated_loudness`: pyloudnorm's ITU-R BS.1770 integrated loudness with a
0.4-s block, or the clip length when the clip is shorter). Sources are ordered as the Muddy Mix
stems (speech, music, effects).

Two ways to get the stems s_k:
- `oracle_ldif`: the prediction is projected by least squares onto the known input stems (every
  remix of the input is a gain per stem, so the projection recovers those gains exactly);
- `separator_ldif`: any `Separator` (the paper uses a source-separation model on both signals).

Silent stems (integrated loudness −inf, i.e. every block below the −70 LUFS absolute gate):
- a source whose target stem is silent is left out of the mean (its loudness is undefined);
- a silent predicted stem whose target is not silent counts at `LOUDNESS_FLOOR` = −70 LUFS, the
  BS.1770 absolute gate, which no non-silent gated loudness reaches;
- a clip whose three target stems are all silent (`all_silent`) has LDif NaN, and `over_clips`
  leaves it out of the mean.
LDif is in LU and is never scaled for display (Table 1 caption).
"""
from typing import Callable, Protocol

import numpy as np
import pyloudnorm

SOURCES = ("speech", "music", "effects")  # the Muddy Mix stem classes, in their order
LOUDNESS_FLOOR = -70.0
BLOCK_SECONDS = 0.4


def integrated_loudness(x, sr: int) -> float:
  """BS.1770 integrated loudness in LUFS of a mono signal; -inf for silent or empty input.

  Uses a 0.4-s gating block, or the whole clip as one block when it is shorter, like the public
  generator.
  """
  x = np.asarray(x, dtype=np.float64).reshape(-1)
  if x.size == 0 or not np.any(x):
    return -np.inf
  block = min(BLOCK_SECONDS, x.size / sr)
  while x.size < block * sr:  # float round-off could make pyloudnorm reject a clip-long block
    block = np.nextafter(block, 0.0)
  return float(pyloudnorm.Meter(sr, block_size=block).integrated_loudness(x))


def stem_loudness(stems, sr: int) -> np.ndarray:
  """Integrated loudness (LUFS) of each stem of a `(S, L)` array, as float64 `(S,)`."""
  return np.array([integrated_loudness(s, sr) for s in stems])


class Separator(Protocol):
  """Splits a mono clip `(L,)` into its stems `(3, L)`, ordered as `SOURCES`."""

  def __call__(self, audio: np.ndarray) -> np.ndarray:
    ...


def _mono(x) -> np.ndarray:
  """`(L,)` or `(L, 1)` -> float64 `(L,)`."""
  x = np.asarray(x, dtype=np.float64)
  if x.ndim == 2 and x.shape[-1] == 1:
    x = x[:, 0]
  if x.ndim != 1:
    raise ValueError(f"expected mono audio of shape (L,) or (L, 1), got {x.shape}")
  return x


def _stems(x) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] != len(SOURCES):
    raise ValueError(f"expected stems of shape ({len(SOURCES)}, L), got {x.shape}")
  return x


def ldif(pred_stems, target_stems, sr: int) -> float:
  """Eq. 8 on given stems `(3, L)`, with the silent-stem rules of the module docstring."""
  pred_stems, target_stems = _stems(pred_stems), _stems(target_stems)
  target = np.array([integrated_loudness(s, sr) for s in target_stems])
  keep = np.isfinite(target)
  if not keep.any():
    return float("nan")
  pred = np.array([integrated_loudness(s, sr) for s, k in zip(pred_stems, keep) if k])
  return float(np.mean(np.abs(np.maximum(pred, LOUDNESS_FLOOR) - target[keep])))


def all_silent(stems, sr: int) -> bool:
  """Whether every stem `(3, L)` is silent (integrated loudness −inf): a clip without a defined LDif."""
  return not np.isfinite(stem_loudness(_stems(stems), sr)).any()


def oracle_stems(pred, basis_stems) -> np.ndarray:
  """Least-squares projection of `pred (L,)` onto `basis_stems (3, L)`: the stems a_k · basis_k."""
  pred, basis = _mono(pred), _stems(basis_stems)
  if basis.shape[1] != pred.size:
    raise ValueError(f"pred has {pred.size} samples, basis stems {basis.shape[1]}")
  coef = np.linalg.lstsq(basis.T, pred, rcond=None)[0]
  return coef[:, None] * basis


def oracle_ldif(pred, target_stems, input_stems, sr: int) -> float:
  """LDif with the prediction's stems estimated by projection onto the known input stems."""
  return ldif(oracle_stems(pred, input_stems), target_stems, sr)


def separator_ldif(pred, target, separator: Separator, sr: int) -> float:
  """LDif as the paper defines it: the same separator applied to prediction and target."""
  return ldif(separator(_mono(pred)), separator(_mono(target)), sr)


def over_clips(per_clip: Callable[..., float], *batches) -> tuple[np.ndarray, float]:
  """Apply `per_clip` to clip i of every batch (axis 0); return per-clip values and their mean.

  Clips whose value is NaN (all target stems silent) are left out of the mean; the mean is NaN
  when no clip is defined.
  """
  values = np.array([per_clip(*clip) for clip in zip(*batches)], dtype=np.float64)
  defined = values[np.isfinite(values)]
  return values, float(defined.mean()) if defined.size else float("nan")

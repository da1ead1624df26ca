"""Muddy Mix remix rules: turn a well-balanced movie mix into a poorly balanced one.

The VisAH-FM paper (Sec. 2.1) builds the poorly balanced input x0 by separating the movie audio
into speech, music and effects, re-leveling the stems and summing them; Sec. 2.2 draws a fresh
x0 for the same target x1 at every step ("on-the-fly" remixing), while the fixed dataset of
Table 5 draws one remix per clip. The public VisAH generator's rules, followed here:

- loudness per stem is BS.1770 integrated loudness (pyloudnorm, 0.4-s gating blocks, or the
  clip length when shorter); -inf LUFS marks a silent stem;
- the loudest class is the argmax of LUFS, ties resolved in the order speech, music, effects;
- the highlight class is uniform over the two other classes;
- two suppressions and one emphasis are drawn independently, with replacement; the loudest
  class gets suppression #1, the highlight the emphasis, the third class suppression #2;
- a level change is a pure gain of 10^(dB/20); silent stems stay untouched (recorded gain 0);
- peak guard at -0.5 dBFS: if the largest adjusted-stem peak exceeds it every stem is scaled
  down to it; the stems are summed, and if the sum's peak still exceeds it the sum and the
  stems are scaled again.
"""
import hashlib

import numpy as np

from avflow.metrics.loudness import SOURCES, stem_loudness

DEFAULT_DB = ((-12, -9, -6), (6, 9, 12))
# The public metadata (`metadata_onedb.csv`) uses a single strength level of 12 dB.
ONE_DB = ((-12,), (12,))


def fixed_rng(clip_id: str, seed: int) -> np.random.Generator:
  """A generator determined by `(clip_id, seed)`: the same remix for a clip at every epoch
  (the fixed Muddy Mix dataset of the paper's Table 5).

  Uses a stable hash (blake2b), never Python's salted `hash()`, so it repeats across processes.
  """
  digest = hashlib.blake2b(f"{seed}/{clip_id}".encode(), digest_size=16).digest()
  return np.random.default_rng(int.from_bytes(digest, "little"))


def muddy_remix(stems, sr: int, rng: np.random.Generator, suppress_db=DEFAULT_DB[0],
                highlight_db=DEFAULT_DB[1], peak_db: float = -0.5, loudness=None) -> dict:
  """Draw one poorly balanced remix of `stems` (3, L) ordered speech, music, effects.

  `loudness` optionally holds the stems' precomputed LUFS (3,). Returns float32 `x0` (L,), the
  remix; `x1` (L,), the sum of the original stems; `stems` (3, L), the adjusted stems after the
  peak guard (they sum to `x0`); float32 `gains_db` (3,), the drawn level change per stem (0 for
  silent stems); float32 `gain` (3,), the linear gain applied including the peak guard (0 for
  silent stems, as the public metadata records); ints `loudest` and `highlight`.
  """
  stems = np.asarray(stems, dtype=np.float32)
  if stems.ndim != 2 or stems.shape[0] != len(SOURCES):
    raise ValueError(f"stems must have shape (3, L), got {stems.shape}")
  if loudness is None:
    loudness = stem_loudness(stems, sr)
  loudness = np.asarray(loudness, dtype=np.float64)
  silent = np.isneginf(loudness)

  loudest = int(np.argmax(loudness))  # first maximum: ties go speech, music, effects
  others = [c for c in range(len(SOURCES)) if c != loudest]
  highlight = others[int(rng.integers(2))]
  suppress = rng.choice(np.asarray(suppress_db, dtype=np.float64), size=2, replace=True)
  emphasis = rng.choice(np.asarray(highlight_db, dtype=np.float64))
  third = 3 - loudest - highlight

  gains_db = np.zeros(3)
  gains_db[[loudest, third, highlight]] = suppress[0], suppress[1], emphasis
  gains_db[silent] = 0.0
  gain = np.where(silent, 0.0, 10.0 ** (gains_db / 20.0))

  limit = 10.0 ** (peak_db / 20.0)
  adjusted = stems.astype(np.float64) * np.where(silent, 1.0, gain)[:, None]
  peak = np.max(np.abs(adjusted[~silent]), initial=0.0)
  if peak > limit:
    adjusted *= limit / peak
    gain *= limit / peak
  x0 = adjusted.sum(axis=0)
  peak = np.max(np.abs(x0), initial=0.0)
  if peak > limit:
    x0 *= limit / peak
    adjusted *= limit / peak
    gain *= limit / peak

  return dict(
      x0=x0.astype(np.float32),
      x1=stems.sum(axis=0),
      stems=adjusted.astype(np.float32),
      gains_db=gains_db.astype(np.float32),
      gain=gain.astype(np.float32),
      loudest=loudest,
      highlight=highlight,
  )

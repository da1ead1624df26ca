"""Separation metrics of DAVIS / DAVIS-Flow: SDR, SIR and SAR in dB (BSS-Eval, Vincent et al. 2006), with mir_eval.

As the DAVIS evaluation (`calc_metrics` of the public code) computes them: per mixture, all its sources at once with
`mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)`, estimate n scored against
reference n; the sources' values averaged per mixture, then the mixtures' averages averaged. The unprocessed mixture,
given as the estimate of every source, gives the "input" SDR, the baseline. A mixture whose references or estimates
include a silent one (sum |x| < `SILENCE`) is skipped and counted: BSS-Eval is undefined for it. Waveforms are cut to
the shortest of a mixture's signals, as DAVIS cuts its references to the length of the iSTFT estimates.
"""
import warnings
from typing import Iterable

import mir_eval
import numpy as np

SILENCE = 1e-5  # DAVIS: a signal with sum |x| at or below this is silent


def _bss_eval(references: np.ndarray, estimates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  with warnings.catch_warnings():  # deprecated since mir_eval 0.8 (gone in 0.9): the reason for the 0.8.2 pin
    warnings.filterwarnings("ignore", message=".*bss_eval_sources", category=FutureWarning)
    sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(references, estimates, compute_permutation=False)
  return sdr, sir, sar


def pair_metrics(references, estimates, mixture) -> dict | None:
  """Metrics of one mixture: `references` and `estimates` (N, L), source n's waveform and its estimate (N = 2 for a
  "mix and separate" pair), `mixture` (L,). Returns {"input": {"sdr"}, "prediction": {"sdr", "sir", "sar"}}, each
  the mean over the N sources, or None when a reference or an estimate is silent."""
  references, estimates = np.asarray(references, np.float64), np.asarray(estimates, np.float64)
  mixture = np.asarray(mixture, np.float64)
  if references.ndim != 2 or estimates.ndim != 2 or mixture.ndim != 1 or estimates.shape[0] != references.shape[0]:
    raise ValueError(f"expected references and estimates (N, L) and a mixture (L,), got {references.shape}, "
                     f"{estimates.shape} and {mixture.shape}")
  length = min(references.shape[1], estimates.shape[1], mixture.shape[0])
  references, estimates, mixture = references[:, :length], estimates[:, :length], mixture[:length]
  if np.any(np.sum(np.abs(references), axis=1) <= SILENCE) or np.any(np.sum(np.abs(estimates), axis=1) <= SILENCE):
    return None
  sdr, sir, sar = _bss_eval(references, estimates)
  sdr_mix, _, _ = _bss_eval(references, np.broadcast_to(mixture, references.shape))
  return {"input": {"sdr": float(np.mean(sdr_mix))},
          "prediction": {"sdr": float(np.mean(sdr)), "sir": float(np.mean(sir)), "sar": float(np.mean(sar))}}


def separation_metrics(pairs: Iterable) -> dict:
  """Mean metrics over mixtures, each a (references, estimates, mixture) triple as `pair_metrics` takes it:
  {"input": {"sdr"}, "prediction": {"sdr", "sir", "sar"}, "skipped": silent mixtures left out, "count": mixtures
  averaged}. The means are NaN when every mixture was skipped."""
  scored, skipped = [], 0
  for references, estimates, mixture in pairs:
    result = pair_metrics(references, estimates, mixture)
    if result is None:
      skipped += 1
    else:
      scored.append(result)

  def mean(group: str, key: str) -> float:
    return float(np.mean([r[group][key] for r in scored])) if scored else float("nan")
  return {"input": {"sdr": mean("input", "sdr")},
          "prediction": {k: mean("prediction", k) for k in ("sdr", "sir", "sar")},
          "skipped": skipped, "count": len(scored)}

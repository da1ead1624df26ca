"""SDR / SIR / SAR of DAVIS: mir_eval's BSS-Eval against the projections written out as least squares."""
import ast
import os

import mir_eval
import numpy as np
import pytest

from avflow.metrics import separation

FILTER = 512  # BSS-Eval's distortion filter length (taps)


def _lagged(references: np.ndarray) -> np.ndarray:
  """(L + FILTER - 1, N * FILTER): every reference delayed by 0 .. FILTER - 1 samples, zero-padded."""
  length = references.shape[1]
  padded = np.pad(references, ((0, 0), (FILTER - 1, FILTER - 1)))
  windows = np.lib.stride_tricks.sliding_window_view(padded, FILTER, axis=1)[:, :length + FILTER - 1, ::-1]
  return np.concatenate(list(windows), axis=1)


def _projector(basis: np.ndarray):
  """x ↦ the least-squares projection of x onto the columns of `basis` (normal equations, one solve per call)."""
  gram = basis.T @ basis
  return lambda x: basis @ np.linalg.solve(gram, basis.T @ x)


def _bss_eval(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
  """(3, N) SDR, SIR, SAR per source (Vincent et al. 2006, Eqs. 12-14) on the zero-padded estimates ŝ:
  s_target = P_j ŝ, e_interf = P ŝ − P_j ŝ, e_artif = ŝ − P ŝ, with P_j the projection onto source j's delays and
  P onto all sources' delays."""
  padded = np.pad(estimates, ((0, 0), (0, FILTER - 1))).T
  total = _projector(_lagged(references))(padded).T
  out = []
  for j, (estimate, whole) in enumerate(zip(padded.T, total)):
    target = _projector(_lagged(references[j:j + 1]))(estimate)
    interf, artif = whole - target, estimate - whole

    def db(a, b):
      return 10 * np.log10(np.sum(a ** 2) / np.sum(b ** 2))
    out.append([db(target, interf + artif), db(target, interf), db(whole, artif)])
  return np.array(out).T


def _sources(length: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((2, length))


def test_metrics_match_the_least_squares_definition():
  rng = np.random.default_rng(1)
  refs = _sources(1200, 0)
  smear = np.convolve(refs[0], [1.0, 0.5, -0.25])[:1200]  # a filtered source: allowed distortion, not an error
  estimates = np.stack([smear + 0.3 * refs[1] + 0.1 * rng.standard_normal(1200),
                        refs[1] + 0.5 * refs[0] + 0.4 * rng.standard_normal(1200)])
  mixture = refs.sum(axis=0)
  got = separation.pair_metrics(refs, estimates, mixture)
  sdr, sir, sar = _bss_eval(refs, estimates).mean(axis=1)
  assert got["prediction"] == pytest.approx({"sdr": sdr, "sir": sir, "sar": sar}, abs=1e-4)
  assert got["input"]["sdr"] == pytest.approx(_bss_eval(refs, np.stack([mixture, mixture]))[0].mean(), abs=1e-4)
  assert sdr < sir  # e_interf ⟂ e_artif: SDR counts both errors, SIR one


def test_a_perfect_estimate_is_high_and_an_equal_power_mixture_is_about_0_db():
  refs = _sources(16000, 2)
  refs /= np.sqrt(np.mean(refs ** 2, axis=1, keepdims=True))  # equal power
  got = separation.pair_metrics(refs, refs, refs.sum(axis=0))
  assert got["prediction"]["sdr"] > 40 and got["prediction"]["sir"] > 40 and got["prediction"]["sar"] > 40
  assert abs(got["input"]["sdr"]) < 0.5  # the 512-tap filter absorbs ~512/L of the other source: +0.28 dB here


def test_a_scaled_noise_estimate_matches_the_closed_form():
  """ŝ_j = s_j + e_j with e_j orthogonal to every delayed reference: s_target = s_j, no interference, e_artif = e_j,
  so SDR = SAR = 10 log10(‖s_j‖² / ‖e_j‖²) exactly."""
  refs = _sources(1500, 3)
  basis = _lagged(refs)[:1500]  # the estimate is zero past its L samples, so only the first L rows constrain it
  noise = np.random.default_rng(4).standard_normal((2, 1500))
  noise -= _projector(basis)(noise.T).T
  wanted = np.array([10.0, 20.0])
  noise *= np.sqrt(np.sum(refs ** 2, axis=1) / np.sum(noise ** 2, axis=1) * 10 ** (-wanted / 10))[:, None]
  got = separation.pair_metrics(refs, refs + noise, refs.sum(axis=0))["prediction"]
  assert got["sdr"] == pytest.approx(wanted.mean(), abs=1e-4)
  assert got["sar"] == pytest.approx(wanted.mean(), abs=1e-4)
  assert got["sir"] > 100


def test_silent_pairs_are_skipped_and_counted_and_the_rest_averaged(monkeypatch):
  refs = _sources(1000, 5)
  good = [(refs, refs + scale * _sources(1000, 6), refs.sum(axis=0)) for scale in (0.1, 0.3)]
  quiet = refs.copy()
  quiet[1] = 1e-9  # sum |x| = 1e-6, under the 1e-5 of DAVIS
  mute = np.stack([good[0][1][0], np.zeros(1000)])
  pairs = [good[0], (quiet, good[0][1], quiet.sum(axis=0)), good[1], (refs, mute, refs.sum(axis=0))]
  scored = []
  pair_metrics = separation.pair_metrics
  monkeypatch.setattr(separation, "pair_metrics", lambda *p: scored.append(pair_metrics(*p)) or scored[-1])
  got = separation.separation_metrics(pairs)
  assert [s is None for s in scored] == [False, True, False, True]
  assert got["skipped"] == 2 and got["count"] == 2
  assert got["input"]["sdr"] == pytest.approx(np.mean([scored[0]["input"]["sdr"], scored[2]["input"]["sdr"]]))
  for key in ("sdr", "sir", "sar"):
    assert got["prediction"][key] == pytest.approx(np.mean([scored[0]["prediction"][key],
                                                            scored[2]["prediction"][key]]))
  assert scored[0]["prediction"]["sdr"] > scored[2]["prediction"]["sdr"] + 5  # less noise, higher SDR
  none = separation.separation_metrics([pairs[1], pairs[3]])
  assert none["count"] == 0 and none["skipped"] == 2 and np.isnan(none["prediction"]["sdr"])


def test_the_davis_call_signals_cut_to_the_shortest_and_the_mixture_as_every_estimate(monkeypatch):
  calls = []

  def bss_eval_sources(references, estimates, compute_permutation=True):
    calls.append((references, estimates, compute_permutation))
    n = len(references)
    return np.full(n, 1.0 + len(calls)), np.full(n, 5.0), np.full(n, 7.0), np.arange(n)
  monkeypatch.setattr(mir_eval.separation, "bss_eval_sources", bss_eval_sources)
  refs, estimates, mixture = _sources(1000, 7), _sources(900, 8), np.random.default_rng(9).standard_normal(950)
  got = separation.pair_metrics(refs, estimates, mixture)
  assert got == {"input": {"sdr": 3.0}, "prediction": {"sdr": 2.0, "sir": 5.0, "sar": 7.0}}
  (ref, est, perm), (ref_mix, est_mix, perm_mix) = calls
  assert perm is False and perm_mix is False
  np.testing.assert_array_equal(ref, refs[:, :900])
  np.testing.assert_array_equal(ref_mix, refs[:, :900])
  np.testing.assert_array_equal(est, estimates)
  np.testing.assert_array_equal(est_mix, np.stack([mixture[:900]] * 2))
  with pytest.raises(ValueError, match=r"expected references and estimates \(N, L\) and a mixture \(L,\)"):
    separation.pair_metrics(refs, estimates[0], mixture)


def test_metrics_do_not_import_the_data_package():
  folder = os.path.dirname(separation.__file__)
  for name in sorted(os.listdir(folder)):
    if name.endswith(".py"):
      with open(os.path.join(folder, name)) as f:
        tree = ast.parse(f.read())
      imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
      imported += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
      assert not [m for m in imported if m.startswith("avflow.data")], name

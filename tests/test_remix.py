"""Muddy Mix remix rules (VisAH-FM Sec. 2.1; the public VisAH generator's rules)."""
import numpy as np
import pyloudnorm
import pytest

from avflow.data.remix import DEFAULT_DB, ONE_DB, fixed_rng, muddy_remix
from avflow.metrics.loudness import SOURCES, integrated_loudness, stem_loudness

SR = 16000
LIMIT = 10.0 ** (-0.5 / 20.0)


def _stems(seed: int, peaks=(0.05, 0.05, 0.05), n: int = SR) -> np.ndarray:
  """Speech-, music- and effects-like test stems with the given peaks and distinct levels."""
  rng = np.random.default_rng(seed)
  t = np.arange(n) / SR
  stems = np.stack([
      np.sin(2 * np.pi * 150 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)),
      np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 660 * t),
      rng.standard_normal(n),
  ])
  stems *= (np.asarray(peaks) / np.max(np.abs(stems), axis=1))[:, None]
  return stems.astype(np.float32)


def test_integrated_loudness_edge_cases():
  assert integrated_loudness(np.zeros(0, np.float32), SR) == -np.inf
  assert integrated_loudness(np.zeros(SR, np.float32), SR) == -np.inf
  x = _stems(0)[2]
  assert integrated_loudness(x, SR) == pytest.approx(pyloudnorm.Meter(SR).integrated_loudness(
      x.astype(np.float64)), abs=1e-9)
  for n in (1, 3, 101, 6399):  # shorter than a gating block: the clip is one block
    assert np.isfinite(integrated_loudness(x[:n] + 0.1, SR))
  assert integrated_loudness(2 * x, SR) == pytest.approx(integrated_loudness(x, SR) + 20 * np.log10(2))


@pytest.mark.parametrize("seed", range(6))
def test_loudness_changes_by_drawn_gain(seed):
  stems = _stems(seed, peaks=(0.05, 0.03, 0.02))
  before = stem_loudness(stems, SR)
  out = muddy_remix(stems, SR, np.random.default_rng(seed))
  assert np.max(np.abs(out["x0"])) < LIMIT
  np.testing.assert_allclose(out["gain"], 10.0 ** (out["gains_db"] / 20.0), rtol=1e-6)  # no guard
  np.testing.assert_allclose(stem_loudness(out["stems"], SR) - before, out["gains_db"], atol=0.1)
  np.testing.assert_allclose(out["stems"].sum(0), out["x0"], atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_peak_guard(seed):
  stems = _stems(seed, peaks=(0.8, 0.6, 0.7))
  before = stem_loudness(stems, SR)
  out = muddy_remix(stems, SR, np.random.default_rng(seed))
  assert np.max(np.abs(out["x0"])) <= 0.9441
  assert np.max(np.abs(out["stems"])) <= 0.9441
  guard_db = 20 * np.log10(out["gain"]) - out["gains_db"]
  assert np.all(guard_db < -0.1) and np.ptp(guard_db) < 1e-4  # one common scale for all stems
  np.testing.assert_allclose(stem_loudness(out["stems"], SR) - before, out["gains_db"] + guard_db,
                             atol=0.1)
  np.testing.assert_allclose(out["stems"].sum(0), out["x0"], atol=1e-6)


def test_x1_is_the_original_mix():
  stems = _stems(1, peaks=(0.8, 0.6, 0.7))
  out = muddy_remix(stems, SR, np.random.default_rng(0))
  assert out["x0"].shape == out["x1"].shape == (SR,) and out["stems"].shape == (3, SR)
  assert out["x0"].dtype == out["x1"].dtype == out["stems"].dtype == np.float32
  np.testing.assert_array_equal(out["x1"], stems.sum(0))


def test_roles_over_many_draws():
  stems = _stems(2)
  rng = np.random.default_rng(0)
  highlights = {c: set() for c in range(3)}
  for trial in range(300):
    loudness = rng.normal(-25, 5, 3)
    out = muddy_remix(stems, SR, rng, loudness=loudness)
    loudest, highlight = out["loudest"], out["highlight"]
    third = 3 - loudest - highlight
    assert loudest == int(np.argmax(loudness)) and highlight != loudest
    assert out["gains_db"][loudest] in DEFAULT_DB[0] and out["gains_db"][third] in DEFAULT_DB[0]
    assert out["gains_db"][highlight] in DEFAULT_DB[1]
    highlights[loudest].add(highlight)
  assert all(len(h) == 2 for h in highlights.values())  # both other classes get highlighted


def test_ties_and_one_db_preset():
  out = muddy_remix(_stems(3), SR, np.random.default_rng(0), *ONE_DB, loudness=[-20.0, -20.0, -30.0])
  assert out["loudest"] == SOURCES.index("speech")
  out = muddy_remix(_stems(3), SR, np.random.default_rng(0), *ONE_DB, loudness=[-30.0, -20.0, -20.0])
  assert out["loudest"] == SOURCES.index("music")
  assert sorted(out["gains_db"].tolist()) == [-12.0, -12.0, 12.0]


def test_precomputed_loudness_gives_the_same_remix():
  stems = _stems(4)
  a = muddy_remix(stems, SR, np.random.default_rng(7))
  b = muddy_remix(stems, SR, np.random.default_rng(7), loudness=stem_loudness(stems, SR))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("silent", range(3))
def test_silent_stem_is_untouched(silent):
  stems = _stems(5, peaks=(0.8, 0.6, 0.7))
  stems[silent] = 0.0
  for seed in range(10):
    out = muddy_remix(stems, SR, np.random.default_rng(seed))
    assert out["gain"][silent] == 0.0 and out["gains_db"][silent] == 0.0
    assert not np.any(out["stems"][silent]) and out["loudest"] != silent
    assert np.max(np.abs(out["x0"])) <= 0.9441


def test_all_silent():
  out = muddy_remix(np.zeros((3, 100), np.float32), SR, np.random.default_rng(0))
  assert not np.any(out["x0"]) and not np.any(out["gain"]) and not np.any(out["gains_db"])


def test_fixed_rng_repeats_per_clip():
  stems = _stems(6)
  a = muddy_remix(stems, SR, fixed_rng("clip-a", 0))
  b = muddy_remix(stems, SR, fixed_rng("clip-a", 0))
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  draws = {(clip, seed): fixed_rng(clip, seed).random(4).tobytes()
           for clip in ("clip-a", "clip-b", "clip-c") for seed in (0, 1)}
  assert len(set(draws.values())) == len(draws)
  # A pinned value: the generator must not depend on the process (no salted hash()).
  assert fixed_rng("toy-train-s0-000000", 0).bit_generator.random_raw() == 3367885130476695890


def test_rejects_wrong_shape():
  with pytest.raises(ValueError):
    muddy_remix(np.zeros((2, 100), np.float32), SR, np.random.default_rng(0))

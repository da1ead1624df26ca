"""Toy movies: the synthetic Muddy Mix stand-in (stems, frames, canonical balance)."""
import time

import numpy as np
import pytest

from avflow.data.remix import muddy_remix
from avflow.metrics.loudness import SOURCES, stem_loudness
from avflow.data.synthetic import BAND_EDGE_OCTAVES, BANDS, ToyMovies

SR = 16000


@pytest.fixture(scope="module")
def clips():
  ds = ToyMovies(num_clips=40, seed=3)
  return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def natural_clips():
  ds = ToyMovies(num_clips=40, seed=3, layout="natural")
  return [ds[i] for i in range(len(ds))]


@pytest.fixture(scope="module")
def short_clips():
  """Many short clips (one frame each) for the statistics over splits."""
  kw = dict(clip_seconds=0.5, frames_per_second=2, num_clips=150)
  return {split: [ToyMovies(**kw, split=split)[i] for i in range(150)] for split in ("train", "val")}


def test_shapes_and_dtypes(clips):
  ds = ToyMovies(num_clips=40, seed=3)
  assert len(ds) == 40
  for item in clips[:5]:
    assert set(item) == {"clip_id", "stems", "frames", "on_screen", "loudness"}
    assert isinstance(item["clip_id"], str) and isinstance(item["on_screen"], int)
    assert item["stems"].shape == (3, 2 * SR) and item["stems"].dtype == np.float32
    assert item["frames"].shape == (2, 32, 32, 3) and item["frames"].dtype == np.uint8
    assert item["loudness"].shape == (3,) and item["loudness"].dtype == np.float32
    assert 0 <= item["on_screen"] < len(SOURCES)
  with pytest.raises(IndexError):
    ds[40]


def test_deterministic_per_seed_split_index(clips):
  again = ToyMovies(num_clips=40, seed=3)
  for i in (0, 7, 39):
    for key, value in again[i].items():
      np.testing.assert_array_equal(value, clips[i][key])
  np.testing.assert_array_equal(again[-1]["stems"], clips[39]["stems"])
  other = ToyMovies(num_clips=40, seed=4)[7]
  assert not np.array_equal(other["stems"], clips[7]["stems"])


def test_splits_are_disjoint(short_clips):
  test = [ToyMovies(clip_seconds=0.5, frames_per_second=2, split="test")[i] for i in range(20)]
  groups = [short_clips["train"][:20], short_clips["val"][:20], test]
  ids = [{c["clip_id"] for c in g} for g in groups]
  audio = [{c["stems"].tobytes() for c in g} for g in groups]
  for a in range(3):
    for b in range(a + 1, 3):
      assert not ids[a] & ids[b] and not audio[a] & audio[b]


def test_loudness_is_measured_and_on_screen_is_loudest(clips):
  for item in clips:
    lufs = item["loudness"]
    np.testing.assert_allclose(stem_loudness(item["stems"], SR), lufs, atol=0.05)
    others = np.delete(lufs, item["on_screen"])
    assert np.all(lufs[item["on_screen"]] > others + 5.0)
    assert np.max(np.abs(item["stems"].sum(0))) < 0.9


def test_some_silent_off_screen_stems(short_clips):
  items = short_clips["train"] + short_clips["val"]
  silent = [(c, k) for c in items for k in range(3) if np.isneginf(c["loudness"][k])]
  assert 1 <= len(silent) <= 0.12 * len(items)
  for item, k in silent:
    assert k != item["on_screen"] and not np.any(item["stems"][k])
    out = muddy_remix(item["stems"], SR, np.random.default_rng(0), loudness=item["loudness"])
    assert out["gain"][k] == 0.0


def _features(x: np.ndarray) -> np.ndarray:
  """Log spectral centroid, log spectral flatness and level modulation of the active frames."""
  frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
  power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-12
  energy = power.sum(1)
  power = power[energy > 1e-3 * energy.max()]
  centroid = power @ np.fft.rfftfreq(512, 1.0 / SR) / power.sum(1)
  flatness = np.mean(np.log(power), 1) - np.log(np.mean(power, 1))
  return np.array([np.log(np.median(centroid)), np.median(flatness),
                   np.std(np.log(energy[energy > 1e-3 * energy.max()]))])


@pytest.mark.parametrize("layout", ["bands", "natural"])
def test_stems_are_spectrally_distinct(layout, clips, natural_clips):
  clips = {"bands": clips, "natural": natural_clips}[layout]
  feats = np.array([[_features(c["stems"][k]) for k in range(3)] for c in clips
                    if np.all(np.isfinite(c["loudness"]))])
  # Effects are noise-like, music and speech harmonic; speech has the strongest syllabic modulation.
  flatness = feats[:, :, 1].mean(0)
  assert flatness[2] > flatness[1] + 3 and flatness[2] > flatness[0] + 3
  if layout == "natural":  # the band-pass lets through the music's mid-band note onsets
    assert feats[:, 0, 2].mean() > feats[:, 1, 2].mean() + 0.5
  mean, std = feats.reshape(-1, 3).mean(0), feats.reshape(-1, 3).std(0)
  z = (feats - mean) / std
  half = len(z) // 2
  centroids = z[:half].mean(0)
  predicted = np.argmin(((z[half:, :, None] - centroids[None, None]) ** 2).sum(-1), axis=-1)
  assert np.mean(predicted == np.arange(3)) >= 0.9


def _band_energy(stem: np.ndarray, low: float, high: float) -> float:
  power = np.abs(np.fft.rfft(stem)) ** 2
  freqs = np.fft.rfftfreq(stem.size, 1.0 / SR)
  return power[(freqs >= low) & (freqs < high)].sum() / power.sum()


def test_band_layout_keeps_each_source_in_its_band_with_the_same_loudness_rule(clips, natural_clips):
  for item in clips:
    for k, stem in enumerate(item["stems"]):
      if np.isfinite(item["loudness"][k]):  # the band with its raised-cosine edges
        low, high = np.array(BANDS[k]) * 2.0 ** (np.array([-0.5, 0.5]) * BAND_EDGE_OCTAVES)
        own = _band_energy(stem, low, high)
        assert own > 0.97, (item["clip_id"], SOURCES[k], own)
  # The natural spectra overlap: most of every source's energy is below 1 kHz.
  low = [_band_energy(c["stems"][k], 0, 1000) for c in natural_clips for k in range(3)
         if np.isfinite(c["loudness"][k])]
  assert np.median(low) > 0.5
  # Same clip, same canonical balance: the stems are re-measured after the band-pass, then set to their targets.
  for banded, natural in zip(clips, natural_clips):
    assert banded["on_screen"] == natural["on_screen"]
    np.testing.assert_allclose(stem_loudness(banded["stems"], SR), banded["loudness"], atol=0.05)
  with pytest.raises(ValueError, match="layout 'stripes'"):
    ToyMovies(layout="stripes")


def _colour_histogram(item) -> np.ndarray:
  """Fraction of pixels in each of 4 x 4 x 4 coarse RGB bins."""
  q = item["frames"].reshape(-1, 3) // 64
  counts = np.bincount(q[:, 0] * 16 + q[:, 1] * 4 + q[:, 2], minlength=64)
  return np.append(counts / counts.sum(), 1.0)


def _probe_accuracy(train, train_labels, val, val_labels) -> float:
  """A least-squares probe on colour histograms, fitted on `train` and scored on `val`."""
  x = np.stack([_colour_histogram(c) for c in train])
  w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ np.eye(3)[train_labels])
  predicted = np.argmax(np.stack([_colour_histogram(c) for c in val]) @ w, axis=1)
  return float(np.mean(predicted == val_labels))


def test_frames_carry_the_on_screen_source(short_clips):
  train, val = short_clips["train"], short_clips["val"]
  train_labels = np.array([c["on_screen"] for c in train])
  val_labels = np.array([c["on_screen"] for c in val])
  assert _probe_accuracy(train, train_labels, val, val_labels) >= 0.9
  rng = np.random.default_rng(0)  # frames paired with other clips' audio: chance level
  shuffled = [_probe_accuracy(train, rng.permutation(train_labels), val, rng.permutation(val_labels))
              for _ in range(3)]
  assert np.mean(shuffled) <= 0.45


def test_generation_is_fast():
  """A 2-s clip costs well under 50 ms of CPU (CPU time: robust to other load on the machine)."""
  ds = ToyMovies(num_clips=10)
  ds[0]
  times = []
  for i in range(1, 6):
    start = time.process_time()
    ds[i]
    times.append(time.process_time() - start)
  assert min(times) < 0.05

""""Mix and separate" pairs: toy-movie and record sources, their symmetry, and the batched Grain dataset."""
import numpy as np
import pytest
from ml_collections import ConfigDict

from avflow.data import pipeline, records, separation
from avflow.data.synthetic import LUFS_JITTER, ON_SCREEN_LUFS, PEAK_LIMIT, ToyMovies
from avflow.metrics.loudness import SOURCES, stem_loudness
from test_prepare import SPEC, SR as RECORD_SR, muddy_clip, write_splits
from test_synthetic import _probe_accuracy

SR = 8000
TOY = dict(sample_rate=SR, clip_seconds=0.5, num_frames=2, image_size=32)


@pytest.fixture(scope="module")
def pairs():
  ds = separation.ToyPairs(**TOY, num_pairs=60, seed=5)
  return ds, [ds[p] for p in range(len(ds))]


def test_toy_pairs_mix_one_stem_of_two_clips_of_different_categories(pairs):
  ds, items = pairs
  movies = ToyMovies(sample_rate=SR, clip_seconds=0.5, frames_per_second=4, image_size=32, num_clips=120, seed=5)
  silent = 0
  for p, ex in enumerate(items):
    assert ex["mixture"].shape == ex["target"].shape == ex["other_target"].shape == (SR // 2,)
    assert ex["mixture"].dtype == np.float32 and ex["frames"].dtype == np.uint8
    assert ex["frames"].shape == ex["other_frames"].shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(ex["mixture"], ex["target"] + ex["other_target"])
    assert ex["category"] != ex["other_category"]
    assert np.max(np.abs(ex["mixture"])) <= PEAK_LIMIT
    for k, (key, cat) in enumerate((("target", "category"), ("other_target", "other_category"))):
      clip = movies.clip(2 * p + k, shown=ex[cat])  # the category's stem of clip 2p + k, at another level
      assert ex["clip_id"].split("+")[k] == clip["clip_id"]
      silent += np.isneginf(clip["loudness"]).any()
      stem = clip["stems"][ex[cat]]
      gain = ex[key] @ stem / (stem @ stem)
      assert gain > 0
      np.testing.assert_allclose(ex[key], gain * stem, atol=1e-6)
      np.testing.assert_array_equal(ex[key.replace("target", "frames")], clip["frames"])
      lufs = stem_loudness(ex[key][None], SR)[0]
      scaled = np.max(np.abs(ex["mixture"])) > 0.999 * PEAK_LIMIT  # both sources turned down together
      assert np.isfinite(lufs) and lufs <= ON_SCREEN_LUFS + LUFS_JITTER + 0.05
      assert scaled or lufs >= ON_SCREEN_LUFS - LUFS_JITTER - 0.05
  # Some clips have a silent stem, never drawn; every ordered pair of categories occurs: which band is the target
  # is up to the frames.
  assert silent >= 3
  assert {(ex["category"], ex["other_category"]) for ex in items} == {
      (a, b) for a in range(len(SOURCES)) for b in range(len(SOURCES)) if a != b}


def test_toy_pairs_are_deterministic_per_seed_split_index(pairs):
  ds, items = pairs
  again = separation.ToyPairs(**TOY, num_pairs=60, seed=5)
  for p in (0, 31, 59):
    for key, value in again[p].items():
      np.testing.assert_array_equal(value, items[p][key])
  np.testing.assert_array_equal(again[-1]["mixture"], items[59]["mixture"])
  for other in (separation.ToyPairs(**TOY, num_pairs=60, seed=6), separation.ToyPairs(**TOY, num_pairs=60, seed=5,
                                                                                      split="val")):
    assert not np.array_equal(other[0]["mixture"], items[0]["mixture"])
  with pytest.raises(IndexError, match="index 60 out of range for 60 pairs"):
    ds[60]


def test_swapping_the_sources_swaps_targets_and_frames_and_keeps_the_mixture(pairs):
  ds, items = pairs
  a, b = ds.sources(3)
  ab, ba = separation.mix_pair(a, b), separation.mix_pair(b, a)
  np.testing.assert_array_equal(ab["mixture"], ba["mixture"])
  for key in ("target", "frames", "category"):
    np.testing.assert_array_equal(ab[key], ba[f"other_{key}"])
    np.testing.assert_array_equal(ab[f"other_{key}"], ba[key])
  assert ba["clip_id"] == "+".join(reversed(ab["clip_id"].split("+")))
  for key, value in ab.items():
    np.testing.assert_array_equal(value, items[3][key])
  with pytest.raises(ValueError, match="differ in length"):
    separation.mix_pair(a, dict(b, audio=b["audio"][:-1]))


def test_the_frames_show_each_source_s_category(pairs):
  _, items = pairs
  # A colour-histogram probe fitted on toy movies' frames and their on-screen source reads the pairs' categories.
  movies = ToyMovies(clip_seconds=0.5, frames_per_second=2, num_clips=150)
  train = [movies[i] for i in range(len(movies))]
  frames = [{"frames": ex[k]} for ex in items for k in ("frames", "other_frames")]
  labels = np.array([ex[k] for ex in items for k in ("category", "other_category")])
  assert _probe_accuracy(train, np.array([c["on_screen"] for c in train]), frames, labels) >= 0.9
  for ex in items:
    assert not np.array_equal(ex["frames"], ex["other_frames"])


def test_toy_movies_redraw_the_frames_for_any_source():
  movies = ToyMovies(clip_seconds=0.5, num_clips=4)
  for i in range(4):
    item = movies[i]
    same = movies.clip(i, shown=item["on_screen"])
    for key, value in item.items():
      np.testing.assert_array_equal(same[key], value)
    other = movies.clip(i, shown=(item["on_screen"] + 1) % 3)
    np.testing.assert_array_equal(other["stems"], item["stems"])
    moved = np.any(other["frames"] != item["frames"], axis=-1)
    assert 0.05 < moved.mean() < 0.6  # another object over the same background
  with pytest.raises(ValueError, match="shown=3"):
    movies.clip(0, shown=3)


@pytest.fixture(scope="module")
def record_source(tmp_path_factory):
  """Train records of three clips: a (two windows), b and c."""
  root = tmp_path_factory.mktemp("records")
  for name, seconds in (("a", 4.0), ("b", 2.0), ("c", 2.0)):
    muddy_clip(root / "in", name, seconds)
  write_splits(root / "in", train=["a", "b", "c"])
  records.prepare(str(root / "in"), str(root / "out"), spec=SPEC)
  return records.RecordSource(str(root / "out"), "train")


def test_record_pairs_mix_two_windows_of_different_clips(record_source):
  stored = {record_source[i]["clip_id"]: record_source[i] for i in range(len(record_source))}
  assert sorted(stored) == ["a_w000", "a_w001", "b_w000", "c_w000"]
  ds = separation.RecordPairs(record_source, num_pairs=24, seed=1)
  items = [ds[p] for p in range(len(ds))]
  ids = []
  for ex in items:
    first, second = ex["clip_id"].split("+")
    ids.append((first, second))
    assert records.window_clip(first) != records.window_clip(second)
    np.testing.assert_array_equal(ex["target"], stored[first]["mix"])
    np.testing.assert_array_equal(ex["other_target"], stored[second]["mix"])
    np.testing.assert_array_equal(ex["frames"], stored[first]["frames"])
    np.testing.assert_array_equal(ex["other_frames"], stored[second]["frames"])
    np.testing.assert_array_equal(ex["mixture"], ex["target"] + ex["other_target"])
    assert "context" not in ex and "category" not in ex
  assert len(set(ids)) > 6 and {i for pair in ids for i in pair} == set(stored)
  again = separation.RecordPairs(record_source, num_pairs=24, seed=1)
  assert [again[p]["clip_id"] for p in range(24)] == [ex["clip_id"] for ex in items]
  assert len(separation.RecordPairs(record_source)) == 4

  batch = next(iter(pipeline.make_pair_dataset(ds, ConfigDict({"worker_count": 0}), batch_size=2, seed=0,
                                               train=True)))
  assert batch["mixture"].shape == batch["target"].shape == batch["other_target"].shape == (2, 2 * RECORD_SR)
  assert batch["frames"].shape == batch["other_frames"].shape == (2, 2, 16, 16, 3)
  assert len(batch["clip_id"]) == 2 and all(c in [ex["clip_id"] for ex in items] for c in batch["clip_id"])


def test_record_pairs_carry_stored_features_and_need_two_clips(record_source):
  windows = [record_source[i] for i in range(len(record_source))]
  featured = [dict(w, context=np.full((2, 4), k, np.float32)) for k, w in enumerate(windows)]
  ex = separation.RecordPairs(featured, num_pairs=1, seed=0)[0]
  first, second = (next(k for k, w in enumerate(windows) if w["clip_id"] == c) for c in ex["clip_id"].split("+"))
  np.testing.assert_array_equal(ex["context"], featured[first]["context"])
  np.testing.assert_array_equal(ex["other_context"], featured[second]["context"])
  one_clip = [w for w in windows if records.window_clip(w["clip_id"]) == "a"]
  with pytest.raises(ValueError, match="windows of a single clip"):
    separation.RecordPairs(one_clip, num_pairs=1)[0]
  with pytest.raises(ValueError, match="at least 2 records"):
    separation.RecordPairs(one_clip[:1])


def test_the_pair_dataset_batches_shuffles_and_shards(pairs):
  ds, items = pairs
  cfg = ConfigDict({"worker_count": 0})
  first = [next(iter(pipeline.make_pair_dataset(ds, cfg, batch_size=4, seed=2, train=True))) for _ in range(2)]
  for key, value in first[0].items():
    np.testing.assert_array_equal(value, first[1][key])
  batch = first[0]
  assert batch["mixture"].shape == (4, SR // 2) and batch["frames"].shape == (4, 2, 32, 32, 3)
  assert batch["category"].shape == (4,)
  np.testing.assert_array_equal(batch["mixture"], batch["target"] + batch["other_target"])
  by_id = {ex["clip_id"]: ex for ex in items}
  for row, clip_id in enumerate(batch["clip_id"]):
    np.testing.assert_array_equal(batch["other_frames"][row], by_id[clip_id]["other_frames"])
  shards = [[c for b in pipeline.make_pair_dataset(ds, cfg, batch_size=8, seed=0, train=False, process_index=k,
                                                   process_count=2) for c in b["clip_id"]] for k in range(2)]
  assert shards[0] == [items[p]["clip_id"] for p in range(0, 60, 2)]
  assert shards[1] == [items[p]["clip_id"] for p in range(1, 60, 2)]

"""Toy foley: clips whose frames show events and whose audio holds their sounds; frames of other clips do not fit."""
import numpy as np
import pytest

from avflow.data import foley
from avflow.metrics.foley import event_class_accuracy, onset_sync, train_event_classifier

SR = 8000
FPS = 8


@pytest.fixture(scope="module")
def val_clips():
  ds = foley.ToyFoley(num_clips=40, split="val", seed=1)
  return [ds[i] for i in range(len(ds))]


def events_seen(frames: np.ndarray, fps: float = FPS) -> list[tuple[float, int]]:
  """(time, class) of every object the frames show, read from the class colours: a class whose colour covers 10 or
  more pixels of a frame and fewer of the frame before has an event at that frame's time."""
  distance = np.linalg.norm(frames[..., None, :].astype(np.float64) - foley.COLOURS, axis=-1)  # (F, H, W, classes)
  shown = np.sum(distance < 60.0, axis=(1, 2)) >= 10  # (F, classes)
  rising = shown & ~np.concatenate([np.zeros_like(shown[:1]), shown[:-1]])
  return sorted((f / fps, int(c)) for f, c in zip(*np.nonzero(rising)))


def test_shapes_dtypes_levels_and_captions(val_clips):
  ds = foley.ToyFoley(num_clips=40, split="val", seed=1)
  assert len(ds) == 40 and ds.visible_frames == 2 and ds.capacity == 3
  counts = set()
  for clip in val_clips:
    assert set(clip) == {"clip_id", "audio", "frames", "events", "caption", "class_captions", "stems", "noise"}
    assert clip["audio"].shape == (2 * SR,) and clip["audio"].dtype == np.float32
    assert clip["frames"].shape == (2 * FPS, 32, 32, 3) and clip["frames"].dtype == np.uint8
    assert 0.3 <= np.max(np.abs(clip["audio"])) < 0.9
    times = np.array([t for t, _ in clip["events"]])
    assert np.all(np.diff(times) >= foley.MIN_GAP_SECONDS) and times[0] > 0 and times[-1] + 0.3 <= 2.0
    np.testing.assert_array_equal(times * FPS, np.round(times * FPS))  # on the frame grid
    assert all(isinstance(c, int) and 0 <= c < len(foley.CLASSES) for _, c in clip["events"])
    assert clip["caption"] == foley.caption([c for _, c in clip["events"]])
    counts.add(len(clip["events"]))
  assert counts == {1, 2, 3}
  assert foley.caption([0, 0, 1]) == "a bell rings twice, then a drum is hit"
  assert foley.caption([3, 2, 3, 3]) == "a whistle blows three times, then a rattle shakes"
  assert foley.caption([2]) == "a rattle shakes"
  with pytest.raises(IndexError, match="index 40 out of range for 40 clips"):
    ds[40]
  other = foley.ToyFoley(sample_rate=16000, frames_per_second=10, image_size=24, max_events=4)
  assert other.visible_frames == 2 and other.gap_frames == 4 and other.capacity == 4
  for i in range(5):
    clip = other[i]
    assert clip["audio"].shape == (32000,) and clip["frames"].shape == (20, 24, 24, 3)
    assert events_seen(clip["frames"], fps=10) == clip["events"]


def test_deterministic_per_seed_split_index(val_clips):
  again = foley.ToyFoley(num_clips=40, split="val", seed=1)
  for i in (0, 17, 39):
    for key, value in again[i].items():
      np.testing.assert_array_equal(value, val_clips[i][key])
  assert again[-1]["clip_id"] == val_clips[39]["clip_id"]
  assert not np.array_equal(foley.ToyFoley(split="val", seed=2)[0]["audio"], val_clips[0]["audio"])


def test_splits_never_share_clips():
  groups = [[foley.ToyFoley(clip_seconds=1.0, split=s)[i] for i in range(20)] for s in foley.SPLITS]
  ids = [{c["clip_id"] for c in g} for g in groups]
  audio = [{c["audio"].tobytes() for c in g} for g in groups]
  frames = [{c["frames"].tobytes() for c in g} for g in groups]
  for a in range(3):
    for b in range(a + 1, 3):
      assert not ids[a] & ids[b] and not audio[a] & audio[b] and not frames[a] & frames[b]


def test_frames_show_each_event_from_its_onset_frame(val_clips):
  for clip in val_clips:
    assert events_seen(clip["frames"]) == clip["events"]
    for t, c in clip["events"]:  # on screen exactly `visible_frames` frames from the onset
      distance = np.linalg.norm(clip["frames"].astype(np.float64) - foley.COLOURS[c], axis=-1)
      shown = np.flatnonzero(np.sum(distance < 60.0, axis=(1, 2)) >= 10)
      assert int(round(t * FPS)) in shown and int(round(t * FPS)) - 1 not in shown
      assert {int(round(t * FPS)) + 1} <= set(shown) and int(round(t * FPS)) + 2 not in shown


def test_audio_holds_each_event_sound_at_its_time_with_its_class_timbre(val_clips):
  freqs = np.fft.rfftfreq(int(0.3 * SR), 1.0 / SR)
  for clip in val_clips:
    x, quiet = clip["audio"].astype(np.float64), np.ones(2 * SR, bool)
    for t, c in clip["events"]:
      a = int(round(t * SR))
      quiet[a:a + int(0.3 * SR)] = False
      assert np.max(np.abs(x[a:a + int(0.3 * SR)])) > 50 * np.std(x[a - int(0.05 * SR):a])
      power = np.abs(np.fft.rfft(x[a:a + int(0.3 * SR)])) ** 2
      share = [power[(freqs >= lo) & (freqs < hi)].sum() / power.sum() for lo, hi in
               ((480, 820), (0, 1000), (2000, 4000), (950, 3100))]  # bell fundamental, drum, rattle, whistle
      if c == 0:
        assert 480 <= freqs[np.argmax(power)] <= 820
      else:
        assert share[c] > 0.8, (clip["clip_id"], foley.CLASSES[c], share)
    assert np.std(x[quiet]) < 0.01  # the noise floor


def test_shuffling_frames_across_clips_breaks_onset_and_class_agreement(val_clips):
  """Audio scored against the events its own frames show, then against those of another clip's frames."""
  train = foley.ToyFoley(num_clips=100, seed=1)
  examples = [(clip["audio"], [c for _, c in clip["events"]]) for clip in map(train.__getitem__, range(100))]
  classifier = train_event_classifier(examples, SR, len(foley.CLASSES))
  audio = [c["audio"] for c in val_clips]
  for shift, onset_f1, accuracy in ((0, (0.95, 1.0), (0.9, 1.0)), (1, (0.0, 0.4), (0.0, 0.3)),
                                    (7, (0.0, 0.4), (0.0, 0.3))):
    seen = [events_seen(c["frames"]) for c in np.roll(np.array(val_clips, dtype=object), shift)]
    sync = onset_sync(audio, [[t for t, _ in e] for e in seen], SR)
    classes = event_class_accuracy(classifier, audio, [[c for _, c in e] for e in seen])
    assert onset_f1[0] <= sync["f1"] <= onset_f1[1], (shift, sync)
    assert accuracy[0] <= classes["accuracy"] <= accuracy[1], (shift, classes)


def test_errors():
  with pytest.raises(ValueError, match="unknown split 'dev'"):
    foley.ToyFoley(split="dev")
  with pytest.raises(ValueError, match="sample_rate=4000; expected at least 8000"):
    foley.ToyFoley(sample_rate=4000)
  with pytest.raises(ValueError, match="clip_seconds=0.3: expected room for one event"):
    foley.ToyFoley(clip_seconds=0.3)
  with pytest.raises(ValueError, match="frames_per_second=2: an object stays 1 frames and onsets are 1 frames apart"):
    foley.ToyFoley(frames_per_second=2)
  with pytest.raises(ValueError, match="max_events=0"):
    foley.ToyFoley(max_events=0)


def test_stems_hold_each_class_alone_and_sum_with_the_noise_to_the_audio(val_clips):
  """NAG's tracks: one stem per class, its events' sounds alone; the stems and the noise floor add up to the audio."""
  length = val_clips[0]["audio"].size
  for clip in val_clips:
    stems, noise = clip["stems"], clip["noise"]
    assert stems.shape == (len(foley.CLASSES), length) and stems.dtype == noise.dtype == np.float32
    np.testing.assert_allclose(noise + stems.sum(0), clip["audio"], rtol=0, atol=1e-7)
    assert np.all(np.count_nonzero(stems, axis=0) <= 1)  # sounds never overlap
    for c in range(len(foley.CLASSES)):
      spans = np.zeros(length, bool)
      for time, k in clip["events"]:
        if k == c:
          spans[int(round(time * SR)):int(round((time + foley.EVENT_SECONDS) * SR))] = True
      assert not np.any(stems[c][~spans]) and (np.any(stems[c]) == spans.any())
    assert [k for k, _ in clip["class_captions"]] == list(dict.fromkeys(k for _, k in clip["events"]))
    assert ", then ".join(text for _, text in clip["class_captions"]) == clip["caption"]
  assert foley.class_captions([1, 0, 1]) == [(1, "a drum is hit twice"), (0, "a bell rings")]


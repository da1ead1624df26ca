""""Mix and separate" pairs for visually guided source separation (DAVIS / DAVIS-Flow, Secs. 3.2 and 3.4).

Two sources are drawn and their audio summed into the mixture, a_mix = a⁽¹⁾ + a⁽²⁾; the frames of one source are
the condition and its waveform the target. DAVIS trains on both videos of a pair (𝓛 = 𝓛⁽¹⁾ + 𝓛⁽²⁾), so an example
carries both sources. Its keys (batched along a leading B by `pipeline.make_pair_dataset`):

- "mixture" (L,) float32: "target" + "other_target", exactly;
- "target" (L,) float32 and "frames" (F, H, W, 3) uint8: source A's waveform and the frames that show it;
- "other_target" (L,) float32 and "other_frames" (F, H, W, 3) uint8: the same for source B;
- "clip_id" str: "<A's clip id>+<B's clip id>";
- toy pairs add "category" / "other_category" (int, an index into `SOURCES`); record pairs whose records store
  CLIP frame features add "context" / "other_context" (F, D) float32.

`mix_pair(b, a)` is `mix_pair(a, b)` with A and B swapped and the same mixture. The released DAVIS loader mixes the
mean (a⁽¹⁾ + a⁽²⁾) / 2 instead of the paper's sum: a gain of the mixture, to which SDR, SIR and SAR are blind.
Everything here is numpy and deterministic in `(seed, split, index)`.
"""
import operator
from typing import Any

import numpy as np

from avflow.data import synthetic
from avflow.metrics.loudness import SOURCES

# The DAVIS MUSIC setup (`scripts/run_fm.sh`): `audRate 11025`, `audLen 65535` (~5.94 s), 11 frames per clip.
DAVIS_SAMPLE_RATE = 11025
DAVIS_SECONDS = 65535 / DAVIS_SAMPLE_RATE
DAVIS_FRAMES = 11
CONDITION_FIELDS = ("category", "context")  # per-source fields an example carries for A and, prefixed, for B
PAIR_STREAM = 1  # the last entry of a pair's seed, so pair p and toy clip p never share a random stream
MAX_DRAWS = 64  # record pairs: draws of two windows from different clips before giving up


def mix_pair(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
  """The example that separates source `a` from the mixture of `a` and `b`, each a dict(clip_id, audio (L,) float32,
  frames (F, H, W, 3) uint8[, category][, context (F, D)])."""
  if a["audio"].shape != b["audio"].shape:
    raise ValueError(f"the sources of a pair differ in length: {a['audio'].shape} vs {b['audio'].shape}")
  out = {"mixture": a["audio"] + b["audio"], "target": a["audio"], "frames": a["frames"],
         "other_target": b["audio"], "other_frames": b["frames"], "clip_id": f"{a['clip_id']}+{b['clip_id']}"}
  for key in CONDITION_FIELDS:
    if key in a:
      out[key], out[f"other_{key}"] = a[key], b[key]
  return out


def _check_index(index, size: int) -> int:
  i = operator.index(index)
  if i < 0:
    i += size
  if not 0 <= i < size:
    raise IndexError(f"index {index} out of range for {size} pairs")
  return i


class ToyPairs:
  """Pairs of toy-movie sources; `pairs[p]` is a `mix_pair` example with "category" / "other_category".

  Pair p takes one stem of clip 2p and one of clip 2p + 1 of `ToyMovies(seed, split)` (so splits never share
  audio), of two different categories drawn uniformly among the ordered pairs whose stems both sound. Each source
  is set to ON_SCREEN_LUFS ± LUFS_JITTER (drawn independently; both are scaled down together when the mixture
  would peak above PEAK_LIMIT) and pictured by its clip's frames redrawn to show its category (`ToyMovies.clip`).
  The law of (A, B) is that of (B, A): the mixture alone cannot tell which source is wanted, only the frames can.
  With `layout="bands"` each category keeps to its own frequency band, so the frames name the band to keep.
  """

  def __init__(self, sample_rate: int = DAVIS_SAMPLE_RATE, clip_seconds: float = DAVIS_SECONDS,
               num_frames: int = DAVIS_FRAMES, image_size: int = 32, num_pairs: int = 512, seed: int = 0,
               split: str = "train", layout: str = "bands"):
    if num_frames < 1:
      raise ValueError(f"num_frames={num_frames}; expected at least 1")
    self.num_pairs = int(num_pairs)
    self.movies = synthetic.ToyMovies(sample_rate=sample_rate, clip_seconds=clip_seconds,
                                      frames_per_second=num_frames / clip_seconds, image_size=image_size,
                                      num_clips=2 * self.num_pairs, seed=seed, split=split, layout=layout)

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index) -> dict[str, Any]:
    return mix_pair(*self.sources(index))

  def sources(self, index) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sources A and B of pair `index`, as `mix_pair` takes them."""
    p = _check_index(index, self.num_pairs)
    m = self.movies
    rng = np.random.default_rng([m.seed, synthetic.SPLITS.index(m.split), p, PAIR_STREAM])
    categories = [int(c) for c in rng.permutation(len(SOURCES))[:2]]
    clips = [m.clip(2 * p + k, shown=c) for k, c in enumerate(categories)]
    sounding = [np.isfinite(clip["loudness"]) for clip in clips]
    if not all(s[c] for s, c in zip(sounding, categories)):  # rare: a silent off-screen stem was drawn
      valid = [(x, y) for x in range(len(SOURCES)) for y in range(len(SOURCES))
               if x != y and sounding[0][x] and sounding[1][y]]
      if not valid:
        raise ValueError(f"toy clips {2 * p} and {2 * p + 1} have no two sounding stems of different categories")
      # The first draw kept when valid, else a uniform valid one: uniform over `valid` in all.
      drawn, categories = categories, list(valid[int(rng.integers(len(valid)))])
      clips = [clip if c == d else m.clip(2 * p + k, shown=c)
               for k, (clip, c, d) in enumerate(zip(clips, categories, drawn))]
    levels = synthetic.ON_SCREEN_LUFS + rng.uniform(-synthetic.LUFS_JITTER, synthetic.LUFS_JITTER, 2)
    audio = [clip["stems"][c] * 10.0 ** ((level - clip["loudness"][c]) / 20.0)
             for clip, c, level in zip(clips, categories, levels)]
    peak = np.max(np.abs(audio[0] + audio[1]))
    scale = min(1.0, (1.0 - 1e-4) * synthetic.PEAK_LIMIT / peak)  # a margin for the float32 rounding
    return tuple(dict(clip_id=clip["clip_id"], audio=(x * scale).astype(np.float32), frames=clip["frames"],
                      category=c) for clip, x, c in zip(clips, audio, categories))


class RecordPairs:
  """Pairs of prepared records (a `records.RecordSource` or `Subset`: one split); `pairs[p]` is a `mix_pair` example,
  with "context" / "other_context" when the records store CLIP features.

  A record is a window of a movie: its frames film the whole scene, and the audio they picture is the window's
  original soundtrack, `mix`, not any one separated stem. So a source is a record's `mix`, conditioned on its
  `frames` (and `context`): the DAVIS reading of a video. Records carry no category; instead the two windows of a
  pair come from different clips (`records.window_clip`), never two windows of one movie clip. Pair p is uniform
  over the ordered pairs of such windows, drawn from `(seed, p)`; `num_pairs` defaults to the number of records.
  Levels are the records' own.
  """

  def __init__(self, source, num_pairs: int | None = None, seed: int = 0):
    from avflow.data.records import window_clip  # only here: the caller has already read the records
    self.source, self.seed, self.window_clip = source, int(seed), window_clip
    self.num_pairs = len(source) if num_pairs is None else int(num_pairs)
    if len(source) < 2:
      raise ValueError(f"record pairs need at least 2 records, got {len(source)}")

  def __len__(self) -> int:
    return self.num_pairs

  def __getitem__(self, index) -> dict[str, Any]:
    p = _check_index(index, self.num_pairs)
    rng = np.random.default_rng([self.seed, p, PAIR_STREAM])
    for _ in range(MAX_DRAWS):
      i, j = (int(k) for k in rng.integers(len(self.source), size=2))
      if i == j:
        continue
      a, b = self.source[i], self.source[j]
      if self.window_clip(a["clip_id"]) != self.window_clip(b["clip_id"]):
        return mix_pair(self._as_source(a), self._as_source(b))
    raise ValueError(f"no two records from different clips in {MAX_DRAWS} draws: the records hold windows of "
                     "a single clip, or of very few")

  @staticmethod
  def _as_source(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(clip_id=record["clip_id"], audio=np.asarray(record["mix"], np.float32), frames=record["frames"])
    if "context" in record:
      out["context"] = np.asarray(record["context"], np.float32)
    return out

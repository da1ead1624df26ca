"""The Grain input pipeline: read a clip → Muddy-Mix remix (x0, x1, stems, gains) → batch; or read a "mix and
separate" pair (`avflow.data.separation`) → batch.

Training remixes every clip afresh at every visit (Sec. 2.2, "randomly generating poorly balanced audio samples
on-the-fly"); `remix="fixed"` derives each clip's remix from its id and the seed so every epoch sees the same inputs
(Table 5) and evaluation is comparable across steps. Deterministic for a seed; each process reads its own shard.
"""
from typing import Any, Protocol

import grain
import numpy as np

from avflow.data import remix as remix_lib

FEATURE_FIELDS = ("context", "text")  # stored per-clip features that batches carry when the source has them


class ClipSource(Protocol):
  """Random-access clips: `source[i]` → dict(clip_id, stems (3, L), frames (F, H, W, 3), loudness (3,) [, mix]
  [, context (F, D)][, text (T, D)])."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, Any]: ...


class MuddyRemix(grain.transforms.RandomMap):
  """Turns a clip into a training pair with the public Muddy Mix rules (`remix.muddy_remix`)."""

  def __init__(self, sample_rate: int, suppress_db, highlight_db, peak_db: float, mode: str, seed: int):
    if mode not in ("on_the_fly", "fixed"):
      raise ValueError(f"data.remix={mode!r}; expected 'on_the_fly' or 'fixed'")
    self.sample_rate = sample_rate
    self.suppress_db = tuple(suppress_db)
    self.highlight_db = tuple(highlight_db)
    self.peak_db = peak_db
    self.mode = mode
    self.seed = seed

  def random_map(self, clip: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    if self.mode == "fixed":
      rng = remix_lib.fixed_rng(clip["clip_id"], self.seed)
    stems = np.asarray(clip["stems"], np.float32)
    out = remix_lib.muddy_remix(stems, self.sample_rate, rng, suppress_db=self.suppress_db,
                                highlight_db=self.highlight_db, peak_db=self.peak_db, loudness=clip.get("loudness"))
    x1 = np.asarray(clip["mix"], np.float32) if "mix" in clip else out["x1"]
    return {
        "x0": out["x0"].astype(np.float32)[:, None],
        "x1": x1[:, None],
        "stems": out["stems"].astype(np.float32),
        "target_stems": stems,
        "gains_db": np.asarray(out["gains_db"], np.float32),
        "frames": clip["frames"],
        "clip_id": clip["clip_id"],
        # Stored conditioning features pass through unchanged: CLIP `context` (F, D), T5 caption `text` (T, D).
        **{k: np.asarray(clip[k], np.float32) for k in FEATURE_FIELDS if k in clip},
    }


def batch_dataset(source, *, batch_size: int, seed: int, train: bool, process_index: int = 0, process_count: int = 1,
                  transform: grain.transforms.RandomMap | None = None, worker_count: int = 0) -> grain.IterDataset:
  """`source` (len + getitem) batched over one process's shard, each example through `transform` first (seeded by
  `seed`); infinite and shuffled when `train`. `worker_count` > 0 prefetches in Grain worker processes, which read
  absl flags: call it from an absl app (the CLI) or after `absl.flags.FLAGS.mark_as_parsed()`."""
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by the {process_count} processes")
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if train:
    ds = ds.shuffle(seed=seed).repeat()
  if transform is not None:
    ds = ds.random_map(transform, seed=seed)
  ds = ds.batch(batch_size // process_count, drop_remainder=train)
  ids = ds.to_iter_dataset()
  if worker_count > 0:
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return ids


def make_dataset(source: ClipSource, data_cfg, *, batch_size: int, seed: int, train: bool,
                 process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """A batched Grain dataset of Muddy-Mix remixes over one process's shard; infinite and shuffled when `train`."""
  mode = data_cfg.remix if train else "fixed"
  remix = MuddyRemix(data_cfg.sample_rate, data_cfg.suppress_db, data_cfg.highlight_db, data_cfg.peak_db, mode, seed)
  return batch_dataset(source, batch_size=batch_size, seed=seed, train=train, process_index=process_index,
                       process_count=process_count, transform=remix, worker_count=data_cfg.get("worker_count", 0))


def make_pair_dataset(source, data_cfg, *, batch_size: int, seed: int, train: bool, process_index: int = 0,
                      process_count: int = 1) -> grain.IterDataset:
  """A batched Grain dataset of "mix and separate" pairs (`separation.ToyPairs` or `separation.RecordPairs`, keys in
  `avflow.data.separation`) over one process's shard; infinite and shuffled when `train`. A pair is fixed by its
  index, so every epoch sees the same pairs in a new order."""
  return batch_dataset(source, batch_size=batch_size, seed=seed, train=train, process_index=process_index,
                       process_count=process_count, worker_count=data_cfg.get("worker_count", 0))


def make_source(data_cfg, split: str) -> ClipSource:
  """The clip source named by `data.source`."""
  if data_cfg.source == "toy_movies":
    from avflow.data.synthetic import ToyMovies
    num = {"train": data_cfg.num_train_clips}.get(split, data_cfg.num_eval_clips)
    return ToyMovies(sample_rate=data_cfg.sample_rate, clip_seconds=data_cfg.clip_seconds,
                     frames_per_second=data_cfg.frames_per_second, image_size=data_cfg.image_size,
                     num_clips=num, seed=data_cfg.seed, split=split, layout=data_cfg.toy_layout)
  if data_cfg.source == "records":
    from avflow.data.records import records_source
    return records_source(data_cfg, split)
  raise ValueError(f"unknown data.source {data_cfg.source!r}; expected 'toy_movies' or 'records'")


def device_batch(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """The numeric part of a batch (clip ids stay on the host)."""
  return {k: v for k, v in batch.items() if k != "clip_id"}

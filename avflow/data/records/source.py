"""Reading prepared records: `RecordSource` over one split, and `records_source`, which checks the records against
the config and holds out train clips for evaluation when there is no val split."""
import logging
import os
import re
from typing import Any

import tensorflow_datasets as tfds

from avflow.data.records.builder import NAME, MuddyMix
from avflow.data.records.discovery import held_out_clips


def stored_version(records_dir: str) -> str:
  """The newest version of the records in `records_dir` that this code reads (`MuddyMix.SUPPORTED_VERSIONS`)."""
  folder = os.path.join(records_dir, NAME)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"no {NAME} records in {records_dir!r}; build them with `python -m avflow prepare`")
  readable = sorted((v for v in [MuddyMix.VERSION, *MuddyMix.SUPPORTED_VERSIONS]
                     if os.path.isfile(os.path.join(folder, str(v), "dataset_info.json"))), reverse=True)
  if not readable:
    found = ", ".join(sorted(os.listdir(folder))) or "none"
    raise FileNotFoundError(f"{folder} holds no {NAME} version this code reads (found: {found}; reads "
                            f"{MuddyMix.VERSION} and {', '.join(map(str, MuddyMix.SUPPORTED_VERSIONS))}); "
                            "prepare the records again")
  return str(readable[0])


class RecordSource:
  """A `ClipSource` over one split of prepared records: `source[i]` → dict(clip_id, stems (3, L), frames
  (F, N, N, 3), loudness (3,), mix (L,)[, context (F, D)][, text (text_tokens, D)]), random access without
  TensorFlow. The newest readable version in `records_dir` is read."""

  def __init__(self, records_dir: str, split: str):
    builder = tfds.builder(NAME, data_dir=records_dir, version=stored_version(records_dir))
    if split not in builder.info.splits:
      raise ValueError(f"split {split!r} is not in the records at {records_dir} (it has "
                       f"{', '.join(builder.info.splits) or 'none'}; see prepare_report.json)")
    self.metadata = dict(builder.info.metadata or {})
    self.splits = list(builder.info.splits)
    self._data = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict[str, Any]:
    ex = dict(self._data[index])
    ex["clip_id"] = ex["clip_id"].decode()
    return ex


class Subset:
  """The examples `indices` of a `RecordSource`, as a `ClipSource`."""

  def __init__(self, source: RecordSource, indices: list[int]):
    self.source, self.indices, self.metadata = source, list(indices), source.metadata

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[self.indices[index]]


def window_clip(example_id: str) -> str:
  """The clip a window came from: `<clip>_w003` → `<clip>`."""
  return re.sub(r"_w\d+$", "", example_id)


def hold_out(train: RecordSource, split: str) -> Subset | RecordSource:
  """The `split` ("train" or "val") part of a train split when the records have no val split: `held_out_clips`
  are evaluated on, the other clips trained on; a single clip serves as both, with a warning."""
  clips = [window_clip(train[i]["clip_id"]) for i in range(len(train))]
  held = set(held_out_clips(clips))
  if not held:
    if split == "val":
      logging.warning("the records have no val split and a single train clip: evaluating on the train split")
    return train
  if split == "val":
    logging.warning("the records have no val split: evaluating on train clips %s, training on the other %d "
                    "(see prepare_report.json)", ", ".join(sorted(held)), len(set(clips)) - len(held))
  return Subset(train, [i for i, c in enumerate(clips) if (c in held) == (split == "val")])


def records_source(data_cfg, split: str) -> RecordSource | Subset:
  """`RecordSource` for `data.source == "records"`: checks the records' geometry against `data_cfg`; without a
  val split, train and val come from `hold_out`."""
  if not data_cfg.records_dir:
    raise ValueError("data.records_dir is empty; build records with `python -m avflow prepare` and set it")
  source = RecordSource(data_cfg.records_dir, split if split != "val" else "train")
  held = split in ("train", "val") and "val" not in source.splits
  if split == "val" and not held:
    source = RecordSource(data_cfg.records_dir, "val")
  m = source.metadata
  wanted = {"sample_rate": data_cfg.sample_rate, "clip_seconds": data_cfg.clip_seconds,
            "image_size": data_cfg.image_size, "frames_per_second": data_cfg.frames_per_second}
  wrong = [f"{k}: config {v}, records {m.get(k)}" for k, v in wanted.items() if float(m.get(k, -1)) != float(v)]
  if wrong:
    raise ValueError(f"records at {data_cfg.records_dir} do not match config.data ({'; '.join(wrong)}); "
                     "prepare them again with matching flags")
  return hold_out(source, split) if held else source

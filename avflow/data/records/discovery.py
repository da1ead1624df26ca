"""Finding Muddy Mix clips and their splits: the input layouts, what a clip is, the prepare report, the split lists
or the stable hash that assigns each clip to train/val/test, and the train clips held out when there is no val split.
"""
import collections
import dataclasses
import hashlib
import json
import os
from typing import Callable

import numpy as np

from avflow.data import video as video_lib

LAYOUTS = ("muddy_mix", "video_stems")
SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test_filter.csv"}
HASH_FRACTIONS = (0.8, 0.1, 0.1)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
HOLD_OUT_FRACTION = 0.1

Warn = Callable[[str, str], None]  # (path, warning)


class BadClip(Exception):
  """A clip that cannot be used: `reason` in words, `path` the offending file or folder."""

  def __init__(self, reason: str, path: str):
    super().__init__(reason)
    self.reason, self.path = reason, path


@dataclasses.dataclass(frozen=True)
class Clip:
  """One input clip: `clip_id` (its folder or video name), `path` (that folder or video), `group` (hash key)."""
  clip_id: str
  path: str
  group: str


class Report:
  """What happened to every clip; written as `prepare_report.json`."""

  def __init__(self):
    self.ok: list[str] = []
    self.skipped: list[dict] = []
    self.warnings: list[dict] = []
    self.examples = {s: 0 for s in SPLITS}
    self.split_ok = {s: [] for s in SPLITS}  # the clips written per split
    self.held_out: list[str] = []

  def warn(self, clip: str | None, path: str | None, warning: str) -> None:
    self.warnings.append({"clip": clip, "path": path, "warning": warning})

  def skip(self, clip: str, path: str, reason: str) -> None:
    self.skipped.append({"clip": clip, "path": path, "reason": reason})

  def as_dict(self) -> dict:
    return {"ok": self.ok, "skipped": self.skipped, "warnings": self.warnings, "examples": self.examples,
            "held_out": self.held_out}

  def write(self, path: str) -> None:
    with open(path, "w") as f:
      json.dump(self.as_dict(), f, indent=2)


def find_clips(layout: str, input_dir: str, report: Report) -> list[Clip]:
  """The clips under `input_dir` in `layout`, sorted; a second clip with an already seen name is skipped."""
  found = []
  for root, dirs, files in os.walk(input_dir):
    dirs.sort(key=video_lib.natural_key)
    rel = os.path.relpath(root, input_dir)
    if layout == "muddy_mix":
      if "separated" in dirs or "audio_raw" in dirs:
        found.append(Clip(os.path.basename(root), root, rel.split(os.sep)[0]))
        dirs.clear()
    else:
      for name in sorted(files, key=video_lib.natural_key):
        stem, ext = os.path.splitext(name)
        if ext.lower() in VIDEO_EXTENSIONS:
          top = stem if rel == "." else rel.split(os.sep)[0]
          found.append(Clip(stem, os.path.join(root, name), top))
  seen, clips = {}, []
  for clip in found:
    if clip.clip_id in seen:
      report.skip(clip.clip_id, clip.path, f"duplicate clip name (also {seen[clip.clip_id]})")
    else:
      seen[clip.clip_id] = clip.path
      clips.append(clip)
  return clips


def _hash_split(group: str) -> str:
  digest = hashlib.blake2b(group.encode(), digest_size=8).digest()
  u = int.from_bytes(digest, "little") / 2.0 ** 64
  return SPLITS[int(np.searchsorted(np.cumsum(HASH_FRACTIONS), u, side="right"))]


def held_out_clips(clip_ids) -> list[str]:
  """The train clips a run without a val split evaluates on: `HOLD_OUT_FRACTION` of them (at least one) with the
  lowest stable hash, sorted; none when there are fewer than two clips."""
  clip_ids = sorted(set(clip_ids))
  if len(clip_ids) < 2:
    return []
  count = max(1, int(round(HOLD_OUT_FRACTION * len(clip_ids))))
  return sorted(sorted(clip_ids, key=lambda c: hashlib.blake2b(c.encode(), digest_size=8).digest())[:count])


def assign_splits(clips: list[Clip], splits_dir: str, report: Report) -> dict[str, list[Clip]]:
  """Clips per split: from the public split lists in `splits_dir` if any exists, else by hash."""
  present = {s: os.path.join(splits_dir, f) for s, f in SPLIT_FILES.items()
             if os.path.isfile(os.path.join(splits_dir, f))}
  out = {s: [] for s in SPLITS}
  if not present:
    for clip in clips:
      out[_hash_split(clip.group)].append(clip)
    return out
  listed: dict[str, list[str]] = collections.defaultdict(list)
  known = {c.clip_id for c in clips}
  for split in SPLITS:
    if split not in present:
      report.warn(None, os.path.join(splits_dir, SPLIT_FILES[split]),
                  f"split list not found: split {split!r} gets no clips")
      continue
    with open(present[split]) as f:
      entries = [line.split(",")[0].strip().strip("\"'") for line in f]
    names = [os.path.basename(e.rstrip("/")) for e in entries if e]
    unknown = [n for n in names if n not in known]
    if unknown:
      report.warn(None, present[split], f"{len(unknown)} of {len(names)} entries match no clip "
                  f"(first: {', '.join(unknown[:3])})")
    for name in names:
      listed[name].append(split)
  for clip in clips:
    splits = listed.get(clip.clip_id)
    if not splits:
      report.skip(clip.clip_id, clip.path, "in none of the split lists " + ", ".join(SPLIT_FILES.values()))
      continue
    # A clip listed twice goes to the most held-out split, so no test clip is trained on.
    split = max(set(splits), key=SPLITS.index)
    if len(set(splits)) > 1:
      report.warn(clip.clip_id, clip.path, f"listed in splits {sorted(set(splits))}; kept in {split!r} only")
    out[split].append(clip)
  return out

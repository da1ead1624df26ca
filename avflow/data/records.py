"""Muddy Mix records: real clips → a TFDS ArrayRecord dataset, read back as a `ClipSource`.

Two input layouts:

- `muddy_mix`, the public VisAH data layout: one folder per clip holding `audio_raw/<clip>.wav` (the
  original movie mix, the target), `separated/{speech,music,effects+residual}.wav` (the separator's
  stems; VisAH uses effects+residual as the effects stem), `frames/*.png` at 1 fps and optionally
  `frames_feats/visual_feats.pt`, the CLIP ViT-L/14 features (N, 768) of those frames (read with PyTorch
  when it is installed; the records then carry them as `context` and clips without them are skipped),
  and optionally `frames_captions/InternVL2-8B_prompt1.txt`, the clip's caption (any single `.txt` in
  `frames_captions/` is taken too; of several, the first by name, with a warning).
- `video_stems`: a video file per clip, named `<clip>.<ext>`, and its stems in
  `<stems_dir>/<clip>/{speech,music,effects}.wav`. The original mix is the video's soundtrack; a
  video without an audio track is still used when its stems are there (the stems' sum stands in for
  the mix, with a warning), and is skipped only when the stems are missing too. The caption, if any,
  is `<clip>.txt` beside the video.

CLIP image features, in both layouts, with CLIP weights (`image_encoder=`, `prepare --clip_weights=PATH`): the
frames' features are computed with avflow's Flax CLIP (`image_features.ImageEncoder`) and stored as `context`, one
L2-normalised vector per frame, in place of any stored `frames_feats`.

Text features, in both layouts, only with a text encoder (`text_encoder=`, `prepare --text_encoder=DIR`): the
caption file's text (UTF-8, whitespace runs collapsed to one space) is encoded once per clip by a T5 encoder
(`text_features.TextEncoder`) into `text_tokens` tokens and stored as `text` (text_tokens, D) in every window of
the clip. As with missing CLIP features, a clip without a caption file is skipped (and reported); an empty
caption is kept with a warning and stored as the encoding of the empty string.

Splits, in both layouts: from the public lists `train.csv`, `val.csv` and `test_filter.csv` when any is
present (one clip folder per line; a line names a clip by its last path component; the test split is
called `test`); otherwise a clip goes to train/val/test (80/10/10, close to the public 15,078 / 1,927 /
~1,821 clips) by a stable hash of its top-level folder or video under the input, so the sub-clips of one
source video never straddle splits. Records without a val split (a few clips that all hash into train, or
split lists without `val.csv`) still train: `records_source` then holds out `held_out_clips` of the train split
(about a tenth, at least one clip, chosen by a stable hash of the clip names) for evaluation and trains on the
rest, with a warning; prepare's report names them under "held_out". A train split of a single clip is
evaluated on itself, with a warning.

Every clip is read as mono float32 at the target rate (channels averaged and soxr resampling, as
`librosa.load` in the public generator), cut into windows of `clip_seconds` (VisAH: 10 s) from the
start; the last, shorter piece is zero-padded when it lasts at least `min_seconds` and dropped
otherwise. Frames are the 1-fps frames with CLIP's geometry (`video.clip_frame`), the window's
`round(clip_seconds)` frames (the last one repeated where the clip runs out). Per-stem BS.1770
loudness is computed once per window with the generator's rules (`metrics.loudness.stem_loudness`) and stored,
so the training pipeline never re-measures it; a silent stem has -inf LUFS and the remix leaves it
at gain 0.

Bad inputs never stop the run unless `strict`: each skipped clip is listed with its reason in
`<output>/prepare_report.json` = {"ok": [clip ids], "skipped": [{"clip", "path", "reason"}],
"warnings": [{"clip", "path", "warning"}], "examples": {split: windows written}, "held_out": [train clips that
training evaluates on when there is no val split]}.
"""
import collections
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
from typing import Any, Callable, Iterator

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
from PIL import Image
from tqdm import tqdm

from avflow import outputs
from avflow.data import video as video_lib
from avflow.metrics.loudness import SOURCES, stem_loudness

NAME = "muddy_mix"
LAYOUTS = ("muddy_mix", "video_stems")
SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "train.csv", "val": "val.csv", "test": "test_filter.csv"}
HASH_FRACTIONS = (0.8, 0.1, 0.1)
STEM_FILES = {"muddy_mix": ("speech.wav", "music.wav", "effects+residual.wav"),
              "video_stems": ("speech.wav", "music.wav", "effects.wav")}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".m4v")
FEATURES_FILE = os.path.join("frames_feats", "visual_feats.pt")
CAPTIONS_DIR = "frames_captions"
CAPTION_FILE = "InternVL2-8B_prompt1.txt"  # the public Muddy Mix caption (its first line is the public `text`)
FRAMES_PER_SECOND = 1
LENGTH_TOLERANCE_SECONDS = 0.1
REPORT_FILE = "prepare_report.json"
HOLD_OUT_FRACTION = 0.1


class BadClip(Exception):
  """A clip that cannot be used: `reason` in words, `path` the offending file or folder."""

  def __init__(self, reason: str, path: str):
    super().__init__(reason)
    self.reason, self.path = reason, path


class PrepareError(RuntimeError):
  """The run stopped: a bad clip under `strict`, or an unusable input/output folder."""


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """Record geometry: `sample_rate` Hz, windows of `clip_seconds`, `image_size`-px frames at 1 fps."""
  sample_rate: int = 44100
  clip_seconds: float = 10.0
  min_seconds: float | None = None  # None: half a window
  image_size: int = 224

  @property
  def length(self) -> int:
    return int(round(self.sample_rate * self.clip_seconds))

  @property
  def frames(self) -> int:
    return max(1, int(round(self.clip_seconds * FRAMES_PER_SECOND)))

  @property
  def min_length(self) -> int:
    seconds = self.clip_seconds / 2 if self.min_seconds is None else self.min_seconds
    return max(1, int(round(seconds * self.sample_rate)))


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


# ---------------------------------------------------------------------------------------------
# Finding clips and splits.

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


# ---------------------------------------------------------------------------------------------
# Reading one clip.

Warn = Callable[[str, str], None]  # (path, warning)


def read_wav(path: str, sample_rate: int, warn: Warn) -> np.ndarray:
  """A wav file as mono float32 at `sample_rate`; `BadClip` for missing, unreadable, truncated or NaN/Inf audio."""
  if not os.path.isfile(path):
    raise BadClip("missing file", path)
  try:
    info = sf.info(path)
    data, rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.SoundFileError, RuntimeError) as e:
    raise BadClip(f"not a readable audio file ({getattr(e, 'error_string', e)})", path) from e
  declared = re.search(r"^data\s*:\s*(\d+) \(should be (\d+)\)", info.extra_info, re.MULTILINE)
  if declared and 0 < int(declared.group(2)) < int(declared.group(1)) < 0xFFFFFFFF:
    raise BadClip(f"truncated: the header declares {declared.group(1)} bytes of audio, the file holds "
                  f"{declared.group(2)}", path)
  if data.shape[0] == 0:
    raise BadClip("no audio samples", path)
  bad = ~np.isfinite(data)
  if bad.any():
    raise BadClip(f"NaN/Inf samples ({int(bad.sum())} of {bad.size})", path)
  if data.shape[1] > 1:
    warn(path, f"{data.shape[1]} channels averaged to mono")
  if rate != sample_rate:
    warn(path, f"resampled from {rate} Hz to {sample_rate} Hz")
  return video_lib.mono_resample(data.T, rate, sample_rate)


def _read_frames(folder: str, size: int) -> np.ndarray:
  try:
    return video_lib.read_frames(folder, size)
  except FileNotFoundError as e:
    raise BadClip("no frames (.png/.jpg)", folder) from e
  except video_lib.VideoError as e:
    raise BadClip(str(e), folder) from e


def _torch_load(path: str) -> np.ndarray:
  import torch  # only here: the features are PyTorch files
  x = torch.load(path, map_location="cpu", weights_only=True)
  x = np.asarray(x.float().numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
  return x.reshape(len(x), -1) if x.ndim >= 2 else x


def _read_context(path: str, dim: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise BadClip(f"missing {FEATURES_FILE} (other clips have CLIP features)", path)
  try:
    x = _torch_load(path)
  except Exception as e:  # torch raises many types for a bad file
    raise BadClip(f"unreadable features ({type(e).__name__}: {e})", path) from e
  if x.ndim != 2 or x.shape[1] != dim or not len(x):
    raise BadClip(f"features of shape {x.shape}; expected (N, {dim})", path)
  if not np.all(np.isfinite(x)):
    raise BadClip("NaN/Inf in the features", path)
  return x


def _missing(folder: str, names) -> list[str]:
  return [n for n in names if not os.path.isfile(os.path.join(folder, n))]


def caption_path(layout: str, clip: Clip, warn: Warn | None = None) -> str | None:
  """The clip's caption file (see the module docstring), or None when it has none."""
  if layout == "video_stems":
    path = os.path.splitext(clip.path)[0] + ".txt"
    return path if os.path.isfile(path) else None
  folder = os.path.join(clip.path, CAPTIONS_DIR)
  if os.path.isfile(os.path.join(folder, CAPTION_FILE)):
    return os.path.join(folder, CAPTION_FILE)
  names = sorted((n for n in os.listdir(folder) if n.lower().endswith(".txt")
                  and os.path.isfile(os.path.join(folder, n))),
                 key=video_lib.natural_key) if os.path.isdir(folder) else []
  if len(names) > 1 and warn:
    warn(folder, f"{len(names)} caption files and no {CAPTION_FILE}; {names[0]} is used")
  return os.path.join(folder, names[0]) if names else None


def read_caption(layout: str, clip: Clip, warn: Warn) -> str:
  """The clip's caption, whitespace collapsed; `BadClip` when there is no caption file or it is not UTF-8."""
  path = caption_path(layout, clip, warn)
  if path is None:
    where = (os.path.splitext(clip.path)[0] + ".txt" if layout == "video_stems"
             else os.path.join(clip.path, CAPTIONS_DIR, CAPTION_FILE))
    raise BadClip("no caption file (text features are stored for every clip)", where)
  try:
    with open(path, encoding="utf-8") as f:
      text = " ".join(f.read().split())
  except (OSError, UnicodeDecodeError) as e:
    raise BadClip(f"unreadable caption ({type(e).__name__}: {e})", path) from e
  if not text:
    warn(path, "empty caption: the encoding of the empty string is stored")
  return text


def load_clip(layout: str, clip: Clip, spec: WindowSpec, context_dim: int | None, warn: Warn,
              stems_dir: str | None = None, text_encoder=None, image_encoder=None) -> dict[str, Any]:
  """A whole clip: `mix` (L,), `stems` (3, L), `frames` (F, N, N, 3) at 1 fps[, `context` (F', D): the stored
  `frames_feats` when `context_dim`, or the frames encoded by `image_encoder`, an `image_features.ImageEncoder`][,
  `text` (text_tokens, D): the caption encoded by `text_encoder`, a `text_features.TextEncoder`]."""
  sr = spec.sample_rate
  caption = read_caption(layout, clip, warn) if text_encoder is not None else None
  if layout == "muddy_mix":
    folder = os.path.join(clip.path, "separated")
    missing = _missing(folder, STEM_FILES[layout])
    if missing:
      raise BadClip(f"missing stem {', '.join(missing)}", folder)
    stems = [read_wav(os.path.join(folder, n), sr, warn) for n in STEM_FILES[layout]]
    raw = os.path.join(clip.path, "audio_raw")
    mix_path = os.path.join(raw, f"{clip.clip_id}.wav")
    if not os.path.isfile(mix_path) and os.path.isdir(raw):
      wavs = [n for n in os.listdir(raw) if n.lower().endswith(".wav")]
      mix_path = os.path.join(raw, wavs[0]) if len(wavs) == 1 else mix_path
    if os.path.isfile(mix_path):
      mix = read_wav(mix_path, sr, warn)
    else:
      mix = None
      warn(mix_path, "no original mix; the stems' sum stands in for it")
    frames = _read_frames(os.path.join(clip.path, "frames"), spec.image_size)
    stored = context_dim and image_encoder is None
    context = _read_context(os.path.join(clip.path, FEATURES_FILE), context_dim) if stored else None
  else:
    try:
      decoded = video_lib.read_video(clip.path, sr, spec.image_size, FRAMES_PER_SECOND, require_audio=False)
    except video_lib.VideoError as e:
      raise BadClip(f"unreadable video ({e})", clip.path) from e
    folder = os.path.join(stems_dir, clip.clip_id)
    missing = _missing(folder, STEM_FILES[layout])
    if missing:
      lead = "the video has no audio track and " if decoded.audio is None else ""
      raise BadClip(f"{lead}missing stem {', '.join(missing)}", folder)
    stems = [read_wav(os.path.join(folder, n), sr, warn) for n in STEM_FILES[layout]]
    mix = decoded.audio
    if mix is None:
      warn(clip.path, "the video has no audio track; the stems' sum stands in for the original mix")
    frames, context = decoded.frames, None

  lengths = [len(s) for s in stems] + ([len(mix)] if mix is not None else [])
  n = min(lengths)
  if max(lengths) - n > LENGTH_TOLERANCE_SECONDS * sr:
    warn(clip.path, f"mix and stems differ in length ({min(lengths) / sr:.2f}-{max(lengths) / sr:.2f} s); "
         "all cut to the shortest")
  stems = np.stack([s[:n] for s in stems])
  for name, stem in zip(SOURCES, stems):
    if not np.any(stem):
      warn(clip.path, f"{name} stem is all silent (kept: -inf LUFS, the remix leaves it at gain 0)")
  expected = n / sr * FRAMES_PER_SECOND
  if abs(len(frames) - expected) > 1.5:
    warn(clip.path, f"{len(frames)} frames for {n / sr:.2f} s of audio at {FRAMES_PER_SECOND} fps")
  out = dict(mix=stems.sum(axis=0) if mix is None else mix[:n], stems=stems, frames=frames)
  if image_encoder is not None:
    context = image_encoder.encode(frames)
  if context is not None:
    out["context"] = context
  if caption is not None:
    text = text_encoder.encode_one(caption)
    if not np.all(np.isfinite(text)):
      raise BadClip("NaN/Inf in the caption's text features", caption_path(layout, clip))
    out["text"] = text
  return out


def _rows(x: np.ndarray, start: int, count: int) -> np.ndarray:
  """Rows start..start+count of x, the last row repeated past the end."""
  return x[np.minimum(np.arange(start, start + count), len(x) - 1)]


def windows(clip: Clip, data: dict[str, Any], spec: WindowSpec) -> list[dict[str, Any]]:
  """Fixed-length examples of a loaded clip, each with its stems' loudness; `BadClip` if none is long enough."""
  n, window, sr = data["stems"].shape[1], spec.length, spec.sample_rate
  starts = [s for s in range(0, n, window) if min(window, n - s) >= min(spec.min_length, window)]
  if not starts:
    raise BadClip(f"{n / sr:.2f} s is shorter than the minimum of {spec.min_length / sr:.2f} s", clip.path)
  out = []
  for k, start in enumerate(starts):
    piece = slice(start, start + window)
    pad = window - len(data["mix"][piece])
    stems = np.pad(data["stems"][:, piece], ((0, 0), (0, pad)))
    first = int(round(start / sr * FRAMES_PER_SECOND))
    ex = dict(
        clip_id=f"{clip.clip_id}_w{k:03d}",
        mix=np.pad(data["mix"][piece], (0, pad)).astype(np.float32),
        stems=stems.astype(np.float32),
        loudness=stem_loudness(stems, sr).astype(np.float32),
        frames=_rows(data["frames"], first, spec.frames),
    )
    if "context" in data:
      ex["context"] = _rows(data["context"], first, spec.frames).astype(np.float32)
    if "text" in data:  # one caption per clip: every window carries it
      ex["text"] = data["text"].astype(np.float32)
    out.append(ex)
  return out


# ---------------------------------------------------------------------------------------------
# The TFDS builder.

def features(spec: WindowSpec, context_dim: int | None,
             text_shape: tuple[int, int] | None = None) -> tfds.features.FeaturesDict:
  """Schema 1.1.0. Arrays are stored as raw bytes (TFDS `Encoding.BYTES`): proto float lists are ~100x slower."""
  def tensor(shape, dtype):
    return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES)
  n, f = spec.image_size, spec.frames
  d = {
      "clip_id": tfds.features.Text(),
      "mix": tensor((spec.length,), np.float32),
      "stems": tensor((len(SOURCES), spec.length), np.float32),
      "loudness": tensor((len(SOURCES),), np.float32),
      "frames": tensor((f, n, n, 3), np.uint8),
  }
  if context_dim:
    d["context"] = tensor((f, context_dim), np.float32)
  if text_shape:
    d["text"] = tensor(tuple(text_shape), np.float32)
  return tfds.features.FeaturesDict(d)


@dataclasses.dataclass
class Plan:
  """What a build writes: the clips per split and how to read them."""
  layout: str
  spec: WindowSpec
  splits: dict[str, list[Clip]]
  report: Report
  context_dim: int | None = None
  stems_dir: str | None = None
  strict: bool = False
  progress: Any = None
  text_encoder: Any = None  # a `text_features.TextEncoder`, or None: no `text` field
  image_encoder: Any = None  # an `image_features.ImageEncoder`: `context` computed from the frames

  @property
  def text_shape(self) -> tuple[int, int] | None:
    return (self.text_encoder.text_tokens, self.text_encoder.dim) if self.text_encoder else None


class MuddyMix(tfds.core.GeneratorBasedBuilder):
  """Muddy Mix windows as ArrayRecord: clip_id, mix (L,), stems (3, L) in `SOURCES` order, loudness (3,)
  LUFS, frames (F, N, N, 3) uint8 at 1 fps[, context (F, D) CLIP features][, text (text_tokens, D) T5 features
  of the clip's caption]. Read it with `tfds.data_source("muddy_mix", data_dir=..., split=...)` (no TensorFlow
  needed) or `RecordSource`, which also reads the older versions in `SUPPORTED_VERSIONS`."""

  VERSION = tfds.core.Version("1.1.0")
  SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]
  RELEASE_NOTES = {
      "1.0.0": "First schema: clip_id, mix, stems, loudness, frames, optional context.",
      "1.1.0": "Optional text (text_tokens, D): T5 encoder features of the clip's caption (prepare "
               "--text_encoder); metadata text_dim, text_tokens, text_encoder. Everything else as 1.0.0.",
  }
  # Nothing is downloaded, so there is no checksums file to find next to the code (TFDS would look it up
  # through importlib_resources, which its Python 3.11 install does not bring).
  code_path = None

  def __init__(self, *, plan: Plan | None = None, **kwargs):
    self._plan = plan  # None when opened for reading: the schema then comes from the stored files
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    if self._plan is None:
      return tfds.core.DatasetInfo(builder=self)
    p = self._plan
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=features(p.spec, p.context_dim, p.text_shape),
        metadata=tfds.core.MetadataDict(
            sample_rate=p.spec.sample_rate, clip_seconds=p.spec.clip_seconds,
            min_seconds=p.spec.min_length / p.spec.sample_rate, image_size=p.spec.image_size,
            frames_per_second=FRAMES_PER_SECOND, sources=list(SOURCES), layout=p.layout,
            context_dim=p.context_dim or 0, text_dim=p.text_shape[1] if p.text_shape else 0,
            text_tokens=p.text_shape[0] if p.text_shape else 0,
            text_encoder=os.path.abspath(p.text_encoder.model_dir) if p.text_encoder else "",
            clip_weights=os.path.abspath(p.image_encoder.weights) if p.image_encoder else ""))

  def _log_download_bytes(self) -> None:
    """Our line in place of TFDS's "Downloading and preparing dataset" (nothing is downloaded)."""
    print(f"prepare: writing {NAME} {self.version} records to {self.data_dir}", flush=True)

  def _log_download_done(self) -> None:
    """Silent: `prepare` reports what was written."""

  def _split_generators(self, dl_manager):
    """One generator per split that yields at least one example (TFDS cannot write an empty split)."""
    out = {}
    for split, clips in self._plan.splits.items():
      examples = self._generate_examples(split, clips)
      first = next(examples, None)
      if first is None:
        self._plan.report.warn(None, None, f"split {split!r} has no usable clips and is not written")
      else:
        out[split] = itertools.chain([first], examples)
    if not out:
      raise PrepareError("no usable clips: nothing to write (see the skipped clips in the report)")
    return out

  def _generate_examples(self, split: str, clips: list[Clip]) -> Iterator[tuple[str, dict]]:
    p = self._plan
    for clip in clips:
      p.progress.set_postfix_str(f"{split}: {clip.clip_id}", refresh=False)
      try:
        data = load_clip(p.layout, clip, p.spec, p.context_dim,
                         lambda path, text, c=clip.clip_id: p.report.warn(c, path, text), p.stems_dir,
                         p.text_encoder, p.image_encoder)
        examples = windows(clip, data, p.spec)
      except BadClip as e:
        p.report.skip(clip.clip_id, e.path, e.reason)
        if p.strict:
          raise PrepareError(f"{clip.clip_id}: {e.reason} ({e.path})") from e
        continue
      except Exception as e:  # keep going over thousands of clips; the report names the error
        reason = f"unexpected error: {type(e).__name__}: {e}"
        p.report.skip(clip.clip_id, clip.path, reason)
        if p.strict:
          raise PrepareError(f"{clip.clip_id}: {reason}") from e
        continue
      finally:
        p.progress.update(1)
      p.report.ok.append(clip.clip_id)
      p.report.split_ok[split].append(clip.clip_id)
      p.report.examples[split] += len(examples)
      for ex in examples:
        yield ex["clip_id"], ex


def _context_dim(clips: list[Clip], report: Report) -> int | None:
  """The CLIP feature width when the clips carry `frames_feats/visual_feats.pt` and torch can read it."""
  paths = [os.path.join(c.path, FEATURES_FILE) for c in clips]
  paths = [p for p in paths if os.path.isfile(p)]
  if not paths:
    return None
  try:
    import torch  # noqa: F401
  except ImportError:
    report.warn(None, paths[0], f"PyTorch is not installed: {len(paths)} {FEATURES_FILE} files are ignored")
    return None
  for path in paths:
    try:
      x = _torch_load(path)
    except Exception:  # the clip is reported when it is read
      continue
    if x.ndim == 2:
      return int(x.shape[1])
  report.warn(None, paths[0], f"no readable {FEATURES_FILE}: no context features are stored")
  return None


def _text_encoder(text_encoder, clips: list[Clip], layout: str, text_dim: int | None, text_tokens: int,
                  **options):
  """The `TextEncoder` for `prepare(text_encoder=...)` (a folder or an encoder), or `PrepareError`."""
  from avflow.data import text_features
  captioned = sum(caption_path(layout, c) is not None for c in clips)
  if clips and not captioned:
    where = "<clip>.txt beside each video" if layout == "video_stems" else f"<clip>/{CAPTIONS_DIR}/*.txt"
    raise PrepareError(f"a text encoder was given but none of the {len(clips)} clips has a caption ({where})")
  if isinstance(text_encoder, text_features.TextEncoder):
    if text_dim is not None and text_encoder.dim != text_dim:
      raise PrepareError(f"the text encoder gives {text_encoder.dim}-d features but {text_dim}-d were asked for")
    return text_encoder
  try:
    return text_features.TextEncoder(text_encoder, text_tokens, text_dim, **options)
  except text_features.TextEncoderError as e:
    raise PrepareError(str(e)) from e


def _image_encoder(clip_weights: str, variant: str, batch_size: int):
  """The `ImageEncoder` for `prepare(clip_weights=...)`, or `PrepareError`."""
  from avflow.data import image_features
  from avflow.interop import hf_import
  try:
    return image_features.ImageEncoder(clip_weights, variant, batch_size)
  except (FileNotFoundError, ValueError) as e:  # ValueError: the importer's report, or an unknown variant
    kind = "do not fit" if isinstance(e, hf_import.CheckpointMismatchError) else "cannot be used"
    raise PrepareError(f"CLIP weights {clip_weights} {kind} (CLIP {variant}): {e}") from e


def prepare(input_dir: str, output_dir: str, layout: str = "muddy_mix", *, stems_dir: str | None = None,
            splits_dir: str | None = None, spec: WindowSpec = WindowSpec(), strict: bool = False,
            overwrite: bool = False, text_encoder=None, text_dim: int | None = None, text_tokens: int = 10,
            text_options: dict | None = None, clip_weights: str | None = None, clip_variant: str = "vit_l14",
            clip_batch_size: int = 32) -> dict:
  """Build `<output_dir>/muddy_mix/<version>` from `input_dir` and write the report; returns the report dict.

  `text_encoder`: a T5 encoder folder (or a `text_features.TextEncoder`) to store each clip's caption as `text`
  (`text_tokens`, D) features; `text_dim`, when given, must equal D; `text_options` go to `TextEncoder` (device,
  dtype, batch_size). `clip_weights`: CLIP weights (a `save_pretrained` folder or a state dict file of the
  `clip_variant` architecture) whose L2-normalised image features of the frames are stored as `context`,
  `clip_batch_size` frames at a time.

  The records and the report are built in a temporary folder beside `output_dir` and replace the ones there only
  when complete; until then records already there stay as they were.

  Raises `PrepareError` for unusable folders, text encoders or CLIP weights, for a build with no usable clip, and
  under `strict` at the first bad clip (the report alone is written then, once clips were read); `OutputError` for
  an output folder that is or lies inside an input folder.
  """
  if layout not in LAYOUTS:
    raise PrepareError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
  if not os.path.isdir(input_dir):
    raise PrepareError(f"input folder {input_dir} does not exist")
  if layout == "video_stems" and not (stems_dir and os.path.isdir(stems_dir)):
    raise PrepareError(f"layout video_stems needs an existing stems folder (got {stems_dir!r})")
  if spec.length < 1 or spec.image_size < 1:
    raise PrepareError(f"bad window geometry {spec}")
  version_dir = os.path.join(NAME, str(MuddyMix.VERSION))
  outputs.check_output(output_dir, [input_dir, stems_dir, splits_dir, text_encoder if isinstance(text_encoder, str)
                                    else None], entries=(REPORT_FILE, version_dir))
  report = Report()
  clips = find_clips(layout, input_dir, report)
  splits = assign_splits(clips, splits_dir or input_dir, report)
  existing = os.path.join(output_dir, version_dir)
  if os.path.isdir(existing) and not overwrite:  # checked before a (slow) text encoder is loaded
    raise PrepareError(f"{existing} already holds {NAME} {MuddyMix.VERSION}; pass overwrite "
                       "(--overwrite) or pick another output folder")
  image_encoder = _image_encoder(clip_weights, clip_variant, clip_batch_size) if clip_weights else None
  if image_encoder is not None:
    context_dim = image_encoder.dim
  else:
    context_dim = _context_dim(clips, report) if layout == "muddy_mix" else None
  encoder = None
  if text_encoder is not None:
    encoder = _text_encoder(text_encoder, [c for split in splits.values() for c in split], layout, text_dim,
                            text_tokens, **(text_options or {}))
  total = sum(len(c) for c in splits.values())
  tfds.disable_progress_bar()
  with (tqdm(total=total, unit="clip", desc="prepare", dynamic_ncols=True) as progress,
        outputs.staged_folder(output_dir, (REPORT_FILE, version_dir)) as staging):
    plan = Plan(layout, spec, splits, report, context_dim, stems_dir, strict, progress, encoder, image_encoder)
    builder = MuddyMix(plan=plan, data_dir=staging, file_format=tfds.core.FileFormat.ARRAY_RECORD)
    try:
      with tempfile.TemporaryDirectory() as downloads:
        builder.download_and_prepare(download_dir=downloads, download_config=tfds.download.DownloadConfig(
            compute_stats=tfds.download.ComputeStatsMode.SKIP))
    except BaseException:  # no records: the report alone says why
      os.makedirs(output_dir, exist_ok=True)
      with outputs.staged_file(os.path.join(output_dir, REPORT_FILE)) as partial:
        report.write(partial)
      raise
    if not report.examples["val"]:
      report.held_out = held_out_clips(report.split_ok["train"])
      if report.held_out:
        report.warn(None, None, f"no val split: training holds out {', '.join(report.held_out)} of the train "
                    "split for evaluation")
      elif report.split_ok["train"]:
        report.warn(None, None, "no val split and a single train clip: training evaluates on that clip")
    report.write(os.path.join(staging, REPORT_FILE))
  return report.as_dict()


# ---------------------------------------------------------------------------------------------
# Reading.

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

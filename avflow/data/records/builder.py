"""The TFDS ArrayRecord builder of Muddy Mix windows (`MuddyMix`) and `prepare`, which finds the clips, assigns
their splits, reads them and writes the records and the report."""
import dataclasses
import itertools
import os
import tempfile
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from avflow import outputs
from avflow.data.records.captions import CAPTIONS_DIR, caption_path
from avflow.data.records.discovery import (LAYOUTS, BadClip, Clip, Report, assign_splits, find_clips,
                                           held_out_clips)
from avflow.data.records.readers import FRAMES_PER_SECOND, WindowSpec, load_clip, stored_context_dim, windows
from avflow.metrics.loudness import SOURCES

NAME = "muddy_mix"
DESCRIPTION = "Muddy Mix records: real clips → a TFDS ArrayRecord dataset, read back as a `ClipSource`."
REPORT_FILE = "prepare_report.json"


class PrepareError(RuntimeError):
  """The run stopped: a bad clip under `strict`, or an unusable input/output folder."""


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
        description=DESCRIPTION,
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
    context_dim = stored_context_dim(clips, report) if layout == "muddy_mix" else None
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

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

By concern: `discovery` (layouts, clips, splits, the report), `readers` (one clip → windows), `captions`,
`builder` (the TFDS builder and `prepare`) and `source` (`RecordSource`, `records_source`).
"""
from avflow.data.records.builder import NAME, REPORT_FILE, MuddyMix, PrepareError, prepare
from avflow.data.records.captions import CAPTION_FILE, CAPTIONS_DIR, caption_path, read_caption
from avflow.data.records.discovery import (HASH_FRACTIONS, LAYOUTS, SPLIT_FILES, SPLITS, BadClip, Clip, Report,
                                           assign_splits, held_out_clips)
from avflow.data.records.readers import FEATURES_FILE, FRAMES_PER_SECOND, STEM_FILES, WindowSpec
from avflow.data.records.source import RecordSource, records_source, window_clip

__all__ = [
    "CAPTIONS_DIR", "CAPTION_FILE", "FEATURES_FILE", "FRAMES_PER_SECOND", "HASH_FRACTIONS", "LAYOUTS", "NAME",
    "REPORT_FILE", "SPLITS", "SPLIT_FILES", "STEM_FILES", "BadClip", "Clip", "MuddyMix", "PrepareError", "RecordSource",
    "Report", "WindowSpec", "assign_splits", "caption_path", "held_out_clips", "prepare", "read_caption",
    "records_source", "window_clip",
]

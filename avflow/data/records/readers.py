"""Reading one clip of either layout: its mix, stems, frames and stored CLIP features (`load_clip`), and cutting it
into fixed-length windows with their stems' loudness (`windows`)."""
import dataclasses
import os
import re
from typing import Any

import numpy as np
import soundfile as sf

from avflow.data import video as video_lib
from avflow.data.records.captions import caption_path, read_caption
from avflow.data.records.discovery import BadClip, Clip, Report, Warn
from avflow.metrics.loudness import SOURCES, stem_loudness

STEM_FILES = {"muddy_mix": ("speech.wav", "music.wav", "effects+residual.wav"),
              "video_stems": ("speech.wav", "music.wav", "effects.wav")}
FEATURES_FILE = os.path.join("frames_feats", "visual_feats.pt")
FRAMES_PER_SECOND = 1
LENGTH_TOLERANCE_SECONDS = 0.1


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


def stored_context_dim(clips: list[Clip], report: Report) -> int | None:
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

"""A clip's caption. `muddy_mix`: `frames_captions/InternVL2-8B_prompt1.txt`, else the first `.txt` in
`frames_captions/` by name (with a warning when there are several); `video_stems`: `<clip>.txt` beside the video.
The text is read as UTF-8 with whitespace runs collapsed to one space."""
import os

from avflow.data import video as video_lib
from avflow.data.records.discovery import BadClip, Clip, Warn

CAPTIONS_DIR = "frames_captions"
CAPTION_FILE = "InternVL2-8B_prompt1.txt"  # the public Muddy Mix caption (its first line is the public `text`)


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

"""`python -m avflow highlight INPUT OUTPUT --workdir=RUN [--steps=k] [--frames=DIR]`.

INPUT is a video (its audio track and its frames at 1 fps drive the model) or an audio file together with
`--frames`, a directory of the video's frames at 1 fps. OUTPUT ending in `.wav` gets the rebalanced soundtrack
(32-bit float); OUTPUT ending in `.mp4`, `.m4v`, `.mov` or `.mkv` gets the input video with its picture stream
unchanged and the new audio. OUTPUT is checked before the model runs: it may not be an input, its missing folders
are created, and it is written to a temporary file beside it that replaces it only when complete. A run
conditioned on captions (Table 2 rows V+T, V+T+A, T) also takes `--caption="..." --text_encoder=DIR`: the caption
is encoded by the same local T5 encoder the training records were prepared with.
"""
import os

import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import parse_flags  # noqa: F401
from avflow.data.video import mono_resample, read_audio, read_video, write_video_with_audio
from avflow.errors import UsageError
from avflow.inference import load_frames, load_run, rebalance
from avflow.outputs import check_output, staged_file
from avflow.train.checkpoint import run_files

flags.DEFINE_string("workdir", None, "Trained run directory (its config.json and checkpoints/).", required=True)
flags.DEFINE_string("frames", None, "For an audio INPUT: the directory of the video's frames at 1 fps.")
flags.DEFINE_integer("steps", None, "Stop after k of the N flow steps (how strong the remix); default: all N.")
flags.DEFINE_integer("sample_rate", None, "Refuse to run unless the checkpoint was trained at this sample rate.")
flags.DEFINE_string("caption", None, "For a caption-conditioned run: the clip's caption (one text for the whole clip).")
flags.DEFINE_string("text_encoder", None, "For --caption: the local T5 encoder folder the records were prepared with.")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff")  # inputs read as audio
VIDEO_OUTPUTS = (".mp4", ".m4v", ".mov", ".mkv")  # containers that take the copied picture stream and AAC audio


def _fail(message: str):
  raise SystemExit(f"avflow highlight: {message}")


def _caption_features(run, caption: str | None, encoder_dir: str | None) -> np.ndarray | None:
  """The caption's T5 features (text_tokens, text_dim) for a caption-conditioned run, else None."""
  if not run.uses_text:
    if caption is not None:
      _fail(f"the run in {flags.FLAGS.workdir} is not conditioned on captions; drop --caption")
    return None
  if caption is None or not encoder_dir:
    _fail(f"the run in {flags.FLAGS.workdir} is conditioned on a caption: pass --caption=\"...\" and "
          "--text_encoder=DIR (the local T5 folder its records were prepared with)")
  from avflow.data.text_features import TextEncoder, TextEncoderError
  try:
    return TextEncoder(encoder_dir, *run.text_shape).encode_one(caption)
  except TextEncoderError as e:
    _fail(str(e))


def main(argv):
  if len(argv) != 3:
    raise UsageError("expected INPUT and OUTPUT, e.g. `python -m avflow highlight movie.mp4 out.mp4 --workdir=RUN`")
  source, output = argv[1], argv[2]
  f = flags.FLAGS
  if not os.path.exists(source):
    _fail(f"{source} does not exist")
  if f.frames and not os.path.isdir(f.frames):
    _fail(f"--frames={f.frames} is not a folder of frames")
  check_output(output, [source, f.frames, f.text_encoder, *run_files(f.workdir)], suffixes=(".wav", *VIDEO_OUTPUTS))
  is_audio = source.lower().endswith(AUDIO_SUFFIXES)
  if is_audio and not output.lower().endswith(".wav"):
    _fail("an audio INPUT can only be written to a .wav OUTPUT")
  try:
    run = load_run(f.workdir)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if f.sample_rate and f.sample_rate != run.sample_rate:
    _fail(f"the checkpoint in {f.workdir} was trained at {run.sample_rate} Hz, not the requested {f.sample_rate} Hz")
  text = _caption_features(run, f.caption, f.text_encoder)
  image_size = run.config.data.image_size
  if is_audio:
    if not f.frames and run.uses_frames:
      _fail(f"{source} is an audio file: pass --frames=DIR with the video's frames at 1 fps")
    audio, sr = read_audio(source)
    audio = mono_resample(audio, sr, run.sample_rate)
    frames = load_frames(f.frames, image_size) if f.frames else None
  else:
    video = read_video(source, run.sample_rate, image_size, run.config.data.frames_per_second)
    audio, frames = video.audio, video.frames
    if f.frames:
      frames = load_frames(f.frames, image_size)
  try:
    out = np.clip(rebalance(run, audio, frames, f.steps, text), -1.0, 1.0)
  except ValueError as e:
    _fail(str(e))
  with staged_file(output) as partial:
    if output.lower().endswith(".wav"):
      sf.write(partial, out, run.sample_rate, subtype="FLOAT")  # the model's samples, unquantized
    else:
      write_video_with_audio(source, out, run.sample_rate, partial)
  print(f"wrote {output} ({len(out) / run.sample_rate:.2f} s of audio at {run.sample_rate} Hz)")

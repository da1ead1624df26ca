"""`python -m avflow highlight INPUT OUTPUT --workdir=RUN [--steps=k] [--frames=DIR]`.

INPUT is a video (its audio track and its frames at 1 fps drive the model) or an audio file together with
`--frames`, a directory of the video's frames at 1 fps. OUTPUT ending in `.wav` gets the rebalanced soundtrack;
any other OUTPUT gets the input video with its picture stream unchanged and the new audio.
"""
import os

import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import parse_flags  # noqa: F401
from avflow.data.video import VideoError, mono_resample, read_video, write_video_with_audio
from avflow.inference import load_frames, load_run, rebalance

flags.DEFINE_string("workdir", None, "Trained run directory (its config.json and checkpoints/).", required=True)
flags.DEFINE_string("frames", None, "For an audio INPUT: the directory of the video's frames at 1 fps.")
flags.DEFINE_integer("steps", None, "Stop after k of the N flow steps (how strong the remix); default: all N.")
flags.DEFINE_integer("sample_rate", None, "Refuse to run unless the checkpoint was trained at this sample rate.")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff")


def _fail(message: str):
  raise SystemExit(f"avflow highlight: {message}")


def main(argv):
  if len(argv) != 3:
    _fail("expected INPUT and OUTPUT, e.g. `python -m avflow highlight movie.mp4 out.mp4 --workdir=RUN`")
  source, output = argv[1], argv[2]
  f = flags.FLAGS
  if not os.path.exists(source):
    _fail(f"{source} does not exist")
  try:
    run = load_run(f.workdir)
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if f.sample_rate and f.sample_rate != run.sample_rate:
    _fail(f"the checkpoint in {f.workdir} was trained at {run.sample_rate} Hz, not the requested {f.sample_rate} Hz")
  image_size = run.config.data.image_size
  is_audio = source.lower().endswith(AUDIO_SUFFIXES)
  if is_audio:
    if not f.frames:
      _fail(f"{source} is an audio file: pass --frames=DIR with the video's frames at 1 fps")
    try:
      audio, sr = sf.read(source, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
      _fail(f"cannot read audio {source}: {e}")
    audio = mono_resample(audio.T, sr, run.sample_rate)
    frames = load_frames(f.frames, image_size)
  else:
    try:
      video = read_video(source, run.sample_rate, image_size, run.config.data.frames_per_second)
    except VideoError as e:
      _fail(str(e))
    audio, frames = video.audio, video.frames
    if f.frames:
      frames = load_frames(f.frames, image_size)
  try:
    out = np.clip(rebalance(run, audio, frames, f.steps), -1.0, 1.0)
  except ValueError as e:
    _fail(str(e))
  if output.lower().endswith(".wav"):
    sf.write(output, out, run.sample_rate)
  elif is_audio:
    _fail("an audio INPUT can only be written to a .wav OUTPUT")
  else:
    write_video_with_audio(source, out, run.sample_rate, output)
  print(f"wrote {output} ({len(out) / run.sample_rate:.2f} s of audio at {run.sample_rate} Hz)")

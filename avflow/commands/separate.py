"""`python -m avflow separate INPUT OUTPUT.wav --workdir=RUN [--frames=DIR|VIDEO] [--force]`.

Separates the sound of the source one video shows from a mixture, with a trained separation run (DAVIS-Flow,
DAVIS). INPUT is the mixture: a video (its soundtrack, conditioned on its own frames unless `--frames` gives
others) or an audio file (.wav, .flac, .ogg, .mp3, .aiff) with `--frames`, either a folder of the source video's
frames as images (.png/.jpg in name order, spread evenly over the mixture unless `--frame_rate` gives their rate)
or a video whose frames are taken. The mixture is heard in mono at the run's sample rate; frames get the geometry
`prepare` gives them (shortest side resized to `data.image_size`, centre crop). Any length: the mixture is cut into
windows of the model's clip length with 25% overlap, each separated with `data.num_frames` frames spread uniformly
over its span from its start (as a training clip's), and the windows are joined with linear cross-fades; a mixture
shorter than one window is padded with silence and the result trimmed (a line says so). The windows go through the
model in batches that fit `--memory_budget`, each from the same x0 (drawn from the run's `inference.seed`), so the
batching does not change the result. OUTPUT gets the separated
source as long as the mixture: mono at the run's sample rate, as 32-bit float samples, unclipped (a line gives
the peak when it exceeds 1). OUTPUT is checked before the model runs: it may not be an input, an existing file is
replaced only with `--force`, its missing folders are created, and it is written to a temporary file beside it
that replaces it only when complete.
"""
import os
import time

import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import input_and_output, load_command_run, parse_flags  # noqa: F401
from avflow.data.video import (AUDIO_EXTENSIONS, NoAudioTrackError, mono_resample, read_audio, read_frames,
                               read_video)
from avflow.errors import AvflowError
from avflow.inference import model_frame_rate, separate, speed_line
from avflow.outputs import check_output, staged_file
from avflow.train.checkpoint import run_files

flags.DEFINE_string("workdir", None, "Trained separation run directory (its config.json and checkpoints/).",
                    required=True)
flags.DEFINE_string("frames", None, "The frames of the video whose source is wanted: a folder of images (.png/.jpg, "
                    "in name order) or a video; required for an audio INPUT, replaces a video INPUT's own frames.")
flags.DEFINE_float("frame_rate", None, "For --frames=DIR: the frames per second of its images (default: they span "
                   "the mixture evenly).")
flags.DEFINE_float("memory_budget", 2.0, "GiB of activations one model call may use: the windows of a long input "
                   "go through the model in batches that fit (0: one window at a time).")
flags.DEFINE_bool("force", False, "Replace OUTPUT if it exists.")


def _frames(path: str, run, mixture_seconds: float, folder_rate: float | None):
  """The frames of `--frames` (F, S, S, 3) uint8 and their rate in frames per second: a video's at the model's
  frame rate, a folder's at `folder_rate` or spread evenly over the mixture."""
  size = run.config.data.image_size
  if not os.path.isdir(path):
    rate = model_frame_rate(run)
    return read_video(path, run.sample_rate, size, rate, require_audio=False).frames, rate
  try:
    frames = read_frames(path, size)
  except FileNotFoundError as e:
    raise AvflowError(str(e)) from e
  return frames, folder_rate or len(frames) / mixture_seconds


def main(argv):
  source, output = input_and_output(argv, "expected INPUT and OUTPUT, e.g. `python -m avflow separate mixture.wav "
                                    "out.wav --frames=DIR --workdir=RUN`")
  f = flags.FLAGS
  if f.frames and not os.path.exists(f.frames):
    raise AvflowError(f"--frames={f.frames} does not exist")
  if f.frame_rate is not None and not (f.frame_rate > 0 and f.frames and os.path.isdir(f.frames)):
    raise AvflowError(f"--frame_rate={f.frame_rate}: expected a positive rate, with --frames=DIR")
  if f.memory_budget < 0:
    raise AvflowError(f"--memory_budget={f.memory_budget} GiB; expected 0 (one window at a time) or more")
  check_output(output, [source, f.frames, *run_files(f.workdir)], suffixes=(".wav",), replace=f.force)
  is_audio = source.lower().endswith(AUDIO_EXTENSIONS)
  if is_audio and not f.frames:
    raise AvflowError(f"{source} is an audio file: pass --frames=DIR or --frames=VIDEO with the frames of the video "
                      "whose sound is wanted")
  run = load_command_run(f.workdir, "separate")
  rate = run.sample_rate
  if is_audio:
    native, native_rate = read_audio(source)
    if not native.shape[-1]:
      raise AvflowError(f"{source} holds no audio")
    mixture = mono_resample(native, native_rate, rate)
  else:
    frame_rate = model_frame_rate(run)
    try:
      video = read_video(source, rate, run.config.data.image_size, frame_rate)
    except NoAudioTrackError as e:
      raise AvflowError(f"{e}, so it holds no mixture: give the mixture as INPUT and this video as --frames") from e
    mixture, frames = video.audio, video.frames
  seconds, window = len(mixture) / rate, run.clip_length
  if f.frames:
    frames, frame_rate = _frames(f.frames, run, seconds, f.frame_rate)
  if len(mixture) < window:
    print(f"the mixture ({seconds:.2f} s) is shorter than the model's window ({window / rate:.2f} s): it is padded "
          "with silence and the result trimmed")
  start = time.perf_counter()
  try:
    estimate = separate(run, mixture, frames, frame_rate, f.memory_budget * 2**30)
  except ValueError as e:
    raise AvflowError(str(e)) from e
  took = time.perf_counter() - start
  with staged_file(output) as partial:
    sf.write(partial, estimate, rate, subtype="FLOAT")  # unquantized, unclipped
  print(f"wrote {output} ({seconds:.2f} s, mono at {rate} Hz, 32-bit float): the source the frames show, "
        f"{len(frames)} frames at {frame_rate:.2f} fps")
  peak = float(np.max(np.abs(estimate)))
  if peak > 1:
    print(f"its peak is {peak:.3g}, above 1: players clip it (the file keeps every sample)")
  print(speed_line(took, seconds))

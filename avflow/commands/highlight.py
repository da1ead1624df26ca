"""`python -m avflow highlight --workdir=RUN --audio=IN.wav --frames=DIR --output=OUT.wav [--steps=k]`."""
import os

import librosa
import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import parse_flags  # noqa: F401
from avflow.inference import load_frames, load_run, rebalance

flags.DEFINE_string("workdir", None, "Trained run directory.", required=True)
flags.DEFINE_string("audio", None, "Input soundtrack (.wav or any format soundfile reads).", required=True)
flags.DEFINE_string("frames", None, "Directory of the video's frames at 1 fps (.png/.jpg, sorted by name).",
                    required=True)
flags.DEFINE_string("output", None, "Output .wav path.", required=True)
flags.DEFINE_integer("steps", None, "Stop after k of the N flow steps (how strong the remix); default: all N.")


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"avflow highlight: unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  for path in (f.audio, f.frames):
    if not os.path.exists(path):
      raise SystemExit(f"avflow highlight: {path} does not exist")
  run = load_run(f.workdir)
  try:
    audio, sr = sf.read(f.audio, dtype="float32", always_2d=True)
  except RuntimeError as e:
    raise SystemExit(f"avflow highlight: cannot read audio {f.audio}: {e}")
  audio = audio.mean(axis=1)
  if sr != run.sample_rate:
    audio = librosa.resample(audio, orig_sr=sr, target_sr=run.sample_rate)
  frames = load_frames(f.frames, run.config.data.image_size)
  out = rebalance(run, audio, frames, f.steps)
  sf.write(f.output, np.clip(out, -1, 1), run.sample_rate)
  print(f"wrote {f.output} ({len(out) / run.sample_rate:.2f} s at {run.sample_rate} Hz)")

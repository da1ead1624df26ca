"""`python -m avflow foley VIDEO OUTPUT --workdir=RUN --captions="a drum is hit;a bell rings" [--guidance=nag]
[--alpha=α] [--beta=β] [--steps=k] [--seed=s]`.

Step-by-step foley (NAG) with a trained run of `configs/nag.py`: one audio track per caption, generated one after
another (`tasks.nag.generate_tracks`): track 1 with plain CFG (α), track k with negative audio guidance away from
the sum of tracks 1..k−1 (Eq. 9; `--guidance=negative_prompt`: away from their captions; `cfg`: each track on its
own). The video's frames are read at the run's frame rate and go through the model in one pass, as `generate` does;
any audio track the video has is ignored. The composite, the tracks' sum, is normalised to −20 LUFS (pyloudnorm).

OUTPUT ending in `.wav` gets the composite; ending in `.mp4`, `.m4v`, `.mov` or `.mkv` the video's picture stream
with the composite as AAC. Beside it, the folder `<OUTPUT without its suffix>_tracks/` gets `track_<k>.wav` (k =
1..K, in caption order) and `mix.wav` (the composite), mono float wavs at the run's rate, as long as the video.
"""
import os
import time

import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import input_and_output, load_command_run, parse_flags  # noqa: F401
from avflow.data.video import VIDEO_OUTPUTS, read_video, write_video_with_audio
from avflow.errors import AvflowError
from avflow.inference import speed_line
from avflow.outputs import check_output, staged_file
from avflow.tasks.nag import GUIDANCES, composite, generate_tracks
from avflow.train.checkpoint import run_files

flags.DEFINE_string("workdir", None, "Trained NAG run directory (configs/nag.py; its config.json and checkpoints/).",
                    required=True)
flags.DEFINE_string("captions", None, "One caption per track, separated by ';', in generation order.", required=True)
flags.DEFINE_enum("guidance", None, list(GUIDANCES), "How tracks 2..K avoid the earlier ones; default: the run's "
                  "inference.guidance.")
flags.DEFINE_float("alpha", None, "Guidance scale α (Eq. 3, 9); default: the run's inference.alpha.")
flags.DEFINE_float("beta", None, "Negative audio guidance scale β (Eq. 9); default: the run's inference.beta.")
flags.DEFINE_integer("steps", None, "Steps of the run's grid solver; default: the run's inference.num_steps.")
flags.DEFINE_integer("seed", None, "Seed of every track's source sample x0; default: the run's inference.seed.")


def parse_captions(text: str) -> list[str]:
  """The captions of `--captions`, split at ';' and stripped; an AvflowError for none or an empty one."""
  captions = [c.strip() for c in text.split(";")]
  if not any(captions):
    raise AvflowError("--captions holds no caption; expected one per track separated by ';', e.g. "
                      "--captions='a drum is hit;a bell rings'")
  if not all(captions):
    raise AvflowError(f"--captions={text!r} has an empty caption (number {captions.index('') + 1})")
  return captions


def tracks_folder(output: str) -> str:
  """`<OUTPUT without its suffix>_tracks`, beside OUTPUT."""
  return os.path.splitext(output)[0] + "_tracks"


def main(argv):
  source, output = input_and_output(argv, "expected VIDEO and OUTPUT, e.g. `python -m avflow foley silent.mp4 "
                                    "out.mp4 --workdir=RUN --captions='a drum is hit;a bell rings'`", "foley")
  f = flags.FLAGS
  captions = parse_captions(f.captions)
  if f.steps is not None and f.steps < 1:
    raise AvflowError(f"--steps={f.steps}; expected 1 or more")
  overrides = {name: f[name].value for name in ("guidance", "alpha", "beta", "seed") if f[name].value is not None}
  if f.steps is not None:
    overrides["num_steps"] = f.steps
  folder = tracks_folder(output)
  check_output(output, [source, *run_files(f.workdir)], suffixes=(".wav", *VIDEO_OUTPUTS))
  run = load_command_run(f.workdir, "nag", inference=overrides)
  check_output(os.path.join(folder, "mix.wav"), [source, *run_files(f.workdir)], suffixes=(".wav",))
  config, rate = run.config, run.sample_rate
  video = read_video(source, rate, config.data.image_size, config.data.frames_per_second, require_audio=False)
  length = int(round(video.duration * rate))
  start = time.perf_counter()
  try:
    tracks = generate_tracks(run.predict, run.params, config, video.frames[None], [captions]).audio[0, :, :length]
  except ValueError as e:
    raise AvflowError(str(e)) from e
  took = time.perf_counter() - start
  mix = composite(tracks, rate)
  for name, wave in [*((f"track_{k + 1}", t) for k, t in enumerate(tracks)), ("mix", mix)]:
    with staged_file(os.path.join(folder, f"{name}.wav")) as partial:
      sf.write(partial, np.asarray(wave, np.float32), rate, subtype="FLOAT")
  with staged_file(output) as partial:
    if output.lower().endswith(".wav"):
      sf.write(partial, mix, rate, subtype="FLOAT")
    else:
      write_video_with_audio(source, mix, rate, partial)
  inference = config.inference
  steering = {"nag": f"NAG α = {inference.alpha:g}, β = {inference.beta:g}",
              "negative_prompt": f"negative prompting α = {inference.alpha:g}",
              "cfg": f"CFG α = {inference.alpha:g}, independent tracks"}[inference.guidance]
  print(f"wrote {output} and {len(tracks)} track{'s' * (len(tracks) > 1)} + mix.wav in {folder} "
        f"({length / rate:.2f} s, mono at {rate} Hz, the mix at -20 LUFS); track 1 CFG α = {inference.alpha:g}, "
        f"then {steering}; {inference.method} on {inference.num_steps} steps")
  print(speed_line(took, length / rate * len(tracks)))

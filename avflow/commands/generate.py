"""`python -m avflow generate VIDEO OUTPUT --workdir=RUN [--cfg=γ] [--steps=k] [--solver=euler|midpoint|dopri5]`.

Generates the soundtrack of a video with a trained video-to-audio run (VAFlow, `configs/vaflow.py`). The video's
frames are read at the run's frame rate (`data.frames_per_second`) with the geometry `prepare` gives frames
(shortest side resized to `data.image_size`, centre crop); any audio track it has is ignored. The whole video goes
through the model in one pass: x0 drawn from the alignment VAE's posterior (or 𝒩(0, I) for a Gaussian-source
run) with the run's `inference.seed` (`--seed`), integrated with classifier-free guidance of scale γ (Eq. 10) by
the run's solver, decoded by the run's codec. `--cfg`, `--steps` and `--solver` replace the run's `inference`
settings; a line gives NFE, the evaluations of the guided velocity field.

OUTPUT ending in `.wav` gets the audio (mono at the run's rate, 32-bit float); OUTPUT ending in `.mp4`, `.m4v`,
`.mov` or `.mkv` gets the video's picture stream unchanged with the audio as AAC. Either way the audio lasts as
long as the picture stream. OUTPUT is checked before the model runs: it may not be an input, its missing folders
are created, and it is written to a temporary file beside it that replaces it only when complete.
"""
import time

import soundfile as sf
from absl import flags

from avflow.commands import input_and_output, load_command_run, parse_flags  # noqa: F401
from avflow.data.video import VIDEO_OUTPUTS, read_video, write_video_with_audio
from avflow.errors import AvflowError
from avflow.inference import generate, speed_line
from avflow.outputs import check_output, staged_file
from avflow.tasks.v2a import SOLVERS, guidance_branches
from avflow.train.checkpoint import run_files

flags.DEFINE_string("workdir", None, "Trained video-to-audio run directory (its config.json and checkpoints/).",
                    required=True)
flags.DEFINE_float("cfg", None, "Classifier-free guidance scale γ (Eq. 10; 0: the conditional field alone); "
                   "default: the run's inference.cfg.")
flags.DEFINE_integer("steps", None, "Steps of a grid solver (euler, midpoint, heun); default: the run's "
                     "inference.num_steps.")
flags.DEFINE_enum("solver", None, list(SOLVERS), "ODE solver; default: the run's inference.method.")
flags.DEFINE_integer("seed", None, "Seed of the source sample x0; default: the run's inference.seed.")


def _overrides(f) -> dict:
  """The `inference` fields the flags replace, checked."""
  overrides = {name: f[flag].value for flag, name in (("cfg", "cfg"), ("steps", "num_steps"), ("solver", "method"),
                                                      ("seed", "seed")) if f[flag].value is not None}
  if f.steps is not None and f.steps < 1:
    raise AvflowError(f"--steps={f.steps}; expected 1 or more")
  if f.cfg is not None and f.cfg < 0:
    raise AvflowError(f"--cfg={f.cfg}; expected γ ≥ 0")
  return overrides


def main(argv):
  source, output = input_and_output(
      argv, "expected VIDEO and OUTPUT, e.g. `python -m avflow generate silent.mp4 out.mp4 --workdir=RUN`", "generate")
  f = flags.FLAGS
  overrides = _overrides(f)
  check_output(output, [source, *run_files(f.workdir)], suffixes=(".wav", *VIDEO_OUTPUTS))
  run = load_command_run(f.workdir, "v2a", inference=overrides)
  inference = run.config.inference
  if f.steps is not None and inference.method == "dopri5":
    raise AvflowError("--steps sets a grid solver's steps; dopri5 chooses its own (pass --solver=euler or midpoint)")
  rate, fps = run.sample_rate, run.config.data.frames_per_second
  video = read_video(source, rate, run.config.data.image_size, fps, require_audio=False)
  start = time.perf_counter()
  try:
    audio, nfe = generate(run, video.frames, video.duration)
  except ValueError as e:
    raise AvflowError(str(e)) from e
  took = time.perf_counter() - start
  with staged_file(output) as partial:
    if output.lower().endswith(".wav"):
      sf.write(partial, audio, rate, subtype="FLOAT")
    else:
      write_video_with_audio(source, audio, rate, partial)
  seconds = len(audio) / rate
  print(f"wrote {output} ({seconds:.2f} s of audio, mono at {rate} Hz) from {len(video.frames)} frames at "
        f"{fps:g} fps")
  branches = guidance_branches(run.config)
  sampler = (f"dopri5 (rtol {inference.rtol:g}, atol {inference.atol:g})" if inference.method == "dopri5"
             else f"{inference.method} on {inference.num_steps} step{'s' * (inference.num_steps > 1)}")
  guided = f"CFG γ = {inference.cfg:g}: {branches} DiT passes each" if branches == 2 else "no guidance"
  print(f"NFE {nfe}: {sampler}, {guided}")
  print(speed_line(took, seconds))

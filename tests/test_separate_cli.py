"""`python -m avflow separate` with one initialized tiny DAVIS-Flow run: a wav with a frames folder, a video, the
frames of another video, windowing of long and short mixtures, and its error messages."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avflow import tasks
from avflow.data import video
from avflow.inference import load_run, model_frame_rate, separate, window_frames
from avflow.train import checkpoint
from avflow.train.step import jit
from conftest import cli_error
from test_video import make_video, picture, tone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 8000  # the toy's rate
WINDOW = 2047  # the toy's data.clip_samples
FRAMES = 4  # the toy's data.num_frames
SIZE = 32  # the toy's data.image_size
BUDGET = 2 * 2**30  # the command's default --memory_budget, in bytes


def _separate(*args):
  return subprocess.run([sys.executable, "-m", "avflow", "separate", *map(str, args)], cwd=ROOT, capture_output=True,
                        text=True, timeout=900)


def _errors(cases):
  """The (command, args, message) cases run side by side: each ends with a one-line error (exit status 1)
  that contains its message."""
  procs = [(subprocess.Popen([sys.executable, "-m", "avflow", command, *map(str, args)], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE), command, message)
           for command, args, message in cases]
  for proc, command, message in procs:
    done = subprocess.CompletedProcess(proc.args, None, *proc.communicate(timeout=600))
    done.returncode = proc.returncode
    assert message in cli_error(done, command), proc.args


def _mixture(seconds: float) -> np.ndarray:
  t = np.arange(int(seconds * SR)) / SR
  return (0.2 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1500 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def sep_run(tmp_path_factory):
  """An initialized toy DAVIS-Flow run (`total_steps=0`): its velocity field is random, and reads the frames."""
  import davis_flow
  from avflow.train.loop import train
  config = davis_flow.get_config("toy")
  config.total_steps = 0
  workdir = str(tmp_path_factory.mktemp("davis_flow_run"))
  train(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def run(sep_run):
  return load_run(sep_run, "separate")


def test_window_frames_spread_the_model_frames_over_each_window_from_its_start(run):
  assert (run.clip_length, run.config.data.num_frames) == (WINDOW, FRAMES)
  rate = model_frame_rate(run)  # 4 frames per window: 15.63 fps
  # Windows at 0, 1535 and 3070 samples: frame k of a window lies at (start / 2047) · 4 + k frames of this rate,
  # 0 + k, 2.9995 + k and 5.999 + k; 8 frames in all, so the last window's later ones take frame 7.
  np.testing.assert_array_equal(window_frames(run, [0, 1535, 3070], rate, 8),
                                [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 7, 7]])
  # 1 fps frames for the same windows (0.256 s each): frames at 0, 0.064, 0.128, 0.192 s (+ 0.19 s, + 0.38 s).
  np.testing.assert_array_equal(window_frames(run, [0, 1535, 3070], 1.0, 8), [[0] * 4, [0] * 4, [0, 0, 1, 1]])


def test_one_window_wav_and_frames_folder_equal_the_tasks_predict_fn(sep_run, tmp_path):
  """A mixture of exactly one window with 12 frames named 0.png … 11.png (spread over it: the model's 4 are
  frames 0, 3, 6 and 9, in the names' numeric order) gives what the task's predict_fn gives that window."""
  mixture = _mixture(WINDOW / SR)
  assert len(mixture) == WINDOW
  sf.write(tmp_path / "mix.wav", mixture, SR, subtype="FLOAT")
  images = np.stack([picture(i, SIZE, SIZE) for i in range(12)])  # the model's size: frames keep every pixel
  (tmp_path / "frames").mkdir()
  for i, image in enumerate(images):
    Image.fromarray(image).save(tmp_path / "frames" / f"{i}.png")
  res = _separate(tmp_path / "mix.wav", f"--frames={tmp_path / 'frames'}", f"--workdir={sep_run}", tmp_path / "out.wav")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "mono at 8000 Hz" in res.stdout and "12 frames" in res.stdout
  out, rate = sf.read(tmp_path / "out.wav", dtype="float32")
  assert rate == SR and out.shape == (WINDOW,) and np.isfinite(out).all()
  config = checkpoint.load_config(sep_run)
  task = tasks.get(config)
  predict = jit(task.predict_fn(task.build(config.model), config))
  batch = {"mixture": mixture[None], "frames": images[[0, 3, 6, 9]][None]}
  expected = np.asarray(predict(checkpoint.load_params(sep_run), batch)[0])[0]
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_long_mixture_joins_the_separations_of_its_windows(run):
  """3.4 windows → windows at 0, 1535, 3070, 4605 and 4912 (the last ends at the end). Where one window alone
  covers the mixture the result is that window's separation; elsewhere it lies between those of its windows."""
  mixture = _mixture(3.4 * WINDOW / SR)
  frames = np.stack([picture(i, SIZE, SIZE) for i in range(16)])
  rate = model_frame_rate(run)
  out = separate(run, mixture, frames, rate)
  assert out.shape == mixture.shape and np.isfinite(out).all()
  # Window frames at start · 4 / 2047 + k, to the nearest: 0, 3, 6, 9 and 10 (9.6) for the last.
  alone = {}
  for start, first in [(0, 0), (1535, 3), (3070, 6), (4605, 9), (4912, 10)]:
    batch = {"mixture": mixture[None, start:start + WINDOW], "frames": frames[None, first:first + FRAMES]}
    alone[start] = np.asarray(run.predict(run.params, batch, None)[0])[0]
  scale = np.abs(out).max()
  np.testing.assert_allclose(out[:1535], alone[0][:1535], rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(out[4605 + WINDOW:], alone[4912][4605 + WINDOW - 4912:], rtol=1e-5, atol=1e-6 * scale)
  covering = np.full((len(alone), len(out)), np.nan)
  for row, (start, result) in enumerate(alone.items()):
    covering[row, start:start + WINDOW] = result
  assert np.all(out >= np.nanmin(covering, 0) - 1e-6 * scale) and np.all(out <= np.nanmax(covering, 0) + 1e-6 * scale)
  assert np.abs(out[1535:2047] - alone[0][1535:]).max() > 1e-3 * scale  # the cross-fade does mix the windows
  # Every window starts from the same x0, so windows batched within a memory budget give the same result (up to
  # float rounding, which may differ with the batch's size).
  np.testing.assert_allclose(separate(run, mixture, frames, rate, BUDGET), out, rtol=1e-4, atol=1e-6 * scale)


def test_video_input_and_the_frames_of_another_video(sep_run, run, tmp_path):
  """A video's soundtrack separated with its own frames (5 windows, one batch) is the in-process result; a short
  stereo 16-kHz wav with `--frames=VIDEO` is heard in mono at 8 kHz, padded to one window and trimmed, and only
  replaces an existing output with --force."""
  movie = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=16, audio=_mixture(1.0), sample_rate=SR)
  decoded = video.read_video(movie, SR, SIZE, model_frame_rate(run))
  res = _separate(movie, tmp_path / "from_video.wav", f"--workdir={sep_run}")
  assert res.returncode == 0, res.stderr[-3000:]
  out, rate = sf.read(tmp_path / "from_video.wav", dtype="float32")
  assert rate == SR and out.shape == decoded.audio.shape and np.isfinite(out).all()
  expected = separate(run, decoded.audio, decoded.frames, model_frame_rate(run), BUDGET)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

  stereo = np.stack([tone(0.1, 440, 16000), tone(0.1, 1500, 16000)])
  sf.write(tmp_path / "short.wav", stereo.T, 16000, subtype="FLOAT")
  short = video.mono_resample(stereo, 16000, SR)
  assert short.shape == (800,)
  target = tmp_path / "short_out.wav"
  target.write_bytes(b"an earlier result")
  args = (tmp_path / "short.wav", target, f"--workdir={sep_run}", f"--frames={movie}")
  assert f"the output {target} exists; pass --force to replace it" in cli_error(_separate(*args), "separate")
  assert target.read_bytes() == b"an earlier result"
  res = _separate(*args, "--force")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "the mixture (0.10 s) is shorter than the model's window (0.26 s)" in res.stdout
  out, rate = sf.read(target, dtype="float32")
  assert rate == SR and out.shape == short.shape
  expected = separate(run, short, decoded.frames, model_frame_rate(run))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
  assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "from_video.wav", "short.wav", "short_out.wav"]


def test_input_errors_are_one_clear_line(sep_run, tmp_path):
  silent = make_video(tmp_path / "silent.mp4", seconds=1.0, fps=4)
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(b"not a video at all" * 20)
  sf.write(tmp_path / "mix.wav", _mixture(0.5), SR)
  sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), SR)
  (tmp_path / "no_frames").mkdir()
  (tmp_path / "frames").mkdir()
  Image.fromarray(picture(0)).save(tmp_path / "frames" / "0.png")
  out, run = tmp_path / "o.wav", f"--workdir={sep_run}"
  _errors([
      ("separate", (tmp_path / "missing.mp4", out, run), "missing.mp4 does not exist"),
      ("separate", (garbage, out, run), "garbage.mp4 is not a video or audio file that can be decoded (invalid data)"),
      ("separate", (silent, out, run), "silent.mp4: the video has no audio track, so it holds no mixture: give the "
       "mixture as INPUT and this video as --frames"),
      ("separate", (tmp_path / "mix.wav", out, run, f"--frames={tmp_path / 'no_frames'}"),
       "no_frames holds no .png/.jpg frames"),
      ("separate", (tmp_path / "mix.wav", out, run), "mix.wav is an audio file: pass --frames=DIR or --frames=VIDEO"),
      ("separate", (tmp_path / "empty.wav", out, run, f"--frames={tmp_path / 'frames'}"), "empty.wav holds no audio"),
  ])
  assert not out.exists()


def test_run_and_output_errors_are_one_clear_line(sep_run, tmp_path):
  """A highlighting run is refused by `separate` and a separation run by `highlight`, each naming the run's task."""
  import visah_fm
  visah_run = tmp_path / "visah_fm_run"
  checkpoint.save_config(str(visah_run), visah_fm.get_config("toy"))
  movie = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=4, audio=_mixture(1.0), sample_rate=SR)
  run = f"--workdir={sep_run}"
  _errors([
      ("separate", (movie, tmp_path / "o.wav", f"--workdir={visah_run}"), "visah_fm_run is a highlighting run "
       "(VisAH-FM, VisAH) with config.task='flow', not a separation run (DAVIS-Flow, DAVIS): use `python -m avflow "
       "highlight`"),
      ("separate", (movie, tmp_path / "o.mp3", run), "the output must end in .wav"),
      ("separate", (movie, tmp_path / "o.wav", run, f"--frames={movie}", "--frame_rate=8"),
       "--frame_rate=8.0: expected a positive rate, with --frames=DIR"),
      ("highlight", (movie, tmp_path / "o.wav", run), "is a separation run (DAVIS-Flow, DAVIS) with "
       "config.task='separate', not a highlighting run (VisAH-FM, VisAH): use `python -m avflow separate`"),
  ])
  assert sorted(os.listdir(tmp_path)) == ["clip.mp4", "visah_fm_run"]

"""`python -m avflow highlight` on a generated 25-s video, on a wav with frames, and its error messages."""
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avflow.data import video
from conftest import cli_error
from test_video import decoded_pictures, make_video, picture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 8000


def _highlight(*args):
  return subprocess.run([sys.executable, "-m", "avflow", "highlight", *map(str, args)], cwd=ROOT,
                        capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
  t = np.arange(25 * SR) / SR
  audio = (0.2 * np.sin(2 * np.pi * 330 * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2).astype(np.float32)
  return make_video(tmp_path_factory.mktemp("movie") / "movie.mp4", seconds=25.0, fps=4, audio=audio,
                    sample_rate=SR)


def test_highlight_video_keeps_picture_and_duration_and_changes_audio(run_dir, movie, tmp_path):
  out = tmp_path / "out.mp4"
  res = _highlight(movie, out, f"--workdir={run_dir}", "--steps=2")
  assert res.returncode == 0, res.stderr[-3000:]
  before = video.read_video(movie, SR, 32)
  after = video.read_video(str(out), SR, 32)
  assert abs(after.duration - before.duration) < 0.3
  assert abs(len(after.audio) - len(before.audio)) < 0.05 * SR
  n = min(len(after.audio), len(before.audio))
  assert np.sqrt(np.mean((after.audio[:n] - before.audio[:n]) ** 2)) > 1e-3
  pictures_in, pictures_out = decoded_pictures(movie), decoded_pictures(out)
  assert len(pictures_in) == len(pictures_out)
  for (_, a, _), (_, b, _) in zip(pictures_in, pictures_out):
    np.testing.assert_array_equal(a, b)


def test_highlight_wav_with_frames_and_fewer_steps_remix_less(run_dir, tmp_path):
  t = np.arange(3 * SR) / SR
  sf.write(tmp_path / "in.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
  frames = tmp_path / "frames"
  frames.mkdir()
  for i in range(3):
    Image.fromarray(picture(i)).save(frames / f"{i:03d}.png")
  outputs = {}
  for k in (0, 1, 2):  # the first call creates the missing folders of OUTPUT
    out = tmp_path / "new" / "folder" / f"out{k}.wav"
    res = _highlight(tmp_path / "in.wav", out, f"--workdir={run_dir}", f"--frames={frames}", f"--steps={k}")
    assert res.returncode == 0, res.stderr[-3000:]
    outputs[k], sr = sf.read(out, dtype="float32")
    assert sr == SR and len(outputs[k]) == 3 * SR
  source, _ = sf.read(tmp_path / "in.wav", dtype="float32")
  np.testing.assert_allclose(outputs[0], source, atol=1e-4)  # zero steps leave the input as it is
  assert np.abs(outputs[2] - source).mean() > np.abs(outputs[1] - source).mean() * 1.05


def test_highlight_errors_are_one_clear_line(run_dir, tmp_path):
  silent = make_video(tmp_path / "silent.mp4", seconds=2.0, fps=4)
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(b"not a video at all")
  noise = tmp_path / "noise.wav"
  noise.write_bytes(b"RIFF and then nothing an audio decoder understands" * 20)
  frames = tmp_path / "frames"
  frames.mkdir()
  Image.fromarray(picture(0)).save(frames / "000.png")
  empty_run = tmp_path / "empty"
  empty_run.mkdir()
  undecodable = "is not a video or audio file that can be decoded (invalid data)"
  cases = [
      ((silent, tmp_path / "o.mp4", f"--workdir={run_dir}"), "silent.mp4: the video has no audio track"),
      ((garbage, tmp_path / "o.mp4", f"--workdir={run_dir}"), f"garbage.mp4 {undecodable}"),
      ((noise, tmp_path / "o.wav", f"--workdir={run_dir}", f"--frames={frames}"), f"noise.wav {undecodable}"),
      ((silent, tmp_path / "o.mp4", f"--workdir={empty_run}"), "not an avflow run directory"),
      ((silent, tmp_path / "o.mp4", f"--workdir={run_dir}", "--sample_rate=44100"), "trained at 8000 Hz"),
      ((tmp_path / "missing.mp4", tmp_path / "o.mp4", f"--workdir={run_dir}"), "does not exist"),
  ]
  for args, message in cases:
    assert message in cli_error(_highlight(*args), "highlight"), args
    assert not os.path.exists(tmp_path / "o.mp4") and not os.path.exists(tmp_path / "o.wav")

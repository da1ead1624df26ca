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
from test_video import decoded_pictures, make_video, picture, tone

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
  """`--steps=1` through the CLI (into missing folders) is the library's one-step remix; 0 steps keep the input and
  1 step remixes less than all 2."""
  from avflow.inference import load_run, rebalance
  t = np.arange(3 * SR) / SR
  sf.write(tmp_path / "in.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SR)
  frames = tmp_path / "frames"
  frames.mkdir()
  for i in range(3):
    Image.fromarray(picture(i)).save(frames / f"{i:03d}.png")
  out = tmp_path / "new" / "folder" / "out.wav"
  res = _highlight(tmp_path / "in.wav", out, f"--workdir={run_dir}", f"--frames={frames}", "--steps=1")
  assert res.returncode == 0, res.stderr[-3000:]
  written, sr = sf.read(out, dtype="float32")
  assert sr == SR and len(written) == 3 * SR
  source, _ = sf.read(tmp_path / "in.wav", dtype="float32")
  run = load_run(str(run_dir))
  remixed = {k: rebalance(run, source, video.read_frames(str(frames), run.config.data.image_size), steps=k)
             for k in (0, 1, 2)}
  np.testing.assert_allclose(written, np.clip(remixed[1], -1, 1), atol=1e-4)  # a 16-bit wav, as the input
  np.testing.assert_allclose(remixed[0], source, atol=1e-6)  # zero steps leave the input as it is
  assert np.abs(remixed[2] - source).mean() > np.abs(remixed[1] - source).mean() * 1.05


def test_highlight_video_equals_its_wav_and_extracted_frames(run_dir, tmp_path):
  movie = make_video(tmp_path / "clip.mp4", seconds=3.0, fps=4, audio=tone(3.0), sample_rate=SR)
  decoded = video.read_video(movie, SR, 16)
  sf.write(tmp_path / "clip.wav", decoded.audio, SR, subtype="FLOAT")
  frames = tmp_path / "frames"
  frames.mkdir()
  for k, (t, _, image) in enumerate(decoded_pictures(movie)[::4]):  # the frames at t = 0, 1, 2 s, as read_video
    assert t == pytest.approx(k)
    image.save(frames / f"{k + 1}.png")  # lossless
  # Frames from the folder get the video's geometry exactly; a squash of the 64 x 48 pictures to 16 x 16 would not.
  np.testing.assert_array_equal(video.read_frames(str(frames), 16), decoded.frames)
  squashed = np.stack([np.asarray(Image.open(frames / f"{k}.png").resize((16, 16), Image.BICUBIC)) for k in (1, 2, 3)])
  assert np.abs(squashed.astype(int) - decoded.frames).max() > 20
  res = _highlight(movie, tmp_path / "from_video.wav", f"--workdir={run_dir}")
  assert res.returncode == 0, res.stderr[-3000:]
  res = _highlight(tmp_path / "clip.wav", tmp_path / "from_frames.wav", f"--workdir={run_dir}", f"--frames={frames}")
  assert res.returncode == 0, res.stderr[-3000:]
  from_video, _ = sf.read(tmp_path / "from_video.wav", dtype="float32")
  from_frames, _ = sf.read(tmp_path / "from_frames.wav", dtype="float32")
  assert len(from_video) == 3 * SR and np.abs(from_video).max() > 0.05
  np.testing.assert_allclose(from_frames, from_video, atol=1e-6)


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


def _stereo_pair(sr, seconds=2.0):
  t = np.arange(int(seconds * sr)) / sr
  left = 0.3 * np.sin(2 * np.pi * 300 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)
  left += 0.1 * np.sin(2 * np.pi * 5000 * t)  # above an 8 kHz model's band
  right = 0.2 * np.sin(2 * np.pi * 700 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2
  return np.stack([left, right]).astype(np.float32)


def test_in_input_format_copy_puts_the_model_output_in_every_channel_at_the_input_rate():
  from avflow.inference import in_input_format
  native = _stereo_pair(16000)
  x0 = video.mono_resample(native, 16000, SR)
  x1_hat = 0.5 * x0
  out = in_input_format(x1_hat, x0, SR, native, 16000, "copy")
  assert out.shape == native.shape and out.dtype == np.float32
  np.testing.assert_array_equal(out[0], out[1])
  upsampled = video.mono_resample(x1_hat, SR, 16000)
  np.testing.assert_allclose(out[0], upsampled, atol=1e-6)


def test_in_input_format_gain_keeps_each_channel_and_the_band_above_the_model():
  """The model's change as a time-frequency gain: no change keeps the input, halving halves every channel
  (the 5 kHz tone an 8 kHz model cannot hear too: it follows the model's top octave, 2–4 kHz)."""
  from avflow.inference import in_input_format
  native = _stereo_pair(16000)
  x0 = video.mono_resample(native, 16000, SR)
  kept = in_input_format(x0, x0, SR, native, 16000, "gain")
  np.testing.assert_allclose(kept, native, atol=2e-3)
  halved = in_input_format(0.5 * x0, x0, SR, native, 16000, "gain")
  inner = slice(2000, -2000)
  np.testing.assert_allclose(halved[:, inner], 0.5 * native[:, inner], atol=5e-3)
  with pytest.raises(ValueError, match="unknown channel mode"):
    in_input_format(x0, x0, SR, native, 16000, "surround")


def test_highlight_keeps_the_input_channels_rate_and_bit_rate(run_dir, tmp_path):
  sr = 16000
  native = _stereo_pair(sr, seconds=3.0)
  src = make_video(tmp_path / "stereo.mp4", seconds=3.0, fps=4, audio=native, sample_rate=sr, bit_rate=96_000)
  before = video.read_video(src, SR, 16)
  res = _highlight(src, tmp_path / "out.mp4", f"--workdir={run_dir}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "2 channels at 16000 Hz" in res.stdout and "the model ran in mono at 8000 Hz" in res.stdout
  assert "LUFS" in res.stdout
  after = video.read_video(str(tmp_path / "out.mp4"), SR, 16)
  assert after.native_rate == sr and after.native_audio.shape[0] == 2
  assert f"AAC {before.audio_bit_rate // 1000} kbps" in res.stdout  # the encoder is asked for the input's rate
  assert after.audio_bit_rate > 0.6 * before.audio_bit_rate  # AAC's average rate follows the content
  res = _highlight(src, tmp_path / "out.wav", f"--workdir={run_dir}", "--channels=gain", "--steps=0")
  assert res.returncode == 0, res.stderr[-3000:]
  wav, wav_sr = sf.read(tmp_path / "out.wav", dtype="float32", always_2d=True)
  assert wav_sr == sr and wav.shape == before.native_audio.T.shape
  np.testing.assert_allclose(wav.T, before.native_audio, atol=2e-3)  # zero steps: the input, stereo kept


def test_long_input_in_batches_of_windows_equals_window_by_window(run_dir):
  """A 7-window input through the model 3 windows per call (the last call filled up) gives each window's
  one-at-a-time result; a budget below one window keeps one at a time."""
  from avflow.inference import _window_batch, load_run, rebalance, window_bytes
  run = load_run(run_dir)
  window = run.clip_length
  t = np.arange(int(window * 5.5)) / SR
  audio = (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 0.3 * t))).astype(np.float32)
  size = run.config.data.image_size
  frames = np.stack([picture(i)[:size, :size] for i in range(int(len(t) / SR) + 1)])
  calls = []
  predict = run.predict

  def spy(params, batch, steps):
    calls.append(batch["x0"].shape[0])
    return predict(params, batch, steps)

  one = rebalance(run, audio, frames)
  per_window = window_bytes(run, _window_batch(run, [0], np.pad(audio, (0, window)), frames, None), None)
  assert per_window > 0
  run.predict = spy
  run.predict.lower = predict.lower
  batched = rebalance(run, audio, frames, memory_budget=3.5 * per_window)
  assert calls == [3, 3, 3]  # 7 windows: 3 + 3 + (1 and 2 copies)
  np.testing.assert_allclose(batched, one, rtol=0, atol=1e-6)
  calls.clear()
  np.testing.assert_array_equal(rebalance(run, audio, frames, memory_budget=0.5 * per_window), one)
  assert calls == [1] * 7

"""No command replaces its input or leaves a half-written output (avflow/outputs.py), and its expected errors end
as one line before any compute."""
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from avflow.outputs import OutputError, check_output, staged_file, staged_folder
from conftest import cli_error
from test_video import make_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SR = 8000
# `python -m avflow highlight ...` whose video writer fails halfway, as a full disk would make it.
FULL_DISK = """
import sys
from avflow.__main__ import run
from avflow.commands import highlight

def write_half(source, audio, sample_rate, path, bit_rate=None):
  with open(path, "wb") as f:
    f.write(b"the first half of a video")
  raise OSError(28, "No space left on device")

highlight.write_video_with_audio = write_half
run(["avflow", "highlight"] + sys.argv[1:])
"""


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "PYTHONPATH": ROOT})


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
  """A 2-s video with a soundtrack."""
  t = np.arange(2 * SR) / SR
  audio = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
  return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=2.0, fps=4, audio=audio, sample_rate=SR)


def test_highlight_refuses_to_write_over_its_input(run_dir, clip, tmp_path):
  source = tmp_path / "IN.mp4"
  shutil.copy(clip, source)
  original = source.read_bytes()
  os.link(source, tmp_path / "link.mp4")
  for output in ("IN.mp4", "link.mp4"):  # the same name, and a hard link to the input
    proc = _run("-m", "avflow", "highlight", "IN.mp4", output, f"--workdir={run_dir}", cwd=tmp_path)
    assert f"the output {output} is the input IN.mp4" in cli_error(proc, "highlight")
    assert source.read_bytes() == original
  assert sorted(os.listdir(tmp_path)) == ["IN.mp4", "link.mp4"]


def test_every_spelling_of_an_input_is_refused(tmp_path):
  source = tmp_path / "in.wav"
  source.write_bytes(b"input")
  os.link(source, tmp_path / "hard.wav")
  os.symlink(source, tmp_path / "soft.wav")
  (tmp_path / "sub").mkdir()
  for output in (source, tmp_path / "." / "in.wav", tmp_path / "sub" / ".." / "in.wav", tmp_path / "hard.wav",
                 tmp_path / "soft.wav"):
    with pytest.raises(OutputError, match="is the input"):
      check_output(str(output), [str(source)])
  with pytest.raises(OutputError, match="lies inside the input"):  # a file output inside an input folder
    check_output(str(tmp_path / "sub" / "out.wav"), [str(tmp_path / "sub")])
  with pytest.raises(OutputError, match="lies inside the input"):  # a folder output inside an input folder
    check_output(str(tmp_path / "sub" / "records"), [str(tmp_path / "sub")], entries=("data",))
  with pytest.raises(OutputError, match="would replace the input"):  # a folder entry that holds an input
    check_output(str(tmp_path), [str(source)], entries=("in.wav",))
  with pytest.raises(OutputError, match="is a folder"):
    check_output(str(tmp_path / "sub"), suffixes=(".wav",))
  check_output(str(tmp_path / "new" / "out.wav"), [str(source), str(tmp_path / "sub")], suffixes=(".wav",))
  assert (tmp_path / "new").is_dir()  # missing folders are created


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_halfway_keeps_the_old_output(tmp_path, error):
  target = tmp_path / "out.wav"
  target.write_bytes(b"the previous result")
  with pytest.raises(OutputError if isinstance(error, OSError) else KeyboardInterrupt):
    with staged_file(str(target)) as partial:
      assert os.path.dirname(partial) == str(tmp_path) and partial.endswith(".wav")
      with open(partial, "wb") as f:
        f.write(b"half")
      raise error
  assert target.read_bytes() == b"the previous result" and os.listdir(tmp_path) == ["out.wav"]
  with staged_file(str(target)) as partial:
    with open(partial, "wb") as f:
      f.write(b"new")
  assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.wav"]


def test_a_folder_output_replaces_its_entries_only_when_complete(tmp_path):
  out = tmp_path / "out"
  (out / "records").mkdir(parents=True)
  (out / "records" / "old").write_text("old records")
  (out / "notes.txt").write_text("not ours")
  with pytest.raises(KeyboardInterrupt):
    with staged_folder(str(out), ("records",)) as partial:
      (Path(partial) / "records").mkdir()
      (Path(partial) / "records" / "new").write_text("half")
      raise KeyboardInterrupt
  assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "records" / "old").read_text() == "old records"
  with staged_folder(str(out), ("records",)) as partial:
    (Path(partial) / "records").mkdir()
    (Path(partial) / "records" / "new").write_text("new records")
  assert sorted(os.listdir(tmp_path)) == ["out"] and sorted(os.listdir(out)) == ["notes.txt", "records"]
  assert os.listdir(out / "records") == ["new"]


def test_a_failure_while_highlight_writes_keeps_the_old_output(run_dir, clip, tmp_path):
  out = tmp_path / "out.mp4"
  out.write_bytes(b"the previous result")
  message = cli_error(_run("-c", FULL_DISK, clip, out, f"--workdir={run_dir}"), "highlight")
  assert f"cannot write {out}: No space left on device" in message
  assert out.read_bytes() == b"the previous result" and os.listdir(tmp_path) == ["out.mp4"]


def test_highlight_checks_its_output_before_loading_the_model(clip, tmp_path):
  no_run = tmp_path / "no_run"  # loading the model first would fail on this instead
  (tmp_path / "file").write_text("")
  sf.write(tmp_path / "in.wav", np.zeros(SR, np.float32), SR)
  cases = [
      ((clip, tmp_path / "out.txt"), 1, "the output must end in .wav, .mp4, .m4v, .mov, .mkv"),
      ((clip, tmp_path / "file" / "out.wav"), 1, f"cannot create the folder {tmp_path / 'file'}"),
      ((tmp_path / "in.wav", tmp_path / "out.mp4"), 1, "an audio INPUT can only be written to a .wav OUTPUT"),
      ((clip, tmp_path / "out.wav", f"--frames={tmp_path / 'frames'}"), 1, "frames is not a folder of frames"),
      ((clip,), 2, "expected INPUT and OUTPUT"),
  ]
  for args, status, message in cases:
    proc = _run("-m", "avflow", "highlight", *args, f"--workdir={no_run}")
    assert message in cli_error(proc, "highlight", status), args
  assert sorted(os.listdir(tmp_path)) == ["file", "in.wav"]


def test_train_on_an_existing_run_without_resume_is_one_line(run_dir):
  with open(os.path.join(run_dir, "config.json")) as f:
    config = f.read()
  message = cli_error(_run("-m", "avflow", "train", f"--workdir={run_dir}"), "train")
  assert "already holds checkpoints (step 0): pass --resume" in message
  with open(os.path.join(run_dir, "config.json")) as f:
    assert f.read() == config

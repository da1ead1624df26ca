"""`python -m avflow generate` with an initialised tiny VAFlow run: the soundtrack of a silent video into a video or
a wav, as long as the picture stream, with its NFE; and its error messages."""
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile as sf

import vaflow
from conftest import ROOT, cli_error, tiny
from test_video import make_video
from avflow.train.loop import train

SR = 8000  # the toy's rate
SECONDS = 1.3  # the test video: 13 frames at 10 fps


def _generate(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "avflow", "generate", *map(str, args)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
  done = subprocess.CompletedProcess(proc.args, None, *proc.communicate(timeout=600))
  done.returncode = proc.returncode
  return done


def _init(workdir, variant: str) -> str:
  config = tiny(vaflow.get_config(variant), total_steps=0)
  train(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Initialised (`total_steps=0`) tiny runs: an estimator-stage VAFlow and a VAE-pretraining one."""
  root = tmp_path_factory.mktemp("generate")
  return {"estimator": _init(root / "estimator", "toy_prior_frozen"), "prior": _init(root / "prior", "toy")}


@pytest.fixture(scope="module")
def silent(tmp_path_factory):
  return make_video(tmp_path_factory.mktemp("video") / "silent.mp4", seconds=SECONDS, fps=10)


def test_generate_writes_a_soundtrack_as_long_as_the_video(runs, silent, tmp_path):
  video_out, wav_out = tmp_path / "out.mp4", tmp_path / "out.wav"
  procs = [_generate(silent, video_out, f"--workdir={runs['estimator']}"),
           _generate(silent, wav_out, f"--workdir={runs['estimator']}", "--solver=midpoint", "--steps=3", "--cfg=0")]
  as_video, as_wav = map(_finish, procs)
  assert as_video.returncode == 0, as_video.stderr[-3000:]
  assert "NFE 2: euler on 2 steps, CFG γ = 1: 2 DiT passes each" in as_video.stdout  # the run's sampler
  assert "from 11 frames at 8 fps" in as_video.stdout  # 1.3 s at the model's 8 fps: frames at 0, 1/8, …, 10/8 s
  with av.open(str(video_out)) as container:
    (picture,), (sound,) = container.streams.video, container.streams.audio
    assert picture.frames == 13 and sound.sample_rate == SR
    audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(sound)])
  assert abs(len(audio) / SR - SECONDS) < 0.15  # AAC frames of 1024 samples, 0.128 s at 8 kHz
  assert as_wav.returncode == 0, as_wav.stderr[-3000:]
  assert "NFE 6: midpoint on 3 steps, no guidance" in as_wav.stdout
  wave, rate = sf.read(wav_out, dtype="float32")
  assert rate == SR and wave.shape == (round(SECONDS * SR),) and np.all(np.isfinite(wave)) and np.any(wave != 0)


def test_generate_errors(runs, silent, tmp_path):
  bad = tmp_path / "bad.mp4"
  bad.write_bytes(b"not a video")
  cases = [
      ((tmp_path / "missing.mp4", tmp_path / "o.wav", f"--workdir={runs['estimator']}"), "missing.mp4 does not exist"),
      ((bad, tmp_path / "o.wav", f"--workdir={runs['estimator']}"), "bad.mp4 is not a video or audio file"),
      ((silent, tmp_path / "o.wav", f"--workdir={tmp_path / 'no_run'}"), "is not an avflow run directory"),
      ((silent, tmp_path / "o.wav", f"--workdir={runs['prior']}"), "pretrains the alignment VAE"),
  ]
  procs = [(_generate(*args), message) for args, message in cases]
  for proc, message in procs:
    assert message in cli_error(_finish(proc), "generate"), proc.args
  assert not os.path.exists(tmp_path / "o.wav")

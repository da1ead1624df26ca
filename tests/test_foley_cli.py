"""`python -m avflow foley` with a tiny trained NAG run (the base, then the ControlNet from it, evaluated): one track
per caption, the composite at −20 LUFS into the video and beside it; and its error messages."""
import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile as sf

import vaflow
from conftest import ROOT, cli_error, tiny
from test_nag import nag_config
from test_video import make_video
from avflow.metrics.loudness import integrated_loudness
from avflow.train.loop import train

SR = 8000
SECONDS = 1.3


def _foley(*args) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "avflow", "foley", *map(str, args)], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
  done = subprocess.CompletedProcess(proc.args, None, *proc.communicate(timeout=600))
  done.returncode = proc.returncode
  return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two steps of the base, two of the ControlNet from it (evaluated at its last step), an initialised VAFlow run."""
  root = tmp_path_factory.mktemp("foley")
  train(nag_config("toy", total_steps=2, eval_every=100), str(root / "base"))
  train(nag_config("toy_control", total_steps=2, eval_every=2, init_from=str(root / "base")), str(root / "control"))
  train(tiny(vaflow.get_config("toy_prior_frozen"), total_steps=0), str(root / "vaflow"))
  return {name: str(root / name) for name in ("base", "control", "vaflow")}


@pytest.fixture(scope="module")
def silent(tmp_path_factory):
  return make_video(tmp_path_factory.mktemp("video") / "silent.mp4", seconds=SECONDS, fps=10)


def test_the_control_run_is_evaluated_step_by_step(runs):
  with open(os.path.join(runs["control"], "eval.json")) as f:
    report = json.load(f)
  scores = report["prediction"]
  assert report["inference"]["guidance"] == "nag" and report["inference"]["beta"] == 1.5
  assert 0.0 <= scores["fidelity"] <= 1.0 and np.isfinite(scores["fd"]) and scores["tracks"] >= report["num_clips"]
  assert np.isnan(scores["independence"]) or -1.0 <= scores["independence"] <= 1.0
  samples = os.path.join(runs["control"], "samples")
  (clip,) = os.listdir(samples)
  captions = json.load(open(os.path.join(samples, clip, "captions.json")))
  names = sorted(os.listdir(os.path.join(samples, clip)))
  assert names == sorted(["captions.json", "mix.wav", "target.wav", *(f"track_{k + 1}.wav"
                                                                    for k in range(len(captions)))])


def test_foley_writes_each_track_and_the_mix_into_the_video(runs, silent, tmp_path):
  out, wav = tmp_path / "out.mp4", tmp_path / "neg" / "out.wav"
  procs = [_foley(silent, out, f"--workdir={runs['control']}", "--captions=a drum is hit; a bell rings;a whistle"),
           _foley(silent, wav, f"--workdir={runs['control']}", "--captions=a drum is hit;a bell rings",
                  "--guidance=negative_prompt", "--steps=1")]
  as_video, as_wav = map(_finish, procs)
  assert as_video.returncode == 0, as_video.stderr[-3000:]
  assert "3 tracks + mix.wav" in as_video.stdout and "then NAG α = 4.5, β = 1.5; euler on 2 steps" in as_video.stdout
  folder = tmp_path / "out_tracks"
  assert sorted(os.listdir(folder)) == ["mix.wav", "track_1.wav", "track_2.wav", "track_3.wav"]
  tracks = np.stack([sf.read(folder / f"track_{k}.wav", dtype="float32")[0] for k in (1, 2, 3)])
  mix, rate = sf.read(folder / "mix.wav", dtype="float32")
  assert rate == SR and tracks.shape == (3, round(SECONDS * SR)) and np.all(np.isfinite(tracks))
  assert abs(integrated_loudness(mix, SR) + 20.0) < 0.01
  gain = np.dot(mix, tracks.sum(0)) / np.dot(tracks.sum(0), tracks.sum(0))
  np.testing.assert_allclose(mix, gain * tracks.sum(0), atol=1e-5)  # the composite is the tracks' sum, scaled
  with av.open(str(out)) as container:
    (picture,), (sound,) = container.streams.video, container.streams.audio
    assert picture.frames == 13 and sound.sample_rate == SR
  assert as_wav.returncode == 0, as_wav.stderr[-3000:]
  assert "then negative prompting α = 4.5; euler on 1 steps" in as_wav.stdout
  np.testing.assert_array_equal(sf.read(wav, dtype="float32")[0], sf.read(tmp_path / "neg" / "out_tracks" / "mix.wav",
                                                                          dtype="float32")[0])


def test_foley_errors(runs, silent, tmp_path):
  run = f"--workdir={runs['control']}"
  cases = [
      ((tmp_path / "missing.mp4", tmp_path / "o.mp4", run, "--captions=a drum"), "missing.mp4 does not exist"),
      ((silent, tmp_path / "o.mp4", run, "--captions= ; "), "--captions holds no caption"),
      ((silent, tmp_path / "o.mp4", run, "--captions=a drum;;a bell"), "has an empty caption (number 2)"),
      ((silent, tmp_path / "o.mp4", f"--workdir={runs['vaflow']}", "--captions=a drum"),
       "is a video-to-audio run (VAFlow) with config.task='v2a', not a step-by-step foley run (NAG): use "
       "`python -m avflow generate`"),
      ((silent, tmp_path / "o.mp4", f"--workdir={runs['base']}", "--captions=a drum", "--guidance=nag"),
       "inference.guidance='nag' needs the ControlNet (model.stage='control')"),
  ]
  procs = [(_foley(*args), message) for args, message in cases]
  for proc, message in procs:
    assert message in cli_error(_finish(proc), "foley"), proc.args
  assert not os.path.exists(tmp_path / "o.mp4") and not os.path.exists(tmp_path / "o_tracks")

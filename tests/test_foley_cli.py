"""The NAG table's rows trained by `ablate` (the base, then the ControlNet from it) and evaluated step by step; `python
-m avflow foley` with the tiny ControlNet run: one track per caption, the composite at −20 LUFS into the video and
beside it; and its error messages."""
import json
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import soundfile as sf

import vaflow
from conftest import ROOT, cli_error, tiny
from test_video import make_video
from test_nag import NAG_TINY
from avflow import ablate
from avflow.metrics.loudness import integrated_loudness
from avflow.report.paper_tables import TABLES
from avflow.train import checkpoint
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


# The ablate rows the fixture runs: NAG (the ControlNet, which trains the base first) and plain CFG, which shares its
# training run.
ROWS = ("nag:control", "nag:cfg")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """`ablate` on two rows of the NAG table, two steps per stage (the base, then the ControlNet from it), and an
  initialised VAFlow run."""
  root = tmp_path_factory.mktemp("foley")
  overrides = {k: v for k, v in NAG_TINY.items() if k not in ("total_steps", "eval_every", "checkpoint_every")}
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(TABLES["nag"], "rows", {k: TABLES["nag"]["rows"][k] for k in ROWS})
    run = ablate.run_table("nag", "toy", [0], str(root / "ablate"), total_steps=2, overrides=overrides)
    markdown = ablate.markdown(ablate.summarize("nag", "toy", [0], run, str(root / "ablate")))
  train(tiny(vaflow.get_config("toy_prior_frozen"), total_steps=0), str(root / "vaflow"))
  control = run["runs"]["nag_toy_control/0"]
  return {"control": control, "cfg": run["runs"]["nag_toy_cfg/0"], "base": checkpoint.load_config(control).init_from,
          "vaflow": str(root / "vaflow"), "markdown": markdown, "wall": run["wall_s"]}


@pytest.fixture(scope="module")
def silent(tmp_path_factory):
  return make_video(tmp_path_factory.mktemp("video") / "silent.mp4", seconds=SECONDS, fps=10)


def test_ablate_trains_the_base_then_the_controlnet_and_evaluates_each_row(runs):
  assert runs["cfg"] == runs["control"] and runs["wall"]["nag_toy_cfg/0"]["reused"]
  assert checkpoint.load_config(runs["base"]).model.stage == "base"
  base, control = (checkpoint.load_params(runs[name]) for name in ("base", "control"))
  assert set(base) == {"text", "dit"} and set(control) == {"text", "dit", "control"}
  jax.tree.map(np.testing.assert_array_equal, base["dit"], control["dit"])  # the base stays frozen
  reports = {}
  for row in ("control", "cfg"):
    with open(os.path.join(runs["control"], f"eval_nag_toy_{row}", "eval.json")) as f:
      reports[row] = json.load(f)
  assert reports["control"]["inference"]["guidance"] == "nag" and reports["control"]["inference"]["beta"] == 1.5
  assert reports["cfg"]["inference"] == {**reports["control"]["inference"], "guidance": "cfg", "beta": 0.0}
  for report in reports.values():
    scores = report["prediction"]
    assert 0.0 <= scores["fidelity"] <= 1.0 and np.isfinite(scores["fd"]) and scores["tracks"] >= report["num_clips"]
    assert np.isnan(scores["independence"]) or -1.0 <= scores["independence"] <= 1.0
  samples = os.path.join(runs["control"], "eval_nag_toy_control", "samples")
  (clip,) = os.listdir(samples)
  captions = json.load(open(os.path.join(samples, clip, "captions.json")))
  names = sorted(os.listdir(os.path.join(samples, clip)))
  assert names == sorted(["captions.json", "mix.wav", "target.wav", *(f"track_{k + 1}.wav"
                                                                    for k in range(len(captions)))])


def test_the_table_prints_the_papers_table_2_beside_ours(runs):
  lines = runs["markdown"].splitlines()
  header = next(line for line in lines if line.startswith("| row |"))
  assert "| INDEPENDENCE ours | FIDELITY ours | FD ours | INDEPENDENCE per seed | CLAP AA paper |" in header
  nag = next(line for line in lines if line.startswith("| NAG, α = 4.5, β = 1.5 (Table 2, Ours) |"))
  assert nag.endswith("| 74.74 | 12.00 | 28.79 | 26.44 |")
  assert any(line.startswith("Input (the tracks' sources x0 decoded, before any flow step): ") for line in lines)


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

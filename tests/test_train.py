"""Training end to end on tiny toy movies: checkpoints, eval.json, samples, resume, errors, the CLI."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import soundfile as sf

from avflow.data.pipeline import device_batch, make_dataset, make_source
from avflow.models.visah.highlighter import Highlighter
from avflow.train import checkpoint, loop
from avflow.train.loop import NonFiniteError, train
from avflow.train.state import create_train_state, make_optimizer
from avflow.train.step import make_train_step
from conftest import MICRO, cli_error, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# conftest's MICRO model (FM only) as CLI flags, at batch 2.
MICRO_FLAGS = [f"--config.{k}={v}" for k, v in {**MICRO, "batch_size": 2}.items()
               if k not in ("total_steps", "eval_every", "checkpoint_every")]


def _cli(*args, **kw):
  return subprocess.run([sys.executable, "-m", "avflow", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f)}


def test_flow_matching_run_writes_checkpoints_eval_and_samples(tiny_fm_config, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  state = train(tiny_fm_config, workdir)
  assert int(state.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  with open(os.path.join(workdir, "eval.json")) as f:
    report = json.load(f)
  assert report["steps"] == 4 and report["num_clips"] == 2
  for part in ("input", "prediction"):
    assert set(report[part]) == {"ldif", "mag", "env", "was"}
    assert all(np.isfinite(v) for v in report[part].values())
  # The input's oracle LDif is the mean |drawn gain|: between 6 and 12 dB on every clip.
  assert 6.0 <= report["input"]["ldif"] <= 12.0
  (clip,) = os.listdir(os.path.join(workdir, "samples"))
  for name in ("input", "prediction", "target"):
    audio, sr = sf.read(os.path.join(workdir, "samples", clip, f"{name}.wav"))
    assert sr == 8000 and len(audio) == 8000
  assert set(_losses(workdir)) == {1, 2, 3, 4}
  assert any(n.startswith("events") for n in os.listdir(os.path.join(workdir, "tensorboard")))
  with pytest.raises(FileExistsError, match="--resume"):
    train(tiny_fm_config, workdir)

  # Resuming refuses another config, naming each differing field, before anything is built.
  changed = tiny_fm_config.copy_and_resolve_references()
  changed.optimizer.learning_rate = 1e-4
  changed.model.conditioning.modalities = ("audio", "text")
  with pytest.raises(checkpoint.ConfigMismatchError) as refused:
    train(changed, workdir, resume=True)
  assert "model.conditioning.modalities: [\"audio\"] → [\"audio\", \"text\"]; optimizer.learning_rate: 0.002 → " \
         "0.0001 (only total_steps, " in str(refused.value)
  assert checkpoint.load_config(workdir).optimizer.learning_rate == 0.002
  # The run's length and its evaluation / checkpoint cadence may change: two more steps, then one evaluation. The
  # state comes from the checkpoint alone: nothing is initialised.
  monkeypatch.setattr(loop, "init_params", lambda *args, **kwargs: pytest.fail("a resumed run ran the init"))
  longer = tiny_fm_config.copy_and_resolve_references()
  longer.update(total_steps=6, checkpoint_every=6, eval_every=6)
  assert int(train(longer, workdir, resume=True).step) == 6
  assert set(_losses(workdir)) == {1, 2, 3, 4, 5, 6} and checkpoint.load_config(workdir).total_steps == 6
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["steps"] == 6


def test_the_resume_check_allows_only_the_resumable_fields(tiny_fm_config, tmp_path):
  with pytest.raises(checkpoint.ConfigMismatchError, match="holds checkpoints but no config.json"):
    checkpoint.check_resumable(str(tmp_path), tiny_fm_config)
  checkpoint.save_config(str(tmp_path), tiny_fm_config)
  harmless = tiny_fm_config.copy_and_resolve_references()
  harmless.update(log_every=7, nonfinite="skip")
  harmless.mesh.fsdp = 2
  harmless.inference.method = "midpoint"
  harmless.eval.num_samples = 3
  checkpoint.check_resumable(str(tmp_path), harmless)
  harmless.data.seed = 5
  harmless.model.new_field = 1  # e.g. a field that newer code adds
  with pytest.raises(checkpoint.ConfigMismatchError,
                     match=r"in data\.seed: 1234 → 5; model\.new_field: \(absent\) → 1 \(only total_steps"):
    checkpoint.check_resumable(str(tmp_path), harmless)


def test_total_steps_zero_writes_the_initialized_checkpoint(tiny_visah_config, tmp_path):
  tiny_visah_config.total_steps = 0
  workdir = str(tmp_path / "init")
  train(tiny_visah_config, workdir)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["0"]
  params = checkpoint.load_params(workdir)
  assert "visah" in params and not os.path.exists(os.path.join(workdir, "eval.json"))


def test_discriminative_visah_trains(tiny_visah_config, tmp_path):
  tiny_visah_config.total_steps = 2
  tiny_visah_config.eval_every = 2
  workdir = str(tmp_path / "visah")
  train(tiny_visah_config, workdir)
  losses = _losses(workdir)
  assert set(losses) == {1, 2} and all(np.isfinite(v) for v in losses.values())
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f)["prediction"]["mag"] > 0


def test_loss_drops_when_fitting_one_batch():
  """The micro model with the toy's FM + rollout objective fits one batch."""
  import visah_fm
  toy = visah_fm.get_config("toy")
  c = tiny(toy, micro=True, **{"objective.rollout_weight": toy.objective.rollout_weight})
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 0
  c.optimizer.schedule = "constant"
  batch = device_batch(next(iter(make_dataset(make_source(c.data, "train"), c.data, batch_size=2, seed=0,
                                              train=True))))
  model = Highlighter(c.model)
  tx = make_optimizer(c)
  state = create_train_state(model, c, batch, tx)
  step = jax.jit(make_train_step(model, c, tx), donate_argnums=0)
  losses = []
  for i in range(25):
    state, metrics = step(state, batch, jax.random.PRNGKey(i % 2))
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_non_finite_step_between_log_boundaries_is_named_exactly(tiny_visah_config, tmp_path, monkeypatch):
  """The loop checks finiteness only at log / save / eval boundaries (step 4 here), yet names step 3."""
  from avflow.train import loop
  c = tiny_visah_config
  c.update(total_steps=6, log_every=4, checkpoint_every=100, eval_every=100)
  calls = []

  def poison_step_3(batch):  # called for the example batch, then once per step
    calls.append(len(calls))
    out = device_batch(batch)
    return {**out, "x1": np.full_like(out["x1"], np.nan)} if len(calls) == 4 else out

  monkeypatch.setattr(loop, "device_batch", poison_step_3)
  with pytest.raises(NonFiniteError, match=r"at step 3 \(loss=nan\); clip ids: toy-train"):
    train(c, str(tmp_path / "nan"))
  assert len(calls) == 5  # the run went on to step 4, the boundary, and stopped there
  assert not os.path.exists(tmp_path / "nan" / "metrics.jsonl")


def _info_sources(stderr):
  """The source files of the absl-formatted INFO lines (`I1204 19:15:05.895 1401 checkpoint_manager.py:1881] ...`)."""
  return set(re.findall(r"I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", stderr))


def test_train_cli_output_and_sigterm_then_resume_equals_an_uninterrupted_run(tmp_path):
  """The same CLI runs check what `train` prints (quiet libraries, the compile notice, the summary) and resuming."""
  args = ["train", "--config.total_steps=6", "--config.eval_every=100", "--config.checkpoint_every=100", *MICRO_FLAGS]
  straight = str(tmp_path / "straight")
  done = _cli(*args, f"--workdir={straight}", timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert _info_sources(done.stderr) <= {"loop.py"}, done.stderr[-3000:]  # orbax, JAX, Grain: warnings only
  assert "compiling the train step…" in done.stderr
  # The bar starts after the compiled first step, so its ETA never counts the compilation.
  assert "| 1/6 [" in done.stderr and "| 0/6 [" not in done.stderr, done.stderr[-3000:]
  summary = done.stdout.splitlines()
  assert summary[0].startswith("trained steps 0 → 6 in "), done.stdout
  assert summary[1].startswith("step 6: loss ") and summary[2].startswith("eval at step 6: ldif "), done.stdout
  assert summary[-1] == (f"wrote {straight}: config.json, checkpoints/, eval.json, samples/, metrics.jsonl, "
                         "tensorboard/"), done.stdout

  interrupted = str(tmp_path / "interrupted")
  proc = subprocess.Popen([sys.executable, "-m", "avflow", *args, f"--workdir={interrupted}"], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(interrupted, "metrics.jsonl")
  deadline = time.time() + 900
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 2:
      proc.send_signal(signal.SIGTERM)
      break
    time.sleep(0.05)
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  stopped_at = max(_losses(interrupted))
  assert stopped_at < 6, "the run finished before the signal arrived"
  assert checkpoint.Checkpointer(interrupted).latest_step() == stopped_at

  resumed = _cli(*args, f"--workdir={interrupted}", "--resume", "--verbose", timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert _losses(interrupted) == _losses(straight)
  assert resumed.stdout.startswith(f"trained steps {stopped_at} → 6 in "), resumed.stdout
  assert {"loop.py", "checkpoint_manager.py"} <= _info_sources(resumed.stderr), resumed.stderr[-3000:]


def test_cli_reports_bad_arguments_in_one_line(tmp_path):
  unknown = _cli("trian")
  assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr
  bad = _cli("train", f"--workdir={tmp_path}", "--config.no_such_field=1")
  assert bad.returncode != 0 and "no_such_field" in bad.stderr
  missing = _cli("info", "--config=configs/visah_fm.py:huge")
  assert missing.returncode != 0 and "unknown variant 'huge'" in missing.stderr
  extra = _cli("info", "extra")
  assert "unexpected arguments ['extra']" in cli_error(extra, "info", status=2)


def test_info_prints_the_public_visah_parameter_count():
  out = _cli("info", "--config=configs/visah.py:paper", timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert lines[:3] == ["params_total: 59956090", "params_trainable: 59956090", "params_frozen: 0"]
  assert "visah/model/latent_transformer: 39000832" in lines

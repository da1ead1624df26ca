"""The separation task (DAVIS-Flow, DAVIS) on the shared trainer: configs, training, evaluation, tables."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import davis
import davis_flow
from conftest import ROOT, tiny
from avflow import ablate, tasks
from avflow.data.pipeline import device_batch
from avflow.train import checkpoint
from avflow.train.loop import train
from avflow.train.step import jit, make_predict_fn


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
  """A tiny DAVIS-Flow run trained for 12 steps, evaluated at the end."""
  config = tiny(davis_flow.get_config("toy"), total_steps=12, eval_every=12, checkpoint_every=12,
                **{"optimizer.learning_rate": 3e-3})
  workdir = str(tmp_path_factory.mktemp("davis_flow"))
  train(config, workdir)
  return config, workdir


def test_every_variant_builds():
  for module in (davis_flow, davis):
    for variant in module.VARIANTS:
      config = module.get_config(variant)
      assert config.task == "separate" and config.method in ("flow", "diffusion")
  assert davis_flow.get_config("toy_l2").objective.loss == "l2"
  assert davis_flow.get_config("toy_steps5").inference.num_steps == 5
  assert davis.get_config("paper").diffusion.sampling_steps == 15
  with pytest.raises(ValueError, match="unknown variant 'toy_nope' of davis_flow.py"):
    davis_flow.get_config("toy_nope")


def test_info_prints_the_public_counts():
  out = subprocess.run([sys.executable, "-m", "avflow", "info", "--config=configs/davis_flow.py:paper", "--depth=2"],
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
  assert "unet: 36549603" in out  # the public `Unet(dim=64, dim_mults=(1, 2, 4, 4, 8))`
  assert "visual/temporal_transformer: 13663232" in out  # nn.Transformer(512, 8, 3, 1, 2048)
  assert "model.conditioning.clip_weights: (none)" in out


def test_training_lowers_the_l1_loss_and_writes_the_separation_report(flow_run):
  config, workdir = flow_run
  losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])
  report = json.load(open(os.path.join(workdir, "eval.json")))
  assert set(report["prediction"]) == {"sdr", "sir", "sar"} and set(report["input"]) == {"sdr"}
  assert report["count"] + report["skipped"] == config.data.num_eval_pairs
  assert np.isfinite(report["input"]["sdr"]) and np.isfinite(report["swapped_frames"]["sdr"])
  sample = os.path.join(workdir, "samples", os.listdir(os.path.join(workdir, "samples"))[0])
  assert {"mixture.wav", "prediction_a.wav", "target_b.wav", "frames_a"} <= set(os.listdir(sample))


def test_report_page_shows_the_separation_metrics_in_db_and_both_sources_frames(flow_run):
  from avflow.report.html import write_report
  _, workdir = flow_run
  page = open(write_report(workdir)).read()
  assert "SDR (dB)" in page and "SAR (dB)" in page and "(paper)" not in page  # no VisAH ×100 column
  assert "frames_a" in page and "frames_b" in page and "prediction_a" in page


def test_prediction_follows_the_frames_and_keeps_the_mixture_phase(flow_run):
  """The estimate depends on which source's frames are given, and is a waveform of the mixture's length."""
  config, workdir = flow_run
  task = tasks.get(config)
  predict = jit(make_predict_fn(task.build(config.model), config))
  batch = device_batch(next(iter(task.dataset(task.source(config.data, "val"), config.data, batch_size=2, seed=0,
                                              train=False))))
  params = checkpoint.load_params(workdir)
  a, traj = predict(params, {"mixture": batch["mixture"], "frames": batch["frames"]})
  b, _ = predict(params, {"mixture": batch["mixture"], "frames": batch["other_frames"]})
  assert a.shape == batch["mixture"].shape and np.all(np.isfinite(a))
  assert traj.states.shape[0] == config.inference.num_steps + 1
  assert not np.allclose(a, b, atol=1e-6)


def test_silence_mask_keeps_silent_bins_on_the_mixture_path(flow_run):
  """With δ above every bin, every state is the mixture pushed along the path: the estimate is the mixture's
  magnitude, so the waveform is the mixture itself (up to the STFT round trip and the clamp)."""
  config, workdir = flow_run
  config = config.copy_and_resolve_references()
  config.inference.silence_threshold = 2.0
  task = tasks.get(config)
  predict = jit(make_predict_fn(task.build(config.model), config))
  batch = device_batch(next(iter(task.dataset(task.source(config.data, "val"), config.data, batch_size=2, seed=0,
                                              train=False))))
  wave, traj = predict(checkpoint.load_params(workdir), {"mixture": batch["mixture"], "frames": batch["frames"]})
  front = config.model.spectrogram
  from avflow.models.davis import presets
  spec = presets.spectrogram(front)
  mixture = spec.to_model(spec.spec(batch["mixture"]))
  np.testing.assert_allclose(traj.final, mixture + config.objective.sigma_min * traj.states[0], atol=1e-6)


def test_ddpm_trains_and_samples_with_ddim(tmp_path):
  config = tiny(davis.get_config("toy"), total_steps=2, eval_every=2, checkpoint_every=2)
  train(config, str(tmp_path))
  report = json.load(open(tmp_path / "eval.json"))
  assert report["inference"] == {"sampler": "ddim", "num_steps": 2, "eta": 1.0, "silence_threshold": 0.002}
  assert np.isfinite(report["prediction"]["sdr"])


def test_davis_table_rows_and_seeds():
  rows = ablate.table_rows("davis", "toy")
  by_key = {r.key: r for r in rows}
  assert by_key["davis_flow:"].config_file == "davis_flow.py" and by_key["davis_flow:"].variant == "toy"
  assert by_key["davis:"].config_file == "davis.py" and by_key["davis_flow:l2"].variant == "toy_l2"
  assert ablate.row_seeds(by_key["davis:"], [0, 1, 2]) == [0, 1, 2]
  assert ablate.row_seeds(by_key["davis_flow:steps3"], [0, 1, 2]) == [0]
  assert len({r.name for r in rows}) == len(rows)  # no two rows share a run folder
  for row in rows:
    ablate.load_config(row)

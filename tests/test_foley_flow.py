"""Foley-Flow: VAMA's segment mask and masked loss (Eq. 4), its pretraining stage, the flow conditioned on the VAMA
video encoder, and the table's rows chained through `init_from`."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import foley_flow
from conftest import V2A_TINY, tiny
from avflow import ablate, tasks
from avflow.data.pipeline import device_batch
from avflow.models.v2a.vaflow import VAFlow, frame_features
from avflow.models.v2a.vama import VideoEncoder, masked_l2, num_masked_segments, segment_mask
from avflow.report.paper_tables import TABLES
from avflow.train import checkpoint
from avflow.train.state import create_train_state, make_optimizer
from avflow.train.step import jit, make_loss_fn, make_predict_fn, make_train_step


def _config(variant: str = "toy", **overrides):
  return tiny(foley_flow.get_config(variant), **overrides)


def _batch(config, size: int = 4) -> dict:
  task = tasks.get(config)
  ds = task.dataset(task.source(config.data, "train"), config.data, batch_size=size, seed=0, train=False)
  return device_batch(next(iter(ds)))


@pytest.mark.parametrize("frames,segment,ratio,masked", [(126, 8, 0.8, 13), (126, 8, 0.5, 8), (126, 8, 0.9, 14),
                                                          (63, 8, 0.8, 6), (10, 2, 0.5, 3)])
def test_segment_mask_masks_round_ratio_segments_of_each_example(frames, segment, ratio, masked):
  segments = -(-frames // segment)
  assert num_masked_segments(frames, segment, ratio) == (segments, masked)
  mask = np.asarray(segment_mask(jax.random.PRNGKey(0), 32, frames, segment, ratio))
  assert mask.shape == (32, frames)
  padded = np.pad(mask, ((0, 0), (0, segments * segment - frames)), mode="edge").reshape(32, segments, segment)
  assert (padded == padded[..., :1]).all()  # whole segments
  np.testing.assert_array_equal(padded[..., 0].sum(axis=1), masked)
  assert len({row.tobytes() for row in padded[..., 0]}) > 1  # drawn per example
  assert not np.array_equal(mask, np.asarray(segment_mask(jax.random.PRNGKey(1), 32, frames, segment, ratio)))


def test_segment_mask_refuses_ratios_that_mask_nothing_or_everything():
  with pytest.raises(ValueError, match=r"model.vama.ratio=0.1 masks 0 of the 4 segments"):
    num_masked_segments(16, 4, 0.1)
  with pytest.raises(ValueError, match=r"model.vama.ratio=0.9 masks 4 of the 4 segments"):
    segment_mask(jax.random.PRNGKey(0), 2, 16, 4, 0.9)


def test_masked_l2_reads_the_masked_positions_only():
  rng = np.random.default_rng(0)
  prediction, target = (jnp.asarray(rng.standard_normal((3, 10, 4)), jnp.float32) for _ in range(2))
  mask = segment_mask(jax.random.PRNGKey(2), 3, 10, 2, 0.6)
  m = np.asarray(mask)
  expected = np.mean(np.square(np.asarray(prediction) - np.asarray(target))[m])
  np.testing.assert_allclose(masked_l2(prediction, target, mask), expected, rtol=1e-6)
  moved = target + jnp.where(mask[..., None], 0.0, 5.0)
  np.testing.assert_array_equal(masked_l2(prediction, moved, mask), masked_l2(prediction, target, mask))
  grad = np.asarray(jax.grad(masked_l2, argnums=1)(prediction, target, mask))
  np.testing.assert_array_equal(grad[~m], 0.0)
  assert (np.abs(grad[m]) > 0).all()


def test_vama_never_reads_the_masked_audio_and_a_few_steps_lower_its_loss():
  config = _config(**{"optimizer.learning_rate": 3e-3, "optimizer.schedule": "constant"})
  assert config.model.stage == "vama" and config.model.vama.ratio == 0.8
  task = tasks.get(config)
  model = task.build(config.model)
  batch, key = _batch(config), jax.random.PRNGKey(3)
  tx = make_optimizer(config)
  state = create_train_state(model, config, batch, tx)
  assert set(state.params) == {"vama", "video_encoder"} and task.frozen_prefixes(config.model) == ()

  variables = {"params": state.params}
  video = model.apply(variables, batch["frames"], method=VAFlow.video)
  features = frame_features(batch["frames"], config.model.conditioning.grid)
  encoder = VideoEncoder(config.model.vama, config.model.video_dim)
  np.testing.assert_array_equal(video, encoder.apply({"params": state.params["video_encoder"]}, features))
  x_a = jax.random.normal(jax.random.PRNGKey(4), (4, 63, config.model.latent_dim))
  mask = segment_mask(jax.random.PRNGKey(5), 4, 63, config.model.vama.segment, 0.8)
  reconstruct = jax.jit(lambda x: model.apply(variables, x, video, mask, method=VAFlow.reconstruct_masked))
  out = reconstruct(x_a)
  np.testing.assert_array_equal(reconstruct(x_a + jnp.where(mask[..., None], 3.0, 0.0)), out)
  assert np.abs(reconstruct(x_a + jnp.where(mask[..., None], 0.0, 3.0)) - out).max() > 1e-3

  loss_fn = jax.jit(make_loss_fn(model, config))
  before, terms = loss_fn(state.params, batch, key)
  assert set(terms) == {"vama"}
  step = jit(make_train_step(model, config, tx))
  for _ in range(4):
    state, _ = step(state, batch, key)
  after, _ = loss_fn(state.params, batch, key)
  assert float(after) < 0.9 * float(before), (before, after)
  with pytest.raises(ValueError, match="model.stage='vama' pretrains the masked alignment and generates no audio"):
    make_predict_fn(model, config)(state.params, {"frames": batch["frames"]})


def test_every_variant_builds_and_the_vama_rows_start_from_their_ratios_run():
  for variant in foley_flow.VARIANTS:
    config = foley_flow.get_config(variant)
    assert config.task == "v2a" and config.model.source == "gaussian"
  assert foley_flow.get_config("toy").total_steps == 600
  flow = foley_flow.get_config("toy_dynamic_vama")
  assert (flow.model.stage, flow.model.video_injection, flow.model.aligned_video) == ("estimator", "dynamic", True)
  assert not flow.model.cross_attention and flow.inference.cfg == 0.0 and flow.total_steps == 1500
  assert foley_flow.get_config("toy_global").model.video_injection == "global"
  assert foley_flow.parent_variant("toy_dynamic_vama") == "toy"
  assert foley_flow.parent_variant("toy_dynamic_vama_mask0.9") == "toy_vama0.9"
  assert foley_flow.get_config("toy_vama0.9").model.vama.ratio == 0.9
  assert foley_flow.parent_variant("toy_dynamic") is None and foley_flow.parent_variant("toy") is None
  conditioning = ablate.table_conditioning("foleyflow", "toy")
  assert len(conditioning) == 6 and "mean-pooled (global)" in conditioning[
      "VAMA ✗, global injection (our reading of GVAF ✗; Table 2)"]
  commands = ablate.launch_commands("foleyflow", "toy", [0], "/r")
  position = {c.split()[4]: i for i, c in enumerate(commands)}
  assert position["--config=configs/foley_flow.py:toy"] < position["--config=configs/foley_flow.py:toy_dynamic_vama"]
  assert position["--config=configs/foley_flow.py:toy_vama0.5"] < position[
      "--config=configs/foley_flow.py:toy_dynamic_vama_mask0.5"]
  mask09 = next(c for c in commands if "foley_flow.py:toy_dynamic_vama_mask0.9 " in c)
  assert "--config.init_from=/r/tablefoleyflow_toy/foley_flow_toy_vama0.9/seed0 " in mask09
  config = _config("toy_dynamic_vama")
  assert tasks.get(config).frozen_prefixes(config.model) == ("video_encoder",)
  config.model.source = "prior"
  with pytest.raises(ValueError, match="model.aligned_video=True conditions the Gaussian-source DiT"):
    tasks.get(config).loss_fn(None, config)


# The table row the fixture runs: the dynamic flow on the VAMA encoder (its lineage pretrains the VAMA first).
TABLE_ROWS = ("foley_flow:dynamic_vama",)


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  root = tmp_path_factory.mktemp("foleyflow")
  overrides = {k: v for k, v in V2A_TINY.items() if k not in ("total_steps", "eval_every", "checkpoint_every")}
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(TABLES["foleyflow"], "rows", {k: TABLES["foleyflow"]["rows"][k] for k in TABLE_ROWS})
    run = ablate.run_table("foleyflow", "toy", [0], str(root), total_steps=2, overrides=overrides)
    markdown = ablate.markdown(ablate.summarize("foleyflow", "toy", [0], run, str(root)))
  return run, markdown


def test_the_dynamic_vama_run_starts_from_the_vama_run_and_keeps_its_video_encoder(table):
  run, _ = table
  flow_dir = pathlib.Path(run["runs"]["foley_flow_toy_dynamic_vama/0"])
  flow_config = checkpoint.load_config(str(flow_dir))
  vama_dir = pathlib.Path(flow_config.init_from)
  assert vama_dir.parent.name == "foley_flow_toy" and checkpoint.load_config(str(vama_dir)).model.stage == "vama"
  assert not run["wall_s"]["foley_flow_toy/0"]["reused"]
  vama, flow = checkpoint.load_params(str(vama_dir)), checkpoint.load_params(str(flow_dir))
  assert set(flow) == {"dit", "video_encoder"}
  jax.tree.map(np.testing.assert_array_equal, flow["video_encoder"], vama["video_encoder"])
  # ... which the two VAMA steps moved away from where a fresh flow model starts.
  task = tasks.get(flow_config)
  model = task.build(flow_config.model)
  fresh = create_train_state(model, flow_config, _batch(flow_config), make_optimizer(flow_config)).params
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).max(),
                                       fresh["video_encoder"], vama["video_encoder"]))
  assert max(moved) > 0
  report = json.load(open(vama_dir / "eval.json"))
  assert set(report["prediction"]) == {"loss", "vama"} and np.isfinite(report["prediction"]["vama"])


def test_the_table_prints_the_papers_columns_beside_ours(table):
  _, markdown = table
  lines = markdown.splitlines()
  header = next(l for l in lines if l.startswith("| row |"))
  assert "| FD ours | ONSET F1 ours | EVENT ACCURACY ours | FD per seed | KLD paper | FAD paper | ALIGN ACC paper |" \
      in header
  row = next(l for l in lines if l.startswith("| VAMA ✓, dynamic injection, ratio 0.8"))
  assert row.endswith("| 0.97 | 0.52 | 98.97 |")
  assert "VAMA-aligned tokens; x0 ~ N(0, I); no cross-attention; added per latent frame (dynamic)" in markdown

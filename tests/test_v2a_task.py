"""The video-to-audio task (VAFlow): its configs, the loss of each stage and source, what each stage trains, the
guided sampler, and the three stages chained through `init_from` with their evaluation."""
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vaflow
from conftest import V2A_TINY, tiny
from avflow import ablate, flow, tasks
from avflow.data.pipeline import device_batch
from avflow.models.v2a.prior import reparameterize
from avflow.models.v2a.vaflow import VAFlow, frame_features
from avflow.report.html import write_report
from avflow.report.paper_tables import TABLES
from avflow.train import checkpoint
from avflow.train.loop import train
from avflow.train.partition import count_table
from avflow.train.state import abstract_params, create_train_state, make_optimizer
from avflow.train.step import jit, make_loss_fn, make_predict_fn, make_train_step


def _config(variant: str = "toy_prior_frozen", **overrides):
  return tiny(vaflow.get_config(variant), **overrides)


def _batch(config, size: int = 4) -> dict:
  task = tasks.get(config)
  ds = task.dataset(task.source(config.data, "train"), config.data, batch_size=size, seed=0, train=False)
  return device_batch(next(iter(ds)))


def test_every_variant_builds_and_rows_name_their_starting_run():
  for variant in vaflow.VARIANTS:
    config = vaflow.get_config(variant)
    assert config.task == "v2a" and config.model.latent_dim == config.codec.n_mels
  assert vaflow.get_config("toy").model.stage == "prior"
  assert vaflow.get_config("toy_gaussian").model.source == "gaussian"
  assert not vaflow.get_config("toy_no_cross_attention").model.cross_attention
  assert vaflow.get_config("toy_cfg3").inference.cfg == 3.0
  assert vaflow.get_config("toy_midpoint4").inference.method == "midpoint"
  for row, (_, _, starts_from) in vaflow.ROWS.items():
    assert starts_from is None or starts_from == "" or starts_from in vaflow.ROWS, row
  with pytest.raises(ValueError, match="unknown variant 'toy_nope' of vaflow.py"):
    vaflow.get_config("toy_nope")
  with pytest.raises(ValueError, match="model.stage='joint' trains the alignment VAE"):
    tasks.get(_config("toy_gaussian")).loss_fn(None, _config("toy_gaussian", **{"model.stage": "joint"}))
  with pytest.raises(ValueError, match="model.latent_dim=16, but the codec's latent has codec.n_mels=32"):
    tasks.get(_config()).predict_fn(None, _config(**{"codec.n_mels": 32}))


def test_info_counts_the_paper_scale_dit_and_vae():
  """`configs/vaflow.py:paper_*` builds the 142.6M DiT (`presets`), its 16 × 16 colour grid giving CLIP's D_v = 768;
  joint tuning freezes the VAE's decoder path only."""
  config = vaflow.get_config("paper_prior_joint")
  assert config.model.video_dim == 768 and config.model.latent_dim == 64 and config.total_steps == 130_000
  task = tasks.get(config)
  lines = count_table(abstract_params(task.build(config.model), config), task.frozen_prefixes(config.model), 1)
  assert {"dit: 142603072", "prior: 4892544", "params_total: 147495616"} <= set(lines)
  assert lines[2] == "params_frozen: 2069760"


def test_frame_features_pool_each_cell_to_its_mean_colour():
  frames = np.zeros((1, 2, 4, 4, 3), np.uint8)
  frames[0, 1, :2, 2:] = [255, 0, 255]  # the top-right 2 × 2 cell of the second frame
  got = np.asarray(frame_features(jnp.asarray(frames), 2)).reshape(1, 2, 2, 2, 3)
  expected = -np.ones((1, 2, 2, 2, 3))
  expected[0, 1, 0, 1] = [1, -1, 1]
  np.testing.assert_allclose(got, expected)
  with pytest.raises(ValueError, match="do not split into a 3 × 3 grid"):
    frame_features(jnp.asarray(frames), 3)


# variant, overrides, the parameter subtrees that must not move, those that must
STAGES = {
    "prior": ("toy", {}, (), ("prior/encoder", "prior/decoder")),
    "estimator": ("toy_prior_frozen", {}, ("prior",), ("dit",)),
    "gaussian": ("toy_gaussian", {}, (), ("dit",)),
    "joint": ("toy_prior_joint", {}, ("prior/decoder", "prior/output_proj"), ("dit", "prior/encoder",
                                                                              "prior/posterior_proj")),
}


def _subtree(params, path):
  for key in path.split("/"):
    params = params[key]
  return params


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_few_steps_lower_the_stage_loss_and_train_only_its_parts(stage):
  """On one batch and one key (fixed t, x0, dropout), eight Adam steps lower the stage's loss; the frozen parts keep
  their values to the bit, the trained ones move."""
  variant, overrides, frozen, trained = STAGES[stage]
  config = _config(variant, **{"optimizer.learning_rate": 3e-3, "optimizer.schedule": "constant", **overrides})
  task = tasks.get(config)
  model = task.build(config.model)
  batch, key = _batch(config), jax.random.PRNGKey(3)
  tx = make_optimizer(config)
  state = create_train_state(model, config, batch, tx)
  loss_fn = jax.jit(make_loss_fn(model, config))
  before, terms = loss_fn(state.params, batch, key)
  expected_terms = {"prior": {"kl", "reconstruction", "contrastive"}, "joint": {"fm", "kl"}}.get(stage, {"fm"})
  assert set(terms) == expected_terms
  step = jit(make_train_step(model, config, tx))
  start = state.params
  for _ in range(8):
    state, _ = step(state, batch, key)
  after, _ = loss_fn(state.params, batch, key)
  assert float(after) < 0.9 * float(before), (float(before), float(after))
  for path in frozen:
    jax.tree.map(np.testing.assert_array_equal, _subtree(start, path), _subtree(state.params, path))
  for path in trained:
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), _subtree(start, path), _subtree(state.params, path))
    assert all(jax.tree.leaves(moved)), path


def test_joint_loss_adds_the_weighted_kl_to_the_velocity_loss():
  config = _config("toy_prior_joint")
  model = tasks.get(config).build(config.model)
  batch = _batch(config)
  params = tasks.get(config).init(model, jax.random.PRNGKey(0), batch)
  loss, terms = jax.jit(make_loss_fn(model, config))(params, batch, jax.random.PRNGKey(1))
  np.testing.assert_allclose(loss, terms["fm"] + config.prior_loss.kl_weight * terms["kl"], rtol=1e-6)


@pytest.fixture(scope="module")
def sampler():
  """An initialised tiny estimator-stage model (random VAE and DiT, the null condition not zero) and one batch."""
  config = _config()
  model = tasks.get(config).build(config.model)
  batch = _batch(config, 2)
  params = tasks.get(config).init(model, jax.random.PRNGKey(0), batch)
  # The DiT's zero-initialised output projection would make every velocity 0: give it weights.
  out = params["dit"]["output_proj"]
  out["kernel"] = 0.1 * jax.random.normal(jax.random.PRNGKey(5), out["kernel"].shape)
  return config, model, params, {"frames": batch["frames"]}


def _predict(config, model, **inference):
  config = config.copy_and_resolve_references()
  config.inference.update(inference)
  return jax.jit(make_predict_fn(model, config))


def test_cfg_zero_is_the_conditional_sampler_and_cfg_guides_from_the_same_prior_sample(sampler):
  config, model, params, batch = sampler
  variables = {"params": params}
  latent_frames = 63  # 1 s at 8 kHz, hop 128

  @jax.jit
  def conditional(params, frames):
    variables = {"params": params}
    video = model.apply(variables, frames, method=VAFlow.video)
    mu, log_sigma = model.apply(variables, video, latent_frames, method=VAFlow.encode)
    x0 = reparameterize(jax.random.PRNGKey(config.inference.seed), mu, log_sigma)
    keep = jnp.zeros((video.shape[0],), bool)

    def velocity(x, t, cond):
      return model.apply(variables, x, t, cond, keep, method=VAFlow.velocity)
    return flow.integrate(velocity, x0, video, 2, "euler").final, x0

  expected, x0 = conditional(params, batch["frames"])
  got, generation = _predict(config, model, cfg=0.0)(params, batch)
  np.testing.assert_array_equal(got, expected)
  np.testing.assert_array_equal(generation.source, x0)
  assert int(generation.nfe) == 2

  # γ = 2, one Euler step by hand: x0 + (1 + γ)·v(x0, 0, x_v) − γ·v(x0, 0, ∅), both from the same x0.
  video = model.apply(variables, batch["frames"], method=VAFlow.video)
  t0 = jnp.zeros((2,))
  v_cond = model.apply(variables, x0, t0, video, jnp.zeros((2,), bool), method=VAFlow.velocity)
  v_null = model.apply(variables, x0, t0, video, jnp.ones((2,), bool), method=VAFlow.velocity)
  guided, generation = _predict(config, model, cfg=2.0, num_steps=1)(params, batch)
  np.testing.assert_allclose(guided, x0 + 3.0 * v_cond - 2.0 * v_null, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(generation.source, x0)
  assert not np.allclose(v_cond, v_null, atol=1e-4)  # the condition matters, so the guidance does
  assert int(_predict(config, model, method="midpoint", num_steps=3)(params, batch)[1].nfe) == 6


def test_without_cross_attention_the_frames_reach_the_flow_through_the_prior_only(sampler):
  config, model, params, batch = sampler
  config = config.copy_and_resolve_references()
  config.model.cross_attention = False
  model = tasks.get(config).build(config.model)
  video = model.apply({"params": params}, batch["frames"], method=VAFlow.video)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 63, 16))
  t = jnp.full((2,), 0.5)
  with_video = model.apply({"params": params}, x, t, video, jnp.zeros((2,), bool), method=VAFlow.velocity)
  np.testing.assert_array_equal(with_video, model.apply({"params": params}, x, t, jnp.zeros_like(video),
                                                        jnp.zeros((2,), bool), method=VAFlow.velocity))
  guided, generation = _predict(config, model, cfg=3.0)(params, batch)
  np.testing.assert_array_equal(guided, _predict(config, model, cfg=0.0)(params, batch)[0])
  assert int(generation.nfe) == 2


# The ablate rows the stage fixture runs: the frozen and joint stages (their lineage trains the VAE first) and an
# inference-only row that must reuse the joint run.
STAGE_ROWS = ("vaflow:prior_frozen", "vaflow:prior_joint", "vaflow:cfg0")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  """`ablate` on three rows of the VAFlow table, two steps per stage: the VAE's pretraining, the estimator stage
  that starts from it and the joint tuning that starts from the estimator."""
  root = tmp_path_factory.mktemp("vaflow")
  overrides = {k: v for k, v in V2A_TINY.items() if k not in ("total_steps", "eval_every", "checkpoint_every")}
  with pytest.MonkeyPatch.context() as mp:
    mp.setitem(TABLES["vaflow"], "rows", {k: TABLES["vaflow"]["rows"][k] for k in STAGE_ROWS})
    run = ablate.run_table("vaflow", "toy", [0], str(root), total_steps=2, overrides=overrides)
    markdown = ablate.markdown(ablate.summarize("vaflow", "toy", [0], run, str(root)))
  runs = {name: (checkpoint.load_config(run["runs"][f"vaflow_toy_{row}/0"]), pathlib.Path(run["runs"][f"vaflow_toy_{row}/0"]))
          for name, row in (("frozen", "prior_frozen"), ("joint", "prior_joint"), ("cfg0", "cfg0"))}
  prior = pathlib.Path(runs["frozen"][0].init_from)
  runs["prior"] = (checkpoint.load_config(str(prior)), prior)
  return {"runs": runs, "wall": run["wall_s"], "markdown": markdown}


def test_ablate_trains_each_stage_from_the_previous_one_and_reuses_the_joint_run(stages):
  runs, wall = stages["runs"], stages["wall"]
  assert runs["prior"][1].parent.name == "vaflow_toy" and runs["prior"][0].model.stage == "prior"
  assert runs["joint"][0].init_from == str(runs["frozen"][1])
  assert runs["cfg0"][1] == runs["joint"][1] and wall["vaflow_toy_cfg0/0"]["reused"]
  assert not wall["vaflow_toy/0"]["reused"] and wall["vaflow_toy/0"]["train_s"] > 0
  commands = ablate.launch_commands("vaflow", "toy", [0, 1], "/r")
  stage1 = [i for i, c in enumerate(commands) if "configs/vaflow.py:toy " in c]
  joint = next(c for c in commands if "vaflow.py:toy_prior_joint " in c and "seed=1" in c)
  frozen = [i for i, c in enumerate(commands) if "vaflow.py:toy_prior_frozen " in c]
  assert len(stage1) == len(frozen) == 2 and stage1[0] < frozen[0] and stage1[1] < frozen[1]
  assert "--config.init_from=/r/tablevaflow_toy/vaflow_toy_prior_frozen/seed1 " in joint
  assert len(commands) == len(set(commands))


def test_the_table_prints_the_papers_columns_beside_ours(stages):
  lines = stages["markdown"].splitlines()
  header = next(l for l in lines if l.startswith("| row |"))
  assert "| FD ours | ONSET F1 ours | EVENT ACCURACY ours | FD per seed | FD PAS paper |" in header
  frozen = next(l for l in lines if l.startswith("| Video prior, frozen (Table 3) |"))
  assert frozen.endswith("| 111.80 | 57.40 | 82.30 | 25.40 |")
  assert any(l.startswith("The real held-out audio through the codec (the ceiling): FD ") for l in lines)


def test_the_estimator_stage_starts_from_the_pretrained_vae_and_keeps_it(stages):
  params = {name: checkpoint.load_params(str(stages["runs"][name][1])) for name in ("prior", "frozen")}
  assert set(params["prior"]) == {"prior"} and set(params["frozen"]) == {"prior", "dit"}
  jax.tree.map(np.testing.assert_array_equal, params["prior"]["prior"], params["frozen"]["prior"])


def test_evaluation_scores_generated_audio_the_source_and_the_codec(stages):
  prior_report = json.load(open(stages["runs"]["prior"][1] / "eval.json"))
  assert set(prior_report["prediction"]) == {"loss", "kl", "reconstruction", "contrastive"}
  config, workdir = stages["runs"]["frozen"]
  report = json.load(open(workdir / "eval.json"))
  metrics = {"fd", "onset_f1", "onset_precision", "onset_recall", "event_accuracy", "event_label_accuracy"}
  for part in ("prediction", "input", "reconstruction"):
    assert set(report[part]) == metrics and all(np.isfinite(v) for v in report[part].values()), part
  assert report["nfe"] == 2 and report["network_evaluations"] == 4 and report["num_clips"] == 4
  assert report["inference"] == {"solver": "euler", "cfg": 1.0, "num_steps": 2}
  sample = workdir / "samples" / os.listdir(workdir / "samples")[0]
  assert {"prediction.wav", "input.wav", "target.wav", "events.json", "frames"} <= set(os.listdir(sample))
  assert json.load(open(sample / "events.json"))["caption"]


def test_report_page_plays_the_generated_source_and_real_audio_of_each_clip(stages):
  workdir = stages["runs"]["frozen"][1]
  page = open(write_report(str(workdir)), encoding="utf-8").read()
  for stream in ("input", "prediction", "target"):
    assert f'data-stream="{stream}"' in page, stream
  assert "<th>reconstruction (raw)</th>" in page and "<th>FD (log-mel statistics)</th>" in page
  assert "lower is better" in page and "Caption: " in page and "Events the frames show: " in page


def test_prepared_records_train_the_flow_and_are_scored_by_fd(tmp_path):
  """`data.source="records"`: a record's soundtrack generated from its frames (1 fps), scored by FD alone (real
  clips carry no events)."""
  from avflow.data import records
  from test_prepare import SPEC, muddy_clip, write_splits
  for name in ("a", "b", "c", "d"):
    muddy_clip(tmp_path / "in", name)
  write_splits(tmp_path / "in", train=["a", "b"], val=["c", "d"])
  records.prepare(str(tmp_path / "in"), str(tmp_path / "records"), spec=SPEC)
  config = _config("toy_gaussian", total_steps=2, eval_every=2, checkpoint_every=2, batch_size=2,
                   **{"data.source": "records", "data.records_dir": str(tmp_path / "records"),
                      "data.sample_rate": SPEC.sample_rate, "data.clip_seconds": SPEC.clip_seconds,
                      "data.frames_per_second": 1.0, "data.image_size": SPEC.image_size, "eval.batch_size": 1})
  train(config, str(tmp_path / "run"))
  report = json.load(open(tmp_path / "run" / "eval.json"))
  assert set(report["prediction"]) == set(report["reconstruction"]) == {"fd"} and report["num_clips"] == 2
  assert np.isfinite(report["prediction"]["fd"])
  sample = tmp_path / "run" / "samples" / os.listdir(tmp_path / "run" / "samples")[0]
  assert {"prediction.wav", "target.wav", "frames"} <= set(os.listdir(sample)) and "events.json" not in os.listdir(sample)
  with pytest.raises(ValueError, match="do not match config.data"):
    tasks.get(config).source(tiny(vaflow.get_config("toy_gaussian"), **{"data.source": "records",
                                                                      "data.records_dir": str(tmp_path / "records")}).data, "train")

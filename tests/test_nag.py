"""Step-by-step foley with negative audio guidance (NAG): the training pairs, the text conditioning, the ControlNet
branch (zero at initialisation, the only part that trains), the guided field of Eq. 9 and its baselines."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nag as nag_configs
from conftest import V2A_TINY
from avflow import ablate, flow, tasks
from avflow.configs_lib import set_field
from avflow.data import foley
from avflow.data.pipeline import device_batch
from avflow.flow import guidance
from avflow.models.v2a.nag import NAGFoley, WORDS, tokenize
from avflow.report.paper_tables import TABLES
from avflow.metrics import foley as foley_metrics
from avflow.tasks.nag import composite, half_captions, track_scores
from avflow.train.state import create_train_state, make_optimizer
from avflow.train.step import jit, make_train_step

# V2A_TINY without the alignment VAE, with a width-16 text encoder: 0.5 s segments of 4 frames, T_a = 32.
NAG_TINY = {**{k: v for k, v in V2A_TINY.items() if not k.startswith("model.prior")}, "model.text.width": 16,
            "model.text.heads": 2}


def nag_config(variant: str = "toy_control", **overrides):
  config = nag_configs.get_config(variant)
  for path, value in {**NAG_TINY, **overrides}.items():
    set_field(config, path, value)
  return config


def _batch(config, size: int = 4) -> dict:
  task = tasks.get(config)
  ds = task.dataset(task.source(config.data, "train"), config.data, batch_size=size, seed=0, train=False)
  return device_batch(next(iter(ds)))


def _perturbed(params, scale: float = 0.3, seed: int = 0):
  """`params` plus Gaussian noise: a stand-in for trained weights (the zero-initialised projections give v = 0)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def control():
  """A tiny ControlNet-stage config, its model, one batch and its initial parameters."""
  config = nag_config()
  task = tasks.get(config)
  model = task.build(config.model)
  batch = _batch(config)
  return config, model, batch, task.init(model, jax.random.key(0), batch)


def test_training_pairs_take_two_non_overlapping_halves_of_one_clip():
  """Sec. 3.5: the target segment and the conditional audio are the two halves of one clip; the frames are the
  target's; the stem is the captioned class's in the target half."""
  config = nag_config()
  pairs = tasks.get(config).source(config.data, "train")
  clips, half = pairs.clips, pairs.clips.num_samples // 2
  targets = set()
  for i in range(8):
    pair, clip = pairs[i], clips[i]
    t, c = pair["target_start"], pair["condition_start"]
    assert {t, c} == {0, half} and abs(t - c) >= half  # [t, t + half) and [c, c + half) never overlap
    np.testing.assert_array_equal(pair["audio"], clip["audio"][t:t + half])
    np.testing.assert_array_equal(pair["condition_audio"], clip["audio"][c:c + half])
    np.testing.assert_array_equal(pair["stem"], clip["stems"][pair["class"]][t:t + half])
    f = clips.num_frames // 2
    np.testing.assert_array_equal(pair["frames"], clip["frames"][t // half * f:(t // half + 1) * f])
    captions = dict(half_captions(clip, t // half, clips.sample_rate, half))
    np.testing.assert_array_equal(pair["tokens"], tokenize([captions[pair["class"]]], config.data.text_tokens)[0])
    targets.add(t)
    np.testing.assert_array_equal(pair["tokens"], pairs[i]["tokens"])  # deterministic
  assert targets == {0, half}


def test_captions_tokenize_to_the_toy_words():
  ids = tokenize(["A drum is hit twice", "a kazoo hums", ""], 6)
  assert [WORDS[i] for i in ids[0]] == ["a", "drum", "is", "hit", "twice", "<pad>"]
  assert [WORDS[i] for i in ids[1][:3]] == ["a", "<unk>", "<unk>"] and not ids[2].any()
  assert tokenize(["a bell rings, then a drum is hit"], 4).tolist() == tokenize(["a bell rings then"], 4).tolist()


def test_the_controlnet_branch_at_initialisation_is_the_base_bit_for_bit(control):
  """Zero-initialised projections: u_{θ,ψ}(V, ∅, a) = u(V, ∅) exactly at init, for a trained-looking base; with
  non-zero projections the branch moves away from it."""
  config, model, batch, params = control
  base = {**params, "text": _perturbed(params["text"]), "dit": _perturbed(params["dit"], seed=1)}
  video = model.apply({"params": base}, batch["frames"], method=NAGFoley.video)
  b = video.shape[0]
  x = jax.random.normal(jax.random.key(2), (b, 32, config.model.latent_dim))
  t = jnp.linspace(0.1, 0.9, b)
  cond = {"video": video, "tokens": batch["tokens"], "drop_video": jnp.zeros(b, bool), "drop_text": jnp.ones(b, bool)}
  audio = jax.random.normal(jax.random.key(3), x.shape)
  velocity = jax.jit(lambda p, c: model.apply({"params": p}, x, t, c, method=NAGFoley.velocity))
  plain = velocity(base, cond)
  assert float(jnp.abs(plain).max()) > 0.1
  np.testing.assert_array_equal(velocity(base, {**cond, "audio": audio}), plain)
  moved = {**base, "control": _perturbed(base["control"], seed=4)}
  assert float(jnp.abs(velocity(moved, {**cond, "audio": audio}) - plain).max()) > 1e-3


def test_a_control_training_step_changes_only_the_controlnet(control):
  config, model, batch, _ = control
  config = config.copy_and_resolve_references()
  config.optimizer.schedule, config.optimizer.learning_rate = "constant", 1e-3
  tx = make_optimizer(config)
  state = create_train_state(model, config, batch, tx)
  start = {**state.params, "text": _perturbed(state.params["text"]), "dit": _perturbed(state.params["dit"], seed=1)}
  state = state.replace(params=start)
  step = jit(make_train_step(model, config, tx))
  for _ in range(3):  # the first step moves only the zero projections; the blocks behind them follow
    state, _ = step(state, batch, jax.random.key(5))
  for part in ("text", "dit"):
    jax.tree.map(np.testing.assert_array_equal, start[part], state.params[part])
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), start["control"], state.params["control"])
  assert all(jax.tree.leaves(moved))


def test_the_base_learns_the_captioned_stem_and_trains_every_part():
  """Stage "base": eight Adam steps on one batch lower the velocity loss towards the captioned class's stem; the text
  encoder and the DiT both move (there is no ControlNet)."""
  config = nag_config("toy", **{"optimizer.learning_rate": 3e-3, "optimizer.schedule": "constant"})
  task = tasks.get(config)
  model = task.build(config.model)
  batch, key = _batch(config), jax.random.key(3)
  tx = make_optimizer(config)
  state = create_train_state(model, config, batch, tx)
  assert set(state.params) == {"text", "dit"}
  loss_fn = jax.jit(task.loss_fn(model, config))
  before = float(loss_fn(state.params, batch, key)[0])
  silent = {**batch, "stem": jnp.zeros_like(batch["stem"])}
  assert float(loss_fn(state.params, silent, key)[0]) != before  # the target is the stem
  step = jit(make_train_step(model, config, tx))
  start = state.params
  for _ in range(8):
    state, _ = step(state, batch, key)
  assert float(loss_fn(state.params, batch, key)[0]) < 0.9 * before
  for part in ("text", "dit"):
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), start[part], state.params[part])
    assert any(jax.tree.leaves(moved)), part
  # Joint-null dropout (MMAudio's u(∅, ∅)): a dropped example has neither its video nor its caption.
  other = {**batch, "frames": batch["frames"][::-1], "tokens": batch["tokens"][::-1]}
  for rate, same in ((1.0, True), (0.0, False)):
    dropped = jax.jit(task.loss_fn(model, nag_config("toy", condition_dropout=rate)))
    losses = [float(dropped(state.params, b, key)[0]) for b in (batch, other)]
    assert (losses[0] == losses[1]) == same, (rate, losses)


def _predict(config, model, params, batch, **inference):
  """The sample, compiled with XLA's default CPU fusion emitters (conftest turns them off for compile speed): with
  them this model's 2- and 3-branch calls agree bit for bit; the older loop emitters round some rows differently by
  batch size."""
  config = config.copy_and_resolve_references()
  for name, value in inference.items():
    set_field(config, f"inference.{name}", value)
  options = {"xla_cpu_use_fusion_emitters": True} if jax.default_backend() == "cpu" else {}
  return jax.jit(tasks.get(config).predict_fn(model, config), compiler_options=options)(params, batch)[0]


def test_nag_with_beta_zero_is_cfg_and_beta_steers_the_track(control):
  """Eq. 9 with β = 0 is Eq. 3 (plain CFG) exactly, on the real model with a non-zero ControlNet branch."""
  config, model, batch, params = control
  params = _perturbed(params)
  inputs = {"frames": batch["frames"], "tokens": batch["tokens"]}
  cfg = _predict(config, model, params, inputs, guidance="cfg")
  with_audio = {**inputs, "condition_audio": batch["condition_audio"]}
  np.testing.assert_array_equal(_predict(config, model, params, with_audio, beta=0.0), cfg)
  np.testing.assert_array_equal(_predict(config, model, params, inputs), cfg)  # the first track: no a, plain CFG
  assert float(jnp.abs(_predict(config, model, params, with_audio) - cfg).max()) > 1e-3


def test_negative_prompting_puts_the_other_captions_in_the_null_branch(control):
  """One Euler step of the negative-prompting field is x0 + u(∅,C_neg) + α·(u(V,C) − u(∅,C_neg)), each branch its
  own call."""
  config, model, batch, params = control
  params = _perturbed(params)
  negative = jnp.asarray(tokenize(["a bell rings, then a whistle blows"] * 4, config.data.text_tokens))
  inputs = {"frames": batch["frames"], "tokens": batch["tokens"], "negative_tokens": negative}
  got = _predict(config, model, params, inputs, guidance="negative_prompt", num_steps=1)
  variables = {"params": params}
  video = model.apply(variables, batch["frames"], method=NAGFoley.video)
  b, alpha = video.shape[0], config.inference.alpha
  x0 = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(config.inference.seed), 0), got.shape)
  u = lambda tokens, drop_video: model.apply(
      variables, x0, jnp.zeros(b), {"video": video, "tokens": tokens, "drop_video": jnp.full(b, drop_video),
                                    "drop_text": jnp.zeros(b, bool)}, method=NAGFoley.velocity)
  positive, null = u(batch["tokens"], False), u(negative, True)
  np.testing.assert_allclose(got, x0 + null + alpha * (positive - null), rtol=1e-4, atol=1e-4)
  assert guidance.negative_prompt(alpha) == guidance.mmaudio_cfg(alpha)


def _gaussian_velocity(mean: jax.Array, s: float):
  """The exact velocity E[x1 − x0 | x_t] of x_t = (1 − t)·x0 + t·x1, x0 ~ 𝒩(0, I), x1 ~ 𝒩(mean, s²I)."""
  def velocity(x, t, cond):
    t = t[:, None]
    gain = (t * s ** 2 - (1 - t)) / ((1 - t) ** 2 + t ** 2 * s ** 2)
    return mean + gain * (x - t * mean)
  return velocity


def test_the_nag_field_moves_samples_away_from_the_negative_component():
  """Closed-form Gaussian branches: u(V,C) → the captioned sound's mean, u(∅,∅) → the overall mean, u(V,∅,a) →
  the mean of the sound already generated. Raising β pushes every sample further from the negative's mean, along
  the direction from it to the captioned one, and β = 0 is CFG."""
  positive, negative = jnp.array([1.0, 0.0]), jnp.array([0.6, 0.8])
  fields = (_gaussian_velocity(positive, 0.3), _gaussian_velocity((positive + negative) / 2, 0.5),
            _gaussian_velocity(negative, 0.3))
  x0 = jax.random.normal(jax.random.key(0), (64, 2))
  conds = (None, None, None)

  def sample(alpha, beta):
    field = guidance.combine(list(zip(fields, guidance.nag(alpha, beta))))
    return flow.integrate(field, x0, conds, 32, "euler").final

  cfg = flow.integrate(guidance.combine(list(zip(fields[:2], guidance.mmaudio_cfg(2.0)))), x0, conds[:2], 32,
                       "euler").final
  np.testing.assert_allclose(sample(2.0, 0.0), cfg, rtol=1e-6, atol=1e-6)
  away = (positive - negative) / jnp.linalg.norm(positive - negative)
  previous = cfg
  for beta in (0.5, 1.5, 3.0):
    guided = sample(2.0, beta)
    step = (guided - previous) @ away
    assert bool(jnp.all(step > 0)), (beta, step)  # every sample moved away from the negative
    assert float(jnp.linalg.norm(guided - negative, axis=1).mean()) > float(
        jnp.linalg.norm(previous - negative, axis=1).mean())
    previous = guided


def test_the_composite_is_the_tracks_sum_at_minus_20_lufs():
  from avflow.metrics.loudness import integrated_loudness
  tracks = np.stack([foley.ToyFoley(num_clips=1, seed=3)[0]["stems"][c] for c in range(len(foley.CLASSES))])
  mix = composite(tracks, 8000)
  assert abs(integrated_loudness(mix, 8000) + 20.0) < 1e-3
  ratio = mix[np.abs(tracks.sum(0)) > 1e-3] / tracks.sum(0)[np.abs(tracks.sum(0)) > 1e-3]
  np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
  assert not composite(np.zeros((2, 800)), 8000).any()


def test_configs_name_their_starting_run_and_check_their_fields():
  for variant in nag_configs.VARIANTS:
    config = nag_configs.get_config(variant)
    assert config.task == "nag" and config.model.text.tokens == config.data.text_tokens
  assert nag_configs.get_config("toy").model.stage == "base"
  assert nag_configs.get_config("toy_control").inference.guidance == "nag"
  assert nag_configs.parent_variant("toy_a2.5_b0") == "toy" and nag_configs.parent_variant("toy") is None
  rows = ablate.table_rows("nag", "toy")
  assert {row.variant for row in rows} <= set(nag_configs.VARIANTS) and len(rows) == 11
  assert TABLES["nag"]["rows"]["nag:control"]["clap_aa"] == 74.74
  assert {row.key: ablate.parent_row(row).variant for row in rows}["nag:negative_prompt"] == "toy"
  task = tasks.get(nag_config())
  with pytest.raises(ValueError, match="inference.guidance='nag' needs the ControlNet"):
    task.predict_fn(None, nag_config("toy", **{"inference.guidance": "nag"}))
  with pytest.raises(ValueError, match="data.text_tokens=8, but the text encoder reads model.text.tokens=16"):
    task.loss_fn(None, nag_config(**{"data.text_tokens": 8}))


def test_track_scores_measure_independence_fidelity_and_the_composites_fd():
  """Identical tracks have independence 1, the stems of different classes far less; each class's real stem is heard as its class by the toy classifier, and
  a track captioned with another class is not."""
  clips = foley.ToyFoley(num_clips=24, seed=5, split="val")
  items = [clips[i] for i in range(len(clips))]
  two = [clip for clip in items if len(clip["class_captions"]) >= 2][:4]
  stems = [np.stack([clip["stems"][k] for k, _ in clip["class_captions"][:2]]) for clip in two]
  classes = [[k for k, _ in clip["class_captions"][:2]] for clip in two]
  reference = [clip["audio"] for clip in items]
  classifier = foley_metrics.train_event_classifier(
      [(clip["audio"], [c for _, c in clip["events"]]) for clip in map(foley.ToyFoley(num_clips=64, seed=5).__getitem__,
                                                                        range(64))], 8000, len(foley.CLASSES))
  mixes = [composite(s, 8000) for s in stems]
  real = [clip["stems"][k] for clip in items for k, _ in clip["class_captions"]]
  scores = track_scores(stems, classes, mixes, reference, real, classifier, 8000)
  assert scores["tracks"] == 8 and scores["fidelity"] >= 0.75 and np.isfinite(scores["fd"])
  same = track_scores([np.stack([s[0], s[0]]) for s in stems], [[c[0], c[0]] for c in classes], mixes, reference,
                      real, classifier, 8000)
  assert same["independence"] == pytest.approx(1.0) and scores["independence"] < 0.9, scores
  wrong = track_scores(stems, [[(c + 1) % 4 for c in cs] for cs in classes], mixes, reference, real, classifier,
                       8000)
  assert wrong["fidelity"] < scores["fidelity"]

"""The VAFlow DiT velocity field: sizes (the paper's 142M from `eval_shape`), rotary positions, the time token,
the video condition and its null for classifier-free guidance, and a training step."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avflow.models.v2a import presets
from avflow.models.v2a.codec import MelCodec
from avflow.models.v2a.dit import VelocityDiT, injected_video, parameter_counts
from avflow.nn.attention import Attention
from avflow.nn.embeddings import rotary_embedding


def _closed_form_count(cfg) -> int:
  """Weights of the documented architecture, written out: projections, time MLP, blocks, output."""
  w, d_a, d_v, e = cfg.width, cfg.latent_dim, cfg.video_dim, cfg.time_embed_dim
  block = (3 * 2 * w  # three LayerNorms
           + 3 * w * w + w * w + w  # self-attention: q, k, v, out (+ bias)
           + w * w + 2 * w * d_v + w * w + w  # cross-attention: q from x, k and v from the video, out
           + w * 8 * w + 8 * w + 4 * w * w + w)  # GEGLU: w -> 2 x 4w, 4w -> w
  return (w * d_a + w) + (e * w + w + w * w + w) + cfg.depth * block + (2 * w + w * d_a + d_a)


def test_paper_has_142m_parameters():
  counts = parameter_counts(presets.model_config("paper"))  # jax.eval_shape: nothing is allocated
  print(f"VAFlow paper DiT: {counts['total']:,} parameters ({counts})")
  assert counts["total"] == _closed_form_count(presets.model_config("paper")) == 142_603_072
  assert abs(counts["total"] - 142e6) < 0.01 * 142e6
  assert counts["null"] == 0
  for scale in ("toy", "small"):
    assert parameter_counts(presets.model_config(scale))["total"] == _closed_form_count(presets.model_config(scale))
  assert 100_000 < parameter_counts(presets.model_config("toy"))["total"] < 200_000
  learned = presets.model_config("paper")
  learned.learned_null = True
  assert parameter_counts(learned)["null"] == 768


def test_toy_latent_width_is_the_codec_width():
  assert MelCodec(**presets.codec_config()).latent_dim == presets.model_config("toy").latent_dim


def test_rotary_embedding_rotates_pairs_by_position():
  rng = np.random.default_rng(0)
  heads, d_head, rope_dim, length = 2, 12, 8, 5
  x = rng.standard_normal((1, length, heads * d_head)).astype(np.float32)
  positions = np.array([0.0, 1.0, 3.0, 7.0, 20.0])
  out = np.asarray(rotary_embedding(jnp.asarray(x), positions, heads, rope_dim)).reshape(1, length, heads, d_head)
  xh = x.reshape(1, length, heads, d_head)
  half = rope_dim // 2
  theta = 10000.0**(-np.arange(half) / half)
  z = (xh[..., :half] + 1j * xh[..., half:rope_dim]) * np.exp(1j * positions[None, :, None, None] * theta)
  np.testing.assert_allclose(out[..., :half], z.real, atol=1e-5)
  np.testing.assert_allclose(out[..., half:rope_dim], z.imag, atol=1e-5)
  np.testing.assert_array_equal(out[..., rope_dim:], xh[..., rope_dim:])
  with pytest.raises(ValueError, match="rope_dim must be even"):
    rotary_embedding(jnp.asarray(x), positions, heads, 7)


def test_rotary_scores_depend_on_relative_positions_only():
  rng = np.random.default_rng(1)
  heads, d_head, length = 2, 16, 6
  q, k = (jnp.asarray(rng.standard_normal((1, length, heads * d_head)), jnp.float32) for _ in range(2))

  def scores(shift):
    positions = jnp.arange(length) + shift
    rq, rk = (rotary_embedding(a, positions, heads, d_head).reshape(length, heads, d_head) for a in (q, k))
    return jnp.einsum("qhd,khd->hqk", rq, rk)

  base = scores(0.0)
  for shift in (1.0, 17.0, 250.0):
    np.testing.assert_allclose(scores(shift), base, rtol=1e-4, atol=1e-4)
  plain = jnp.einsum("qhd,khd->hqk", q.reshape(length, heads, d_head), k.reshape(length, heads, d_head))
  assert np.abs(np.asarray(base - plain)).max() > 0.1  # the positions do change the scores


def test_rotary_attention_refuses_a_context():
  attention = Attention(heads=2, dim_head=4, rope_dim=4)
  x = jnp.zeros((1, 3, 8))
  with pytest.raises(ValueError, match="for self-attention"):
    attention.init(jax.random.key(0), x, x)


def _inputs(cfg, batch=2, frames=6, video_frames=3, seed=0):
  rng = np.random.default_rng(seed)
  x_t = jnp.asarray(rng.standard_normal((batch, frames, cfg.latent_dim)), jnp.float32)
  video = jnp.asarray(rng.standard_normal((batch, video_frames, cfg.video_dim)), jnp.float32)
  t = jnp.asarray(rng.uniform(0, 1, batch), jnp.float32)
  return x_t, t, video


def _random_params(cfg, *inputs, seed=0, scale=0.2):
  """Every leaf (zero-initialised output and null token included) drawn from N(0, scale²); shapes from eval_shape."""
  shapes = jax.eval_shape(VelocityDiT(cfg).init, jax.random.key(0), *inputs)["params"]
  rng = np.random.default_rng(seed)
  return {"params": jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * scale, jnp.float32), shapes)}


@functools.lru_cache(maxsize=None)
def _apply(learned_null: bool):
  cfg = presets.model_config("toy")
  cfg.learned_null = learned_null
  return cfg, jax.jit(VelocityDiT(cfg).apply)


def test_shapes_zero_velocity_at_init_and_jit():
  cfg, apply = _apply(False)
  x_t, t, video = _inputs(cfg)
  params = VelocityDiT(cfg).init(jax.random.key(0), x_t, t, video)
  assert params["params"]["blocks"]["attn1"]["to_q"]["kernel"].shape == (cfg.depth, cfg.width, cfg.width)
  v = apply(params, x_t, t, video)
  assert v.shape == x_t.shape
  np.testing.assert_array_equal(v, 0.0)  # zero-initialised output projection
  params = _random_params(cfg, x_t, t, video)
  np.testing.assert_allclose(apply(params, x_t, t, video), VelocityDiT(cfg).apply(params, x_t, t, video),
                             rtol=1e-4, atol=1e-4)


def test_time_token_and_positions_change_the_velocity():
  cfg, apply = _apply(False)
  x_t, t, video = _inputs(cfg)
  params = _random_params(cfg, x_t, t, video)
  v = np.asarray(apply(params, x_t, t, video))
  assert np.abs(v - np.asarray(apply(params, x_t, 1.0 - t, video))).max() > 1e-2
  # Without positions, attention is equivariant to reordering the audio tokens; RoPE breaks that.
  reversed_v = np.asarray(apply(params, x_t[:, ::-1], t, video))[:, ::-1]
  assert np.abs(v - reversed_v).max() > 1e-2


def test_video_condition_and_zero_null():
  cfg, apply = _apply(False)
  x_t, t, video = _inputs(cfg)
  other = _inputs(cfg, seed=1)[2]
  params = _random_params(cfg, x_t, t, video)
  v = np.asarray(apply(params, x_t, t, video))
  assert np.abs(v - np.asarray(apply(params, x_t, t, other))).max() > 1e-2
  drop = jnp.array([True, False])
  dropped = np.asarray(apply(params, x_t, t, video, drop))
  np.testing.assert_allclose(dropped[1], v[1], atol=1e-5)  # the kept example is untouched
  assert np.abs(dropped[0] - v[0]).max() > 1e-2
  # ∅ is zero features: whatever the video (of any length), the dropped example sees the same condition.
  np.testing.assert_allclose(dropped[0], np.asarray(apply(params, x_t, t, other[:, :1], drop))[0], atol=1e-5)
  np.testing.assert_allclose(dropped[0], np.asarray(apply(params, x_t, t, jnp.zeros_like(video)))[0], atol=1e-5)


def test_learned_null_token():
  cfg, apply = _apply(True)
  x_t, t, video = _inputs(cfg)
  params = _random_params(cfg, x_t, t, video)
  null = params["params"]["null_video"]
  assert null.shape == (cfg.video_dim,)
  drop = jnp.ones((2,), bool)
  dropped = np.asarray(apply(params, x_t, t, video, drop))
  as_video = jnp.broadcast_to(null, video.shape)
  np.testing.assert_allclose(dropped, np.asarray(apply(params, x_t, t, as_video)), atol=1e-5)
  _, zero_apply = _apply(False)
  zero_params = {"params": {k: p for k, p in params["params"].items() if k != "null_video"}}
  assert np.abs(dropped - np.asarray(zero_apply(zero_params, x_t, t, video, drop))).max() > 1e-2
  init = VelocityDiT(cfg).init(jax.random.key(0), x_t, t, video)["params"]["null_video"]
  np.testing.assert_array_equal(init, 0.0)  # starts as the paper's zero condition


def test_gradient_steps_reduce_an_l2_loss():
  cfg, _ = _apply(False)
  x_t, t, video = _inputs(cfg, frames=5, video_frames=2)
  target = jnp.asarray(np.random.default_rng(2).standard_normal(x_t.shape), jnp.float32)
  model = VelocityDiT(cfg)
  params = model.init(jax.random.key(0), x_t, t, video)["params"]
  tx = optax.adam(1e-2)
  drop = jnp.array([False, True])

  @jax.jit
  def step(params, opt_state):
    loss_fn = lambda p: jnp.mean((model.apply({"params": p}, x_t, t, video, drop) - target)**2)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(4):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.all(np.diff(losses) < 0) and losses[-1] < 0.95 * losses[0], losses


def test_config_and_input_errors():
  cfg, _ = _apply(False)
  x_t, t, video = _inputs(cfg)
  bad = presets.model_config("toy")
  bad.heads = 3
  with pytest.raises(ValueError, match="model.width=64 is not divisible by model.heads=3"):
    VelocityDiT(bad).init(jax.random.key(0), x_t, t, video)
  with pytest.raises(ValueError, match="model.video_dim=64"):
    VelocityDiT(cfg).init(jax.random.key(0), x_t, t, video[..., :8])
  with pytest.raises(ValueError, match="unknown VAFlow scale"):
    presets.model_config("huge")


def _injection_cfg(injection: str, cross_attention: bool = True):
  cfg = presets.model_config("toy")
  cfg.video_injection = injection
  cfg.cross_attention = cross_attention
  return cfg


def _numpy_resample(video: np.ndarray, frames: int) -> np.ndarray:
  """Linear interpolation in time, written with np.interp: latent frame i at (i + ½)·T_v/T_a − ½, clamped."""
  positions = np.clip((np.arange(frames) + 0.5) * video.shape[1] / frames - 0.5, 0, video.shape[1] - 1)
  grid = np.arange(video.shape[1])
  return np.stack([np.stack([np.interp(positions, grid, v[:, c]) for c in range(v.shape[1])], -1) for v in video])


def test_injected_video_is_linear_interpolation_or_the_mean():
  video = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
  for frames in (13, 5, 3):
    np.testing.assert_allclose(injected_video(jnp.asarray(video), frames, "dynamic"), _numpy_resample(video, frames),
                               rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(injected_video(jnp.asarray(video), 13, "global"), video.mean(1, keepdims=True),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="model.video_injection='none' injects nothing"):
    injected_video(jnp.asarray(video), 13, "none")
  with pytest.raises(ValueError, match="model.video_injection='frames'; expected one of"):
    VelocityDiT(_injection_cfg("frames")).init(jax.random.key(0), *_inputs(presets.model_config("toy")))


@pytest.mark.parametrize("injection", ["dynamic", "global"])
def test_injection_starts_as_the_model_without_it(injection):
  """The zero-initialised projection is the only new parameter; with it the velocity is the un-injected one's to the
  bit (the output projection given weights so that the velocity is not 0)."""
  cfg = _injection_cfg(injection)
  inputs = _inputs(cfg)
  with_injection = VelocityDiT(cfg).init(jax.random.key(0), *inputs)["params"]
  without = VelocityDiT(presets.model_config("toy")).init(jax.random.key(0), *inputs)["params"]
  assert set(with_injection) - set(without) == {"video_proj"} and set(with_injection["video_proj"]) == {"kernel"}
  np.testing.assert_array_equal(with_injection["video_proj"]["kernel"], 0.0)
  out = 0.1 * jax.random.normal(jax.random.key(5), without["output_proj"]["kernel"].shape)
  for params in (with_injection, without):
    params["output_proj"]["kernel"] = out
  v = VelocityDiT(presets.model_config("toy")).apply({"params": without}, *inputs)
  assert np.abs(v).max() > 1e-3
  np.testing.assert_array_equal(VelocityDiT(cfg).apply({"params": with_injection}, *inputs), v)
  assert parameter_counts(cfg)["injection"] == cfg.video_dim * cfg.width


def _injected_term(cfg, params, x_t, t, video, drop=None):
  """The term `video_proj` adds to the latent tokens, read from the model's intermediates."""
  _, state = VelocityDiT(cfg).apply(params, x_t, t, video, drop, capture_intermediates=True,
                                    mutable=["intermediates"])
  return np.asarray(state["intermediates"]["video_proj"]["__call__"][0])


def test_dynamic_term_at_a_latent_frame_reads_the_two_video_frames_around_it():
  cfg = _injection_cfg("dynamic", cross_attention=False)
  x_t, t, video = _inputs(cfg, frames=13, video_frames=4)
  params = _random_params(cfg, x_t, t, video)
  term = _injected_term(cfg, params, x_t, t, video)
  assert term.shape == (2, 13, cfg.width)
  positions = np.clip((np.arange(13) + 0.5) * 4 / 13 - 0.5, 0, 3)
  for frame in range(4):
    moved = _injected_term(cfg, params, x_t, t, video.at[:, frame].add(1.0))
    changed = np.flatnonzero(np.abs(moved - term).max(axis=(0, 2)) > 1e-6)
    around = np.flatnonzero((np.floor(positions) == frame) | ((np.ceil(positions) == frame) & (positions % 1 > 0)))
    np.testing.assert_array_equal(changed, around)
  # The null condition injects exactly zero; without cross-attention the injection is the video's only path.
  dropped = _injected_term(cfg, params, x_t, t, video, jnp.array([True, False]))
  np.testing.assert_array_equal(dropped[0], 0.0)
  np.testing.assert_array_equal(dropped[1], term[1])
  apply = VelocityDiT(cfg).apply
  assert np.abs(apply(params, x_t, t, video) - apply(params, x_t, t, 2 * video)).max() > 1e-3
  no_path = _injection_cfg("none", cross_attention=False)
  base = {"params": {k: v for k, v in params["params"].items() if k != "video_proj"}}
  np.testing.assert_array_equal(VelocityDiT(no_path).apply(base, x_t, t, video),
                                VelocityDiT(no_path).apply(base, x_t, t, 2 * video))


def test_global_term_is_the_same_at_every_latent_frame_and_reads_every_video_frame():
  cfg = _injection_cfg("global", cross_attention=False)
  x_t, t, video = _inputs(cfg, frames=13, video_frames=4)
  params = _random_params(cfg, x_t, t, video)
  term = _injected_term(cfg, params, x_t, t, video)
  assert term.shape == (2, 1, cfg.width)  # one vector, broadcast over the 13 latent tokens
  expected = video.mean(axis=1, keepdims=True) @ params["params"]["video_proj"]["kernel"]
  np.testing.assert_allclose(term, expected, rtol=1e-5, atol=1e-5)
  for frame in range(4):
    assert np.abs(_injected_term(cfg, params, x_t, t, video.at[:, frame].add(1.0)) - term).min() > 0

"""The DDPM of DAVIS: sigmoid schedule, q_sample, ε-prediction loss, DDIM sampling with a per-step hook."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow import flow
from avflow.flow import diffusion

KEY = jax.random.PRNGKey(0)
CFG = flow.DiffusionConfig()


def _closed_form(u, start=0.0, end=3.0, tau=1.0):
  """The sigmoid schedule's continuous ᾱ(u), with the logistic written as (1 + tanh(v/2))/2."""
  logistic = lambda v: 0.5 * (1.0 + np.tanh(0.5 * v))
  v_start, v_end = logistic(start / tau), logistic(end / tau)
  return (v_end - logistic((u * (end - start) + start) / tau)) / (v_end - v_start)


def _data(batch=2, shape=(4, 6, 1), seed=0):
  k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.uniform(k0, (batch,) + shape), jax.random.normal(k1, (batch,) + shape)


@pytest.mark.parametrize("timesteps,start,end,tau", [(1000, 0.0, 3.0, 1.0), (50, -3.0, 3.0, 0.9)])
def test_sigmoid_schedule_against_its_closed_form(timesteps, start, end, tau):
  alpha_bar = np.asarray(diffusion.sigmoid_alpha_bar(timesteps, start, end, tau), np.float64)
  assert alpha_bar.shape == (timesteps,)
  assert np.all(alpha_bar > 0.0) and np.all(alpha_bar <= 1.0) and np.all(np.diff(alpha_bar) < 0.0)
  # Before the β clip binds, ᾱ_i is the continuous schedule one step later; the last β is clipped to 0.999.
  u = np.arange(1, timesteps) / timesteps
  np.testing.assert_allclose(alpha_bar[:-1], _closed_form(u, start, end, tau), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(alpha_bar[-1], 0.001 * _closed_form(u[-1], start, end, tau), rtol=1e-4)


def test_default_schedule_and_config():
  np.testing.assert_array_equal(CFG.alpha_bar(), diffusion.sigmoid_alpha_bar(1000))
  cfg = flow.DiffusionConfig.from_config({"sampling_steps": 4, "eta": 0.0, "loss": "l2"})
  assert (cfg.timesteps, cfg.sampling_steps, cfg.eta, cfg.loss, cfg.clip_x0) == (1000, 4, 0.0, "l2", True)
  with pytest.raises(ValueError, match=r"unknown diffusion fields \['steps'\]"):
    flow.DiffusionConfig.from_config({"steps": 4})
  with pytest.raises(ValueError, match=r"sampling_steps must be in \[1, timesteps=1000\]"):
    flow.DiffusionConfig(sampling_steps=1001)
  with pytest.raises(ValueError, match="diffusion.loss='huber'"):
    flow.DiffusionConfig(loss="huber")
  with pytest.raises(ValueError, match="eta must be ≥ 0"):
    flow.DiffusionConfig(eta=-1.0)


def test_ddim_grid():
  assert diffusion.ddim_timesteps(1000, 15).tolist() == [999, 932, 865, 799, 732, 665, 599, 532, 465, 399, 332, 265,
                                                         199, 132, 65, -1]
  assert diffusion.ddim_timesteps(5, 5).tolist() == [4, 3, 2, 1, 0, -1]


def test_q_sample_identity():
  x_data, x_noise = _data()
  alpha_bar = jnp.array([0.81, 0.36])
  expected = np.array([0.9, 0.6])[:, None, None, None] * np.asarray(x_data) + \
      np.array([np.sqrt(0.19), 0.8])[:, None, None, None] * np.asarray(x_noise)
  np.testing.assert_allclose(flow.q_sample(x_data, x_noise, alpha_bar), expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(flow.q_sample(x_data, x_noise, jnp.ones(2)), x_data)


def _eps_field(x, t, c):
  return 0.9 * x + c * t[:, None, None, None]


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_diffusion_loss_equals_numpy(loss):
  x_data, cond = _data(batch=3)
  cfg = flow.DiffusionConfig(loss=loss)
  value, terms = flow.diffusion_loss(_eps_field, x_data, cond, KEY, cfg)
  t_key, noise_key = jax.random.split(KEY)
  i = np.asarray(jax.random.randint(t_key, (3,), 0, 1000))
  noise = np.asarray(jax.random.normal(noise_key, x_data.shape), np.float64)
  a = np.asarray(CFG.alpha_bar(), np.float64)[i][:, None, None, None]
  x_t = np.sqrt(a) * np.asarray(x_data) + np.sqrt(1 - a) * noise
  err = 0.9 * x_t + np.asarray(cond) * (i / 1000)[:, None, None, None] - noise
  expected = np.mean(np.abs(err) if loss == "l1" else err ** 2)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert terms == {"eps": value}


def _oracle(x_data, alpha_bar):
  """ε_θ that returns the true noise of x_t around the fixed x_data at its level ᾱ_{tT}."""
  def eps_fn(x, t, c):
    a = alpha_bar[jnp.round(t * 1000).astype(jnp.int32)][:, None, None, None]
    return (x - jnp.sqrt(a) * x_data) / jnp.sqrt(1.0 - a)
  return eps_fn


@pytest.mark.parametrize("eta,clip", [(0.0, False), (0.0, True), (1.0, True)])
def test_ddim_with_the_oracle_noise_recovers_the_data(eta, clip):
  x_data, x_noise = _data()
  cfg = flow.DiffusionConfig(eta=eta, clip_x0=clip)
  traj = flow.ddim_sample(_oracle(x_data, cfg.alpha_bar()), x_noise, None, cfg, key=KEY)
  assert traj.states.shape == (16,) + x_data.shape and np.all(np.isfinite(traj.states))
  np.testing.assert_array_equal(traj.states[0], x_noise)
  np.testing.assert_array_equal(traj.timesteps, diffusion.ddim_timesteps(1000, 15))
  np.testing.assert_allclose(traj.final, x_data, atol=1e-5)


def test_ddim_eta_needs_a_key_and_stays_finite():
  x_data, x_noise = _data()
  with pytest.raises(ValueError, match="needs a PRNG key"):
    flow.ddim_sample(_eps_field, x_noise, x_data, CFG)
  a = flow.ddim_sample(_eps_field, x_noise, x_data, CFG, key=KEY)
  b = flow.ddim_sample(_eps_field, x_noise, x_data, CFG, key=jax.random.PRNGKey(1))
  assert np.all(np.isfinite(a.states)) and np.all(np.isfinite(b.states))
  assert not np.allclose(a.states[1], b.states[1])  # η = 1 draws fresh noise at each step.


@pytest.mark.parametrize("clip", [True, False])
def test_ddim_clips_the_predicted_data(clip):
  _, x_noise = _data()
  cfg = flow.DiffusionConfig(eta=0.0, sampling_steps=4, clip_x0=clip)
  traj = flow.ddim_sample(lambda x, t, c: jnp.zeros_like(x), x_noise, None, cfg)
  # With ε̂ = 0 the last step returns x̂_data = x_t/√ᾱ from the state before it.
  unclipped = np.asarray(traj.states[-2]) / np.sqrt(float(cfg.alpha_bar()[traj.timesteps[-2]]))
  expected = np.clip(unclipped, 0.0, 1.0) if clip else unclipped
  np.testing.assert_allclose(traj.final, expected, rtol=1e-6)
  assert (float(traj.final.min()) >= 0.0 and float(traj.final.max()) <= 1.0) == clip


def _ddim_reference(eps_fn, x_noise, cond, cfg, key, mask, reference):
  """DDIM as DAVIS's sampler writes it, in float64 numpy: the silence mask replaces x̂_data by the mixture."""
  alpha_bar = np.asarray(cfg.alpha_bar(), np.float64)
  grid = diffusion.ddim_timesteps(cfg.timesteps, cfg.sampling_steps)
  keys = jax.random.split(key, cfg.sampling_steps)
  x, states = np.asarray(x_noise, np.float64), [np.asarray(x_noise, np.float64)]
  for step, (i, i_next) in enumerate(zip(grid[:-1], grid[1:])):
    eps = np.asarray(eps_fn(jnp.asarray(x, jnp.float32), jnp.full((x.shape[0],), i / cfg.timesteps), cond),
                     np.float64)
    a, a_next = alpha_bar[i], (alpha_bar[i_next] if i_next >= 0 else 1.0)
    x_data = np.clip((x - np.sqrt(1 - a) * eps) / np.sqrt(a), 0.0, 1.0)
    x_data = np.where(mask, reference, x_data)
    sigma = cfg.eta * np.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
    z = np.asarray(jax.random.normal(keys[step], x.shape), np.float64)
    x = np.sqrt(a_next) * x_data + np.sqrt(max(1 - a_next - sigma ** 2, 0.0)) * eps + sigma * z
    states.append(x)
  return np.stack(states)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_silence_mask_hook_matches_the_replacement_of_the_predicted_data(eta):
  mix, x_noise = _data(seed=3)
  mix = mix.at[:, :, :2].set(0.0)  # Silent bins of the mixture.
  mask = mix < 2e-3
  cfg = flow.DiffusionConfig(eta=eta, sampling_steps=5)
  traj = flow.ddim_sample(_eps_field, x_noise, mix, cfg, key=KEY, hook=diffusion.masked_replacement(mask, mix))
  expected = _ddim_reference(_eps_field, x_noise, mix, cfg, KEY, np.asarray(mask), np.asarray(mix, np.float64))
  np.testing.assert_allclose(traj.states, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(np.asarray(traj.final)[np.asarray(mask)], 0.0)
  plain = flow.ddim_sample(_eps_field, x_noise, mix, cfg, key=KEY)
  empty = flow.ddim_sample(_eps_field, x_noise, mix, cfg, key=KEY,
                           hook=diffusion.masked_replacement(jnp.zeros(mix.shape, bool), mix))
  np.testing.assert_allclose(empty.states, plain.states, rtol=1e-6, atol=1e-6)
  assert not np.allclose(traj.final, plain.final)

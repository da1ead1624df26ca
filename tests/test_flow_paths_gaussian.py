"""The flow core for DAVIS-Flow: σ_min paths, Gaussian source, L1 terms, logit-normal times, per-step hooks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow import flow
from avflow.flow import objectives

KEY = jax.random.PRNGKey(0)
SIGMA = 0.05  # Larger than DAVIS-Flow's 1e-4 so that every σ term is visible at float32 tolerance.


def _pair(batch=3, dim=5, seed=0, dtype=jnp.float32):
  k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k0, (batch, dim, 1)).astype(dtype), jax.random.normal(k1, (batch, dim, 1)).astype(dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_zero_sigma_path_is_bit_identical_to_the_straight_line(dtype):
  x0, x1 = _pair(batch=8, dim=33, dtype=dtype)
  t = jax.random.uniform(KEY, (8,))

  def straight(x0, x1, t):
    t = t.astype(x0.dtype)[:, None, None]
    return (1.0 - t) * x0 + t * x1

  for run in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f)(*a)):
    np.testing.assert_array_equal(run(flow.interpolate, x0, x1, t), run(straight, x0, x1, t))
    np.testing.assert_array_equal(run(lambda a, b, t: flow.interpolate(a, b, t, 0.0), x0, x1, t),
                                  run(straight, x0, x1, t))
    np.testing.assert_array_equal(run(flow.target_velocity, x0, x1), run(lambda a, b: b - a, x0, x1))


def test_sigma_path_endpoints_and_derivative():
  x0, x1 = _pair()
  np.testing.assert_array_equal(flow.interpolate(x0, x1, jnp.zeros(3), SIGMA), x0)
  np.testing.assert_allclose(flow.interpolate(x0, x1, jnp.ones(3), SIGMA), x1 + SIGMA * x0, rtol=1e-6, atol=1e-6)
  t = jnp.array([0.1, 0.5, 0.9])
  _, dxdt = jax.jvp(lambda t: flow.interpolate(x0, x1, t, SIGMA), (t,), (jnp.ones(3),))
  np.testing.assert_allclose(dxdt, flow.target_velocity(x0, x1, SIGMA), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(flow.target_velocity(x0, x1, SIGMA), np.asarray(x1) - (1 - SIGMA) * np.asarray(x0),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("num_steps", [2, 4])
def test_euler_with_the_oracle_velocity_follows_the_path(num_steps):
  x1, _ = _pair()
  x0 = flow.sample_source(jax.random.PRNGKey(5), x1)
  oracle = lambda x, t, c: flow.target_velocity(x0, x1, SIGMA)
  traj = flow.integrate(oracle, x0, None, num_steps)
  for k in range(num_steps + 1):
    np.testing.assert_allclose(traj.states[k], flow.interpolate(x0, x1, jnp.full((3,), k / num_steps), SIGMA),
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(traj.final, x1 + SIGMA * x0, rtol=1e-5, atol=1e-6)


def test_sample_source_is_a_standard_gaussian_like_its_template():
  like = jnp.zeros((16, 64, 32), jnp.bfloat16)
  x0 = flow.sample_source(KEY, like)
  assert x0.shape == like.shape and x0.dtype == jnp.bfloat16
  assert abs(float(jnp.mean(x0.astype(jnp.float32)))) < 0.02
  assert abs(float(jnp.std(x0.astype(jnp.float32))) - 1.0) < 0.02
  np.testing.assert_array_equal(flow.sample_source(KEY, like), x0)


def _field(x, t, c):
  return 0.7 * x + t[:, None, None] - 0.2


def test_l1_terms_equal_numpy():
  x0, x1 = _pair()
  t = np.array([0.0, 0.3, 0.75], np.float32)
  n0, n1, tb = np.asarray(x0, np.float64), np.asarray(x1, np.float64), t.astype(np.float64)[:, None, None]
  x_t = (1 - (1 - SIGMA) * tb) * n0 + tb * n1
  v = 0.7 * x_t + tb - 0.2
  expected_fm = np.mean(np.mean(np.abs(v - (n1 - (1 - SIGMA) * n0)), axis=(1, 2)))
  fm = flow.flow_matching_loss(_field, x0, x1, None, jnp.asarray(t), sigma_min=SIGMA, loss="l1")
  np.testing.assert_allclose(fm, expected_fm, rtol=1e-5)
  # Consistency with Δ = 0.25: ‖v(x_t, t) − v(x_t + Δv, t + Δ)‖₁.
  v_next = 0.7 * (x_t + 0.25 * v) + tb + 0.25 - 0.2
  cons = flow.consistency_loss(_field, x0, x1, None, jnp.asarray(t), 0.25, sigma_min=SIGMA, loss="l1")
  np.testing.assert_allclose(cons, np.mean(np.abs(v - v_next)), rtol=1e-5)
  # Rollout over the whole grid (H = N = 2) from x0 to x1 + σ·x0.
  x = n0
  for i in range(2):
    x = x + 0.5 * (0.7 * x + i / 2 - 0.2)
  roll = flow.rollout_loss(_field, x0, x1, None, KEY, num_steps=2, sigma_min=SIGMA, loss="l1")
  np.testing.assert_allclose(roll, np.mean(np.abs(x - (n1 + SIGMA * n0))), rtol=1e-5)


def test_per_example_loss_l1_l2_and_mask():
  a, b = _pair(batch=4, dim=6)
  na, nb = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(objectives.per_example_loss(a, b, "l1"), np.abs(na - nb).mean(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(objectives.per_example_loss(a, b), ((na - nb) ** 2).mean(axis=(1, 2)), rtol=1e-6)
  mask = np.zeros((4, 6, 1), bool)
  mask[0, :2] = True
  mask[1] = True
  mask[2, 5] = True  # example 3 has no masked element: its loss is 0.
  expected = [np.abs(na - nb)[i][mask[i]].mean() if mask[i].any() else 0.0 for i in range(4)]
  np.testing.assert_allclose(objectives.per_example_loss(a, b, "l1", jnp.asarray(mask)), expected, rtol=1e-6)
  # A mask broadcast over the batch: the time axis of every example.
  row = np.arange(6)[None, :, None] < 3
  np.testing.assert_allclose(objectives.per_example_loss(a, b, "l2", jnp.asarray(row)),
                             ((na - nb) ** 2)[:, :3].mean(axis=(1, 2)), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown loss 'huber'"):
    objectives.per_example_loss(a, b, "huber")


def _linear_rollout(a, x0, x1, loss, sigma):
  return flow.rollout_loss(lambda x, t, c: (x[..., 0] @ a)[..., None], x0, x1, None, KEY, num_steps=4,
                           sigma_min=sigma, loss=loss)


@pytest.mark.parametrize("loss,sigma", [("l1", SIGMA), ("l2", SIGMA), ("l1", 0.0)])
def test_rollout_gradient_finite_difference_l1_and_sigma(loss, sigma):
  x0, x1 = _pair(batch=2, dim=3)
  a0 = jnp.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.1], [0.2, 0.1, -0.3]])
  grad = jax.grad(_linear_rollout)(a0, x0, x1, loss, sigma)
  eps = 1e-2
  for i in range(3):
    for j in range(3):
      e = jnp.zeros_like(a0).at[i, j].set(eps)
      fd = (_linear_rollout(a0 + e, x0, x1, loss, sigma) - _linear_rollout(a0 - e, x0, x1, loss, sigma)) / (2 * eps)
      np.testing.assert_allclose(grad[i, j], fd, rtol=2e-3, atol=1e-4)


def test_flow_loss_threads_loss_sigma_and_logit_normal_times():
  x1, _ = _pair()
  x0 = flow.sample_source(jax.random.PRNGKey(2), x1)
  cfg = flow.ObjectiveConfig(fm_weight=1.0, rollout_weight=0.5, consistency_weight=0.25, num_steps=2, horizon=2,
                             time_sampler="logit_normal", logit_mean=0.3, logit_std=0.8, loss="l1", sigma_min=SIGMA)
  loss, terms = flow.flow_loss(_field, x0, x1, None, KEY, cfg)
  t_key, _, rollout_key = jax.random.split(KEY, 3)
  t = jax.nn.sigmoid(0.3 + 0.8 * jax.random.normal(t_key, (3,)))
  common = dict(sigma_min=SIGMA, loss="l1")
  np.testing.assert_allclose(terms["fm"], flow.flow_matching_loss(_field, x0, x1, None, t, **common), rtol=1e-6)
  np.testing.assert_allclose(terms["rollout"], flow.rollout_loss(_field, x0, x1, None, rollout_key, num_steps=2,
                                                                 **common), rtol=1e-6)
  np.testing.assert_allclose(terms["consistency"],
                             flow.consistency_loss(_field, x0, x1, None, t, 0.25, **common), rtol=1e-6)
  np.testing.assert_allclose(loss, terms["fm"] + 0.5 * terms["rollout"] + 0.25 * terms["consistency"], rtol=1e-6)


def test_objective_config_validation_of_the_new_fields():
  assert flow.ObjectiveConfig().loss == "l2" and flow.ObjectiveConfig().sigma_min == 0.0
  with pytest.raises(ValueError, match=r"objective.loss='l3'; expected one of \('l2', 'l1'\)"):
    flow.ObjectiveConfig(loss="l3")
  with pytest.raises(ValueError, match=r"sigma_min must be in \[0, 1\)"):
    flow.ObjectiveConfig(sigma_min=1.0)
  with pytest.raises(ValueError, match="logit_std must be > 0"):
    flow.ObjectiveConfig(logit_std=0.0)
  cfg = flow.ObjectiveConfig.from_config({"loss": "l1", "sigma_min": 1e-4, "time_sampler": "logit_normal"})
  assert (cfg.loss, cfg.sigma_min, cfg.time_sampler) == ("l1", 1e-4, "logit_normal")


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.5, 0.6)])
def test_logit_normal_time_statistics(mean, std):
  t = flow.sample_time(KEY, 20000, "logit_normal", 4, logit_mean=mean, logit_std=std)
  assert t.shape == (20000,) and t.dtype == jnp.float32
  assert float(t.min()) > 0.0 and float(t.max()) < 1.0
  logit = np.log(np.asarray(t, np.float64)) - np.log1p(-np.asarray(t, np.float64))
  assert abs(logit.mean() - mean) < 0.03 and abs(logit.std() - std) < 0.03
  np.testing.assert_array_equal(flow.logit_normal_time(KEY, 20000, mean, std), t)


def _state_field(x, t, c):
  return jnp.tanh(x) * (1.0 + t[:, None, None]) + c


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_masked_replacement_hook_follows_the_reference_path(method):
  x1, cond = _pair(batch=2, dim=7)
  x0 = flow.sample_source(jax.random.PRNGKey(9), x1)
  reference = jnp.abs(x1)
  mask = jnp.arange(7)[None, :, None] % 3 == 0
  traj = flow.integrate(_state_field, x0, cond, 4, method, hook=flow.masked_replacement(mask, reference, SIGMA))
  m = np.broadcast_to(np.asarray(mask), x0.shape)
  for k in range(1, 5):
    ref_t = flow.interpolate(x0, reference, jnp.full((2,), k / 4), SIGMA)
    np.testing.assert_allclose(np.asarray(traj.states[k])[m], np.asarray(ref_t)[m], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(traj.final)[m], np.asarray(reference + SIGMA * x0)[m], rtol=1e-6, atol=1e-6)
  # The unmasked entries move with the field: one step from the hooked state reproduces the next state there.
  x_next, _ = flow.solvers.step(_state_field, traj.states[1], 0.25, 0.25, cond, method)
  np.testing.assert_allclose(np.asarray(traj.states[2])[~m], np.asarray(x_next)[~m], rtol=1e-6)


def test_hook_with_an_empty_mask_leaves_the_trajectory_unchanged():
  x1, cond = _pair(batch=2, dim=7)
  x0 = flow.sample_source(jax.random.PRNGKey(9), x1)
  plain = flow.integrate(_state_field, x0, cond, 4)
  hooked = flow.integrate(_state_field, x0, cond, 4, hook=flow.masked_replacement(jnp.zeros(x0.shape, bool), x1))
  np.testing.assert_array_equal(hooked.states, plain.states)
  np.testing.assert_array_equal(hooked.velocities, plain.velocities)
  seen = []
  flow.integrate(_state_field, x0, cond, 4, stop_after=2,
                 hook=lambda x, t_next, src: (seen.append((t_next.shape, src.shape)), x)[1])
  assert seen == [((2,), x0.shape)]  # Traced once inside the scan, with t_next per example.

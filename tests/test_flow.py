"""The flow core: solvers, objectives, samplers (issue: core §2)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow import flow
from avflow.flow import objectives

KEY = jax.random.PRNGKey(0)


def _pair(batch=3, dim=5, seed=0):
  k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k0, (batch, dim, 1)), jax.random.normal(k1, (batch, dim, 1))


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun"])
def test_solver_exact_for_constant_field(method):
  x0, c = _pair()
  traj = flow.integrate(lambda x, t, cond: cond, x0, c, num_steps=4, method=method)
  np.testing.assert_allclose(traj.final, x0 + c, atol=1e-6)
  for i in range(5):
    np.testing.assert_allclose(traj.states[i], x0 + c * i / 4, atol=1e-6)
  assert traj.velocities.shape == (4,) + x0.shape
  np.testing.assert_allclose(traj.times, [0, 0.25, 0.5, 0.75, 1.0])


def test_euler_on_linear_field_matches_closed_form():
  x0, _ = _pair()
  traj = flow.integrate(lambda x, t, cond: -2.0 * x, x0, None, num_steps=4)
  np.testing.assert_allclose(traj.final, (1 - 2.0 / 4) ** 4 * x0, rtol=1e-6)


def test_heun_is_second_order_on_time_dependent_field():
  # dx/dt = t  ⇒  x(1) = x0 + 1/2; Heun's trapezoid rule is exact for a linear-in-t field, Euler is not.
  x0, _ = _pair()
  field = lambda x, t, cond: jnp.broadcast_to(t[:, None, None], x.shape)
  np.testing.assert_allclose(flow.integrate(field, x0, None, 4, "heun").final, x0 + 0.5, atol=1e-6)
  np.testing.assert_allclose(flow.integrate(field, x0, None, 4, "euler").final, x0 + 0.375, atol=1e-6)


def test_stop_after_k_of_n_steps():
  x0, c = _pair()
  traj = flow.integrate(lambda x, t, cond: cond, x0, c, num_steps=4, stop_after=2)
  np.testing.assert_allclose(traj.final, x0 + 0.5 * c, atol=1e-6)
  assert traj.states.shape[0] == 3
  with pytest.raises(ValueError, match="stop_after"):
    flow.integrate(lambda x, t, cond: cond, x0, c, num_steps=4, stop_after=5)


def _mlp_field(params):
  w1, w2, wt = params

  def field(x, t, cond):
    h = jnp.tanh(x[..., 0] @ w1 + t[:, None] * wt)
    return (h @ w2)[..., None] + 0.1 * cond
  return field


def _mlp_params(dim=5, hidden=7, seed=1):
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return (0.5 * jax.random.normal(k[0], (dim, hidden)), 0.5 * jax.random.normal(k[1], (hidden, dim)),
          jax.random.normal(k[2], (hidden,)))


def _unrolled_rollout(params, x0, x1, cond, key, num_steps, horizon):
  field = _mlp_field(params)
  k = objectives.rollout_start_steps(key, x0.shape[0], num_steps, horizon)
  x = flow.interpolate(x0, x1, k / num_steps)
  for i in range(horizon):
    x = x + field(x, (k + i) / num_steps, cond) / num_steps
  target = flow.interpolate(x0, x1, (k + horizon) / num_steps)
  return jnp.mean((x - target) ** 2)


@pytest.mark.parametrize("remat_policy", ["none", "step", "dots"])
@pytest.mark.parametrize("horizon,unroll", [(4, 1), (2, 1), (4, 4), (4, 3)])
def test_rollout_gradient_equals_python_unrolled_loop(remat_policy, horizon, unroll):
  params = _mlp_params()
  x0, x1 = _pair()
  cond = x0
  key = jax.random.PRNGKey(3)

  def scanned(p):
    return flow.rollout_loss(_mlp_field(p), x0, x1, cond, key, num_steps=4, horizon=horizon,
                             remat_policy=remat_policy, unroll=unroll)

  loss, grads = jax.jit(jax.value_and_grad(scanned))(params)
  ref_loss, ref_grads = jax.value_and_grad(_unrolled_rollout)(params, x0, x1, cond, key, 4, horizon)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-6)


def test_rollout_gradient_finite_difference_on_linear_field():
  x0, x1 = _pair(batch=2, dim=3)
  a0 = jnp.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.1], [0.2, 0.1, -0.3]])

  def loss(a):
    return flow.rollout_loss(lambda x, t, c: (x[..., 0] @ a)[..., None], x0, x1, None, KEY, num_steps=4)

  grad = jax.grad(loss)(a0)
  eps = 1e-2
  for i in range(3):
    for j in range(3):
      e = jnp.zeros_like(a0).at[i, j].set(eps)
      fd = (loss(a0 + e) - loss(a0 - e)) / (2 * eps)
      np.testing.assert_allclose(grad[i, j], fd, rtol=2e-3, atol=1e-4)


def test_objective_values_on_hand_computed_cases():
  x0, x1 = _pair()
  t = jnp.array([0.0, 0.25, 0.5])
  zero = lambda x, t, c: jnp.zeros_like(x)
  mean_sq = jnp.mean((x1 - x0) ** 2, axis=(1, 2))
  # CFM with v = 0 is the mean squared target velocity; with the true velocity it is 0.
  np.testing.assert_allclose(flow.flow_matching_loss(zero, x0, x1, None, t), mean_sq.mean(), rtol=1e-6)
  perfect = lambda x, t, c: x1 - x0
  assert float(flow.flow_matching_loss(perfect, x0, x1, None, t)) == 0.0
  # inverse_time weighting: w = ε/(t + ε) with ε = 0.25 → 1, 1/2, 1/3.
  weighted = flow.flow_matching_loss(zero, x0, x1, None, t, weighting="inverse_time", eps=0.25)
  np.testing.assert_allclose(weighted, jnp.mean(jnp.array([1, 0.5, 1 / 3]) * mean_sq), rtol=1e-6)
  # Rollout with v = 0 stays at x_{k/N}; with H = N the error is ‖x1 − x0‖²; the true velocity gives 0.
  np.testing.assert_allclose(flow.rollout_loss(zero, x0, x1, None, KEY, num_steps=4), mean_sq.mean(), rtol=1e-6)
  np.testing.assert_allclose(flow.rollout_loss(zero, x0, x1, None, KEY, num_steps=4, horizon=2),
                             0.25 * mean_sq.mean(), rtol=1e-6)
  assert float(flow.rollout_loss(perfect, x0, x1, None, KEY, num_steps=4, horizon=3)) < 1e-12
  # Consistency with v(x) = x: v(x_t + Δx_t) − v(x_t) = Δ·x_t.
  x_t = flow.interpolate(x0, x1, t)
  np.testing.assert_allclose(flow.consistency_loss(lambda x, t, c: x, x0, x1, None, t, 0.25),
                             jnp.mean(0.0625 * jnp.mean(x_t ** 2, axis=(1, 2))), rtol=1e-6)


def test_consistency_gradient_stops_at_the_advanced_estimate():
  x0, x1 = _pair()
  t = jnp.full((3,), 0.25)
  # v = a·x: only the first estimate carries gradient, d/da mean((a x − sg(a(1+Δa)x))²) = 2·mean((a x − b x)·x).
  a = 0.7
  b = a * (1 + 0.25 * a)
  g = jax.grad(lambda a: flow.consistency_loss(lambda x, t, c: a * x, x0, x1, None, t, 0.25))(a)
  x_t = flow.interpolate(x0, x1, t)
  np.testing.assert_allclose(g, jnp.mean(2 * jnp.mean((a - b) * x_t ** 2, axis=(1, 2))), rtol=1e-5)


def test_bridge_matching_noise_scale():
  x0, x1 = _pair(batch=64, dim=256)
  t = jnp.full((64,), 0.5)
  perfect = lambda x, t, c: x1 - x0 + (x - flow.interpolate(x0, x1, t))
  loss = flow.flow_matching_loss(perfect, x0, x1, None, t, bridge_sigma=0.1, key=KEY)
  np.testing.assert_allclose(loss, 0.01, rtol=0.05)
  with pytest.raises(ValueError, match="key"):
    flow.flow_matching_loss(perfect, x0, x1, None, t, bridge_sigma=0.1)


@pytest.mark.parametrize("horizon", [1, 2, 3, 4])
def test_rollout_start_steps_cover_every_valid_start(horizon):
  k = objectives.rollout_start_steps(KEY, 4000, 4, horizon)
  assert set(np.unique(k).tolist()) == set(range(4 - horizon + 1))


def test_time_samplers():
  t = flow.discrete_grid_time(KEY, 4000, 4)
  assert set(np.unique(t).tolist()) == {0.0, 0.25, 0.5, 0.75}
  u = flow.uniform_time(KEY, 4000)
  assert float(u.min()) >= 0.0 and float(u.max()) < 1.0 and abs(float(u.mean()) - 0.5) < 0.03
  with pytest.raises(ValueError, match="time sampler"):
    flow.sample_time(KEY, 2, "beta", 4)


def test_combined_objective_weights_and_validation():
  x0, x1 = _pair()
  zero = lambda x, t, c: jnp.zeros_like(x)
  cfg = flow.ObjectiveConfig(fm_weight=1.0, rollout_weight=0.3, consistency_weight=0.5)
  loss, terms = flow.flow_loss(zero, x0, x1, None, KEY, cfg)
  assert set(terms) == {"fm", "rollout", "consistency"}
  np.testing.assert_allclose(loss, terms["fm"] + 0.3 * terms["rollout"] + 0.5 * terms["consistency"], rtol=1e-6)
  _, only = flow.flow_loss(zero, x0, x1, None, KEY, flow.ObjectiveConfig(fm_weight=0.0, rollout_weight=1.0))
  assert set(only) == {"rollout"}
  with pytest.raises(ValueError, match="horizon"):
    flow.ObjectiveConfig(horizon=5)
  with pytest.raises(ValueError, match="remat_policy"):
    flow.ObjectiveConfig(remat_policy="everything")
  with pytest.raises(ValueError, match="rollout_unroll must be ≥ 1"):
    flow.ObjectiveConfig(rollout_unroll=0)
  with pytest.raises(ValueError, match="weight is zero"):
    flow.flow_loss(zero, x0, x1, None, KEY, flow.ObjectiveConfig(fm_weight=0.0, rollout_weight=0.0))

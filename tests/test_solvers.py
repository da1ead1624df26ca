"""The adaptive dopri5 solver and the velocity evaluations (NFE) of every solver, counted against the calls made."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from avflow import flow

KEY = jax.random.PRNGKey(0)


class Counter:
  """Counts the velocity evaluations a compiled solve really makes: a host callback in the field runs once per call."""

  def __init__(self):
    self.calls = 0

  def wrap(self, velocity_fn):
    def field(x, t, cond):
      jax.debug.callback(self._bump)
      return velocity_fn(x, t, cond)
    return field

  def _bump(self):
    self.calls += 1

  def read(self, result) -> int:
    jax.block_until_ready(result)
    jax.effects_barrier()
    return self.calls


def _linear_system(dim=4, batch=3, seed=0):
  k_a, k_x = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(k_a, (dim, dim)), jax.random.normal(k_x, (batch, dim))


def _expm_solution(a, x0):
  return np.asarray(x0, np.float64) @ scipy.linalg.expm(np.asarray(a, np.float64)).T


def test_dopri5_is_exact_for_a_constant_velocity():
  k0, k1 = jax.random.split(KEY)
  x0, x1 = jax.random.normal(k0, (3, 5, 2)), jax.random.normal(k1, (3, 5, 2))
  counter = Counter()
  solution = jax.jit(lambda x0, c: flow.integrate_dopri5(counter.wrap(lambda x, t, c: c), x0, c))(x0, x1 - x0)
  np.testing.assert_allclose(solution.final, x1, atol=2e-6)
  assert int(solution.nfe) == counter.read(solution) == 6 * int(solution.num_steps) + 1


def test_dopri5_on_a_linear_system_matches_the_matrix_exponential():
  a, x0 = _linear_system()
  exact = _expm_solution(a, x0)
  steps = []
  for tol, bound in ((1e-3, 1e-2), (1e-7, 2e-5)):
    counter = Counter()
    solution = flow.integrate_dopri5(counter.wrap(lambda x, t, c: x @ c.T), x0, a, rtol=tol, atol=tol)
    assert np.abs(np.asarray(solution.final) - exact).max() < bound * np.abs(exact).max()
    assert int(solution.nfe) == counter.read(solution) == 6 * int(solution.num_steps) + 1
    steps.append(int(solution.num_steps))
  assert steps[1] > 2 * steps[0]  # Tighter tolerances take more steps.


def test_nfe_counts_the_rejected_steps():
  # A field switching on at t = 0.37 within ~0.02: the controller overshoots and rejects steps there.
  x0 = _linear_system()[1]
  counter = Counter()
  field = counter.wrap(lambda x, t, c: 3.0 * jnp.tanh((t[:, None] - 0.37) / 0.02) * x)
  solution = jax.jit(lambda x0: flow.integrate_dopri5(field, x0, None))(x0)
  assert int(solution.num_rejected_steps) > 0
  assert int(solution.nfe) == counter.read(solution)
  # d log x/dt = 3·tanh((t − t_s)/w): x(1) = x0·exp(3w·log(cosh((1 − t_s)/w) / cosh(t_s/w))).
  log_gain = 3 * 0.02 * (np.log(np.cosh(0.63 / 0.02)) - np.log(np.cosh(0.37 / 0.02)))
  np.testing.assert_allclose(solution.final, np.asarray(x0, np.float64) * np.exp(log_gain), rtol=1e-4)


def test_one_step_size_serves_the_batch_and_follows_its_hardest_example():
  # Padding with examples at rest changes nothing: the controller's norm is the largest per-example error, not
  # the batch RMS, which the rest examples would dilute into fewer, longer steps.
  a, x0 = _linear_system(batch=1)
  padded = jnp.concatenate([x0, jnp.zeros((7,) + x0.shape[1:])])
  alone = flow.integrate_dopri5(lambda x, t, c: x @ c.T, x0, a)
  batch = flow.integrate_dopri5(lambda x, t, c: x @ c.T, padded, a)
  assert int(batch.num_steps) == int(alone.num_steps)
  np.testing.assert_allclose(batch.final[:1], alone.final, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(batch.final[1:], 0.0)


def test_dopri5_gradient_is_the_matrix_exponential():
  a, x0 = _linear_system(batch=1)
  grad = jax.jit(jax.grad(lambda x0: flow.integrate_dopri5(lambda x, t, c: x @ c.T, x0, a).final.sum()))(x0)
  np.testing.assert_allclose(grad[0], scipy.linalg.expm(np.asarray(a, np.float64)).sum(axis=0), rtol=1e-4)


def test_dopri5_argument_errors():
  a, x0 = _linear_system()
  with pytest.raises(RuntimeError, match="maximum number of solver steps"):
    flow.integrate_dopri5(lambda x, t, c: x @ c.T, x0, a, max_steps=2)
  with pytest.raises(ValueError, match="tolerances"):
    flow.integrate_dopri5(lambda x, t, c: x @ c.T, x0, a, rtol=0.0, atol=0.0)
  with pytest.raises(ValueError, match="dt0"):
    flow.integrate_dopri5(lambda x, t, c: x @ c.T, x0, a, dt0=0.0)


@pytest.mark.parametrize("method,num_steps,stop_after,nfe", [
    ("euler", 4, None, 4), ("midpoint", 4, None, 8), ("heun", 3, None, 6), ("heun", 4, 1, 2), ("euler", 4, 0, 0)])
def test_grid_nfe_equals_the_evaluations_of_integrate(method, num_steps, stop_after, nfe):
  x0 = _linear_system()[1]
  counter = Counter()
  traj = flow.integrate(counter.wrap(lambda x, t, c: -x), x0, None, num_steps, method, stop_after)
  assert flow.grid_nfe(method, num_steps, stop_after) == nfe == counter.read(traj)


def test_grid_nfe_errors():
  with pytest.raises(ValueError, match="unknown solver 'dopri5'"):
    flow.grid_nfe("dopri5", 4)
  with pytest.raises(ValueError, match="stop_after"):
    flow.grid_nfe("euler", 4, 5)

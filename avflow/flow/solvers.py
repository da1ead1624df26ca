"""ODE solvers for dx/dt = v(x, t, cond) from t=0 (input) towards t=1 (target): Euler, midpoint and Heun on the N-step
grid, and adaptive Dormand–Prince 5(4) (dopri5, VAFlow Sec. 4.1) through diffrax.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from avflow.flow.paths import interpolate
from avflow.flow.time import time_grid

VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
# A per-step hook `hook(state, t_next, x0) -> state`: a projection of the state after each solver step.
Hook = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
EVALUATIONS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2}
METHODS = tuple(EVALUATIONS_PER_STEP)


class Trajectory(NamedTuple):
  """A solved trajectory: the final state, every state (K+1, B, …), the velocity used by each step (K, B, …)."""
  final: jax.Array
  states: jax.Array
  velocities: jax.Array
  times: jax.Array


def step(velocity_fn: VelocityFn, x: jax.Array, t: float | jax.Array, dt: float | jax.Array, cond: Any,
         method: str = "euler") -> tuple[jax.Array, jax.Array]:
  """One solver step from t to t+dt; returns (x_next, effective velocity (x_next − x)/dt)."""
  batch = x.shape[0]
  tb = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
  v1 = velocity_fn(x, tb, cond)
  if method == "euler":
    v = v1
  elif method == "midpoint":
    v = velocity_fn(x + 0.5 * dt * v1, tb + 0.5 * dt, cond)
  elif method == "heun":
    v2 = velocity_fn(x + dt * v1, tb + dt, cond)
    v = 0.5 * (v1 + v2)
  else:
    raise ValueError(f"unknown solver {method!r}; expected one of {METHODS}")
  return x + dt * v, v


def integrate(velocity_fn: VelocityFn, x0: jax.Array, cond: Any, num_steps: int, method: str = "euler",
              stop_after: int | None = None, hook: Hook | None = None) -> Trajectory:
  """Integrates on the N-step grid, optionally stopping after k of the N steps (Sec. 9), with `lax.scan`.

  A `hook(state, t_next, x0)`, with t_next of shape (B,) and x0 the source, is applied after every step; the
  trajectory records the hooked states, and its velocities stay the solver's, before the hook.
  """
  times = time_grid(num_steps, stop_after)
  dt = 1.0 / num_steps

  def body(x, t_pair):
    t, t_next = t_pair
    x_next, v = step(velocity_fn, x, t, dt, cond, method)
    if hook is not None:
      x_next = hook(x_next, jnp.broadcast_to(t_next, x.shape[:1]), x0)
    return x_next, (x_next, v)

  final, (states, velocities) = jax.lax.scan(body, x0, (times[:-1], times[1:]))
  states = jnp.concatenate([x0[None], states], axis=0)
  return Trajectory(final=final, states=states, velocities=velocities, times=times)


def grid_nfe(method: str, num_steps: int, stop_after: int | None = None) -> int:
  """Velocity evaluations (NFE) of `integrate`: one per Euler step, two per midpoint or Heun step."""
  if method not in EVALUATIONS_PER_STEP:
    raise ValueError(f"unknown solver {method!r}; expected one of {METHODS}")
  return EVALUATIONS_PER_STEP[method] * (time_grid(num_steps, stop_after).shape[0] - 1)


class AdaptiveSolution(NamedTuple):
  """An adaptive solve: the state at t=1, its velocity evaluations (NFE) and its attempted and rejected steps."""
  final: jax.Array
  nfe: jax.Array
  num_steps: jax.Array
  num_rejected_steps: jax.Array


def _largest_example_rms(error: jax.Array) -> jax.Array:
  """The step-size controller's norm: the RMS of each example's scaled error, the largest over the batch."""
  per_example = jnp.reshape(error, (error.shape[0], -1))
  return jnp.max(jnp.sqrt(jnp.mean(jnp.square(per_example), axis=1)))


def integrate_dopri5(velocity_fn: VelocityFn, x0: jax.Array, cond: Any, rtol: float = 1e-5, atol: float = 1e-5,
                     dt0: float = 0.01, max_steps: int = 4096) -> AdaptiveSolution:
  """Integrates from t=0 to t=1 with adaptive Dormand–Prince 5(4) steps (diffrax `Dopri5`, PI step-size control).

  VAFlow samples with dopri5 (Sec. 4.1–4.2; no tolerances reported). The first step tries `dt0`; a step is kept when
  the RMS of error / (atol + rtol·|x|) is ≤ 1 for every example: one step size serves the batch, set by its hardest
  example, so an example's result depends on its batch only within the tolerances. More than `max_steps` attempted
  steps is an error. Jit-able; gradients flow through the steps (diffrax's checkpointed adjoint).

  NFE = 6·num_steps + 1, from diffrax's stats: every attempted step (kept or rejected) evaluates the six stages
  after its first; the first stage is the last stage of the previous kept step (FSAL), evaluated anew only for the
  first step. A rejected first step re-evaluates its first stage on the retry, one evaluation the count leaves out.
  """
  import diffrax  # Here only: with equinox it adds half a second to every import of the flow core.
  if rtol < 0 or atol < 0 or rtol + atol == 0:
    raise ValueError(f"dopri5 tolerances must be ≥ 0 and not both 0, got rtol={rtol}, atol={atol}")
  if not 0 < dt0 <= 1:
    raise ValueError(f"dopri5 dt0 must be in (0, 1], got {dt0}")
  batch = x0.shape[0]
  term = diffrax.ODETerm(lambda t, x, c: velocity_fn(x, jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,)), c))
  controller = diffrax.PIDController(rtol=rtol, atol=atol, norm=_largest_example_rms)
  solution = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0=0.0, t1=1.0, dt0=dt0, y0=x0, args=cond,
                                 saveat=diffrax.SaveAt(t1=True), stepsize_controller=controller, max_steps=max_steps)
  num_steps = solution.stats["num_steps"]
  return AdaptiveSolution(final=solution.ys[0], nfe=6 * num_steps + 1, num_steps=num_steps,
                          num_rejected_steps=solution.stats["num_rejected_steps"])


def masked_replacement(mask: jax.Array, reference: jax.Array, sigma_min: float = 0.0) -> Hook:
  """Silence-mask sampling (DAVIS Eq. 9): x̂_t = m ⊙ x_t^ref + (1 − m) ⊙ x_t after every step.

  x_t^ref is the reference (the mixture) pushed along the same path from the same source to the step's time,
  interpolate(x0, reference, t_next, σ_min) (Eq. 5); entries outside the boolean mask m are left as they are.
  DAVIS takes m = [x^mix < δ_silence] with δ = 0.002, so that bins silent in the mixture stay silent.
  """
  def hook(x: jax.Array, t_next: jax.Array, x0: jax.Array) -> jax.Array:
    return jnp.where(mask, interpolate(x0, reference, t_next, sigma_min), x)
  return hook

"""Fixed-grid ODE solvers for dx/dt = v(x, t, cond) from t=0 (input) towards t=1 (target)."""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from avflow.flow.paths import interpolate
from avflow.flow.time import time_grid

VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]
# A per-step hook `hook(state, t_next, x0) -> state`: a projection of the state after each solver step.
Hook = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
METHODS = ("euler", "midpoint", "heun")


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


def masked_replacement(mask: jax.Array, reference: jax.Array, sigma_min: float = 0.0) -> Hook:
  """Silence-mask sampling (DAVIS Eq. 9): x̂_t = m ⊙ x_t^ref + (1 − m) ⊙ x_t after every step.

  x_t^ref is the reference (the mixture) pushed along the same path from the same source to the step's time,
  interpolate(x0, reference, t_next, σ_min) (Eq. 5); entries outside the boolean mask m are left as they are.
  DAVIS takes m = [x^mix < δ_silence] with δ = 0.002, so that bins silent in the mixture stay silent.
  """
  def hook(x: jax.Array, t_next: jax.Array, x0: jax.Array) -> jax.Array:
    return jnp.where(mask, interpolate(x0, reference, t_next, sigma_min), x)
  return hook

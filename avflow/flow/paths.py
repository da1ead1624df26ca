"""Data-to-data linear paths (VisAH-FM Eq. 1–2)."""
import jax
import jax.numpy as jnp


def expand_time(t: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example times (B,) to broadcast against x (B, ...)."""
  t = jnp.asarray(t, x.dtype)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 − t)·x0 + t·x1 (Eq. 1)."""
  t = expand_time(t, x0)
  return (1.0 - t) * x0 + t * x1


def target_velocity(x0: jax.Array, x1: jax.Array) -> jax.Array:
  """(x1 − x_t)/(1 − t) = x1 − x0 on the linear path (Eq. 2–4), independent of t."""
  return x1 - x0


def bridge_noise(key: jax.Array, x_t: jax.Array, sigma: float) -> jax.Array:
  """Bridge matching: Gaussian noise of standard deviation σ on x_t (Table 3, σ = 1e-5 in the paper)."""
  return x_t + sigma * jax.random.normal(key, x_t.shape, x_t.dtype)

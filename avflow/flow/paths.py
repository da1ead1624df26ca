"""Linear probability paths: VisAH-FM's data-to-data path (Eq. 1–2) and the Gaussian-source OT path of DAVIS-Flow.

One formula serves both: x_t = t·x1 + (1 − (1 − σ_min)·t)·x0 (Lipman et al.'s OT path). With σ_min = 0 it is the
straight line (1 − t)·x0 + t·x1 of VisAH-FM, to the bit; DAVIS-Flow uses σ_min = 1e-4 from a Gaussian x0. Which
source x0 a run uses (data or `sample_source`) is the caller's choice.
"""
import jax
import jax.numpy as jnp


def expand_time(t: jax.Array, x: jax.Array) -> jax.Array:
  """Reshapes per-example times (B,) to broadcast against x (B, ...)."""
  t = jnp.asarray(t, x.dtype)
  return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float = 0.0) -> jax.Array:
  """x_t = (1 − (1 − σ_min)·t)·x0 + t·x1; (1 − t)·x0 + t·x1 (Eq. 1) when σ_min = 0. x_1 = x1 + σ_min·x0."""
  t = expand_time(t, x0)
  return (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1


def target_velocity(x0: jax.Array, x1: jax.Array, sigma_min: float = 0.0) -> jax.Array:
  """d x_t/dt = x1 − (1 − σ_min)·x0, independent of t; (x1 − x_t)/(1 − t) = x1 − x0 (Eq. 2–4) when σ_min = 0."""
  return x1 - (1.0 - sigma_min) * x0


def sample_source(key: jax.Array, like: jax.Array) -> jax.Array:
  """A standard Gaussian source x0 ~ 𝒩(0, I) with the shape and dtype of `like` (DAVIS-Flow)."""
  return jax.random.normal(key, like.shape, like.dtype)


def bridge_noise(key: jax.Array, x_t: jax.Array, sigma: float) -> jax.Array:
  """Bridge matching: Gaussian noise of standard deviation σ on x_t (Table 3, σ = 1e-5 in the paper)."""
  return x_t + sigma * jax.random.normal(key, x_t.shape, x_t.dtype)

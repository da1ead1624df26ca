"""Time grids and samplers. t=0 is the input x0, t=1 the target x1."""
import jax
import jax.numpy as jnp

TIME_SAMPLERS = ("uniform", "discrete", "logit_normal")


def time_grid(num_steps: int, stop_after: int | None = None) -> jax.Array:
  """The N-step grid {0, 1/N, …, 1}, truncated to its first `stop_after` steps ("amount of remixing", Sec. 9)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be ≥ 1, got {num_steps}")
  k = num_steps if stop_after is None else stop_after
  if not 0 <= k <= num_steps:
    raise ValueError(f"stop_after must be in [0, {num_steps}], got {stop_after}")
  return jnp.arange(k + 1, dtype=jnp.float32) / num_steps


def uniform_time(key: jax.Array, batch: int) -> jax.Array:
  """t ~ U[0, 1) (Eq. 4)."""
  return jax.random.uniform(key, (batch,), jnp.float32, 0.0, 1.0)


def discrete_grid_time(key: jax.Array, batch: int, num_steps: int) -> jax.Array:
  """t uniform on {0, 1/N, …, (N−1)/N}: the paper discretizes time into N=4 training steps (Sec. 3.1)."""
  return jax.random.randint(key, (batch,), 0, num_steps).astype(jnp.float32) / num_steps


def logit_normal_time(key: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """t = sigmoid(m + s·n), n ~ 𝒩(0, 1): logit-normal times, denser in the middle of the path for m = 0."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))


def sample_time(key: jax.Array, batch: int, sampler: str, num_steps: int, logit_mean: float = 0.0,
                logit_std: float = 1.0) -> jax.Array:
  if sampler == "uniform":
    return uniform_time(key, batch)
  if sampler == "discrete":
    return discrete_grid_time(key, batch, num_steps)
  if sampler == "logit_normal":
    return logit_normal_time(key, batch, logit_mean, logit_std)
  raise ValueError(f"unknown time sampler {sampler!r}; expected one of {TIME_SAMPLERS}")

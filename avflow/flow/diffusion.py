"""The DDPM of DAVIS (Eq. 2, 4, 7) with DDIM sampling, in the functional style of the flow core.

Naming: DDPM papers write x0 for the clean data, which would clash with the flow core's x0 = the source at t=0.
Here the clean data is `x_data`, the Gaussian noise ε is `x_noise`, a noised state is `x_t` and ᾱ is `alpha_bar`.
A timestep i ∈ {0, …, T−1} reaches the denoiser as the float t = i/T ∈ [0, 1) of shape (B,), through the velocity
interface `eps_fn(x_t, t, cond) -> ε̂`, so one network serves both formulations (it scales t by 1000 internally).
Unlike the flow's time, t grows towards the noise.
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from avflow.flow.objectives import LOSSES, per_example_loss, settings_from_config
from avflow.flow.paths import expand_time
from avflow.flow.solvers import VelocityFn

# A per-step hook of the sampler, `hook(x_t, alpha_bar_next, x_noise_next) -> x_t` (see `ddim_sample`).
DiffusionHook = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
  """The DDPM of DAVIS: sigmoid schedule over T = 1000 steps, L1 ε-prediction, DDIM with 15 steps and η = 1."""
  timesteps: int = 1000  # T.
  beta_start: float = 0.0  # start, end and τ of the sigmoid schedule (`sigmoid_alpha_bar`).
  beta_end: float = 3.0
  tau: float = 1.0
  loss: str = "l1"  # "l1" (Eq. 7) or "l2" (Eq. 4).
  sampling_steps: int = 15  # DDIM steps.
  eta: float = 1.0  # DDIM η: 0 is deterministic, 1 the DDPM posterior variance (DAVIS's sampler).
  # Clip x̂0 (DDPM's x0: the predicted clean data) to [0, 1], the range of DAVIS's scaled magnitudes, as its
  # silence-mask sampler does.
  clip_x0: bool = True

  def __post_init__(self):
    if self.timesteps < 1:
      raise ValueError(f"diffusion.timesteps must be ≥ 1, got {self.timesteps}")
    if not 1 <= self.sampling_steps <= self.timesteps:
      raise ValueError(f"diffusion.sampling_steps must be in [1, timesteps={self.timesteps}], "
                       f"got {self.sampling_steps}")
    if self.beta_end <= self.beta_start or self.tau <= 0.0:
      raise ValueError(f"diffusion schedule needs beta_end > beta_start and tau > 0, got beta_start={self.beta_start}, "
                       f"beta_end={self.beta_end}, tau={self.tau}")
    if self.eta < 0.0:
      raise ValueError(f"diffusion.eta must be ≥ 0, got {self.eta}")
    if self.loss not in LOSSES:
      raise ValueError(f"diffusion.loss={self.loss!r}; expected one of {LOSSES}")

  @classmethod
  def from_config(cls, cfg) -> "DiffusionConfig":
    return settings_from_config(cls, cfg, "diffusion")

  def alpha_bar(self) -> jax.Array:
    return sigmoid_alpha_bar(self.timesteps, self.beta_start, self.beta_end, self.tau)


def sigmoid_alpha_bar(timesteps: int, start: float = 0.0, end: float = 3.0, tau: float = 1.0) -> jax.Array:
  """ᾱ_i for i = 0, …, T−1 of the sigmoid schedule (Jabri et al. 2022, Fig. 8), as DAVIS trains with.

  On u = j/T, j = 0, …, T: s(u) = (σ(end/τ) − σ((u·(end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ)), s(0) = 1;
  β_j = 1 − s((j+1)/T)/s(j/T) clipped to [0, 0.999], ᾱ_i = Π_{j≤i} (1 − β_j). So ᾱ_i = s((i+1)/T) until the clip
  binds at the last step (s(1) = 0), which keeps ᾱ_{T−1} = 0.001·s((T−1)/T) > 0. Built in float64, returned in
  float32.
  """
  def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))

  u = np.arange(timesteps + 1, dtype=np.float64) / timesteps
  v_start, v_end = sigmoid(start / tau), sigmoid(end / tau)
  s = (v_end - sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)
  betas = np.clip(1.0 - s[1:] / s[:-1], 0.0, 0.999)
  return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def q_sample(x_data: jax.Array, x_noise: jax.Array, alpha_bar: jax.Array) -> jax.Array:
  """x_t = √ᾱ·x_data + √(1 − ᾱ)·ε (Eq. 2), ᾱ per example (B,)."""
  alpha_bar = expand_time(alpha_bar, x_data)
  return jnp.sqrt(alpha_bar) * x_data + jnp.sqrt(1.0 - alpha_bar) * x_noise


def diffusion_loss(eps_fn: VelocityFn, x_data: jax.Array, cond: Any, key: jax.Array,
                   cfg: DiffusionConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = E_{i,ε} ‖ε − ε_θ(x_t, i/T, c)‖₁ (Eq. 7; ‖·‖² of Eq. 4 with loss="l2"), i ~ U{0, …, T−1}.

  Returns (loss, its terms) as `flow_loss` does; the loss is the batch mean of per-example mean errors.
  """
  t_key, noise_key = jax.random.split(key)
  i = jax.random.randint(t_key, (x_data.shape[0],), 0, cfg.timesteps)
  x_noise = jax.random.normal(noise_key, x_data.shape, x_data.dtype)
  x_t = q_sample(x_data, x_noise, cfg.alpha_bar()[i])
  loss = jnp.mean(per_example_loss(eps_fn(x_t, i.astype(jnp.float32) / cfg.timesteps, cond), x_noise, cfg.loss))
  return loss, {"eps": loss}


def ddim_timesteps(timesteps: int, steps: int) -> np.ndarray:
  """The descending DDIM grid T−1, …, −1 of `steps` + 1 timesteps; −1 stands for the clean data (ᾱ = 1).

  It is DAVIS's grid trunc(linspace(−1, T−1, steps + 1)), computed exactly in integers: ⌊k·T/steps⌋ − 1.
  """
  return (np.arange(steps, -1, -1) * timesteps) // steps - 1


class DiffusionTrajectory(NamedTuple):
  """A DDIM run: the final state, every state (S+1, B, …) from the noise to the data, their timesteps (S+1,)."""
  final: jax.Array
  states: jax.Array
  timesteps: jax.Array


def ddim_sample(eps_fn: VelocityFn, x_noise: jax.Array, cond: Any, cfg: DiffusionConfig, key: jax.Array | None = None,
                hook: DiffusionHook | None = None) -> DiffusionTrajectory:
  """DDIM (Song et al. 2020) from x_T = x_noise over `cfg.sampling_steps` steps, as one `lax.scan`.

  Each step from level ᾱ to ᾱ' predicts ε̂ = ε_θ(x_t, i/T, c) and x̂_data = (x_t − √(1 − ᾱ)·ε̂)/√ᾱ (clipped to
  [0, 1] with `cfg.clip_x0`), then x' = √ᾱ'·x̂_data + c·ε̂ + σ·z with σ = η·√((1 − ᾱ/ᾱ')(1 − ᾱ')/(1 − ᾱ)),
  c = √(1 − ᾱ' − σ²), z ~ 𝒩(0, I) from `key` (needed when η > 0). The last step reaches ᾱ' = 1: x' = x̂_data.

  The optional `hook(x', ᾱ' (B,), ε')` is applied after every step, where ε' = (c·ε̂ + σ·z)/√(1 − ᾱ') is the
  step's unit noise, so that x' = q_sample(x̂_data, ε', ᾱ') (ε' = 0 at the clean level); the states are recorded
  after the hook.
  """
  if cfg.eta > 0.0 and key is None:
    raise ValueError(f"DDIM with eta={cfg.eta} > 0 draws fresh noise at each step and needs a PRNG key")
  levels = jnp.concatenate([jnp.ones((1,), jnp.float32), cfg.alpha_bar()])  # levels[i + 1] = ᾱ_i, levels[0] = 1.
  grid = ddim_timesteps(cfg.timesteps, cfg.sampling_steps)
  keys = None if cfg.eta == 0.0 else jax.random.split(key, cfg.sampling_steps)
  batch = x_noise.shape[0]

  def body(x, xs):
    i, i_next, step_key = xs
    alpha_bar, alpha_bar_next = levels[i + 1], levels[i_next + 1]
    eps = eps_fn(x, jnp.full((batch,), i / cfg.timesteps, jnp.float32), cond)
    x_data = (x - jnp.sqrt(1.0 - alpha_bar) * eps) / jnp.sqrt(alpha_bar)
    if cfg.clip_x0:
      x_data = jnp.clip(x_data, 0.0, 1.0)
    sigma = cfg.eta * jnp.sqrt((1.0 - alpha_bar / alpha_bar_next) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar))
    noise = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_next - sigma ** 2, 0.0)) * eps
    if step_key is not None:
      noise = noise + sigma * jax.random.normal(step_key, x.shape, x.dtype)
    x_next = jnp.sqrt(alpha_bar_next) * x_data + noise
    if hook is not None:
      one_minus = 1.0 - alpha_bar_next
      unit_noise = noise / jnp.sqrt(jnp.where(one_minus > 0.0, one_minus, 1.0))
      x_next = hook(x_next, jnp.full((batch,), alpha_bar_next), unit_noise)
    return x_next, x_next

  final, states = jax.lax.scan(body, x_noise, (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]), keys))
  return DiffusionTrajectory(final=final, states=jnp.concatenate([x_noise[None], states], axis=0),
                             timesteps=jnp.asarray(grid))


def masked_replacement(mask: jax.Array, reference: jax.Array) -> DiffusionHook:
  """Silence-mask sampling for DDIM (DAVIS Eq. 9 with Eq. 2): x̂ = m ⊙ x^ref + (1 − m) ⊙ x after every step.

  x^ref = √ᾱ'·r + √(1 − ᾱ')·ε' is the reference r (the mixture) noised to the step's level with the step's own
  noise ε', and is r itself at the last, clean step. This equals replacing the masked entries of the predicted
  clean data by r before the step, which is how DAVIS's sampler applies it (for r in [0, 1], where its clip of the
  replaced prediction changes nothing).
  """
  def hook(x: jax.Array, alpha_bar: jax.Array, x_noise: jax.Array) -> jax.Array:
    return jnp.where(mask, q_sample(reference, x_noise, alpha_bar), x)
  return hook

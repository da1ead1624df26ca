"""Training objectives of VisAH-FM and its ablations (Eq. 4, 5, 9; Table 3).

Every loss takes a velocity field `f(x_t, t, cond) -> v` and returns the batch mean of per-example mean squared
(or, as DAVIS-Flow, absolute) errors, so objectives combine by weights: L = w_fm·L_CFM + λ·L_rollout + w_cons·L_cons
(Eq. 5). The source x0 is given by the caller: data for VisAH-FM, `sample_source` noise for DAVIS-Flow, whose path
has σ_min = 1e-4 (`paths.interpolate`).
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from avflow.flow.paths import bridge_noise, expand_time, interpolate, target_velocity
from avflow.flow.solvers import VelocityFn
from avflow.flow.time import TIME_SAMPLERS, sample_time

LOSSES = ("l2", "l1")
FM_WEIGHTINGS = ("none", "inverse_time", "inverse_one_minus_time")
REMAT_POLICIES = ("none", "step", "dots")


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Weights and settings of the combined objective; each Table 3/4 row is a choice of these."""
  fm_weight: float = 1.0
  rollout_weight: float = 0.3  # λ of Eq. 5.
  consistency_weight: float = 0.0
  num_steps: int = 4  # N: the inference grid, also the rollout step size 1/N.
  horizon: int = 4  # H ≤ N Euler steps of the rollout (Table 4 "Horizon").
  time_sampler: str = "discrete"
  logit_mean: float = 0.0  # m and s of the "logit_normal" sampler, t = sigmoid(m + s·n).
  logit_std: float = 1.0
  loss: str = "l2"  # Per-element error of every term: "l2" (VisAH-FM) or "l1" (DAVIS-Flow, Eq. 8).
  sigma_min: float = 0.0  # σ_min of the path; 0 is VisAH-FM's straight line, DAVIS-Flow uses 1e-4.
  fm_weighting: str = "none"
  weighting_eps: float = 0.25
  bridge_sigma: float = 0.0  # Bridge matching (Table 3): σ of the noise on x_t; the paper uses 1e-5.
  consistency_delta: float = 0.25  # Δ of Eq. 9.
  remat_policy: str = "step"
  # Euler steps of the rollout scan unrolled per loop iteration (`lax.scan(unroll=)`); 1 keeps a loop.
  rollout_unroll: int = 1

  def __post_init__(self):
    if not 1 <= self.horizon <= self.num_steps:
      raise ValueError(f"rollout horizon must be in [1, num_steps={self.num_steps}], got {self.horizon}")
    if self.rollout_unroll < 1:
      raise ValueError(f"objective.rollout_unroll must be ≥ 1 (1 keeps the scan a loop), got {self.rollout_unroll}")
    if not 0.0 <= self.sigma_min < 1.0:
      raise ValueError(f"objective.sigma_min must be in [0, 1), got {self.sigma_min}")
    if self.logit_std <= 0.0:
      raise ValueError(f"objective.logit_std must be > 0, got {self.logit_std}")
    for name, value, allowed in (("time_sampler", self.time_sampler, TIME_SAMPLERS),
                                 ("loss", self.loss, LOSSES),
                                 ("fm_weighting", self.fm_weighting, FM_WEIGHTINGS),
                                 ("remat_policy", self.remat_policy, REMAT_POLICIES)):
      if value not in allowed:
        raise ValueError(f"objective.{name}={value!r}; expected one of {allowed}")

  @classmethod
  def from_config(cls, cfg) -> "ObjectiveConfig":
    return settings_from_config(cls, cfg, "objective")


def settings_from_config(cls, cfg, section: str):
  """The settings dataclass `cls` from the config section `cfg`; a ValueError names any field `cls` lacks."""
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(cfg.keys()) - fields
  if unknown:
    raise ValueError(f"unknown {section} fields {sorted(unknown)}; expected a subset of {sorted(fields)}")
  return cls(**dict(cfg))


def per_example_loss(a: jax.Array, b: jax.Array, loss: str = "l2", mask: jax.Array | None = None) -> jax.Array:
  """Per-example mean of (a − b)² ("l2") or |a − b| ("l1") over all elements (B, ...) -> (B,).

  With a boolean `mask` broadcastable to a, the mean runs over the masked elements only (0 where an example has none).
  """
  if loss == "l2":
    err = jnp.square(a - b)
  elif loss == "l1":
    err = jnp.abs(a - b)
  else:
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
  err = err.reshape(a.shape[0], -1)
  if mask is None:
    return jnp.mean(err, axis=1)
  mask = jnp.broadcast_to(mask, a.shape).reshape(a.shape[0], -1)
  return jnp.sum(jnp.where(mask, err, 0.0), axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)


def time_weight(t: jax.Array, weighting: str, eps: float) -> jax.Array:
  """Per-example weight of the FM term ("FM Weighted", Table 3).

  `inverse_time` is the paper's reading, "inversely proportional to the time variable, emphasizing samples closer
  to the input distribution": with t=0 the input, w(t) = ε/(t + ε), which is 1 at the input and finite on the
  discrete grid that contains t=0. `inverse_one_minus_time` is w(t) = ε/(1 − t + ε), the 1/(1−t) factor of Eq. 2,
  which instead emphasizes the target end.
  """
  if weighting == "none":
    return jnp.ones_like(t)
  if weighting == "inverse_time":
    return eps / (t + eps)
  if weighting == "inverse_one_minus_time":
    return eps / (1.0 - t + eps)
  raise ValueError(f"unknown fm_weighting {weighting!r}; expected one of {FM_WEIGHTINGS}")


def flow_matching_loss(velocity_fn: VelocityFn, x0, x1, cond: Any, t: jax.Array, *, weighting: str = "none",
                       eps: float = 0.25, bridge_sigma: float = 0.0, key: jax.Array | None = None,
                       sigma_min: float = 0.0, loss: str = "l2") -> jax.Array:
  """L_CFM = E‖(x1 − x_t)/(1 − t) − v(x_t, t, c)‖² (Eq. 4), optionally time-weighted or with bridge noise.

  With σ_min the target is x1 − (1 − σ_min)·x0; with loss="l1" the error is ‖·‖₁ (DAVIS-Flow Eq. 8).
  """
  x_t = interpolate(x0, x1, t, sigma_min)
  if bridge_sigma > 0.0:
    if key is None:
      raise ValueError("bridge matching needs a PRNG key")
    x_t = bridge_noise(key, x_t, bridge_sigma)
  err = per_example_loss(velocity_fn(x_t, t, cond), target_velocity(x0, x1, sigma_min), loss)
  return jnp.mean(time_weight(t, weighting, eps) * err)


def rollout_start_steps(key: jax.Array, batch: int, num_steps: int, horizon: int) -> jax.Array:
  """Start steps k ~ U{0, …, N−H} per example; k = 0 when the horizon is the whole trajectory (Sec. 3.2.1)."""
  return jax.random.randint(key, (batch,), 0, num_steps - horizon + 1)


def _remat(fn, policy: str):
  if policy == "none":
    return fn
  if policy == "step":
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.nothing_saveable)
  if policy == "dots":
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
  raise ValueError(f"unknown remat policy {policy!r}; expected one of {REMAT_POLICIES}")


def rollout_loss(velocity_fn: VelocityFn, x0, x1, cond: Any, key: jax.Array, *, num_steps: int = 4,
                 horizon: int | None = None, remat_policy: str = "step", unroll: int = 1, sigma_min: float = 0.0,
                 loss: str = "l2") -> jax.Array:
  """Rollout loss E‖x̂_T − x_T‖² (Eq. 5), backpropagated through the unrolled Euler trajectory.

  From the ground-truth x_{k/N}, H Euler steps of size 1/N use the model's own velocities (a `lax.scan`, each
  step under the chosen `jax.checkpoint` policy); the result is compared with the ground-truth x_{(k+H)/N}.
  With H = N (the paper's default T = 4) the rollout starts at the input x0 and ends at the target x1
  (x1 + σ_min·x0 on a path with σ_min).
  """
  horizon = num_steps if horizon is None else horizon
  k = rollout_start_steps(key, x0.shape[0], num_steps, horizon)
  dt = 1.0 / num_steps
  x_start = interpolate(x0, x1, k / num_steps, sigma_min)
  x_end = interpolate(x0, x1, (k + horizon) / num_steps, sigma_min)

  def euler_step(x, i):
    t = (k + i).astype(jnp.float32) / num_steps
    return x + dt * velocity_fn(x, t, cond), None

  x_hat, _ = jax.lax.scan(_remat(euler_step, remat_policy), x_start, jnp.arange(horizon), unroll=unroll)
  return jnp.mean(per_example_loss(x_hat, x_end, loss))


def consistency_loss(velocity_fn: VelocityFn, x0, x1, cond: Any, t: jax.Array, delta: float, *,
                     sigma_min: float = 0.0, loss: str = "l2") -> jax.Array:
  """L_cons = ‖v(x_t, t) − sg(v(x_t + Δ·v(x_t, t), t + Δ))‖² (Eq. 9).

  With t=0 at the input, advancing along the flow is x_t + Δ·v (the paper writes x_t − Δ·v under its opposite
  sign convention); the advanced estimate, including its input, is under stop-gradient.
  """
  x_t = interpolate(x0, x1, t, sigma_min)
  v = velocity_fn(x_t, t, cond)
  x_next = x_t + expand_time(jnp.full_like(t, delta), x_t) * v
  v_next = jax.lax.stop_gradient(velocity_fn(jax.lax.stop_gradient(x_next), t + delta, cond))
  return jnp.mean(per_example_loss(v, v_next, loss))


def flow_loss(velocity_fn: VelocityFn, x0, x1, cond: Any, key: jax.Array,
              cfg: ObjectiveConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The combined objective L = w_fm·L_CFM + λ·L_rollout + w_cons·L_cons; returns (loss, its terms)."""
  t_key, noise_key, rollout_key = jax.random.split(key, 3)
  t = sample_time(t_key, x0.shape[0], cfg.time_sampler, cfg.num_steps, cfg.logit_mean, cfg.logit_std)
  common = dict(sigma_min=cfg.sigma_min, loss=cfg.loss)
  terms = {}
  if cfg.fm_weight:
    terms["fm"] = flow_matching_loss(velocity_fn, x0, x1, cond, t, weighting=cfg.fm_weighting,
                                     eps=cfg.weighting_eps, bridge_sigma=cfg.bridge_sigma, key=noise_key, **common)
  if cfg.rollout_weight:
    terms["rollout"] = rollout_loss(velocity_fn, x0, x1, cond, rollout_key, num_steps=cfg.num_steps,
                                    horizon=cfg.horizon, remat_policy=cfg.remat_policy, unroll=cfg.rollout_unroll,
                                    **common)
  if cfg.consistency_weight:
    terms["consistency"] = consistency_loss(velocity_fn, x0, x1, cond, t, cfg.consistency_delta, **common)
  if not terms:
    raise ValueError("every objective weight is zero: set objective.fm_weight, rollout_weight or consistency_weight")
  weights = {"fm": cfg.fm_weight, "rollout": cfg.rollout_weight, "consistency": cfg.consistency_weight}
  loss = sum(weights[name] * value for name, value in terms.items())
  return loss, terms

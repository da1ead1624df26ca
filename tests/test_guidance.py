"""Guidance (VAFlow Eq. 10, MMAudio's CFG, NAG Eq. 9) on Gaussian data, whose velocities are known in closed form.

x0 ~ 𝒩(0, I) and x1 | c ~ 𝒩(μ_c, s²I), independent: on the linear path x_t ~ 𝒩(t·μ_c, σ_t²I) with
σ_t² = (1−t)² + t²s², and the marginal velocity E[x1 − x0 | x_t, c] = μ_c + (t·s² − (1−t))/σ_t²·(x_t − t·μ_c).
A condition maps to μ_c; the null condition (zeros) to μ = 0. Branch velocities that share s combine into the
velocity of 𝒩(Σ_i w_i·μ_i, s²I) when Σ_i w_i = 1, whose flow carries x0 to Σ_i w_i·μ_i + s·x0.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow import flow
from avflow.flow import guidance

S = 0.5
BATCH, DIM = 3, 4


def _gaussian_velocity(x, t, mean):
  t = t[:, None]
  gain = (t * S**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * S**2)
  return mean + gain * (x - t * mean)


def base_mean(cond):
  """The base network's μ for a condition (video, text); the null condition (zeros) gives μ = 0."""
  return cond["video"] + 0.5 * cond["text"]


def control_mean(cond):
  """The ControlNet branch's μ for (video, no text, audio a generated so far)."""
  return cond["video"] - 0.5 * cond["text"] + cond["audio"]


class Field:
  """A velocity field on the Gaussian data that records the batch of every call (plain Python, no jit)."""

  def __init__(self, mean_fn):
    self.mean_fn = mean_fn
    self.batches = []

  def __call__(self, x, t, cond):
    self.batches.append(x.shape[0])
    return _gaussian_velocity(x, t, self.mean_fn(cond))


def _guided(preset, args):
  """(branches, branch conditions, branch means μ_i in float64, the two fields) of a preset on the Gaussian data."""
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  video, text, audio = (jax.random.normal(k[i], (BATCH, DIM)) for i in range(3))
  vc = {"video": video, "text": text}
  null = guidance.null_condition(vc)
  va = {"video": video, "text": jnp.zeros_like(text), "audio": audio}
  base, control = Field(base_mean), Field(control_mean)
  fns, conds = ((base, base, control), (vc, null, va)) if preset == "nag" else ((base, base), (vc, null))
  means = [np.asarray(f.mean_fn(jax.tree.map(np.asarray, c)), np.float64) for f, c in zip(fns, conds)]
  return list(zip(fns, getattr(guidance, preset)(*args))), conds, means, (base, control)


def _state(seed=1):
  kx, kt = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(kx, (BATCH, DIM)), jax.random.uniform(kt, (BATCH,), maxval=0.95)


PRESETS = [("cfg", (2.0,)), ("mmaudio_cfg", (4.5,)), ("nag", (4.5, 1.5))]


@pytest.mark.parametrize("preset,args", PRESETS)
def test_guided_field_equals_the_analytic_combination_in_one_call_per_network(preset, args):
  branches, conds, means, (base, control) = _guided(preset, args)
  x, t = _state()
  guided = guidance.combine(branches)(x, t, conds)
  x64, t64 = np.asarray(x, np.float64), np.asarray(t, np.float64)
  expected = sum(w * _gaussian_velocity(x64, t64, m) for (_, w), m in zip(branches, means))
  np.testing.assert_allclose(guided, expected, rtol=2e-5, atol=2e-5)
  assert base.batches == [2 * BATCH]  # the conditional and null branches in one batched call
  assert control.batches == ([BATCH] if preset == "nag" else [])


@pytest.mark.parametrize("preset,args", [("cfg", (0.0,)), ("mmaudio_cfg", (1.0,))])
def test_no_guidance_is_the_conditional_branch_bit_for_bit(preset, args):
  branches, conds, _, (base, _) = _guided(preset, args)
  x, t = _state()
  np.testing.assert_array_equal(guidance.combine(branches)(x, t, conds), base(x, t, conds[0]))


def test_nag_weights_sum_to_one_and_beta_zero_is_cfg():
  for alpha, beta in [(4.5, 1.5), (2.0, 0.0), (1.0, 3.0), (-0.5, 0.25)]:
    assert sum(guidance.nag(alpha, beta)) == pytest.approx(1.0, abs=1e-12)
  assert guidance.nag(4.5, 0.0)[:2] == guidance.mmaudio_cfg(4.5) == guidance.cfg(3.5)
  nag, nag_conds, _, _ = _guided("nag", (4.5, 0.0))
  cfg, cfg_conds, _, _ = _guided("mmaudio_cfg", (4.5,))
  x, t = _state()
  np.testing.assert_array_equal(guidance.combine(nag)(x, t, nag_conds), guidance.combine(cfg)(x, t, cfg_conds))


@pytest.mark.parametrize("preset,args", [("cfg", (2.0,)), ("nag", (4.5, 1.5))])
def test_guided_flow_lands_on_the_tilted_gaussian(preset, args):
  # Σ w_i = 1 and one s: the guided field is the velocity of 𝒩(Σ w_i·μ_i, s²I), whose flow maps x0 to Σ w_i·μ_i + s·x0.
  branches, conds, means, _ = _guided(preset, args)
  field = guidance.combine(branches)
  x0 = jax.random.normal(jax.random.PRNGKey(2), (BATCH, DIM))
  expected = sum(w * m for (_, w), m in zip(branches, means)) + S * np.asarray(x0, np.float64)
  adaptive = jax.jit(lambda x0, conds: flow.integrate_dopri5(field, x0, conds).final)(x0, conds)
  np.testing.assert_allclose(adaptive, expected, rtol=1e-4, atol=1e-4)
  grid = jax.jit(lambda x0, conds: flow.integrate(field, x0, conds, 32, "heun").final)(x0, conds)
  np.testing.assert_allclose(grid, expected, rtol=1e-3, atol=1e-3)


def test_combine_errors():
  [(base, _), _, _], (vc, null, va), _, _ = _guided("nag", (4.5, 1.5))
  x, t = _state()
  with pytest.raises(ValueError, match="at least one branch"):
    guidance.combine([])
  with pytest.raises(ValueError, match="2 branches but got 1 conditions"):
    guidance.combine([(base, 2.0), (base, -1.0)])(x, t, (vc,))
  with pytest.raises(ValueError, match=r"branches \[0, 1\] share a velocity field"):
    guidance.combine([(base, 2.0), (base, -1.0)])(x, t, (vc, va))


def _dropout_condition(n, seed=3):
  ka, kb = jax.random.split(jax.random.PRNGKey(seed))
  return {"clip": jax.random.normal(ka, (n, 2, 3)), "sync": 1.0 + jax.random.uniform(kb, (n, 5))}


def _dropped_rows(cond, dropped_cond, null):
  """Which examples became the null, checking that every example is either untouched or wholly the null."""
  rows = []
  for name in cond:
    kept = np.all(np.asarray(dropped_cond[name] == cond[name]).reshape(len(cond[name]), -1), axis=1)
    nulled = np.all(np.asarray(dropped_cond[name] == null[name]).reshape(len(cond[name]), -1), axis=1)
    assert np.all(kept ^ nulled)
    rows.append(nulled)
  assert all(np.array_equal(rows[0], r) for r in rows[1:])  # one draw per example, shared by the leaves
  return rows[0]


def _numpy_null(cond, learned_null=None):
  """The null by hand: zeros, or each learned leaf broadcast to every example."""
  if learned_null is None:
    return {name: np.zeros(leaf.shape, np.float32) for name, leaf in cond.items()}
  return {name: np.broadcast_to(np.asarray(learned_null[name]), leaf.shape) for name, leaf in cond.items()}


@pytest.mark.parametrize("learned", [False, True])
def test_condition_dropout_rate_and_exact_nulls(learned):
  n = 20000
  cond = _dropout_condition(n)
  learned_null = {"clip": jnp.array([[0.25, -0.5, 0.75]]), "sync": jnp.full((5,), -2.0)} if learned else None
  # jit-able, the learned null a traced argument as a parameter of the model would be.
  drop = jax.jit(lambda key, cond, null: guidance.drop_condition(key, cond, 0.1, null))
  dropped = _dropped_rows(cond, drop(jax.random.PRNGKey(4), cond, learned_null), _numpy_null(cond, learned_null))
  assert abs(dropped.mean() - 0.1) < 0.01  # 4.7 binomial standard deviations


def test_condition_dropout_is_key_driven_and_validates():
  cond = _dropout_condition(64)
  key = jax.random.PRNGKey(5)
  null = _numpy_null(cond)
  first = guidance.drop_condition(key, cond)
  np.testing.assert_array_equal(_dropped_rows(cond, first, null),
                                _dropped_rows(cond, guidance.drop_condition(key, cond), null))
  assert not np.array_equal(_dropped_rows(cond, first, null),
                            _dropped_rows(cond, guidance.drop_condition(jax.random.PRNGKey(6), cond), null))
  assert not _dropped_rows(cond, guidance.drop_condition(key, cond, 0.0), null).any()
  assert _dropped_rows(cond, guidance.drop_condition(key, cond, 1.0), null).all()
  with pytest.raises(ValueError, match="rate must be in"):
    guidance.drop_condition(key, cond, 1.5)
  with pytest.raises(ValueError, match="batch axis first"):
    guidance.drop_condition(key, {"clip": cond["clip"], "sync": cond["sync"][:10]})

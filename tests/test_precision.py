"""Mixed precision (`config.precision`), and what a non-finite update does to the state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import visah_fm
from jax.extend import core

from avflow.data.pipeline import device_batch, make_dataset, make_source
from avflow.models.visah.highlighter import Highlighter
from avflow.train import precision
from avflow.train.state import create_train_state, make_optimizer
from avflow.train.step import make_loss_fn, make_train_step
from conftest import tiny

# bf16 keeps 8 significant bits (relative spacing 2^-8 ≈ 0.4 %); the loss may move by a few of those.
LOSS_RTOL = 2e-2


def _low_precision_ops(jaxpr, found=None):
  """Operand dtypes of every dot_general / conv_general_dilated, sub-jaxprs included."""
  found = [] if found is None else found
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
      found.append(str(eqn.invars[0].aval.dtype))
    for sub in core.jaxprs_in_params(eqn.params):
      _low_precision_ops(sub, found)
  return found


def _toy(w, x):
  def step(c, _):
    y = jax.lax.conv_general_dilated(c[:, :, None], w[:3, :1, None], (1,), "SAME",
                                     dimension_numbers=("NWC", "WIO", "NWC"))[..., 0]
    return jnp.tanh(c @ w) + 0.1 * y, None

  y, _ = jax.lax.scan(jax.checkpoint(step), x, jnp.arange(3))
  return jnp.sum(jnp.fft.rfft(y).real), {"mean": jnp.mean(y)}


def test_autocast_runs_matmuls_and_convs_in_bf16_through_scan_and_remat():
  w = 0.3 * jax.random.normal(jax.random.PRNGKey(0), (8, 8))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
  (loss32, _), g32 = jax.value_and_grad(_toy, has_aux=True)(w, x)
  mixed = precision.autocast(_toy, "bf16")
  (loss16, aux), g16 = jax.jit(jax.value_and_grad(mixed, has_aux=True))(w, x)
  assert loss16.dtype == g16.dtype == aux["mean"].dtype == jnp.float32
  np.testing.assert_allclose(loss16, loss32, rtol=LOSS_RTOL)
  assert float(jnp.max(jnp.abs(g16 - g32))) < 0.05 * float(jnp.max(jnp.abs(g32)))
  ops = _low_precision_ops(jax.make_jaxpr(jax.grad(lambda w: mixed(w, x)[0]))(w).jaxpr)
  assert ops and set(ops) == {"bfloat16"}  # forward and backward, inside the scan and the remat
  assert precision.autocast(_toy, "fp32") is _toy
  with pytest.raises(ValueError, match="precision"):
    precision.autocast(_toy, "fp16")


@pytest.fixture(scope="module")
def micro():
  config = tiny(visah_fm.get_config("toy"), micro=True, batch_size=2)
  model, tx = Highlighter(config.model), make_optimizer(config)
  batch = device_batch(next(iter(make_dataset(make_source(config.data, "train"), config.data, batch_size=2, seed=0,
                                              train=True))))
  return config, model, tx, batch, create_train_state(model, config, batch, tx)


def test_bf16_step_keeps_fp32_state_and_the_loss_within_tolerance(micro):
  config, model, tx, batch, state = micro
  rng = jax.random.PRNGKey(3)
  results = {}
  for name in ("fp32", "bf16"):
    config.precision = name
    new_state, metrics = jax.jit(make_train_step(model, config, tx))(state, batch, rng)
    results[name] = float(metrics["loss"])
    assert bool(metrics["finite"])
    for leaf in jax.tree.leaves((new_state.params, new_state.opt_state)):
      assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
  assert abs(results["bf16"] - results["fp32"]) <= LOSS_RTOL * results["fp32"], results
  loss_jaxpr = jax.make_jaxpr(precision.autocast(make_loss_fn(model, config), "bf16"))(state.params, batch, rng)
  assert set(_low_precision_ops(loss_jaxpr.jaxpr)) == {"bfloat16"}


def test_a_non_finite_update_is_skipped(micro):
  """`nonfinite=skip` relies on this: the step reports it and keeps parameters and optimizer state."""
  config, model, tx, batch, state = micro
  config.precision = "fp32"
  bad = dict(batch, x0=np.full_like(batch["x0"], np.nan))
  new_state, metrics = jax.jit(make_train_step(model, config, tx))(state, bad, jax.random.PRNGKey(3))
  assert not bool(metrics["finite"]) and int(new_state.step) == int(state.step) + 1
  for new, old in zip(jax.tree.leaves((new_state.params, new_state.opt_state)),
                      jax.tree.leaves((state.params, state.opt_state))):
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old))

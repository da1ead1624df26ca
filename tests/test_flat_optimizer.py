"""The optimizer on one buffer equals optax's per-leaf chain, keeps its state layout and skips non-finite steps."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avflow.train.flat_optimizer import FlatOptimizer
from avflow.train.partition import freeze

FROZEN = ("encoder",)


def _params(key):
  k = jax.random.split(key, 4)
  return {"encoder": {"w": jax.random.normal(k[0], (3, 2))},
          "head": {"kernel": jax.random.normal(k[1], (4, 5)), "bias": jax.random.normal(k[2], (5,))},
          "scale": jax.random.normal(k[3], ())}


def _chain():
  return optax.chain(optax.clip_by_global_norm(0.5), optax.adam(optax.cosine_decay_schedule(1e-2, 10)))


@pytest.mark.parametrize("one_buffer", [True, False])
@pytest.mark.parametrize("frozen", [(), FROZEN])
def test_matches_per_leaf_optax_and_keeps_its_layout(frozen, one_buffer):
  params = _params(jax.random.PRNGKey(0))
  flat = FlatOptimizer(_chain(), frozen, one_buffer)
  reference = freeze(_chain(), frozen) if frozen else _chain()
  state, ref_state = flat.init(params), reference.init(params)
  assert jax.tree.structure(flat.saved_state(state, params)) == jax.tree.structure(ref_state)
  ref_params = params
  apply = jax.jit(flat.apply)
  for step in range(3):
    grads = jax.tree.map(lambda x: (step + 1.0) * jnp.cos(x), params)
    params, state, finite, grad_norm = apply(grads, state, params, jnp.bool_(True))
    updates, ref_state = reference.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    assert bool(finite)
    trainable = {k: v for k, v in grads.items() if k not in frozen}
    np.testing.assert_allclose(grad_norm, optax.tree.norm(trainable), rtol=1e-6)
  saved = flat.saved_state(state, params)
  for got, want in zip(jax.tree.leaves(params) + jax.tree.leaves(saved),
                       jax.tree.leaves(ref_params) + jax.tree.leaves(ref_state)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  if frozen:
    np.testing.assert_array_equal(params["encoder"]["w"], _params(jax.random.PRNGKey(0))["encoder"]["w"])
  # Back from the checkpoint layout, bit for bit.
  for got, want in zip(jax.tree.leaves(flat.buffer_state(saved, params)), jax.tree.leaves(state)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("one_buffer", [True, False])
def test_a_checkpoint_holds_the_per_leaf_layout_and_resumes_exactly(tmp_path, one_buffer):
  """The step carries the moments as buffers; the checkpoint keeps optax's per-leaf state and restores into the
  step's layout, so a resumed step equals an uninterrupted one."""
  from avflow.train.checkpoint import Checkpointer
  from avflow.train.state import TrainState
  params = _params(jax.random.PRNGKey(5))
  flat = FlatOptimizer(_chain(), FROZEN, one_buffer)
  apply = jax.jit(flat.apply)

  def step(state, k):
    grads = jax.tree.map(lambda x: (k + 1.0) * jnp.cos(x), state.params)
    new_params, opt_state, _, _ = apply(grads, state.opt_state, state.params, jnp.bool_(True))
    return state.replace(step=state.step + 1, params=new_params, opt_state=opt_state)

  state = TrainState(step=jnp.int32(0), params=params, opt_state=flat.init(params), rng=jax.random.PRNGKey(0))
  state = step(state, 0)
  ckpt = Checkpointer(str(tmp_path), async_save=False, optimizer=flat)
  ckpt.save(1, state)
  plain = Checkpointer(str(tmp_path)).restore(state.replace(opt_state=flat.per_leaf.init(params)))
  for got, want in zip(jax.tree.leaves(plain.opt_state), jax.tree.leaves(flat.saved_state(state.opt_state, params))):
    np.testing.assert_array_equal(got, want)
  # A checkpoint in the per-leaf layout, as any Checkpointer without the optimizer writes it, restores alike.
  per_leaf = state.replace(opt_state=flat.saved_state(state.opt_state, params))
  Checkpointer(str(tmp_path), async_save=False).save(2, per_leaf)
  for got, want in zip(jax.tree.leaves(ckpt.restore(state, step=2)), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)
  restored = ckpt.restore(step(state, 5), step=1)  # a template of the same layout, other values
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for got, want in zip(jax.tree.leaves(step(restored, 1)), jax.tree.leaves(step(state, 1))):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("one_buffer", [True, False])
@pytest.mark.parametrize("bad", ["loss", "grad"])
def test_a_non_finite_step_changes_nothing(bad, one_buffer):
  params = _params(jax.random.PRNGKey(1))
  flat = FlatOptimizer(_chain(), FROZEN, one_buffer)
  state = flat.init(params)
  grads = jax.tree.map(jnp.sin, params)
  if bad == "grad":
    grads["head"]["bias"] = grads["head"]["bias"].at[2].set(jnp.nan)
  new_params, new_state, finite, _ = jax.jit(flat.apply)(grads, state, params, jnp.bool_(bad != "loss"))
  assert not bool(finite)
  for got, want in zip(jax.tree.leaves((new_params, new_state)), jax.tree.leaves((params, state))):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("one_buffer", [True, False])
def test_a_frozen_gradient_does_not_stop_the_step(one_buffer):
  """Frozen encoders get no update, so their gradient (which may overflow) is not checked."""
  params = _params(jax.random.PRNGKey(2))
  flat = FlatOptimizer(_chain(), FROZEN, one_buffer)
  grads = jax.tree.map(jnp.sin, params)
  grads["encoder"]["w"] = jnp.full((3, 2), jnp.inf)
  new_params, _, finite, _ = jax.jit(flat.apply)(grads, flat.init(params), params, jnp.bool_(True))
  assert bool(finite)
  assert not np.allclose(new_params["head"]["kernel"], params["head"]["kernel"])
  np.testing.assert_array_equal(new_params["encoder"]["w"], params["encoder"]["w"])


def test_sharded_parameters_are_updated_leaf_by_leaf():
  """With FSDP (or explicit sharding rules) one buffer would gather every parameter onto every device."""
  import visah_fm
  from avflow.train.state import make_optimizer
  config = visah_fm.get_config("toy")
  assert make_optimizer(config).one_buffer
  config.mesh.fsdp = 2
  assert not make_optimizer(config).one_buffer
  config.mesh.fsdp = 1
  config.mesh.rules = ((".*kernel", (None, "data")),)
  assert not make_optimizer(config).one_buffer


@pytest.mark.parametrize("one_buffer", [True, False])
def test_lr_multipliers_equal_adam_at_the_scaled_rate_on_that_subtree(one_buffer):
  """Adam's update is linear in its learning rate, so a factor on `head` equals running `head` at lr·factor."""
  params = _params(jax.random.PRNGKey(3))
  schedule = optax.cosine_decay_schedule(1e-2, 10)
  flat = FlatOptimizer(optax.adam(schedule), FROZEN, one_buffer, lr_multipliers={"head": 0.1, "head/bias": 3.0})
  factors = {"head/kernel": 0.1, "head/bias": 3.0, "scale": 1.0}  # the longest prefix wins
  reference = optax.multi_transform(
      {name: optax.adam(lambda n, f=f: f * schedule(n)) for name, f in factors.items()} | {"encoder": optax.set_to_zero()},
      {"encoder": {"w": "encoder"}, "head": {"kernel": "head/kernel", "bias": "head/bias"}, "scale": "scale"})
  state, ref_state, ref_params = flat.init(params), reference.init(params), params
  for step in range(3):
    grads = jax.tree.map(lambda x: (step + 1.0) * jnp.cos(x), params)
    params, state, _, _ = jax.jit(flat.apply)(grads, state, params, jnp.bool_(True))
    updates, ref_state = reference.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_an_lr_multiplier_on_no_trainable_parameter_is_an_error():
  params = _params(jax.random.PRNGKey(4))
  for prefix in ("haed", "encoder"):  # misspelt; frozen
    flat = FlatOptimizer(optax.adam(1e-3), FROZEN, lr_multipliers={prefix: 0.1})
    with pytest.raises(ValueError, match=f"optimizer.lr_multipliers names '{prefix}'.*head, scale"):
      flat.apply(params, flat.init(params), params, jnp.bool_(True))

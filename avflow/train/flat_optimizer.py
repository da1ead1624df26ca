"""The optimizer on one buffer: clipping, Adam, the finiteness check and the skip of a non-finite step run on the
concatenation of all trainable parameters instead of leaf by leaf.

Per leaf, optax's chain lowers to ~46 lines of StableHLO (the paper-scale model has 563 leaves: 25,800 lines, more
than its forward and backward together) and the finiteness check and the skip add ~6 more; on one buffer they are a
few dozen lines in all, and each leaf costs one line to concatenate and two to split back. The optimizer state keeps
the per-leaf layout of `freeze(tx, frozen_prefixes)` (the checkpoint layout does not change); it is converted to the
buffer and back inside the step, where XLA turns the conversions into copies.
"""
import itertools
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import optax

from avflow.train.partition import TRAINABLE, freeze, frozen_mask, update_scales


def _concat(leaves: list) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in leaves])


def _split(buffer: jax.Array, like: list) -> list:
  """`buffer` cut into arrays of the shapes and dtypes of the `like` leaves (the inverse of `_concat`)."""
  offsets = [0]
  for x in like:
    offsets.append(offsets[-1] + x.size)
  return [buffer[a:b].reshape(x.shape).astype(x.dtype) for a, b, x in zip(offsets, offsets[1:], like)]


def _keep(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where the step is finite, else `old` (leaf by leaf)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


class FlatOptimizer:
  """`tx` applied to the trainable parameters as one buffer; frozen ones keep their values and have no state.

  `init(params)` is `freeze(tx, frozen_prefixes).init(params)` (or `tx.init` without frozen prefixes), so a state
  built, saved or restored before is the same tree. With `one_buffer=False` (parameters sharded over devices, FSDP)
  the same update runs leaf by leaf, where each shard updates locally: one buffer would gather every parameter onto
  every device.

  `lr_multipliers` ({prefix: factor}) scales the updates of the trainable subtrees under each prefix after `tx`: a
  learning rate `factor` times the schedule's for that part of the model (Adam's step does not see a gradient
  scale, so the factor has to act on its update).
  """

  def __init__(self, tx: optax.GradientTransformation, frozen_prefixes: Iterable[str] = (), one_buffer: bool = True,
               lr_multipliers: Mapping[str, float] | None = None):
    self.tx = tx
    self.frozen_prefixes = tuple(frozen_prefixes)
    self.one_buffer = one_buffer
    self.lr_multipliers = dict(lr_multipliers or {})

  @property
  def per_leaf(self) -> optax.GradientTransformation:
    """The transformation whose state layout the train state keeps."""
    return freeze(self.tx, self.frozen_prefixes) if self.frozen_prefixes else self.tx

  def init(self, params: Any) -> Any:
    return self.per_leaf.init(params)

  def _inner(self, opt_state):
    return opt_state.inner_states[TRAINABLE].inner_state if self.frozen_prefixes else opt_state

  def _with_inner(self, opt_state, inner):
    if not self.frozen_prefixes:
      return inner
    states = dict(opt_state.inner_states)
    states[TRAINABLE] = states[TRAINABLE]._replace(inner_state=inner)
    return opt_state._replace(inner_states=states)

  def apply(self, grads: Any, opt_state: Any, params: Any, finite_loss: jax.Array):
    """One optimizer step → (params, opt_state, finite, grad_norm).

    When the loss or a trainable gradient is not finite, params and optimizer state come back unchanged and
    `finite` is False. `grad_norm` is the global norm of the trainable gradients (what `clip_by_global_norm`
    clips).
    """
    p_leaves, treedef = jax.tree.flatten(params)
    trainable = [i for i, frozen in enumerate(jax.tree.leaves(frozen_mask(params, self.frozen_prefixes)))
                 if not frozen]
    g_leaves = jax.tree.leaves(grads)
    if not self.one_buffer:
      return self._apply_per_leaf(grads, opt_state, params, finite_loss, [g_leaves[i] for i in trainable])
    g = _concat([g_leaves[i] for i in trainable])
    p = _concat([p_leaves[i] for i in trainable])
    inner = self._inner(opt_state)
    # Leaves of the buffer state that are vectors of the buffer's length stand for a subtree of per-leaf moments.
    template = jax.eval_shape(self.tx.init, p)
    is_moment = lambda t: t.shape == p.shape  # noqa: E731
    state = jax.tree.map(lambda t, sub: _concat(jax.tree.leaves(sub)) if is_moment(t) else sub, template, inner)
    updates, new_state = self.tx.update(g, state, p)
    if self.lr_multipliers:
      # A subtree's leaves are contiguous in the buffer: a few runs of one factor each, broadcast, not stored.
      leaves = jax.tree.leaves(update_scales(params, self.frozen_prefixes, self.lr_multipliers))
      runs = [(f, sum(p_leaves[i].size for i in group))
              for f, group in itertools.groupby(trainable, key=lambda i: leaves[i])]
      updates = updates * jnp.concatenate([jnp.full((n,), f, updates.dtype) for f, n in runs])
    finite = finite_loss & jnp.all(jnp.isfinite(g))
    p = _keep(finite, optax.apply_updates(p, updates), p)
    new_state = _keep(finite, new_state, state)
    for i, leaf in zip(trainable, _split(p, [p_leaves[i] for i in trainable])):
      p_leaves[i] = leaf
    new_inner = jax.tree.map(
        lambda t, buffer, sub: jax.tree.unflatten(jax.tree.structure(sub), _split(buffer, jax.tree.leaves(sub)))
        if is_moment(t) else buffer, template, new_state, inner)
    return jax.tree.unflatten(treedef, p_leaves), self._with_inner(opt_state, new_inner), finite, optax.tree.norm(g)

  def _apply_per_leaf(self, grads, opt_state, params, finite_loss, trainable_grads: list):
    updates, new_state = self.per_leaf.update(grads, opt_state, params)
    if self.lr_multipliers:
      scales = update_scales(params, self.frozen_prefixes, self.lr_multipliers)
      updates = jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, scales)
    finite = finite_loss & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in trainable_grads]))
    return (_keep(finite, optax.apply_updates(params, updates), params), _keep(finite, new_state, opt_state), finite,
            optax.tree.norm(trainable_grads))

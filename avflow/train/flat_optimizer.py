"""The optimizer on one buffer: clipping, Adam, the finiteness check and the skip of a non-finite step run on the
concatenation of all trainable parameters instead of leaf by leaf.

Per leaf, optax's chain lowers to ~46 lines of StableHLO (the paper-scale model has 563 leaves: 25,800 lines, more
than its forward and backward together) and the finiteness check and the skip add ~6 more; on one buffer they are a
few dozen lines in all. The optimizer state the train step carries is `tx`'s state for the buffer (Adam's moments
are two vectors), so only the parameters are cut back into leaves inside the step; checkpoints keep the per-leaf
layout of `freeze(tx, frozen_prefixes)`, converted on the host when saving and restoring (`saved_state`,
`buffer_state`): converting inside the step cost one kernel per leaf and moment, ~17 of the paper-shape step's
62 s of compile on 2 CPU cores.
"""
import itertools
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from avflow.train.partition import TRAINABLE, freeze, frozen_mask, update_scales


def _concat(leaves: list) -> jax.Array:
  return jnp.concatenate([jnp.ravel(x) for x in leaves])


def _split(buffer, like: list) -> list:
  """`buffer` (a jax or numpy vector) cut into arrays of the shapes and dtypes of the `like` leaves (the inverse of
  `_concat`; numpy pieces are views where the dtype agrees)."""
  offsets = np.cumsum([0] + [int(np.prod(x.shape)) for x in like])
  return [buffer[a:b].reshape(x.shape).astype(x.dtype, copy=False) for a, b, x in zip(offsets, offsets[1:], like)]


def _keep(finite: jax.Array, new: Any, old: Any) -> Any:
  """`new` where the step is finite, else `old` (leaf by leaf)."""
  return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)


class FlatOptimizer:
  """`tx` applied to the trainable parameters as one buffer; frozen ones keep their values and have no state.

  With `one_buffer=False` (parameters sharded over devices, FSDP) the same update runs leaf by leaf, where each
  shard updates locally (one buffer would gather every parameter onto every device), and the state is the per-leaf
  one throughout.

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
    """The transformation whose state layout checkpoints keep."""
    return freeze(self.tx, self.frozen_prefixes) if self.frozen_prefixes else self.tx

  def _trainable(self, params: Any) -> list[int]:
    """Indices of the trainable leaves among `params`' leaves (the buffer's order)."""
    return [i for i, frozen in enumerate(jax.tree.leaves(frozen_mask(params, self.frozen_prefixes))) if not frozen]

  def _buffer_shape(self, params: Any) -> jax.ShapeDtypeStruct:
    leaves = jax.tree.leaves(params)
    return jax.eval_shape(lambda *t: _concat(t), *[leaves[i] for i in self._trainable(params)])

  def init(self, params: Any) -> Any:
    """The state the train step carries: `tx`'s state for the buffer (`per_leaf`'s with `one_buffer=False`)."""
    if not self.one_buffer:
      return self.per_leaf.init(params)
    buffer = self._buffer_shape(params)
    return self.tx.init(jnp.zeros(buffer.shape, buffer.dtype))

  def _inner(self, opt_state):
    return opt_state.inner_states[TRAINABLE].inner_state if self.frozen_prefixes else opt_state

  def _with_inner(self, opt_state, inner):
    if not self.frozen_prefixes:
      return inner
    states = dict(opt_state.inner_states)
    states[TRAINABLE] = states[TRAINABLE]._replace(inner_state=inner)
    return opt_state._replace(inner_states=states)

  def _moments(self, params: Any):
    """(the buffer state's shapes, whether a leaf of it is a moment: a vector of the buffer's length that stands
    for a subtree of per-leaf moments in the checkpoint layout)."""
    buffer = self._buffer_shape(params)
    return jax.eval_shape(self.tx.init, buffer), lambda t: tuple(t.shape) == buffer.shape

  def saved_state(self, opt_state: Any, params: Any) -> Any:
    """`opt_state` in the checkpoint layout (`per_leaf`'s state), as numpy arrays: the moments cut into leaves.
    The identity with `one_buffer=False`."""
    if not self.one_buffer:
      return opt_state
    layout = jax.eval_shape(self.per_leaf.init, params)
    template, is_moment = self._moments(params)
    inner = jax.tree.map(
        lambda t, value, sub: jax.tree.unflatten(jax.tree.structure(sub), _split(value, jax.tree.leaves(sub)))
        if is_moment(t) else value, template, jax.device_get(opt_state), self._inner(layout))
    return self._with_inner(layout, inner)

  def buffer_state(self, saved: Any, params: Any) -> Any:
    """The inverse of `saved_state`: the state the train step carries, as numpy arrays, from the checkpoint
    layout."""
    if not self.one_buffer:
      return saved
    template, is_moment = self._moments(params)

    def joined(t, sub):
      if not is_moment(t):
        return np.asarray(sub)
      return np.concatenate([np.ravel(x) for x in jax.tree.leaves(sub)]).astype(t.dtype, copy=False)

    return jax.tree.map(joined, template, jax.device_get(self._inner(saved)))

  def apply(self, grads: Any, opt_state: Any, params: Any, finite_loss: jax.Array):
    """One optimizer step → (params, opt_state, finite, grad_norm).

    When the loss or a trainable gradient is not finite, params and optimizer state come back unchanged and
    `finite` is False. `grad_norm` is the global norm of the trainable gradients (what `clip_by_global_norm`
    clips).
    """
    p_leaves, treedef = jax.tree.flatten(params)
    trainable = self._trainable(params)
    g_leaves = jax.tree.leaves(grads)
    if not self.one_buffer:
      return self._apply_per_leaf(grads, opt_state, params, finite_loss, [g_leaves[i] for i in trainable])
    g = _concat([g_leaves[i] for i in trainable])
    p = _concat([p_leaves[i] for i in trainable])
    updates, new_state = self.tx.update(g, opt_state, p)
    if self.lr_multipliers:
      # A subtree's leaves are contiguous in the buffer: a few runs of one factor each, broadcast, not stored.
      leaves = jax.tree.leaves(update_scales(params, self.frozen_prefixes, self.lr_multipliers))
      runs = [(f, sum(p_leaves[i].size for i in group))
              for f, group in itertools.groupby(trainable, key=lambda i: leaves[i])]
      updates = updates * jnp.concatenate([jnp.full((n,), f, updates.dtype) for f, n in runs])
    finite = finite_loss & jnp.all(jnp.isfinite(g))
    p = _keep(finite, optax.apply_updates(p, updates), p)
    for i, leaf in zip(trainable, _split(p, [p_leaves[i] for i in trainable])):
      p_leaves[i] = leaf
    return jax.tree.unflatten(treedef, p_leaves), _keep(finite, new_state, opt_state), finite, optax.tree.norm(g)

  def _apply_per_leaf(self, grads, opt_state, params, finite_loss, trainable_grads: list):
    updates, new_state = self.per_leaf.update(grads, opt_state, params)
    if self.lr_multipliers:
      scales = update_scales(params, self.frozen_prefixes, self.lr_multipliers)
      updates = jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, scales)
    finite = finite_loss & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in trainable_grads]))
    return (_keep(finite, optax.apply_updates(params, updates), params), _keep(finite, new_state, opt_state), finite,
            optax.tree.norm(trainable_grads))

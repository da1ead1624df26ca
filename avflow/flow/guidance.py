"""Guidance: velocity fields combined from condition branches, and the condition dropout that trains the null branch.

A branch is a velocity field `f(x_t, t, cond)` with a weight w_i; `combine` makes the guided field
ṽ(x_t, t, (c_1, …, c_n)) = Σ_i w_i·f_i(x_t, t, c_i), which `integrate` and `integrate_dopri5` take like any other,
with the tuple of branch conditions as its condition. The presets give the weights:

  VAFlow (Eq. 10)   `cfg(γ)`          (c, ∅):        (1+γ)·v(c) − γ·v(∅)
  MMAudio           `mmaudio_cfg(w)`  (c, ∅):        w·v(c) + (1−w)·v(∅)
  negative prompt   `negative_prompt(w)` (VC, ∅C_neg): w·u(V,C) + (1−w)·u(∅,C_neg)
  NAG (Eq. 9)       `nag(α, β)`       (VC, ∅∅, V∅a): (α+β)·u(V,C) + (1−α)·u(∅,∅) − β·u_{θ,ψ}(V,∅,a)

e.g. `field = combine([(v, w) for w in cfg(γ)])` integrated with the condition `(c, null_condition(c))`. A null
condition ∅ is zeros (VAFlow) or a learned null (MMAudio's empty tokens); `drop_condition` replaces the condition of
a random 10 % of the examples by it during training (VAFlow Sec. 3.3), so that one network learns both v(c) and v(∅).
"""
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from avflow.flow.solvers import VelocityFn

Branch = tuple[VelocityFn, float | jax.Array]


def cfg(gamma: float) -> tuple[float, float]:
  """VAFlow's classifier-free guidance (Eq. 10), v = (1+γ)·v(x_t, t, c) − γ·v(x_t, t, ∅): weights of (c, ∅)."""
  return 1.0 + gamma, -gamma


def mmaudio_cfg(w: float) -> tuple[float, float]:
  """MMAudio's guidance w·v(c) + (1−w)·v(∅) (NAG Eq. 3, λ = w; 4.5 by default): weights of (c, ∅); cfg(w − 1)."""
  return w, 1.0 - w


def negative_prompt(w: float) -> tuple[float, float]:
  """The negative-prompting baseline of NAG (Sec. 4, MMAudio's negative text in its empty branch): ũ = u(∅,C_neg) +
  w·(u(V,C) − u(∅,C_neg)), weights of (VC, ∅C_neg), C_neg the captions of the tracks so far; `mmaudio_cfg(w)` with
  the null branch keeping the negative text."""
  return mmaudio_cfg(w)


def nag(alpha: float, beta: float) -> tuple[float, float, float]:
  """Negative audio guidance (NAG Eq. 9): weights of the branches (VC, ∅∅, V∅a).

  ũ = u(∅,∅) + α·(u(V,C) − u(∅,∅)) + β·(u(V,C) − u_{θ,ψ}(V,∅,a)) = (α+β)·u(V,C) + (1−α)·u(∅,∅) − β·u_{θ,ψ}(V,∅,a),
  the last branch the ControlNet's, conditioned on the audio a generated so far. The weights sum to 1; β = 0 is
  `mmaudio_cfg(α)` with the negative branch weighted 0. The paper's defaults: α = 4.5, β = 1.5.
  """
  return alpha + beta, 1.0 - alpha, -beta


def combine(branches: Sequence[Branch]) -> VelocityFn:
  """The guided field ṽ(x_t, t, conds) = Σ_i w_i·f_i(x_t, t, conds[i]) of the branches (f_i, w_i).

  Branches that share one field (the same Python object) are evaluated in one call: x_t and t repeated along the
  batch axis, the branch conditions' leaves concatenated along it (so they must have one pytree structure), the
  output split back. NAG's ControlNet branch is a second field, hence a second call.
  """
  if not branches:
    raise ValueError("combine needs at least one branch (velocity_fn, weight)")
  groups: list[tuple[VelocityFn, list[int]]] = []
  for i, (fn, _) in enumerate(branches):
    group = next((g for g in groups if g[0] is fn), None)
    if group is None:
      groups.append((fn, [i]))
    else:
      group[1].append(i)

  def field(x: jax.Array, t: jax.Array, conds: Sequence[Any]) -> jax.Array:
    if len(conds) != len(branches):
      raise ValueError(f"the guided field has {len(branches)} branches but got {len(conds)} conditions")
    velocities = [None] * len(branches)
    for fn, members in groups:
      structures = {jax.tree.structure(conds[i]) for i in members}
      if len(structures) > 1:
        raise ValueError(f"branches {members} share a velocity field, so their conditions must share a pytree "
                         f"structure; got {sorted(map(str, structures))}")
      k = len(members)
      cond = jax.tree.map(lambda *leaves: jnp.concatenate(leaves, axis=0), *(conds[i] for i in members))
      out = fn(jnp.concatenate([x] * k, axis=0), jnp.concatenate([t] * k, axis=0), cond)
      for i, v in zip(members, jnp.split(out, k, axis=0)):
        velocities[i] = v
    guided = branches[0][1] * velocities[0]
    for (_, w), v in zip(branches[1:], velocities[1:]):
      guided = guided + w * v
    return guided
  return field


def null_condition(cond: Any, null: Any = None) -> Any:
  """The null condition ∅ for a batch shaped like `cond`: zeros (VAFlow), or a learned null (MMAudio's empty tokens).

  `null` has the pytree structure of `cond`, each leaf one example's null, broadcast to the example's shape (e.g. a
  (1, D) token for (B, T, D) features) and repeated over the batch.
  """
  if null is None:
    return jax.tree.map(jnp.zeros_like, cond)

  def broadcast(leaf, null_leaf):
    example = jnp.broadcast_to(jnp.asarray(null_leaf, leaf.dtype), leaf.shape[1:])
    return jnp.broadcast_to(example, leaf.shape)
  return jax.tree.map(broadcast, cond, null)


def drop_condition(key: jax.Array, cond: Any, rate: float = 0.1, null: Any = None) -> Any:
  """Condition dropout: each example's whole condition becomes `null_condition(cond, null)` with probability `rate`.

  VAFlow zeroes x_v with probability 10 % (Sec. 3.3). One Bernoulli draw per example, shared by all the leaves;
  every leaf has the batch axis first.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"condition dropout rate must be in [0, 1], got {rate}")
  leaves = jax.tree.leaves(cond)
  if not leaves:
    return cond
  batches = {leaf.shape[:1] for leaf in leaves}
  if len(batches) != 1 or batches == {()}:
    raise ValueError(f"every condition leaf needs the batch axis first; got shapes {[leaf.shape for leaf in leaves]}")
  (batch,), = batches
  dropped = jax.random.bernoulli(key, rate, (batch,))

  def select(leaf, null_leaf):
    return jnp.where(dropped.reshape((batch,) + (1,) * (leaf.ndim - 1)), null_leaf, leaf)
  return jax.tree.map(select, cond, null_condition(cond, null))

"""Freezing parameter subtrees (pretrained CLIP / CLAP backbones; paper Sec. 2.2.2).

A leaf is frozen when its path (`"vision_model/encoder/layers_0/mlp/fc1/kernel"`) equals a
prefix or lies below it, so `"vision_model"` freezes the CLIP tower and leaves `"adapter"`
trainable. `freeze` routes frozen leaves to `optax.set_to_zero()` through
`optax.multi_transform`: their updates are exactly zero and the wrapped optimizer allocates no
state (no Adam moments) for them.
"""
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import optax

FROZEN, TRAINABLE = "frozen", "trainable"


def path_name(path: tuple) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def is_under(name: str, prefixes: tuple[str, ...]) -> bool:
  """Whether the `/`-joined parameter path `name` is one of `prefixes` or lies below one."""
  return any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)


def frozen_mask(params: Any, frozen_prefixes: Iterable[str]) -> Any:
  """Pytree of bools, True where the leaf is frozen."""
  prefixes = tuple(frozen_prefixes)
  return jax.tree_util.tree_map_with_path(lambda path, _: is_under(path_name(path), prefixes), params)


def partition_labels(params: Any, frozen_prefixes: Iterable[str]) -> Any:
  """`"frozen"` / `"trainable"` label per leaf, for `optax.multi_transform`."""
  return jax.tree_util.tree_map(lambda f: FROZEN if f else TRAINABLE, frozen_mask(params, frozen_prefixes))


def freeze(tx: optax.GradientTransformation, frozen_prefixes: Iterable[str]) -> optax.GradientTransformation:
  """`tx` on the trainable leaves, zero updates and no optimizer state on the frozen ones."""
  prefixes = tuple(frozen_prefixes)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               lambda params: partition_labels(params, prefixes))


def update_scales(params: Any, frozen_prefixes: Iterable[str], lr_multipliers: Mapping[str, float]) -> Any:
  """Pytree of floats: the factor of `lr_multipliers` ({prefix: factor}, config `optimizer.lr_multipliers`) whose
  prefix holds the leaf, the longest such prefix when several do, else 1. A prefix that names no trainable leaf is a
  `ValueError`: a misspelt one would otherwise train that part at the full rate without a word."""
  names = jax.tree.leaves(jax.tree_util.tree_map_with_path(lambda path, _: path_name(path), params))
  trainable = [n for n, frozen in zip(names, jax.tree.leaves(frozen_mask(params, frozen_prefixes))) if not frozen]
  for prefix in lr_multipliers:
    if not any(is_under(n, (prefix,)) for n in trainable):
      top = sorted({n.split("/")[0] for n in trainable})
      raise ValueError(f"optimizer.lr_multipliers names {prefix!r}, which holds no trainable parameter; the trainable "
                       f"top-level subtrees are {', '.join(top)}")

  def factor(path, _):
    held = [p for p in lr_multipliers if is_under(path_name(path), (p,))]
    return float(lr_multipliers[max(held, key=len)]) if held else 1.0

  return jax.tree_util.tree_map_with_path(factor, params)


def count_table(params, frozen=(), depth: int = 3) -> list[str]:
  """Lines `params_total: N`, `params_trainable: N`, `params_frozen: N`, then `module: N` per subtree."""
  mask = frozen_mask(params, frozen)
  total = frozen_total = 0
  per_module: dict[str, int] = {}

  def visit(tree, is_frozen, path):
    nonlocal total, frozen_total
    if isinstance(tree, dict):
      for k, v in tree.items():
        visit(v, is_frozen[k], path + (k,))
      return
    n = int(np.prod(tree.shape))
    total += n
    frozen_total += n if is_frozen else 0
    for d in range(1, min(depth, len(path) - 1) + 1):
      key = "/".join(path[:d])
      per_module[key] = per_module.get(key, 0) + n

  visit(params, mask, ())
  lines = [f"params_total: {total}", f"params_trainable: {total - frozen_total}", f"params_frozen: {frozen_total}"]
  lines += [f"{k}: {v}" for k, v in sorted(per_module.items())]
  return lines

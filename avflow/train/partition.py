"""Freezing parameter subtrees (pretrained CLIP / CLAP backbones; paper Sec. 2.2.2).

A leaf is frozen when its path (`"vision_model/encoder/layers_0/mlp/fc1/kernel"`) equals a
prefix or lies below it, so `"vision_model"` freezes the CLIP tower and leaves `"adapter"`
trainable. `freeze` routes frozen leaves to `optax.set_to_zero()` through
`optax.multi_transform`: their updates are exactly zero and the wrapped optimizer allocates no
state (no Adam moments) for them.
"""
from typing import Any, Iterable

import jax
import optax

FROZEN, TRAINABLE = "frozen", "trainable"


def path_name(path: tuple) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def _is_under(name: str, prefixes: tuple[str, ...]) -> bool:
  return any(name == p or name.startswith(p.rstrip("/") + "/") for p in prefixes)


def frozen_mask(params: Any, frozen_prefixes: Iterable[str]) -> Any:
  """Pytree of bools, True where the leaf is frozen."""
  prefixes = tuple(frozen_prefixes)
  return jax.tree_util.tree_map_with_path(lambda path, _: _is_under(path_name(path), prefixes), params)


def partition_labels(params: Any, frozen_prefixes: Iterable[str]) -> Any:
  """`"frozen"` / `"trainable"` label per leaf, for `optax.multi_transform`."""
  return jax.tree_util.tree_map(lambda f: FROZEN if f else TRAINABLE, frozen_mask(params, frozen_prefixes))


def freeze(tx: optax.GradientTransformation, frozen_prefixes: Iterable[str]) -> optax.GradientTransformation:
  """`tx` on the trainable leaves, zero updates and no optimizer state on the frozen ones."""
  prefixes = tuple(frozen_prefixes)
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               lambda params: partition_labels(params, prefixes))

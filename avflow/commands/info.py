"""`python -m avflow info --config=<file>:<variant>`: parameter counts via `jax.eval_shape` (nothing allocated), then
the pretrained encoder weights the config reads (`model.conditioning.clip_weights`, `clap_weights`)."""
import numpy as np
from absl import flags
from ml_collections import config_flags

from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401
from avflow import tasks
from avflow.train.partition import frozen_mask
from avflow.train.state import abstract_params

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file and variant.", lock_config=True)
flags.DEFINE_integer("depth", 3, "Depth of the per-module breakdown.")


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


def main(argv):
  no_arguments(argv)
  config = flags.FLAGS.config
  task = tasks.get(config)
  params = abstract_params(task.build(config.model), config)
  cond = config.model.conditioning
  lines = count_table(params, task.frozen_prefixes(config.model), flags.FLAGS.depth)
  lines += [f"model.conditioning.{name}_weights: {cond[f'{name}_weights'] or '(none)'}"
            for name in task.pretrained_encoders(config.model)]
  print("\n".join(lines))

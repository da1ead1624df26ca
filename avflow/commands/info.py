"""`python -m avflow info --config=<file>:<variant>`: parameter counts via `jax.eval_shape` (nothing allocated)."""
import re

import numpy as np
from absl import flags
from ml_collections import config_flags

from avflow.commands import DEFAULT_CONFIG, parse_flags  # noqa: F401
from avflow.models.highlighter import Highlighter
from avflow.train.state import abstract_params

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file and variant.", lock_config=True)
flags.DEFINE_integer("depth", 3, "Depth of the per-module breakdown.")


def count_table(params, frozen_patterns=(), depth: int = 3) -> list[str]:
  """Lines `params_total: N`, `params_trainable: N`, `params_frozen: N`, then `module: N` per subtree."""
  frozen_res = [re.compile(p) for p in frozen_patterns]
  total = frozen = 0
  per_module: dict[str, int] = {}

  def visit(tree, path):
    nonlocal total, frozen
    if isinstance(tree, dict):
      for k, v in tree.items():
        visit(v, path + (k,))
      return
    n = int(np.prod(tree.shape))
    total += n
    name = "/".join(path)
    if any(r.search(name) for r in frozen_res):
      frozen += n
    for d in range(1, min(depth, len(path) - 1) + 1):
      key = "/".join(path[:d])
      per_module[key] = per_module.get(key, 0) + n

  visit(params, ())
  lines = [f"params_total: {total}", f"params_trainable: {total - frozen}", f"params_frozen: {frozen}"]
  lines += [f"{k}: {v}" for k, v in sorted(per_module.items())]
  return lines


def main(argv):
  if len(argv) > 1:
    raise SystemExit(f"avflow info: unexpected arguments {argv[1:]}")
  config = flags.FLAGS.config
  params = abstract_params(Highlighter(config.model), config)
  print("\n".join(count_table(params, config.optimizer.get("frozen", ()), flags.FLAGS.depth)))

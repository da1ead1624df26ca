"""`python -m avflow info --config=<file>:<variant>`: parameter counts via `jax.eval_shape` (nothing allocated), then
the pretrained encoder weights the config reads (`model.conditioning.clip_weights`, `clap_weights`)."""
from absl import flags
from ml_collections import config_flags

from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401
from avflow import tasks
from avflow.train.partition import count_table
from avflow.train.state import abstract_params

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file and variant.", lock_config=True)
flags.DEFINE_integer("depth", 3, "Depth of the per-module breakdown.")


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

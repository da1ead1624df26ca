"""`python -m avflow train --workdir=RUN [--config=configs/visah_fm.py:toy] [--config.x.y=v] [--resume]`."""
from absl import flags
from ml_collections import config_flags

from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.outputs import check_output
from avflow.train.loop import train

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Training config file and variant, e.g. "
                                "configs/visah_fm.py:toy.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, eval.json, samples, TensorBoard logs.",
                    required=True)
flags.DEFINE_bool("resume", False, "Continue the run in --workdir from its latest checkpoint.")


def main(argv):
  no_arguments(argv)
  check_output(flags.FLAGS.workdir, entries=())
  train(flags.FLAGS.config, flags.FLAGS.workdir, resume=flags.FLAGS.resume)

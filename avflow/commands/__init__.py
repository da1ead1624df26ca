"""CLI commands; each module defines its absl flags, `parse_flags(argv)` and `main(argv)`."""
import os
import sys

from absl import flags

from avflow.errors import UsageError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "visah_fm.py") + ":toy"


def parse_flags(argv):
  """absl parsing that turns a bad argument into one clear line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{argv[0]}: {e}", file=sys.stderr)
    sys.exit(2)


def no_arguments(argv) -> None:
  """Refuses positional arguments (exit status 2): the command takes flags only."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")

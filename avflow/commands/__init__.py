"""CLI commands; each module defines its absl flags, `parse_flags(argv)` and `main(argv)`.

Flags defined here (`--verbose`) are shared by every command.
"""
import inspect
import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              "configs", "visah_fm.py") + ":toy"
HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")

flags.DEFINE_bool("verbose", False, "Let the libraries (orbax, JAX, Grain, TFDS, absl) log at INFO; without it "
                  "they log warnings and errors only.")


def parse_flags(argv):
  """absl parsing that turns a bad argument into one clear line and exit status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"{argv[0]}: {e}", file=sys.stderr)
    sys.exit(2)


def help_text(module, full: bool = False) -> str:
  """A command's usage (its module docstring), its flags with their help, the shared flags; `full`: all flags."""
  last = ("\nAll flags, the libraries' too:" + flags.FLAGS.get_help() if full
          else "\n--helpfull also lists the libraries' flags.")
  own = [flags.FLAGS.module_help(name) for name in (module, __name__)]
  return "\n".join([inspect.cleandoc(module.__doc__), *own, last])


def configure_logging(verbose: bool) -> None:
  """Libraries log at WARNING unless `verbose` (or an explicit absl `--verbosity`); avflow's own lines at INFO."""
  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
  elif not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("avflow").setLevel(logging.INFO)

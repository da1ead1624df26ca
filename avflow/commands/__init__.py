"""CLI commands; each module defines its absl flags, `parse_flags(argv)` and `main(argv)`.

Flags defined here (`--verbose`) are shared by every command.
"""
import inspect
import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

from avflow.configs_lib import resolve_config_file, shipped_configs_dir
from avflow.errors import AvflowError, UsageError

DEFAULT_CONFIG = os.path.join(shipped_configs_dir(), "visah_fm.py") + ":toy"
HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")

flags.DEFINE_bool("verbose", False, "Let the libraries (orbax, JAX, Grain, TFDS, absl) log at INFO; without it "
                  "they log warnings and errors only.")


def _resolve_configs(argv: list[str]) -> list[str]:
  """`--config=configs/<file>.py[:<variant>]` (or `--config configs/…`) → the shipped file where the working
  directory has no such file (`configs_lib.resolve_config_file`)."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + resolve_config_file(arg[len("--config="):])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = resolve_config_file(out[i + 1])
  return out


def parse_flags(argv):
  """absl parsing that resolves config files and turns a bad argument into one clear line and exit status 2."""
  try:
    return flags.FLAGS(_resolve_configs(argv))
  except flags.Error as e:
    print(f"{argv[0]}: {e}", file=sys.stderr)
    sys.exit(2)


def no_arguments(argv) -> None:
  """Refuses positional arguments (exit status 2): the command takes flags only."""
  if len(argv) > 1:
    raise UsageError(f"unexpected arguments {argv[1:]}")


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


def input_and_output(argv, usage: str, reads_frames_as: str | None = None) -> tuple[str, str]:
  """A command's two arguments INPUT and OUTPUT (`usage`: the error when there are not two), INPUT checked to exist
  and, for a command that reads a video's frames (`reads_frames_as`: its name), not to be an audio file."""
  from avflow.data.video import AUDIO_EXTENSIONS  # only here: the other commands do not read videos
  if len(argv) != 3:
    raise UsageError(usage)
  source, output = argv[1], argv[2]
  if not os.path.exists(source):
    raise AvflowError(f"{source} does not exist")
  if reads_frames_as and source.lower().endswith(AUDIO_EXTENSIONS):
    raise AvflowError(f"{source} is an audio file; {reads_frames_as} reads a video's frames")
  return source, output


def load_command_run(workdir: str, kind: str, **kwargs):
  """`inference.load_run` for a command: a run that does not fit (`ValueError`) is the command's one-line error."""
  from avflow.inference import load_run  # only here: loading a run imports the models
  try:
    return load_run(workdir, kind, **kwargs)
  except ValueError as e:
    raise AvflowError(str(e)) from e

"""`python -m avflow <command> [flags]`: each command lives in `avflow/commands/<command>.py` with its own flags."""
import importlib
import sys

from avflow.errors import AvflowError

COMMANDS = {
    "train": "train a model (default config: configs/visah_fm.py:toy)",
    "eval": "evaluate a run's checkpoint on held-out clips",
    "info": "parameter counts of a config (no allocation)",
    "highlight": "rebalance a soundtrack with a trained model",
    "separate": "separate the sound of the source a video shows from a mixture (DAVIS-Flow, DAVIS)",
    "generate": "generate the soundtrack of a silent video (VAFlow)",
    "foley": "generate a video's sounds one track per caption, each steered away from the ones before (NAG)",
    "prepare": "turn real clips (Muddy Mix folders, or videos + stems) into training records",
    "ablate": "train and evaluate every row of a paper table; write docs/results/table<T>_<scale>.md",
    "import": "turn a public PyTorch checkpoint (VisAH, DAVIS) or an `export --format=torch` file into a run",
    "export": "write a run's weights for PyTorch: the public VisAH layout, or the whole model as .safetensors",
    "bench": "time and memory of train steps (FM vs rollout, remat policies), inference and the data pipeline",
    "report": "write <workdir>/report.html: clips, audio players, waveforms, spectrograms, metrics",
}


MODULES = {"import": "import_ckpt"}  # command → module in avflow/commands where they differ (`import` is a keyword)
DEV_PACKAGES = ("torch", "transformers")  # in requirements-dev.txt, not in the main job's requirements.txt


def usage() -> str:
  lines = ["usage: python -m avflow <command> [--flags]", "", "commands:"]
  lines += [f"  {name:<10} {text}" for name, text in COMMANDS.items()]
  lines.append("\n`python -m avflow <command> --help` lists a command's flags; `--verbose` (any command) lets the "
               "libraries log at INFO.")
  return "\n".join(lines)


def run(argv=None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"avflow: unknown command {command!r}; expected one of: {', '.join(COMMANDS)}", file=sys.stderr)
    sys.exit(2)
  from absl import app, flags

  from avflow import commands, compile_cache
  compile_cache.enable()
  try:
    module = importlib.import_module(f"avflow.commands.{MODULES.get(command, command)}")
  except ModuleNotFoundError as e:
    if e.name not in DEV_PACKAGES:
      raise
    print(f"avflow {command}: needs {e.name}, which the main job's requirements.txt leaves out: "
          "pip install -r requirements-dev.txt", file=sys.stderr)
    sys.exit(2)
  if any(arg in commands.HELP_FLAGS for arg in argv[2:]):
    print(commands.help_text(module, full="--helpfull" in argv[2:]))
    sys.exit(0)

  def main(args):  # an expected failure is one line on stderr, exit status 1 (2: wrong arguments)
    commands.configure_logging(flags.FLAGS.verbose)
    try:
      return module.main(args)
    except AvflowError as e:
      print(f"avflow {command}: {e}", file=sys.stderr)
      sys.exit(e.exit_status)

  app.run(main, argv=[f"avflow {command}"] + argv[2:], flags_parser=module.parse_flags)


if __name__ == "__main__":
  run()

"""`python -m avflow <command> --help`: the command's usage, then each of its flags with its help text."""
import ast
import os
import re
import subprocess
import sys

import pytest

from avflow.__main__ import COMMANDS, MODULES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _defined_flags(path: str) -> dict[str, str]:
  """{name: help} of every `*.DEFINE_*(name, default, [enum_values,] help)` call in a module's source."""
  found = {}
  for node in ast.walk(ast.parse(open(path).read())):
    kind = getattr(node.func, "attr", "") if isinstance(node, ast.Call) else ""
    if kind.startswith("DEFINE_"):
      at = 3 if kind.endswith("enum") else 2
      help_node = node.args[at] if len(node.args) > at else {k.arg: k.value for k in node.keywords}["help"]
      found[ast.literal_eval(node.args[0])] = ast.literal_eval(help_node)
  return found


def _squeeze(text: str) -> str:
  return re.sub(r"\s+", "", text)  # absl wraps help text at any space


@pytest.fixture(scope="module")
def helps():
  """Each command's `--help` (`-h` for `info`), run side by side: {command: CompletedProcess}."""
  procs = {command: subprocess.Popen([sys.executable, "-m", "avflow", command, "-h" if command == "info" else "--help"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for command in COMMANDS}
  return {command: subprocess.CompletedProcess(p.args, p.wait(timeout=600), *p.communicate())
          for command, p in procs.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_the_usage_and_every_flag_with_its_help(helps, command):
  done = helps[command]
  assert done.returncode == 0, done.stderr[-2000:]
  path = os.path.join(ROOT, "avflow", "commands", MODULES.get(command, command) + ".py")
  defined = _defined_flags(path)
  shared = _defined_flags(os.path.join(ROOT, "avflow", "commands", "__init__.py"))
  assert defined and set(shared) == {"verbose"}
  usage = ast.get_docstring(ast.parse(open(path).read()))
  assert done.stdout.startswith(usage)
  out = _squeeze(done.stdout)
  for name, text in {**defined, **shared}.items():
    assert re.search(rf"--(\[no\])?{name}:(<[^>]*>:)?{re.escape(_squeeze(text))}", out), f"--{name} with its help"
  assert "--helpfull" in done.stdout and "--verbosity" not in done.stdout  # the libraries' flags stay out


def test_helpfull_still_lists_the_library_flags_too():
  done = subprocess.run([sys.executable, "-m", "avflow", "report", "--helpfull"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  usage = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "avflow", "commands", "report.py")).read()))
  assert done.stdout.startswith(usage) and "--workdir" in done.stdout and "--verbosity" in done.stdout

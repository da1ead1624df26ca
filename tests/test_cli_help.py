"""`python -m avflow <command> --help`: the command's usage, then each of its flags with its help text."""
import ast
import os
import re
import subprocess
import sys

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
      help_text = ast.literal_eval(help_node) if isinstance(help_node, ast.Constant) else None  # None: built at import
      found[ast.literal_eval(node.args[0])] = help_text
  return found


def _squeeze(text: str) -> str:
  return re.sub(r"\s+", "", text)  # absl wraps help text at any space


def test_every_command_help_shows_its_usage_and_each_of_its_flags_with_its_help():
  # One process per command, side by side (their flags clash in one process); `-h` for `info`.
  procs = {command: subprocess.Popen([sys.executable, "-m", "avflow", command, "-h" if command == "info" else "--help"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for command in COMMANDS}
  shared = _defined_flags(os.path.join(ROOT, "avflow", "commands", "__init__.py"))
  assert set(shared) == {"verbose"}
  for command, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, (command, stderr[-2000:])
    path = os.path.join(ROOT, "avflow", "commands", MODULES.get(command, command) + ".py")
    defined = _defined_flags(path)
    assert defined, command
    assert stdout.startswith(ast.get_docstring(ast.parse(open(path).read()))), command
    out = _squeeze(stdout)
    for name, text in {**defined, **shared}.items():
      listed = rf"--(\[no\])?{name}:(<[^>]*>:)?" + (re.escape(_squeeze(text)) if text is not None else "")
      assert re.search(listed, out), f"{command} --{name}"
    assert "--helpfull" in stdout and "--verbosity" not in stdout, command  # the libraries' flags stay out


def test_helpfull_still_lists_the_library_flags_too():
  done = subprocess.run([sys.executable, "-m", "avflow", "report", "--helpfull"], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  usage = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "avflow", "commands", "report.py")).read()))
  assert done.stdout.startswith(usage) and "--workdir" in done.stdout and "--verbosity" in done.stdout

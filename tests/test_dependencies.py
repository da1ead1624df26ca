"""What each install pulls: the main job's set has no PyTorch nor test tools; CI and launchers use the right one."""
import ast
import os
import re
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_ONLY = {"torch", "transformers", "pytest", "pytest-xdist"}


def _read(path: str) -> str:
  with open(os.path.join(ROOT, path)) as f:
    return f.read()


def _requirements(path: str) -> tuple[list[str], dict[str, Requirement]]:
  """(`-r` includes, {canonical name: requirement}) of a requirements file."""
  includes, reqs = [], {}
  for line in _read(path).splitlines():
    line = line.split("#", 1)[0].strip()
    if line.startswith("-r "):
      includes.append(line[3:].strip())
    elif line:
      req = Requirement(line)
      reqs[canonicalize_name(req.name)] = req
  return includes, reqs


def _setup_requirements() -> tuple[set[str], dict[str, set[str]]]:
  """The canonical names of setup.py's CORE and of each extra."""
  tree = ast.parse(_read("setup.py"))
  core = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "CORE")
  call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
  extras = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "extras_require"))

  def names(reqs):
    return {canonicalize_name(Requirement(r).name) for r in reqs}
  return names(core), {extra: names(reqs) for extra, reqs in extras.items()}


def test_the_main_job_set_leaves_out_pytorch_and_the_test_tools():
  includes, main = _requirements("requirements.txt")
  assert not includes and main and not DEV_ONLY & set(main)
  assert all(str(r.specifier).startswith("==") for r in main.values())
  core, extras = _setup_requirements()
  assert core == set(main) - {"jaxlib"}  # jax pulls jaxlib; the pinned set fixes its version


def test_the_dev_set_adds_pytorch_and_the_test_tools_to_the_main_job_set():
  includes, dev = _requirements("requirements-dev.txt")
  assert includes == ["requirements.txt"] and set(dev) == DEV_ONLY
  assert str(dev["torch"].specifier) == "==2.13.0"
  assert all(str(r.specifier).startswith("==") for r in dev.values())
  _, extras = _setup_requirements()
  assert set().union(*extras.values()) == DEV_ONLY


def _code_blocks(markdown: str) -> list[str]:
  return re.findall(r"```bash\n(.*?)```", markdown, re.S)


def test_ci_runs_the_readme_test_command_which_installs_the_dev_set():
  blocks = _code_blocks(_read("README.md"))
  main_job = next(b.strip() for b in blocks if "-m avflow train --workdir=runs/toy" in b)
  tests = next(b.strip() for b in blocks if "-m pytest" in b)
  assert "pip install -r requirements.txt -e . &&" in main_job
  assert "pip install -r requirements-dev.txt -e . &&" in tests
  assert tests in _read(".ci/run").splitlines()


def test_the_slurm_launcher_asks_for_the_main_job_set_and_the_cuda_jax():
  # What launch/tpu_pod.sh installs on its workers: test_multihost.py (its dry run).
  usages = {script: subprocess.run(["bash", f"launch/{script}", "--help"], cwd=ROOT, capture_output=True, text=True,
                                   timeout=60) for script in ("slurm_gpu.sh", "tpu_pod.sh", "ablate_sweep.sh")}
  for script, usage in usages.items():  # the header comment, not the code after it
    assert usage.returncode == 0 and "set -euo pipefail" not in usage.stdout, script
  assert 'pip install -r requirements.txt -e . "jax[cuda12]==0.10.2"' in " ".join(usages["slurm_gpu.sh"].stdout.split())


def test_a_command_that_needs_pytorch_says_what_to_install():
  code = ("import importlib.abc, sys\n"
          "class NoTorch(importlib.abc.MetaPathFinder):  # as on a machine without PyTorch\n"
          "  def find_spec(self, name, path, target=None):\n"
          "    if name.partition('.')[0] == 'torch':\n"
          "      raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
          "sys.meta_path.insert(0, NoTorch())\n"
          "from avflow.__main__ import run; run(['avflow', 'export', '-h'])")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 2 and done.stderr.strip() == (
      "avflow export: needs torch, which the main job's requirements.txt leaves out: "
      "pip install -r requirements-dev.txt")


def test_the_text_encoder_without_pytorch_says_what_to_install(tmp_path, monkeypatch):
  from avflow.data.text_features import TextEncoder, TextEncoderError
  (tmp_path / "config.json").write_text("{}")
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(TextEncoderError, match=r"torch is not installed .*pip install -r requirements-dev.txt"):
    TextEncoder(str(tmp_path), 10)


def test_the_interop_docs_name_every_package_visah_pytorch_imports():
  source = _read("avflow/interop/visah_pytorch.py")
  tree = ast.parse(source)
  imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
  imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
  packages = {name.split(".")[0] for name in imported} - set(sys.stdlib_module_names)
  assert packages == {"torch", "safetensors"}
  (row,) = [line for line in _read("docs/interop.md").splitlines() if line.startswith("| `visah_pytorch.py`")]
  docstring = ast.get_docstring(tree)
  for package in packages:
    assert package in row and package in docstring, package


def test_load_export_without_safetensors_says_what_to_install(monkeypatch):
  from avflow.interop import visah_pytorch
  monkeypatch.setitem(sys.modules, "safetensors", None)
  with pytest.raises(ImportError, match=r"pip install safetensors"):
    visah_pytorch.load_export("model.safetensors")

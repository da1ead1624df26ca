"""Config files resolve from any working directory, in a source tree and in an installed (non-editable) avflow."""
import os
import shutil
import subprocess
import sys

from conftest import ROOT

from avflow.commands import DEFAULT_CONFIG, _resolve_configs
from avflow.configs_lib import resolve_config_file, shipped_configs_dir


def test_a_config_in_the_working_directory_wins_over_the_shipped_one(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shipped = os.path.join(shipped_configs_dir(), "visah_fm.py")
  assert shipped == str(ROOT / "configs" / "visah_fm.py") and DEFAULT_CONFIG == shipped + ":toy"
  assert resolve_config_file("configs/visah_fm.py:paper") == shipped + ":paper"
  assert resolve_config_file("configs/visah_fm.py") == shipped
  for unchanged in ("configs/nope.py:toy", "elsewhere/visah_fm.py:toy", "visah_fm.py:toy"):
    assert resolve_config_file(unchanged) == unchanged
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "visah_fm.py").write_text("")
  assert resolve_config_file("configs/visah_fm.py:paper") == "configs/visah_fm.py:paper"
  assert resolve_config_file("configs/visah.py:paper") == os.path.join(shipped_configs_dir(), "visah.py:paper")
  assert _resolve_configs(["avflow info", "--config=configs/visah.py:toy", "--config.seed=1", "--config",
                           "configs/visah.py:paper"]) == [
      "avflow info", f"--config={shipped_configs_dir()}/visah.py:toy", "--config.seed=1", "--config",
      f"{shipped_configs_dir()}/visah.py:paper"]


def test_an_installed_avflow_finds_its_configs_from_any_directory(tmp_path):
  source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside setup.py
  source.mkdir()
  shutil.copy(ROOT / "setup.py", source)
  for folder in ("avflow", "configs"):
    shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
  site = tmp_path / "site"
  done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                         "--no-index", f"--target={site}", str(source)], capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  shutil.rmtree(source)
  # Only the installed copy is importable as avflow; its dependencies come from this interpreter's environment.
  env = {**os.environ, "PYTHONPATH": str(site)}
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()

  def run(*args, cwd=elsewhere):
    out = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()

  where = run("-c", "from avflow import configs_lib; print(configs_lib.__file__); "
              "print(configs_lib.shipped_configs_dir())")
  assert where == [str(site / "avflow" / "configs_lib.py"), str(site / "avflow_configs")]

  def total(lines):
    return int(next(line for line in lines if line.startswith("params_total: ")).split()[1])

  paper = run("-m", "avflow", "info", "--config=configs/visah_fm.py:paper", "--depth=1")
  default = run("-m", "avflow", "info", "--depth=1")  # the default config, configs/visah_fm.py:toy
  assert {"clip", "clap", "visah"} <= {line.split(":")[0] for line in paper + default}
  assert total(default) < total(paper)
  # A configs/ folder in the working directory is read first.
  local = tmp_path / "local"
  shutil.copytree(site / "avflow_configs", local / "configs", ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(local / "configs" / "visah.py", local / "configs" / "visah_fm.py")
  assert total(run("-m", "avflow", "info", "--config=configs/visah_fm.py:paper", "--depth=1", cwd=local)) == 59956090

"""Shared fixtures: the smallest configs that still exercise every code path."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Compiled train steps are shared by tests and their subprocesses through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "avflow-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))


def tiny(config, encoders: bool = False):
  """Shrinks a toy config so a train step compiles and runs in seconds on 2 CPU cores.

  Unless `encoders`, a CLIP / CLIP + CLAP conditioning is swapped for the tiny frame encoder: tests of the
  trainer, checkpoints and sharding then compile in a fraction of the time; tests of the encoders pass True.
  """
  config.batch_size = 2
  config.total_steps = 4
  config.log_every = 1
  config.eval_every = 4
  config.checkpoint_every = 2
  config.data.clip_seconds = 1.0
  config.data.num_train_clips = 16
  config.data.num_eval_clips = 2
  config.data.image_size = 16
  config.eval.batch_size = 2
  config.eval.num_samples = 1
  config.model.channels = 4
  config.model.latent.depth = 1
  if config.model.conditioning.kind in ("clip", "clip_adapter") and not encoders:
    config.model.conditioning.kind = "frames_tiny"
  if config.model.conditioning.kind in ("clip", "clip_adapter"):
    config.model.latent.context_dim = 24  # the tiny CLIP's projection width
  else:
    config.model.latent.context_dim = 16
  config.model.time_embed_dim = 16
  config.objective.num_steps = 2
  config.objective.horizon = 2
  config.inference.num_steps = 2
  return config


def cli_error(proc, command: str, status: int = 1) -> str:
  """The one-line error `avflow <command>: ...` a failed CLI run ended with (library logs may precede it)."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == status and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert lines and lines[-1].startswith(f"avflow {command}: "), proc.stderr[-3000:]
  return lines[-1]


@pytest.fixture
def tiny_fm_config():
  import visah_fm
  return tiny(visah_fm.get_config("toy"))


@pytest.fixture
def tiny_visah_config():
  import visah
  return tiny(visah.get_config("toy"))


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  """An initialized tiny VisAH-FM run (`total_steps=0`): its velocity field is random but not zero."""
  import visah_fm
  from avflow.train.loop import train
  config = tiny(visah_fm.get_config("toy"))
  config.total_steps = 0
  workdir = str(tmp_path_factory.mktemp("run"))
  train(config, workdir)
  return workdir

"""Shared fixtures: the smallest configs that still exercise every code path."""
import os
import sys
import tempfile
from pathlib import Path

import pytest

# Compiled train steps are shared by tests and their subprocesses through JAX's persistent cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "avflow-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
# Tests compile many small steps and run each a few times: XLA's CPU backend at -O0 compiles a tiny train step in
# half the time (40 s against 80 s) and runs it in twice the time (0.4 s against 0.2 s); without its MLIR fusion
# emitters (the older loop emitters) in half the time again (the tiny step: 4.9 s against 11.2 s, the same run
# time). Subprocesses inherit both.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE).strip()

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs"))

from avflow.configs_lib import set_field  # noqa: E402  (after the environment above: JAX reads it on import)


# Dotted fields that shrink a toy config so a train step compiles and runs in seconds on 2 CPU cores: 2 U-Net levels
# of width 4 on 32 frequency bins (no DConv BLSTM / attention at that depth), one latent block.
TINY = {
    "batch_size": 2, "total_steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2,
    "data.clip_seconds": 1.0, "data.num_train_clips": 16, "data.num_eval_clips": 2, "data.image_size": 16,
    "eval.batch_size": 2, "eval.num_samples": 1, "model.channels": 4, "model.nfft": 64, "model.depth": 2,
    "model.latent.depth": 1, "model.time_embed_dim": 16, "objective.num_steps": 2, "objective.horizon": 2,
    "inference.num_steps": 2,
}
# Smaller still, for tests that compile many steps (meshes, processes): 0.25-s clips, the frame encoder, FM only.
MICRO = {
    **TINY, "batch_size": 8, "total_steps": 2, "eval_every": 100, "data.clip_seconds": 0.25, "model.dconv_lstm": 99,
    "model.dconv_attn": 99, "model.latent.context_dim": 16, "model.conditioning.kind": "frames_tiny",
    "objective.rollout_weight": 0.0, "optimizer.warmup_steps": 0, "mesh.fsdp_min_size": 64,
}
CLIP_KINDS = ("clip", "clip_adapter")
# The same for a separation (DAVIS) config: 16 x 16 spectrograms of 240 samples, a 2-level U-Net of width 8.
SEPARATION_TINY = {
    "batch_size": 2, "total_steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2,
    "optimizer.warmup_steps": 0, "data.clip_samples": 240, "data.num_frames": 2, "data.image_size": 16,
    "data.num_train_pairs": 16, "data.num_eval_pairs": 4, "eval.batch_size": 2, "eval.num_samples": 1,
    "model.spectrogram.n_fft": 30, "model.spectrogram.hop": 16, "model.freq_bins": 16, "model.dim": 8,
    "model.dim_mults": (1, 2), "model.attention_levels": (1,), "model.linear_attention.heads": 1,
    "model.linear_attention.dim_head": 8, "model.attention.heads": 1, "model.attention.dim_head": 8,
    "model.time_attention.heads": 1, "model.time_attention.qk_dim": 16, "model.temporal.d_model": 16,
    "model.temporal.heads": 2, "model.temporal.ff_dim": 32, "diffusion.sampling_steps": 2,
}

# The same for a video-to-audio (VAFlow) config: 1 s clips of 8 frames at 16 px (a 4 × 4 grid), T_a = 63 latent
# frames of 16 mel bands, a one-block DiT of width 32 and a VAE of width 8.
V2A_TINY = {
    "batch_size": 4, "total_steps": 4, "log_every": 1, "eval_every": 4, "checkpoint_every": 2,
    "optimizer.warmup_steps": 0, "data.clip_seconds": 1.0, "data.image_size": 16, "data.num_train_clips": 16,
    "data.num_eval_clips": 4, "data.num_classifier_clips": 16, "codec.n_fft": 128, "codec.n_mels": 16,
    "codec.griffin_lim_iters": 4, "model.latent_dim": 16, "model.width": 32, "model.depth": 1, "model.heads": 2,
    "model.time_embed_dim": 16, "model.prior.width": 8, "eval.batch_size": 4, "eval.num_samples": 1,
    "inference.num_steps": 2,
}


def tiny_fields(config, encoders: bool = False, micro: bool = False) -> dict:
  """The dotted fields `tiny` sets on `config`: `MICRO` if `micro` else `TINY`, and the conditioning (a separation
  config: `SEPARATION_TINY`, a video-to-audio config: `V2A_TINY`).

  Unless `encoders`, a CLIP / CLIP + CLAP conditioning is swapped for the tiny frame encoder: tests of the
  trainer, checkpoints and sharding then compile in a fraction of the time; tests of the encoders pass True.
  """
  if config.task == "separate":
    return dict(SEPARATION_TINY)
  if config.task == "v2a":
    return dict(V2A_TINY)
  fields = dict(MICRO if micro else TINY)
  kind = fields.get("model.conditioning.kind", config.model.conditioning.kind)
  if kind in CLIP_KINDS and not encoders:
    fields["model.conditioning.kind"] = kind = "frames_tiny"
  fields["model.latent.context_dim"] = 24 if kind in CLIP_KINDS else 16  # 24: the tiny CLIP's projection width
  return fields


def tiny(config, encoders: bool = False, micro: bool = False, **overrides):
  """`config` with `tiny_fields(config, encoders, micro)` and then `overrides` (dotted keys) set."""
  for path, value in {**tiny_fields(config, encoders, micro), **overrides}.items():
    set_field(config, path, value)
  return config


@pytest.fixture(scope="module")
def one_torch_thread():
  """PyTorch on one thread for a module: its small forwards are much faster so on a busy 2-core machine."""
  import torch
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


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


# The modules with the longest tests (minutes on 2 cores, by `pytest --durations`), run first: with `-n 2` both
# workers start on them, and the suite does not end with one worker on a long test while the other idles. A
# module's tests stay together, so its module-scoped fixtures are built once.
SLOW_MODULES = ("test_text_features.py", "test_pretrained.py", "test_multihost.py", "test_ablate.py",
                "test_sharding.py", "test_train.py", "test_bench.py", "test_interop_cli.py", "test_prepare.py",
                "test_highlight.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_MODULES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_MODULES)))

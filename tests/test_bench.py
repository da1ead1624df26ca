"""The bench's FLOP counter, memory figures and table (the measurements themselves run in `python -m avflow bench`),
and the XLA:CPU options every avflow step is compiled with."""
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow import bench
from avflow.commands.bench import table
from avflow.train import step


def _fn(w, k, x, remat=False):
  def step(c, _):
    y = jax.lax.conv_general_dilated(c, k, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    return jnp.tanh(y @ w), None

  y, _ = jax.lax.scan(jax.checkpoint(step) if remat else step, x, jnp.arange(5))
  return jnp.sum(y)


def test_matmul_flops_counts_convolutions_matmuls_and_every_scan_iteration():
  w, k, x = jnp.ones((6, 6)), jnp.ones((3, 6, 6)), jnp.ones((2, 10, 6))
  conv = 2 * (2 * 10 * 6) * (3 * 6)  # output elements × (kernel width × input channels)
  dot = 2 * (2 * 10 * 6) * 6
  assert bench.matmul_flops(jax.make_jaxpr(_fn)(w, k, x).jaxpr) == 5 * (conv + dot)
  # The backward pass holds two transposed products per forward one; remat adds the recomputed forward.
  for remat, passes in ((False, 3), (True, 4)):
    grad = jax.grad(lambda w, k: _fn(w, k, x, remat), argnums=(0, 1))
    assert bench.matmul_flops(jax.make_jaxpr(grad)(w, k).jaxpr) == passes * 5 * (conv + dot)


def test_memory_and_time_figures():
  compiled = jax.jit(lambda a: jnp.tanh(a) @ a).lower(jnp.ones((64, 64))).compile()
  memory = bench.memory_bytes(compiled)
  assert memory["peak_bytes"] >= memory["argument_bytes"] == 64 * 64 * 4
  calls = []
  medians = bench.time_interleaved({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
  assert medians == {"a": 1.0, "b": 2.0} and calls == ["a", "b"] * 4


def test_table_flattens_nested_figures():
  assert table({"x": 1, "steps": {"fm": {"step_s": 0.123456}}}) == [
      f"{'x':<44} 1", f"{'steps.fm.step_s':<44} 0.1235"]


def test_the_conv_layers_gradient_costs_two_passes_of_matmuls():
  """`demucs_layers.conv`: XLA's forward, the tap matmuls backward, counted once each (no dead forward)."""
  from avflow.nn.demucs_layers import conv
  x, k = jnp.ones((1, 34, 3)), jnp.ones((8, 3, 5))
  out = (34 + 2 * 2 - 8) // 4 + 1
  forward = 2 * out * 5 * (8 * 3)
  layer = lambda x, k: jnp.sum(conv(x, k, (4,), ((2, 2),), 1))  # noqa: E731
  assert bench.matmul_flops(jax.make_jaxpr(layer)(x, k).jaxpr) == forward
  # The input's gradient costs one forward. The kernel's runs over x's whole frame of out + 1 stride-blocks: g
  # (5 channels) is padded into it rather than x's window (4 x 3 folded channels) sliced out.
  kernel_grad = 2 * (out + 1) * 5 * (8 * 3)
  assert bench.matmul_flops(jax.make_jaxpr(jax.grad(layer, argnums=(0, 1)))(x, k).jaxpr) == 2 * forward + kernel_grad


def test_data_rate_per_worker_count(tiny_fm_config):
  data = tiny_fm_config.data
  rates = bench.bench_data(data, batch_size=2, workers=(0, 1), warmup_examples=4, examples=8)
  assert set(rates) == {"workers_0", "workers_1"}
  for figures in rates.values():
    assert figures["examples_per_s"] > 0 and figures["first_batch_s"] > 0


def _ynn_fusion_ops(fn, *args) -> list:
  """The ops inside each YNNPACK fusion of fn's optimized CPU executable."""
  text = fn.lower(*args).compile().as_text()
  called = re.findall(r"fusion\(.*__ynn_fusion", text)
  bodies = []
  for line in called:
    name = re.search(r"calls=%([\w.]+)", line).group(1)
    body = re.search(r"%" + re.escape(name) + r" \(.*?\n}\n", text, re.S).group(0)
    bodies.append(set(re.findall(r"= \S+ (\w+)\(", body)))
  return bodies


def test_jit_keeps_reductions_over_time_out_of_ynnpack_on_cpu(monkeypatch):
  def fn(a, b, w):  # a per-channel sum over time (a bias / norm-scale gradient) and a matmul
    return jnp.sum(a * b, axis=0), a @ w

  args = jnp.ones((4096, 48)), jnp.ones((4096, 48)), jnp.ones((48, 48))
  default = _ynn_fusion_ops(jax.jit(fn), *args)
  assert any("reduce" in ops for ops in default)  # XLA's default: the sum runs in YNNPACK
  ours = _ynn_fusion_ops(step.jit(fn), *args)
  assert ours and all("dot" in ops and "reduce" not in ops for ops in ours)
  # A choice made in XLA_FLAGS is left alone (this process started with XLA's default, which then applies).
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=+reduce")
  assert _ynn_fusion_ops(step.jit(fn), *args) == default


def test_jit_compiles_llvm_at_level_1_on_cpu_without_changing_a_result(monkeypatch):
  """LLVM's optimisation level 1 (fast compiles) gives the same bits as XLA's default level 3; a level chosen in
  XLA_FLAGS is left to XLA_FLAGS."""
  def fn(x, k, w):  # a convolution, a matmul, a reduction over time and pointwise work
    y = jax.lax.conv_general_dilated(x, k, (1,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"))
    return jnp.sum(jax.nn.gelu(y @ w) * jnp.tanh(x), axis=1), jnp.exp(-jnp.abs(y)).mean()

  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  args = (jax.random.normal(keys[0], (2, 257, 12)), jax.random.normal(keys[1], (5, 12, 12)),
          jax.random.normal(keys[2], (12, 12)))
  monkeypatch.setenv("XLA_FLAGS", "")
  assert step.compiler_options()["xla_backend_optimization_level"] == 1
  level_3 = jax.jit(fn, compiler_options={**step.CPU_COMPILER_OPTIONS, "xla_backend_optimization_level": 3})
  for got, want in zip(step.jit(fn)(*args), level_3(*args)):
    np.testing.assert_array_equal(got, want)
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  assert step.compiler_options() == {k: v for k, v in step.CPU_COMPILER_OPTIONS.items()
                                     if k != "xla_backend_optimization_level"}


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO_FLAGS = ["--config.data.clip_seconds=1.0", "--config.data.image_size=16", "--config.model.channels=4",
               "--config.model.nfft=64", "--config.model.depth=2", "--config.model.dconv_lstm=99",
               "--config.model.dconv_attn=99", "--config.model.latent.depth=1", "--config.model.latent.context_dim=16",
               "--config.model.time_embed_dim=16", "--config.inference.num_steps=2"]


def _bench_infer(env):
  res = subprocess.run([sys.executable, "-m", "avflow", "bench", "--what=infer", "--repeats=1", "--batch_size=2",
                        *MICRO_FLAGS, "--config.model.conditioning.kind=frames_tiny"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def test_compilation_cache_is_on_by_default_in_the_user_cache(tmp_path):
  """Two benches in a fresh home: the first compiles and fills ~/.cache/avflow/jax, the second loads from it."""
  home = tmp_path / "home"
  home.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")}
  env.update(HOME=str(home), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  first, second = _bench_infer(env), _bench_infer(env)
  assert first["hlo_lines"] > 100 and second["hlo_lines"] == first["hlo_lines"]
  assert not first["compile_cache_hit"] and second["compile_cache_hit"]
  # Two 1-s windows per call, a window every 0.75 s: 2400 calls per hour of audio.
  assert first["batch_size"] == 2 and first["s_per_hour_of_audio"] == pytest.approx(first["infer_s"] * 2400)
  assert os.listdir(home / ".cache" / "avflow" / "jax")


def test_compilation_cache_folder_choice(monkeypatch, tmp_path):
  from avflow import compile_cache
  for name in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV, "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert compile_cache.cache_dir() == str(tmp_path / ".cache" / "avflow" / "jax")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.cache_dir() == str(tmp_path / "xdg" / "avflow" / "jax")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
  assert compile_cache.cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(compile_cache.ENV, "off")
  assert compile_cache.cache_dir() is None
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # JAX's own setting wins
  assert compile_cache.cache_dir() == str(tmp_path / "jax")


def test_side_by_side_with_the_pytorch_mirror_prints_the_speedup():
  """`bench --what=torch` at a tiny toy shape on CPU: both sides timed, the ratios are the times' ratios."""
  tiny_flags = ["--config.data.clip_seconds=0.5", "--config.model.channels=4", "--config.model.nfft=64",
                "--config.model.depth=2", "--config.model.latent.depth=1",
                "--config.model.latent.context_dim=16", "--config.model.time_embed_dim=16"]
  res = subprocess.run([sys.executable, "-m", "avflow", "bench", "--what=torch", "--repeats=1", "--torch_threads=1",
                        "--config=configs/visah_fm.py:toy", *tiny_flags],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  figures = json.loads(res.stdout.strip().splitlines()[-1])
  assert figures["torch_device"] == "cpu" and figures["torch_precision"] == "fp32" and figures["torch_threads"] == 1
  assert figures["machine"]["backend"] == "cpu" and "clip_adapter" in figures["conditioning"]
  for side in ("fm_step_s", "rollout_step_s", "infer_s"):
    assert figures[side] > 0 and figures[f"torch_{side}"] > 0
  assert figures["speedup"] == figures["torch_fm_step_s"] / figures["fm_step_s"]
  assert figures["rollout_speedup"] == figures["torch_rollout_step_s"] / figures["rollout_step_s"]
  assert figures["infer_speedup"] == figures["torch_infer_s"] / figures["infer_s"]


def _accelerator_bench(*args):
  return subprocess.run(["bash", os.path.join(ROOT, "launch", "accelerator_bench.sh"), f"--python={sys.executable}",
                         *args], capture_output=True, text=True, timeout=600)


def test_accelerator_script_runs_each_part_under_its_limit_and_records_every_outcome(tmp_path):
  """One part finishes and gives its bench line; one past its limit is recorded as a timeout; the dry run lists the
  parts in order, each with the overrides."""
  out = tmp_path / "out"
  done = _accelerator_bench(f"--out={out}", "--config=configs/visah_fm.py:toy", "--only=infer",
                            "--infer_batch_size=2", "--limit=300", "--", *MICRO_FLAGS)
  assert done.returncode == 0, done.stderr
  late = _accelerator_bench(f"--out={out}", "--only=step", "--limit=1")
  assert late.returncode == 0, late.stderr
  with open(out / "results.jsonl") as f:
    infer, step = map(json.loads, f)
  assert infer["part"] == "infer" and infer["status"] == "ok"
  assert infer["result"]["what"] == "infer" and infer["result"]["batch_size"] == 2
  assert infer["result"]["overrides"]["model.conditioning.kind"] == "features"
  assert step == {"part": "step", "status": "timeout after 1 s", "wall_s": step["wall_s"], "result": None}
  assert os.path.exists(out / "step.log")

  listed = _accelerator_bench("--out=/o", "--only=rollout,step,torch", "--batch_size=8", "--dry-run", "--",
                              "--config.seed=3").stdout.splitlines()
  assert [line.split(":")[0] for line in listed] == ["rollout", "step", "torch"]
  assert all("AVFLOW_COMPILATION_CACHE=/o/cache" in line and "--batch_size=8" in line and
             line.endswith("--config.seed=3") or line.startswith("torch") for line in listed)
  assert "--torch_bf16" in listed[2] and listed[2].endswith("--config.precision=bf16")
  bad = _accelerator_bench("--out=/o", "--only=step,fm")
  assert bad.returncode == 2 and "unknown part 'fm'" in bad.stderr

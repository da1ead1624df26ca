"""The bench's FLOP counter, memory figures and table (the measurements themselves run in `python -m avflow bench`),
and the XLA:CPU options every avflow step is compiled with."""
import re

import jax
import jax.numpy as jnp

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

"""Speed and memory figures of a config: train steps (FM only vs FM + rollout), inference, the input pipeline.

Every compiled step is measured the same way: compile time; the median wall time of `repeats` calls after one
warm-up call (variants compared in a ratio are timed interleaved, in one process, so drift in machine load hits
both alike); peak memory from the compiled executable, `argument + output + temp − alias` bytes (donated state
counted once); FLOPs from XLA's cost analysis of the compiled step, so they include remat recomputation. The model
FLOPs behind MFU are those of the step without remat (policy "none"), as MaxText counts them.
"""
import copy
import math
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.extend import core

from avflow import compile_cache, tasks
from avflow.flow.objectives import REMAT_POLICIES
from avflow.inference import WINDOW_HOP
from avflow.train.state import abstract_batch, create_train_state, make_optimizer
from avflow.train.step import jit, make_predict_fn, make_train_step


def random_batch(config, batch_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch with the config's shapes: quiet noise for audio, random frames and features."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, spec in abstract_batch(config, batch_size).items():
    if spec.dtype == jnp.uint8:
      out[name] = rng.integers(0, 256, spec.shape, dtype=np.uint8)
    else:
      out[name] = (0.1 * rng.standard_normal(spec.shape)).astype(np.float32)
  return out


def memory_bytes(compiled) -> dict[str, int]:
  m = compiled.memory_analysis()
  peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return {"peak_bytes": int(peak), "temp_bytes": int(m.temp_size_in_bytes),
          "argument_bytes": int(m.argument_size_in_bytes)}


def xla_flops(compiled_or_lowered) -> float:
  cost = compiled_or_lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def compile_figures(jitted, *args) -> tuple[object, dict]:
  """Lowers and compiles `jitted` for `args`: (the executable, {compile_s (lowering included), hlo_lines (of the
  lowered StableHLO text), compile_cache_hit (the persistent cache answered)})."""
  with compile_cache.count_hits() as hits:
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    compiled = lowered.compile()
    seconds = time.perf_counter() - start
  return compiled, {"compile_s": seconds, "hlo_lines": len(lowered.as_text().splitlines()),
                    "compile_cache_hit": hits[0] > 0}


class Step:
  """A compiled train step of one config; with `allocate`, it holds a state and can be timed (the state is donated)."""

  def __init__(self, config, batch: dict, allocate: bool = True):
    model, tx = tasks.get(config).build(config.model), make_optimizer(config)

    def init(b):
      return create_train_state(model, config, b, tx)

    self.state = init(batch) if allocate else jax.eval_shape(init, batch)
    self.batch = jax.device_put(batch)
    self.rng = jax.random.PRNGKey(0)
    self.compiled, self.compile = compile_figures(jit(make_train_step(model, config, tx), donate_argnums=(0,)),
                                                  self.state, self.batch, self.rng)
    self.flops = xla_flops(self.compiled)
    self.memory = memory_bytes(self.compiled)

  def __call__(self) -> float:
    start = time.perf_counter()
    self.state, metrics = self.compiled(self.state, self.batch, self.rng)
    jax.block_until_ready(metrics["loss"])
    return time.perf_counter() - start


def matmul_flops(jaxpr) -> float:
  """2 × multiply-adds of every dot_general and conv_general_dilated; scan bodies count `length` times."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contract)
    elif name == "conv_general_dilated":
      rhs, rhs_spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[d] for d in rhs_spec[1:])
    subs = [matmul_flops(sub) for sub in core.jaxprs_in_params(eqn.params)]
    if name == "scan":
      total += eqn.params["length"] * sum(subs)
    elif name == "cond":
      total += max(subs)
    else:
      total += sum(subs)
  return total


def model_flops(config, batch: dict) -> float:
  """Matmul + convolution FLOPs of one train step (forward and backward) without remat recomputation."""
  config = copy.deepcopy(config)
  config.objective.remat_policy = "none"
  model, tx = tasks.get(config).build(config.model), make_optimizer(config)
  state = jax.eval_shape(lambda b: create_train_state(model, config, b, tx), batch)
  jaxpr = jax.make_jaxpr(make_train_step(model, config, tx))(state, batch, jax.random.PRNGKey(0))
  return matmul_flops(jaxpr.jaxpr)


def time_interleaved(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
  """Median seconds per call of each function, after one warm-up call each, calls interleaved round-robin."""
  for fn in fns.values():
    fn()
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(fn())
  return {name: statistics.median(t) for name, t in times.items()}


def _figures(step: Step, seconds: float | None, flops_model: float, peak_flops: float) -> dict:
  out = {**step.compile, "xla_flops": step.flops, "model_flops": flops_model, **step.memory}
  if seconds is not None:
    out.update(step_s=seconds, achieved_flops_per_s=flops_model / seconds)
    if peak_flops:
      out["mfu"] = flops_model / seconds / peak_flops
  return out


def fm_and_rollout_configs(config, horizon: int = 4):
  """(FM only, FM + rollout over `horizon` Euler steps of a `horizon`-step grid) variants of `config`."""
  fm, rollout = copy.deepcopy(config), copy.deepcopy(config)
  fm.objective.update(rollout_weight=0.0, consistency_weight=0.0)
  weight = config.objective.rollout_weight or 0.3
  rollout.objective.update(rollout_weight=weight, consistency_weight=0.0, num_steps=horizon, horizon=horizon)
  return fm, rollout


def bench_step(config, batch_size: int = 1, repeats: int = 3, peak_flops: float = 0.0) -> dict:
  """The config's own train step."""
  batch = random_batch(config, batch_size)
  step = Step(config, batch)
  seconds = time_interleaved({"step": step}, repeats)["step"]
  return {"batch_size": batch_size, "precision": config.get("precision", "fp32"),
          "remat_policy": config.objective.remat_policy,
          **_figures(step, seconds, model_flops(config, batch), peak_flops)}


def bench_rollout(config, batch_size: int = 1, repeats: int = 3, peak_flops: float = 0.0,
                  policies=REMAT_POLICIES, timed=None) -> dict:
  """FM-only vs FM + rollout (T = 4) train steps: time and memory ratios; memory (and time) per remat policy.

  The ratios use the config's remat policy (or the first of `policies`); `timed` (default: all) are the policies
  whose steps are also run and timed, the others are only compiled for their memory.
  """
  timed = policies if timed is None else timed
  policy = config.objective.remat_policy if config.objective.remat_policy in policies else policies[0]
  if policy not in timed:
    raise ValueError(f"the remat policy of the ratios, {policy!r}, must be timed")
  batch = random_batch(config, batch_size)
  fm_config, rollout_config = fm_and_rollout_configs(config)
  steps = {"fm": Step(fm_config, batch)}
  for p in policies:
    variant = copy.deepcopy(rollout_config)
    variant.objective.remat_policy = p
    steps[f"rollout_{p}"] = Step(variant, batch, allocate=p in timed)
  seconds = time_interleaved({k: v for k, v in steps.items() if k == "fm" or k[len("rollout_"):] in timed},
                             repeats)
  flops = {"fm": model_flops(fm_config, batch), "rollout": model_flops(rollout_config, batch)}
  per_step = {name: _figures(step, seconds.get(name), flops["fm" if name == "fm" else "rollout"], peak_flops)
              for name, step in steps.items()}
  fm, rollout = per_step["fm"], per_step[f"rollout_{policy}"]
  return {
      "batch_size": batch_size, "horizon": rollout_config.objective.horizon, "remat_policy": policy,
      "fm_step_s": fm["step_s"], "rollout_step_s": rollout["step_s"], "time_ratio": rollout["step_s"] / fm["step_s"],
      "fm_peak_bytes": fm["peak_bytes"], "rollout_peak_bytes": rollout["peak_bytes"],
      "memory_ratio": rollout["peak_bytes"] / fm["peak_bytes"], "steps": per_step,
  }


class Infer:
  """A compiled highlight of `batch_size` clips (highlight's windows of a long input) with `num_steps` Euler steps;
  calling it times one run."""

  def __init__(self, config, num_steps: int = 4, batch_size: int = 1):
    config = copy.deepcopy(config)
    config.inference.num_steps = num_steps
    model = tasks.get(config).build(config.model)
    self.batch = random_batch(config, batch_size)
    self.params = create_train_state(model, config, self.batch, make_optimizer(config)).params
    self.compiled, self.compile = compile_figures(jit(make_predict_fn(model, config)), self.params, self.batch)

  def __call__(self) -> float:
    start = time.perf_counter()
    jax.block_until_ready(self.compiled(self.params, self.batch)[0])
    return time.perf_counter() - start


def bench_infer(config, repeats: int = 3, num_steps: int = 4, batch_size: int = 1) -> dict:
  """Seconds to highlight `batch_size` clips in one call with `num_steps` Euler steps, the real-time factor and
  the model's seconds per hour of audio in `highlight` (windows every `WINDOW_HOP` clip lengths, `batch_size` per
  call; decoding and writing not included)."""
  infer = Infer(config, num_steps, batch_size)
  seconds = time_interleaved({"infer": infer}, repeats)["infer"]
  clip_s = float(config.data.clip_seconds)
  windows_per_hour = 3600 / (WINDOW_HOP * clip_s)
  return {"num_steps": num_steps, "batch_size": batch_size, "clip_s": clip_s, "infer_s": seconds,
          "real_time_factor": seconds / (batch_size * clip_s),
          "s_per_hour_of_audio": seconds / batch_size * windows_per_hour,
          **infer.compile, "xla_flops": xla_flops(infer.compiled), **memory_bytes(infer.compiled)}


def bench_torch(config, batch_size: int = 1, repeats: int = 3, bf16: bool = False, torch_threads: int = 0) -> dict:
  """The PyTorch mirror's FM step, FM + rollout (T = 4) step and 4-step highlight against avflow's, on the same
  device, shapes, weights and inputs; `speedup` = PyTorch seconds / avflow seconds (> 1: avflow is faster).

  PyTorch runs eagerly (`interop.torch_steps`: TF32 on CUDA, bf16 autocast with `bf16`); avflow runs its jitted
  steps at `config.precision`. The mirror is the VisAH-FM network on context tokens, so both sides take the
  same random context tokens (`features` conditioning): the config's frame / CLIP / CLAP encoders are not run.
  `torch_threads` > 0 sets PyTorch's CPU threads (default: PyTorch's own choice). The six are timed interleaved.
  """
  import torch

  from avflow.interop import torch_steps, visah_convert
  config = copy.deepcopy(config)
  encoder = config.model.conditioning.kind
  config.model.conditioning.update(kind="features", features_key="context")
  fm_config, rollout_config = fm_and_rollout_configs(config)
  batch = random_batch(config, batch_size)
  steps = {"fm": Step(fm_config, batch), "rollout": Step(rollout_config, batch)}
  infer = Infer(config)
  device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
  if device == "cuda":
    torch_steps.use_tf32()
  if torch_threads:
    torch.set_num_threads(torch_threads)
  state_dict = visah_convert.flax_to_torch(jax.device_get(steps["fm"].state.params["visah"]), config.model)
  mirror = torch_steps.TorchSteps(rollout_config, state_dict, batch, device, bf16)
  seconds = time_interleaved({
      "torch_fm_step_s": lambda: mirror.train_step(rollout=False), "fm_step_s": steps["fm"],
      "torch_rollout_step_s": lambda: mirror.train_step(rollout=True), "rollout_step_s": steps["rollout"],
      "torch_infer_s": lambda: mirror.highlight(4), "infer_s": infer}, repeats)
  return {
      "batch_size": batch_size, "horizon": rollout_config.objective.horizon,
      "rollout_weight": rollout_config.objective.rollout_weight,
      "conditioning": f"the same random context tokens on both sides (features); the config's {encoder!r} "
                      "encoder is not run",
      "torch_version": torch.__version__, "torch_device": device, "torch_threads": torch.get_num_threads(),
      "torch_precision": "bf16_autocast" if bf16 else ("tf32" if device == "cuda" else "fp32"),
      "precision": config.precision, "remat_policy": rollout_config.objective.remat_policy, **seconds,
      "speedup": seconds["torch_fm_step_s"] / seconds["fm_step_s"],
      "rollout_speedup": seconds["torch_rollout_step_s"] / seconds["rollout_step_s"],
      "infer_speedup": seconds["torch_infer_s"] / seconds["infer_s"],
      "compile_s": {"fm": steps["fm"].compile["compile_s"], "rollout": steps["rollout"].compile["compile_s"],
                    "infer": infer.compile["compile_s"]},
  }


def bench_data(data_cfg, batch_size: int, workers=(0, 1, 2), warmup_examples: int = 600,
               examples: int = 256, seed: int = 0) -> dict:
  """Steady-state examples/s of the Grain training pipeline over the toy source, per worker count.

  Grain's reader prefetches ahead (500 elements by default), so the first batches come from a warm buffer: the
  rate is timed over `examples` after `warmup_examples` have been drawn; `first_batch_s` is the start-up time.
  """
  from avflow.data.pipeline import make_dataset, make_source
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags: outside an absl app, use their defaults
    flags.FLAGS.mark_as_parsed()
  out = {}
  for count in workers:
    cfg = copy.deepcopy(data_cfg)
    cfg.update(source="toy_movies", worker_count=count)
    start = time.perf_counter()
    it = iter(make_dataset(make_source(cfg, "train"), cfg, batch_size=batch_size, seed=seed, train=True))
    next(it)
    first = time.perf_counter() - start
    for _ in range(-(-warmup_examples // batch_size)):
      next(it)
    num_batches = -(-examples // batch_size)
    start = time.perf_counter()
    for _ in range(num_batches):
      next(it)
    seconds = time.perf_counter() - start
    it.close()
    out[f"workers_{count}"] = {"first_batch_s": first, "examples_per_s": batch_size * num_batches / seconds}
  return out


def machine() -> dict:
  """Where the figures were taken: backend, device, CPU count and load."""
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": device.device_kind, "device_count": jax.device_count(),
          "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]}

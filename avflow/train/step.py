"""Pure train, evaluation and inference steps (compile them with `jit`; the train step donates its state)."""
import os
from typing import Callable

import jax
import jax.numpy as jnp

from avflow import tasks
from avflow.train import precision
from avflow.train.flat_optimizer import FlatOptimizer
from avflow.train.state import TrainState

# XLA:CPU gives reductions to YNNPACK by default, which sums over time for every channel (the gradients of
# GroupNorm's scale and bias, of LayerScale and of every conv bias) ~20x slower than XLA's own loops: a
# (110250, 48) product summed over time takes 119 ms there against 5.5 ms. On CPU YNNPACK keeps the matmuls and
# convolutions only (docs/performance.md: the paper-shape FM step 15 % faster). LLVM compiles XLA's own kernels at
# optimisation level 1 instead of 3: the paper-shape FM step compiles in 38–40 s against 44 s and steps as fast (the
# matmuls and convolutions run in YNNPACK, which LLVM does not compile).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
                        "xla_backend_optimization_level": 1}


def compiler_options() -> dict:
  """`CPU_COMPILER_OPTIONS` on the CPU backend, less those XLA_FLAGS already chooses; none elsewhere."""
  if jax.default_backend() != "cpu":
    return {}
  chosen = os.environ.get("XLA_FLAGS", "")
  return {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k not in chosen}


def jit(fn: Callable, **kwargs) -> Callable:
  """`jax.jit` with `compiler_options()` (an explicit `compiler_options` entry wins)."""
  return jax.jit(fn, **{**kwargs, "compiler_options": {**compiler_options(), **kwargs.get("compiler_options", {})}})


def make_loss_fn(model, config) -> Callable:
  """loss(params, batch, rng) → (loss, terms) of the task `config.task` names (`avflow.tasks`)."""
  return tasks.get(config).loss_fn(model, config)


def make_train_step(model, config, tx: FlatOptimizer) -> Callable:
  """train_step(state, batch, rng) → (state, metrics); a non-finite loss or trainable gradient leaves the state
  unchanged (except the step count) and reports `finite = False`, so the loop can halt or skip (`config.nonfinite`).
  `config.precision = "bf16"` computes the loss with bfloat16 matmuls and convolutions (`precision.autocast`)."""
  loss_fn = precision.autocast(make_loss_fn(model, config), config.get("precision", "fp32"))

  def train_step(state: TrainState, batch: dict, rng: jax.Array):
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
    params, opt_state, finite, grad_norm = tx.apply(grads, state.opt_state, state.params, jnp.isfinite(loss))
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return state, {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite}

  return train_step


def make_predict_fn(model, config) -> Callable:
  """predict(params, batch, stop_after=None) → (prediction, the solver's `Trajectory` or None) of `config.task`."""
  return tasks.get(config).predict_fn(model, config)

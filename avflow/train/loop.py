"""The training loop: data → jitted train step over the mesh → logs, checkpoints, periodic evaluation.

SIGTERM/SIGINT finish the current step, save the state and the data iterator, and return; `resume=True` continues
exactly where the run stopped.
"""
import json
import logging
import os
import signal
import time

import jax
import numpy as np
import tensorboardX
import tqdm

from avflow.data.pipeline import device_batch, make_dataset, make_source
from avflow.errors import AvflowError, RunExistsError
from avflow.models.highlighter import Highlighter
from avflow.train import checkpoint, distributed, pretrained, sharding
from avflow.train.evaluate import evaluate
from avflow.train.state import TrainState, check_batch, create_train_state, make_optimizer
from avflow.train.step import jit, make_predict_fn, make_train_step


class NonFiniteError(AvflowError, RuntimeError):
  """A non-finite loss or gradient under `config.nonfinite = "halt"`."""


class _StopRequest:
  """Records SIGTERM/SIGINT so the loop can stop between steps."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    self.signal = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def merge_params(fresh, loaded, prefix=""):
  """Overlays `loaded` onto `fresh` where paths match (warm start: new time/adapter parameters stay fresh)."""
  if not isinstance(fresh, dict):
    if np.shape(fresh) != np.shape(loaded):
      raise ValueError(f"init_from parameter {prefix} has shape {np.shape(loaded)}, expected {np.shape(fresh)}")
    return jax.numpy.asarray(loaded, fresh.dtype)
  return {k: merge_params(v, loaded[k], f"{prefix}/{k}") if k in loaded else v for k, v in fresh.items()}


def train(config, workdir: str, resume: bool = False) -> TrainState:
  """Trains `config` in `workdir`; returns the final state."""
  if not resume:
    pretrained.check_weights(config)  # before anything starts, let alone compiles
  distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint.Checkpointer(workdir)
  if ckpt.latest_step() is not None and not resume:
    raise RunExistsError(f"{workdir} already holds checkpoints (step {ckpt.latest_step()}): pass --resume to "
                         "continue that run, or choose a new --workdir")
  resuming = ckpt.latest_step() is not None
  if resuming:
    checkpoint.check_resumable(workdir, config)
  elif resume:  # nothing to resume: the run is initialised
    pretrained.check_weights(config)
  checkpoint.save_config(workdir, config, checkpoint.load_pretrained_record(workdir) if resuming else None)

  model = Highlighter(config.model)
  tx = make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  data_sharding = sharding.batch_sharding(mesh)
  train_ds = make_dataset(make_source(config.data, "train"), config.data, batch_size=config.batch_size,
                          seed=config.seed, train=True, process_index=jax.process_index(),
                          process_count=jax.process_count())
  eval_source = make_source(config.data, "val")
  data_iter = iter(train_ds)
  first = next(iter(train_ds))
  check_batch(config, first)
  example = sharding.global_batch(device_batch(first), data_sharding)

  state = create_train_state(model, config, example, tx)
  if config.init_from:
    params = merge_params(jax.device_get(state.params), checkpoint.load_params(config.init_from))
    state = state.replace(params=params, opt_state=tx.init(params))
  if not resuming:  # the frozen encoders' weights; a resumed run restores them from its checkpoint
    params, loaded = pretrained.load_weights(config, jax.device_get(state.params))
    if loaded:
      state = state.replace(params=params)
      checkpoint.save_config(workdir, config, loaded)
  state_sharding = sharding.state_sharding(state, mesh, config.mesh)
  state = jax.device_put(state, state_sharding)
  if resuming:
    state = ckpt.restore(state, data_iter)
    logging.info("resumed from step %d", int(state.step))

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  train_step = jit(make_train_step(model, config, tx), donate_argnums=(0,),
                   in_shardings=(state_sharding, data_sharding, replicated),
                   out_shardings=(state_sharding, replicated))
  predict = jit(make_predict_fn(model, config))
  writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard")) if jax.process_index() == 0 else None

  step = int(state.step)
  if step >= config.total_steps:
    if ckpt.latest_step() is None:
      ckpt.save(step, state, data_iter)
    ckpt.wait()
    ckpt.close()
    return state

  progress = tqdm.tqdm(total=config.total_steps, initial=step, desc="train", dynamic_ncols=True,
                       disable=jax.process_index() != 0)
  t_last, step_last = time.time(), step
  with _StopRequest() as stop:
    while step < config.total_steps:
      batch = next(data_iter)
      rng = jax.random.fold_in(state.rng, step)
      state, metrics = train_step(state, sharding.global_batch(device_batch(batch), data_sharding), rng)
      step += 1
      metrics = jax.device_get(metrics)
      if not metrics["finite"]:
        message = (f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}); "
                   f"clip ids: {', '.join(str(c) for c in batch['clip_id'])}")
        if config.nonfinite == "halt":
          raise NonFiniteError(message + "; set --config.nonfinite=skip to skip such updates")
        logging.warning("%s; update skipped", message)
      progress.update(1)
      if step % config.log_every == 0 or step == config.total_steps:
        now = time.time()
        scalars = {k: float(v) for k, v in metrics.items() if k != "finite"}
        scalars["examples_per_s"] = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        progress.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()})
        if writer:
          for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, step)
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
      done = step == config.total_steps
      if step % config.checkpoint_every == 0 or done or stop.signal is not None:
        ckpt.save(step, state, data_iter)
      if step % config.eval_every == 0 or done:
        report = evaluate(predict, state.params, eval_source, config, workdir, step)
        logging.info("eval at step %d: %s", step, json.dumps(report))
        if writer:
          for part in ("input", "prediction"):
            for k, v in report[part].items():
              writer.add_scalar(f"eval_{part}/{k}", v, step)
      if stop.signal is not None:
        logging.warning("signal %d: saved step %d, stopping", stop.signal, step)
        break
  progress.close()
  ckpt.wait()
  ckpt.close()
  if writer:
    writer.close()
  return state

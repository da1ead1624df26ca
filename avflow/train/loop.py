"""The training loop: data → jitted train step over the mesh → logs, checkpoints, periodic evaluation.

SIGTERM/SIGINT finish the current step, save the state and the data iterator, and return; `resume=True` continues
exactly where the run stopped.

The host never waits on the device between steps except to log (`log_every`), save or evaluate: each step's
finiteness flag stays on the device until such a boundary, where the flags of the steps since the last one are
checked in order, so a halted run still names the first non-finite step.
"""
import json
import logging
import os
import signal
import sys
import time

import jax
import numpy as np
import tensorboardX
import tqdm

from avflow import tasks
from avflow.data.pipeline import device_batch
from avflow.errors import AvflowError, RunExistsError
from avflow.train import checkpoint, distributed, pretrained, sharding
from avflow.train.state import TrainState, check_batch, create_train_state, init_params, make_optimizer
from avflow.train.step import jit, make_predict_fn, make_train_step

log = logging.getLogger(__name__)
OUTPUTS = (checkpoint.CONFIG_FILE, "checkpoints", "eval.json", "samples", "metrics.jsonl", "tensorboard")


class NonFiniteError(AvflowError, RuntimeError):
  """A non-finite loss or gradient under `config.nonfinite = "halt"`."""


def check_finite(pending: list, nonfinite: str) -> None:
  """Fetches the `(step, finite, loss, clip ids)` of the steps since the last check (flags and losses still on
  the device); the first non-finite step raises `NonFiniteError` (`nonfinite="halt"`), else each is logged as
  skipped."""
  fetched = jax.device_get([(finite, loss) for _, finite, loss, _ in pending])
  for (step, _, _, clip_ids), (finite, loss) in zip(pending, fetched):
    if finite:
      continue
    message = (f"non-finite loss or gradient at step {step} (loss={float(loss)}); "
               f"clip ids: {', '.join(str(c) for c in clip_ids)}")
    if nonfinite == "halt":
      raise NonFiniteError(message + "; set --config.nonfinite=skip to skip such updates")
    log.warning("%s; update skipped", message)


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


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def summary(workdir: str, first_step: int, step: int, seconds: float, metrics, report, stopped_by=None) -> str:
  """The lines `train` ends with: steps and time, the last step's metrics, the last evaluation, what is where."""
  stopped = f" (stopped by signal {stopped_by})" if stopped_by is not None else ""
  lines = [f"trained steps {first_step} → {step} in {_duration(seconds)}{stopped}"]
  if metrics is not None:
    names = sorted(set(metrics) - {"finite"}, key=lambda k: k != "loss")  # the loss first
    lines.append(f"step {step}: " + ", ".join(f"{k} {float(metrics[k]):.4g}" for k in names))
  if report is not None:
    scores = {part: ", ".join(f"{k} {v:.4g}" for k, v in report[part].items()) for part in ("prediction", "input")
              if part in report}
    baseline = f" (input: {scores['input']})" if "input" in scores else ""
    lines.append(f"eval at step {report['steps']}: {scores['prediction']}{baseline}")
  written = [name + ("/" if os.path.isdir(os.path.join(workdir, name)) else "") for name in OUTPUTS
             if os.path.exists(os.path.join(workdir, name))]
  lines.append(f"wrote {workdir}: {', '.join(written)}")
  return "\n".join(lines)


def train(config, workdir: str, resume: bool = False) -> TrainState:
  """Trains `config` in `workdir`; returns the final state."""
  if not resume:
    pretrained.check_weights(config)  # before anything starts, let alone compiles
  distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  tx = make_optimizer(config)
  ckpt = checkpoint.Checkpointer(workdir, optimizer=tx)
  if ckpt.latest_step() is not None and not resume:
    raise RunExistsError(f"{workdir} already holds checkpoints (step {ckpt.latest_step()}): pass --resume to "
                         "continue that run, or choose a new --workdir")
  resuming = ckpt.latest_step() is not None
  if resuming:
    checkpoint.check_resumable(workdir, config)
  elif resume:  # nothing to resume: the run is initialised
    pretrained.check_weights(config)
  checkpoint.save_config(workdir, config, checkpoint.load_pretrained_record(workdir) if resuming else None)

  task = tasks.get(config)
  model = task.build(config.model)
  mesh = sharding.make_mesh(config.mesh)
  data_sharding = sharding.batch_sharding(mesh)
  train_ds = task.dataset(task.source(config.data, "train"), config.data, batch_size=config.batch_size,
                          seed=config.seed, train=True, process_index=jax.process_index(),
                          process_count=jax.process_count())
  eval_source = task.source(config.data, "val")
  data_iter = iter(train_ds)
  first = next(iter(train_ds))
  check_batch(config, first)
  example = sharding.global_batch(device_batch(first), data_sharding)

  if resuming:
    # The state comes whole from the checkpoint: its shapes are traced, nothing is initialised or compiled for it.
    abstract = jax.eval_shape(lambda batch: create_train_state(model, config, batch, tx), example)
    state_sharding = sharding.state_sharding(abstract, mesh, config.mesh)
    state = ckpt.restore(jax.tree.map(lambda x, where: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=where),
                                      abstract, state_sharding), data_iter)
    log.info("resumed from step %d", int(state.step))
  else:
    # The frozen encoders' weights are read from files, so the init leaves them out.
    params = init_params(model, config, example, without=pretrained.imported_prefixes(config))
    if config.init_from:
      params = merge_params(jax.device_get(params), checkpoint.load_params(config.init_from))
    params, loaded = pretrained.load_weights(config, jax.device_get(params))
    if loaded:
      checkpoint.save_config(workdir, config, loaded)
    state = create_train_state(model, config, example, tx, params)
    state_sharding = sharding.state_sharding(state, mesh, config.mesh)
    state = jax.device_put(state, state_sharding)

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

  main_process = jax.process_index() == 0
  if main_process:
    print("compiling the train step…", file=sys.stderr, flush=True)
  progress = metrics = report = None  # the bar starts after the first (compiled) step: its ETA leaves out compiling
  t_start, first_step = time.time(), step
  t_last, step_last = t_start, step
  pending = []  # (step, finite, loss, clip ids) of the steps not yet checked; flag and loss on the device
  with _StopRequest() as stop:
    while step < config.total_steps:
      batch = next(data_iter)
      rng = jax.random.fold_in(state.rng, step)
      state, metrics = train_step(state, sharding.global_batch(device_batch(batch), data_sharding), rng)
      step += 1
      pending.append((step, metrics["finite"], metrics["loss"], batch["clip_id"]))
      if progress is None:
        progress = tqdm.tqdm(total=config.total_steps, initial=step, desc="train", dynamic_ncols=True,
                             disable=not main_process)
      else:
        progress.update(1)
      done = step == config.total_steps
      stopping = stop.signal is not None  # read once: a signal after this stops the run after the next step
      log_now = step % config.log_every == 0 or done
      save = step % config.checkpoint_every == 0 or done or stopping
      if log_now or save or step % config.eval_every == 0:
        check_finite(pending, config.nonfinite)
        pending = []
      if log_now:
        now = time.time()
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "finite"}
        scalars["examples_per_s"] = (step - step_last) * config.batch_size / max(now - t_last, 1e-9)
        t_last, step_last = now, step
        progress.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()})
        if writer:
          for k, v in scalars.items():
            writer.add_scalar(f"train/{k}", v, step)
          with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
      if save:
        ckpt.save(step, state, data_iter)
      if step % config.eval_every == 0 or done:
        report = task.evaluate(predict, state.params, eval_source, config, workdir, step)
        log.info("eval at step %d: %s", step, json.dumps(report))
        if writer:
          for part in ("input", "prediction"):
            for k, v in report.get(part, {}).items():
              writer.add_scalar(f"eval_{part}/{k}", v, step)
      if stopping:
        log.warning("signal %d: saved step %d, stopping", stop.signal, step)
        break
  if progress is not None:
    progress.close()
  ckpt.wait()
  ckpt.close()
  if writer:
    writer.close()
  if main_process:
    print(summary(workdir, first_step, step, time.time() - t_start, metrics, report, stop.signal))
  return state

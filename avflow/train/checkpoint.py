"""Orbax checkpoints of the train state and the data iterator, and the run's config.

Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it when complete), so a
process killed during a save leaves the last complete checkpoint intact.
"""
import json
import os
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from avflow.configs_lib import flat_fields
from avflow.errors import AvflowError, RunNotFoundError

CONFIG_FILE = "config.json"
RUN_ENTRIES = (CONFIG_FILE, "checkpoints")  # what a run is read from
PRETRAINED_KEY = "pretrained_encoders"

# Config fields (a name covers its subtree) that a resumed run may change; any other difference stops `--resume`.
# None changes what a training step computes: the run's length (a longer run also stretches the rest of the
# cosine schedule, as a run started with that length would have it), the logging / evaluation / checkpoint cadence,
# the response to a non-finite step (the remedy that a halted run's message names), the device layout (the same
# global batch and mathematics on other hardware, up to float rounding), the evaluation and inference settings,
# which only the periodic evaluations use, and where the pretrained encoder weights were read from at init (the
# checkpoint carries them since).
RESUMABLE_FIELDS = ("total_steps", "eval_every", "checkpoint_every", "log_every", "nonfinite", "mesh", "eval",
                    "inference", "model.conditioning.clip_weights", "model.conditioning.clap_weights",
                    "model.conditioning.random_encoders")


class ConfigMismatchError(AvflowError, ValueError):
  """`--resume` was asked to continue a run with a config that differs in fields outside `RESUMABLE_FIELDS`."""


def _put(x: np.ndarray, sharding) -> Any:
  """The host array `x` as a jax array of `sharding` (each process holds the same `x`); `x` itself without one."""
  if sharding is None:
    return x
  return jax.make_array_from_callback(np.shape(x), sharding, lambda index: x[index])


def _replicated(tree: Any):
  """The sharding that puts a whole array on every device `tree`'s first array lives on (None for host arrays)."""
  sharding = getattr(jax.tree.leaves(tree)[0], "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return sharding


class Checkpointer:
  """Saves/restores `{state, data}` under `<workdir>/checkpoints/<step>`.

  With `optimizer` (the run's `FlatOptimizer`), a `TrainState`'s optimizer state is saved in the per-leaf layout
  and restored into the layout the train step carries (`FlatOptimizer.saved_state` / `buffer_state`), so a
  checkpoint does not depend on how the step holds its moments.
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True, optimizer=None):
    self.optimizer = optimizer
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
                                           create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _converts(self) -> bool:
    return self.optimizer is not None and self.optimizer.one_buffer

  def save(self, step: int, state: Any, data_iterator=None) -> None:
    if self._converts():
      saved = self.optimizer.saved_state(state.opt_state, state.params)
      sharding = _replicated(state.opt_state)
      state = state.replace(opt_state=jax.tree.map(lambda x: _put(x, sharding), saved))
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, state_template: Any, data_iterator=None, step: int | None = None) -> Any:
    """Restores into the structure, dtypes and shardings of `state_template` (and the iterator, in place)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    if self._converts():
      sharding = _replicated(state_template.opt_state)
      abstract = abstract.replace(opt_state=jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
          jax.eval_shape(self.optimizer.per_leaf.init, state_template.params)))
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    if self._converts():
      opt_state = self.optimizer.buffer_state(state.opt_state, state.params)
      state = state.replace(opt_state=jax.tree.map(lambda x, like: _put(x, getattr(like, "sharding", None)),
                                                   opt_state, state_template.opt_state))
    return state

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def load_params(run_dir: str, step: int | None = None) -> Any:
  """The parameters of a run (or of an imported checkpoint) without needing its optimizer structure."""
  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  if not os.path.isdir(directory):
    raise RunNotFoundError(f"{run_dir} has no checkpoints/ directory: train a model there or import one first")
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise RunNotFoundError(f"{directory} holds no complete checkpoint")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return restored["state"]["params"]


def save_config(workdir: str, config: ml_collections.ConfigDict, pretrained: dict | None = None) -> None:
  """Writes `config.json`; `pretrained` (the encoder weights a run was initialised with, see
  `avflow.train.pretrained.load_weights`) goes under its `pretrained_encoders` key."""
  os.makedirs(workdir, exist_ok=True)
  data = json.loads(config.to_json_best_effort())
  if pretrained:
    data[PRETRAINED_KEY] = pretrained
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(data, f, indent=2)


def run_files(run_dir: str) -> list[str]:
  """The paths a run is read from (its config and checkpoints), which no command's output may replace."""
  return [os.path.join(run_dir, entry) for entry in RUN_ENTRIES]


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Raises `ConfigMismatchError` listing each field (dotted path, saved → requested) in which `config` differs
  from the run's saved config, other than those of `RESUMABLE_FIELDS`."""
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise ConfigMismatchError(f"cannot resume {workdir}: it holds checkpoints but no {CONFIG_FILE} to check the "
                              "requested config against")
  saved = flat_fields(load_config(workdir).to_dict())
  requested = flat_fields(json.loads(config.to_json_best_effort()))

  def show(tree, name):
    return json.dumps(tree[name]) if name in tree else "(absent)"

  differing = [f"{name}: {show(saved, name)} → {show(requested, name)}"
               for name in sorted(set(saved) | set(requested))
               if show(saved, name) != show(requested, name)
               and not any(name == field or name.startswith(field + ".") for field in RESUMABLE_FIELDS)]
  if differing:
    raise ConfigMismatchError(f"cannot resume {workdir}: the requested config differs from the run's saved config in "
                              f"{'; '.join(differing)} (only {', '.join(RESUMABLE_FIELDS)} may change on resume; "
                              "start a new --workdir to train another config)")


def _read_config(run_dir: str) -> dict:
  path = os.path.join(run_dir, CONFIG_FILE)
  if not os.path.exists(path):
    raise RunNotFoundError(f"{path} not found: {run_dir} is not an avflow run directory")
  with open(path) as f:
    return json.load(f)


def load_config(run_dir: str) -> ml_collections.ConfigDict:
  data = _read_config(run_dir)
  data.pop(PRETRAINED_KEY, None)
  return ml_collections.ConfigDict(data)


def load_pretrained_record(run_dir: str) -> dict:
  """What `config.json` says the run's encoders were loaded from (empty: no pretrained weights)."""
  return _read_config(run_dir).get(PRETRAINED_KEY, {})

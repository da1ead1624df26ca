"""Train state and optimizer: Adam with cosine annealing (Sec. 3.1: lr 1e-4, cosine schedule, batch 32)."""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from avflow import tasks
from avflow.train.flat_optimizer import FlatOptimizer
from avflow.train.partition import frozen_mask


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  if opt_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if opt_cfg.warmup_steps else opt_cfg.learning_rate, peak_value=opt_cfg.learning_rate,
        warmup_steps=opt_cfg.warmup_steps, decay_steps=max(total_steps, opt_cfg.warmup_steps + 1),
        end_value=opt_cfg.learning_rate * opt_cfg.final_lr_fraction)
  if opt_cfg.schedule == "constant":
    return optax.constant_schedule(opt_cfg.learning_rate)
  raise ValueError(f"optimizer.schedule={opt_cfg.schedule!r}; expected 'cosine' or 'constant'")


def make_optimizer(config) -> FlatOptimizer:
  """Adam on the trainable parameters (one buffer); frozen encoders keep their values and have no optimizer state."""
  opt_cfg = config.optimizer
  tx = optax.adam(learning_rate_schedule(opt_cfg, config.total_steps), b1=opt_cfg.b1, b2=opt_cfg.b2,
                  eps=opt_cfg.eps)
  if opt_cfg.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(opt_cfg.clip_norm), tx)
  mesh = config.mesh
  replicated = mesh.fsdp == 1 and all(spec == "fsdp" for _, spec in mesh.get("rules", ((".*", "fsdp"),)))
  return FlatOptimizer(tx, tasks.get(config).frozen_prefixes(config.model), one_buffer=replicated,
                       lr_multipliers=dict(opt_cfg.get("lr_multipliers", {})))


def _keys(config) -> jax.Array:
  """The parameter-init key and the train state's key, from `config.seed`."""
  return jax.random.split(jax.random.PRNGKey(config.seed))


def init_params(model, config, example_batch: dict, without: tuple[str, ...] = ()) -> Any:
  """The parameters `config.seed` initializes.

  Leaves under the `/`-joined path prefixes `without` (frozen encoders whose weights are imported next) are left
  out of the compiled init, so XLA drops their random draws (the paper's V+A model: 80 s of compile on 2 CPU cores
  against 40 s without CLIP and CLAP), and come back as `jax.ShapeDtypeStruct`s for the importer to fill. The other
  leaves are the same values either way: each module draws from a key folded from its own path.
  """
  init = functools.partial(tasks.get(config).init, model)
  key = _keys(config)[0]
  if not without:
    return jax.jit(init)(key, example_batch)

  def kept(key, batch):
    params = init(key, batch)
    left_out = flax.traverse_util.flatten_dict(frozen_mask(params, without), sep="/")
    return {p: v for p, v in flax.traverse_util.flatten_dict(params, sep="/").items() if not left_out[p]}

  values = jax.jit(kept)(key, example_batch)
  shapes = flax.traverse_util.flatten_dict(jax.eval_shape(init, key, example_batch), sep="/")
  return flax.traverse_util.unflatten_dict({p: values.get(p, s) for p, s in shapes.items()}, sep="/")


def create_train_state(model, config, example_batch: dict, tx: FlatOptimizer, params: Any = None) -> TrainState:
  """The train state at step 0: `params` (default: `init_params`) and their optimizer state."""
  if params is None:
    params = init_params(model, config, example_batch)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=_keys(config)[1])


def abstract_batch(config, batch_size: int = 1) -> dict:
  """Shapes and dtypes of a model input batch for `config` (for `jax.eval_shape`, no data needed)."""
  return tasks.get(config).abstract_batch(config, batch_size)


def check_batch(config, batch: dict) -> None:
  """A clear `ValueError` when a data batch cannot feed the model of `config` (e.g. it lacks the stored features
  the model conditions on)."""
  tasks.get(config).check_batch(config, batch)


def abstract_params(model, config) -> Any:
  """The parameter tree of `config` as ShapeDtypeStructs (no allocation)."""
  return jax.eval_shape(lambda b: tasks.get(config).init(model, jax.random.PRNGKey(0), b), abstract_batch(config))

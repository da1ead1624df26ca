"""Train state and optimizer: Adam with cosine annealing (Sec. 3.1: lr 1e-4, cosine schedule, batch 32)."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avflow.models.visah.highlighter import frozen_prefixes
from avflow.train.flat_optimizer import FlatOptimizer


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
  return FlatOptimizer(tx, frozen_prefixes(config.model), one_buffer=replicated)


def create_train_state(model, config, example_batch: dict, tx: FlatOptimizer) -> TrainState:
  """Initializes parameters from `config.seed` and the optimizer state."""
  init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
  t = jnp.zeros((example_batch["x0"].shape[0],), jnp.float32)
  params = jax.jit(model.init)(init_key, example_batch, t)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=state_key)


def abstract_batch(config, batch_size: int = 1) -> dict:
  """Shapes and dtypes of a model input batch for `config` (for `jax.eval_shape`, no data needed)."""
  data = config.data
  length = int(round(data.sample_rate * data.clip_seconds))
  frames = max(1, int(round(data.clip_seconds * data.frames_per_second)))
  audio = jax.ShapeDtypeStruct((batch_size, length, 1), jnp.float32)
  cond = config.model.conditioning
  batch = {"x0": audio, "x1": audio}
  if cond.kind == "features":  # CLIP `context`: one token per frame; T5 `text`: text_tokens caption tokens
    tokens = cond.text_tokens if cond.features_key == "text" else frames
    batch[cond.features_key] = jax.ShapeDtypeStruct((batch_size, tokens, config.model.latent.context_dim),
                                                    jnp.float32)
  else:
    batch["frames"] = jax.ShapeDtypeStruct((batch_size, frames, data.image_size, data.image_size, 3), jnp.uint8)
  if cond.kind == "clip_adapter" and "text" in cond.modalities:
    batch["text"] = jax.ShapeDtypeStruct((batch_size, cond.text_tokens, cond.text_dim), jnp.float32)
  return batch


def check_batch(config, batch: dict) -> None:
  """A clear `ValueError` when a data batch lacks the stored features the model conditions on, or their
  shape differs from the config's (e.g. records prepared with a 1024-d T5 for `text_dim=4096`)."""
  cond = config.model.conditioning
  expected = abstract_batch(config)
  keys = [cond.features_key] if cond.kind == "features" else []
  keys += ["text"] if cond.kind == "clip_adapter" and "text" in cond.modalities else []
  for key in keys:
    want = expected[key].shape[1:]
    if key not in batch:
      how = ("prepare the records with `python -m avflow prepare --text_encoder=DIR`" if key == "text" else
             "prepare the records from clips with frames_feats/visual_feats.pt")
      raise ValueError(f"model.conditioning ({cond.kind}) reads stored `{key}` features, but the batches of "
                       f"data.source={config.data.source!r} have none (fields: {', '.join(sorted(batch))}); {how}")
    got = tuple(np.shape(batch[key])[1:])
    if got != tuple(want):
      if key == "text":
        names = ("model.conditioning.text_tokens", "model.conditioning.text_dim" +
                 (" (= model.latent.context_dim)" if cond.kind == "features" else ""))
      else:
        names = ("the clip's frame count", "model.latent.context_dim")
      raise ValueError(f"stored `{key}` features are {got[-2]} x {got[-1]} (tokens x width) per clip, but the "
                       f"config expects {want[-2]} x {want[-1]} ({names[0]} x {names[1]}); set the config to the "
                       "stored shape or prepare the records again")


def abstract_params(model, config) -> Any:
  """The parameter tree of `config` as ShapeDtypeStructs (no allocation)."""
  batch = abstract_batch(config)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  return jax.eval_shape(lambda b, t: model.init(jax.random.PRNGKey(0), b, t)["params"], batch, t)

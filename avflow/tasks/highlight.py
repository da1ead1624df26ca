"""Highlighting (VisAH-FM, VisAH): a poorly balanced mix x0 is carried to the well-balanced x1, guided by the video.

`flow` is VisAH-FM: the velocity field integrated from x0 on the N-step grid, trained with Eq. 5 (CFM + λ·rollout
and the Table 3 ablation terms). `regression` is the discriminative VisAH: x̂1 = u(x0, c) in one pass, trained with
the multi-resolution STFT loss. Both read the Muddy-Mix pipeline (`data/pipeline.py`) and are scored by LDif, Mag,
Env and Was (`train/evaluate.py`).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from avflow import flow
from avflow.data import pipeline
from avflow.models.visah import highlighter
from avflow.models.visah.highlighter import Highlighter
from avflow.tasks.base import Task
from avflow.train import evaluate as evaluation
from avflow.train.losses import multi_resolution_stft_loss


@dataclasses.dataclass(frozen=True)
class Highlight(Task):
  regression: bool  # VisAH's one-pass regression instead of VisAH-FM's flow
  name: str = "highlight"
  headline: tuple[str, bool] = ("ldif", True)

  def build(self, model_cfg):
    return Highlighter(model_cfg)

  def frozen_prefixes(self, model_cfg):
    return highlighter.frozen_prefixes(model_cfg)

  def pretrained_encoders(self, model_cfg):
    return {name: (name,) for name in highlighter.pretrained_encoders(model_cfg)}

  def describe_conditioning(self, model_cfg):
    return highlighter.describe_conditioning(model_cfg)

  def abstract_batch(self, config, batch_size=1):
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

  def init(self, model, key, batch):
    t = jnp.zeros((batch["x0"].shape[0],), jnp.float32)
    return model.init(key, batch, t)["params"]

  def check_batch(self, config, batch):
    """Names the stored features the conditioning reads when the batches lack them or their shape differs from the
    config's (e.g. records prepared with a 1024-d T5 for `text_dim=4096`)."""
    cond = config.model.conditioning
    expected = self.abstract_batch(config)
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

  def source(self, data_cfg, split):
    return pipeline.make_source(data_cfg, split)

  def dataset(self, source, data_cfg, **kwargs):
    return pipeline.make_dataset(source, data_cfg, **kwargs)

  def loss_fn(self, model, config):
    """Eq. 5 for VisAH-FM, the multi-resolution STFT loss for VisAH."""
    objective = None if self.regression else flow.ObjectiveConfig.from_config(config.objective)

    def loss_fn(params, batch, rng):
      variables = {"params": params}
      context = model.apply(variables, batch, method=Highlighter.encode)
      x0, x1 = batch["x0"], batch["x1"]
      if self.regression:
        pred = model.apply(variables, x0, context, method=Highlighter.regress)
        loss = multi_resolution_stft_loss(pred[..., 0], x1[..., 0])
        return loss, {"mr_stft": loss}

      def velocity_fn(x_t, t, cond):
        return model.apply(variables, x_t, t, cond, x0, method=Highlighter.velocity)

      return flow.flow_loss(velocity_fn, x0, x1, context, rng, objective)

    return loss_fn

  def predict_fn(self, model, config):
    """VisAH-FM integrates from x0 at t=0 on the N-step grid (Euler by default, Sec. 3.1: N = 4), optionally
    stopping after k steps (Sec. 9); VisAH regresses in one pass (no trajectory)."""
    inference = config.inference

    def predict(params, batch, stop_after=None):
      variables = {"params": params}
      context = model.apply(variables, batch, method=Highlighter.encode)
      x0 = batch["x0"]
      if self.regression:
        return model.apply(variables, x0, context, method=Highlighter.regress), None

      def velocity_fn(x_t, t, cond):
        return model.apply(variables, x_t, t, cond, x0, method=Highlighter.velocity)

      traj = flow.integrate(velocity_fn, x0, context, inference.num_steps, inference.method, stop_after)
      return traj.final, traj

    return predict

  def evaluate(self, predict, params, source, config, workdir, step):
    return evaluation.evaluate(predict, params, source, config, workdir, step)


FLOW = Highlight(regression=False)
REGRESSION = Highlight(regression=True)

"""Separation (DAVIS-Flow, DAVIS): the spectrogram of one video's sound generated from the mixture and its frames.

Both work in the compressed log-frequency magnitude domain (`avflow.nn.spectrogram`): x1 is the wanted source's
scaled magnitude, the mixture's enters the U-Net as a second channel, the frames as one visual vector.
  flow       DAVIS-Flow (Sec. 3.3): x0 ~ 𝒩(0, I) (`config.flow_source = "mixture"`: the mixture itself, the
             VisAH-FM-style bridge), the σ_min path with the L1 loss (`config.objective`), Euler on N = 2 steps
  diffusion  DAVIS (Sec. 3.1): ε-prediction with the L1 loss on the sigmoid schedule, DDIM on 15 steps
             (`config.diffusion`)
Training uses both videos of each pair, 𝓛 = 𝓛⁽¹⁾ + 𝓛⁽²⁾ (here their mean: a factor 2 Adam does not see). Sampling
may keep the mixture's silent bins silent (`inference.silence_threshold` δ, Eq. 2/5: 0.002 in the paper; 0 is off).
The waveform is the estimate's magnitude with the mixture's phase (Alg. 2), scored by SDR / SIR / SAR.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf

from avflow import flow
from avflow.data import pipeline, separation
from avflow.metrics.separation import separation_metrics
from avflow.models.davis import presets, visual
from avflow.models.davis.separator import Separator
from avflow.tasks.base import Task
from avflow.train.evaluate import save_frames

METHODS = ("flow", "diffusion")
FLOW_SOURCES = ("gaussian", "mixture")


def condition_keys(model_cfg) -> tuple[str, ...]:
  """The batch fields the visual encoder reads: the frames, or the stored per-frame features."""
  cond = model_cfg.conditioning
  return (cond.features_key,) if cond.kind == "features" else ("frames",)


def both_sources(batch: dict, keys) -> dict:
  """A pair's batch (B examples) as 2B single-source examples: A's conditions, then B's, the mixture twice."""
  out = {k: jnp.concatenate([batch[k], batch[f"other_{k}"]]) for k in keys}
  out["mixture"] = jnp.concatenate([batch["mixture"], batch["mixture"]])
  if "target" in batch:
    out["target"] = jnp.concatenate([batch["target"], batch["other_target"]])
  return out


@dataclasses.dataclass(frozen=True)
class Separate(Task):
  name: str = "separate"
  headline: tuple[str, bool] = ("sdr", False)

  def build(self, model_cfg):
    return Separator(model_cfg)

  def frozen_prefixes(self, model_cfg):
    return visual.frozen_prefixes(model_cfg)

  def pretrained_encoders(self, model_cfg):
    return {"clip": ("visual", "clip")} if model_cfg.conditioning.kind == "clip" else {}

  def describe_conditioning(self, model_cfg):
    return visual.describe_conditioning(model_cfg)

  def abstract_batch(self, config, batch_size=1):
    data, cond = config.data, config.model.conditioning
    wave = jax.ShapeDtypeStruct((batch_size, data.clip_samples), jnp.float32)
    if cond.kind == "features":
      view = jax.ShapeDtypeStruct((batch_size, data.num_frames, config.model.temporal.d_model), jnp.float32)
    else:
      view = jax.ShapeDtypeStruct((batch_size, data.num_frames, data.image_size, data.image_size, 3), jnp.uint8)
    key = condition_keys(config.model)[0]
    return {"mixture": wave, "target": wave, "other_target": wave, key: view, f"other_{key}": view}

  def init(self, model, key, batch):
    inputs = {k: batch[k] for k in condition_keys(model.cfg)}
    front = _front_end(model.cfg)
    inputs["mixture"] = front.to_model(front.spec(batch["mixture"]))
    return model.init(key, inputs, jnp.zeros((batch["mixture"].shape[0],), jnp.float32))["params"]

  def check_batch(self, config, batch):
    expected = self.abstract_batch(config)
    for key, spec in expected.items():
      if key not in batch:
        raise ValueError(f"the batches of data.source={config.data.source!r} have no `{key}` (fields: "
                         f"{', '.join(sorted(batch))}); model.conditioning.kind={config.model.conditioning.kind!r} "
                         f"reads {', '.join(condition_keys(config.model))}")
      got = tuple(np.shape(batch[key])[1:])
      if got != spec.shape[1:]:
        raise ValueError(f"batch field `{key}` is {got} per example, but the config expects {spec.shape[1:]} "
                         "(data.clip_samples, data.num_frames, data.image_size, model.temporal.d_model)")

  def source(self, data_cfg, split):
    if data_cfg.source == "toy_movies":
      num = data_cfg.num_train_pairs if split == "train" else data_cfg.num_eval_pairs
      return separation.ToyPairs(sample_rate=data_cfg.sample_rate, clip_seconds=data_cfg.clip_samples /
                                 data_cfg.sample_rate, num_frames=data_cfg.num_frames, image_size=data_cfg.image_size,
                                 num_pairs=num, seed=data_cfg.seed, split=split, layout=data_cfg.toy_layout)
    if data_cfg.source == "records":
      from avflow.data.records import records_source
      return separation.RecordPairs(records_source(data_cfg, split), seed=data_cfg.seed)
    raise ValueError(f"unknown data.source {data_cfg.source!r}; expected 'toy_movies' or 'records'")

  def dataset(self, source, data_cfg, **kwargs):
    return pipeline.make_pair_dataset(source, data_cfg, **kwargs)

  def loss_fn(self, model, config):
    """DAVIS-Flow's L1 flow matching on the σ_min path (Eq. 4–5), or DAVIS's ε loss (Eq. 3), over both sources."""
    method = _method(config)
    objective = flow.ObjectiveConfig.from_config(config.objective) if method == "flow" else None
    diffusion = flow.diffusion.DiffusionConfig.from_config(config.diffusion) if method == "diffusion" else None
    keys = condition_keys(config.model)
    front = _front_end(config.model)

    def loss_fn(params, batch, rng):
      variables = {"params": params}
      pair = both_sources(batch, keys)
      mixture = front.to_model(front.spec(pair["mixture"]))
      x1 = front.to_model(front.spec(pair["target"]))
      context = model.apply(variables, pair, method=Separator.encode)

      def velocity_fn(x_t, t, cond):
        return model.apply(variables, x_t, t, cond, mixture, method=Separator.velocity)

      if method == "diffusion":
        return flow.diffusion.diffusion_loss(velocity_fn, x1, context, rng, diffusion)
      source_key, loss_key = jax.random.split(rng)
      x0 = flow.sample_source(source_key, x1) if config.flow_source == "gaussian" else mixture
      return flow.flow_loss(velocity_fn, x0, x1, context, loss_key, objective)

    return loss_fn

  def predict_fn(self, model, config):
    """The waveform `(B, L)` of the source each example's frames show, from its mixture: Euler on the
    `inference.num_steps` grid from x0 (optionally stopping after k steps), or DDIM; then the mixture's phase."""
    method = _method(config)
    inference = config.inference
    front = _front_end(config.model)
    objective = flow.ObjectiveConfig.from_config(config.objective) if method == "flow" else None
    diffusion = flow.diffusion.DiffusionConfig.from_config(config.diffusion) if method == "diffusion" else None

    def predict(params, batch, stop_after=None):
      variables = {"params": params}
      mixture_spec = front.spec(batch["mixture"])
      mixture = front.to_model(mixture_spec)
      context = model.apply(variables, batch, method=Separator.encode)
      silent = mixture < inference.silence_threshold  # all False at δ = 0

      def velocity_fn(x_t, t, cond):
        return model.apply(variables, x_t, t, cond, mixture, method=Separator.velocity)

      # One x0 for every example (as DAVIS samples both sources of a pair from one x0): an example's estimate
      # does not depend on the batch it is in.
      noise_key, eta_key = jax.random.split(jax.random.PRNGKey(inference.seed))
      noise = jnp.broadcast_to(flow.sample_source(noise_key, mixture[:1]), mixture.shape)
      if method == "diffusion":
        if stop_after is not None:
          raise ValueError("stop_after applies to the flow's Euler grid, not to DDIM")
        traj = flow.diffusion.ddim_sample(velocity_fn, noise, context, diffusion, key=eta_key,
                                          hook=flow.diffusion.masked_replacement(silent, mixture))
      else:
        x0 = noise if config.flow_source == "gaussian" else mixture
        traj = flow.integrate(velocity_fn, x0, context, inference.num_steps, inference.method, stop_after,
                              hook=flow.masked_replacement(silent, mixture, objective.sigma_min))
      wave = front.resynthesize(traj.final, mixture_spec, length=batch["mixture"].shape[-1])
      return wave, traj

    return predict

  def evaluate(self, predict, params, source, config, workdir, step):
    """SDR / SIR / SAR of both separated sources of each held-out pair, the mixture's SDR as the input, and the SDR
    with the frames swapped ("swapped_frames": each source scored against the estimate its partner's frames gave:
    far below the prediction's when the frames choose the source, equal to it when the model ignores them); writes
    `eval.json` and, for the first `eval.num_samples` pairs, `samples/<pair>/` (mixture, both estimates and
    references as wavs, both sources' frames)."""
    keys = condition_keys(config.model)
    ds = self.dataset(source, config.data, batch_size=config.eval.batch_size, seed=config.data.seed, train=False)
    triples, ids, samples = [], [], []
    for batch in ds:
      n = len(batch["clip_id"])
      pair = both_sources({k: v for k, v in batch.items() if k != "clip_id"}, keys)
      pred = np.asarray(jax.device_get(predict(params, {k: pair[k] for k in (*keys, "mixture")})[0]))
      for i in range(n):
        references = np.stack([batch["target"][i], batch["other_target"][i]])
        estimates = np.stack([pred[i], pred[n + i]])
        triples.append((references, estimates, batch["mixture"][i]))
        ids.append(str(batch["clip_id"][i]))
        if len(samples) < config.eval.num_samples:
          samples.append((ids[-1], batch["mixture"][i], references, estimates,
                          [batch["frames"][i], batch["other_frames"][i]] if "frames" in batch else None))
    report = separation_metrics(triples)
    report["swapped_frames"] = {"sdr": separation_metrics((r, e[::-1], m) for r, e, m in triples)["prediction"]["sdr"]}
    report.update(steps=int(step), num_pairs=len(ids), sample_rate=config.data.sample_rate,
                  inference=_inference_summary(config))
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(report, f, indent=2)
    for clip, mixture, references, estimates, frames in samples:
      folder = os.path.join(workdir, "samples", clip)
      os.makedirs(folder, exist_ok=True)
      sf.write(os.path.join(folder, "mixture.wav"), np.clip(mixture, -1, 1), config.data.sample_rate)
      for k, name in enumerate(("a", "b")):
        sf.write(os.path.join(folder, f"prediction_{name}.wav"), np.clip(estimates[k], -1, 1), config.data.sample_rate)
        sf.write(os.path.join(folder, f"target_{name}.wav"), np.clip(references[k], -1, 1), config.data.sample_rate)
        if frames is not None:
          save_frames(os.path.join(folder, f"frames_{name}"), frames[k])
    return report


def _method(config) -> str:
  if config.method not in METHODS:
    raise ValueError(f"config.method={config.method!r}; expected one of {METHODS}")
  if config.method == "flow" and config.flow_source not in FLOW_SOURCES:
    raise ValueError(f"config.flow_source={config.flow_source!r}; expected one of {FLOW_SOURCES}")
  return config.method


def _front_end(model_cfg):
  return presets.spectrogram(model_cfg.spectrogram)


def _inference_summary(config) -> dict:
  if config.method == "diffusion":
    return {"sampler": "ddim", "num_steps": config.diffusion.sampling_steps, "eta": config.diffusion.eta,
            "silence_threshold": config.inference.silence_threshold}
  return {"sampler": config.inference.method, "num_steps": config.inference.num_steps,
          "silence_threshold": config.inference.silence_threshold}


SEPARATE = Separate()

"""Video-to-audio generation (VAFlow): the audio latent x_a of a clip generated from its frames.

A batch holds the waveforms `audio (B, L)` and the frames `frames (B, T_v, S, S, 3)`; the loss encodes the audio
with the codec (`config.codec`, `codec.MelCodec` at `data.sample_rate`) into x_a (T_a, D_a), standardised by a fixed
shift and scale (`config.latent`, as latent diffusion and Stable Audio scale their codecs' latents: the toy codec's
lie around −0.37 ± 0.15, far narrower than a 𝒩(0, I) source), and the frames into the video features x_v
(`models.v2a.vaflow.frame_features`) inside the jitted step. `model.stage` picks the objective:

  prior      the alignment VAE alone, L_VAE (Eq. 7: λ_KL·KL + λ_rec·‖x_v − x̂_v‖² + λ_con·L_con, `config.prior_loss`)
  estimator  the velocity loss (Eq. 8) ‖(x_a − x0) − v(x_t, t, x_v)‖² on x_t = (1 − t)·x0 + t·x_a, t ~ U(0, 1)
             (`config.objective`), with x0 = x_v^AE ~ 𝒩(μ, σ²) of the frozen VAE (`model.source="prior"`) or
             x0 ~ 𝒩(0, I) (`"gaussian"`)
  joint      Eq. 9: λ_KL·KL + the velocity loss, the VAE's encoder trained through x_v^AE
  vama       Foley-Flow's masked alignment L_VAMA (its Eq. 4, `models.v2a.vama`): `model.vama.ratio` of the
             segments of x_a masked per example, reconstructed from the rest and the video encoder's frame tokens

each starting from the previous stage's run (`config.init_from`); a Gaussian-source estimator with
`model.aligned_video` reads the frozen video encoder of a VAMA run. The DiT's condition x_v is replaced by the null
condition ∅ for a fraction `config.condition_dropout` (10 %) of the examples. Sampling draws x0 once (the prior's ε
or the Gaussian noise from `inference.seed`) and integrates the CFG field (Eq. 10) (1 + γ)·v(x_t, t, x_v) −
γ·v(x_t, t, ∅) from it, both branches from the same prior sample in one batched call (`flow.guidance`); γ = 0,
or a DiT that does not read the video (no cross-attention, no `model.video_injection`), integrates v(x_t, t, x_v)
alone. Solvers: Euler, midpoint or Heun on `inference.num_steps` steps, or adaptive dopri5 (`inference.rtol`,
`atol`).

Evaluation generates the held-out clips, decodes them with the codec and scores them with `metrics.foley`: onset
sync against the events the frames show, event-class accuracy of a classifier trained on real toy train audio,
the Fréchet distance to the held-out real audio. The same scores are given for the source x0 decoded ("input")
and for the real audio through the codec ("reconstruction": what the codec leaves of the real clips).
`data.source="records"` reads prepared records instead (`RecordClips`: each record's soundtrack generated from its
frames, at the records' 1 fps); real clips carry no events, so they are scored by the Fréchet distance alone.
"""
import dataclasses
import functools
import json
import os
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import soundfile as sf

from avflow import flow
from avflow.data import foley
from avflow.data.pipeline import batch_dataset
from avflow.flow import guidance
from avflow.metrics import foley as foley_metrics
from avflow.models.v2a import vaflow
from avflow.models.v2a.codec import MelCodec
from avflow.models.v2a.prior import reparameterize
from avflow.models.v2a.prior_losses import PriorLossConfig, kl_divergence, prior_loss
from avflow.models.v2a.vama import masked_l2, segment_mask
from avflow.models.v2a.vaflow import VAFlow
from avflow.tasks.base import Task
from avflow.train.evaluate import save_frames

SOLVERS = (*flow.solvers.METHODS, "dopri5")


def make_codec(config) -> MelCodec:
  """The run's codec: `config.codec` at `data.sample_rate`."""
  return MelCodec(sample_rate=config.data.sample_rate, **config.codec)


def encode(config, codec: MelCodec, audio: jax.Array) -> jax.Array:
  """x_a: the codec's latents of `audio (B, L)`, standardised by the fixed `config.latent` (shift, scale)."""
  return (codec.encode(audio) - config.latent.shift) / config.latent.scale


def decode(config, x_a, length: int) -> np.ndarray:
  """Waveforms `(B, length)` of standardised latents x_a `(B, T_a, D_a)` by the run's codec; the codec's latents are
  clipped to its range [−1, 1] (mel magnitudes in [floor, ceiling]) first: a generated latent beyond it has no audio
  the codec makes, and an untrained model's would decode to overflowing magnitudes."""
  latents = np.asarray(x_a) * config.latent.scale + config.latent.shift
  return make_codec(config).decode(np.clip(latents, -1.0, 1.0), length)


def check_config(config) -> None:
  """A ValueError naming the field of a VAFlow config that does not fit the others."""
  vaflow.check_config(config.model)
  if config.codec.n_mels != config.model.latent_dim:
    raise ValueError(f"model.latent_dim={config.model.latent_dim}, but the codec's latent has codec.n_mels="
                     f"{config.codec.n_mels} channels")
  if config.inference.method not in SOLVERS:
    raise ValueError(f"inference.method={config.inference.method!r}; expected one of {SOLVERS}")


def num_samples(config, num_frames: int) -> int:
  """Audio samples of the span `num_frames` frames at `data.frames_per_second` cover."""
  return int(round(num_frames * config.data.sample_rate / config.data.frames_per_second))


class Generation(NamedTuple):
  """What a sampler call gives besides the generated latents: the source x0 it started from and NFE, the number
  of evaluations of the (guided) velocity field, each of which runs the DiT once per guidance branch."""
  source: jax.Array
  nfe: jax.Array


class RecordClips:
  """Prepared records (`data.source="records"`: a `records.RecordSource` or `Subset`) as clips of real video: a
  record's soundtrack `mix` is the audio to generate from its frames (they carry no events or captions)."""

  def __init__(self, records):
    self.records = records

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index) -> dict:
    record = self.records[index]
    return {"clip_id": record["clip_id"], "audio": np.asarray(record["mix"], np.float32), "frames": record["frames"]}


class FoleyBatches:
  """The batch fields of toy foley clips or `RecordClips`: `clip_id`, `audio (L,)`, `frames (F, S, S, 3)`."""

  def __init__(self, clips: foley.ToyFoley):
    self.clips = clips

  def __len__(self) -> int:
    return len(self.clips)

  def __getitem__(self, index) -> dict:
    clip = self.clips[index]
    return {k: clip[k] for k in ("clip_id", "audio", "frames")}


def _velocity(model, variables):
  """v(x_t, t, (x_v, drop)): the DiT with the examples marked in `drop` given ∅."""
  def velocity(x_t, t, cond):
    video, drop = cond
    return model.apply(variables, x_t, t, video, drop, method=VAFlow.velocity)
  return velocity


def guidance_branches(config) -> int:
  """DiT calls per field evaluation: 2 with CFG (γ ≠ 0 and a path for the video into the DiT: cross-attention or
  `model.video_injection`), else 1."""
  reads_video = config.model.cross_attention or config.model.video_injection != "none"
  return 2 if reads_video and config.inference.cfg != 0 else 1


@dataclasses.dataclass(frozen=True)
class VideoToAudio(Task):
  name: str = "v2a"
  headline: tuple[str, bool] = ("fd", True)

  def build(self, model_cfg):
    return VAFlow(model_cfg)

  def frozen_prefixes(self, model_cfg):
    return vaflow.frozen_prefixes(model_cfg)

  def pretrained_encoders(self, model_cfg):
    return {}

  def describe_conditioning(self, model_cfg):
    return vaflow.describe_conditioning(model_cfg)

  def abstract_batch(self, config, batch_size=1):
    data = config.data
    frames = int(round(data.clip_seconds * data.frames_per_second))
    return {"audio": jax.ShapeDtypeStruct((batch_size, num_samples(config, frames)), jnp.float32),
            "frames": jax.ShapeDtypeStruct((batch_size, frames, data.image_size, data.image_size, 3), jnp.uint8)}

  def init(self, model, key, batch):
    # No parameter shape depends on T_a (convolutions, interpolation, attention): T_v latent frames initialise them.
    return model.init(key, batch["frames"], batch["frames"].shape[1])["params"]

  def check_batch(self, config, batch):
    for key, spec in self.abstract_batch(config).items():
      if key not in batch:
        raise ValueError(f"the batches of data.source={config.data.source!r} have no `{key}` (fields: "
                         f"{', '.join(sorted(batch))})")
      got = tuple(np.shape(batch[key])[1:])
      if got != spec.shape[1:]:
        raise ValueError(f"batch field `{key}` is {got} per example, but the config expects {spec.shape[1:]} "
                         "(data.sample_rate, data.clip_seconds, data.frames_per_second, data.image_size)")

  def source(self, data_cfg, split):
    if data_cfg.source == "records":
      from avflow.data.records import records_source
      return RecordClips(records_source(data_cfg, split))
    if data_cfg.source != "toy_foley":
      raise ValueError(f"unknown data.source {data_cfg.source!r}; expected 'toy_foley' or 'records'")
    return foley.ToyFoley(sample_rate=data_cfg.sample_rate, clip_seconds=data_cfg.clip_seconds,
                          frames_per_second=data_cfg.frames_per_second, image_size=data_cfg.image_size,
                          num_clips=data_cfg.num_train_clips if split == "train" else data_cfg.num_eval_clips,
                          seed=data_cfg.seed, split=split, max_events=data_cfg.max_events)

  def dataset(self, source, data_cfg, *, batch_size, seed, train, process_index=0, process_count=1):
    return batch_dataset(FoleyBatches(source), batch_size=batch_size, seed=seed, train=train,
                         process_index=process_index, process_count=process_count,
                         worker_count=data_cfg.get("worker_count", 0))

  def loss_fn(self, model, config):
    """L_VAE (stage "prior"), the velocity loss (Eq. 8, "estimator"), λ_KL·KL + the velocity loss (Eq. 9,
    "joint") or L_VAMA ("vama"); returns (loss, its terms)."""
    check_config(config)
    codec = make_codec(config)
    objective = flow.ObjectiveConfig.from_config(config.objective)
    prior_cfg = PriorLossConfig.from_config(config.prior_loss)
    stage, source = config.model.stage, config.model.source

    def loss_fn(params, batch, rng):
      variables = {"params": params}
      video = model.apply(variables, batch["frames"], method=VAFlow.video)
      if config.model.aligned_video:  # the VAMA video encoder is frozen: no gradient to compute through it
        video = jax.lax.stop_gradient(video)
      latent_frames = codec.num_frames(batch["audio"].shape[-1])
      sample_key, drop_key, loss_key = jax.random.split(rng, 3)
      if stage == "prior":
        reconstruction, mu, log_sigma = model.apply(variables, video, sample_key, latent_frames,
                                                    method=VAFlow.reconstruct)
        return prior_loss(loss_key, video, reconstruction, mu, log_sigma, prior_cfg)
      x1 = encode(config, codec, batch["audio"])
      if stage == "vama":
        vama = config.model.vama
        mask = segment_mask(sample_key, x1.shape[0], x1.shape[1], vama.segment, vama.ratio)
        loss = masked_l2(model.apply(variables, x1, video, mask, method=VAFlow.reconstruct_masked), x1, mask)
        return loss, {"vama": loss}
      if source == "gaussian":
        x0 = flow.sample_source(sample_key, x1)
      else:
        mu, log_sigma = model.apply(variables, video, latent_frames, method=VAFlow.encode)
        if stage == "estimator":  # the VAE is frozen: no gradient to compute through it
          mu, log_sigma = jax.lax.stop_gradient((mu, log_sigma))
        x0 = reparameterize(sample_key, mu, log_sigma)
      drop = jax.random.bernoulli(drop_key, config.condition_dropout, x1.shape[:1])
      loss, terms = flow.flow_loss(_velocity(model, variables), x0, x1, (video, drop), loss_key, objective)
      if stage == "joint":
        terms["kl"] = kl_divergence(mu, log_sigma)
        loss = loss + prior_cfg.kl_weight * terms["kl"]
      return loss, terms

    return loss_fn

  def predict_fn(self, model, config):
    """predict(params, {"frames": (B, T_v, S, S, 3)}, stop_after=None) → (the generated latents (B, T_a, D_a) of
    the span the frames cover, `Generation`). The VAE-pretraining stage has no DiT: its predict gives the prior
    sample x_v^AE itself (NFE 0); the VAMA stage generates nothing (a ValueError). `stop_after` stops a grid
    solver after k of its steps."""
    check_config(config)
    codec, inference = make_codec(config), config.inference
    guided = guidance_branches(config) == 2
    source, method = config.model.source, inference.method

    def predict(params, batch, stop_after=None):
      if config.model.stage == "vama":
        raise ValueError("model.stage='vama' pretrains the masked alignment and generates no audio; generate with "
                         "a flow stage that starts from its run (model.aligned_video=True)")
      variables = {"params": params}
      video = model.apply(variables, batch["frames"], method=VAFlow.video)
      b = video.shape[0]
      latent_frames = codec.num_frames(num_samples(config, video.shape[1]))
      key = jax.random.PRNGKey(inference.seed)
      if source == "prior":
        mu, log_sigma = model.apply(variables, video, latent_frames, method=VAFlow.encode)
        x0 = reparameterize(key, mu, log_sigma)
      else:
        x0 = jax.random.normal(key, (b, latent_frames, config.model.latent_dim), jnp.float32)
      if config.model.stage == "prior":
        return x0, Generation(x0, jnp.zeros((), jnp.int32))
      velocity = _velocity(model, variables)
      keep = jnp.zeros((b,), bool)
      if guided:  # Eq. 10: the conditional and the null branch, from the same x_t
        field = guidance.combine([(velocity, w) for w in guidance.cfg(inference.cfg)])
        cond = ((video, keep), (video, jnp.ones((b,), bool)))
      else:
        field, cond = velocity, (video, keep)
      if method == "dopri5":
        if stop_after is not None:
          raise ValueError("stop_after applies to the grid solvers, not to dopri5")
        solution = flow.integrate_dopri5(field, x0, cond, rtol=inference.rtol, atol=inference.atol)
        return solution.final, Generation(x0, solution.nfe)
      trajectory = flow.integrate(field, x0, cond, inference.num_steps, method, stop_after)
      return trajectory.final, Generation(x0, jnp.asarray(flow.grid_nfe(method, inference.num_steps, stop_after)))

    return predict

  def evaluate(self, predict, params, source, config, workdir, step):
    """Generates every held-out clip and writes `eval.json`: "prediction" (the generated audio), "input" (the source
    x0 decoded) and "reconstruction" (the real audio through the codec), each with `fd` (Fréchet distance to the
    held-out real audio), `onset_f1` / `_precision` / `_recall` (against the events' times) and `event_accuracy`
    / `event_label_accuracy`; the mean NFE per call and the sampler. The VAE and VAMA pretraining stages report
    their held-out loss terms instead (L_VAE; L_VAMA). The first `eval.num_samples` clips get `samples/<clip>/`:
    prediction.wav, input.wav, target.wav (the real audio), events.json (times, classes, caption) and the frames."""
    if config.model.stage in ("prior", "vama"):
      report = {"prediction": _held_out_terms(self.loss_fn(self.build(config.model), config), params, source, config),
                "steps": int(step), "num_clips": len(source)}
      _write_json(workdir, report)
      return report
    clips = [source[i] for i in range(len(source))]
    size = config.eval.batch_size
    latents, sources, nfe = [], [], []
    for first in range(0, len(clips), size):
      chunk = clips[first:first + size]
      frames = np.stack([c["frames"] for c in chunk + chunk[-1:] * (size - len(chunk))])  # one shape, one compile
      final, generation = jax.device_get(predict(params, {"frames": frames}))
      latents.append(final[:len(chunk)])
      sources.append(generation.source[:len(chunk)])
      nfe.append(int(generation.nfe))
    length = len(clips[0]["audio"])
    prediction = decode(config, np.concatenate(latents), length)
    x0 = decode(config, np.concatenate(sources), length)
    reference = _reference(config) if config.data.source == "toy_foley" else _records_reference(config, clips)
    report = {"prediction": reference.scores(prediction), "input": reference.scores(x0),
              "reconstruction": reference.reconstruction, "nfe": float(np.mean(nfe)),
              "network_evaluations": float(np.mean(nfe)) * guidance_branches(config), "steps": int(step),
              "num_clips": len(clips), "sample_rate": config.data.sample_rate, "inference": inference_summary(config)}
    _write_json(workdir, report)
    for clip, audio, start in list(zip(clips, prediction, x0))[:config.eval.num_samples]:
      folder = os.path.join(workdir, "samples", clip["clip_id"])
      os.makedirs(folder, exist_ok=True)
      for name, wave in (("prediction", audio), ("input", start), ("target", clip["audio"])):
        sf.write(os.path.join(folder, f"{name}.wav"), np.clip(wave, -1, 1), config.data.sample_rate)
      if "events" in clip:
        with open(os.path.join(folder, "events.json"), "w") as f:
          json.dump({"events": [{"time": t, "class": foley.CLASSES[c]} for t, c in clip["events"]],
                     "caption": clip["caption"]}, f, indent=2)
      save_frames(os.path.join(folder, "frames"), clip["frames"])
    return report


def inference_summary(config) -> dict:
  """The sampler of `config.inference`, as eval.json names it."""
  inference = config.inference
  out = {"solver": inference.method, "cfg": float(inference.cfg) if guidance_branches(config) == 2 else 0.0}
  if inference.method == "dopri5":
    return {**out, "rtol": inference.rtol, "atol": inference.atol}
  return {**out, "num_steps": inference.num_steps}


def _write_json(workdir: str, report: dict) -> None:
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)


def _held_out_terms(loss_fn, params, source, config) -> dict:
  """The mean stage loss (`loss`) and its terms over the held-out clips (batches of `eval.batch_size`, each with its
  own fixed key: the same samples and masks at every evaluation)."""
  @jax.jit
  def terms(params, batch, key):
    loss, parts = loss_fn(params, batch, key)
    return {"loss": loss, **parts}

  size = min(config.eval.batch_size, len(source))
  results = [jax.device_get(terms(params, {k: np.stack([source[i][k] for i in range(first, first + size)])
                                           for k in ("audio", "frames")}, jax.random.PRNGKey(first)))
             for first in range(0, len(source) - size + 1, size)]
  return {k: float(np.mean([r[k] for r in results])) for k in results[0]}


class Reference(NamedTuple):
  """What generated audio is scored against: the held-out clips' real audio and events, the event classifier,
  and the scores of the real audio through the codec. Real clips (records) have no events: `times`, `classes` and
  `classifier` are None, and only `fd` is scored."""
  audio: list
  times: Optional[list]
  classes: Optional[list]
  classifier: Optional[foley_metrics.EventClassifier]
  sample_rate: int
  reconstruction: dict

  def scores(self, audio) -> dict:
    """`fd`, `onset_f1` / `_precision` / `_recall`, `event_accuracy`, `event_label_accuracy` of `audio` (N, L)."""
    audio = list(audio)
    if self.times is None:
      return {"fd": foley_metrics.audio_frechet_distance(audio, self.audio, self.sample_rate)}
    onsets = foley_metrics.onset_sync(audio, self.times, self.sample_rate)
    accuracy = foley_metrics.event_class_accuracy(self.classifier, audio, self.classes)
    return {"fd": foley_metrics.audio_frechet_distance(audio, self.audio, self.sample_rate),
            "onset_f1": onsets["f1"], "onset_precision": onsets["precision"], "onset_recall": onsets["recall"],
            "event_accuracy": accuracy["accuracy"], "event_label_accuracy": accuracy["label_accuracy"]}


def _reference(config) -> Reference:
  return _cached_reference(json.dumps(config.data.to_dict(), sort_keys=True),
                           json.dumps(config.codec.to_dict(), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached_reference(data_json: str, codec_json: str) -> Reference:
  """The `Reference` of a data and codec config (JSON): computed once per process. The event classifier learns
  from the first `data.num_classifier_clips` toy train clips, deterministically (`train_event_classifier`)."""
  config = ml_collections.ConfigDict({"data": json.loads(data_json), "codec": json.loads(codec_json)})
  data, task = config.data, VideoToAudio()
  classifier_data = data.copy_and_resolve_references()
  classifier_data.num_train_clips = data.num_classifier_clips
  train = task.source(classifier_data, "train")
  classifier = foley_metrics.train_event_classifier(
      [(clip["audio"], [c for _, c in clip["events"]]) for clip in (train[i] for i in range(len(train)))],
      data.sample_rate, len(foley.CLASSES))
  held_out = task.source(data, "val")
  clips = [held_out[i] for i in range(len(held_out))]
  audio = [clip["audio"] for clip in clips]
  return _with_reconstruction(config, Reference(audio, [[t for t, _ in clip["events"]] for clip in clips],
                                               [[c for _, c in clip["events"]] for clip in clips], classifier,
                                               data.sample_rate, {}))


def _records_reference(config, clips) -> Reference:
  """The `Reference` of held-out records: their soundtracks, scored by FD alone."""
  return _with_reconstruction(config, Reference([c["audio"] for c in clips], None, None, None,
                                                config.data.sample_rate, {}))


def _with_reconstruction(config, reference: Reference) -> Reference:
  """`reference` with the scores of its real audio through the run's codec (what the codec leaves of it)."""
  codec, audio = make_codec(config), np.stack(reference.audio)
  through_codec = codec.decode(np.asarray(codec.encode(audio)), audio.shape[1])
  return reference._replace(reconstruction=reference.scores(through_codec))


V2A = VideoToAudio()

"""Step-by-step video-to-audio (NAG): K audio tracks of one video, each from a caption C_k, generated one after
another with negative audio guidance away from the tracks so far (`models.v2a.nag`).

Training pairs (Sec. 3.5): each toy foley clip (`data.clip_seconds`, e.g. 2 s) splits into two halves; one half is
the target segment (its frames the video condition), the other, never overlapping it, the conditional audio a
(`SegmentPairs`). `model.stage` picks the objective, both the velocity loss on x_t = (1 − t)·x0 + t·x1, x0 ~ 𝒩(0, I):

  base     x1 the target segment's stem of one class of the clip (`foley.ToyFoley` stems), conditioned on the video
           and that class's caption; both dropped together (the joint null ∅∅) for `condition_dropout` (10 %)
  control  x1 the target segment's audio, conditioned on the video, ∅ text and a = the other segment's audio, by the
           ControlNet on the frozen base (`init_from` a base run)

Sampling (`predict_fn`) integrates one track from x0 ~ 𝒩(0, I) (`inference.seed`) with the field
`inference.guidance` names, all branches from the same x_t, the base's branches in one batched call:
  cfg              u(∅,∅) + α·(u(V,C) − u(∅,∅))                                     (Eq. 3, α = `inference.alpha`)
  negative_prompt  u(∅,C_neg) + α·(u(V,C) − u(∅,C_neg)), C_neg = the batch's `negative_tokens`
  nag              Eq. 9: u(∅,∅) + α·(u(V,C) − u(∅,∅)) + β·(u(V,C) − u_{θ,ψ}(V,∅,a)), a = the batch's
                   `condition_audio` encoded (β = `inference.beta`)
A batch without `negative_tokens` / `condition_audio` (the first track) gets plain CFG. `generate_tracks` runs the
K steps: track 1 plain CFG, track k steered away from the sum of tracks 1..k−1 (as waveforms, then encoded) or from
the captions so far; `composite` sums the tracks and normalises the sum to −20 LUFS (pyloudnorm, as the paper).

Evaluation generates the tracks of every whole held-out clip (twice the training segments' length, as the paper
trains on 4 s and generates 8 s) from its class captions (`foley.class_captions`) and scores (`track_scores`):
`independence`, the mean pairwise cosine similarity of a clip's tracks' log-mel embeddings (mean and deviation per
band, centred on the real per-class stems' mean; lower: more separated tracks, the paper's CLAP A-A);
`fidelity`, the fraction of tracks the toy event classifier hears its caption's class in (the paper's CLAP T-A);
`fd`, the Fréchet distance of the composites to those of the held-out clips' real stems (the clip without its
noise floor, which no track carries), both at −20 LUFS.
"""
import dataclasses
import functools
import json
import os
from itertools import combinations
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
from avflow.metrics.loudness import integrated_loudness
from avflow.models.v2a import nag
from avflow.models.v2a.nag import NAGFoley, tokenize
from avflow.tasks.base import Task
from avflow.tasks.v2a import Generation, decode, encode, make_codec, num_samples

GUIDANCES = ("cfg", "negative_prompt", "nag")
PAIR_STREAM = 3  # the last entry of a pair's seed: which half is the target and which class it captions
COMPOSITE_LUFS = -20.0  # the composite's loudness (the paper's: VGGSound's mean)


def check_config(config) -> None:
  """A ValueError naming the field of a NAG config that does not fit the others."""
  nag.check_config(config.model)
  if config.codec.n_mels != config.model.latent_dim:
    raise ValueError(f"model.latent_dim={config.model.latent_dim}, but the codec's latent has codec.n_mels="
                     f"{config.codec.n_mels} channels")
  if config.inference.method not in flow.solvers.METHODS:
    raise ValueError(f"inference.method={config.inference.method!r}; expected a grid solver, one of "
                     f"{flow.solvers.METHODS}")
  if config.data.text_tokens != config.model.text.tokens:
    raise ValueError(f"data.text_tokens={config.data.text_tokens}, but the text encoder reads model.text.tokens="
                     f"{config.model.text.tokens} word ids")
  if config.inference.guidance not in GUIDANCES:
    raise ValueError(f"inference.guidance={config.inference.guidance!r}; expected one of {GUIDANCES}")
  if config.inference.guidance == "nag" and config.model.stage != "control":
    raise ValueError("inference.guidance='nag' needs the ControlNet (model.stage='control')")


class SegmentPairs:
  """Training pairs of toy foley clips (Sec. 3.5); `SegmentPairs(clips)[i]`, from clip i, is a dict: `clip_id`,
  `frames (F/2, S, S, 3)` (the target half's), `tokens (text tokens,)` (the caption of one class, one the target half
  holds if any, with its count there), `class`, `stem (L/2,)` (the target half's stem of that class), `audio (L/2,)`
  (the target half), `condition_audio (L/2,)` (the other half) and `target_start`, `condition_start` (their first
  samples). Deterministic in the clips' `(seed, split)` and i."""

  def __init__(self, clips: foley.ToyFoley, text_tokens: int):
    if clips.num_samples % 2 or clips.num_frames % 2:
      raise ValueError(f"clips of {clips.num_samples} samples and {clips.num_frames} frames do not split into two "
                       "halves (data.clip_seconds · data.sample_rate and · data.frames_per_second must be even)")
    self.clips, self.text_tokens = clips, text_tokens

  def __len__(self) -> int:
    return len(self.clips)

  def __getitem__(self, index) -> dict:
    clips = self.clips
    clip = clips[index]
    rng = np.random.default_rng([clips.seed, foley.SPLITS.index(clips.split), int(index), PAIR_STREAM])
    target = int(rng.integers(2))
    half, frames = clips.num_samples // 2, clips.num_frames // 2
    captions = half_captions(clip, target, clips.sample_rate, half)
    k, text = captions[int(rng.integers(len(captions)))]
    segment = lambda x, h: x[h * half:(h + 1) * half]
    return {"clip_id": clip["clip_id"], "frames": clip["frames"][target * frames:(target + 1) * frames],
            "tokens": tokenize([text], self.text_tokens)[0], "class": k, "stem": segment(clip["stems"][k], target),
            "audio": segment(clip["audio"], target), "condition_audio": segment(clip["audio"], 1 - target),
            "target_start": target * half, "condition_start": (1 - target) * half}


def half_captions(clip: dict, half_index: int, sample_rate: int, half: int) -> list[tuple[int, str]]:
  """`foley.class_captions` of the events with onsets in half `half_index` (`half` samples each) of `clip`; a half
  without events gets the clip's classes' bare phrases (their stems there are silent or a sound's tail)."""
  inside = [c for time, c in clip["events"] if half_index * half <= round(time * sample_rate) < (half_index + 1) * half]
  if inside:
    return foley.class_captions(inside)
  return [(k, foley.PHRASES[k]) for k, _ in clip["class_captions"]]


def composite(tracks: np.ndarray, sample_rate: int, lufs: float = COMPOSITE_LUFS) -> np.ndarray:
  """The sum of `tracks (K, L)`, scaled to integrated loudness `lufs` (pyloudnorm, BS.1770); silence stays as is."""
  mix = np.asarray(tracks, np.float64).sum(0)
  loudness = integrated_loudness(mix, sample_rate)
  return (mix if not np.isfinite(loudness) else mix * 10.0 ** ((lufs - loudness) / 20.0)).astype(np.float32)


class Tracks(NamedTuple):
  """`generate_tracks`' result: the tracks `(B, K, L)` and, when asked for, their sources x0 decoded `(B, K, L)`."""
  audio: np.ndarray
  sources: Optional[np.ndarray]


def generate_tracks(predict, params, config, frames: np.ndarray, captions: list[list[str]],
                    with_sources: bool = False) -> Tracks:
  """The tracks of `frames (B, F, S, S, 3)`, K captions per video, one after another (Sec. 3.1): track 1 plain CFG,
  track k guided away from tracks 1..k−1 (`inference.guidance`: "nag" their summed waveform, a; "negative_prompt"
  their captions joined, C_neg; "cfg" none, independent generation), from its own x0 (`inference.seed` folded with
  k). L covers the F frames."""
  if not captions or len({len(c) for c in captions}) != 1 or not captions[0]:
    raise ValueError("every video needs the same number (one or more) of captions")
  length, tokens = num_samples(config, frames.shape[1]), config.model.text.tokens
  tracks, sources = [], []
  for k in range(len(captions[0])):
    batch = {"frames": frames, "tokens": tokenize([c[k] for c in captions], tokens), "track": np.int32(k)}
    if k and config.inference.guidance == "nag":
      batch["condition_audio"] = np.sum(tracks, axis=0).astype(np.float32)
    elif k and config.inference.guidance == "negative_prompt":
      batch["negative_tokens"] = tokenize([", then ".join(c[:k]) for c in captions], tokens)
    latents, generation = jax.device_get(predict(params, batch))
    tracks.append(decode(config, latents, length))
    if with_sources:
      sources.append(decode(config, generation.source, length))
  return Tracks(np.stack(tracks, axis=1), np.stack(sources, axis=1) if with_sources else None)


def track_scores(tracks: list, classes: list, composites: list, reference: list, real_tracks: list, classifier,
                 sample_rate: int) -> dict:
  """`independence`, `fidelity` and `fd` (the module docstring) of each clip's `tracks[i] (K_i, L)` captioned with
  `classes[i]`, their `composites[i] (L,)`, the real clips `reference` (two or more) and the real tracks
  `real_tracks` (per-class stems). The log-mel embeddings (`metrics.foley.audio_embedding`) are centred on the real
  tracks' mean, a fixed point for every model scored on the same clips, so that what all tracks share (the level
  of silence between events) does not count as similarity."""
  flat = [track for clip in tracks for track in clip]
  embeddings = foley_metrics.audio_embedding(flat, sample_rate)
  embeddings -= foley_metrics.audio_embedding(real_tracks, sample_rate).mean(0)
  embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
  cosines, first = [], 0
  for clip in tracks:
    e = embeddings[first:first + len(clip)]
    cosines += [float(e[i] @ e[j]) for i, j in combinations(range(len(clip)), 2)]
    first += len(clip)
  heard = classifier.probabilities(flat)[np.arange(len(flat)), [c for cs in classes for c in cs]] > 0.5
  return {"independence": float(np.mean(cosines)) if cosines else float("nan"), "fidelity": float(np.mean(heard)),
          "fd": foley_metrics.audio_frechet_distance(composites, reference, sample_rate), "tracks": len(flat)}


@functools.lru_cache(maxsize=4)
def _classifier(data_json: str) -> foley_metrics.EventClassifier:
  """The toy event classifier, trained on the first `data.num_classifier_clips` train clips (as VAFlow's)."""
  data = ml_collections.ConfigDict(json.loads(data_json))
  clips = _clips(data, "train", data.num_classifier_clips)
  return foley_metrics.train_event_classifier(
      [(clip["audio"], [c for _, c in clip["events"]]) for clip in map(clips.__getitem__, range(len(clips)))],
      data.sample_rate, len(foley.CLASSES))


def _clips(data_cfg, split: str, num_clips: int) -> foley.ToyFoley:
  return foley.ToyFoley(sample_rate=data_cfg.sample_rate, clip_seconds=data_cfg.clip_seconds,
                        frames_per_second=data_cfg.frames_per_second, image_size=data_cfg.image_size,
                        num_clips=num_clips, seed=data_cfg.seed, split=split, max_events=data_cfg.max_events)


def _cond(video, tokens, drop_video, drop_text, **extra) -> dict:
  b = video.shape[0]
  return {"video": video, "tokens": tokens, "drop_video": jnp.full((b,), drop_video),
          "drop_text": jnp.full((b,), drop_text), **extra}


@dataclasses.dataclass(frozen=True)
class StepByStepFoley(Task):
  name: str = "nag"
  headline: tuple[str, bool] = ("fd", True)

  def build(self, model_cfg):
    return NAGFoley(model_cfg)

  def frozen_prefixes(self, model_cfg):
    return nag.frozen_prefixes(model_cfg)

  def pretrained_encoders(self, model_cfg):
    return {}

  def describe_conditioning(self, model_cfg):
    grid = model_cfg.conditioning.grid
    control = "; ControlNet on the tracks so far" if model_cfg.stage == "control" else ""
    return f"V ({grid} × {grid} colour grid per frame) + caption (toy text encoder); x0 ~ N(0, I){control}"

  def abstract_batch(self, config, batch_size=1):
    data = config.data
    frames = int(round(data.clip_seconds * data.frames_per_second)) // 2
    audio = jax.ShapeDtypeStruct((batch_size, num_samples(config, frames)), jnp.float32)
    return {"frames": jax.ShapeDtypeStruct((batch_size, frames, data.image_size, data.image_size, 3), jnp.uint8),
            "tokens": jax.ShapeDtypeStruct((batch_size, config.model.text.tokens), jnp.int32),
            "stem": audio, "audio": audio, "condition_audio": audio}

  def init(self, model, key, batch):
    return model.init(key, batch["frames"], batch["tokens"], batch["frames"].shape[1])["params"]

  def check_batch(self, config, batch):
    for key, spec in self.abstract_batch(config).items():
      if key not in batch:
        raise ValueError(f"the batches of data.source={config.data.source!r} have no `{key}` (fields: "
                         f"{', '.join(sorted(batch))})")
      if tuple(np.shape(batch[key])[1:]) != spec.shape[1:]:
        raise ValueError(f"batch field `{key}` is {tuple(np.shape(batch[key])[1:])} per example, but the config "
                         f"expects {spec.shape[1:]}")

  def source(self, data_cfg, split):
    if data_cfg.source != "toy_foley":
      raise ValueError(f"unknown data.source {data_cfg.source!r}; expected 'toy_foley'")
    num_clips = data_cfg.num_train_clips if split == "train" else data_cfg.num_eval_clips
    return SegmentPairs(_clips(data_cfg, split, num_clips), data_cfg.text_tokens)

  def dataset(self, source, data_cfg, *, batch_size, seed, train, process_index=0, process_count=1):
    return batch_dataset(source, batch_size=batch_size, seed=seed, train=train, process_index=process_index,
                         process_count=process_count, worker_count=data_cfg.get("worker_count", 0))

  def loss_fn(self, model, config):
    """The velocity loss of the base (the class's stem from the video and its caption, joint-null dropout) or of
    the ControlNet (the target segment from the video and the other segment, ∅ text)."""
    check_config(config)
    codec, objective = make_codec(config), flow.ObjectiveConfig.from_config(config.objective)
    control = config.model.stage == "control"

    def loss_fn(params, batch, rng):
      variables = {"params": params}
      video = model.apply(variables, batch["frames"], method=NAGFoley.video)
      noise_key, drop_key, loss_key = jax.random.split(rng, 3)
      if control:
        x1 = encode(config, codec, batch["audio"])
        cond = _cond(video, batch["tokens"], False, True, audio=encode(config, codec, batch["condition_audio"]))
      else:
        x1 = encode(config, codec, batch["stem"])
        drop = jax.random.bernoulli(drop_key, config.condition_dropout, x1.shape[:1])  # u(∅, ∅): both together
        cond = {"video": video, "tokens": batch["tokens"], "drop_video": drop, "drop_text": drop}
      velocity = lambda x, t, c: model.apply(variables, x, t, c, method=NAGFoley.velocity)
      return flow.flow_loss(velocity, flow.sample_source(noise_key, x1), x1, cond, loss_key, objective)

    return loss_fn

  def predict_fn(self, model, config):
    """predict(params, {"frames", "tokens"[, "track"][, "condition_audio" | "negative_tokens"]}, stop_after=None) →
    (one track's latents (B, T_a, D_a) for the span the frames cover, `Generation`), guided as the module docstring,
    from x0 ~ 𝒩(0, I) drawn with `inference.seed` folded with the track's index (`track`, 0 if absent)."""
    check_config(config)
    codec, inference = make_codec(config), config.inference
    alpha, beta = inference.alpha, inference.beta

    def predict(params, batch, stop_after=None):
      variables = {"params": params}
      video = model.apply(variables, batch["frames"], method=NAGFoley.video)
      b, tokens = video.shape[0], batch["tokens"]
      latent_frames = codec.num_frames(num_samples(config, video.shape[1]))
      key = jax.random.fold_in(jax.random.PRNGKey(inference.seed), batch.get("track", 0))
      x0 = jax.random.normal(key, (b, latent_frames, config.model.latent_dim))
      base = lambda x, t, c: model.apply(variables, x, t, c, method=NAGFoley.velocity)
      conditional = _cond(video, tokens, False, False)
      if inference.guidance == "nag" and "condition_audio" in batch:
        # The same method, another function object: `combine` gives the ControlNet branch a call of its own.
        control = lambda x, t, c: model.apply(variables, x, t, c, method=NAGFoley.velocity)
        audio = encode(config, codec, batch["condition_audio"])
        weights = guidance.nag(alpha, beta)
        fns = (base, base, control)
        cond = (conditional, _cond(video, tokens, True, True), _cond(video, tokens, False, True, audio=audio))
      elif inference.guidance == "negative_prompt" and "negative_tokens" in batch:
        weights, fns = guidance.negative_prompt(alpha), (base, base)
        cond = (conditional, _cond(video, batch["negative_tokens"], True, False))
      else:
        weights, fns = guidance.mmaudio_cfg(alpha), (base, base)
        cond = (conditional, _cond(video, tokens, True, True))
      field = guidance.combine(list(zip(fns, weights)))
      trajectory = flow.integrate(field, x0, cond, inference.num_steps, inference.method, stop_after)
      nfe = flow.grid_nfe(inference.method, inference.num_steps, stop_after)
      return trajectory.final, Generation(x0, jnp.asarray(nfe))

    return predict

  def evaluate(self, predict, params, source, config, workdir, step):
    """Generates the tracks of every whole held-out clip (`generate_tracks`, one per caption of `class_captions`)
    and writes `eval.json`: "prediction" with `track_scores` (`independence`, `fidelity`, `fd`), "input" with those
    of the tracks' sources x0 decoded, the guidance and the sampler. The first `eval.num_samples` clips get
    `samples/<clip>/`: track_<k>.wav, mix.wav (the composite), target.wav (the real clip) and captions.json."""
    clips, rate = source.clips, config.data.sample_rate
    items = [clips[i] for i in range(len(clips))]
    captions = [clip["class_captions"] for clip in items]
    tracks, sources = [None] * len(items), [None] * len(items)
    size = config.eval.batch_size
    for k in sorted({len(c) for c in captions}):  # clips with K captions together, in batches of one shape
      members = [i for i, c in enumerate(captions) if len(c) == k]
      for first in range(0, len(members), size):
        chunk = members[first:first + size]
        chunk_padded = chunk + chunk[-1:] * (size - len(chunk))
        frames = np.stack([items[i]["frames"] for i in chunk_padded])
        out = generate_tracks(predict, params, config, frames, [[text for _, text in captions[i]]
                                                                for i in chunk_padded], with_sources=True)
        for i, t, x0 in zip(chunk, out.audio, out.sources):
          tracks[i], sources[i] = t, x0
    mixes = [composite(t, rate) for t in tracks]
    reference = [composite(clip["stems"], rate) for clip in items]  # the real tracks' composite, without the noise
    classes = [[c for c, _ in cs] for cs in captions]
    real_tracks = [clip["stems"][c] for clip, cs in zip(items, classes) for c in cs]
    classifier = _classifier(json.dumps(config.data.to_dict(), sort_keys=True))
    scores = track_scores(tracks, classes, mixes, reference, real_tracks, classifier, rate)
    inputs = track_scores(sources, classes, [composite(x0, rate) for x0 in sources], reference, real_tracks,
                          classifier, rate)
    inference = config.inference
    report = {"prediction": scores, "input": inputs, "steps": int(step), "num_clips": len(items), "sample_rate": rate,
              "inference": {"guidance": inference.guidance, "alpha": float(inference.alpha),
                            "beta": float(inference.beta) if inference.guidance == "nag" else 0.0,
                            "solver": inference.method, "num_steps": inference.num_steps}}
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(report, f, indent=2)
    for clip, clip_tracks, mix, cs in list(zip(items, tracks, mixes, captions))[:config.eval.num_samples]:
      folder = os.path.join(workdir, "samples", clip["clip_id"])
      os.makedirs(folder, exist_ok=True)
      for name, wave in [*((f"track_{k + 1}", t) for k, t in enumerate(clip_tracks)), ("mix", mix),
                         ("target", clip["audio"])]:
        sf.write(os.path.join(folder, f"{name}.wav"), np.clip(wave, -1, 1), rate)
      with open(os.path.join(folder, "captions.json"), "w") as f:
        json.dump([{"class": foley.CLASSES[c], "caption": text} for c, text in cs], f, indent=2)
    return report


NAG = StepByStepFoley()

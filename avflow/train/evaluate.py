"""Held-out evaluation: the paper's signal metrics and the oracle-stem LDif (Eq. 8), KLD and IB on request, plus
listenable samples.

`eval.json` holds {"input": {metric: value}, "prediction": {metric: value}, "steps": N, ...}: "input" scores the
poorly-balanced x0 against the target x1, "prediction" the model's x̂1. The evaluation remix is fixed per clip id,
so the numbers are comparable across steps and runs. Raw values; no display scaling.

Each of the first `eval.num_samples` clips gets `samples/<clip>/`: input.wav, prediction.wav, target.wav, the
per-step outputs step_<k>.wav, its frames `frames/<k>.png` and `loudness.json`, the BS.1770 loudness (LUFS, null
when silent) of each source in the input, the prediction (its oracle stems, as LDif) and the target.

- Env is reported as the public VisAH evaluation reports it: the RMSE pooled over each batch of
  `eval.env_batch_size` clips (20, that code's test batch), averaged over batches; 0 pools the whole set
  (`signal.envelope_distance_over_batches`). The batch size used is stored as "env_batch_size".
- A clip whose three target stems are all silent has no LDif: it is left out of the LDif mean and reported, as a
  count ("silent_target_clips") and by id ("silent_target_clip_ids"). Mag, Env and Was are defined for it and keep
  it, as the public code does.
- `eval.semantic` ("passt", "imagebind", or both comma-separated) adds KLD (PaSST logits of input / prediction
  against the target's) and IB (ImageBind: each soundtrack against the clip's frames; the target gets IB too).
  Each clip's soundtracks are written as 32-bit float wavs `<workdir>/semantic/{input,prediction,target}/<clip>.wav`
  and its conditioning frames as `<workdir>/semantic/frames/<clip>/<k>.png`; the metrics read them back, matched
  by name. PaSST's weights file is read from torch's hub cache, ImageBind's from `eval.imagebind_checkpoint`.
"""
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import soundfile as sf
from PIL import Image

from avflow.data.pipeline import device_batch, make_dataset
from avflow.metrics.loudness import SOURCES, stem_loudness
from avflow.flow.solvers import Trajectory
from avflow.metrics import loudness, semantic, signal, trajectory

SEMANTIC_MODELS = ("passt", "imagebind")
PARTS = {"input": "x0", "prediction": "pred", "target": "x1"}  # soundtrack name -> its array in the predictions


def signal_metrics(pred: np.ndarray, target: np.ndarray, target_stems: np.ndarray, input_stems: np.ndarray,
                   sample_rate: int, env_batch_size: int, silent: np.ndarray) -> dict[str, float]:
  """LDif (oracle stems, over the clips not `silent`; NaN when none is left), Mag, Env (pooled per batch of
  `env_batch_size` clips), Was of (N, L) predictions against (N, L) targets."""
  ldif = [loudness.oracle_ldif(p, ts, s, sample_rate)
          for p, ts, s, quiet in zip(pred, target_stems, input_stems, silent) if not quiet]
  return {
      "ldif": float(np.mean(ldif)) if ldif else float("nan"),
      "mag": float(signal.mag_distance(pred, target, sample_rate)),
      "env": float(signal.envelope_distance_over_batches(pred, target, env_batch_size)),
      "was": float(signal.wasserstein(pred, target)),
  }


def semantic_names(value: str) -> tuple[str, ...]:
  """`eval.semantic` ("passt,imagebind"; "" for none) as names, checked."""
  names = tuple(n.strip() for n in value.split(",") if n.strip())
  unknown = [n for n in names if n not in SEMANTIC_MODELS]
  if unknown:
    raise ValueError(f"eval.semantic={value!r}: unknown {', '.join(unknown)}; expected a comma-separated subset of "
                     f"{', '.join(SEMANTIC_MODELS)}")
  return names


def _semantic_settings(config) -> tuple[tuple[str, ...], str]:
  ev = config.eval  # runs written before these fields: no semantic metrics, ImageBind's own weights path
  return (semantic_names(ev.get("semantic", "")),
          ev.get("imagebind_checkpoint", semantic.DEFAULT_IMAGEBIND_CHECKPOINT))


def check_semantic(config) -> None:
  """Raises `ImportError` / `FileNotFoundError` naming the package or weights file `eval.semantic` lacks."""
  names, checkpoint = _semantic_settings(config)
  if "passt" in names:
    semantic.PasstClassifier.check()
  if "imagebind" in names:
    semantic.ImageBindEmbedder.check(checkpoint)


def semantic_models(config) -> dict[str, Any]:
  """The models `eval.semantic` names, built (errors as `check_semantic`)."""
  names, checkpoint = _semantic_settings(config)
  models = {}
  if "passt" in names:
    models["passt"] = semantic.PasstClassifier()
  if "imagebind" in names:
    models["imagebind"] = semantic.ImageBindEmbedder(checkpoint)
  return models


def save_frames(folder: str, frames: np.ndarray) -> None:
  """(F, H, W, 3) frames as `folder/<k>.png`."""
  os.makedirs(folder, exist_ok=True)
  for k, frame in enumerate(np.asarray(frames, np.uint8)):
    Image.fromarray(frame).save(os.path.join(folder, f"{k:03d}.png"))


def semantic_metrics(res: dict[str, Any], models: dict[str, Any], folder: str,
                     sample_rate: int) -> dict[str, dict[str, float]]:
  """KLD of input and prediction, IB of input, prediction and target, from the wavs and frames written here
  under `folder`."""
  for part, key in PARTS.items():
    os.makedirs(os.path.join(folder, part), exist_ok=True)
    for clip, audio in zip(res["clip_id"], res[key]):
      sf.write(os.path.join(folder, part, f"{clip}.wav"), audio, sample_rate, subtype="FLOAT")
  out = {part: {} for part in PARTS}
  if "passt" in models:
    for part in ("input", "prediction"):
      _, out[part]["kld"] = semantic.kld_for_files(os.path.join(folder, part), os.path.join(folder, "target"),
                                                   models["passt"])
  if "imagebind" in models:
    per_clip = []
    for clip, frames in zip(res["clip_id"], res["frames"]):
      frames_dir = os.path.join(folder, "frames", clip)
      save_frames(frames_dir, frames)
      per_clip.append(semantic.ib_for_clip(
          [os.path.join(folder, part, f"{clip}.wav") for part in PARTS],
          [os.path.join(frames_dir, n) for n in os.listdir(frames_dir)], models["imagebind"]))
    for part, value in zip(PARTS, np.mean(per_clip, axis=0)):
      out[part]["ib"] = float(value)
  return {part: values for part, values in out.items() if values}


def run_predictions(predict, params, source, config) -> dict[str, Any]:
  """Runs `predict` over a source with the fixed evaluation remix; returns stacked host arrays."""
  ds = make_dataset(source, config.data, batch_size=config.eval.batch_size, seed=config.data.seed, train=False)
  out = {k: [] for k in ("x0", "x1", "pred", "stems", "target_stems", "frames")}
  clip_ids, states, velocities, times = [], [], [], None
  for batch in ds:
    pred, traj = predict(params, device_batch(batch))
    out["pred"].append(np.asarray(jax.device_get(pred))[..., 0])
    if traj is not None:
      states.append(np.asarray(traj.states)[..., 0])
      velocities.append(np.asarray(traj.velocities)[..., 0])
      times = np.asarray(traj.times)
    out["x0"].append(batch["x0"][..., 0])
    out["x1"].append(batch["x1"][..., 0])
    out["stems"].append(batch["stems"])
    out["target_stems"].append(batch["target_stems"])
    out["frames"].append(batch["frames"])
    clip_ids.extend(str(c) for c in batch["clip_id"])
  res = {k: np.concatenate(v) for k, v in out.items()}
  res["clip_id"] = clip_ids
  res["trajectory"] = None if times is None else Trajectory(
      final=res["pred"], states=np.concatenate(states, axis=1), velocities=np.concatenate(velocities, axis=1),
      times=times)
  return res


def source_loudness(res: dict[str, Any], i: int, sample_rate: int) -> dict[str, Any]:
  """Clip i's loudness per source (LUFS, None when silent) in input, prediction (oracle stems) and target."""
  def lufs(stems):
    return [float(v) if np.isfinite(v) else None for v in stem_loudness(stems, sample_rate)]
  stems = res["stems"][i]
  return {"sources": list(SOURCES), "input": lufs(stems),
          "prediction": lufs(loudness.oracle_stems(res["pred"][i], stems)), "target": lufs(res["target_stems"][i])}


def write_samples(clip_dir: str, res: dict[str, Any], i: int, sample_rate: int) -> None:
  """Clip i's frames and per-source loudness beside its wavs (see the module docstring)."""
  save_frames(os.path.join(clip_dir, "frames"), res["frames"][i])
  with open(os.path.join(clip_dir, "loudness.json"), "w") as f:
    json.dump(source_loudness(res, i, sample_rate), f, indent=2)


def evaluate(predict, params, source, config, workdir: str, step: int) -> dict[str, Any]:
  """Scores input and prediction, writes `<workdir>/eval.json` and the samples; returns the report.

  The semantic models are built first, so a missing package or weights file stops it before any prediction.
  """
  models = semantic_models(config)
  semantic_dir = os.path.join(workdir, "semantic")
  if models and os.path.exists(semantic_dir):
    shutil.rmtree(semantic_dir)  # files of an earlier evaluation would be matched by name
  res = run_predictions(predict, params, source, config)
  sr = config.data.sample_rate
  silent = np.array([loudness.all_silent(s, sr) for s in res["target_stems"]], dtype=bool)
  env_batch_size = int(config.eval.get("env_batch_size", signal.ENV_BATCH))  # older runs: the public batch
  report = {
      "input": signal_metrics(res["x0"], res["x1"], res["target_stems"], res["stems"], sr, env_batch_size, silent),
      "prediction": signal_metrics(res["pred"], res["x1"], res["target_stems"], res["stems"], sr, env_batch_size,
                                   silent),
      "steps": int(step),
      "num_clips": len(res["clip_id"]),
      "silent_target_clips": int(silent.sum()),
      "silent_target_clip_ids": [c for c, quiet in zip(res["clip_id"], silent) if quiet],
      "env_batch_size": env_batch_size,
      "sample_rate": sr,
      "inference": {"num_steps": config.inference.num_steps, "method": config.inference.method},
  }
  if models:
    for part, values in semantic_metrics(res, models, semantic_dir, sr).items():
      report.setdefault(part, {}).update(values)
  traj = res["trajectory"]
  if traj is not None:  # Sec. 3.2.2: drift and linearity of the inference trajectory (Fig. 4, Table 12).
    report["trajectory"] = {rep: trajectory.trajectory_metrics(traj, res["x0"], res["x1"], rep)
                            for rep in ("waveform", "stft")}
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  for i, clip in enumerate(res["clip_id"][:config.eval.num_samples]):
    clip_dir = os.path.join(workdir, "samples", clip)
    os.makedirs(clip_dir, exist_ok=True)
    for name, key in (("input", "x0"), ("prediction", "pred"), ("target", "x1")):
      sf.write(os.path.join(clip_dir, f"{name}.wav"), np.clip(res[key][i], -1, 1), sr)
    if traj is not None:  # the per-step outputs (Fig. 5)
      for k in range(1, len(traj.times) - 1):
        sf.write(os.path.join(clip_dir, f"step_{k}.wav"), np.clip(traj.states[k, i], -1, 1), sr)
    write_samples(clip_dir, res, i, sr)
  return report

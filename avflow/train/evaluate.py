"""Held-out evaluation: the paper's signal metrics and the oracle-stem LDif (Eq. 8), plus listenable samples.

`eval.json` holds {"input": {metric: value}, "prediction": {metric: value}, "steps": N, ...}: "input" scores the
poorly-balanced x0 against the target x1, "prediction" the model's x̂1. The evaluation remix is fixed per clip id,
so the numbers are comparable across steps and runs. Raw values; no display scaling.

Each of the first `eval.num_samples` clips gets `samples/<clip>/`: input.wav, prediction.wav, target.wav, the
per-step outputs step_<k>.wav, its frames `frames/<k>.png` and `loudness.json`, the BS.1770 loudness (LUFS, null
when silent) of each source in the input, the prediction (its oracle stems, as LDif) and the target.
"""
import json
import os
from typing import Any

import jax
import numpy as np
import soundfile as sf
from PIL import Image

from avflow.data.pipeline import device_batch, make_dataset
from avflow.data.remix import SOURCES, stem_loudness
from avflow.flow.solvers import Trajectory
from avflow.metrics import loudness, signal, trajectory


def signal_metrics(pred: np.ndarray, target: np.ndarray, target_stems: np.ndarray, input_stems: np.ndarray,
                   sample_rate: int) -> dict[str, float]:
  """LDif (oracle stems), Mag, Env, Was of (N, L) predictions against (N, L) targets."""
  ldif = np.mean([loudness.oracle_ldif(p, ts, s, sample_rate) for p, ts, s in zip(pred, target_stems, input_stems)])
  return {
      "ldif": float(ldif),
      "mag": float(signal.mag_distance(pred, target, sample_rate)),
      "env": float(signal.envelope_distance(pred, target)),
      "was": float(signal.wasserstein(pred, target)),
  }


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
  os.makedirs(os.path.join(clip_dir, "frames"), exist_ok=True)
  for k, frame in enumerate(np.asarray(res["frames"][i], np.uint8)):
    Image.fromarray(frame).save(os.path.join(clip_dir, "frames", f"{k:03d}.png"))
  with open(os.path.join(clip_dir, "loudness.json"), "w") as f:
    json.dump(source_loudness(res, i, sample_rate), f, indent=2)


def evaluate(predict, params, source, config, workdir: str, step: int) -> dict[str, Any]:
  """Scores input and prediction, writes `<workdir>/eval.json` and the samples; returns the report."""
  res = run_predictions(predict, params, source, config)
  sr = config.data.sample_rate
  report = {
      "input": signal_metrics(res["x0"], res["x1"], res["target_stems"], res["stems"], sr),
      "prediction": signal_metrics(res["pred"], res["x1"], res["target_stems"], res["stems"], sr),
      "steps": int(step),
      "num_clips": len(res["clip_id"]),
      "sample_rate": sr,
      "inference": {"num_steps": config.inference.num_steps, "method": config.inference.method},
  }
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

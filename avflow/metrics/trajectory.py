"""Trajectory analysis of VisAH-FM: Sec. 3.2.2 "Model Behavior" (Fig. 4, Fig. 5) and supplement Sec. 9 (Table 12).

A solved trajectory (`avflow.flow.solvers.Trajectory`) holds the states `(K+1, B, L[, 1])` at times
t_0 < … < t_K and the velocity of each step `(K, B, L[, 1])`. Its ground truth is the linear path
x_t = (1 − t)·x0 + t·x1 (Eq. 1), whose velocity x1 − x0 is the same at every step.

Every metric is computed in a representation space φ:
- "waveform": the samples; the predicted field is the trajectory's own velocities, the ground truth x1 − x0;
- "stft": flattened STFT magnitudes, the time–frequency domain of Fig. 4;
- any callable mapping audio `(N, L)` to vectors `(N, D)`, an embedding (PaSST in Table 12).
φ is nonlinear outside the waveform, so there both fields are finite differences of represented states,
v̂_k = (φ(x̂_{t_{k+1}}) − φ(x̂_{t_k})) / (t_{k+1} − t_k), and likewise along the ground-truth path at the same times.

Plots are drawn on `matplotlib.figure.Figure` objects (Agg canvas, no pyplot state) and saved as PNG.
"""
from typing import Any, Callable, NamedTuple, Union

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from avflow.nn.stft import stft

Representation = Union[str, Callable[[np.ndarray], np.ndarray]]
REPRESENTATIONS = ("waveform", "stft")
EPS = 1e-12


class Represented(NamedTuple):
  """A trajectory and its linear ground truth in a representation space, float64.

  states / target_states `(K+1, B, D)`, velocities / target_velocities `(K, B, D)`,
  displacement `(B, D)` = φ(x1) − φ(x0), the ground-truth chord over the whole path t ∈ [0, 1].
  """
  states: np.ndarray
  velocities: np.ndarray
  target_states: np.ndarray
  target_velocities: np.ndarray
  displacement: np.ndarray


def _mono(x, ndim: int) -> np.ndarray:
  """An `ndim`-axis array, or the same with a trailing channel axis of 1 (channels-last), -> float64 without it."""
  x = np.asarray(x, dtype=np.float64)
  return x[..., 0] if x.ndim == ndim + 1 and x.shape[-1] == 1 else x


def stft_magnitude(n_fft: int = 1024, hop: int = 256) -> Callable[[np.ndarray], np.ndarray]:
  """φ(x) = |STFT(x)| flattened over bins × frames (torch conventions: centred, reflect pad, periodic Hann)."""

  def embed(audio: np.ndarray) -> np.ndarray:
    spec = stft(jnp.asarray(audio, jnp.float32), n_fft, hop)
    return np.abs(np.asarray(spec, np.complex128)).reshape(len(audio), -1)

  return embed


def _resolve(representation: Representation) -> Callable[[np.ndarray], np.ndarray] | None:
  """The map φ (`None` for the waveform itself)."""
  if callable(representation):
    return representation
  if representation == "waveform":
    return None
  if representation == "stft":
    return stft_magnitude()
  raise ValueError(f"unknown representation {representation!r}; expected one of {REPRESENTATIONS} or a callable")


def _apply(phi, audio: np.ndarray) -> np.ndarray:
  """φ over a stack `(S, B, L)` of audio -> `(S, B, D)` float64."""
  s, b, length = audio.shape
  out = np.asarray(phi(audio.reshape(s * b, length)), dtype=np.float64)
  if out.shape[0] != s * b:
    raise ValueError(f"representation returned {out.shape[0]} rows for {s * b} clips")
  return out.reshape(s, b, -1)


def represent(trajectory: Any, x0, x1, representation: Representation = "waveform") -> Represented:
  """Maps a trajectory (anything with `.states`, `.velocities`, `.times`) and its ground truth into φ-space."""
  states = _mono(trajectory.states, 3)
  times = np.asarray(trajectory.times, dtype=np.float64)
  x0, x1 = _mono(x0, 2), _mono(x1, 2)
  if states.shape[1:] != x0.shape or x0.shape != x1.shape or states.ndim != 3:
    raise ValueError(f"expected states (K+1, B, L) and x0, x1 (B, L), got {states.shape}, {x0.shape}, {x1.shape}")
  if times.shape != (states.shape[0],):
    raise ValueError(f"expected {states.shape[0]} times, got shape {times.shape}")
  t = times[:, None, None]
  path = (1.0 - t) * x0 + t * x1
  phi = _resolve(representation)
  if phi is None:
    velocities = _mono(trajectory.velocities, 3)
    if velocities.shape != (states.shape[0] - 1,) + x0.shape:
      raise ValueError(f"expected velocities {(states.shape[0] - 1,) + x0.shape}, got {velocities.shape}")
    return Represented(states, velocities, path, np.broadcast_to(x1 - x0, velocities.shape), x1 - x0)
  rep_states, rep_path = _apply(phi, states), _apply(phi, path)
  ends = _apply(phi, np.stack([x0, x1]))
  dt = np.diff(times)[:, None, None]
  return Represented(rep_states, np.diff(rep_states, axis=0) / dt, rep_path, np.diff(rep_path, axis=0) / dt,
                     ends[1] - ends[0])


def _flat(fields) -> np.ndarray:
  """`(K, B, …)` -> float64 `(K, B, D)`."""
  v = np.asarray(fields, np.float64)
  return v.reshape(*v.shape[:2], -1)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a·b / (‖a‖‖b‖ + ε) over the last axis, clipped to [−1, 1]."""
  dot = np.sum(a * b, axis=-1)
  return np.clip(dot / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + EPS), -1.0, 1.0)


def cosine_to_ground_truth(velocities, target_velocities) -> np.ndarray:
  """Fig. 4a: cosine similarity of the predicted and ground-truth fields at each step, mean over clips -> `(K,)`."""
  v = _flat(velocities)
  return _cosine(v, _flat(target_velocities).reshape(v.shape)).mean(axis=1)


def field_variance(velocities, displacement) -> float:
  """Fig. 4b / Table 12 V(v̂): variance of the predicted field across steps, relative to the ground truth.

  Per clip, mean_k ‖v̂_k − v̄‖² / ‖φ(x1) − φ(x0)‖², with v̄ the mean field over the K steps (population
  variance, summed over dimensions); equivalently the variance over steps of v̂ / RMS(ground truth), averaged
  over dimensions. Averaged over clips. 0 for a constant field; scale-free and independent of D.
  """
  v = _flat(velocities)
  spread = np.sum(np.var(v, axis=0), axis=-1)
  scale = np.sum(np.asarray(displacement, np.float64).reshape(v.shape[1], -1) ** 2, axis=-1)
  return float(np.mean(spread / (scale + EPS)))


def curvature(velocities) -> np.ndarray:
  """Eq. 10: Θ_k = arccos(v̂_{k+1}·v̂_k / (‖v̂_{k+1}‖‖v̂_k‖ + ε)) between successive steps -> `(K−1, B)` radians."""
  v = _flat(velocities)
  return np.arccos(_cosine(v[1:], v[:-1]))


def mean_curvature(velocities) -> float:
  """Fig. 4b / Table 12 curvature: Eq. 10 averaged over steps and clips (0 for fewer than two steps)."""
  theta = curvature(velocities)
  return float(theta.mean()) if theta.size else 0.0


def trajectory_metrics(trajectory: Any, x0, x1, representation: Representation = "waveform") -> dict[str, Any]:
  """{"cosine": per-step list (Fig. 4a), "variance", "curvature" (Fig. 4b, Table 12)} in one representation."""
  r = represent(trajectory, x0, x1, representation)
  return {
      "cosine": cosine_to_ground_truth(r.velocities, r.target_velocities).tolist(),
      "variance": field_variance(r.velocities, r.displacement),
      "curvature": mean_curvature(r.velocities),
  }


def pca_trajectories(paths: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Fig. 4c: one clip's paths `{name: (K+1, D)}` projected on the first two principal components.

  The PCA is fitted on all the paths' points together (so predicted and ground-truth paths share axes).
  Each component's sign makes its largest loading positive. Returns `{name: (K+1, 2)}` and the explained
  variance ratios `(2,)` (zero-padded when the points span fewer than two dimensions).
  """
  arrays = {k: np.asarray(v, np.float64).reshape(len(v), -1) for k, v in paths.items()}
  points = np.concatenate(list(arrays.values()))
  mean = points.mean(axis=0)
  _, s, vt = np.linalg.svd(points - mean, full_matrices=False)
  total = np.sum(s ** 2)
  vt = vt[:2] * np.sign(vt[np.arange(min(2, len(vt))), np.argmax(np.abs(vt[:2]), axis=1)])[:, None]
  explained = np.zeros(2)
  explained[:len(vt)] = s[:2] ** 2 / total if total > 0 else 0.0
  projected = {}
  for name, p in arrays.items():
    proj = np.zeros((len(p), 2))
    proj[:, :len(vt)] = (p - mean) @ vt.T
    projected[name] = proj
  return projected, explained


def _save(fig: Figure, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, format="png")
  return path


def plot_cosine(curves: dict[str, np.ndarray], path: str) -> str:
  """Fig. 4a: per-step cosine similarity to the ground-truth field, one line per model."""
  fig = Figure(figsize=(4.5, 3.2), dpi=100)
  ax = fig.add_subplot()
  lows = [0.0]
  for name, c in curves.items():
    c = np.asarray(c)
    ax.plot(np.arange(1, len(c) + 1), c, marker="o", label=name)
    lows.append(float(np.min(c)))
  ax.set(xlabel="Step", ylabel="Cosine similarity", ylim=(min(lows) - 0.05, 1.05))
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  ax.legend()
  return _save(fig, path)


def plot_linearity(metrics: dict[str, dict], path: str) -> str:
  """Fig. 4b: variance and mean curvature per model as grouped bars (values printed on the bars)."""
  keys = ("variance", "curvature")
  fig = Figure(figsize=(5.0, 3.2), dpi=100)
  ax = fig.add_subplot()
  width = 0.8 / max(len(metrics), 1)
  for i, (name, m) in enumerate(metrics.items()):
    bars = ax.bar(np.arange(len(keys)) + (i - (len(metrics) - 1) / 2) * width, [m[k] for k in keys], width,
                  label=name)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
  ax.set_xticks(np.arange(len(keys)), ["V(v̂)", "Curvature"])
  ax.set_ylabel("Value")
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_pca(projected: dict[str, np.ndarray], path: str, explained=None, title: str | None = None) -> str:
  """Fig. 4c: PCA-projected paths (output of `pca_trajectories`), steps numbered, start marked by a square."""
  fig = Figure(figsize=(4.0, 3.6), dpi=100)
  ax = fig.add_subplot()
  for name, p in projected.items():
    line, = ax.plot(p[:, 0], p[:, 1], marker="o", label=name)
    ax.plot(p[0, 0], p[0, 1], marker="s", color=line.get_color(), markersize=9)
    for k, (px, py) in enumerate(p):
      ax.annotate(str(k), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
  labels = ["PCA Component 1", "PCA Component 2"]
  if explained is not None:
    labels = [f"{lab} ({100 * e:.0f}%)" for lab, e in zip(labels, explained)]
  ax.set(xlabel=labels[0], ylabel=labels[1], title=title)
  ax.legend(fontsize=7)
  return _save(fig, path)


def plot_step_waveforms(step_audio: dict[str, np.ndarray], sample_rate: int, path: str, target=None) -> str:
  """Fig. 5: the waveform after each step (row k = state k, row 0 the input), models overlaid; target in grey."""
  arrays = {k: _mono(v, 2) for k, v in step_audio.items()}
  rows = max(len(v) for v in arrays.values())
  fig = Figure(figsize=(7.0, 1.3 * rows + 0.4), dpi=100)
  axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
  for k, ax in enumerate(axes):
    if target is not None:
      tgt = _mono(target, 1)
      ax.plot(np.arange(len(tgt)) / sample_rate, tgt, color="0.6", lw=0.6, label="target")
    for name, states in arrays.items():
      if k < len(states):
        ax.plot(np.arange(states.shape[-1]) / sample_rate, states[k], lw=0.6, alpha=0.7, label=name)
    ax.set_ylabel("input" if k == 0 else f"step {k}", fontsize=8)
    ax.set_ylim(-1.0, 1.0)
  axes[0].legend(fontsize=7, loc="upper right", ncol=len(arrays) + 1)
  axes[-1].set_xlabel("Time (s)")
  return _save(fig, path)

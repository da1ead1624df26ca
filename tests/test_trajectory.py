"""Trajectory metrics (Fig. 4, Table 12) against hand-computed values, and the plots as real PNG files."""
import math
from typing import NamedTuple

import numpy as np
import pytest
from PIL import Image

from avflow.flow.solvers import integrate
from avflow.metrics import trajectory as tr


class Traj(NamedTuple):
  states: np.ndarray
  velocities: np.ndarray
  times: np.ndarray


def _from_velocities(x0, velocities):
  """The Euler trajectory on the uniform grid that takes the given step velocities `(K, B, D)` from x0."""
  k = len(velocities)
  times = np.arange(k + 1) / k
  states = np.concatenate([x0[None], x0[None] + np.cumsum(velocities, axis=0) / k])
  return Traj(states, velocities, times)


def _pairs_rotated(u, theta):
  """Rotates every consecutive pair of coordinates of `u (..., 2m)` by theta: the whole vector turns by theta."""
  a, b = u[..., 0::2], u[..., 1::2]
  out = np.empty_like(u)
  out[..., 0::2] = math.cos(theta) * a - math.sin(theta) * b
  out[..., 1::2] = math.sin(theta) * a + math.cos(theta) * b
  return out


@pytest.mark.parametrize("channels_last", [False, True])
def test_straight_trajectory_is_perfectly_linear(channels_last):
  rng = np.random.default_rng(0)
  x0, x1 = rng.uniform(-0.5, 0.5, (2, 3, 64)).astype(np.float32)
  if channels_last:
    x0, x1 = x0[..., None], x1[..., None]
  traj = integrate(lambda x, t, c: c, x0, x1 - x0, num_steps=4)
  m = tr.trajectory_metrics(traj, x0, x1)
  np.testing.assert_allclose(m["cosine"], np.ones(4), atol=1e-12)
  assert m["curvature"] == pytest.approx(0.0, abs=1e-6)
  assert m["variance"] == pytest.approx(0.0, abs=1e-12)
  r = tr.represent(traj, x0, x1)
  np.testing.assert_allclose(r.states, r.target_states, atol=1e-6)


def test_right_angle_zigzag():
  """Steps alternate e1, e2 (K=4, dt=1/4): Θ = π/2 at each turn, cos to the chord (1, 1)/2 is 1/√2.

  Mean field (1/2, 1/2), per-dimension variance 1/4, summed 1/2; ‖x1 − x0‖² = ‖(1/2, 1/2)‖² = 1/2, so V = 1.
  """
  e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
  v = np.stack([e1, e2, e1, e2])[:, None, :]
  x0 = np.zeros((1, 2))
  traj = _from_velocities(x0, v)
  x1 = traj.states[-1]
  np.testing.assert_allclose(x1, [[0.5, 0.5]])
  np.testing.assert_allclose(tr.curvature(v), np.full((3, 1), math.pi / 2))
  m = tr.trajectory_metrics(traj, x0, x1)
  assert m["curvature"] == pytest.approx(math.pi / 2)
  np.testing.assert_allclose(m["cosine"], np.full(4, 1 / math.sqrt(2)))
  assert m["variance"] == pytest.approx(1.0)


def test_half_right_angle_zigzag_curvature():
  v = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 0.0]])[:, None, :]
  assert tr.mean_curvature(v) == pytest.approx(math.pi / 4)
  assert tr.mean_curvature(v[:1]) == 0.0


def test_rotated_field_cosine_and_curvature():
  """The field x1 − x0 turned by θ_k = 0, π/6, π/3, π/2: cos θ_k per step, successive turns of π/6."""
  rng = np.random.default_rng(1)
  x0, x1 = rng.normal(size=(2, 5, 32))
  thetas = [0.0, math.pi / 6, math.pi / 3, math.pi / 2]
  v = np.stack([_pairs_rotated(x1 - x0, th) for th in thetas])
  traj = _from_velocities(x0, v)
  m = tr.trajectory_metrics(traj, x0, x1)
  np.testing.assert_allclose(m["cosine"], np.cos(thetas), atol=1e-12)
  assert m["curvature"] == pytest.approx(math.pi / 6)
  # An unequal mix of clips: clip 0 follows the ground truth, the others the rotated field.
  v_mixed = v.copy()
  v_mixed[:, 0] = x1[0] - x0[0]
  np.testing.assert_allclose(tr.cosine_to_ground_truth(v_mixed, np.broadcast_to(x1 - x0, v.shape)),
                             (1 + 4 * np.cos(thetas)) / 5, atol=1e-12)


def test_orthogonal_embedding_matches_waveform():
  """A callable φ(x) = x·Q (Q orthogonal) preserves angles and norms: every metric equals the waveform one."""
  rng = np.random.default_rng(2)
  x0, x1 = rng.normal(size=(2, 3, 16))
  v = np.stack([_pairs_rotated(x1 - x0, th) * s for th, s in ((0.1, 1.0), (0.5, 1.3), (-0.2, 0.7))])
  traj = _from_velocities(x0, v)
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  want = tr.trajectory_metrics(traj, x0, x1)
  got = tr.trajectory_metrics(traj, x0, x1, representation=lambda audio: audio @ q)
  np.testing.assert_allclose(got["cosine"], want["cosine"], atol=1e-10)
  assert got["curvature"] == pytest.approx(want["curvature"], abs=1e-7)
  assert got["variance"] == pytest.approx(want["variance"], rel=1e-9)
  assert want["variance"] > 0.01 and want["curvature"] > 0.1


def test_stft_representation():
  """A pure gain path x_t = (1 + t)·x0 is straight in |STFT| space; a wrong-target path is not aligned."""
  rng = np.random.default_rng(3)
  x0 = rng.uniform(-0.3, 0.3, (2, 2048))
  x1 = 2.0 * x0
  traj = _from_velocities(x0, np.broadcast_to(x1 - x0, (4, 2, 2048)))
  m = tr.trajectory_metrics(traj, x0, x1, representation="stft")
  np.testing.assert_allclose(m["cosine"], np.ones(4), atol=1e-6)
  assert m["curvature"] < 2e-3
  assert m["variance"] < 1e-6
  other = rng.uniform(-0.3, 0.3, (2, 2048))
  wrong = tr.trajectory_metrics(_from_velocities(x0, np.broadcast_to(other - x0, (4, 2, 2048))), x0, x1, "stft")
  assert max(wrong["cosine"]) < 0.9
  r = tr.represent(traj, x0, x1, tr.stft_magnitude(n_fft=256, hop=64))
  assert r.states.shape == (5, 2, 129 * 33) and r.velocities.shape == (4, 2, 129 * 33)
  with pytest.raises(ValueError, match="unknown representation"):
    tr.represent(traj, x0, x1, "mel")


def test_pca_of_a_straight_line_is_one_dimensional():
  rng = np.random.default_rng(4)
  start, direction = rng.normal(size=(2, 40))
  t = np.linspace(0.0, 1.0, 5)[:, None]
  paths = {"ground truth": start + t * direction, "model": start + t ** 2 * direction}
  projected, explained = tr.pca_trajectories(paths)
  assert explained[0] == pytest.approx(1.0) and explained[1] < 1e-12
  for p in projected.values():
    assert p.shape == (5, 2)
    np.testing.assert_allclose(p[:, 1], 0.0, atol=1e-9)
  # Distances along the line are kept by the first component.
  gt = projected["ground truth"][:, 0]
  np.testing.assert_allclose(np.abs(gt[-1] - gt[0]), np.linalg.norm(direction))


def test_pca_of_a_planar_zigzag_keeps_distances():
  rng = np.random.default_rng(5)
  basis, _ = np.linalg.qr(rng.normal(size=(30, 2)))
  plane = np.array([[0, 0], [1, 0], [1, 1], [2, 1], [2, 2.0]])
  projected, explained = tr.pca_trajectories({"zigzag": plane @ basis.T + 3.0})
  assert explained.sum() == pytest.approx(1.0) and explained[1] > 0.01
  p = projected["zigzag"]
  dist = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)  # noqa: E731
  np.testing.assert_allclose(dist(p), dist(plane), atol=1e-9)


def _assert_png(path, min_bytes=2000):
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > min_bytes
  pixels = np.asarray(Image.open(path).convert("L"), np.float64)
  assert pixels.std() > 5.0  # not a blank canvas


def test_plots_write_png(tmp_path):
  rng = np.random.default_rng(6)
  x0, x1 = rng.uniform(-0.4, 0.4, (2, 2, 800))
  v = np.stack([_pairs_rotated(x1 - x0, th) for th in (0.0, 0.3, 0.6, 0.9)])
  traj = _from_velocities(x0, v)
  metrics = {"w/o rollout": tr.trajectory_metrics(traj, x0, x1),
             "w rollout": tr.trajectory_metrics(_from_velocities(x0, np.broadcast_to(x1 - x0, v.shape)), x0, x1)}
  r = tr.represent(traj, x0, x1)
  projected, explained = tr.pca_trajectories({"model": r.states[:, 0], "ground truth": r.target_states[:, 0]})
  paths = [
      tr.plot_cosine({k: m["cosine"] for k, m in metrics.items()}, str(tmp_path / "cosine.png")),
      tr.plot_linearity(metrics, str(tmp_path / "linearity.png")),
      tr.plot_pca(projected, str(tmp_path / "pca.png"), explained, title="clip 0"),
      tr.plot_step_waveforms({"model": traj.states[:, 0]}, 8000, str(tmp_path / "steps.png"), target=x1[0]),
  ]
  for p in paths:
    _assert_png(p)
  assert Image.open(paths[3]).size[1] > Image.open(paths[0]).size[1]  # one row per state

"""The VAFlow alignment VAE and its objective (Eq. 4–7): shapes and sizes, the time interpolation against PyTorch's,
the KL against quadrature, the reparameterised sample's moments, InfoNCE against analytic values and an
independent reference, and a few Adam steps."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import scipy.integrate
import torch
import torch.nn.functional as F

from avflow.models.v2a import presets
from avflow.models.v2a.prior import AlignmentVAE, parameter_count, reparameterize, time_interpolation_matrix
from avflow.models.v2a.prior_losses import (PriorLossConfig, contrastive_loss, kl_divergence, prior_loss,
                                            reconstruction_loss, sample_windows)

TAU = 0.7


def _closed_form_count(cfg) -> int:
  """Weights of the documented layers: per side an input Conv_k, `blocks` × (LayerNorm, Conv_k), LayerNorm and
  a 1 × 1 projection."""
  w, k, d_v, d_a = cfg.width, cfg.kernel_size, cfg.video_dim, cfg.latent_dim
  blocks = cfg.blocks * (2 * w + w * w * k + w)
  encoder = (d_v * w * k + w) + blocks + (2 * w + w * 2 * d_a + 2 * d_a)
  decoder = (d_a * w * k + w) + blocks + (2 * w + w * d_v + d_v)
  return encoder + decoder


def test_shapes_and_sizes():
  cfg = presets.prior_config("toy")
  model = AlignmentVAE(cfg)
  video = jax.random.normal(jax.random.key(0), (2, 10, cfg.video_dim))
  params = model.init(jax.random.key(1), video, jax.random.key(2), 23)["params"]
  for latent_frames in (23, 7):  # the convolutions do not depend on the number of frames
    mu, log_sigma = model.apply({"params": params}, video, latent_frames, method="encode")
    assert mu.shape == log_sigma.shape == (2, latent_frames, cfg.latent_dim)
    z = model.sample(jax.random.key(3), mu, log_sigma)
    assert z.shape == mu.shape
    assert model.apply({"params": params}, z, 10, method="decode").shape == video.shape
  x_hat, mu, log_sigma = model.apply({"params": params}, video, jax.random.key(3), 23)
  assert x_hat.shape == video.shape and mu.shape == (2, 23, cfg.latent_dim)

  for scale in presets.SCALES:
    prior, dit = presets.prior_config(scale), presets.model_config(scale)
    assert (prior.video_dim, prior.latent_dim) == (dit.video_dim, dit.latent_dim)
    assert parameter_count(prior) == _closed_form_count(prior)
  assert 10_000 < parameter_count(cfg) < 30_000
  assert (presets.prior_config("paper").video_dim, presets.prior_config("paper").latent_dim) == (768, 64)

  with pytest.raises(ValueError, match=r"video must be \(B, T_v, prior.video_dim=64\)"):
    model.apply({"params": params}, video[..., :8], 23, method="encode")
  bad = ml_collections.ConfigDict({**cfg, "kernel_size": 4})
  with pytest.raises(ValueError, match="kernel_size must be odd"):
    AlignmentVAE(bad).init(jax.random.key(1), video, jax.random.key(2), 23)


@pytest.mark.parametrize("n_in,n_out", [(10, 23), (23, 10), (100, 215), (215, 100), (5, 5), (1, 4)])
def test_time_interpolation_is_pytorch_linear(n_in, n_out):
  x = np.random.default_rng(0).standard_normal((2, 3, n_in)).astype(np.float32)  # (B, C, T), PyTorch's layout
  matrix = time_interpolation_matrix(n_out, n_in)
  interpolated = np.einsum("st,bct->bcs", matrix, x)
  positions = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # np.interp holds the end values beyond [0, n_in − 1]
  np.testing.assert_allclose(interpolated, np.apply_along_axis(lambda r: np.interp(positions, np.arange(n_in), r),
                                                               -1, x), atol=1e-6)
  ref = F.interpolate(torch.from_numpy(x), size=n_out, mode="linear", align_corners=False).numpy()
  np.testing.assert_allclose(interpolated, ref, atol=1e-4)  # PyTorch and JAX compute the positions in float32
  np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
  if n_out >= n_in:  # stretching: equal to jax.image.resize (which anti-aliases only when shrinking)
    resized = jax.image.resize(jnp.asarray(x), (2, 3, n_out), method="linear")
    np.testing.assert_allclose(interpolated, resized, atol=1e-4)


def test_kl_divergence():
  rng = np.random.default_rng(0)
  zeros = jnp.zeros((2, 5, 3))
  assert float(kl_divergence(zeros, zeros)) == 0.0
  mu = rng.normal(0.0, 1.5, (2, 3, 4)).astype(np.float32)
  log_sigma = rng.normal(0.0, 0.7, (2, 3, 4)).astype(np.float32)
  value = float(kl_divergence(jnp.asarray(mu), jnp.asarray(log_sigma)))
  closed_form = np.log(1.0 / np.exp(log_sigma)) + (np.exp(log_sigma)**2 + mu**2) / 2.0 - 0.5
  np.testing.assert_allclose(value, closed_form.mean(), rtol=1e-5)

  def quadrature(m, s):  # ∫ q log(q / p) for q = 𝒩(m, s²), p = 𝒩(0, 1)
    log_q = lambda x: -0.5 * ((x - m) / s)**2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    log_p = lambda x: -0.5 * x**2 - 0.5 * math.log(2 * math.pi)
    return scipy.integrate.quad(lambda x: math.exp(log_q(x)) * (log_q(x) - log_p(x)), m - 12 * s, m + 12 * s)[0]

  per_element = [quadrature(float(m), math.exp(float(ls))) for m, ls in zip(mu.ravel(), log_sigma.ravel())]
  np.testing.assert_allclose(value, np.mean(per_element), rtol=1e-5)
  for m, ls in ((3.0, 0.0), (0.0, 1.0), (0.0, -1.0), (-0.5, 0.3)):
    assert float(kl_divergence(jnp.full((1,), m), jnp.full((1,), ls))) > 0.0


def test_reparameterised_sample_moments_and_gradients():
  mu = jnp.array([-1.0, 0.5, 2.0])
  log_sigma = jnp.log(jnp.array([0.5, 1.0, 2.0]))
  n = 20_000
  samples = jax.vmap(lambda k: reparameterize(k, mu, log_sigma))(jax.random.split(jax.random.key(0), n))
  sigma = np.exp(np.asarray(log_sigma))
  assert np.all(np.abs(samples.mean(axis=0) - mu) < 4.0 * sigma / math.sqrt(n))
  np.testing.assert_allclose(samples.var(axis=0), sigma**2, rtol=0.05)
  key = jax.random.key(1)
  model = AlignmentVAE(presets.prior_config("toy"))
  np.testing.assert_array_equal(model.sample(key, mu, log_sigma), reparameterize(key, mu, log_sigma))
  eps = (reparameterize(key, mu, log_sigma) - mu) / sigma
  grad_mu, grad_log_sigma = jax.grad(lambda m, s: jnp.sum(reparameterize(key, m, s)), argnums=(0, 1))(mu, log_sigma)
  np.testing.assert_allclose(grad_mu, 1.0)
  np.testing.assert_allclose(grad_log_sigma, sigma * eps, rtol=1e-5)


def _orthogonal_video(batch: int, frames: int) -> np.ndarray:
  """Example i is e_i at every frame, scaled by a positive gain varying in time: every pooling gives a multiple
  of e_i, so the cosine between examples i and j is δ_ij."""
  gains = np.random.default_rng(0).uniform(0.5, 2.0, (batch, frames, 1))
  return (gains * np.eye(batch + 2)[:batch, None, :]).astype(np.float32)


def test_info_nce_orthogonal_features_analytic():
  batch, frames = 4, 10
  video = jnp.asarray(_orthogonal_video(batch, frames))
  key = jax.random.key(0)
  matched = float(contrastive_loss(key, video, video))
  # −log(e^{1/τ} / (e^{1/τ} + B − 1)) per scale, summed over the three scales
  np.testing.assert_allclose(matched, 3 * math.log(1.0 + (batch - 1) * math.exp(-1.0 / TAU)), rtol=1e-5)
  shuffled = float(contrastive_loss(key, video, jnp.roll(video, 1, axis=0)))  # x̂_i = x_{i−1}: the positive scores 0
  np.testing.assert_allclose(shuffled, 3 * math.log(math.exp(1.0 / TAU) + batch - 1), rtol=1e-5)
  one_scale = float(contrastive_loss(key, video, video, scales=("global",)))
  np.testing.assert_allclose(one_scale, matched / 3, rtol=1e-5)


def _reference_contrastive(video, reconstruction, frame, start, k):
  """Eq. 6 in numpy: pool, cosine, −log softmax of the diagonal, mean over anchors, sum over scales."""
  total = 0.0
  for pool in (lambda x: x[:, frame], lambda x: x[:, start:start + k].mean(axis=1), lambda x: x.mean(axis=1)):
    a, c = pool(reconstruction.astype(np.float64)), pool(video.astype(np.float64))
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=1, keepdims=True)).T / TAU
    log_softmax = cos - np.log(np.exp(cos).sum(axis=1, keepdims=True))
    total += -np.mean(np.diag(log_softmax))
  return total


def test_contrastive_loss_matches_reference_and_prefers_matched_pairs():
  rng = np.random.default_rng(1)
  video = rng.standard_normal((6, 12, 5)).astype(np.float32)
  reconstruction = (video + 0.5 * rng.standard_normal(video.shape)).astype(np.float32)
  seen = set()
  for seed in range(4):
    key = jax.random.key(seed)
    frame, start = (int(i) for i in sample_windows(key, 12, 8))
    assert 0 <= frame < 12 and 0 <= start <= 4
    seen.add((frame, start))
    value = float(contrastive_loss(key, jnp.asarray(video), jnp.asarray(reconstruction)))
    np.testing.assert_allclose(value, _reference_contrastive(video, reconstruction, frame, start, 8), rtol=1e-5)
    shuffled = float(contrastive_loss(key, jnp.asarray(video), jnp.asarray(reconstruction[::-1])))
    assert float(contrastive_loss(key, jnp.asarray(video), jnp.asarray(video))) < value < shuffled
  assert len(seen) > 1  # the windows follow the key


def test_clip_scale_needs_clip_frames_and_config_errors():
  video = jnp.asarray(np.random.default_rng(2).standard_normal((3, 5, 4)), jnp.float32)
  with pytest.raises(ValueError, match=r"clip_frames=8 adjacent frames but the video has only T_v=5"):
    contrastive_loss(jax.random.key(0), video, video)
  assert np.isfinite(float(contrastive_loss(jax.random.key(0), video, video, scales=("frame", "global"))))
  np.testing.assert_allclose(contrastive_loss(jax.random.key(0), video, video, clip_frames=5, scales=("clip",)),
                             contrastive_loss(jax.random.key(0), video, video, scales=("global",)), rtol=1e-6)
  with pytest.raises(ValueError, match="must have the video features' shape"):
    reconstruction_loss(video, video[:, :4])
  cfg = PriorLossConfig.from_config(ml_collections.ConfigDict({"scales": ["frame", "global"], "temperature": 0.5}))
  assert cfg.scales == ("frame", "global") and cfg.kl_weight == 8e-4 and hash(cfg)
  with pytest.raises(ValueError, match="prior_loss.temperature must be > 0"):
    PriorLossConfig(temperature=0.0)
  with pytest.raises(ValueError, match="expected distinct names"):
    PriorLossConfig(scales=("frame", "shot"))
  with pytest.raises(ValueError, match=r"unknown prior_loss fields \['lambda_kl'\]"):
    PriorLossConfig.from_config(ml_collections.ConfigDict({"lambda_kl": 1.0}))


def test_adam_steps_decrease_the_vae_loss_under_jit():
  cfg = ml_collections.ConfigDict({**presets.prior_config("toy"), "video_dim": 16, "latent_dim": 8, "width": 16})
  model = AlignmentVAE(cfg)
  loss_cfg = PriorLossConfig()
  video = jax.random.normal(jax.random.key(0), (8, 12, 16))
  params = model.init(jax.random.key(1), video, jax.random.key(2), 20)["params"]
  optimizer = optax.adam(1e-2)

  def loss_fn(params, key):
    sample_key, window_key = jax.random.split(key)
    x_hat, mu, log_sigma = model.apply({"params": params}, video, sample_key, 20)
    return prior_loss(window_key, video, x_hat, mu, log_sigma, loss_cfg)

  @jax.jit
  def step(params, opt_state, key):
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, terms

  evaluate = jax.jit(functools.partial(loss_fn, key=jax.random.key(99)))
  first, first_terms = evaluate(params)
  eager, _ = loss_fn(params, jax.random.key(99))
  np.testing.assert_allclose(first, eager, rtol=1e-5)
  weighted = sum(w * first_terms[n] for n, w in (("kl", 8e-4), ("reconstruction", 1.0), ("contrastive", 1.0)))
  np.testing.assert_allclose(first, weighted, rtol=1e-6)
  opt_state = optimizer.init(params)
  for i in range(40):
    params, opt_state, _, _ = step(params, opt_state, jax.random.key(i))
  last, last_terms = evaluate(params)
  assert float(last) < 0.8 * float(first)
  assert float(last_terms["reconstruction"]) < float(first_terms["reconstruction"])
  assert float(last_terms["contrastive"]) < float(first_terms["contrastive"])

"""The VAFlow video prior: the alignment VAE (Sec. 3.2 "Video Representation", Sec. 3.3, Fig. 2).

The flow's source x0 = x_v^AE must have the audio latent's shape (T_a, D_a); the video features x_v are
(T_v, D_v) (CLIP at 10 fps: 100 × 768 against 215 × 64 for 10 s). A 1-D convolutional VAE maps one onto the other:

    encode:  h = W_{T_a←T_v} · x_v                 (B, T_a, D_v)   linear interpolation in time
             h = Conv_k(h), blocks × [h + Conv_k(SiLU(LN(h)))]        (B, T_a, width)
             (μ, log σ) = Conv_1(SiLU(LN(h)))       2 × (B, T_a, D_a)
    sample:  x_v^AE = μ + σ ⊙ ε,  ε ~ 𝒩(0, I)       (B, T_a, D_a)   the reparameterised posterior sample
    decode:  h = Conv_k(z), blocks × [h + Conv_k(SiLU(LN(h)))]        (B, T_a, width)
             x̂_v = Conv_1(SiLU(LN(W_{T_v←T_a} · h)))  (B, T_v, D_v)   back to the video frames

The decoder mirrors the encoder: the encoder interpolates first and convolves at the audio-latent rate, the decoder
convolves at that rate and interpolates last. Convolutions pad with zeros ("SAME"); the 1 × 1 output projections
are the only layers that change the channel count besides the input convolution.

The interpolation is an explicit fixed matrix (`time_interpolation_matrix`), half-pixel-centred and clamped at the
ends: PyTorch's `F.interpolate(mode="linear", align_corners=False)`. When stretching (T_v → T_a) it equals
`jax.image.resize(method="linear")`; when shrinking (T_a → T_v) `jax.image.resize` would widen its kernel as an
anti-aliasing filter, while the paper's "interpolated" reads as plain two-tap interpolation in both directions.
The matrix is built once on the host for the static (T_out, T_in) and applied as one einsum.

Sizes are not in the paper ("three alignment VAEs of comparable size"); see `presets.prior_config`.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avflow.nn.attention import layer_norm
from avflow.nn.spectrogram import interpolation_matrix


def time_interpolation_matrix(n_out: int, n_in: int) -> np.ndarray:
  """`(n_out, n_in)` float32 matrix of linear interpolation from `n_in` to `n_out` frames: output frame i samples
  the input at (i + ½)·n_in/n_out − ½, clamped to [0, n_in − 1] (half-pixel centres, `align_corners=False`)."""
  if n_out < 1 or n_in < 1:
    raise ValueError(f"interpolation needs at least one frame on each side, got {n_in} -> {n_out}")
  positions = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  return interpolation_matrix(np.clip(positions, 0.0, n_in - 1), n_in)


def interpolate_frames(x: jax.Array, num_frames: int) -> jax.Array:
  """`x (B, T, C)` linearly interpolated in time to `(B, num_frames, C)` (`time_interpolation_matrix`)."""
  matrix = jnp.asarray(time_interpolation_matrix(num_frames, x.shape[1]), x.dtype)
  return jnp.einsum("st,btc->bsc", matrix, x, precision=jax.lax.Precision.HIGHEST)


def reparameterize(key: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """x_v^AE = μ + exp(log σ) ⊙ ε with ε ~ 𝒩(0, I): a sample of 𝒩(μ, σ²) differentiable in μ and log σ."""
  return mu + jnp.exp(log_sigma) * jax.random.normal(key, mu.shape, mu.dtype)


class _ConvStack(nn.Module):
  """`Conv_k` to `width`, then `blocks` pre-LN residual blocks h + Conv_k(SiLU(LN(h))): the body shared by the
  encoder (after the interpolation) and the decoder (before it)."""
  width: int
  blocks: int
  kernel_size: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Conv(self.width, (self.kernel_size,), padding="SAME", name="conv_in")(x)
    for i in range(self.blocks):
      h = h + nn.Conv(self.width, (self.kernel_size,), padding="SAME", name=f"block_{i}")(
          nn.silu(layer_norm(f"block_{i}_norm")(h)))
    return h


class AlignmentVAE(nn.Module):
  """`AlignmentVAE(config.prior)`; `cfg` fields: `video_dim` (D_v), `latent_dim` (D_a), `width`, `blocks`,
  `kernel_size` (odd).

  `encode(video, latent_frames) -> (mu, log_sigma)`, `sample(key, mu, log_sigma) -> x_v^AE`,
  `decode(z, video_frames) -> x̂_v`; `__call__(video, key, latent_frames) -> (x̂_v, mu, log_sigma)` runs all three
  (and initialises every parameter). Joint tuning (Eq. 9) uses `encode` and `sample` only.
  """
  cfg: ml_collections.ConfigDict

  def setup(self):
    cfg = self.cfg
    if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
      raise ValueError(f"prior.kernel_size must be odd and positive, got {cfg.kernel_size}")
    if cfg.blocks < 0:
      raise ValueError(f"prior.blocks must be ≥ 0, got {cfg.blocks}")
    self.encoder = _ConvStack(cfg.width, cfg.blocks, cfg.kernel_size)
    self.decoder = _ConvStack(cfg.width, cfg.blocks, cfg.kernel_size)
    self.posterior_norm = layer_norm("posterior_norm")
    self.posterior_proj = nn.Conv(2 * cfg.latent_dim, (1,))
    self.output_norm = layer_norm("output_norm")
    self.output_proj = nn.Conv(cfg.video_dim, (1,))

  def encode(self, video: jax.Array, latent_frames: int) -> tuple[jax.Array, jax.Array]:
    """`video (B, T_v, D_v)` -> the posterior's (μ, log σ), each `(B, latent_frames, D_a)`."""
    if video.ndim != 3 or video.shape[-1] != self.cfg.video_dim:
      raise ValueError(f"video must be (B, T_v, prior.video_dim={self.cfg.video_dim}), got {video.shape}")
    h = self.encoder(interpolate_frames(video.astype(jnp.float32), latent_frames))
    mu, log_sigma = jnp.split(self.posterior_proj(nn.silu(self.posterior_norm(h))), 2, axis=-1)
    return mu, log_sigma

  def sample(self, key: jax.Array, mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
    """x_v^AE ~ 𝒩(μ, σ²) (`reparameterize`); uses no parameters."""
    return reparameterize(key, mu, log_sigma)

  def decode(self, z: jax.Array, video_frames: int) -> jax.Array:
    """`z (B, T_a, D_a)` -> the reconstructed video features x̂_v `(B, video_frames, D_v)`."""
    if z.ndim != 3 or z.shape[-1] != self.cfg.latent_dim:
      raise ValueError(f"z must be (B, T_a, prior.latent_dim={self.cfg.latent_dim}), got {z.shape}")
    h = interpolate_frames(self.decoder(z.astype(jnp.float32)), video_frames)
    return self.output_proj(nn.silu(self.output_norm(h)))

  def __call__(self, video: jax.Array, key: jax.Array, latent_frames: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`video (B, T_v, D_v)` -> (x̂_v `(B, T_v, D_v)`, μ, log σ `(B, latent_frames, D_a)`), through one sample."""
    mu, log_sigma = self.encode(video, latent_frames)
    return self.decode(self.sample(key, mu, log_sigma), video.shape[1]), mu, log_sigma


def parameter_count(prior_cfg: ml_collections.ConfigDict) -> int:
  """Parameters of the `AlignmentVAE` (from `jax.eval_shape` of `init`; nothing allocated)."""
  video = jnp.zeros((1, 2, prior_cfg.video_dim), jnp.float32)
  init = lambda v: AlignmentVAE(prior_cfg).init(jax.random.key(0), v, jax.random.key(1), 3)["params"]
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(jax.eval_shape(init, video)))

"""The alignment VAE's objective (Sec. 3.3, Eq. 4–7):

    L_VAE = λ_KL · KL(𝒩(μ, σ²) ‖ 𝒩(0, I)) + λ_rec · ‖x_v − x̂_v‖² + λ_con · L_con,   λ_KL = 8e-4, λ_rec = λ_con = 1

Reductions (the paper writes none): the KL and the reconstruction are means over all elements, (B, T_a, D_a) and
(B, T_v, D_v), so λ_KL does not change with the latent's size; a sum over the latent's elements would weigh the KL
T_a·D_a times more (13,760 at the paper's 215 × 64).

The contrastive term (Eq. 6) is InfoNCE with in-batch negatives at three temporal scales s ∈ {frame, clip, global}:

    L_con = Σ_s mean_i −log softmax_j(cos(f_s(x̂_i), f_s(x_j)) / τ)_i,        τ = 0.7

with x̂_i the reconstruction of example i and x_j the original features of every example j of the batch (the
positive j = i among them): one direction, as Eq. 6 writes it, reconstructions anchoring and originals as the
candidates. Eq. 6 writes a dot product; with its SimCLR citation and τ = 0.7 it reads as the cosine similarity
(raw dot products of 768-wide features would leave τ without effect). The pooling f_s over the T_v frames:

    frame   the features of one frame t ~ U{0, …, T_v − 1} (the paper's "mean pooling" of a single frame's
            features is the frame itself when a frame is one vector)
    clip    the mean of K = 8 adjacent frames from a start ~ U{0, …, T_v − K}; T_v < K is a ValueError
    global  the mean over all T_v frames

One frame and one clip start are drawn per call from its key and shared by the whole batch, so x̂_i, x_i and the
negatives are pooled over the same frames.
"""
import dataclasses

import jax
import jax.numpy as jnp

from avflow.flow.objectives import per_example_loss, settings_from_config

CONTRASTIVE_SCALES = ("frame", "clip", "global")


@dataclasses.dataclass(frozen=True)
class PriorLossConfig:
  """Weights and settings of L_VAE (Eq. 7); the defaults are the paper's."""
  kl_weight: float = 8e-4  # λ_KL
  reconstruction_weight: float = 1.0  # λ_rec
  contrastive_weight: float = 1.0  # λ_con
  temperature: float = 0.7  # τ of Eq. 6
  clip_frames: int = 8  # K, the clip scale's adjacent frames
  scales: tuple[str, ...] = CONTRASTIVE_SCALES  # S of Eq. 6

  def __post_init__(self):
    object.__setattr__(self, "scales", tuple(self.scales))  # a config list; a tuple keeps the config hashable
    if self.temperature <= 0.0:
      raise ValueError(f"prior_loss.temperature must be > 0, got {self.temperature}")
    if self.clip_frames < 1:
      raise ValueError(f"prior_loss.clip_frames must be ≥ 1, got {self.clip_frames}")
    unknown = [s for s in self.scales if s not in CONTRASTIVE_SCALES]
    if unknown or len(set(self.scales)) != len(self.scales):
      raise ValueError(f"prior_loss.scales={self.scales!r}; expected distinct names from {CONTRASTIVE_SCALES}")

  @classmethod
  def from_config(cls, cfg) -> "PriorLossConfig":
    return settings_from_config(cls, cfg, "prior_loss")


def _check_same_shape(video: jax.Array, reconstruction: jax.Array):
  if video.shape != reconstruction.shape:
    raise ValueError(f"the reconstruction {reconstruction.shape} must have the video features' shape {video.shape}")


def kl_divergence(mu: jax.Array, log_sigma: jax.Array) -> jax.Array:
  """KL(𝒩(μ, σ²) ‖ 𝒩(0, I)) (Eq. 4) per element, ½(μ² + σ² − 1) − log σ, averaged over all elements."""
  return jnp.mean(0.5 * (jnp.square(mu) + jnp.exp(2.0 * log_sigma) - 1.0) - log_sigma)


def reconstruction_loss(video: jax.Array, reconstruction: jax.Array) -> jax.Array:
  """‖x_v − x̂_v‖² (Eq. 5), the mean squared error over all elements."""
  _check_same_shape(video, reconstruction)
  return jnp.mean(per_example_loss(reconstruction, video))


def sample_windows(key: jax.Array, num_frames: int, clip_frames: int) -> tuple[jax.Array, jax.Array]:
  """The frame scale's frame ~ U{0, …, T_v − 1} and the clip scale's start ~ U{0, …, T_v − K}, as int32 scalars."""
  if num_frames < clip_frames:
    raise ValueError(f"the clip scale pools clip_frames={clip_frames} adjacent frames but the video has only "
                     f"T_v={num_frames}; lower prior_loss.clip_frames or drop 'clip' from prior_loss.scales")
  frame_key, clip_key = jax.random.split(key)
  return (jax.random.randint(frame_key, (), 0, num_frames),
          jax.random.randint(clip_key, (), 0, num_frames - clip_frames + 1))


def pool_scale(x: jax.Array, scale: str, frame: jax.Array, clip_start: jax.Array, clip_frames: int) -> jax.Array:
  """f_s: `x (B, T_v, D)` -> `(B, D)` at one scale (frame `frame`, or the K frames from `clip_start`)."""
  if scale == "frame":
    return jax.lax.dynamic_index_in_dim(x, frame, axis=1, keepdims=False)
  if scale == "clip":
    return jnp.mean(jax.lax.dynamic_slice_in_dim(x, clip_start, clip_frames, axis=1), axis=1)
  if scale == "global":
    return jnp.mean(x, axis=1)
  raise ValueError(f"unknown contrastive scale {scale!r}; expected one of {CONTRASTIVE_SCALES}")


def info_nce(anchors: jax.Array, candidates: jax.Array, temperature: float) -> jax.Array:
  """mean_i −log softmax_j(cos(anchors_i, candidates_j) / τ)_i for `anchors, candidates (B, D)`; the positive of
  anchor i is candidate i, the other B − 1 candidates are its negatives."""
  def unit(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-8)

  logits = jnp.einsum("id,jd->ij", unit(anchors), unit(candidates), precision=jax.lax.Precision.HIGHEST)
  log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
  return -jnp.mean(jnp.diagonal(log_probs))


def contrastive_loss(key: jax.Array, video: jax.Array, reconstruction: jax.Array, *, temperature: float = 0.7,
                     clip_frames: int = 8, scales: tuple[str, ...] = CONTRASTIVE_SCALES) -> jax.Array:
  """L_con (Eq. 6): Σ over `scales` of the InfoNCE of f_s(x̂_v) against f_s(x_v) of the batch."""
  video = video.astype(jnp.float32)
  reconstruction = reconstruction.astype(jnp.float32)
  _check_same_shape(video, reconstruction)
  frame, clip_start = sample_windows(key, video.shape[1], clip_frames if "clip" in scales else 1)
  pool = lambda x, scale: pool_scale(x, scale, frame, clip_start, clip_frames)
  return sum(info_nce(pool(reconstruction, s), pool(video, s), temperature) for s in scales)


def prior_loss(key: jax.Array, video: jax.Array, reconstruction: jax.Array, mu: jax.Array, log_sigma: jax.Array,
               cfg: PriorLossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_VAE (Eq. 7) of one `AlignmentVAE` pass (x̂_v, μ, log σ) on `video`; returns (loss, its terms `kl`,
  `reconstruction`, `contrastive`). `key` draws the contrastive frame and clip."""
  terms = {"kl": kl_divergence(mu, log_sigma), "reconstruction": reconstruction_loss(video, reconstruction)}
  weights = {"kl": cfg.kl_weight, "reconstruction": cfg.reconstruction_weight,
             "contrastive": cfg.contrastive_weight}
  if cfg.contrastive_weight and cfg.scales:
    terms["contrastive"] = contrastive_loss(key, video, reconstruction, temperature=cfg.temperature,
                                            clip_frames=cfg.clip_frames, scales=cfg.scales)
  return sum(weights[name] * value for name, value in terms.items()), terms

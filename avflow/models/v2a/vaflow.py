"""The VAFlow model (Sec. 3): the video features x_v, the alignment VAE that turns them into the flow's source
x_v^AE (`prior.AlignmentVAE`) and the DiT velocity field that reads them by cross-attention (`dit.VelocityDiT`).

`config.model` holds the DiT's fields (`presets.model_config`) and:

  conditioning  the video features. `kind="frame_grid"`: every frame average-pooled to a `grid` × `grid` grid of
                RGB cells in [−1, 1], D_v = 3·grid² (`frame_features`). The paper's features come from a frozen
                pretrained encoder (CLIP at 10 fps); the toy's are a fixed function of the frames for the same
                reason: the alignment VAE is pretrained on them and stays frozen while the estimator trains, so a
                frame encoder trained with the flow would move the frozen prior's input, and one trained with the
                VAE's own objective would shrink the features it has to reconstruct. The toy frames show an event
                by a saturated shape on a dull backdrop, which a coarse colour grid keeps.
  prior         the alignment VAE's `width`, `blocks`, `kernel_size` (its D_v and D_a are the DiT's).
  source        "prior": x0 = x_v^AE (Eq. 8); "gaussian": x0 ~ 𝒩(0, I), the flow baseline without a VAE.
  stage         which parts train (`frozen_prefixes`): "prior" the VAE alone (Eq. 7; the model has no DiT),
                "estimator" the DiT with the VAE frozen (Eq. 8), "joint" the DiT and the VAE's encoder (Eq. 9; the
                decoder, which Eq. 9 does not use, stays frozen); "vama" Foley-Flow's masked alignment (Eq. 4 of
                its paper; `vama.VAMA` and `vama.VideoEncoder`, no VAE, no DiT).
  vama          the masked alignment's fields (`presets.vama_config`).
  aligned_video True: the DiT reads the VAMA video encoder's per-frame tokens of the frame features instead of the
                features themselves ("aligned video features"); its parameters come from a VAMA run (`init_from`)
                and stay frozen, as the VAE does while the estimator trains: the flow's condition is what the
                alignment pretraining made it. Gaussian source only (a VAE prior reads the raw features).
  cross_attention  False: the DiT's cross-attention always gets the null condition ∅ (zero features, or the learned
                null), so it sees no video: with bias-free key and value projections each layer adds only its
                output bias, a constant. The video reaches the flow through the prior alone (Table 4, row 1), or
                through `video_injection`.
  video_injection  "none", or "dynamic" / "global": the video features added to the DiT's latent tokens
                (`dit.VelocityDiT`; Foley-Flow's per-segment conditioning and its clip-level baseline).

The model is built from what the stage uses: no VAE for the Gaussian source, no DiT while the VAE or the VAMA
pretrains, the VAMA video encoder only where something reads it.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.models.v2a.dit import VelocityDiT
from avflow.models.v2a.prior import AlignmentVAE
from avflow.models.v2a.vama import VAMA, VideoEncoder

SOURCES = ("gaussian", "prior")
STAGES = ("prior", "estimator", "joint", "vama")
CONDITIONINGS = ("frame_grid",)
# AlignmentVAE parameters that only its decoder path uses: frozen while jointly tuning (Eq. 9 drops the decoder).
DECODER_PARAMS = ("decoder", "output_norm", "output_proj")


def check_config(model_cfg: ml_collections.ConfigDict) -> None:
  """A ValueError naming the `config.model` field that does not fit the others."""
  if model_cfg.source not in SOURCES:
    raise ValueError(f"model.source={model_cfg.source!r}; expected one of {SOURCES}")
  if model_cfg.stage not in STAGES:
    raise ValueError(f"model.stage={model_cfg.stage!r}; expected one of {STAGES}")
  if model_cfg.source == "gaussian" and model_cfg.stage in ("prior", "joint"):
    raise ValueError(f"model.stage={model_cfg.stage!r} trains the alignment VAE, which the Gaussian source "
                     "(model.source='gaussian') does not have; expected model.stage='estimator'")
  if model_cfg.aligned_video and (model_cfg.stage, model_cfg.source) != ("estimator", "gaussian"):
    raise ValueError("model.aligned_video=True conditions the Gaussian-source DiT on the VAMA video encoder; "
                     f"expected model.stage='estimator' and model.source='gaussian', got {model_cfg.stage!r} and "
                     f"{model_cfg.source!r}")
  cond = model_cfg.conditioning
  if cond.kind not in CONDITIONINGS:
    raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")
  if model_cfg.video_dim != 3 * cond.grid ** 2:
    raise ValueError(f"model.video_dim={model_cfg.video_dim}, but a {cond.grid} × {cond.grid} grid of RGB cells "
                     f"(model.conditioning.grid) gives {3 * cond.grid ** 2} features per frame")


def describe_conditioning(model_cfg: ml_collections.ConfigDict) -> str:
  """The video's ways in (Sec. 3.2): as the flow's source, through cross-attention and (Foley-Flow) added to the
  latent tokens, e.g. "V (4 × 4 colour grid per frame; x0 from the video prior; cross-attention)"."""
  cond = model_cfg.conditioning
  if cond.kind not in CONDITIONINGS:
    raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")
  if model_cfg.stage == "vama":
    return f"V ({cond.grid} × {cond.grid} colour grid per frame; VAMA video encoder, masked audio reconstruction)"
  source = "x0 from the video prior" if model_cfg.source == "prior" else "x0 ~ N(0, I)"
  aligned = "; VAMA-aligned tokens" if model_cfg.aligned_video else ""
  attention = "cross-attention" if model_cfg.cross_attention else "no cross-attention"
  injection = {"none": "", "dynamic": "; added per latent frame (dynamic)",
               "global": "; added mean-pooled (global)"}[model_cfg.video_injection]
  return f"V ({cond.grid} × {cond.grid} colour grid per frame{aligned}; {source}; {attention}{injection})"


def frame_features(frames: jax.Array, grid: int) -> jax.Array:
  """x_v: frames `(B, F, S, S, 3)` uint8 -> `(B, F, 3·grid²)` float32, each frame average-pooled to `grid` × `grid`
  cells of S / grid pixels, scaled from [0, 255] to [−1, 1], flattened row by row (R, G, B per cell)."""
  b, f, h, w, c = frames.shape
  if h % grid or w % grid:
    raise ValueError(f"frames of {h} × {w} pixels do not split into a {grid} × {grid} grid "
                     "(model.conditioning.grid must divide data.image_size)")
  x = frames.astype(jnp.float32).reshape(b, f, grid, h // grid, grid, w // grid, c)
  return (x.mean(axis=(3, 5)) / 127.5 - 1.0).reshape(b, f, grid * grid * c)


def prior_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `AlignmentVAE` config: `model.prior` with the DiT's video and latent widths."""
  return ml_collections.ConfigDict(dict(model_cfg.prior, video_dim=model_cfg.video_dim,
                                        latent_dim=model_cfg.latent_dim))


def frozen_prefixes(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The parameter subtrees that `model.stage` keeps fixed (and the VAMA video encoder the DiT reads)."""
  if model_cfg.aligned_video:
    return ("video_encoder",)
  if model_cfg.source != "prior" or model_cfg.stage in ("prior", "vama"):
    return ()
  if model_cfg.stage == "estimator":
    return ("prior",)
  return tuple(f"prior/{name}" for name in DECODER_PARAMS)


def reads_video_encoder(model_cfg: ml_collections.ConfigDict) -> bool:
  """Whether the model's video features are the VAMA video encoder's tokens (stage "vama", `aligned_video`)."""
  return model_cfg.stage == "vama" or model_cfg.aligned_video


class VAFlow(nn.Module):
  """`VAFlow(config.model)`: `video(frames) -> x_v`; with the prior, `encode(x_v, T_a) -> (μ, log σ)` and
  `reconstruct(x_v, key, T_a) -> (x̂_v, μ, log σ)`; with the DiT, `velocity(x_t, t, x_v, drop) -> v`; with the
  VAMA, `reconstruct_masked(x_a, x_v, mask) -> x̂_a`. `__call__(frames, latent_frames)` runs every part the model
  has (to initialise them)."""
  cfg: ml_collections.ConfigDict

  def setup(self):
    check_config(self.cfg)
    if self.cfg.source == "prior" and self.cfg.stage != "vama":
      self.prior = AlignmentVAE(prior_config(self.cfg))
    if self.cfg.stage not in ("prior", "vama"):
      self.dit = VelocityDiT(self.cfg)
    if reads_video_encoder(self.cfg):
      self.video_encoder = VideoEncoder(self.cfg.vama, self.cfg.video_dim)
    if self.cfg.stage == "vama":
      self.vama = VAMA(self.cfg.vama, self.cfg.latent_dim)

  def video(self, frames: jax.Array) -> jax.Array:
    """x_v: the frame features, through the VAMA video encoder where the model has it."""
    features = frame_features(frames, self.cfg.conditioning.grid)
    return self.video_encoder(features) if reads_video_encoder(self.cfg) else features

  def encode(self, video: jax.Array, latent_frames: int) -> tuple[jax.Array, jax.Array]:
    return self.prior.encode(video, latent_frames)

  def reconstruct(self, video: jax.Array, key: jax.Array, latent_frames: int):
    return self.prior(video, key, latent_frames)

  def velocity(self, x_t: jax.Array, t: jax.Array, video: jax.Array, drop: jax.Array) -> jax.Array:
    """v(x_t, t, x_v) with the examples marked in `drop (B,)` given ∅ (without cross-attention, the blocks give ∅
    to every example)."""
    return self.dit(x_t, t, video, drop)

  def reconstruct_masked(self, x_a: jax.Array, video: jax.Array, mask: jax.Array) -> jax.Array:
    return self.vama(x_a, video, mask)

  def __call__(self, frames: jax.Array, latent_frames: int) -> list:
    video = self.video(frames)
    b = video.shape[0]
    outputs = []
    x_t = jnp.zeros((b, latent_frames, self.cfg.latent_dim), jnp.float32)
    if self.cfg.stage == "vama":
      return [self.reconstruct_masked(x_t, video, jnp.zeros((b, latent_frames), bool))]
    if self.cfg.source == "prior":
      outputs.append(self.reconstruct(video, jax.random.key(0), latent_frames))
    if self.cfg.stage != "prior":
      outputs.append(self.velocity(x_t, jnp.zeros((b,), jnp.float32), video, jnp.zeros((b,), bool)))
    return outputs

"""The VAFlow velocity field: a 1-D diffusion transformer (DiT) over audio latents (Sec. 3.2 "Velocity Estimator",
Sec. 4.1), adapted from Stable Audio Open's DiT without its duration conditioning.

    h = Dense(x_t)                           (B, T_a, width)       input projection of the latent state
    τ = Dense(SiLU(Dense(sinusoid(t))))      (B, width)            time embedding (`timestep_embedding`, t·1000)
    h = [h, τ]                               (B, T_a + 1, width)   the time embedding as one extra token, last
    h = depth × block(h, c)                  pre-LN: self-attention with 1-D RoPE, cross-attention to c, GEGLU
    v = Dense₀(LN(h))[:, :T_a]               (B, T_a, D_a)         the first T_a output tokens are the velocity

c = x_v (B, T_v, D_v) are the video features; the cross-attention projects its keys and values from them directly
(the paper restricts the key/value inputs to the original video features). Classifier-free guidance (Eq. 10) needs
the null condition ∅: `drop (B,)` marks the examples that get it, in training (VAFlow drops 10 %) and in the ∅
branch of the sampler. By default ∅ is zero features (the paper's); with `model.learned_null=True` it is a learned
D_v-vector repeated over the T_v frames (as MMAudio's empty-condition tokens; initialised to zeros, so training
starts from the paper's ∅). With zero features and bias-free key/value projections the cross-attention adds exactly
nothing.

`model.video_injection` adds the video to the latent tokens as well, before the blocks (Foley-Flow's conditioning,
which the cross-attention need not carry: `model.cross_attention=False` gives the blocks ∅ for every example):

    "none"     nothing (VAFlow)
    "dynamic"  h_i += W·x̃_v,i with x̃_v = x_v linearly interpolated in time from T_v to the T_a latent frames
               (`injected_video`; half-pixel centres, as the alignment VAE's `prior.interpolate_frames`): latent frame
               i reads the two video frames around its time, each audio segment its own video segment
    "global"   h_i += W·mean_j x_v,j: one clip-level vector for every latent frame (the baseline)

W (`video_proj`, D_v -> width) is bias-free and zero-initialised: at initialisation the velocity is the model's
without injection to the bit, and the null condition (zero features) injects exactly zero.

Choices the paper leaves open (it gives neither layer counts nor widths):
- The time token is appended after the audio tokens, which keep positions 0..T_a−1; the paper writes the input as
  (T_a + 1) × D_a, and like Stable Audio Open's transformer (which prepends its conditioning token after its input
  projection) the token joins the sequence at the model width.
- RoPE rotates the first `rope_dim` channels of each self-attention head (Stable Audio Open: max(d_head / 2, 32),
  i.e. 32 of 64); the cross-attention has no positions.
- The blocks are `avflow.nn.attention.BasicTransformerBlock`s: bias-free q/k/v, LayerNorms with bias, a GEGLU
  feed-forward of 4·width (Stable Audio Open gates with SiLU; the parameter count is the same).
- The output projection is zero-initialised after a final LayerNorm, so v = 0 at initialisation.
The blocks run as one `nn.scan` (parameters stacked along a leading `depth` axis). `residuals (depth, B, T_a + 1,
width)`, optional, are added to the blocks' outputs, one slice per block (NAG's ControlNet features, Sec. 3.3).
"""
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avflow.models.v2a.prior import interpolate_frames
from avflow.nn.attention import BasicTransformerBlock, layer_norm
from avflow.nn.embeddings import timestep_embedding

VIDEO_INJECTIONS = ("none", "dynamic", "global")


def injected_video(video: jax.Array, latent_frames: int, injection: str) -> jax.Array:
  """The video features `(B, T_v, D_v)` the latent tokens get (`model.video_injection`): "dynamic" interpolated
  linearly to `(B, latent_frames, D_v)`, "global" mean-pooled over time to `(B, 1, D_v)` (added to every token)."""
  if injection == "dynamic":
    return interpolate_frames(video, latent_frames)
  if injection == "global":
    return video.mean(axis=1, keepdims=True)
  raise ValueError(f"model.video_injection={injection!r} injects nothing; expected 'dynamic' or 'global'")


def _check_config(cfg: ml_collections.ConfigDict) -> int:
  """The head width of `cfg` (`config.model`), after checking the fields it derives from."""
  if cfg.width % cfg.heads:
    raise ValueError(f"model.width={cfg.width} is not divisible by model.heads={cfg.heads}")
  d_head = cfg.width // cfg.heads
  if cfg.rope_dim % 2 or not 0 < cfg.rope_dim <= d_head:
    raise ValueError(f"model.rope_dim must be even and in (0, {d_head}] (the head width), got {cfg.rope_dim}")
  if cfg.depth < 1:
    raise ValueError(f"model.depth must be at least 1, got {cfg.depth}")
  if cfg.get("video_injection", "none") not in VIDEO_INJECTIONS:
    raise ValueError(f"model.video_injection={cfg.video_injection!r}; expected one of {VIDEO_INJECTIONS}")
  return d_head


class VelocityDiT(nn.Module):
  """`VelocityDiT(config.model)(x_t, t, video, drop=None) -> v`; `cfg` fields: `latent_dim` (D_a), `video_dim`
  (D_v), `width`, `depth`, `heads`, `rope_dim`, `rope_base`, `time_embed_dim`, `learned_null`, and optionally
  `video_injection` (default "none") and `cross_attention` (default True)."""
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, video: jax.Array, drop: Optional[jax.Array] = None,
               residuals: Optional[jax.Array] = None) -> jax.Array:
    """`x_t (B, T_a, D_a)`, `t (B,)` in [0, 1], `video (B, T_v, D_v)`, `drop (B,)` bool (True: the null condition
    ∅ instead of `video`), `residuals (depth, B, T_a + 1, width)` added to the blocks' outputs -> the velocity
    `(B, T_a, D_a)`."""
    cfg = self.cfg
    d_head = _check_config(cfg)
    b, frames, _ = x_t.shape
    if x_t.shape[-1] != cfg.latent_dim:
      raise ValueError(f"x_t has {x_t.shape[-1]} channels but model.latent_dim is {cfg.latent_dim}")
    if video.ndim != 3 or video.shape[0] != b or video.shape[-1] != cfg.video_dim:
      raise ValueError(f"video must be ({b}, T_v, model.video_dim={cfg.video_dim}), got {video.shape}")
    if t.shape != (b,):
      raise ValueError(f"t must be ({b},), got {t.shape}")
    video = video.astype(jnp.float32)
    null = (self.param("null_video", nn.initializers.zeros_init(), (cfg.video_dim,)) if cfg.learned_null
            else jnp.zeros((cfg.video_dim,), jnp.float32))
    if drop is not None:
      video = jnp.where(jnp.asarray(drop, bool).reshape(b, 1, 1), null, video)

    h = nn.Dense(cfg.width, name="input_proj")(x_t.astype(jnp.float32))
    injection = cfg.get("video_injection", "none")
    if injection != "none":
      h = h + nn.Dense(cfg.width, use_bias=False, kernel_init=nn.initializers.zeros_init(), name="video_proj")(
          injected_video(video, frames, injection))
    tau = nn.Dense(cfg.width, name="time_mlp_0")(timestep_embedding(t, cfg.time_embed_dim))
    tau = nn.Dense(cfg.width, name="time_mlp_1")(nn.silu(tau))
    h = jnp.concatenate([h, tau[:, None, :]], axis=1)
    blocks = BasicTransformerBlock(cfg.heads, d_head, cfg.rope_dim, cfg.rope_base, name="blocks")
    context = video if cfg.get("cross_attention", True) else jnp.broadcast_to(null, video.shape)
    if residuals is None:
      scan = nn.scan(lambda block, carry, context: (block(carry, context), None), variable_axes={"params": 0},
                     split_rngs={"params": True}, in_axes=nn.broadcast, length=cfg.depth)
      h, _ = scan(blocks, h, context)
    else:
      if residuals.shape != (cfg.depth, *h.shape):
        raise ValueError(f"residuals must be {(cfg.depth, *h.shape)} (model.depth, B, T_a + 1, width), got "
                         f"{residuals.shape}")
      scan = nn.scan(lambda block, carry, context, r: (block(carry, context) + r, None), variable_axes={"params": 0},
                     split_rngs={"params": True}, in_axes=(nn.broadcast, 0), length=cfg.depth)
      h, _ = scan(blocks, h, context, residuals.astype(h.dtype))
    zeros = nn.initializers.zeros_init()
    out = nn.Dense(cfg.latent_dim, kernel_init=zeros, bias_init=zeros, name="output_proj")
    return out(layer_norm("norm_out")(h[:, :frames]))


def abstract_params(model_cfg: ml_collections.ConfigDict):
  """The `VelocityDiT`'s parameters as ShapeDtypeStructs (`jax.eval_shape` of `init`; nothing allocated)."""
  x_t = jnp.zeros((1, 2, model_cfg.latent_dim), jnp.float32)
  video = jnp.zeros((1, 1, model_cfg.video_dim), jnp.float32)
  init = lambda x, t, v: VelocityDiT(model_cfg).init(jax.random.key(0), x, t, v)["params"]
  return jax.eval_shape(init, x_t, jnp.zeros((1,), jnp.float32), video)


def parameter_counts(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts per part, from `abstract_params`: `input` (projection), `time` (the time MLP), `blocks`,
  `output` (final LayerNorm and projection), `null` (the learned null condition, 0 without), `injection` (the
  video injection's projection, 0 without) and `total`."""
  sizes = {name: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(subtree))
           for name, subtree in abstract_params(model_cfg).items()}
  counts = {"input": sizes["input_proj"], "time": sizes["time_mlp_0"] + sizes["time_mlp_1"],
            "blocks": sizes["blocks"], "output": sizes["norm_out"] + sizes["output_proj"],
            "null": sizes.get("null_video", 0), "injection": sizes.get("video_proj", 0)}
  counts["total"] = sum(sizes.values())
  return counts

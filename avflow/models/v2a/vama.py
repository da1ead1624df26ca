"""Foley-Flow's Video-Audio Masking Alignment (VAMA, Sec. 3.2, Eq. 4): masked reconstruction of audio segments from
the unmasked audio and the per-frame video tokens, which pretrains the video encoder the flow is conditioned on.

    m = segment_mask(key, T_a)                         (B, T_a)        `round(ratio · S)` of the S segments of
                                                                       `segment` latent frames, drawn per example
    e = VideoEncoder(x_v)                              (B, T_v, D_v)   the aligned per-frame video tokens
    h = m ? [MASK] : Dense(x_a),  h += τ(time)         (B, T_a, width) the masked segments replaced by a learned token
    h = depth × block(h, Dense(e) + τ(time))           self-attention over the audio tokens (RoPE), cross-attention
                                                                       to the video tokens, GEGLU
    x̂_a = Dense(LN(h))                                 (B, T_a, D_a)
    L_VAMA = mean over the masked positions of ‖x̂_a − x_a‖²    (Eq. 4)

τ(time) is a sinusoid of each token's centre time in the clip, (i + ½)/T for token i of T, through one Dense shared by
the two streams: the audio and video tokens of the same instant get the same code, so the cross-attention can find
the frames of a masked segment (the paper does not say how its tokens are positioned). The video encoder is a small
pre-LN self-attention transformer over the frames (RoPE) whose output has the frame features' width D_v, so the flow's
DiT reads the aligned tokens where it read the raw ones (`model.aligned_video`).

The paper gives no sizes (`presets.vama_config`); its features are AudioMAE's and EVA-CLIP's, ours the codec latents
and the frame colour grids.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.flow.objectives import per_example_loss
from avflow.nn.attention import Attention, BasicTransformerBlock, GEGLUFeedForward, layer_norm
from avflow.nn.embeddings import timestep_embedding


def num_masked_segments(frames: int, segment: int, ratio: float) -> tuple[int, int]:
  """(segments, masked): `ceil(frames / segment)` segments (the last may be shorter), of which round(ratio ·
  segments) (halves up) are masked; a ValueError unless at least one segment is masked and one is kept."""
  if segment < 1:
    raise ValueError(f"model.vama.segment must be at least 1 latent frame, got {segment}")
  segments = -(-frames // segment)
  masked = int(ratio * segments + 0.5)
  if not 0 < masked < segments:
    raise ValueError(f"model.vama.ratio={ratio} masks {masked} of the {segments} segments of {segment} latent "
                     f"frames in {frames}; expected at least one masked and one kept")
  return segments, masked


def segment_mask(key: jax.Array, batch: int, frames: int, segment: int, ratio: float) -> jax.Array:
  """`(batch, frames)` bool, True where masked: per example, `num_masked_segments` segments of `segment` latent
  frames drawn uniformly without replacement from `key`."""
  segments, masked = num_masked_segments(frames, segment, ratio)
  ranks = jnp.argsort(jax.random.uniform(key, (batch, segments)), axis=-1).argsort(axis=-1)
  return (ranks < masked)[:, jnp.arange(frames) // segment]


def masked_l2(prediction: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """L_VAMA (Eq. 4): the mean of (x̂_a − x_a)² over the masked latent frames `mask (B, T_a)` and their channels."""
  return jnp.mean(per_example_loss(prediction, target, "l2", mask[..., None]))


def _time_code(frames: int, width: int) -> jax.Array:
  """`(frames, width)` sinusoids of the frames' centre times (i + ½)/frames in [0, 1]."""
  return timestep_embedding((jnp.arange(frames) + 0.5) / frames, width)


class VideoEncoder(nn.Module):
  """`VideoEncoder(config.model.vama, video_dim)(x_v (B, T_v, D_v)) -> (B, T_v, D_v)`: Dense to `width`,
  `encoder_depth` pre-LN blocks of self-attention (RoPE on `rope_dim` channels per head) and GEGLU, LN, Dense back
  to D_v."""
  cfg: ml_collections.ConfigDict
  video_dim: int

  @nn.compact
  def __call__(self, video: jax.Array) -> jax.Array:
    cfg = self.cfg
    h = nn.Dense(cfg.width, name="input_proj")(video.astype(jnp.float32))
    for i in range(cfg.encoder_depth):
      h = h + Attention(cfg.heads, cfg.width // cfg.heads, cfg.rope_dim, name=f"attn_{i}")(
          layer_norm(f"norm_attn_{i}")(h))
      h = h + GEGLUFeedForward(4 * cfg.width, name=f"ff_{i}")(layer_norm(f"norm_ff_{i}")(h))
    return nn.Dense(self.video_dim, name="output_proj")(layer_norm("norm_out")(h))


class VAMA(nn.Module):
  """`VAMA(config.model.vama, latent_dim)(x_a (B, T_a, D_a), video (B, T_v, D_v), mask (B, T_a)) -> x̂_a`: the
  masked-segment reconstructor; `cfg` fields `width`, `depth`, `heads`, `rope_dim`. The masked frames of `x_a` never
  reach the output (they are replaced by the mask token before anything reads them)."""
  cfg: ml_collections.ConfigDict
  latent_dim: int

  @nn.compact
  def __call__(self, x_a: jax.Array, video: jax.Array, mask: jax.Array) -> jax.Array:
    cfg = self.cfg
    if cfg.width % cfg.heads:
      raise ValueError(f"model.vama.width={cfg.width} is not divisible by model.vama.heads={cfg.heads}")
    time_proj = nn.Dense(cfg.width, name="time_proj")
    h = nn.Dense(cfg.width, name="audio_proj")(x_a.astype(jnp.float32))
    token = self.param("mask_token", nn.initializers.normal(0.02), (cfg.width,))
    h = jnp.where(mask[..., None], token, h) + time_proj(_time_code(h.shape[1], cfg.width))
    context = nn.Dense(cfg.width, name="video_proj")(video) + time_proj(_time_code(video.shape[1], cfg.width))
    for i in range(cfg.depth):
      h = BasicTransformerBlock(cfg.heads, cfg.width // cfg.heads, cfg.rope_dim, name=f"block_{i}")(h, context)
    return nn.Dense(self.latent_dim, name="output_proj")(layer_norm("norm_out")(h))

"""NAG (step-by-step video-to-audio with negative audio guidance): the caption-and-video-conditioned DiT and its
ControlNet branch on the audio generated so far (Sec. 3.3).

    text  = TextEncoder(tokens)                (B, N, D_v)   word embeddings + positions, one self-attention block
    c     = [x_v, text]                        (B, T_v + N, D_v)   the DiT's cross-attention context
    u(V, C)         = VelocityDiT(x_t, t, c)                           the frozen base (MMAudio's role)
    u_{θ,ψ}(V, ∅, a) = VelocityDiT(x_t, t, c, residuals=ControlNet(x_t, t, c, a))

The base flows from 𝒩(0, I) (MMAudio-like). Its null conditions are zero features: ∅ video (`drop_video`) and ∅
text (`drop_text`) each replace their tokens by zeros, so the joint null u(∅, ∅) that training drops to sees a zero
context, and the negative-prompting baseline's u(∅, C_neg) keeps the text alone. The text vocabulary is the words
of the toy foley captions (`WORDS`; anything else is one unknown word).

The ControlNet (SD3.5-style, trainable ψ): its own input projections of x_t and of the conditional audio latent a
(x̃^{:k−1}, the tracks so far), its own time token, then `model.depth` transformer blocks reading the same context;
block i's output goes through a zero-initialised Dense and is added to the output of the base's block i. At
initialisation u_{θ,ψ}(V, ∅, a) is therefore the base's u(V, ∅) exactly.

`model.stage`: "base" trains the text encoder and the DiT (no ControlNet); "control" adds the ControlNet and keeps
the base (text encoder and DiT) frozen (`frozen_prefixes`), starting from a base run (`init_from`).
"""
import re
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avflow.data import foley
from avflow.models.v2a.dit import VelocityDiT, _check_config
from avflow.models.v2a.vaflow import CONDITIONINGS, frame_features
from avflow.nn.attention import Attention, BasicTransformerBlock, GEGLUFeedForward, layer_norm
from avflow.nn.embeddings import timestep_embedding

STAGES = ("base", "control")
PAD, UNKNOWN = 0, 1
# The toy captions' words (`foley.PHRASES`, the counts, "then" between classes), after the padding and unknown ids.
WORDS = ("<pad>", "<unk>", *sorted({w for text in (*foley.PHRASES, "twice three times then")
                                    for w in text.split()}))


def tokenize(captions: Sequence[str], length: int) -> np.ndarray:
  """Word ids `(len(captions), length)` int32 of `WORDS`: lower-cased words (punctuation dropped), unknown words
  `UNKNOWN`, cut or padded with `PAD` to `length`."""
  ids = {w: i for i, w in enumerate(WORDS)}
  out = np.full((len(captions), length), PAD, np.int32)
  for row, text in zip(out, captions):
    words = [ids.get(w, UNKNOWN) for w in re.findall(r"[a-z0-9]+", text.lower())][:length]
    row[:len(words)] = words
  return out


def check_config(model_cfg: ml_collections.ConfigDict) -> None:
  """A ValueError naming the `config.model` field of a NAG config that does not fit the others."""
  _check_config(model_cfg)
  if model_cfg.stage not in STAGES:
    raise ValueError(f"model.stage={model_cfg.stage!r}; expected one of {STAGES}")
  if model_cfg.conditioning.kind not in CONDITIONINGS:
    raise ValueError(f"model.conditioning.kind={model_cfg.conditioning.kind!r}; expected one of {CONDITIONINGS}")
  if model_cfg.video_dim != 3 * model_cfg.conditioning.grid ** 2:
    raise ValueError(f"model.video_dim={model_cfg.video_dim}, but a {model_cfg.conditioning.grid} × "
                     f"{model_cfg.conditioning.grid} grid of RGB cells gives {3 * model_cfg.conditioning.grid ** 2}")
  if model_cfg.text.width % model_cfg.text.heads:
    raise ValueError(f"model.text.width={model_cfg.text.width} is not divisible by model.text.heads="
                     f"{model_cfg.text.heads}")


def frozen_prefixes(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The base (text encoder, DiT) while the ControlNet trains; nothing while the base does."""
  return ("text", "dit") if model_cfg.stage == "control" else ()


class TextEncoder(nn.Module):
  """Word ids `(B, N)` -> caption tokens `(B, N, out_dim)`: embeddings + learned positions, one pre-LN block
  (self-attention, GEGLU), a final LayerNorm and a projection to the video features' width D_v."""
  cfg: ml_collections.ConfigDict  # `model.text`: tokens, width, heads
  out_dim: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    if tokens.shape[-1] != cfg.tokens:
      raise ValueError(f"captions of {tokens.shape[-1]} word ids; model.text.tokens is {cfg.tokens}")
    h = nn.Embed(len(WORDS), cfg.width, name="embed")(tokens)
    h = h + self.param("positions", nn.initializers.normal(0.02), (cfg.tokens, cfg.width))
    h = h + Attention(cfg.heads, cfg.width // cfg.heads, name="attn")(layer_norm("norm1")(h))
    h = h + GEGLUFeedForward(4 * cfg.width, name="ff")(layer_norm("norm2")(h))
    return nn.Dense(self.out_dim, name="proj")(layer_norm("norm_out")(h))


class _ControlBlock(nn.Module):
  """One ControlNet block: `(h, context) -> (h', Dense₀(h'))`, the second the residual for the base's block."""
  heads: int
  d_head: int
  rope_dim: int
  rope_base: float

  @nn.compact
  def __call__(self, h, context):
    h = BasicTransformerBlock(self.heads, self.d_head, self.rope_dim, self.rope_base, name="block")(h, context)
    zeros = nn.initializers.zeros_init()
    return h, nn.Dense(h.shape[-1], kernel_init=zeros, bias_init=zeros, name="zero_proj")(h)


class ControlNet(nn.Module):
  """`ControlNet(config.model)(x_t, t, context, audio) -> residuals (depth, B, T_a + 1, width)` for
  `VelocityDiT(..., residuals=)`: zero at initialisation."""
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, x_t: jax.Array, t: jax.Array, context: jax.Array, audio: jax.Array) -> jax.Array:
    cfg = self.cfg
    if audio.shape != x_t.shape:
      raise ValueError(f"the conditional audio latent must be shaped like x_t {x_t.shape}, got {audio.shape}")
    h = nn.Dense(cfg.width, name="input_proj")(x_t) + nn.Dense(cfg.width, name="audio_proj")(audio)
    tau = nn.Dense(cfg.width, name="time_mlp_0")(timestep_embedding(t, cfg.time_embed_dim))
    tau = nn.Dense(cfg.width, name="time_mlp_1")(nn.silu(tau))
    h = jnp.concatenate([h, tau[:, None, :]], axis=1)
    scan = nn.scan(lambda block, carry, c: block(carry, c), variable_axes={"params": 0},
                   split_rngs={"params": True}, in_axes=nn.broadcast, length=cfg.depth)
    _, residuals = scan(_ControlBlock(cfg.heads, cfg.width // cfg.heads, cfg.rope_dim, cfg.rope_base, name="blocks"),
                        h, context)
    return residuals


class NAGFoley(nn.Module):
  """`NAGFoley(config.model)`: `video(frames) -> x_v`; `velocity(x_t, t, cond) -> u` with `cond` a dict of `video
  (B, T_v, D_v)`, `tokens (B, N)`, `drop_video (B,)`, `drop_text (B,)` and, for the ControlNet branch, `audio (B, T_a,
  D_a)` (the conditional audio latent a). `__call__(frames, tokens, latent_frames)` runs every part (to initialise)."""
  cfg: ml_collections.ConfigDict

  def setup(self):
    check_config(self.cfg)
    self.text = TextEncoder(self.cfg.text, self.cfg.video_dim)
    self.dit = VelocityDiT(self.cfg)
    if self.cfg.stage == "control":
      self.control = ControlNet(self.cfg)

  def video(self, frames: jax.Array) -> jax.Array:
    return frame_features(frames, self.cfg.conditioning.grid)

  def context(self, cond: dict) -> jax.Array:
    """[x_v, text] `(B, T_v + N, D_v)`, each replaced by zeros (∅) in the examples its drop marks."""
    video, text = cond["video"].astype(jnp.float32), self.text(cond["tokens"])
    b = video.shape[0]
    video = jnp.where(jnp.asarray(cond["drop_video"], bool).reshape(b, 1, 1), 0.0, video)
    text = jnp.where(jnp.asarray(cond["drop_text"], bool).reshape(b, 1, 1), 0.0, text)
    return jnp.concatenate([video, text], axis=1)

  def velocity(self, x_t: jax.Array, t: jax.Array, cond: dict) -> jax.Array:
    """u(x_t, t, V, C), or with `cond["audio"]` the ControlNet branch u_{θ,ψ}(x_t, t, V, C, a)."""
    context = self.context(cond)
    residuals = None
    if "audio" in cond:
      if self.cfg.stage != "control":
        raise ValueError("a conditional audio latent needs the ControlNet (model.stage='control')")
      residuals = self.control(x_t.astype(jnp.float32), t, context, cond["audio"].astype(jnp.float32))
    return self.dit(x_t, t, context, None, residuals)

  def __call__(self, frames: jax.Array, tokens: jax.Array, latent_frames: int) -> jax.Array:
    video = self.video(frames)
    b = video.shape[0]
    x_t = jnp.zeros((b, latent_frames, self.cfg.latent_dim), jnp.float32)
    cond = {"video": video, "tokens": tokens, "drop_video": jnp.zeros((b,), bool), "drop_text": jnp.zeros((b,), bool)}
    if self.cfg.stage == "control":
      cond["audio"] = x_t
    return self.velocity(x_t, jnp.zeros((b,), jnp.float32), cond)

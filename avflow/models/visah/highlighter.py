"""VisAH-FM and VisAH as one Flax module: a conditioner (frames, audio, text → context tokens) and the network u.

VisAH-FM's velocity is v(x_t, t, c) = u(x_t, t, c) − x0 with warm start (Sec. 3.1: u keeps predicting the
well-balanced waveform, so the pretrained VisAH is a good start; the paper writes x0 − u under the opposite sign
convention) and v = u without it (Table 7). The discriminative VisAH regresses x̂1 = u(x0, c) directly.

Conditioning kinds (`model.conditioning.kind`, Table 2/9):
  frames_tiny   a small trainable frame encoder (toy runs without a pretrained image model)
  features      stored per-frame features from the records (`context`: CLIP image features, row "✗ V", or
                T5 text features, row "✗ T")
  clip          CLIP image features of the frames, computed in the graph (frozen CLIP)
  clip_adapter  CLIP with the cross-modal adapter after layer k fed with CLAP tokens of x0 ("A") and/or the
                stored text tokens ("T"): rows "✓ V+A" (the paper's default), "✓ V+T", "✓ V+T+A" (Eq. 6–7)
"""
import flax.linen as nn
import jax
import ml_collections

from avflow.models.clap import CLAPAudio, clap_config
from avflow.models.clip import CLIPVision, clip_config
from avflow.models.frames import TinyFrameEncoder
from avflow.models.visah.network import VisAH

CONDITIONINGS = ("frames_tiny", "features", "clip", "clip_adapter")
MODALITIES = ("audio", "text")


def describe_conditioning(model_cfg) -> str:
  """What a model conditions on, in the paper's terms: e.g. "V+A (CLIP with the adapter fed by CLAP audio)"."""
  cond = model_cfg.conditioning
  if cond.kind == "clip_adapter":
    fed = [(letter, name) for modality, letter, name in (("text", "T", "stored T5 text"), ("audio", "A", "CLAP audio"))
           if modality in cond.modalities]
    return ("+".join(["V"] + [letter for letter, _ in fed])
            + f" (CLIP with the adapter fed by {' and '.join(name for _, name in fed)})")
  if cond.kind == "features":
    return "T (stored T5 features)" if cond.features_key == "text" else "V (stored CLIP features, no adapter)"
  if cond.kind == "clip":
    return "V (CLIP, no adapter)"
  if cond.kind == "frames_tiny":
    return "V (tiny trainable frame encoder)"
  raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")


def pretrained_encoders(model_cfg) -> tuple[str, ...]:
  """The pretrained encoders the conditioning runs, named as their parameter subtrees: `clip`, `clap`."""
  cond = model_cfg.conditioning
  if cond.kind not in ("clip", "clip_adapter"):
    return ()
  return ("clip", "clap") if cond.kind == "clip_adapter" and "audio" in cond.modalities else ("clip",)


def frozen_prefixes(model_cfg) -> tuple[str, ...]:
  """Parameter subtrees that never train: the pretrained CLIP tower and the CLAP encoder (Sec. 2.2.2)."""
  encoders = pretrained_encoders(model_cfg)
  return (("clip/vision_model", "clip/visual_projection") if "clip" in encoders else ()) + \
      (("clap",) if "clap" in encoders else ())


class Highlighter(nn.Module):
  """Module methods: `encode` (once per clip), `velocity` (every flow step), `regress` (the baseline)."""
  cfg: ml_collections.ConfigDict  # `config.model`

  def setup(self):
    cond = self.cfg.conditioning
    if cond.kind not in CONDITIONINGS:
      raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")
    if cond.kind == "frames_tiny":
      self.frame_encoder = TinyFrameEncoder(self.cfg.latent.context_dim, name="frame_encoder")
    if cond.kind in ("clip", "clip_adapter"):
      modalities = tuple(cond.modalities) if cond.kind == "clip_adapter" else ()
      unknown = set(modalities) - set(MODALITIES)
      if unknown or (cond.kind == "clip_adapter" and not modalities):
        raise ValueError(f"model.conditioning.modalities={modalities}; expected a non-empty subset of {MODALITIES}")
      clap_cfg = clap_config(cond.clap) if "audio" in modalities else None
      clip_cfg = clip_config(
          cond.clip, adapter_layer=cond.adapter_layer if modalities else None,
          audio_dim=clap_cfg.hidden_size if clap_cfg else None,
          text_dim=cond.text_dim if "text" in modalities else None)
      if clip_cfg.proj_dim != self.cfg.latent.context_dim:
        raise ValueError(f"CLIP {cond.clip} gives {clip_cfg.proj_dim}-d features but model.latent.context_dim is "
                         f"{self.cfg.latent.context_dim}")
      self.clip = CLIPVision(clip_cfg)
      if clap_cfg:
        self.clap = CLAPAudio(clap_cfg)
    self.backbone = VisAH(self.cfg, name="visah")

  def encode(self, batch: dict) -> jax.Array:
    """Context tokens c (B, N, context_dim) for a batch (frames, stored features, x0 for CLAP)."""
    cond = self.cfg.conditioning
    if cond.kind == "features":
      return batch[cond.features_key]
    if cond.kind == "frames_tiny":
      return self.frame_encoder(batch["frames"])
    modalities = tuple(cond.modalities) if cond.kind == "clip_adapter" else ()
    audio = text = None
    if "audio" in modalities:
      # CLAP is frozen: its tokens of the (remixed) input x0 carry no gradient.
      audio = jax.lax.stop_gradient(self.clap.encode_audio(batch["x0"][..., 0], self.cfg.sample_rate)["tokens"])
    if "text" in modalities:
      text = batch["text"]
    return self.clip.encode_frames(batch["frames"], audio, text)

  def velocity(self, x_t: jax.Array, t: jax.Array, context: jax.Array, x0: jax.Array) -> jax.Array:
    u = self.backbone(x_t, context, t)
    return u - x0 if self.cfg.warm_start else u

  def regress(self, x0: jax.Array, context: jax.Array) -> jax.Array:
    return self.backbone(x0, context, None)

  def __call__(self, batch: dict, t: jax.Array) -> jax.Array:
    """Touches every parameter (used by `init`)."""
    return self.velocity(batch["x0"], t, self.encode(batch), batch["x0"])

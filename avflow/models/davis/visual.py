"""The visual side of DAVIS (Sec. 3.3, "Visual Condition Aggregation"): frame features -> transformer -> mean.

    I_j = Enc_v(frame_j)                      frozen CLIP ViT-B/32 `encode_image` (512-d, not normalized)
    H   = Transformer(I, I)                   `nn.Transformer(512, 8 heads, 3 encoder + 1 decoder, FF 2048)`
    v   = mean_j H_j                          one global vector, tiled into the U-Net's FIM

The transformer is `avflow.nn.transformer.Transformer` run as the public code runs it, `transformer(x, x)` (the
frames are both source and target; no positional encoding, so v does not depend on the frame order). Dropout
(PyTorch's default 0.1 in training) is not modelled.

Frame features (`model.conditioning.kind`):
  clip         CLIP image embeddings of the frames, computed in the graph (frozen: no gradient flows into CLIP)
  features     stored per-frame features from the batch (`model.conditioning.features_key`, e.g. CLIP embeddings
               written by `prepare`)
  frames_tiny  the small trainable `TinyFrameEncoder` (toy runs without a pretrained image model)
The feature width must equal `model.temporal.d_model` (512 for ViT-B/32), as in the public code.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow.models.clip import CLIPVision, clip_config
from avflow.models.frames import TinyFrameEncoder
from avflow.nn.transformer import Transformer

CONDITIONINGS = ("frames_tiny", "features", "clip")


def describe_conditioning(model_cfg: ml_collections.ConfigDict) -> str:
  """The frame features the pooled visual vector v is computed from, e.g. "V (frozen CLIP, pooled transformer)"."""
  cond = model_cfg.conditioning
  features = {"clip": "frozen CLIP", "features": f"stored `{cond.get('features_key', '')}` features",
              "frames_tiny": "tiny trainable frame encoder"}
  if cond.kind not in features:
    raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")
  return f"V ({features[cond.kind]}, transformer, mean-pooled)"


def frozen_prefixes(model_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Parameter subtrees of the `Separator` that never train: the CLIP tower when the conditioning runs it."""
  return ("visual/clip",) if model_cfg.conditioning.kind == "clip" else ()


class VisualEncoder(nn.Module):
  """`batch` -> the visual vector `(B, model.temporal.d_model)`; `cfg` is `config.model`."""
  cfg: ml_collections.ConfigDict

  def setup(self):
    cond, temporal = self.cfg.conditioning, self.cfg.temporal
    if cond.kind not in CONDITIONINGS:
      raise ValueError(f"model.conditioning.kind={cond.kind!r}; expected one of {CONDITIONINGS}")
    if temporal.decoder_layers < 1:
      raise ValueError(f"model.temporal.decoder_layers={temporal.decoder_layers}; the transformer's output is its "
                       "decoder's, so it needs at least one decoder layer")
    if cond.kind == "frames_tiny":
      self.frame_encoder = TinyFrameEncoder(temporal.d_model)
    if cond.kind == "clip":
      clip_cfg = clip_config(cond.clip, adapter_layer=None)
      if clip_cfg.proj_dim != temporal.d_model:
        raise ValueError(f"CLIP {cond.clip} gives {clip_cfg.proj_dim}-d features but model.temporal.d_model is "
                         f"{temporal.d_model}")
      self.clip = CLIPVision(clip_cfg)
    self.temporal_transformer = Transformer(temporal.heads, temporal.encoder_layers, temporal.decoder_layers,
                                            temporal.ff_dim)

  def frame_features(self, batch: dict) -> jax.Array:
    """Per-frame features `(B, N, d_model)` from `batch["frames"] (B, N, H, W, 3)` or the stored features."""
    cond = self.cfg.conditioning
    if cond.kind == "frames_tiny":
      return self.frame_encoder(batch["frames"])
    if cond.kind == "clip":
      return jax.lax.stop_gradient(self.clip.encode_frames(batch["frames"], normalize=False))
    features = batch[cond.features_key]
    if features.shape[-1] != self.cfg.temporal.d_model:
      raise ValueError(f"batch[{cond.features_key!r}] holds {features.shape[-1]}-d features but "
                       f"model.temporal.d_model is {self.cfg.temporal.d_model}")
    return features.astype(jnp.float32)

  def __call__(self, batch: dict) -> jax.Array:
    x = self.frame_features(batch)
    return jnp.mean(self.temporal_transformer(x, x), axis=1)

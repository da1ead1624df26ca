"""VisAH-FM and VisAH as one Flax module: a conditioner (frames → context tokens) and the VisAH network u.

VisAH-FM's velocity is v(x_t, t, c) = u(x_t, t, c) − x0 with warm start (Sec. 3.1: u keeps predicting the
well-balanced waveform, so the pretrained VisAH is a good start; the paper writes x0 − u under the opposite sign
convention) and v = u without it (Table 7). The discriminative VisAH regresses x̂1 = u(x0, c) directly.
"""
import flax.linen as nn
import jax
import ml_collections

from avflow.models.frames import TinyFrameEncoder
from avflow.models.visah import VisAH

CONDITIONINGS = ("frames_tiny", "features")


class Highlighter(nn.Module):
  """Module methods: `encode` (once per clip), `velocity` (every flow step), `regress` (the baseline)."""
  cfg: ml_collections.ConfigDict  # `config.model`

  def setup(self):
    kind = self.cfg.conditioning.kind
    if kind == "frames_tiny":
      self.conditioner = TinyFrameEncoder(self.cfg.latent.context_dim, name="frame_encoder")
    elif kind != "features":
      raise ValueError(f"model.conditioning.kind={kind!r}; expected one of {CONDITIONINGS}")
    self.backbone = VisAH(self.cfg, name="visah")

  def encode(self, batch: dict) -> jax.Array:
    """Context tokens c (B, N, context_dim) from the clip's frames (or its stored features)."""
    if self.cfg.conditioning.kind == "features":
      return batch["context"]
    return self.conditioner(batch["frames"])

  def velocity(self, x_t: jax.Array, t: jax.Array, context: jax.Array, x0: jax.Array) -> jax.Array:
    u = self.backbone(x_t, context, t)
    return u - x0 if self.cfg.warm_start else u

  def regress(self, x0: jax.Array, context: jax.Array) -> jax.Array:
    return self.backbone(x0, context, None)

  def __call__(self, batch: dict, t: jax.Array) -> jax.Array:
    """Touches every parameter (used by `init`)."""
    return self.velocity(batch["x0"], t, self.encode(batch), batch["x0"])

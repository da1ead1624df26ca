"""A tiny trainable frame encoder, the stand-in for CLIP features in toy configs.

VisAH conditions on one CLIP ViT-L/14 image embedding per second of video; this module maps
raw frames to context tokens of the same role with a few strided convolutions, so that toy
runs train end to end without a pretrained image model.
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class TinyFrameEncoder(nn.Module):
  """Frames `(B, F, H, W, 3)` -> tokens `(B, F, context_dim)`, one token per frame.

  uint8 frames are scaled to [0, 1]; float frames are taken to be in [0, 1] already.
  Each frame goes through stride-2 3x3 convs with GELU, a global average pool and a Dense.
  """
  context_dim: int
  features: Sequence[int] = (16, 32, 64)

  @nn.compact
  def __call__(self, frames: jax.Array) -> jax.Array:
    b, f, h, w, c = frames.shape
    if frames.dtype == jnp.uint8:
      x = frames.astype(jnp.float32) / 255.0
    else:
      x = frames.astype(jnp.float32)
    x = x.reshape(b * f, h, w, c)
    for i, feat in enumerate(self.features):
      x = nn.gelu(nn.Conv(feat, (3, 3), strides=(2, 2), name=f"conv_{i}")(x),
                  approximate=False)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.context_dim, name="proj")(x).reshape(b, f, self.context_dim)

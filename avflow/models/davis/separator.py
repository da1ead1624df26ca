"""DAVIS / DAVIS-Flow as one Flax module: the visual encoder (frames -> one vector) and the Separation U-Net.

The U-Net sees the compressed log-frequency magnitudes (`avflow.nn.spectrogram`) of the mixture and of the
current state x_t, `(B, F, T, 1)` each. DAVIS-Flow (Sec. 3.1.2, 3.4) reads its output as the velocity
v(x_t, t, c) of the Gaussian-to-source path, DAVIS (DDPM, Sec. 3.1.1) as the noise ε(x_t, t, c); the call is the
same, with the DDPM step n passed as t = n / 1000. c = (mixture, visual vector), and the visual vector enters only
at the bottleneck.

Parameters: `{"visual": {clip | frame_encoder, temporal_transformer}, "unet": ...}`; `parameter_counts` gives
them per part from `jax.eval_shape` (nothing allocated).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from avflow.models.clip import clip_config
from avflow.models.davis.unet import SeparationUNet, level_widths
from avflow.models.davis.visual import VisualEncoder, frozen_prefixes


class Separator(nn.Module):
  """Module methods: `encode` (once per clip and source), `velocity` (every sampler step); `cfg` is `config.model`."""
  cfg: ml_collections.ConfigDict

  def setup(self):
    self.visual = VisualEncoder(self.cfg)
    self.unet = SeparationUNet(self.cfg)

  def encode(self, batch: dict) -> jax.Array:
    """The visual vector `(B, model.temporal.d_model)` of the video whose sound is wanted."""
    return self.visual(batch)

  def velocity(self, x_t: jax.Array, t: jax.Array, context: jax.Array, mixture: jax.Array) -> jax.Array:
    """`x_t, mixture (B, F, T, 1)`, `t (B,)` in [0, 1], `context` from `encode` -> v (or ε) `(B, F, T, 1)`."""
    return self.unet(x_t, t, context, mixture)

  def __call__(self, batch: dict, t: jax.Array) -> jax.Array:
    """Touches every parameter (used by `init`): the velocity at x_t = `batch["mixture"]`."""
    return self.velocity(batch["mixture"], t, self.encode(batch), batch["mixture"])


def example_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 1, num_frames: int = 2,
                  frames: int | None = None) -> dict:
  """Zeros of the shapes `Separator` reads: `mixture (B, freq_bins, frames, 1)` (default: the fewest frames the
  U-Net takes) and `frames (B, N, S, S, 3)` uint8 or the stored features `(B, N, d_model)`."""
  cond = model_cfg.conditioning
  frames = frames or 2**(len(level_widths(model_cfg)) - 1)
  batch = {"mixture": jnp.zeros((batch_size, model_cfg.freq_bins, frames, 1), jnp.float32)}
  if cond.kind == "features":
    batch[cond.features_key] = jnp.zeros((batch_size, num_frames, model_cfg.temporal.d_model), jnp.float32)
  else:
    size = clip_config(cond.clip).image_size if cond.kind == "clip" else 32
    batch["frames"] = jnp.zeros((batch_size, num_frames, size, size, 3), jnp.uint8)
  return batch


def abstract_params(model_cfg: ml_collections.ConfigDict):
  """The `Separator`'s parameter tree as ShapeDtypeStructs (`jax.eval_shape` of `init`; nothing allocated)."""
  batch = example_batch(model_cfg)
  init = lambda b, t: Separator(model_cfg).init(jax.random.key(0), b, t)["params"]
  return jax.eval_shape(init, batch, jnp.zeros((1,), jnp.float32))


def parameter_counts(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
  """Parameter counts per part: `unet`, `temporal_transformer`, `frame_encoder` (CLIP, the tiny encoder, or 0
  for stored features), `total` and `trainable` (all but the frozen CLIP)."""
  params = abstract_params(model_cfg)
  leaves = {"/".join(str(k.key) for k in path): int(np.prod(leaf.shape))
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  size = lambda prefix: sum(n for path, n in leaves.items() if path.startswith(prefix + "/"))
  transformer = size("visual/temporal_transformer")
  frozen = tuple(prefix + "/" for prefix in frozen_prefixes(model_cfg))
  total = sum(leaves.values())
  return {"unet": size("unet"), "temporal_transformer": transformer,
          "frame_encoder": size("visual") - transformer, "total": total,
          "trainable": total - sum(n for path, n in leaves.items() if frozen and path.startswith(frozen))}

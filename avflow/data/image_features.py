"""CLIP image features of the frames, computed once at prepare time (the stored `context` of row "✗ V").

The public VisAH trains on stored CLIP ViT-L/14 image features (`frames_feats/visual_feats.pt`): one 768-d,
L2-normalised vector per 1-fps frame. `python -m avflow prepare --clip_weights=PATH` computes them with avflow's Flax
CLIP (`avflow.models.clip`) from the frames it decodes, whatever the layout, and stores them as the records'
`context` in place of any stored `frames_feats`.

A frame's feature is `CLIPVisionModelWithProjection`'s `image_embeds` divided by its norm, of the frame as the
records store it (CLIP's resize and center crop to `image_size`, `video.clip_frame`) rescaled to [0, 1] and
normalised with CLIP's mean and std; frames of another size than the CLIP's are resized first
(`clip.preprocess_frames`). Weights: a transformers `save_pretrained` folder or a `.safetensors` / `.bin` state dict
of the vision tower or the full `CLIPModel`, read by the strict importer (`avflow.interop.hf_import`); the
architecture is a named variant of `avflow.models.clip` (`vit_l14`, the paper's).
"""
import functools

import jax
import numpy as np

from avflow.interop import hf_import
from avflow.models import clip


class ImageEncoder:
  """`ImageEncoder(weights, variant="vit_l14")`; `encode(frames (F, H, W, 3) uint8)` → float32 (F, proj_dim).

  Frames run `batch_size` at a time; a shorter last batch is padded to the next power of two (so few shapes
  compile) and the padding's features are dropped.
  """

  def __init__(self, weights: str, variant: str = "vit_l14", batch_size: int = 32):
    self.config = clip.clip_config(variant, adapter_layer=None)
    shapes = jax.eval_shape(functools.partial(clip.init_clip, config=self.config), jax.random.key(0))
    state, self.files = hf_import.load_pretrained(weights)
    self.params = jax.device_put(hf_import.import_clip(state, shapes))
    self.weights, self.dim, self.batch_size = weights, self.config.proj_dim, batch_size
    self._encode = jax.jit(lambda params, frames: clip.encode_frames(params, frames[None], config=self.config)[0])

  def encode(self, frames: np.ndarray) -> np.ndarray:
    """float32 (F, proj_dim), each row of unit norm."""
    out = [np.zeros((0, self.dim), np.float32)]
    for start in range(0, len(frames), self.batch_size):
      chunk = np.asarray(frames[start:start + self.batch_size])
      n = len(chunk)
      size = min(self.batch_size, 1 << (n - 1).bit_length())
      padded = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
      out.append(np.asarray(self._encode(self.params, padded))[:n])
    return np.concatenate(out)

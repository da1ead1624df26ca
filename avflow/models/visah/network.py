"""The VisAH network u(x, c[, t]): the hybrid U-Net with its latent transformer.

`VisAH(cfg)(mix, context, t=None)` with `cfg = config.model`:

- `time_conditioning == "none"`: the discriminative VisAH of the public code; `t` is ignored
  and there are no time parameters. The parameters are `{"model": HDemucsRemixer}`, the
  `model.` prefix of the PyTorch checkpoint (59,956,090 parameters at the `paper` scale).
- otherwise (VisAH-FM, "Time (CFM) Conditioning" and Table 6 of the paper): `t (B,)` is
  embedded with the diffusion sinusoidal timestep embedding (`time_embed_dim` channels),
  then a 2-layer MLP (`time_embed_0`, SiLU, `time_embed_1`) to the latent width
  `n_heads * d_head`; the result is the extra context token of the latent transformer and,
  for "latent_token+encoder", is also injected into every encoder layer.
"""
from typing import Optional

import flax.linen as nn
import jax
import ml_collections

from avflow.models.visah.hdemucs import HDemucsRemixer
from avflow.nn.embeddings import timestep_embedding


class VisAH(nn.Module):
  """`mix (B, L, 1)`, `context (B, N, context_dim)`, `t (B,)` -> `u (B, L, 1)`."""
  cfg: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, mix: jax.Array, context: jax.Array,
               t: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.cfg
    time_token = None
    if cfg.time_conditioning != "none":
      if t is None:
        raise ValueError(f"time_conditioning={cfg.time_conditioning!r} needs t")
      inner = cfg.latent.n_heads * cfg.latent.d_head
      h = nn.Dense(inner, name="time_embed_0")(timestep_embedding(t, cfg.time_embed_dim))
      time_token = nn.Dense(inner, name="time_embed_1")(nn.silu(h))
    return HDemucsRemixer(cfg, name="model")(mix, context, time_token)

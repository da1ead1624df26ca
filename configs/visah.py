"""The discriminative VisAH baseline: x̂1 = u(x0, c) trained with the public multi-resolution STFT loss.

Variants: toy, small, paper (`python -m avflow info --config=configs/visah.py:paper` prints the public model's
59,956,090 parameters); `<scale>_t5`: conditioned on stored 4096-d T5 text features instead of CLIP image
features (Table 1 "VisAH T5"; the public code's `context_dim: 4096`); `<scale>_t5_fixed`: the same on the fixed,
pre-generated Muddy Mix remixes (Table 5 "VisAH Text").
"""
from avflow.configs_lib import base_config

SCALES = ("toy", "small", "paper")
VARIANTS = tuple(scale + suffix for suffix in ("", "_t5", "_t5_fixed") for scale in SCALES)


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of visah.py; expected one of {', '.join(VARIANTS)}")
  scale, *options = variant.split("_")
  config = base_config(scale, task="regression")
  if "t5" in options:
    config.model.conditioning.kind = "features"
    config.model.conditioning.features_key = "text"
    # Linked: `--config.model.conditioning.text_dim=D` (the stored T5 width) sets the context width too.
    config.model.latent.context_dim = config.model.conditioning.get_ref("text_dim")
  if "fixed" in options:
    config.data.remix = "fixed"
  return config

"""The discriminative VisAH baseline: x̂1 = u(x0, c) trained with the public multi-resolution STFT loss.

Variants: toy, small, paper (`python -m avflow info --config=configs/visah.py:paper` prints the public model's
59,956,090 parameters).
"""
from avflow.configs_lib import base_config

VARIANTS = ("toy", "small", "paper")


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of visah.py; expected one of {', '.join(VARIANTS)}")
  return base_config(variant, task="regression")

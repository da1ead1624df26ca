"""VisAH-FM: conditional flow matching with the rollout loss (the paper's method).

Select a variant with `--config=configs/visah_fm.py:<variant>`:
  toy      FM + rollout (λ=0.3, T=4) on the embedded toy movies, tiny model — the default of `python -m avflow train`
  toy_fm   FM only (Table 3 "FM")
  small    FM + rollout at a reduced scale (22.05 kHz, 5 s)
  paper    FM + rollout at the paper's scale (44.1 kHz, 10 s, the public VisAH widths, batch 32, ~23.5 k steps)
"""
from avflow.configs_lib import base_config

VARIANTS = ("toy", "toy_fm", "small", "paper")


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of visah_fm.py; expected one of {', '.join(VARIANTS)}")
  scale = "toy" if variant.startswith("toy") else variant
  config = base_config(scale, task="flow")
  if variant == "toy_fm":
    config.objective.rollout_weight = 0.0
  return config

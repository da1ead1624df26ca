"""DAVIS: visually guided separation by a DDPM (ε-prediction, L1, sigmoid schedule, T = 1000), sampled by DDIM.

Variants: `toy`, `paper` (the public MUSIC model, as `configs/davis_flow.py`); `<scale>_l2` (Table 5's L2 row),
`<scale>_no_mask` (Table 4, δ = 0), `<scale>_ddim<k>` (k DDIM steps instead of 15).
"""
from avflow.configs_lib import SEPARATION_SCALES, separation_config, set_field

ROWS = {
    "l2": ("DDPM, L2 loss (Table 5)", ("diffusion.loss", "l2")),
    "no_mask": ("DDPM, no silence mask (Table 4, δ = 0)", ("inference.silence_threshold", 0.0)),
    **{f"ddim{k}": (f"DDPM, {k} DDIM steps (Fig. 11)", ("diffusion.sampling_steps", k)) for k in (1, 2, 5, 25)},
}
VARIANTS = tuple(scale + suffix for scale in SEPARATION_SCALES for suffix in ("", *(f"_{r}" for r in ROWS)))


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of davis.py; expected one of {', '.join(VARIANTS)}")
  scale, _, row = variant.partition("_")
  config = separation_config(scale, method="diffusion")
  if row:
    set_field(config, *ROWS[row][1])
  return config

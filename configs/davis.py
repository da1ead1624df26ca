"""DAVIS: visually guided separation by a DDPM (ε-prediction, L1, sigmoid schedule, T = 1000), sampled by DDIM.

Variants: `toy`, `paper` (the public MUSIC model, as `configs/davis_flow.py`); `<scale>_l2` (Table 5's L2 row),
`<scale>_no_mask` (Table 4, δ = 0), `<scale>_ddim<k>` (k DDIM steps instead of 15).
"""
from avflow.configs_lib import separation_variant, separation_variants

ROWS = {
    "l2": ("DDPM, L2 loss (Table 5)", ("diffusion.loss", "l2")),
    "no_mask": ("DDPM, no silence mask (Table 4, δ = 0)", ("inference.silence_threshold", 0.0)),
    **{f"ddim{k}": (f"DDPM, {k} DDIM steps (Fig. 11)", ("diffusion.sampling_steps", k)) for k in (1, 2, 5, 25)},
}
VARIANTS = separation_variants(ROWS)


def get_config(arg: str = "toy"):
  return separation_variant("davis.py", ROWS, "diffusion", arg)

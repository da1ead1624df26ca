"""DAVIS-Flow: visually guided separation by flow matching from Gaussian noise (`avflow/tasks/separate.py`).

Select a variant with `--config=configs/davis_flow.py:<scale>[_<row>]`, scale ∈ {toy, paper}:
  toy            DAVIS-Flow on toy "mix and separate" pairs (8 kHz, 32 × 32 spectrograms, tiny frame encoder)
  paper          the public MUSIC model: 11.025 kHz, 256 × 256, CLIP ViT-B/32 on 11 frames (U-Net 36,549,603
                 parameters, temporal transformer 13,663,232), Adam lr 1e-4, batch 8
  <scale>_<row>  one row of the comparisons, e.g. `toy_l2`, `toy_steps5`; `ROWS` lists them.
The base row: L1 flow matching on the σ_min = 1e-4 path, t ~ U[0, 1], Euler on N = 2 steps, silence mask δ = 0.002.
DAVIS (DDPM + DDIM) is `configs/davis.py`.
"""
from avflow.configs_lib import separation_variant, separation_variants


# Row name → (description, (field, value)). Rows differing in inference only share one training run in `ablate`.
ROWS = {
    "l2": ("FM, L2 loss (Table 5)", ("objective.loss", "l2")),
    **{f"steps{k}": (f"FM, {k} Euler step{'s' * (k > 1)} (Fig. 11)", ("inference.num_steps", k))
       for k in (1, 2, 3, 4, 5)},
    "no_mask": ("FM, no silence mask (Table 4, δ = 0)", ("inference.silence_threshold", 0.0)),
    "mixture_source": ("FM from the mixture (x0 = mixture: a VisAH-FM-style bridge)", ("flow_source", "mixture")),
    "rollout": ("FM + rollout on the 2-step sampler (λ = 0.3, H = N = 2)", ("objective.rollout_weight", 0.3)),
}
VARIANTS = separation_variants(ROWS)


def get_config(arg: str = "toy"):
  return separation_variant("davis_flow.py", ROWS, "flow", arg)

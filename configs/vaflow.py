"""VAFlow: video-to-audio generation by flow matching from a video prior (`avflow/tasks/v2a.py`).

Select a variant with `--config=configs/vaflow.py:<scale>[_<row>]`, scale ∈ {toy, small, paper}:
  toy            stage 1, the alignment VAE's pretraining (Eq. 7) on toy foley clips (8 kHz, 2 s, 8 fps, 32 px)
  small, paper   the same with the 26M / 142.6M DiT (`avflow/models/v2a/presets.py`) on 16 kHz clips and a
                 16 × 16 colour grid in place of CLIP features (`configs_lib.v2a_config`)
  <scale>_<row>  one row of the comparisons, e.g. `toy_prior_joint`, `toy_cfg3`; `ROWS` lists them.
The stages of VAFlow each start from the previous one's run (`--config.init_from=RUN`):
  python -m avflow train --config=configs/vaflow.py:toy --workdir=runs/vaflow/prior
  python -m avflow train --config=configs/vaflow.py:toy_prior_frozen --config.init_from=runs/vaflow/prior \
    --workdir=runs/vaflow/frozen
  python -m avflow train --config=configs/vaflow.py:toy_prior_joint --config.init_from=runs/vaflow/frozen \
    --workdir=runs/vaflow/joint
`ROWS[row][2]` names the row whose run a row starts from ("" the base variant, None: none); `ablate` trains the
stages in that order (`parent_variant`). Rows that differ from `prior_joint` in `inference` only (CFG scale, solver,
steps) share its training run in `ablate`.
"""
from avflow.configs_lib import v2a_parent, v2a_variant, v2a_variants

# Each stage's schedule and learning rate per scale: `avflow/configs_lib.py` (`set_v2a_schedule`).
ESTIMATOR = {"model.stage": "estimator"}
JOINT = {"model.stage": "joint"}

# Row name → (description, {field: value} set on the base config, the row whose run `init_from` names).
ROWS = {
    "prior_frozen": ("Video prior, frozen (Table 3; stage 2: the estimator on the frozen VAE, Eq. 8)", ESTIMATOR, ""),
    "prior_joint": ("Video prior, jointly tuned (Table 3; stage 3: VAE encoder + estimator, Eq. 9)", JOINT,
                    "prior_frozen"),
    "gaussian": ("Gaussian source + cross-attention (Table 3)", {**ESTIMATOR, "model.source": "gaussian"}, None),
    "no_cross_attention": ("Video prior, frozen, without cross-attention (Table 4, row 1)",
                           {**ESTIMATOR, "model.cross_attention": False}, ""),
    **{f"cfg{g}": (f"Video prior, jointly tuned, CFG γ = {g} (Table 4)", {**JOINT, "inference.cfg": float(g)},
                   "prior_frozen") for g in (0, 1, 2, 3)},
    **{f"{solver}{k}": (f"Video prior, jointly tuned, {solver} on {k} step{'s' * (k > 1)}",
                        {**JOINT, "inference.method": solver, "inference.num_steps": k}, "prior_frozen")
       for solver in ("euler", "midpoint") for k in (1, 2, 4, 8)},
    "dopri5": ("Video prior, jointly tuned, adaptive dopri5", {**JOINT, "inference.method": "dopri5"}, "prior_frozen"),
    # The Gaussian source at few steps, against the jointly tuned prior's `euler<k>` rows.
    **{f"gaussian_euler{k}": (f"Gaussian source, Euler on {k} step{'s' * (k > 1)}",
                              {**ESTIMATOR, "model.source": "gaussian", "inference.num_steps": k}, None)
       for k in (1, 2, 4)},
}
VARIANTS = v2a_variants(ROWS)


def get_config(arg: str = "toy"):
  return v2a_variant("vaflow.py", ROWS, arg)


def parent_variant(variant: str) -> str | None:
  """The variant whose finished run `variant` starts from (`--config.init_from`), None where it starts fresh."""
  return v2a_parent(ROWS, variant)

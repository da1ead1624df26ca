"""NAG: step-by-step video-to-audio with negative audio guidance (`avflow/tasks/nag.py`).

Select a variant with `--config=configs/nag.py:<scale>[_<row>]`, scale ∈ {toy, small, paper} (VAFlow's data and
DiT shapes, `configs_lib.v2a_config`):
  <scale>          the base: the text encoder and the DiT on (video, one class's caption) → that class's stem
  <scale>_control  the ControlNet on the frozen base (Sec. 3.5 pairs); its evaluation samples with NAG (Eq. 9)
  <scale>_<row>    the other rows of the comparison (`ROWS`): plain CFG, negative prompting, the α × β grid
The ControlNet starts from the base's run (`--config.init_from=RUN`):
  python -m avflow train --config=configs/nag.py:toy --workdir=runs/nag/base
  python -m avflow train --config=configs/nag.py:toy_control --config.init_from=runs/nag/base --workdir=runs/nag/ctrl
  python -m avflow foley video.mp4 out.mp4 --workdir=runs/nag/ctrl --captions="a drum is hit;a bell rings"
`ROWS[row][2]` names the row whose run a row starts from ("" the base variant, None: none); `ablate` trains them in
that order (`parent_variant`). Rows that differ from `control` in `inference` only share its training run.
"""
import ml_collections

from avflow.configs_lib import set_field, set_v2a_schedule, v2a_config, v2a_parent, v2a_variants

CONTROL = {"model.stage": "control"}
ALPHAS = (2.5, 4.5)  # the App. E groups: a smaller α and MMAudio's 4.5
BETAS = (0.0, 0.75, 1.5, 3.0)  # β = 0 is plain CFG; 1.5 the paper's default

# Row name → (description, {field: value} set on the base config, the row whose run `init_from` names).
ROWS = {
    "control": ("NAG, α = 4.5, β = 1.5 (Tables 1-2, Ours)", CONTROL, ""),
    "cfg": ("Base, step-by-step with plain CFG α = 4.5 (Table 2, MMAudio-S-16k)",
            {**CONTROL, "inference.guidance": "cfg"}, ""),
    "negative_prompt": ("Base + negative prompting, α = 4.5 (Table 2, + Neg. prompting)",
                        {**CONTROL, "inference.guidance": "negative_prompt"}, ""),
    **{f"a{a:g}_b{b:g}": (f"NAG, α = {a:g}, β = {b:g} (App. E)", {**CONTROL, "inference.alpha": a, "inference.beta": b},
                          "") for a in ALPHAS for b in BETAS},
}
VARIANTS = v2a_variants(ROWS)


def base_config(scale: str) -> ml_collections.ConfigDict:
  """The NAG base at `scale`: VAFlow's toy foley data, codec and DiT with a Gaussian source, a caption encoder and
  the stage schedule of VAFlow's estimator."""
  c = v2a_config(scale)
  c.task = "nag"
  c.data.text_tokens = 16  # word ids per caption: two toy class captions joined ("… , then …") fit
  model = c.model
  for name in ("prior", "source", "cross_attention"):
    del model[name]
  model.stage = "base"  # or "control": the ControlNet, with the base frozen
  model.text = ml_collections.ConfigDict(dict(tokens=c.data.text_tokens, width=model.width, heads=model.heads))
  del c.prior_loss
  # MMAudio's Euler sampler; α (Eq. 3, 9: MMAudio's CFG 4.5), β (Eq. 9: 1.5); seed of x0 ~ 𝒩(0, I).
  c.inference = ml_collections.ConfigDict(dict(method="euler", num_steps=8, guidance="nag", alpha=4.5, beta=1.5,
                                               seed=0))
  set_v2a_schedule(c, scale, "estimator")
  return c


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r} of nag.py; expected one of {', '.join(VARIANTS)}")
  scale, _, row = variant.partition("_")
  config = base_config(scale)
  if not row:
    config.inference.guidance = "cfg"  # the base has no ControlNet
  for path, value in (ROWS[row][1] if row else {}).items():
    set_field(config, path, value)
  return config


def parent_variant(variant: str) -> str | None:
  """The variant whose finished run `variant` starts from (`--config.init_from`), None where it starts fresh."""
  return v2a_parent(ROWS, variant)

"""VisAH-FM: conditional flow matching with the rollout loss (the paper's method) and its ablation rows.

Select a variant with `--config=configs/visah_fm.py:<scale>[_<row>]`, scale ∈ {toy, small, paper}:
  toy            FM + rollout (λ=0.3, T=4) on the embedded toy movies — the default of `python -m avflow train`
  paper          FM + rollout at the paper's scale (44.1 kHz, 10 s, batch 32)
Every scale conditions like the paper (Sec. 2.2.2): CLIP on the frames with the CLAP adapter fed by the input mix
(V+A); `toy` uses the tiny CLIP and tiny CLAP, so the whole pipeline trains on a CPU.
  <scale>_<row>  one row of the paper's ablations, e.g. `toy_fm`, `paper_consistency`; `ROWS` lists them.
"""
from avflow.configs_lib import base_config

SCALES = ("toy", "small", "paper")


def _objective(**fields):
  def apply(c):
    c.objective.update(fields)
  return apply


def _set(path, value):
  def apply(c):
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return apply


def _conditioning(kind, modalities=("audio",), features_key="context"):
  def apply(c):
    cond = c.model.conditioning
    cond.kind = kind
    cond.modalities = modalities
    cond.features_key = features_key
    if kind == "features" and features_key == "text":
      # Linked: `--config.model.conditioning.text_dim=D` (the stored T5 width) sets the context width too.
      c.model.latent.context_dim = cond.get_ref("text_dim")
    elif kind in ("clip", "clip_adapter"):
      c.model.latent.context_dim = 24 if cond.clip == "tiny" else 768
  return apply


# Row name → (table, description, overrides). The base variant is "FM + Rollout, λ=0.3, H=4, N=4, warm start,
# time token in the latent transformer, on-the-fly remixing".
ROWS = {
    # Table 3 / 10: the rollout component.
    "fm": ("3", "FM", [_objective(rollout_weight=0.0)]),
    "rollout_only": ("3", "Rollout", [_objective(fm_weight=0.0, rollout_weight=1.0)]),
    "consistency": ("3", "FM + Consistency", [_objective(rollout_weight=0.0, consistency_weight=1.0)]),
    "bridge": ("3", "Bridge Matching", [_objective(rollout_weight=0.0, bridge_sigma=1e-5)]),
    "fm_weighted": ("3", "FM Weighted", [_objective(rollout_weight=0.0, fm_weighting="inverse_time")]),
    # Table 4 / 11: λ, horizon, steps.
    "lambda0.1": ("4", "λ=0.1, H=4, N=4", [_objective(rollout_weight=0.1)]),
    "lambda0.5": ("4", "λ=0.5, H=4, N=4", [_objective(rollout_weight=0.5)]),
    "lambda1.0": ("4", "λ=1.0, H=4, N=4", [_objective(rollout_weight=1.0)]),
    "horizon2": ("4", "λ=0.1, H=2, N=4", [_objective(rollout_weight=0.1, horizon=2)]),
    "steps10": ("4", "λ=0.3, H=4, N=10", [_objective(num_steps=10, horizon=4), _set("inference.num_steps", 10)]),
    # Table 5: the fixed pre-generated dataset.
    "fixed": ("5", "FM + Rollout (λ=0.3), fixed dataset", [_set("data.remix", "fixed")]),
    "fixed_fm": ("5", "FM, fixed dataset", [_set("data.remix", "fixed"), _objective(rollout_weight=0.0)]),
    # Table 6: time conditioning.
    "time_encoder": ("6", "Encoder + Latent Transformer", [_set("model.time_conditioning", "latent_token+encoder")]),
    # Table 7: warm start.
    "no_warm_start": ("7", "FM + Rollout, no warm start", [_set("model.warm_start", False)]),
    "fm_no_warm_start": ("7", "FM only, no warm start", [_set("model.warm_start", False),
                                                         _objective(rollout_weight=0.0)]),
    # Table 8: the rollout-only model integrated with 1–3 steps (trained with 4).
    **{f"rollout_only_infer{k}": ("8", f"Rollout only, {k} inference steps",
                                  [_objective(fm_weight=0.0, rollout_weight=1.0), _set("inference.num_steps", k)])
       for k in (1, 2, 3)},
    # Table 2 / 9: conditioning (adapter ✓/✗ × modalities).
    "va": ("2", "✓ V+A", [_conditioning("clip_adapter", ("audio",))]),
    "vt": ("2", "✓ V+T", [_conditioning("clip_adapter", ("text",))]),
    "vta": ("2", "✓ V+T+A", [_conditioning("clip_adapter", ("audio", "text"))]),
    "v": ("2", "✗ V", [_conditioning("clip")]),
    "t": ("2", "✗ T", [_conditioning("features", features_key="text")]),
}


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  scale, _, row = variant.partition("_")
  if scale not in SCALES or (row and row not in ROWS):
    raise ValueError(f"unknown variant {variant!r} of visah_fm.py; expected <scale>[_<row>] with scale in "
                     f"{SCALES} and row in {sorted(ROWS)}")
  config = base_config(scale, task="flow")
  _conditioning("clip_adapter", ("audio",))(config)  # The paper's default: CLIP + CLAP adapter (V+A).
  for override in ROWS[row][2] if row else ():
    override(config)
  return config

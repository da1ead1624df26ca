"""VisAH-FM: conditional flow matching with the rollout loss (the paper's method) and its ablation rows.

Select a variant with `--config=configs/visah_fm.py:<scale>[_<row>]`, scale ∈ {toy, small, paper}:
  toy            FM + rollout (λ=0.3, T=4) on the embedded toy movies — the default of `python -m avflow train`
  paper          FM + rollout at the paper's scale (44.1 kHz, 10 s, batch 32)
  <scale>_<row>  one row of the paper's ablations, e.g. `toy_fm`, `paper_consistency`; `ROWS` lists them.
`<scale>` is Table 1's VisAH-FM and conditions like the paper's method (Sec. 2.2.2): CLIP on the frames with the
CLAP adapter fed by the input mix (V+A); `toy` uses the tiny CLIP and tiny CLAP, so the whole pipeline trains on a
CPU. The rows of Tables 3–8 build on V only (`TABLE_BASES`): CLIP image features without the adapter. Table 5
does not state its conditioning: V only, so each of its rows differs from its on-the-fly twin of Tables 3–4 in
`data.remix` alone.
"""
from avflow.configs_lib import base_config, set_field

SCALES = ("toy", "small", "paper")


def _objective(**fields):
  def apply(c):
    c.objective.update(fields)
  return apply


def _set(path, value):
  return lambda c: set_field(c, path, value)


def _conditioning(kind, modalities=(), features_key="context"):
  def apply(c):
    cond = c.model.conditioning
    cond.kind = kind
    cond.modalities = modalities
    cond.features_key = features_key
    if kind == "features" and features_key == "text":
      # Linked: `--config.model.conditioning.text_dim=D` (the stored T5 width) sets the context width too.
      c.model.latent.context_dim = cond.get_ref("text_dim")
    else:  # CLIP image features, computed in the graph or stored in the records
      c.model.latent.context_dim = 24 if cond.clip == "tiny" else 768
  return apply


def _vision_only(c):
  """V without adapter: the stored CLIP image features where the data carries them (records), else CLIP in the
  graph (the toy movies have frames only)."""
  _conditioning("features" if c.data.source == "records" else "clip")(c)


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
    "fixed_lambda0.1": ("5", "FM + Rollout (λ=0.1), fixed dataset", [_set("data.remix", "fixed"),
                                                                     _objective(rollout_weight=0.1)]),
    "fixed_rollout_only": ("5", "Rollout, fixed dataset", [_set("data.remix", "fixed"),
                                                           _objective(fm_weight=0.0, rollout_weight=1.0)]),
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
    "v": ("2", "✗ V", [_vision_only]),
    "t": ("2", "✗ T", [_conditioning("features", features_key="text")]),
}

# Table → the Table 2 row whose conditioning its rows build on (tables not listed: the method's V+A, or their own).
# Table 3's caption: "All models use standard CLIP conditioning (w/o adapter)"; the base rows of Tables 4, 6 and 7
# carry Table 2's "✗ V" numbers and Table 8's 4-step row is Table 3's rollout-only row, so all of them are V only.
# Table 5 (fixed dataset) does not say: its rows are Tables 3–4's rows, and on the same V-only base each differs
# from its on-the-fly counterpart in `data.remix` alone, the one factor that appendix measures.
TABLE_BASES = {table: "v" for table in ("3", "4", "5", "6", "7", "8")}


def get_config(arg: str = "toy"):
  variant = arg or "toy"
  scale, _, row = variant.partition("_")
  if scale not in SCALES or (row and row not in ROWS):
    raise ValueError(f"unknown variant {variant!r} of visah_fm.py; expected <scale>[_<row>] with scale in "
                     f"{SCALES} and row in {sorted(ROWS)}")
  config = base_config(scale, task="flow")
  _conditioning("clip_adapter", ("audio",))(config)  # The paper's method: CLIP + CLAP adapter (V+A).
  if row:
    table, _, overrides = ROWS[row]
    for override in ROWS[TABLE_BASES[table]][2] + overrides if table in TABLE_BASES else overrides:
      override(config)
  return config

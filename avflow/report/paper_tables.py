"""The paper's published numbers (VisAH-FM, Tables 1–11), printed beside ours by `ablate`.

Values are as printed: every metric except LDif is ×100 (Table 1 caption). Keys of each row are the config rows of
`configs/visah_fm.py` (the base rows of Tables 3, 4, 6 and 7 are "v", Table 2's "✗ V" row: FM + Rollout λ=0.3,
H=4, N=4 on CLIP without adapter, whose numbers they repeat), `visah:<suffix>` for the discriminative baseline of
`configs/visah.py` (variant `<scale>_<suffix>`, or `<scale>` for an empty suffix), or `input` for the unprocessed
input.
"""
METRICS = ("ib", "kld", "ldif", "mag", "env", "was")


def _row(label, *values, metrics=METRICS):
  return {"label": label, **dict(zip(metrics, values))}


def table_metrics(table: str) -> tuple[str, ...]:
  """The metric columns of a table: VisAH-FM's six, or a system's own (`"metrics"`)."""
  return TABLES[table].get("metrics", METRICS)


def paper_metrics(table: str) -> tuple[str, ...]:
  """The paper's columns printed beside ours: the same metrics, or the paper's own (`"paper_metrics"`)."""
  return TABLES[table].get("paper_metrics", table_metrics(table))


TABLES = {
    "1": {
        "title": "Main results",
        "rows": {
            "input": _row("Input", 28.14, 20.74, 18.36, 22.69, 6.29, 1.96),
            "visah:": _row("VisAH CLIP", 28.84, 11.37, 9.66, 9.99, 3.38, 0.84),
            "visah:t5": _row("VisAH T5", 28.92, 11.71, 9.63, 10.22, 3.44, 0.88),
            "va": _row("VisAH-FM (CLIP-CLAP)", 29.12, 9.70, 7.77, 8.28, 2.74, 0.63),
        },
    },
    "2": {
        "title": "Conditioning (adapter, modalities) — Tables 2 and 9",
        "rows": {
            "va": _row("✓ V+A", 29.12, 9.70, 7.77, 8.28, 2.74, 0.63),
            "vt": _row("✓ V+T", 29.08, 9.76, 7.85, 8.34, 2.74, 0.63),
            "vta": _row("✓ V+T+A", 29.10, 9.73, 7.90, 8.25, 2.74, 0.63),
            "v": _row("✗ V", 29.09, 9.79, 7.87, 8.46, 2.79, 0.64),
            "t": _row("✗ T", 28.88, 10.50, 8.13, 8.22, 2.65, 0.54),
        },
    },
    "3": {
        "title": "The rollout component — Tables 3 and 10",
        "rows": {
            "v": _row("FM + Rollout", 29.09, 9.79, 7.87, 8.46, 2.79, 0.64),
            "fm": _row("FM", 28.92, 10.99, 9.48, 11.57, 4.68, 1.08),
            "rollout_only": _row("Rollout", 28.94, 9.92, 7.71, 8.13, 2.78, 0.62),
            "consistency": _row("FM + Consistency", 28.40, 14.58, 10.30, 13.54, 3.98, 1.15),
            "bridge": _row("Bridge Matching", 29.04, 10.85, 9.62, 10.98, 3.51, 0.91),
            "fm_weighted": _row("FM Weighted", 28.86, 11.16, 9.44, 11.83, 3.68, 0.99),
        },
    },
    "4": {
        "title": "Hyper-parameters λ / horizon / steps — Tables 4 and 11",
        "rows": {
            "lambda0.1": _row("λ=0.1, H=4, N=4", 29.12, 9.85, 8.02, 8.41, 2.78, 0.64),
            "v": _row("λ=0.3, H=4, N=4", 29.09, 9.79, 7.87, 8.46, 2.79, 0.64),
            "lambda0.5": _row("λ=0.5, H=4, N=4", 29.12, 9.93, 7.80, 8.43, 2.79, 0.64),
            "lambda1.0": _row("λ=1.0, H=4, N=4", 29.04, 9.82, 7.84, 8.47, 2.81, 0.65),
            "horizon2": _row("λ=0.1, H=2, N=4", 29.08, 9.68, 7.94, 8.45, 2.76, 0.63),
            "steps10": _row("λ=0.3, H=4, N=10", 29.10, 9.79, 8.35, 8.58, 2.81, 0.66),
        },
    },
    "5": {
        "title": "The fixed Muddy Mix dataset (the paper prints Env unscaled here and no Mag/Was)",
        "rows": {
            "visah:t5_fixed": _row("VisAH Text", 29.00, 11.02, 9.23, None, 0.035, None),
            "fixed_fm": _row("FM", 29.27, 10.91, 8.84, None, 0.034, None),
            "fixed_lambda0.1": _row("FM + Rollout (λ=0.1)", 29.15, 10.60, 8.82, None, 0.032, None),
            "fixed": _row("FM + Rollout (λ=0.3)", 29.29, 10.48, 8.83, None, 0.032, None),
            "fixed_rollout_only": _row("Rollout", 29.18, 11.38, 8.87, None, 0.033, None),
        },
    },
    "6": {
        "title": "Time conditioning",
        "rows": {
            "v": _row("Latent Transformer", 29.09, 9.79, 7.87, 8.34, 2.79, 0.65),
            "time_encoder": _row("Encoder + Latent Transformer", 29.02, 9.87, 7.83, 8.24, 2.70, 0.60),
        },
    },
    "7": {
        "title": "Warm start",
        "rows": {
            "v": _row("FM + Rollout, warm start", 29.09, 9.79, 7.87, 8.46, 2.79, 0.64),
            "fm": _row("FM only, warm start", 28.92, 10.99, 9.48, 11.57, 4.68, 1.08),
            "no_warm_start": _row("FM + Rollout, no warm start", 29.28, 10.65, 8.41, 8.71, 2.80, 0.64),
            "fm_no_warm_start": _row("FM only, no warm start", 28.75, 16.52, 12.73, 15.54, 4.56, 1.37),
        },
    },
    "8": {
        "title": "Inference steps of the rollout-only model",
        "rows": {
            "rollout_only_infer1": _row("1 step", 29.11, 10.09, 7.73, 8.17, 2.84, 0.66),
            "rollout_only_infer2": _row("2 steps", 28.86, 10.17, 8.36, 9.15, 2.92, 0.70),
            "rollout_only_infer3": _row("3 steps", 28.78, 10.68, 9.42, 10.34, 0.32, 0.84),
            "rollout_only": _row("4 steps", 28.94, 9.92, 7.71, 8.13, 2.78, 0.62),
        },
    },
}
# Tables 9–11 repeat Tables 2–4 with the signal metrics, which the rows above already carry.
TABLES["9"], TABLES["10"], TABLES["11"] = TABLES["2"], TABLES["3"], TABLES["4"]

# DAVIS / DAVIS-Flow (separation; SDR, SIR, SAR in dB, as printed, on MUSIC). Keys are `<config file>:<row>` of
# `configs/davis_flow.py` and `configs/davis.py` (an empty row: the scale's base variant). "main" rows run every seed
# `ablate` is given, the others the first only. Rows without a published number have None; Tables 4 and 5 ablate
# DAVIS (DDPM), so the FM rows' mask and loss numbers beside ours are DDPM's, as each label says.
SEPARATION_METRICS = ("sdr", "sir", "sar")
TABLES["davis"] = {
    "title": "DAVIS-Flow vs DAVIS, sampler steps, silence mask, loss and source",
    "file": "davis",
    "metrics": SEPARATION_METRICS,
    "headline": "sdr",
    "units": "dB, on held-out pairs",
    "paper_note": "the published MUSIC numbers (paper scale, real videos)",
    "input_note": "the unprocessed mixture as the estimate of both sources",
    "main": ("davis_flow:", "davis:"),
    "rows": {
        "davis_flow:": _row("DAVIS-Flow: FM, L1, 2 Euler steps", 12.01, 18.25, 15.46, metrics=SEPARATION_METRICS),
        "davis:": _row("DAVIS: DDPM, L1, DDIM 15 steps", 11.61, 18.36, 14.70, metrics=SEPARATION_METRICS),
        **{f"davis_flow:steps{k}": _row(f"FM, {k} Euler step{'s' * (k > 1)} (paper: Fig. 11, no numbers)",
                                        metrics=SEPARATION_METRICS) for k in (1, 3, 4, 5)},
        "davis_flow:no_mask": _row("FM, no silence mask (paper: DDPM, δ = 0, Table 4)", 11.53, 18.30, 14.74,
                                   metrics=SEPARATION_METRICS),
        "davis_flow:l2": _row("FM, L2 loss (paper: DDPM, L2, Table 5)", 10.84, 17.52, 14.55,
                              metrics=SEPARATION_METRICS),
        "davis_flow:mixture_source": _row("FM from the mixture (x0 = mixture; not in the paper)",
                                          metrics=SEPARATION_METRICS),
        "davis_flow:rollout": _row("FM + rollout, λ = 0.3, H = N = 2 (not in the paper)", metrics=SEPARATION_METRICS),
    },
}

# VAFlow (video-to-audio; Tables 3 and 4, VGGSound, CLIP features). Keys are `vaflow:<row>` of `configs/vaflow.py`.
# Ours are the toy metrics of `avflow/metrics/foley.py` (no pretrained network): the Fréchet distance on log-mel
# statistics, onset-sync F1 and the toy classifier's event-class accuracy; the paper's columns are its own
# (FD_pas, IS_mel, the sync classifier's Acc, IB-VA), printed beside ours, not in the same units. The paper gives
# neither its CFG scale nor its steps (its main row uses dopri5), so only the main rows carry numbers: the
# prior-joint row with CFG is its 87.7 row; "cfg0" is Table 4's "explicit condition, cross-attention, no CFG".
V2A_METRICS = ("fd", "onset_f1", "event_accuracy")
V2A_PAPER_METRICS = ("fd_pas", "is_mel", "acc", "ib_va")


def _v2a_row(label, *values):
  return _row(label, *values, metrics=V2A_PAPER_METRICS)


TABLES["vaflow"] = {
    "title": "VAFlow: video prior vs Gaussian source, cross-attention, CFG scale and solvers",
    "file": "vaflow",
    "metrics": V2A_METRICS,
    "paper_metrics": V2A_PAPER_METRICS,
    "headline": "fd",
    "units": ("toy metrics on the held-out clips: FD ↓ (log-mel statistics), onset-sync F1 ↑ (±0.1 s), event-class "
              "accuracy ↑ (exact class set)"),
    "paper_note": ("the published VGGSound numbers of Tables 3–4 (142M, CLIP features: FD_pas ↓, IS_mel ↑, the sync "
                   "classifier's Acc ↑, IB-VA ↑), other metrics than ours"),
    "input_note": "the source x0 decoded, before any flow step",
    "main": ("vaflow:prior_frozen", "vaflow:prior_joint", "vaflow:gaussian"),
    "rows": {
        "vaflow:gaussian": _v2a_row("Gaussian source + cross-attention (Table 3)", 102.6, 67.6, 87.9, 27.9),
        "vaflow:prior_frozen": _v2a_row("Video prior, frozen (Table 3)", 111.8, 57.4, 82.3, 25.4),
        "vaflow:prior_joint": _v2a_row("Video prior, jointly tuned (Table 3; CFG γ = 1, 8 Euler steps)",
                                       87.7, 73.6, 88.1, 28.6),
        "vaflow:no_cross_attention": _v2a_row("Video prior, frozen, no cross-attention (Table 4, row 1)",
                                              135.9, 41.4, 31.7, 8.5),
        "vaflow:cfg0": _v2a_row("Jointly tuned, CFG γ = 0 (Table 4, row 3)", 133.8, 42.3, 78.0, 21.0),
        **{f"vaflow:cfg{g}": _v2a_row(f"Jointly tuned, CFG γ = {g} (paper: γ not reported)") for g in (1, 2, 3)},
        **{f"vaflow:{solver}{k}": _v2a_row(f"Jointly tuned, {solver}, {k} step{'s' * (k > 1)} (paper: no numbers)")
           for solver in ("euler", "midpoint") for k in (1, 2, 4, 8)},
        "vaflow:dopri5": _v2a_row("Jointly tuned, adaptive dopri5 (the paper's sampler for Table 1)"),
        **{f"vaflow:gaussian_euler{k}": _v2a_row(f"Gaussian source, euler, {k} step{'s' * (k > 1)} (paper: no numbers)")
           for k in (1, 2, 4)},
    },
}

# Foley-Flow (video-to-audio; Tables 2 and 5, VGGSound test, EVA-CLIP / AudioMAE features). Keys are `foley_flow:<row>`
# of `configs/foley_flow.py`; ours are the toy metrics of VAFlow's table, the paper's KLD ↓ (PaSST), FAD ↓ and the
# Diff-Foley sync classifier's Align Acc ↑. The paper's generator ("GVAF") cannot be implemented as written (the
# config file says why): its ✗/✓ are read as the global (clip-level) vs the dynamic (per-segment) injection of the
# video into our flow-matching DiT, as each label says. Table 2's row without either equals Diff-Foley's Table 1 row.
FOLEY_PAPER_METRICS = ("kld", "fad", "align_acc")


def _foley_row(label, *values):
  return _row(label, *values, metrics=FOLEY_PAPER_METRICS)


TABLES["foleyflow"] = {
    "title": "Foley-Flow: VAMA alignment × dynamic vs global video injection, VAMA masking ratio",
    "file": "foleyflow",
    "metrics": V2A_METRICS,
    "paper_metrics": FOLEY_PAPER_METRICS,
    "headline": "fd",
    "units": TABLES["vaflow"]["units"],
    "paper_note": ("the published VGGSound numbers of Tables 2 and 5 (EVA-CLIP / AudioMAE features: KLD ↓ of PaSST "
                   "predictions, FAD ↓, Diff-Foley's Align Acc ↑), other metrics than ours; GVAF ✗/✓ read as our "
                   "global/dynamic injection"),
    "input_note": "the Gaussian source x0 decoded, before any flow step",
    "main": ("foley_flow:global", "foley_flow:global_vama", "foley_flow:dynamic", "foley_flow:dynamic_vama"),
    "rows": {
        "foley_flow:global": _foley_row("VAMA ✗, global injection (our reading of GVAF ✗; Table 2)", 3.15, 6.40, 82.47),
        "foley_flow:global_vama": _foley_row("VAMA ✓, global injection (our reading of GVAF ✗; Table 2)",
                                             1.68, 1.57, 96.29),
        "foley_flow:dynamic": _foley_row("VAMA ✗, dynamic injection (our reading of GVAF ✓; Table 2)",
                                         1.92, 1.89, 93.86),
        "foley_flow:dynamic_vama": _foley_row("VAMA ✓, dynamic injection, ratio 0.8 (our reading of GVAF ✓; "
                                              "Tables 2 and 5)", 0.97, 0.52, 98.97),
        "foley_flow:dynamic_vama_mask0.5": _foley_row("VAMA ✓ at masking ratio 0.5, dynamic injection (Table 5)",
                                                      1.16, 0.87, 98.37),
        "foley_flow:dynamic_vama_mask0.9": _foley_row("VAMA ✓ at masking ratio 0.9, dynamic injection (Table 5)",
                                                      1.02, 0.56, 98.96),
    },
}

# NAG (step-by-step video-to-audio; Table 2, Multi-Caps VGGSound, per track; App. E). Keys are `nag:<row>` of
# `configs/nag.py`. Ours are the toy metrics of `avflow/tasks/nag.py` (`track_scores`): track independence (mean
# pairwise cosine of the tracks' log-mel embeddings, the paper's CLAP A-A), caption fidelity (the toy classifier
# hears the captioned class, the paper's CLAP T-A) and the composites' Fréchet distance. App. E's α values are
# missing from the text; its α = 4.5 group has the ∗ (β = 0) and † (β = 1.5) rows, which repeat Table 2's.
NAG_METRICS = ("independence", "fidelity", "fd")
NAG_PAPER_METRICS = ("clap_aa", "is", "clap_ta", "ib")


def _nag_row(label, *values):
  return _row(label, *values, metrics=NAG_PAPER_METRICS)


TABLES["nag"] = {
    "title": "NAG: step-by-step foley with plain CFG, negative prompting and negative audio guidance (α × β)",
    "file": "nag",
    "metrics": NAG_METRICS,
    "paper_metrics": NAG_PAPER_METRICS,
    "headline": "independence",
    "units": ("toy metrics of the tracks of the whole held-out clips: independence ↓ (mean pairwise cosine "
              "of log-mel embeddings), caption fidelity ↑ (the toy classifier hears the captioned class), the "
              "composites' FD ↓ (log-mel statistics)"),
    "paper_note": ("the published Multi-Caps VGGSound numbers of Table 2 (MMAudio-S-16k base; CLAP A-A ↓, IS ↑, "
                   "CLAP T-A ↑, IB ↑), other metrics than ours"),
    "input_note": "the tracks' sources x0 decoded, before any flow step",
    "main": ("nag:cfg", "nag:negative_prompt", "nag:control"),
    "rows": {
        "nag:cfg": _nag_row("Base, plain CFG α = 4.5 (Table 2, MMAudio-S-16k)", 79.75, 12.47, 28.36, 27.76),
        "nag:negative_prompt": _nag_row("Base + negative prompting, α = 4.5 (Table 2)", 75.37, 11.71, 27.14, 25.85),
        "nag:control": _nag_row("NAG, α = 4.5, β = 1.5 (Table 2, Ours)", 74.74, 12.00, 28.79, 26.44),
        **{f"nag:a{a:g}_b{b:g}": _nag_row(f"NAG, α = {a:g}, β = {b:g} (App. E)",
                                          *{(4.5, 0.0): (79.75, 12.47, 28.36), (4.5, 1.5): (74.74, 12.00, 28.79)}.get(
                                              (a, b), ()))
           for a in (2.5, 4.5) for b in (0.0, 0.75, 1.5, 3.0)},
    },
}

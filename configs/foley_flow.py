"""Foley-Flow: video-to-audio generation with masked audio-visual alignment (VAMA) and per-segment ("dynamic") video
conditioning, on the V2A stack of `avflow/tasks/v2a.py`.

Select a variant with `--config=configs/foley_flow.py:<scale>[_<row>]`, scale ∈ {toy, small, paper}:
  toy            the VAMA pretraining (`model.stage="vama"`, Eq. 4, masking ratio 0.8) on toy foley clips
  <scale>_<row>  one row of the comparisons, e.g. `toy_dynamic_vama`; `ROWS` lists them.
The flow starts from the VAMA run, whose video encoder it reads (frozen) for its condition:
  python -m avflow train --config=configs/foley_flow.py:toy --workdir=runs/foley_flow/vama
  python -m avflow train --config=configs/foley_flow.py:toy_dynamic_vama --config.init_from=runs/foley_flow/vama \
    --workdir=runs/foley_flow/dynamic_vama

What is implemented, and why. The paper's generator ("GVAF", Eqs. 2–3 and 5–8) mixes a velocity field, a normalizing
flow trained by a KL divergence it gives no estimator for, and single-step inversion z_a = f_φ⁻¹(z_v, z_noise); it
defines no probability path, velocity target, step count or solver, so neither GVAF's objective nor its single-step
inversion can be implemented as written. The defensible reading, implemented here: conditional flow matching from
x0 ~ 𝒩(0, I) to the audio latents (the straight path, L2 on the velocity; Euler on `inference.num_steps` steps) with
the video as a per-segment condition (Eq. 5: latent segment t generated under its own video features F^v_t):
  dynamic   the frame features interpolated to every latent frame and added to its token (`model.video_injection`)
            — our reading of "GVAF ✓" in Table 2
  global    the features mean-pooled over the clip, added to every token — the clip-level baseline, our "GVAF ✗"
  _vama     the features are the VAMA video encoder's frame tokens ("aligned video features"), pretrained by the
            parent row and frozen (`model.aligned_video`)
The DiT's cross-attention is off in every flow row (`model.cross_attention=False`), so the injection is the video's
only path into the flow and the rows differ in how the condition is injected, not in a second path beside it. The
paper states no guidance: the flow trains without condition dropout and samples without CFG.
"""
from avflow.configs_lib import v2a_parent, v2a_variant, v2a_variants

# Every variant: the Gaussian source (no alignment VAE); the base variant pretrains the VAMA.
BASE = {"model.source": "gaussian", "model.stage": "vama"}
FLOW = {"model.stage": "estimator", "model.cross_attention": False, "condition_dropout": 0.0, "inference.cfg": 0.0}


def _flow(injection: str, aligned: bool, ratio: float = 0.8) -> dict:
  return {**FLOW, "model.video_injection": injection, "model.aligned_video": aligned, "model.vama.ratio": ratio}


# Row name → (description, {field: value} set on the base config, the row whose run `init_from` names).
ROWS = {
    **{f"vama{r}": (f"VAMA pretraining, masking ratio {r} (Table 5)", {"model.vama.ratio": r}, None)
       for r in (0.5, 0.9)},
    "dynamic": ("Dynamic injection of the frame features, no VAMA (Table 2: VAMA ✗, GVAF ✓)",
                _flow("dynamic", False), None),
    "global": ("Global injection of the frame features, no VAMA (Table 2: VAMA ✗, GVAF ✗)", _flow("global", False),
               None),
    "dynamic_vama": ("Dynamic injection of the VAMA-aligned features (Table 2: VAMA ✓, GVAF ✓)",
                     _flow("dynamic", True), ""),
    "global_vama": ("Global injection of the VAMA-aligned features (Table 2: VAMA ✓, GVAF ✗)", _flow("global", True),
                    ""),
    **{f"dynamic_vama_mask{r}": (f"Dynamic injection, VAMA at masking ratio {r} (Table 5)",
                                 _flow("dynamic", True, r), f"vama{r}") for r in (0.5, 0.9)},
}
VARIANTS = v2a_variants(ROWS)


def get_config(arg: str = "toy"):
  return v2a_variant("foley_flow.py", ROWS, arg, BASE)


def parent_variant(variant: str) -> str | None:
  """The variant whose finished run `variant` starts from (`--config.init_from`), None where it starts fresh."""
  return v2a_parent(ROWS, variant)

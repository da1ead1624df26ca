"""Builds the shared config tree; the files in `configs/` pick a scale and override fields.

Fields that scripts rely on sit at the top level (big_vision style): `total_steps`, `batch_size`, `seed`,
`eval_every`, `checkpoint_every`, `log_every`. `total_steps=0` writes the initialized checkpoint and stops.
"""
import dataclasses
import importlib.util
import os

import ml_collections

from avflow.flow.diffusion import DiffusionConfig
from avflow.flow.objectives import ObjectiveConfig
from avflow.metrics import semantic, signal
from avflow.models.visah import presets

CONFIGS_PACKAGE = "avflow_configs"  # what `configs/` installs as (setup.py), so an installed avflow finds its configs


def get_field(config, path: str):
  """The value at dotted `path` ("model.latent.depth"); KeyError naming the missing part."""
  node = config
  for part in path.split("."):
    if part not in node:
      raise KeyError(f"{path}: no such field {part!r}")
    node = node[part]
  return node


def set_field(config, path: str, value) -> None:
  """Sets the existing field at dotted `path`; KeyError naming the missing part (no new fields are created)."""
  *parents, leaf = path.split(".")
  node = get_field(config, ".".join(parents)) if parents else config
  if leaf not in node:
    raise KeyError(f"{path}: no such field {leaf!r}")
  node[leaf] = value


def flat_fields(tree: dict, prefix: str = "") -> dict:
  """A nested dict of fields (`config.to_dict()`) as {dotted path: value}, the paths `get_field` / `set_field` take;
  an empty dict is a value."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(flat_fields(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def shipped_configs_dir() -> str:
  """The config files avflow ships: `configs/` beside the `avflow` package in a source tree, else the installed
  `avflow_configs` package."""
  source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  if os.path.isfile(os.path.join(source, "visah_fm.py")):
    return source
  spec = importlib.util.find_spec(CONFIGS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"neither {source} nor an installed {CONFIGS_PACKAGE} package holds avflow's configs: "
                            "reinstall avflow")
  return list(spec.submodule_search_locations)[0]


def resolve_config_file(spec: str) -> str:
  """`configs/<file>.py[:<variant>]` → the same file when it exists relative to the working directory, else the
  shipped one of that name; any other spec is returned unchanged."""
  path, sep, variant = spec.partition(":")
  if os.path.exists(path) or os.path.dirname(os.path.normpath(path)) != "configs":
    return spec
  shipped = os.path.join(shipped_configs_dir(), os.path.basename(path))
  return shipped + sep + variant if os.path.exists(shipped) else spec


# Per scale: (total_steps, batch_size, eval_every, checkpoint_every, log_every, learning_rate).
_SCHEDULE = {
    "toy": (800, 8, 400, 400, 25, 2e-3),
    "small": (20000, 16, 2000, 2000, 50, 1e-4),
    "paper": (23500, 32, 2500, 2500, 100, 1e-4),  # Sec. 3.1: 50 epochs ≈ 23,500 iterations, batch 32.
}


def training_config(task: str, total_steps: int, batch_size: int, eval_every: int, checkpoint_every: int,
                    log_every: int, learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """The fields every system's config has: the task, the schedule, Adam, the mesh."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.total_steps = total_steps
  c.batch_size = batch_size
  c.eval_every = eval_every
  c.checkpoint_every = checkpoint_every
  c.log_every = log_every
  c.nonfinite = "halt"  # or "skip": what a NaN/Inf loss or gradient does.
  c.init_from = ""  # a run directory (e.g. an imported VisAH checkpoint) whose parameters start this run.
  c.precision = "fp32"  # or "bf16": bfloat16 matmuls/convolutions, float32 parameters and optimizer state.
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=learning_rate, schedule="cosine", warmup_steps=warmup_steps, final_lr_fraction=0.0,
      b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0))
  # FSDP: `(regex, "fsdp")` rules over state paths shard tensors of ≥ fsdp_min_size elements (`train/sharding.py`).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, rules=((".*", "fsdp"),), fsdp_min_size=2 ** 14))
  return c


def base_config(scale: str, task: str) -> ml_collections.ConfigDict:
  total_steps, batch_size, eval_every, checkpoint_every, log_every, lr = _SCHEDULE[presets._check(scale)]
  audio = presets.audio_config(scale)
  c = training_config(task, total_steps, batch_size, eval_every, checkpoint_every, log_every, lr,
                      warmup_steps=50 if scale == "toy" else 500)

  c.data = ml_collections.ConfigDict(dict(
      source="toy_movies" if scale == "toy" else "records",
      toy_layout="bands",  # `toy_movies`: each source in its own band, or "natural" (overlapping spectra).
      records_dir="",
      sample_rate=audio.sample_rate,
      clip_seconds=audio.clip_seconds,
      frames_per_second=audio.frames_per_second,
      image_size=32 if scale == "toy" else 224,
      num_train_clips=2048,
      num_eval_clips=32,
      seed=1234,
      suppress_db=(-12, -9, -6),
      highlight_db=(6, 9, 12),
      peak_db=-0.5,
      remix="on_the_fly",
      worker_count=0,
  ))

  c.model = presets.model_config(scale)
  c.model.warm_start = task == "flow"
  c.model.time_conditioning = "latent_token" if task == "flow" else "none"
  c.model.conditioning = ml_collections.ConfigDict(dict(
      kind="frames_tiny" if scale == "toy" else "features",
      features_key="context",  # `features`: which stored field, CLIP image features or T5 text features.
      clip="tiny" if scale == "toy" else "vit_l14",
      clap="tiny" if scale == "toy" else "full",
      adapter_layer=2 if scale == "toy" else 18,  # Sec. 3.1: the adapter is the 18th layer of CLIP.
      modalities=("audio",),
      text_dim=4096,  # T5-XXL (Table 1 "VisAH T5").
      text_tokens=10,
      # Pretrained weights of the frozen encoders, read when a run is initialised (`avflow/train/pretrained.py`):
      # a transformers `save_pretrained` folder or a .safetensors / .bin state dict, full model or tower only.
      clip_weights="",
      clap_weights="",
      # Without weights the encoders stay random; only the toy does that by default (tiny encoders, no features).
      random_encoders=scale == "toy",
  ))

  c.objective = ml_collections.ConfigDict(dataclasses.asdict(ObjectiveConfig()))
  c.inference = ml_collections.ConfigDict(dict(num_steps=4, method="euler"))
  # Env pooled per batch of env_batch_size clips as the public VisAH evaluation (0: the whole set); semantic:
  # "passt" (KLD) and/or "imagebind" (IB), comma-separated, "" for none (`train/evaluate.py`).
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, num_samples=4, env_batch_size=signal.ENV_BATCH, semantic="",
                                          imagebind_checkpoint=semantic.DEFAULT_IMAGEBIND_CHECKPOINT))
  return c


# DAVIS per scale: (total_steps, batch_size, eval_every, checkpoint_every, log_every, learning_rate, warmup_steps).
# Paper: Adam, lr 1e-4, batch 8, 200 epochs of MUSIC (468 videos × 5 duplicates / 8 ≈ 292 steps per epoch).
_SEPARATION_SCHEDULE = {
    "toy": (1000, 8, 500, 500, 25, 2e-3, 50),
    "paper": (58500, 8, 2925, 2925, 100, 1e-4, 0),
}


SEPARATION_SCALES = tuple(_SEPARATION_SCHEDULE)


def separation_variants(rows: dict) -> tuple[str, ...]:
  """`<scale>` and `<scale>_<row>` for every separation scale and row."""
  return tuple(scale + suffix for scale in SEPARATION_SCALES for suffix in ("", *(f"_{r}" for r in rows)))


def separation_variant(file: str, rows: dict, method: str, arg: str):
  """The variant `arg` of a separation config file: its scale's config with the row's (field, value) set."""
  variant = arg or "toy"
  if variant not in separation_variants(rows):
    raise ValueError(f"unknown variant {variant!r} of {file}; expected one of {', '.join(separation_variants(rows))}")
  scale, _, row = variant.partition("_")
  config = separation_config(scale, method)
  if row:
    set_field(config, *rows[row][1])
  return config


def separation_config(scale: str, method: str) -> ml_collections.ConfigDict:
  """DAVIS-Flow (`method="flow"`) or DAVIS (`"diffusion"`) at `toy` or `paper` scale (`avflow/tasks/separate.py`)."""
  from avflow.models.davis import presets as davis_presets
  audio = davis_presets.audio_config(scale)
  total_steps, batch_size, eval_every, checkpoint_every, log_every, lr, warmup = _SEPARATION_SCHEDULE[scale]
  c = training_config("separate", total_steps, batch_size, eval_every, checkpoint_every, log_every, lr, warmup)
  c.method = method
  c.flow_source = "gaussian"  # DAVIS-Flow's x0 ~ 𝒩(0, I); "mixture": the mixture itself (a VisAH-FM-style bridge)
  c.optimizer.schedule = "cosine" if scale == "toy" else "constant"
  c.optimizer.clip_norm = 5.0  # the public code clips the gradient norm at 5
  # The toy trains at 20x the paper's rate to finish in minutes; its visual path keeps 2e-4, near the paper's 1e-4:
  # at 2e-3 the frame encoder collapses the visual vectors of a pair onto one within ~100 steps and the U-Net learns
  # to ignore the frames (docs/design.md, "DAVIS").
  c.optimizer.lr_multipliers = ml_collections.ConfigDict({"visual": 0.1} if scale == "toy" else {})
  c.data = ml_collections.ConfigDict(dict(
      source="toy_movies" if scale == "toy" else "records",
      toy_layout="bands",
      records_dir="",
      sample_rate=audio.sample_rate,
      clip_samples=audio.clip_samples,
      num_frames=audio.num_frames,
      image_size=audio.image_size,
      num_train_pairs=8192,
      num_eval_pairs=64,
      seed=1234,
      worker_count=0,
  ))
  c.model = davis_presets.model_config(scale)
  c.model.spectrogram = ml_collections.ConfigDict(dict(n_fft=audio.n_fft, hop=audio.hop, bins=audio.bins,
                                                       log_scale=audio.log_scale))
  cond = c.model.conditioning
  cond.clip_weights = ""  # CLIP ViT-B/32 weights, read when a run is initialised (`avflow/train/pretrained.py`)
  cond.random_encoders = scale == "toy"
  # DAVIS-Flow (code): the σ_min = 1e-4 path, L1, t ~ U[0, 1]; rollout off (a row turns it on for the 2-step sampler).
  c.objective = ml_collections.ConfigDict(dataclasses.asdict(ObjectiveConfig(
      rollout_weight=0.0, num_steps=2, horizon=2, time_sampler="uniform", loss="l1", sigma_min=1e-4)))
  c.diffusion = ml_collections.ConfigDict(dataclasses.asdict(DiffusionConfig()))
  # Euler on N = 2 steps; the silence mask δ = 0.002 (Table 4; 0 turns it off); the seed of the sampled x0.
  c.inference = ml_collections.ConfigDict(dict(num_steps=2, method="euler", silence_threshold=0.002, seed=0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=16, num_samples=4))
  return c


# VAFlow per scale and stage: (total_steps, batch_size, eval_every, checkpoint_every, log_every, learning_rate,
# warmup_steps). The paper reports no optimizer settings, batch size or VAE pretraining length; its Table 3 trains
# 300K steps without joint tuning and 170K + 130K with it. Every other number is a choice.
_V2A_SCHEDULE = {
    "toy": {"prior": (400, 32, 400, 400, 25, 2e-3, 20), "estimator": (1500, 16, 1500, 500, 25, 1e-3, 50),
            "joint": (500, 16, 500, 500, 25, 2e-4, 0), "vama": (600, 16, 600, 300, 25, 1e-3, 50)},
    "small": {"prior": (20_000, 64, 5000, 5000, 100, 3e-4, 500), "estimator": (100_000, 64, 10_000, 5000, 100, 1e-4, 1000),
              "joint": (50_000, 64, 10_000, 5000, 100, 5e-5, 0), "vama": (20_000, 64, 5000, 5000, 100, 3e-4, 500)},
    "paper": {"prior": (100_000, 128, 10_000, 10_000, 100, 3e-4, 1000),
              "estimator": (300_000, 128, 20_000, 10_000, 100, 1e-4, 2000),
              "joint": (130_000, 128, 20_000, 10_000, 100, 5e-5, 0),
              "vama": (100_000, 128, 10_000, 10_000, 100, 1e-4, 1000)},  # Foley-Flow: Adam, lr 1e-4, batch 128
}
V2A_SCALES = tuple(_V2A_SCHEDULE)
# The toy foley data per scale: (sample rate, clip seconds, frames per second, events per clip at most, colour grid,
# the codec's (n_fft, hop, mel bands), the codec latents' mean and standard deviation on toy train clips).
_V2A_DATA = {
    "toy": (8000, 2.0, 8.0, 3, 4, (256, 128, 32), (-0.37, 0.15)),
    "small": (16000, 8.0, 10.0, 6, 16, (1024, 256, 64), (-0.18, 0.11)),
    "paper": (16000, 10.0, 10.0, 6, 16, (1024, 256, 64), (-0.18, 0.11)),
}


def set_v2a_schedule(c: ml_collections.ConfigDict, scale: str, stage: str) -> None:
  """The schedule and Adam settings of one V2A stage ("prior", "estimator", "joint", Foley-Flow's "vama") at
  `scale`."""
  (c.total_steps, c.batch_size, c.eval_every, c.checkpoint_every, c.log_every, c.optimizer.learning_rate,
   c.optimizer.warmup_steps) = _V2A_SCHEDULE[scale][stage]


def v2a_config(scale: str) -> ml_collections.ConfigDict:
  """VAFlow (`avflow/tasks/v2a.py`) on toy foley clips; the base config pretrains the alignment VAE
  (`model.stage="prior"`).

  toy    8 kHz, 2 s, 8 fps, 32 px clips; a 32-band log-mel codec at 62.5 latent frames per second (T_a = 126,
         D_a = 32); the frames as a 4 × 4 colour grid (D_v = 48); the toy DiT (width 64, depth 2) and VAE.
  small, paper  the `presets` DiT and VAE (26M; 142.6M + 4.9M) on 16 kHz clips of 8 s / 10 s at 10 fps (CLIP's
         rate in the paper), the 64-band codec (62.5 frames per second, D_a = 64) and a 16 × 16 colour grid,
         D_v = 768 where the paper has CLIP's 768-d features: the paper's network shapes on the toy data. The paper's
         codec (Stable Audio Open's VAE) and CLIP features are not wired into this task.
  """
  from avflow.models.v2a import presets as v2a_presets
  from avflow.models.v2a.prior_losses import PriorLossConfig
  if scale not in _V2A_SCHEDULE:
    raise ValueError(f"unknown VAFlow scale {scale!r}; expected one of {', '.join(V2A_SCALES)}")
  c = training_config("v2a", *_V2A_SCHEDULE[scale]["prior"])
  sample_rate, seconds, fps, max_events, grid, (n_fft, hop, n_mels), (shift, scale_) = _V2A_DATA[scale]
  c.data = ml_collections.ConfigDict(dict(
      source="toy_foley",  # or "records": prepared records (`prepare`), each soundtrack generated from its frames
      records_dir="", sample_rate=sample_rate, clip_seconds=seconds, frames_per_second=fps, image_size=32,
      max_events=max_events, num_train_clips=8192, num_eval_clips=64,
      num_classifier_clips=256,  # toy train clips the event classifier of the evaluation learns from
      seed=1234, worker_count=0))
  # The log-mel codec (`codec.MelCodec`) reads audio at data.sample_rate; n_mels is the latent width D_a.
  codec = {k: v for k, v in v2a_presets.codec_config().items() if k != "sample_rate"}
  c.codec = ml_collections.ConfigDict(dict(codec, n_fft=n_fft, hop=hop, n_mels=n_mels))
  # x_a = (codec latent − shift) / scale: the codec's latents of toy train clips (e.g. the toy's: mean −0.37,
  # standard deviation 0.15); standardised, they have the scale of the Gaussian source and of the prior's samples.
  c.latent = ml_collections.ConfigDict(dict(shift=shift, scale=scale_))
  c.model = v2a_presets.model_config(scale)
  c.model.latent_dim = c.codec.n_mels
  c.model.conditioning = ml_collections.ConfigDict(dict(kind="frame_grid", grid=grid))
  c.model.video_dim = 3 * c.model.conditioning.grid ** 2
  c.model.prior = ml_collections.ConfigDict({k: v for k, v in v2a_presets.prior_config(scale).items()
                                             if k not in ("video_dim", "latent_dim")})
  c.model.source = "prior"  # or "gaussian" (x0 ~ 𝒩(0, I))
  c.model.stage = "prior"  # "prior" (Eq. 7), "estimator" (Eq. 8, VAE frozen), "joint" (Eq. 9) or "vama"
  c.model.cross_attention = True
  c.model.video_injection = "none"  # or "dynamic" / "global": x_v added to the DiT's latent tokens (Foley-Flow)
  # Foley-Flow's masked alignment (stage "vama") and, with aligned_video, the DiT conditioned on its video encoder.
  c.model.vama = v2a_presets.vama_config(scale)
  c.model.aligned_video = False
  c.prior_loss = ml_collections.ConfigDict(dataclasses.asdict(PriorLossConfig()))
  # Eq. 8: t ~ U(0, 1), the straight path from x0, L2 on the velocity; no rollout.
  c.objective = ml_collections.ConfigDict(dataclasses.asdict(ObjectiveConfig(rollout_weight=0.0,
                                                                             time_sampler="uniform")))
  c.condition_dropout = 0.1  # Sec. 3.3: x_v is replaced by ∅ for 10 % of the training examples
  # Sampling: `method` one of the grid solvers or "dopri5" (adaptive, rtol / atol); CFG scale γ (Eq. 10); the seed
  # of the source sample (the prior's ε, or the Gaussian x0).
  c.inference = ml_collections.ConfigDict(dict(method="euler", num_steps=8, cfg=1.0, rtol=1e-3, atol=1e-3, seed=0))
  c.eval = ml_collections.ConfigDict(dict(batch_size=32, num_samples=4))
  return c


def v2a_variants(rows: dict) -> tuple[str, ...]:
  """`<scale>` and `<scale>_<row>` for every VAFlow scale and row."""
  return tuple(scale + suffix for scale in V2A_SCALES for suffix in ("", *(f"_{r}" for r in rows)))


def v2a_parent(rows: dict, variant: str) -> str | None:
  """The variant whose run `variant` starts from (`init_from`): `rows[row][2]` at the same scale ("" the scale's
  base variant), None for the base variant and rows that start fresh."""
  scale, _, row = variant.partition("_")
  parent = rows[row][2] if row else None
  return None if parent is None else scale + (f"_{parent}" if parent else "")


def v2a_variant(file: str, rows: dict, arg: str, base: dict | None = None):
  """The variant `arg` of a V2A config file: its scale's config with the file's `base` fields and then the row's
  ({dotted path: value}, the second entry of `rows[row]`) set, then the schedule of its stage (`set_v2a_schedule`)."""
  variant = arg or "toy"
  if variant not in v2a_variants(rows):
    raise ValueError(f"unknown variant {variant!r} of {file}; expected one of {', '.join(v2a_variants(rows))}")
  scale, _, row = variant.partition("_")
  config = v2a_config(scale)
  for path, value in {**(base or {}), **(rows[row][1] if row else {})}.items():
    set_field(config, path, value)
  set_v2a_schedule(config, scale, config.model.stage)
  return config

"""`python -m avflow export (--workdir=RUN | --config=CFG --random_init) --format=visah|torch --out=FILE`.

`--format=visah`: the VisAH network in the public Lightning layout (`{"state_dict": ...}` in a `.ckpt`, 564 keys at
the paper scale; `.pt`/`.safetensors` hold the bare Lightning state dict), which the public code and
`avflow.interop.visah_pytorch.LightningVisAH` load with `strict=True`. Only for models without time conditioning.
`--format=torch`: the whole model as one `.safetensors`: `model.` + the network (time conditioning included), the
conditioner's parameters under `frame_encoder.`/`clip.`/`clap.`, and the config as JSON in the metadata;
`visah_pytorch.load_export(FILE)` rebuilds the network and `visah_pytorch.VisAHFMHighlighter` runs the flow, on context
tokens the caller supplies (visah_pytorch has no PyTorch conditioner).
`--random_init` exports the parameters `train` would start from (seed `config.seed`).
`--out` is checked before anything is computed (its suffix, not a file of the run; missing folders are created)
and written to a temporary file beside it that replaces it only when complete.
"""
import collections

import jax
import jax.numpy as jnp
import optax
from absl import flags
from ml_collections import config_flags

from avflow.commands import no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.interop import visah_pytorch, visah_convert
from avflow.models.visah.highlighter import Highlighter
from avflow.outputs import check_output, staged_file
from avflow.train import checkpoint
from avflow.train.state import abstract_batch, create_train_state

FORMATS = ("visah", "torch")
SUFFIXES = {"visah": (".ckpt", ".pt", ".pth", ".safetensors"), "torch": (".safetensors",)}  # what each writes
# What the context tokens (B, N, context_dim) of each conditioning kind are, for the PyTorch user.
CONTEXT_TOKENS = {
    "features": "the stored per-frame features (`{features_key}` of the records)",
    "frames_tiny": "the output of avflow's Flax `TinyFrameEncoder` (its parameters: `frame_encoder.`)",
    "clip": "CLIP image features of the frames (tower: `clip.`, transformers CLIPVisionModelWithProjection names)",
    "clip_adapter": "CLIP image features with the cross-modal adapter (tower and adapter: `clip.`, CLAP audio "
                    "encoder: `clap.`, transformers names; the adapter has no PyTorch module)",
}

flags.DEFINE_string("workdir", None, "Run directory to export (its config.json and latest checkpoint).")
config_flags.DEFINE_config_file("config", None, "Config file and variant, with --random_init.", lock_config=True)
flags.DEFINE_bool("random_init", False, "Export freshly initialized parameters of --config.")
flags.DEFINE_enum("format", None, FORMATS, "visah: the public VisAH Lightning layout; torch: the whole model as "
                  ".safetensors for avflow/interop/visah_pytorch.py.", required=True)
flags.DEFINE_string("out", None, "Output file (visah: .ckpt, .pt, .pth or .safetensors; torch: .safetensors); "
                    "missing folders are created.", required=True)


def random_params(config):
  """The parameters `train` initializes for `config` (no data needed)."""
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_batch(config))
  state = create_train_state(Highlighter(config.model), config, batch, optax.identity())
  return jax.device_get(state.params)


def export_visah(path: str, params, config) -> None:
  with staged_file(path) as partial:
    visah_convert.save_checkpoint(partial, params["visah"], config.model)
  print(f"wrote {path}: the VisAH network in the public Lightning layout")
  if config.model.latent.context_attention != "legacy_batch_axis":
    print(f"notice: this model's context encoder attends over each clip's frames "
          f"(context_attention={config.model.latent.context_attention!r}); the public code attends across the "
          f"batch axis instead, a different function: load it into visah_pytorch.LightningVisAH with "
          f"latent.context_attention='frames' to reproduce it")
  rest = sorted(set(params) - {"visah"})
  if rest:
    print(f"not in the public layout: {', '.join(f'{name}/' for name in rest)} (use --format=torch)")


def export_torch(path: str, params, config) -> None:
  with staged_file(path) as partial:
    state = visah_convert.save_torch_export(partial, params, config)
  prefixes = collections.Counter(key.split(".", 1)[0] for key in state)
  print(f"wrote {path}: {len(state)} tensors ({', '.join(f'{k}.*: {n}' for k, n in prefixes.items())}), the "
        f"config in its {visah_pytorch.EXPORT_CONFIG_KEY!r} metadata")
  print(f"model.*: the VisAH network (time_conditioning={config.model.time_conditioning!r}); in PyTorch "
        f"(avflow/interop/visah_pytorch.py): network, config, conditioner = visah_pytorch.load_export({path!r})")
  cond = config.model.conditioning
  tokens = CONTEXT_TOKENS.get(cond.kind, "computed by avflow's conditioner").format(features_key=cond.features_key)
  print(f"notice: visah_pytorch has no PyTorch conditioner: pass the context tokens (B, N, "
        f"{config.model.latent.context_dim}) yourself; for conditioning kind {cond.kind!r} they are {tokens}")
  if config.task == "flow" and config.inference.method != "euler":
    print(f"notice: the run integrates with {config.inference.method!r}; VisAHFMHighlighter uses Euler steps")


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  if (f.workdir is None) == (f.config is None) or (f.config is not None) != f.random_init:
    raise SystemExit("avflow export: pass --workdir=RUN, or --config=CFG --random_init")
  check_output(f.out, checkpoint.run_files(f.workdir) if f.workdir is not None else [],
               suffixes=SUFFIXES[f.format])
  config = checkpoint.load_config(f.workdir) if f.workdir is not None else f.config
  if f.format == "visah" and config.model.time_conditioning != "none":
    raise SystemExit(f"avflow export: the public VisAH layout has no time conditioning (this model has "
                     f"model.time_conditioning={config.model.time_conditioning!r}); use --format=torch")
  params = checkpoint.load_params(f.workdir) if f.workdir is not None else random_params(config)
  try:
    (export_visah if f.format == "visah" else export_torch)(f.out, params, config)
  except ValueError as e:
    raise SystemExit(f"avflow export: {e}")

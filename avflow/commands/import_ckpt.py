"""`python -m avflow import --ckpt=FILE --out=RUN [--config=CFG]`: a PyTorch checkpoint as a run directory.

What FILE may be depends on the task of `--config` (default `configs/visah.py:paper`):
- highlight (`configs/visah.py`): the public VisAH checkpoint (a Lightning `.ckpt` holding `state_dict`, or a bare
  state dict in a `.ckpt`/`.pt`/`.safetensors`, with or without the `model.` prefix), mapped strictly onto
  `VisAH(config.model)` with `model.latent.context_attention = "legacy_batch_axis"` (the public code's attention);
  or a file written by `python -m avflow export --format=torch`, which carries its own config (no --config then).
  The parameters go under the `Highlighter` paths (`visah/...`).
- separate (`configs/davis_flow.py:paper`, `configs/davis.py:paper`): the public DAVIS / DAVIS-Flow checkpoint,
  `unet_<suffix>.pth` with `frame_<suffix>.pth` beside it (either may be named), mapped strictly onto the
  `Separator`'s `unet/` and `visual/temporal_transformer/` with `model.fim_time = False` (the public forward); the
  frame file's CLIP tower is not read (`model.conditioning.clip_weights` gives CLIP).
RUN gets `config.json` and the parameters in `checkpoints/0`, for `avflow.train.checkpoint.load_params(RUN)` and
`python -m avflow train --config=... --config.init_from=RUN` (what the file lacks starts fresh: the printout names
it). RUN is written in a temporary folder beside it and moved into place only when complete. The module is not
called `import`, a Python keyword; the command is.
"""
import os
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
from absl import flags
from flax import traverse_util
from ml_collections import config_flags

from avflow import tasks
from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.interop import davis_convert, visah_convert
from avflow.interop.hf_import import CheckpointMismatchError, load_state_dict
from avflow.outputs import check_output, staged_folder
from avflow.train.checkpoint import CONFIG_FILE, RUN_ENTRIES, Checkpointer, save_config
from avflow.train.state import abstract_params

PUBLIC_CONFIG = os.path.join(os.path.dirname(DEFAULT_CONFIG), "visah.py") + ":paper"
LEGACY_NOTICE = ("notice: model.latent.context_attention = 'legacy_batch_axis': the imported model reproduces the "
                 "public code's context encoder, whose attention runs across the batch axis (separately for each "
                 "frame index) instead of over each clip's frames. Runs started from it with --config.init_from "
                 "use their own config's mode ('frames' in configs/visah_fm.py).")
FIM_NOTICE = ("notice: model.fim_time = False: the imported model reproduces the public code's forward, which "
              "calls the FIM without the time embedding; the FIM's time MLPs the file holds (never called, so never "
              "trained) are not imported. Runs started from it with --config.init_from use their own config's "
              "fim_time (True in configs/davis_flow.py: those MLPs then start fresh).")

config_flags.DEFINE_config_file("config", PUBLIC_CONFIG, "Config whose model the public checkpoint fits: its task "
                                "says which public layout FILE has (not for an `avflow export --format=torch` "
                                "file, which carries its own).", lock_config=True)
flags.DEFINE_string("ckpt", None, "Checkpoint: .ckpt, .pt, .pth or .safetensors (DAVIS: unet_<suffix>.pth, with "
                    "frame_<suffix>.pth beside it).", required=True)
flags.DEFINE_string("out", None, "New run directory to write (missing parent folders are created).",
                    required=True)
flags.DEFINE_bool("allow_pickle", False, "Read a torch file that holds more than tensors (a Lightning checkpoint "
                  "with pickled hyper-parameters): only for files you trust.")


class Importer(NamedTuple):
  """How one task's public checkpoint becomes parameters."""
  read: Callable[[str, bool], tuple[dict, list[str]]]  # (FILE, allow_pickle) -> (tensors, files read)
  public_model: Callable[[Any], str]  # sets the config fields of the public code's forward; returns the notice
  convert: Callable[[dict, Any, Any, bool], Any]  # (tensors, config, abstract params, exported) -> params
  start_from: str  # how to train from RUN ({out}), printed after a public import


def _visah_public_model(config) -> str:
  if config.model.time_conditioning != "none":
    raise SystemExit("avflow import: the public VisAH layout has no time conditioning; import with a VisAH config "
                     "(configs/visah.py:paper) and start VisAH-FM from the run with --config.init_from")
  config.model.latent.context_attention = "legacy_batch_axis"
  return LEGACY_NOTICE


def _visah_convert(state, config, template, exported):
  if exported:
    return visah_convert.highlighter_from_torch(state, config.model, template)
  return {"visah": visah_convert.torch_to_flax(state, config.model)}


def _davis_public_model(config) -> str:
  config.model.fim_time = False
  return FIM_NOTICE


IMPORTERS = {  # by `tasks.get(config).name`
    "highlight": Importer(
        read=lambda path, allow_pickle: (load_state_dict(path, allow_pickle), [path]),
        public_model=_visah_public_model, convert=_visah_convert,
        start_from="start VisAH-FM from it: python -m avflow train --config=configs/visah_fm.py:<the same scale> "
                   "--config.init_from={out} --workdir=NEW_RUN"),
    "separate": Importer(
        read=davis_convert.read_public, public_model=_davis_public_model,
        convert=lambda state, config, template, exported: davis_convert.torch_to_flax(state, config.model),
        start_from="train from it: python -m avflow train --config=configs/davis_flow.py:<the same scale> "
                   "--config.init_from={out} --workdir=NEW_RUN (paper scale: with "
                   "--config.model.conditioning.clip_weights=<CLIP ViT-B/32 weights>)"),
}


def write_run(run_dir: str, config, params) -> None:
  """RUN/config.json and RUN/checkpoints/0 holding `{step: 0, params}`, as `load_params` reads them."""
  save_config(run_dir, config)
  ckpt = Checkpointer(run_dir, async_save=False)
  ckpt.save(0, {"step": np.int32(0), "params": params})
  ckpt.close()


def fresh_parts(template, params) -> dict[str, int]:
  """Parameter count of each largest subtree of the model (`template`) that `params` has nothing of."""
  loaded = traverse_util.flatten_dict(params)
  prefixes = {path[:d] for path in loaded for d in range(1, len(path) + 1)}
  parts: dict[str, int] = {}
  for path, leaf in traverse_util.flatten_dict(template).items():
    if path not in loaded:
      part = "/".join(next(path[:d] for d in range(1, len(path) + 1) if path[:d] not in prefixes))
      parts[part] = parts.get(part, 0) + int(np.prod(leaf.shape))
  return parts


def _exported_config(path: str) -> Optional[Any]:
  """The config an `avflow export --format=torch` file carries; None for a public checkpoint (or a file that cannot
  be read: the task's reader then says why)."""
  from safetensors import SafetensorError
  try:
    return visah_convert.read_export_config(path)
  except SafetensorError:
    return None


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  if not os.path.isfile(f.ckpt):
    raise SystemExit(f"avflow import: {f.ckpt} does not exist")
  check_output(f.out, [f.ckpt], entries=RUN_ENTRIES)
  if any(os.path.exists(os.path.join(f.out, entry)) for entry in RUN_ENTRIES):
    raise SystemExit(f"avflow import: {f.out} already holds a run; choose a new --out")
  config = _exported_config(f.ckpt)
  exported = config is not None
  if exported and f["config"].present:
    raise SystemExit(f"avflow import: {f.ckpt} was written by `avflow export --format=torch` and carries its own "
                     "config; drop --config")
  config = config if exported else f.config
  task = tasks.get(config)
  if task.name not in IMPORTERS:
    raise SystemExit(f"avflow import: no public checkpoint layout for the {task.name} task of --config; expected "
                     f"a config of one of the tasks {', '.join(IMPORTERS)}")
  importer = IMPORTERS[task.name]
  try:
    state, files = importer.read(f.ckpt, f.allow_pickle)
  except ValueError as e:
    hint = "\n(on the command line: --allow_pickle)" if "allow_pickle" in str(e) else ""
    raise SystemExit(f"avflow import: {e}{hint}")
  notice = None if exported else importer.public_model(config)
  template = abstract_params(task.build(config.model), config)
  try:
    params = importer.convert(state, config, template, exported)
  except CheckpointMismatchError as e:
    raise SystemExit(f"avflow import: {', '.join(files)}: {e}")
  with staged_folder(f.out, RUN_ENTRIES) as partial:
    write_run(partial, config, params)
  count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
  print(f"read {', '.join(files)}: {len(state)} tensors")
  if notice:
    print(notice)
  print(f"wrote {os.path.join(f.out, CONFIG_FILE)} and {os.path.join(f.out, 'checkpoints', '0')}: {count:,} "
        f"parameters under {', '.join(f'{k}/' for k in params)}")
  fresh = fresh_parts(template, params)
  if fresh:
    print("not in the checkpoint (a run started from it initialises them, or reads a pretrained encoder's weights "
          "field): " + ", ".join(f"{part}/ ({n:,} parameters)" for part, n in fresh.items()))
  if not exported:
    print(importer.start_from.format(out=f.out))

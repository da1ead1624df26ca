"""`python -m avflow import --ckpt=FILE --out=RUN [--config=configs/visah.py:paper]`: a PyTorch checkpoint as a run.

FILE is either the public VisAH checkpoint (a Lightning `.ckpt` holding `state_dict`, or a bare state dict in a
`.ckpt`/`.pt`/`.safetensors`, with or without the `model.` prefix), mapped strictly onto `VisAH(config.model)`
with `model.latent.context_attention = "legacy_batch_axis"` (the public code's attention); or a file written by
`python -m avflow export --format=torch`, which carries its own config. RUN gets `config.json` and the parameters in
`checkpoints/0` under the `Highlighter` paths (`visah/...`), for `avflow.train.checkpoint.load_params(RUN)` and
`python -m avflow train --config=configs/visah_fm.py:paper --config.init_from=RUN` (the time embedding and the
conditioner start fresh). RUN is written in a temporary folder beside it and moved into place only when complete.
The module is not called `import`, a Python keyword; the command is.
"""
import os

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.interop import visah_convert
from avflow.interop.hf_import import CheckpointMismatchError, load_state_dict
from avflow.models.visah.highlighter import Highlighter
from avflow.outputs import check_output, staged_folder
from avflow.train.checkpoint import CONFIG_FILE, RUN_ENTRIES, Checkpointer, save_config
from avflow.train.state import abstract_params

PUBLIC_CONFIG = os.path.join(os.path.dirname(DEFAULT_CONFIG), "visah.py") + ":paper"
LEGACY_NOTICE = ("notice: model.latent.context_attention = 'legacy_batch_axis': the imported model reproduces the "
                 "public code's context encoder, whose attention runs across the batch axis (separately for each "
                 "frame index) instead of over each clip's frames. Runs started from it with --config.init_from "
                 "use their own config's mode ('frames' in configs/visah_fm.py).")

config_flags.DEFINE_config_file("config", PUBLIC_CONFIG, "Config whose model the public checkpoint fits (not for "
                                "an `avflow export --format=torch` file, which carries its own).", lock_config=True)
flags.DEFINE_string("ckpt", None, "Checkpoint: .ckpt, .pt, .pth or .safetensors.", required=True)
flags.DEFINE_string("out", None, "New run directory to write (missing parent folders are created).",
                    required=True)
flags.DEFINE_bool("allow_pickle", False, "Read a torch file that holds more than tensors (a Lightning checkpoint "
                  "with pickled hyper-parameters): only for files you trust.")


def write_run(run_dir: str, config, params) -> None:
  """RUN/config.json and RUN/checkpoints/0 holding `{step: 0, params}`, as `load_params` reads them."""
  save_config(run_dir, config)
  ckpt = Checkpointer(run_dir, async_save=False)
  ckpt.save(0, {"step": np.int32(0), "params": params})
  ckpt.close()


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  if not os.path.isfile(f.ckpt):
    raise SystemExit(f"avflow import: {f.ckpt} does not exist")
  check_output(f.out, [f.ckpt], entries=RUN_ENTRIES)
  if any(os.path.exists(os.path.join(f.out, entry)) for entry in RUN_ENTRIES):
    raise SystemExit(f"avflow import: {f.out} already holds a run; choose a new --out")
  try:
    state = load_state_dict(f.ckpt, f.allow_pickle)
  except ValueError as e:
    hint = "\n(on the command line: --allow_pickle)" if "allow_pickle" in str(e) else ""
    raise SystemExit(f"avflow import: {e}{hint}")
  config = visah_convert.read_export_config(f.ckpt)
  public = config is None
  if not public and f["config"].present:
    raise SystemExit(f"avflow import: {f.ckpt} was written by `avflow export --format=torch` and carries its own "
                     "config; drop --config")
  if public:
    config = f.config
    if config.model.time_conditioning != "none":
      raise SystemExit("avflow import: the public VisAH layout has no time conditioning; import with a VisAH config "
                       "(configs/visah.py:paper) and start VisAH-FM from the run with --config.init_from")
    config.model.latent.context_attention = "legacy_batch_axis"
  try:
    if public:
      params = {"visah": visah_convert.torch_to_flax(state, config.model)}
    else:
      template = abstract_params(Highlighter(config.model), config)
      params = visah_convert.highlighter_from_torch(state, config.model, template)
  except CheckpointMismatchError as e:
    raise SystemExit(f"avflow import: {f.ckpt}: {e}")
  with staged_folder(f.out, RUN_ENTRIES) as partial:
    write_run(partial, config, params)
  count = sum(int(np.prod(np.shape(leaf))) for leaf in jax.tree.leaves(params))
  print(f"read {f.ckpt}: {len(state)} tensors")
  if public:
    print(LEGACY_NOTICE)
  print(f"wrote {os.path.join(f.out, CONFIG_FILE)} and {os.path.join(f.out, 'checkpoints', '0')}: {count:,} "
        f"parameters under {', '.join(f'{k}/' for k in params)}")
  if public:
    print(f"start VisAH-FM from it: python -m avflow train --config=configs/visah_fm.py:<the same scale> "
          f"--config.init_from={f.out} --workdir=NEW_RUN")

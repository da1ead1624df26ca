"""Pretrained weights of the frozen encoders: `model.conditioning.clip_weights` and `clap_weights`.

Each is a transformers `save_pretrained` folder or a `.safetensors` / `.bin` state dict of the CLIP (vision
tower, or the full `CLIPModel`) or CLAP (`ClapAudioModelWithProjection`, or the full `ClapModel`) weights. They
are read once, when a run is initialised (a resumed run restores them from its checkpoint), through the strict
importers of `avflow.interop.hf_import` into the `clip` / `clap` parameter subtrees; the adapter keeps its
initialisation. The encoders are frozen (`avflow.train.partition`), so every checkpoint carries exactly the
imported values and `highlight`, `eval` and `export` read them from there.

`check_weights` refuses a run whose conditioning runs CLIP or CLAP without weights, unless
`model.conditioning.random_encoders` (the toy default: its tiny encoders have no pretrained weights) says so.
"""
import logging
import os
from typing import Any

import jax

from avflow import tasks
from avflow.errors import AvflowError
from avflow.interop import hf_import
from avflow.train.partition import frozen_mask, is_under

IMPORTERS = {"clip": hf_import.import_clip, "clap": hf_import.import_clap}


class EncoderWeightsError(AvflowError, ValueError):
  """A run would train on random frozen encoders."""


def field(encoder: str) -> str:
  return f"model.conditioning.{encoder}_weights"


def check_weights(config) -> None:
  """`EncoderWeightsError` (one line) when a CLIP / CLAP the conditioning runs has no weights and
  `model.conditioning.random_encoders` is off."""
  cond = config.model.conditioning
  missing = [e for e in tasks.get(config).pretrained_encoders(config.model) if not cond[f"{e}_weights"]]
  if missing and not cond.random_encoders:
    names = " and ".join(field(e) for e in missing)
    raise EncoderWeightsError(
        f"{names} {'is' if len(missing) == 1 else 'are'} empty: the {cond.kind} conditioning would train on "
        f"random frozen {' and '.join(e.upper() for e in missing)}; set {names} to the pretrained weights (a "
        "save_pretrained folder, .safetensors or .bin), or model.conditioning.random_encoders=True if random "
        "encoders are intended")


def _subtree(params, path):
  for key in path:
    params = params[key]
  return params


def _replace(params, path, value):
  """`params` (nested dicts) with the subtree at `path` replaced by `value`."""
  if not path:
    return value
  return {**params, path[0]: _replace(params[path[0]], path[1:], value)}


def imported_prefixes(config) -> tuple[str, ...]:
  """The frozen parameter prefixes `load_weights` fills from files (`state.init_params` need not draw them)."""
  cond = config.model.conditioning
  task = tasks.get(config)
  subtrees = ["/".join(path) for encoder, path in task.pretrained_encoders(config.model).items()
              if cond.get(f"{encoder}_weights")]
  return tuple(p for p in task.frozen_prefixes(config.model) if is_under(p, tuple(subtrees)))


def load_weights(config, params: Any) -> tuple[Any, dict]:
  """`params` with the configured encoder weights imported, and what was loaded per encoder: the field, the
  path, the files read and the number of (frozen) tensors imported. `hf_import.CheckpointMismatchError` names
  the field and every missing, unexpected or mis-shaped tensor."""
  cond = config.model.conditioning
  task = tasks.get(config)
  used = task.pretrained_encoders(config.model)
  for encoder in IMPORTERS:
    if cond.get(f"{encoder}_weights") and encoder not in used:
      logging.warning("%s is set but the %s conditioning runs no %s: not read", field(encoder), cond.kind,
                      encoder.upper())
  loaded = {}
  frozen = task.frozen_prefixes(config.model)
  for encoder, subtree in used.items():
    path = cond[f"{encoder}_weights"]
    if not path:
      continue
    state, files = hf_import.load_pretrained(path)
    try:
      params = _replace(params, subtree, IMPORTERS[encoder](state, _subtree(params, subtree)))
    except hf_import.CheckpointMismatchError as e:
      raise hf_import.CheckpointMismatchError(f"{field(encoder)}={path}: {e}") from e
    nested = _subtree(params, subtree)
    for key in reversed(subtree):  # the imported subtree alone, at its path, for the frozen prefixes
      nested = {key: nested}
    mask = frozen_mask(nested, frozen)
    tensors = sum(jax.tree.leaves(mask))
    loaded[encoder] = dict(field=field(encoder), path=os.path.abspath(path),
                           files=[os.path.abspath(f) for f in files], tensors=int(tensors))
    logging.info("%s: %d %s tensors from %s", field(encoder), tensors, encoder.upper(), ", ".join(files))
  return params, loaded

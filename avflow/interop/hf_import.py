"""Load transformers CLIP / CLAP checkpoints into the Flax encoders of `avflow.models`.

The Flax trees mirror the transformers module names, so the key map is derived from the
target tree itself (the "look up the randomly initialised Flax tree" rule):

| Flax path element / leaf            | PyTorch key element       | tensor conversion           |
|-------------------------------------|---------------------------|-----------------------------|
| `layers_3`, `blocks_1` (any `_<i>`) | `layers.3`, `blocks.1`    |                             |
| `kernel`, 2-D (Dense `(in, out)`)   | `weight` `(out, in)`      | transpose                   |
| `kernel`, 4-D (Conv `(kh, kw, in, out)`) | `weight` `(out, in, kh, kw)` | `transpose(2, 3, 1, 0)` |
| `scale` (LayerNorm, BatchNorm)      | `weight`                  |                             |
| `embedding` (Embed)                 | `weight`                  |                             |
| `mean`, `var` (frozen BatchNorm)    | `running_mean`, `running_var` |                         |
| anything else (`bias`, `class_embedding`, `relative_position_bias_table`) | same name | |

Derived buffers (`position_ids`, `relative_position_index`, `num_batches_tracked`) are not
parameters and are skipped. Loading is all-or-nothing: every missing, unexpected and
mis-shaped tensor is collected and reported in ONE `CheckpointMismatchError`.
`export_state_dict` goes the other way; `load_state_dict` reads any `.safetensors` or torch
checkpoint file (also used for VisAH by `avflow.interop.visah_convert`), `load_pretrained` a file or a
transformers `save_pretrained` folder (sharded or not).

The strict converters of the public VisAH and DAVIS layouts (`visah_convert`, `davis_convert`) share the leaf
conversion (`leaf_to_torch`, `leaf_to_flax`, `torch_shape`: kernels and `in_proj_kernel` reordered as in the
table) and the error report (`shape_problems`, `mismatch_report`).
"""
import json
import os
import re
from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np

DERIVED_BUFFERS = ("position_ids", "relative_position_index", "num_batches_tracked")
# Keys of the other tower when the checkpoint is a full CLIPModel / ClapModel.
CLIP_OTHER_TOWER = ("text_model.", "text_projection.", "logit_scale")
CLAP_OTHER_TOWER = ("text_model.", "text_projection.", "logit_scale_a", "logit_scale_t")

KERNEL_LEAVES = ("kernel", "in_proj_kernel")  # Flax leaves stored with their axes reordered in PyTorch
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight",
               "mean": "running_mean", "var": "running_var"}


class CheckpointMismatchError(ValueError):
  """The checkpoint and the Flax parameters disagree; the message lists every difference."""


def _is_torch_file(path: str) -> bool:
  """Whether `path` starts like a `torch.save` file: a zip archive, or a pickle (files from before torch 1.6)."""
  with open(path, "rb") as f:
    head = f.read(4)
  return head == b"PK\x03\x04" or head[:1] == b"\x80"


def load_state_dict(path: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """A checkpoint's tensors as numpy arrays (keys as stored; bfloat16 is widened to float32).

  `.safetensors`, or a torch file (`.bin`, `.pt`, `.pth`, `.ckpt`): a bare state dict or a Lightning
  checkpoint (its `state_dict` is taken). Torch files are read with `weights_only=True` unless
  `allow_pickle` (only for trusted files: a Lightning checkpoint whose hyper-parameters hold arbitrary
  Python objects needs it).
  """
  import torch
  if path.endswith(".safetensors"):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
      return {k: to_numpy(v) for k, v in load_file(path).items()}
    except SafetensorError as e:
      raise ValueError(f"{path} is not a safetensors file that can be read ({e})") from e
  if not _is_torch_file(path):
    raise ValueError(f"{path} is not a PyTorch checkpoint that can be read (invalid data)")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
  except Exception as e:  # torch raises UnpicklingError (or RuntimeError) for non-weights
    if allow_pickle:
      raise
    raise ValueError(f"{path} holds more than tensors and could not be read with "
                     f"weights_only=True; if you trust the file, pass allow_pickle=True "
                     f"({e})") from e
  if isinstance(obj, Mapping) and "state_dict" in obj:
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
  if not_tensors:
    raise ValueError(f"{path}: entries that are not tensors: {not_tensors[:10]}")
  return {k: to_numpy(v) for k, v in obj.items()}


# The weights files of a `save_pretrained` folder, in the order transformers prefers them.
PRETRAINED_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")


def pretrained_files(path: str) -> list[str]:
  """The weights files behind `path`: the file itself, or those of a `save_pretrained` folder (every shard
  listed by its `*.index.json`)."""
  if not os.path.isdir(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"weights {path} do not exist")
    return [path]
  for name in PRETRAINED_FILES:
    file = os.path.join(path, name)
    if os.path.isfile(file):
      if not name.endswith(".index.json"):
        return [file]
      with open(file) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      return [os.path.join(path, shard) for shard in shards]
  raise FileNotFoundError(f"{path} holds none of {', '.join(PRETRAINED_FILES)} (not a save_pretrained folder)")


def load_pretrained(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
  """The tensors of a weights file or `save_pretrained` folder, and the files they were read from."""
  files = pretrained_files(path)
  state = {}
  for file in files:
    state.update(load_state_dict(file))
  return state, files


def to_numpy(value: Any) -> np.ndarray:
  """numpy view of a numpy array or a torch tensor (bfloat16 is widened to float32)."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
  return np.asarray(value)


def _kernel_axes(ndim: int) -> tuple[int, ...]:
  """Axis order taking a PyTorch weight to its Flax kernel: Conv `(2, 3, 1, 0)`, else all reversed."""
  return (2, 3, 1, 0) if ndim == 4 else tuple(reversed(range(ndim)))


def _flax_axes(path: tuple, ndim: int) -> tuple[int, ...]:
  """Axis order taking the PyTorch tensor of the Flax leaf at `path` (names) to the leaf: kernels (`kernel`, and
  the packed `in_proj_kernel` of `MultiheadAttention`) reordered, other leaves as they are."""
  return _kernel_axes(ndim) if path[-1] in KERNEL_LEAVES else tuple(range(ndim))


def torch_shape(path: tuple, shape: tuple) -> tuple[int, ...]:
  """The shape of the PyTorch tensor of a Flax leaf at `path` (names) of `shape`."""
  return tuple(shape[a] for a in np.argsort(_flax_axes(path, len(shape))))


def leaf_to_torch(path: tuple, value: Any) -> np.ndarray:
  """The PyTorch tensor of the Flax leaf at `path` (names): a fresh, writable, C-ordered array."""
  value = np.asarray(value)
  return np.array(np.transpose(value, np.argsort(_flax_axes(path, value.ndim))), order="C")


def leaf_to_flax(path: tuple, value: Any) -> np.ndarray:
  """The Flax leaf at `path` (names) from its PyTorch tensor (inverse of `leaf_to_torch`): a fresh float32 array,
  so that it never aliases the PyTorch tensor's memory."""
  value = np.asarray(value)
  return np.array(np.transpose(value, _flax_axes(path, value.ndim)), np.float32, order="C")


def shape_problems(given: Mapping[str, tuple], required: Mapping[str, tuple],
                   optional: Mapping[str, tuple] = {}) -> list[tuple[str, list[str]]]:
  """The missing, unexpected and mis-shaped keys of `given` (key -> shape) against `required` and `optional` (keys
  that may be absent), as `mismatch_report` lists them; a problem-free match has only empty lists."""
  known = {**optional, **required}
  return [("missing", [k for k in required if k not in given]),
          ("unexpected", [k for k in given if k not in known]),
          ("mis-shaped (given != model)", [f"{k}: {tuple(given[k])} != {tuple(shape)}" for k, shape in known.items()
                                           if k in given and tuple(given[k]) != tuple(shape)])]


def mismatch_report(header: str, problems: Iterable[tuple[str, list[str]]]) -> str:
  """`header`, then each non-empty group of `problems` (title, items) with its count and one item a line."""
  lines = [header]
  for title, items in problems:
    if items:
      lines.append(f"  {len(items)} {title}:")
      lines += [f"    {item}" for item in items]
  return "\n".join(lines)


def _torch_key(path: tuple) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  names = [p.key for p in path]
  modules = [re.sub(r"_(\d+)$", r".\1", n) for n in names[:-1]]
  leaf = names[-1]
  key = ".".join(modules + [_LEAF_NAMES.get(leaf, leaf)])
  if leaf == "kernel":
    return key, lambda w: np.transpose(w, _kernel_axes(w.ndim))
  return key, lambda w: w


def key_map(params: Any, keep: Iterable[str] = ()) -> dict[str, tuple[tuple, Callable]]:
  """PyTorch key -> (Flax path, conversion) for every Flax leaf not under a `keep` prefix."""
  keep = tuple(keep)
  out = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(p.key for p in path)
    if any(name == k or name.startswith(k + "/") for k in keep):
      continue
    key, convert = _torch_key(path)
    out[key] = (path, convert)
  return out


def import_state_dict(state_dict: Mapping[str, Any], params: Any, *, keep: Iterable[str] = (),
                      skip_prefixes: Iterable[str] = ()) -> Any:
  """Return `params` with every leaf replaced by its converted checkpoint tensor.

  `keep`: Flax path prefixes (`"adapter"`) that have no checkpoint tensor and keep their
  value from `params`. `skip_prefixes`: checkpoint keys to ignore (the other tower).
  Raises `CheckpointMismatchError` listing missing, unexpected and mis-shaped tensors.
  """
  expected = key_map(params, keep)
  skip = tuple(skip_prefixes)
  state = {k: to_numpy(v) for k, v in state_dict.items()
           if not (skip and k.startswith(skip)) and k.rsplit(".", 1)[-1] not in DERIVED_BUFFERS}
  leaves = {path: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  missing = sorted(k for k in expected if k not in state)
  unexpected = sorted(k for k in state if k not in expected)
  misshaped, converted = [], {}
  for key, (path, convert) in expected.items():
    if key not in state:
      continue
    value = convert(state[key])
    want = tuple(leaves[path].shape)
    if value.shape != want:
      misshaped.append(f"{key}: checkpoint {tuple(state[key].shape)} -> {value.shape}, "
                       f"expected {want} at {'/'.join(p.key for p in path)}")
    else:
      converted[path] = value.astype(leaves[path].dtype)
  if missing or unexpected or misshaped:
    lines = ["checkpoint does not match the Flax parameters:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
      lines.append(f"  {title} ({len(items)}):" + "".join(f"\n    {item}" for item in items))
    raise CheckpointMismatchError("\n".join(lines))
  return jax.tree_util.tree_map_with_path(lambda path, leaf: converted.get(path, leaf), params)


def export_state_dict(params: Any) -> dict[str, np.ndarray]:
  """The PyTorch state dict of Flax `params` (the inverse of `import_state_dict` without `keep`).

  Fresh, C-ordered numpy arrays; derived buffers are not written.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    key, _ = _torch_key(path)
    out[key] = leaf_to_torch(tuple(p.key for p in path), leaf)
  return out


def import_clip(state_dict: Mapping[str, Any], params: Any) -> Any:
  """`CLIPVisionModelWithProjection` or full `CLIPModel` weights into `CLIPVision` params."""
  return import_state_dict(state_dict, params, keep=("adapter",), skip_prefixes=CLIP_OTHER_TOWER)


def import_clap(state_dict: Mapping[str, Any], params: Any) -> Any:
  """`ClapAudioModelWithProjection` or full `ClapModel` weights into `CLAPAudio` params."""
  return import_state_dict(state_dict, params, skip_prefixes=CLAP_OTHER_TOWER)


def load_clip(path: str, params: Any) -> Any:
  return import_clip(load_state_dict(path), params)


def load_clap(path: str, params: Any) -> Any:
  return import_clap(load_state_dict(path), params)

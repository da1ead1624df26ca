"""DAVIS / DAVIS-Flow parameters between avflow's Flax `Separator` and the public PyTorch checkpoint layout.

The public training scripts save two state dicts side by side, `unet_<suffix>.pth` and `frame_<suffix>.pth`
(suffix `best` or `latest`):

| file: key prefix               | holds                                               | Flax                        |
|--------------------------------|-----------------------------------------------------|-----------------------------|
| unet: `net_unet.`              | the Separation U-Net (36,549,603 parameters, paper) | `unet/`                     |
| unet: `time_mlp.{1,3}.`        | a time MLP of the wrapper module, never called      | shape-checked, not read     |
| frame: `temporal_transformer.` | the `nn.Transformer` over the frames (13,663,232)   | `visual/temporal_transformer/`|
| frame: `model.`                | the frozen OpenAI CLIP ViT-B/32                     | not read                    |

CLIP is not read: the Flax CLIP tower takes the transformers weights of `model.conditioning.clip_weights`
(`avflow.train.pretrained`), and nothing of the frame encoder (`visual/clip`, `visual/frame_encoder`) is in this
layout. The U-Net's names are the table of `avflow.models.davis.unet`; the transformer's are PyTorch's
(`avflow.nn.transformer`). Leaves: Dense and Conv `kernel` <-> `weight` (`hf_import.leaf_to_torch`), LayerNorm
`scale` <-> `weight` (with a bias) or the U-Net's channel gain `g` `(1, C, 1, 1)`; each time-attention projection
stacks its heads on a leading axis, one public module per head.

With `model.fim_time = False` (the public forward: the FIM is called without the time embedding) the model has no
FIM time MLPs; their public tensors (`net_unet.mid_block{1,2}.mlp.1.*`, `net_unet.mid_attn.fn.fn.mlp.1.*`) are
then shape-checked and left out, like the wrapper's `time_mlp`.

`network_state_dict(state_dict, cfg)` takes the tensors of one or both files (merged: the prefixes do not clash)
to the state dict of `davis_pytorch.DavisSeparator(cfg)`, strictly: one `CheckpointMismatchError` names every
missing, unexpected and mis-shaped key. `torch_to_flax` goes on to the Flax parameters `{unet, visual:
{temporal_transformer}}`, `flax_to_torch` comes back (bitwise); `read_public(path)` reads a file and the other of
its pair.
"""
import copy
import functools
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import ml_collections
import numpy as np
import torch
from flax import traverse_util

from avflow.interop import davis_pytorch
from avflow.interop.hf_import import (CheckpointMismatchError, leaf_to_flax, leaf_to_torch, load_state_dict,
                                      mismatch_report, shape_problems, to_numpy, torch_shape)
from avflow.models.davis.separator import abstract_params

UNET_PREFIX = "net_unet."
TRANSFORMER_PREFIX = "temporal_transformer."
WRAPPER_TIME_MLP = "time_mlp."
CLIP_PREFIX = "model."
PAIR = ("unet_", "frame_")  # the file names of the public checkpoint: <prefix><suffix>
FRAME_ENCODERS = ("clip", "frame_encoder")  # subtrees of `visual` outside the public layout
_HEADER = "{} does not match the DAVIS separator of this config:"

Path = Tuple[str, ...]

# Module names below `unet/<block>/`, by the kind of block (`_block_kind`); other names are the same in PyTorch.
_SUBMODULES = {
    "resnet": {"mlp": "mlp.1"},
    "linear_attention": {"norm": "fn.norm", "mlp": "fn.fn.mlp.1", "to_qkv": "fn.fn.to_qkv",
                         "to_out": "fn.fn.to_out.0", "out_norm": "fn.fn.to_out.1"},
    "attention": {"norm": "fn.norm", "mlp": "fn.fn.mlp.1", "to_qkv": "fn.fn.to_qkv", "to_out": "fn.fn.to_out"},
    "time_attention": {"mlp": "fn.mlp.1", "query": "fn.attn_conv_Q_{}", "key": "fn.attn_conv_K_{}",
                       "value": "fn.attn_conv_V_{}", "concat_proj": "fn.attn_concat_proj"},
    "sampler": {"conv": "1"},
}
_CA_BLOCK = ("resnet", "linear_attention", "time_attention", "sampler")  # `downs_{i}_{j}`, `ups_{i}_{j}` by j
# A time-attention projection's leaves, per head: conv weight and bias, PReLU slope, BandNorm affine.
_HEAD_LEAVES = {"kernel": "0.weight", "bias": "0.bias", "slope": "1.weight", "gamma": "2.gamma", "beta": "2.beta"}
# Per-head tensor (Flax slice -> PyTorch, PyTorch -> Flax slice).
_HEAD_CONVERSIONS: Dict[str, Tuple[Callable, Callable]] = {
    "kernel": (lambda a: a.T[:, :, None, None], lambda w: w[:, :, 0, 0].T),  # (C, W) <-> (W, C, 1, 1)
    "bias": (lambda a: a, lambda w: w),
    "slope": (lambda a: a.reshape(1), lambda w: w.reshape(())),
    "gamma": (lambda a: a.T[None, :, None, :], lambda w: w[0, :, 0, :].T),  # (F, W) <-> (1, W, 1, F)
}
_HEAD_CONVERSIONS["beta"] = _HEAD_CONVERSIONS["gamma"]


def _block_kind(block: str) -> Tuple[str, Optional[str]]:
  """The PyTorch name of a top-level U-Net module and its kind (None: a plain layer)."""
  ca = re.fullmatch(r"(downs|ups)_(\d+)_(\d)", block)
  if ca:
    return ".".join(ca.groups()), _CA_BLOCK[int(ca.group(3))]
  if block.startswith("time_mlp_"):
    return "time_mlp." + block.rsplit("_", 1)[1], None
  return block, {"mid_attn": "attention", "init_conv": None, "final_conv": None}.get(block, "resnet")


class _Entry:
  """One Flax leaf: its PyTorch key(s), shapes and conversions. A stacked time-attention leaf has one key per
  head (`keys[h]` holds `leaf[h]`)."""

  def __init__(self, path: Path, shape: Tuple[int, ...], siblings: Tuple[str, ...]):
    self.path, self.shape = path, tuple(shape)
    *modules, leaf = path
    kind = None
    if modules[0] == "unet":
      block, kind = _block_kind(modules[1])
      names = [UNET_PREFIX + block] + [_SUBMODULES.get(kind, {}).get(m, m) for m in modules[2:]]
    else:  # visual/temporal_transformer/...: PyTorch's names
      names = [re.sub(r"_(\d+)$", r".\1", m) for m in modules[1:]]
    self.stacked = kind == "time_attention" and modules[2] != "mlp"  # a head projection
    if self.stacked:
      heads = shape[0]
      module = ".".join(names)
      self.keys = tuple(f"{module.format(h)}.{_HEAD_LEAVES[leaf]}" for h in range(heads))
      self._to_torch, self._to_flax = _HEAD_CONVERSIONS[leaf]
      self.shapes = (self._to_torch(np.empty(shape[1:], np.float32)).shape,) * heads
    elif leaf == "scale" and "bias" not in siblings:  # the U-Net's channel LayerNorm gain
      self.keys = (".".join(names + ["g"]),)
      self.shapes = ((1, shape[0], 1, 1),)
      self._to_torch, self._to_flax = (lambda a: a.reshape(1, -1, 1, 1)), (lambda w: w.reshape(-1))
    else:
      torch_leaf = {"kernel": "weight", "scale": "weight", "in_proj_kernel": "in_proj_weight"}.get(leaf, leaf)
      self.keys = (".".join(names + [torch_leaf]),)
      self.shapes = (torch_shape(path, shape),)
      self._to_torch, self._to_flax = functools.partial(leaf_to_torch, path), functools.partial(leaf_to_flax, path)

  def to_torch(self, value: np.ndarray) -> Dict[str, np.ndarray]:
    value = np.asarray(value)
    parts = list(value) if self.stacked else [value]
    return {k: np.array(self._to_torch(p), order="C") for k, p in zip(self.keys, parts)}

  def to_flax(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
    parts = [np.asarray(self._to_flax(np.asarray(state[k])), np.float32) for k in self.keys]
    return np.array(np.stack(parts) if self.stacked else parts[0], np.float32, order="C")


def _public_cfg(cfg: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """`cfg` on stored features: no frame encoder, so that the parameters are those of the public layout."""
  cfg = ml_collections.ConfigDict(copy.deepcopy(cfg))
  cfg.conditioning.kind = "features"
  cfg.update(overrides)
  return cfg


_LAYOUTS: Dict[str, Tuple[Tuple[_Entry, ...], Dict[str, Tuple[int, ...]]]] = {}


def _layout(cfg: ml_collections.ConfigDict) -> Tuple[Tuple[_Entry, ...], Dict[str, Tuple[int, ...]]]:
  """The Flax leaves of `Separator(cfg)` in the public layout, and PyTorch key -> shape in the order of
  `DavisSeparator(cfg).state_dict()` (built on no device); cached per config."""
  cfg = _public_cfg(cfg)
  key = cfg.to_json(sort_keys=True)
  if key not in _LAYOUTS:
    flat = traverse_util.flatten_dict(abstract_params(cfg))
    siblings: Dict[Path, Tuple[str, ...]] = {}
    for path in flat:
      siblings[path[:-1]] = siblings.get(path[:-1], ()) + (path[-1],)
    entries = tuple(_Entry(path, leaf.shape, siblings[path[:-1]]) for path, leaf in flat.items())
    shapes = {k: s for e in entries for k, s in zip(e.keys, e.shapes)}
    with torch.device("meta"):
      rank = {k: i for i, k in enumerate(davis_pytorch.DavisSeparator(cfg).state_dict())}
    _LAYOUTS[key] = entries, {k: shapes[k] for k in sorted(shapes, key=lambda k: rank.get(k, len(rank)))}
  return _LAYOUTS[key]


def unused_public_keys(cfg: ml_collections.ConfigDict) -> Dict[str, Tuple[int, ...]]:
  """Key -> shape of the public tensors `Separator(cfg)` has no parameter for: the wrapper's `time_mlp` and, with
  `fim_time=False`, the FIM's time MLPs."""
  model = _layout(cfg)[1]
  unused = {k: s for k, s in _layout(_public_cfg(cfg, fim_time=True))[1].items() if k not in model}
  time_mlp = UNET_PREFIX + "time_mlp."
  unused.update({WRAPPER_TIME_MLP + k[len(time_mlp):]: s for k, s in model.items() if k.startswith(time_mlp)})
  return unused


def network_state_dict(state_dict: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The tensors of the public files (either or both, merged) that `DavisSeparator(cfg)` holds, in its key order,
  values as given. Strict: the CLIP tower (`model.`) is skipped and the `unused_public_keys` may be present (with
  their shapes); one `CheckpointMismatchError` names every other missing, unexpected or mis-shaped key."""
  given = {k: tuple(v.shape) for k, v in state_dict.items() if not k.startswith(CLIP_PREFIX)}
  model = _layout(cfg)[1]
  problems = shape_problems(given, model, unused_public_keys(cfg))
  if any(items for _, items in problems):
    parts = [p for p in (UNET_PREFIX, TRANSFORMER_PREFIX) if not any(k.startswith(p) for k in given)]
    hint = (f"\n(no {' and no '.join(parts)} tensors: the public checkpoint is two files side by side, "
            "unet_<suffix>.pth and frame_<suffix>.pth)") if parts else ""
    raise CheckpointMismatchError(mismatch_report(_HEADER.format("the state dict"), problems) + hint)
  return {k: state_dict[k] for k in model}


def torch_to_flax(state_dict: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Public-layout tensors (numpy or torch) -> `{"unet": ..., "visual": {"temporal_transformer": ...}}`, fresh
  float32 arrays; strict as `network_state_dict`."""
  state = {k: to_numpy(v) for k, v in network_state_dict(state_dict, cfg).items()}
  return traverse_util.unflatten_dict({e.path: e.to_flax(state) for e in _layout(cfg)[0]})


def flax_to_torch(params: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """`Separator(cfg)` parameters (a frame encoder's are left out) -> the state dict of `DavisSeparator(cfg)`
  (numpy, in its key order). Strict: one `CheckpointMismatchError` names every missing, unexpected and
  mis-shaped Flax leaf."""
  params = params["params"] if set(params) == {"params"} else params
  flat = {path: leaf for path, leaf in traverse_util.flatten_dict(params).items()
          if not (path[0] == "visual" and len(path) > 1 and path[1] in FRAME_ENCODERS)}
  entries, order = _layout(cfg)
  by_path = {e.path: e for e in entries}
  problems = shape_problems({"/".join(p): np.shape(v) for p, v in flat.items()},
                            {"/".join(e.path): e.shape for e in entries})
  if any(items for _, items in problems):
    raise CheckpointMismatchError(mismatch_report(_HEADER.format("the Flax parameter tree"), problems))
  out = {}
  for path, value in flat.items():
    out.update(by_path[path].to_torch(value))
  return {k: out[k] for k in order}


def read_public(path: str, allow_pickle: bool = False) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """The tensors of a public checkpoint file and of the other file of its pair (`unet_<suffix>` beside
  `frame_<suffix>`) where it exists, merged; and the files read."""
  folder, name = os.path.split(path)
  files = [path]
  for mine, other in (PAIR, PAIR[::-1]):
    partner = os.path.join(folder, other + name[len(mine):])
    if name.startswith(mine) and os.path.isfile(partner):
      files.append(partner)
  state = {}
  for file in files:
    state.update(load_state_dict(file, allow_pickle))
  return state, files

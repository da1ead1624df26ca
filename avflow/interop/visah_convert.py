"""VisAH parameters between avflow's Flax tree and the public PyTorch checkpoint layout.

`flax_to_torch(params, cfg)` turns the parameters of `avflow.models.visah.network.VisAH` into the
`state_dict` of the public `HDemucsRemixer` (the VisAH Lightning checkpoint without its
`model.` prefix; `avflow.interop.visah_pytorch` builds the same network in PyTorch), and
`torch_to_flax(state_dict, cfg)` goes back, strictly. The key map is derived from the Flax
tree itself (`jax.eval_shape` of the model's init), so every leaf is accounted for:

| Flax path element / leaf                     | PyTorch key element                       |
|----------------------------------------------|-------------------------------------------|
| `model/...` (the `HDemucsRemixer`)           | top level                                 |
| `encoder_3`, `layers_0`, ... (`xxx_{i}`)     | `encoder.3`, `layers.0`, ...              |
| `context_encoder_layers_{i}`                 | `context_transformer_encoder.layers.{i}`  |
| `attn{1,2}/to_out`                           | `attn{1,2}.to_out.0`                      |
| `ff/proj`, `ff/out`                          | `ff.net.0.proj`, `ff.net.2`               |
| `kernel` 2-D (Dense), 3-D (1-D conv, conv-T) | `weight`, all axes reversed               |
| `kernel` 4-D (2-D conv, conv-transpose)      | `weight`, axes `(3, 2, 0, 1)`             |
| `self_attn/in_proj_kernel` (packed q, k, v)  | `self_attn.in_proj_weight`, transposed    |
| `scale` of a norm (it has a `bias`)          | `weight`                                  |
| `scale` of a DConv `LayerScale`              | `scale`                                   |
| `freq_emb/embedding` (stored / `emb_scale`)  | `freq_emb.embedding.weight` (same value)  |
| LSTM `weight_ih_l0`, `bias_hh_l1_reverse`... | same names (gates i, f, g, o; two biases) |
| `time_embed_0`, `time_embed_1` (VisAH-FM)    | `time_embed.linear_1`, `.linear_2`        |
| `model/encoder_time_{i}`, `tencoder_time_{i}` | `time_embed.encoder.{i}`, `.tencoder.{i}` |

Transposed convolutions need no flip: the Flax kernels use `transpose_kernel=True`
semantics, `(spatial..., out, in)`, i.e. the PyTorch `(in, out, spatial...)` weight with the
axes reordered as above. The PyTorch side also holds two persistent buffers with no Flax
parameter, `latent_transformer.pe.pe` (unused) and `latent_transformer.pe_context.pe`, the
sinusoidal tables of 5000 rows; they are written on export and checked on import.

Files: `load_state_dict` (from `hf_import`) reads a Lightning `.ckpt` (its `state_dict`), a
bare state dict `.pt`/`.pth`/`.ckpt` or a `.safetensors`; `save_checkpoint` writes the
Lightning layout (`model.` prefix plus the `mr_stft_loss` windows, 564 keys for the paper
VisAH), which the public code loads with `strict=True`.

The whole `Highlighter` (`avflow export --format=torch`): `highlighter_to_torch` gives
`model.` + the network keys above (time conditioning included) and each conditioner subtree
under its Flax name (`frame_encoder.`, `clip.`, `clap.`) with `hf_import`'s transformers
names; `save_torch_export` writes it as one `.safetensors` with the avflow config as JSON in
its metadata (`visah_pytorch.EXPORT_CONFIG_KEY`), which `visah_pytorch.load_export` reads.
"""
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
from flax import traverse_util

from avflow.interop import hf_import, visah_pytorch
from avflow.interop.hf_import import (CheckpointMismatchError, leaf_to_flax, leaf_to_torch, load_state_dict,
                                      mismatch_report, shape_problems, to_numpy, torch_shape)
from avflow.models.visah.network import VisAH

LIGHTNING_PREFIX = "model."
LOSS_PREFIX = "mr_stft_loss."
PE_ROWS = 5000  # `max_len` of the public `PositionalEncoding`
_PE_TOLERANCE = 1e-2  # the same table from another library, or stored in bfloat16
_HEADER = "{} does not match the VisAH model of this config:"
_TIME_EMBED = {"time_embed_0": "linear_1", "time_embed_1": "linear_2"}

Path = Tuple[str, ...]
_ABSTRACT_PARAMS: Dict[str, Dict[Path, jax.ShapeDtypeStruct]] = {}


def _abstract_params(cfg: ml_collections.ConfigDict) -> Dict[Path, jax.ShapeDtypeStruct]:
  """The flattened Flax parameter tree of `VisAH(cfg)` as shapes (cached per config)."""
  key = cfg.to_json(sort_keys=True)
  if key not in _ABSTRACT_PARAMS:
    mix = jnp.zeros((1, cfg.nfft, cfg.audio_channels), jnp.float32)
    context = jnp.zeros((1, 1, cfg.latent.context_dim), jnp.float32)
    t = None if cfg.time_conditioning == "none" else jnp.zeros((1,), jnp.float32)
    tree = jax.eval_shape(lambda: VisAH(cfg).init(jax.random.PRNGKey(0), mix, context, t))
    _ABSTRACT_PARAMS[key] = traverse_util.flatten_dict(tree["params"])
  return _ABSTRACT_PARAMS[key]


def _torch_key(path: Path, siblings: List[str]) -> str:
  """The PyTorch key of the Flax leaf at `path` (`siblings`: leaf names of its module)."""
  prefix, names = [], list(path)
  if names[0] in _TIME_EMBED:
    prefix, names = ["time_embed", _TIME_EMBED[names[0]]], names[1:]
  elif names[0] == "model":
    names = names[1:]
    time_proj = re.fullmatch(r"(t?encoder)_time_(\d+)", names[0])
    if time_proj:
      prefix, names = ["time_embed", *time_proj.groups()], names[1:]
  else:
    raise ValueError(f"not a VisAH parameter path: {'/'.join(path)}")
  *modules, leaf = names
  out = prefix
  for i, name in enumerate(modules):
    parent = modules[i - 1] if i else ""
    if parent == "ff" and name in ("proj", "out"):
      out.append("net.0.proj" if name == "proj" else "net.2")
    elif name == "to_out":
      out.append("to_out.0")
    elif re.fullmatch(r"context_encoder_layers_\d+", name):
      out.append("context_transformer_encoder.layers." + name.rsplit("_", 1)[1])
    else:
      out.append(re.sub(r"_(\d+)$", r".\1", name))
  if leaf in ("kernel", "in_proj_kernel"):
    leaf = leaf.replace("kernel", "weight")
  elif leaf == "scale" and "bias" in siblings:
    leaf = "weight"
  elif leaf == "embedding":
    leaf = "embedding.weight"
  return ".".join(out + [leaf])


def key_map(flat: Mapping[Path, Any]) -> Dict[str, Tuple[Path, Tuple[int, ...]]]:
  """PyTorch key -> (Flax path, PyTorch shape) for a flattened VisAH Flax parameter tree.

  `flat` maps paths to arrays or shape structs; paths start with `model` (the U-Net) or
  `time_embed_{0,1}`.
  """
  siblings: Dict[Path, List[str]] = {}
  for path in flat:
    siblings.setdefault(path[:-1], []).append(path[-1])
  out = {}
  for path, leaf in flat.items():
    out[_torch_key(path, siblings[path[:-1]])] = (path, torch_shape(path, leaf.shape))
  return out


def _pe_buffers(cfg: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """The two persistent `PositionalEncoding` tables of the latent transformer, as PyTorch
  computes them (so that an exported file holds exactly the public code's buffers)."""
  inner = cfg.latent.n_heads * cfg.latent.d_head
  bottleneck = visah_pytorch.layer_plan(cfg)[-1]["chout"]
  return {f"latent_transformer.{name}.pe": visah_pytorch.PositionalEncoding(d, PE_ROWS).pe.numpy()
          for name, d in (("pe", bottleneck), ("pe_context", inner))}


def _unwrap(params: Mapping[str, Any]) -> Mapping[str, Any]:
  return params["params"] if set(params) == {"params"} else params


def flax_to_torch(params: Mapping[str, Any],
                  cfg: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """`VisAH(cfg)` parameters -> the public `HDemucsRemixer` state dict (numpy, no prefix).

  Keys are ordered as `visah_pytorch.build_visah(cfg).state_dict()`; with the paper config
  these are the 561 `model.`-stripped keys of the released checkpoint.
  """
  cfg = ml_collections.ConfigDict(cfg)
  params = _unwrap(params)
  unknown = sorted(set(params) - {"model", *_TIME_EMBED})
  if unknown:
    raise CheckpointMismatchError(
        f"unknown top-level Flax parameters {unknown}: pass the parameters of "
        f"`avflow.models.visah.network.VisAH` (the `visah` subtree of a Highlighter)")
  flat = traverse_util.flatten_dict(params)
  expected = key_map(_abstract_params(cfg))
  by_path = {path: key for key, (path, _) in expected.items()}
  out = {by_path[path]: leaf_to_torch(path, value) for path, value in flat.items()
         if path in by_path}
  missing = [key for key in expected if key not in out]
  unexpected = ["/".join(path) for path in flat if path not in by_path]
  misshaped = [f"{key}: {out[key].shape} != {shape}" for key, (_, shape) in expected.items()
               if key in out and out[key].shape != shape]
  if missing or unexpected or misshaped:
    raise CheckpointMismatchError(mismatch_report(_HEADER.format("the Flax parameter tree"), [
        ("missing", missing), ("unexpected", unexpected), ("mis-shaped (given != model)", misshaped)]))
  out.update(_pe_buffers(cfg))
  order = _torch_key_order(cfg)
  return {k: out[k] for k in sorted(out, key=lambda k: order.get(k, len(order)))}


def _torch_key_order(cfg: ml_collections.ConfigDict) -> Dict[str, int]:
  """Rank of each key in `visah_pytorch.build_visah(cfg).state_dict()` (built on no device)."""
  with torch.device("meta"):
    return {k: i for i, k in enumerate(visah_pytorch.build_visah(cfg).state_dict())}


def strip_lightning_prefix(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  """A Lightning VisAH state dict (`model.` keys, `mr_stft_loss` windows) -> network keys.

  A bare network state dict is returned unchanged.
  """
  if not any(k.startswith(LIGHTNING_PREFIX) for k in state_dict):
    return dict(state_dict)
  return {(k[len(LIGHTNING_PREFIX):] if k.startswith(LIGHTNING_PREFIX) else k): v
          for k, v in state_dict.items() if not k.startswith(LOSS_PREFIX)}


def torch_to_flax(state_dict: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> Dict[str, Any]:
  """A public-layout VisAH state dict (Lightning or bare; numpy or torch) -> `VisAH(cfg)` params.

  Strict: raises one `CheckpointMismatchError` listing every missing, unexpected and
  mis-shaped key (and a `pe` buffer that is not the sinusoidal table). Values are cast to
  float32.
  """
  cfg = ml_collections.ConfigDict(cfg)
  sd = {k: to_numpy(v) for k, v in strip_lightning_prefix(state_dict).items()}
  keys = key_map(_abstract_params(cfg))
  expected = {k: shape for k, (_, shape) in keys.items()}
  buffers = _pe_buffers(cfg)
  expected.update({k: v.shape for k, v in buffers.items()})
  problems = shape_problems({k: v.shape for k, v in sd.items()}, expected)
  problems.append(("not the sinusoidal positional table",
                   [k for k, table in buffers.items() if k in sd and sd[k].shape == table.shape
                    and not np.allclose(sd[k], table, rtol=0, atol=_PE_TOLERANCE)]))
  if any(items for _, items in problems):
    raise CheckpointMismatchError(mismatch_report(_HEADER.format("the state dict"), problems))
  return traverse_util.unflatten_dict(
      {path: leaf_to_flax(path, sd[key]) for key, (path, _) in keys.items()})


def load_params(path: str, cfg: ml_collections.ConfigDict,
                allow_pickle: bool = False) -> Dict[str, Any]:
  """`VisAH(cfg)` parameters from a public-layout checkpoint file (see `load_state_dict`)."""
  return torch_to_flax(load_state_dict(path, allow_pickle), cfg)


def save_checkpoint(path: str, params: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> None:
  """Writes `VisAH(cfg)` parameters in the Lightning layout of the public VisAH code.

  `.safetensors`: the flat Lightning state dict; `.ckpt`: `{"state_dict": ...}` (what the
  public training and inference scripts load); `.pt`/`.pth`: the bare Lightning state dict.
  """
  state = {k: torch.from_numpy(v) for k, v in flax_to_torch(params, cfg).items()}
  full = {k: v.contiguous() for k, v in visah_pytorch.lightning_state_dict(state).items()}
  if path.endswith(".safetensors"):
    from safetensors.torch import save_file
    save_file(full, path, metadata={"format": "pt"})
  elif path.endswith(".ckpt"):
    torch.save({"state_dict": full}, path)
  elif path.endswith((".pt", ".pth")):
    torch.save(full, path)
  else:
    raise ValueError(f"unknown checkpoint extension in {path!r}: use .ckpt, .pt, .pth or "
                     f".safetensors")


def highlighter_to_torch(params: Mapping[str, Any],
                         model_cfg: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """`Highlighter(model_cfg)` parameters -> the `--format=torch` state dict (numpy).

  `model.` + `flax_to_torch(params["visah"])`; every other top-level subtree (the conditioner)
  under `<name>.` with `hf_import.export_state_dict` names.
  """
  params = _unwrap(params)
  out = {LIGHTNING_PREFIX + k: v for k, v in flax_to_torch(params["visah"], model_cfg).items()}
  for name, tree in params.items():
    if name != "visah":
      out.update({f"{name}.{k}": v for k, v in hf_import.export_state_dict(tree).items()})
  return out


def highlighter_from_torch(state_dict: Mapping[str, Any], model_cfg: ml_collections.ConfigDict,
                           template: Mapping[str, Any]) -> Dict[str, Any]:
  """The inverse of `highlighter_to_torch`; `template` is the (abstract) `Highlighter` tree.

  Strict: one `CheckpointMismatchError` lists the problems of every part. A conditioner with no
  tensors at all is left out (as in a run imported from the public layout).
  """
  prefixes = {"model" if name == "visah" else name: name for name in template}
  groups: Dict[str, Dict[str, Any]] = {name: {} for name in template}
  unknown = []
  for key, value in state_dict.items():
    head, _, rest = key.partition(".")
    if head in prefixes and rest:
      groups[prefixes[head]][rest] = value
    else:
      unknown.append(key)
  params, errors = {}, []
  if unknown:
    errors.append(f"{len(unknown)} unexpected keys outside {sorted(p + '.' for p in prefixes)}:\n"
                  + "\n".join(f"    {k}" for k in unknown))
  for name, group in groups.items():
    if name != "visah" and not group:
      continue
    try:
      if name == "visah":
        params[name] = torch_to_flax(group, model_cfg)
      else:
        params[name] = hf_import.import_state_dict(group, template[name])
    except CheckpointMismatchError as e:
      errors.append(f"{name}: {e}")
  if errors:
    raise CheckpointMismatchError("\n".join(errors))
  return params


def save_torch_export(path: str, params: Mapping[str, Any],
                      config: ml_collections.ConfigDict) -> Dict[str, np.ndarray]:
  """Writes `highlighter_to_torch` as `.safetensors`, the config JSON in its metadata; returns it."""
  if not path.endswith(".safetensors"):
    raise ValueError(f"--format=torch writes a .safetensors file, got {path!r}")
  from safetensors.numpy import save_file
  state = highlighter_to_torch(params, config.model)
  save_file(state, path, metadata={"format": "pt",
                                   visah_pytorch.EXPORT_CONFIG_KEY: config.to_json_best_effort()})
  return state


def read_export_config(path: str) -> Optional[ml_collections.ConfigDict]:
  """The avflow config stored in a `save_torch_export` file; None for any other file."""
  if not path.endswith(".safetensors"):
    return None
  from safetensors import safe_open
  with safe_open(path, framework="np") as f:
    metadata = f.metadata() or {}
  if visah_pytorch.EXPORT_CONFIG_KEY not in metadata:
    return None
  return ml_collections.ConfigDict(json.loads(metadata[visah_pytorch.EXPORT_CONFIG_KEY]))

"""Device mesh (`data`, `fsdp`) and the shardings of the train state and batches.

Parameter sharding follows regex → PartitionSpec rules kept as data in the config (`config.mesh.rules`, a list of
[regex, spec] pairs matched against '/'-joined parameter paths, first match wins). The spec "fsdp" shards a tensor's
largest dimension divisible by the `fsdp` axis size; tensors smaller than `mesh.fsdp_min_size` and unmatched ones
are replicated. Batches are sharded over both axes.
"""
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  fsdp = mesh_cfg.fsdp
  data = mesh_cfg.data if mesh_cfg.data > 0 else len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f"mesh data={mesh_cfg.data} × fsdp={fsdp} does not cover the {len(devices)} devices")
  return Mesh(np.asarray(devices).reshape(data, fsdp), AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXES))


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _fsdp_spec(shape, fsdp_size: int) -> P:
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if shape[d] % fsdp_size == 0:
      return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
  return P()


def partition_specs(tree: Any, mesh: Mesh, rules, min_size: int = 2 ** 14) -> Any:
  """A PartitionSpec per leaf of `tree` from the (regex, spec) rules."""
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
  fsdp_size = mesh.shape["fsdp"]

  def spec_for(path, leaf):
    shape = np.shape(leaf)
    if int(np.prod(shape)) < min_size:
      return P()
    name = _path_name(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        if spec == "fsdp":
          return _fsdp_spec(shape, fsdp_size) if fsdp_size > 1 else P()
        return P(*spec)
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, tree)


def state_sharding(state: Any, mesh: Mesh, mesh_cfg) -> Any:
  specs = partition_specs(state, mesh, mesh_cfg.get("rules", ()), mesh_cfg.get("fsdp_min_size", 2 ** 14))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """A global array per field from this process's local rows."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

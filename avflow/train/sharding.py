"""Device mesh (`data`, `fsdp`) and the shardings of the train state and batches.

Parameter sharding follows regex → PartitionSpec rules kept as data in the config (`config.mesh.rules`, a list of
[regex, spec] pairs matched against '/'-joined state paths such as `params/visah/encoder_0/conv/kernel` or
`opt_state/1/0/mu/visah/...`, first match wins). The spec "fsdp" shards a tensor's largest dimension divisible by
the `fsdp` axis size (big_vision's `fsdp` rule); any other spec is a tuple of axis names (or None) per dimension.
Tensors with fewer than `mesh.fsdp_min_size` elements and unmatched ones are replicated. The default rule
`(".*", "fsdp")` shards every large parameter, its Adam moments and the frozen CLIP/CLAP towers alike; with
`mesh.fsdp=1` (the default) everything is replicated and the mesh is pure data parallelism.

Batches are sharded over both axes, so `batch_size` must be divisible by the device count.
"""
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from avflow.train.partition import path_name

AXES = ("data", "fsdp")
DEFAULT_RULES = ((".*", "fsdp"),)
DEFAULT_MIN_SIZE = 2 ** 14


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (data, fsdp) mesh; `mesh.data = -1` takes every device not used by `fsdp`."""
  devices = jax.devices() if devices is None else list(devices)
  fsdp = mesh_cfg.fsdp
  data = mesh_cfg.data if mesh_cfg.data > 0 else len(devices) // fsdp
  if data * fsdp != len(devices):
    raise ValueError(f"mesh data={mesh_cfg.data} × fsdp={fsdp} does not cover the {len(devices)} devices")
  return jax.make_mesh((data, fsdp), AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXES))


def _fsdp_spec(shape, fsdp_size: int) -> P:
  for d in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[d] % fsdp_size == 0:
      return P(*[("fsdp" if i == d else None) for i in range(len(shape))])
  return P()


def partition_specs(tree: Any, mesh, rules=DEFAULT_RULES, min_size: int = DEFAULT_MIN_SIZE) -> Any:
  """A PartitionSpec per leaf of `tree` from the (regex, spec) rules; `mesh` needs only `.shape`."""
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
  fsdp_size = mesh.shape["fsdp"]

  def spec_for(path, leaf):
    shape = np.shape(leaf)
    if int(np.prod(shape)) < min_size:
      return P()
    name = path_name(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        if spec == "fsdp":
          return _fsdp_spec(shape, fsdp_size) if fsdp_size > 1 else P()
        return P(*spec)
    return P()

  return jax.tree_util.tree_map_with_path(spec_for, tree)


def state_sharding(state: Any, mesh: Mesh, mesh_cfg) -> Any:
  """A NamedSharding per leaf of the train state (parameters, optimizer state, step, rng)."""
  specs = partition_specs(state, mesh, mesh_cfg.get("rules", DEFAULT_RULES),
                          mesh_cfg.get("fsdp_min_size", DEFAULT_MIN_SIZE))
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs)


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """A global array per field from this process's local rows."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}

"""FSDP rules and mesh invariance: one train step on 8 simulated CPU devices equals the single-device step.

The 8-device part runs this file as a script in a subprocess (XLA_FLAGS must be set before JAX starts, and other
test modules in the same worker have started it already).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from avflow.train import sharding
from conftest import FAST_COMPILE, tiny

MESHES = ((2, 4),)  # data parallel over 2, parameters sharded over 4 (FSDP): both axes at once


def test_fsdp_rule_shards_the_largest_divisible_dimension():
  tree = {"params": {"conv": {"kernel": np.zeros((8, 6, 64)), "bias": np.zeros((64,))},
                     "odd": np.zeros((7, 9, 5)), "emb": np.zeros((24, 16))}}
  specs = sharding.partition_specs(tree, AbstractMesh((2, 4), sharding.AXES), min_size=100)
  assert specs["params"]["conv"]["kernel"] == P(None, None, "fsdp")
  assert specs["params"]["conv"]["bias"] == P()  # below min_size
  assert specs["params"]["odd"] == P()  # no dimension divisible by 4
  assert specs["params"]["emb"] == P("fsdp", None)
  # Without an fsdp axis everything is replicated.
  specs = sharding.partition_specs(tree, AbstractMesh((8, 1), sharding.AXES), min_size=100)
  assert all(s == P() for s in jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P)))


def test_rules_match_state_paths_first_match_wins():
  from avflow.train.state import TrainState
  state = TrainState(step=jnp.zeros((), jnp.int32), rng=jnp.zeros((2,), jnp.uint32),
                     params={"clip": {"vision_model": {"kernel": np.zeros((32, 32))}}, "visah": {"w": np.zeros((32, 32))}},
                     opt_state=({"mu": {"visah": {"w": np.zeros((32, 32))}}},))
  rules = ((r"^params/clip/", (None, "data")), (r"^opt_state/", "fsdp"), (r"^params/", "fsdp"))
  specs = sharding.partition_specs(state, AbstractMesh((2, 4), sharding.AXES), rules, min_size=16)
  assert specs.params["clip"]["vision_model"]["kernel"] == P(None, "data")
  assert specs.params["visah"]["w"] == P("fsdp", None)
  assert specs.opt_state[0]["mu"]["visah"]["w"] == P("fsdp", None)
  assert specs.step == P() and specs.rng == P()


def test_default_config_shards_every_large_tensor_including_frozen_encoders():
  import visah_fm
  from avflow.models.visah.highlighter import Highlighter
  from avflow.train.state import abstract_params
  config = tiny(visah_fm.get_config("toy"), micro=True, **{"mesh.fsdp_min_size": 1024})
  config.model.conditioning.kind = "clip"
  config.model.latent.context_dim = 24  # the tiny CLIP's projection
  params = abstract_params(Highlighter(config.model), config)
  specs = sharding.partition_specs({"params": params}, AbstractMesh((1, 8), sharding.AXES), config.mesh.rules,
                                   config.mesh.fsdp_min_size)
  for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    big = int(np.prod(leaf.shape)) >= config.mesh.fsdp_min_size and any(d % 8 == 0 for d in leaf.shape)
    assert (spec != P()) == big, (leaf.shape, spec)
  assert any(s != P() for s in jax.tree.leaves(specs["params"]["clip"], is_leaf=lambda x: isinstance(x, P)))


def _mesh_check() -> dict:
  """Runs one train step on one device and on each mesh of MESHES; returns the largest differences."""
  import visah_fm
  from avflow.data.pipeline import device_batch, make_dataset, make_source
  from avflow.models.visah.highlighter import Highlighter
  from avflow.train.state import create_train_state, make_optimizer
  from avflow.train.step import make_train_step

  config = tiny(visah_fm.get_config("toy"), micro=True)
  model, tx = Highlighter(config.model), make_optimizer(config)
  batch = device_batch(next(iter(make_dataset(make_source(config.data, "train"), config.data,
                                              batch_size=config.batch_size, seed=config.seed, train=True))))
  step_fn = make_train_step(model, config, tx)
  rng = jax.random.PRNGKey(7)
  start = jax.device_get(create_train_state(model, config, batch, tx))  # on the host: each mesh places its own copy

  def run(mesh_shape, devices):
    config.mesh.data, config.mesh.fsdp = mesh_shape
    mesh = sharding.make_mesh(config.mesh, devices)
    state_sharding = sharding.state_sharding(start, mesh, config.mesh)
    data_sharding = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, P())
    step = jax.jit(step_fn, donate_argnums=(0,), in_shardings=(state_sharding, data_sharding, replicated),
                   out_shardings=(state_sharding, replicated))
    state, metrics = step(jax.device_put(start, state_sharding), sharding.global_batch(batch, data_sharding), rng)
    params = state.params
    device0 = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards
                  if s.device == mesh.devices.flat[0])
    return float(metrics["loss"]), jax.device_get(params), device0

  loss1, params1, bytes1 = run((1, 1), jax.devices()[:1])
  out = {"devices": jax.device_count(), "loss": loss1, "param_bytes": bytes1}
  for shape in MESHES:
    loss, params, device0 = run(shape, jax.devices())
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, params1))
    out[f"{shape[0]}x{shape[1]}"] = {"loss_diff": abs(loss - loss1), "param_diff": max(diffs),
                                     "device0_param_bytes": device0}
  return out


def test_one_step_on_a_data_by_fsdp_mesh_equals_the_one_device_step():
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}", JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True, text=True, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=1800)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8 and np.isfinite(result["loss"])
  for data, fsdp in MESHES:
    r = result[f"{data}x{fsdp}"]
    assert r["loss_diff"] <= 1e-5 and r["param_diff"] <= 1e-5, (data, fsdp, r)
    if fsdp == 4:  # FSDP over 4 devices stores about a quarter of the (mostly large) parameters per device.
      assert r["device0_param_bytes"] < 0.3 * result["param_bytes"], r


if __name__ == "__main__":
  print(json.dumps(_mesh_check()))

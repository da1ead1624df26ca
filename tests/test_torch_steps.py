"""The PyTorch mirror's train loss (`avflow.interop.torch_steps`, timed by `bench --what=torch`) against avflow's
objective on the same weights and inputs."""
import jax
import numpy as np
import torch

from avflow import bench
from avflow.flow.objectives import flow_matching_loss, rollout_loss
from avflow.interop.torch_steps import TorchSteps
from avflow.interop.visah_convert import flax_to_torch
from avflow.models.visah.highlighter import Highlighter
from avflow.train.state import create_train_state, make_optimizer


def test_torch_fm_and_rollout_loss_equal_avflow_objective(tiny_fm_config):
  """The tiny U-Net's merge layer is its last level: the bottleneck keeps a single frequency row."""
  c = tiny_fm_config
  c.model.conditioning.update(kind="features", features_key="context")
  c.objective.update(rollout_weight=0.3, num_steps=2, horizon=2)  # H = N: every rollout starts at k = 0
  model = Highlighter(c.model)
  batch = bench.random_batch(c, 2)
  params = create_train_state(model, c, batch, make_optimizer(c)).params
  keys = iter(jax.random.split(jax.random.key(3), len(jax.tree.leaves(params))))
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)  # no zero-init paths
  t = np.array([0.0, 0.5], np.float32)

  @jax.jit
  def avflow_loss(params):
    def velocity(x_t, t, cond):
      return model.apply({"params": params}, x_t, t, cond, batch["x0"], method=Highlighter.velocity)
    args = velocity, batch["x0"], batch["x1"], batch["context"]
    return (flow_matching_loss(*args, t),
            rollout_loss(*args, jax.random.key(0), num_steps=2, horizon=2, remat_policy="none"))

  fm, rollout = avflow_loss(params)
  mirror = TorchSteps(c, flax_to_torch(jax.device_get(params["visah"]), c.model), batch, "cpu")
  with torch.no_grad():
    fm_only = mirror.loss(torch.from_numpy(t))
    both = mirror.loss(torch.from_numpy(t), torch.zeros(2, dtype=torch.long))
  np.testing.assert_allclose(float(fm_only), float(fm), rtol=1e-4)
  np.testing.assert_allclose(float(both), float(fm) + 0.3 * float(rollout), rtol=1e-4)

"""The PyTorch mirror's train steps and highlight as PyTorch users run them (`python -m avflow bench --what=torch`).

Eager PyTorch on one device; on CUDA with TF32 matmuls and convolutions (`use_tf32`), optionally under bf16
autocast. The objective is avflow's (`avflow.flow.objectives`) on the same network (`visah_pytorch`, the weights
converted by `visah_convert.flax_to_torch`):

  L = w_fm·mean‖v(x_t, t, c) − (x1 − x0)‖² + λ·mean‖x̂_H − x_{(k+H)/N}‖²,   x_t = (1 − t)·x0 + t·x1,

t on the N-step grid (or uniform), x̂_H after H Euler steps of size 1/N from x_{k/N}, k ~ U{0, …, N − H},
backpropagated through the whole trajectory by autograd; then Adam with the config's betas, eps, peak learning
rate and global-norm clipping.
"""
import contextlib
import time
from typing import Mapping, Optional

import numpy as np
import torch

from avflow.interop import visah_pytorch


def use_tf32() -> None:
  """TF32 matmuls and cuDNN convolutions, as PyTorch users run float32 models on recent GPUs."""
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.set_float32_matmul_precision("high")


class TorchSteps:
  """The mirror of `config.model` with `state_dict`, on `device`, and one batch (avflow's channels-last layout):
  `train_step(rollout)` and `highlight(num_steps)` each run once and return their wall seconds."""

  def __init__(self, config, state_dict: Mapping[str, np.ndarray], batch: Mapping[str, np.ndarray], device: str,
               bf16: bool = False):
    objective = config.objective
    if objective.fm_weighting != "none" or objective.bridge_sigma or objective.consistency_weight:
      raise ValueError("the PyTorch steps cover FM (unweighted, no bridge noise) and rollout terms only")
    self.objective = objective
    self.device = torch.device(device)
    self.model = visah_pytorch.build_visah(config.model.to_dict())
    self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True)
    self.model.to(self.device).train()
    self.highlighter = visah_pytorch.VisAHFMHighlighter(self.model, warm_start=config.model.warm_start)
    opt = config.optimizer
    self.optimizer = torch.optim.Adam(self.model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                                      eps=opt.eps)
    self.clip_norm = opt.clip_norm

    def audio(x):  # (B, L, C) -> (B, C, L)
      return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(self.device)

    self.x0, self.x1 = audio(batch["x0"]), audio(batch["x1"])
    self.context = torch.from_numpy(np.asarray(batch[config.model.conditioning.features_key])).to(self.device)
    self.bf16 = bf16

  def _autocast(self):
    if not self.bf16:
      return contextlib.nullcontext()
    return torch.autocast(self.device.type, dtype=torch.bfloat16)

  def _sync(self) -> None:
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)

  def _at(self, t: torch.Tensor) -> torch.Tensor:
    """x_t on the straight path, t per example."""
    t = t.view(-1, 1, 1)
    return (1.0 - t) * self.x0 + t * self.x1

  def loss(self, t: torch.Tensor, k: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The FM term at times t (B,), plus the rollout term from grid steps k (B,) when given."""
    o, x0 = self.objective, self.x0

    def mse(a, b):
      return torch.mean(torch.mean(torch.square(a - b).flatten(1), dim=1))

    loss = o.fm_weight * mse(self.highlighter.velocity(self._at(t), t, x0, self.context), self.x1 - x0)
    if k is not None:
      x = self._at(k / o.num_steps)
      for i in range(o.horizon):
        x = x + self.highlighter.velocity(x, (k + i) / o.num_steps, x0, self.context) / o.num_steps
      loss = loss + o.rollout_weight * mse(x, self._at((k + o.horizon) / o.num_steps))
    return loss

  def train_step(self, rollout: bool) -> float:
    """One Adam step on the FM (+ rollout) loss at freshly sampled t (and k)."""
    start = time.perf_counter()
    o, batch = self.objective, self.x0.shape[0]
    if o.time_sampler == "discrete":
      t = torch.randint(0, o.num_steps, (batch,), device=self.device) / o.num_steps
    else:
      t = torch.rand(batch, device=self.device)
    k = torch.randint(0, o.num_steps - o.horizon + 1, (batch,), device=self.device) if rollout else None
    self.optimizer.zero_grad(set_to_none=True)
    with self._autocast():
      loss = self.loss(t, k)
    loss.backward()
    if self.clip_norm:
      torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
    self.optimizer.step()
    loss.item()
    self._sync()
    return time.perf_counter() - start

  def highlight(self, num_steps: int) -> float:
    """`num_steps` Euler steps from the first example's x0 (batch 1, as `bench_infer`)."""
    start = time.perf_counter()
    with torch.inference_mode(), self._autocast():
      self.highlighter(self.x0[:1], self.context[:1], num_steps=num_steps)
    self._sync()
    return time.perf_counter() - start

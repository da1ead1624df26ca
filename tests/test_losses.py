"""The VisAH multi-resolution STFT loss against a PyTorch reference written from the public definition."""
import jax.numpy as jnp
import numpy as np
import torch

from avflow.train.losses import multi_resolution_stft_loss


def _torch_reference(pred, target):
  total = 0.0
  for n_fft, hop in ((2048, 1024), (1024, 512), (512, 256)):
    def mag(x):
      z = torch.view_as_real(torch.stft(torch.from_numpy(x), n_fft, hop, n_fft, torch.hann_window(n_fft),
                                        return_complex=True))
      return torch.sqrt(torch.clamp(z[..., 0] ** 2 + z[..., 1] ** 2, min=1e-7))
    total += torch.mean(torch.abs(torch.log(mag(target)) - torch.log(mag(pred)))).item()
  return 0.1 * total / 3


def test_multi_resolution_stft_loss_matches_torch():
  rng = np.random.default_rng(0)
  target = rng.standard_normal((2, 6000)).astype(np.float32) * 0.1
  pred = target + 0.05 * rng.standard_normal((2, 6000)).astype(np.float32)
  ours = float(multi_resolution_stft_loss(jnp.asarray(pred), jnp.asarray(target)))
  np.testing.assert_allclose(ours, _torch_reference(pred, target), rtol=1e-4)
  assert ours > 0.0
  assert float(multi_resolution_stft_loss(jnp.asarray(target), jnp.asarray(target))) == 0.0

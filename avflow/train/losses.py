"""The discriminative VisAH training loss: the log-magnitude term of the multi-resolution STFT loss.

The public code keeps only `mean|log|Y| − log|Ŷ||` (the spectral-convergence term is computed and discarded),
times 0.1, averaged over FFT sizes 2048/1024/512 with hops 1024/512/256 and periodic Hann windows of the FFT size,
magnitudes `sqrt(max(re² + im², 1e-7))`.
"""
import jax
import jax.numpy as jnp

from avflow.nn.stft import stft

RESOLUTIONS = ((2048, 1024), (1024, 512), (512, 256))
FACTOR_MAG = 0.1


def _magnitude(x: jax.Array, n_fft: int, hop: int) -> jax.Array:
  z = stft(x, n_fft, hop)
  return jnp.sqrt(jnp.maximum(jnp.real(z) ** 2 + jnp.imag(z) ** 2, 1e-7))


def multi_resolution_stft_loss(pred: jax.Array, target: jax.Array, resolutions=RESOLUTIONS) -> jax.Array:
  """0.1 × mean over resolutions of the L1 distance between log STFT magnitudes; `pred`, `target` (B, L)."""
  terms = [jnp.mean(jnp.abs(jnp.log(_magnitude(target, n, h)) - jnp.log(_magnitude(pred, n, h))))
           for n, h in resolutions]
  return FACTOR_MAG * sum(terms) / len(terms)

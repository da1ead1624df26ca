"""The log-mel latent codec of the video-to-audio toy: shapes and rates, parity of `encode` with librosa's
mel spectrogram, and a Griffin-Lim round trip that keeps a tone's pitch and loudness envelope."""
import math

import jax
import librosa
import numpy as np
import pytest

from avflow.models.v2a.codec import LatentCodec, MelCodec


def _librosa_latents(codec: MelCodec, wave: np.ndarray) -> np.ndarray:
  """The codec's latents computed independently: librosa's magnitude mel spectrogram, then the documented map."""
  mel = librosa.feature.melspectrogram(y=wave, sr=codec.sample_rate, n_fft=codec.n_fft, hop_length=codec.hop,
                                       n_mels=codec.n_mels, power=1.0, pad_mode="reflect")
  log_ratio = np.log(np.maximum(mel, codec.floor) / codec.floor) / math.log(codec.ceiling / codec.floor)
  return np.swapaxes(2.0 * log_ratio - 1.0, -1, -2)


def test_shapes_and_rates():
  codec = MelCodec(sample_rate=8000, n_fft=256, hop=64, n_mels=32)
  assert isinstance(codec, LatentCodec)
  assert codec.latent_rate == 125.0 and codec.latent_dim == 32
  for length in (256, 1000, 1023, 1024):
    assert codec.num_frames(length) == 1 + length // 64
  wave = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 1000)).astype(np.float32)
  latents = jax.jit(codec.encode)(wave)
  assert latents.shape == (3, codec.num_frames(1000), 32)
  np.testing.assert_allclose(latents, codec.encode(wave), atol=1e-6)
  np.testing.assert_array_equal(codec.encode(np.zeros((1, 1000), np.float32)), -1.0)  # silence sits at the floor
  assert codec.decode(latents).shape == (3, 64 * (latents.shape[1] - 1))
  assert codec.decode(latents, num_samples=1000).shape == (3, 1000)


def test_encode_matches_librosa():
  codec = MelCodec()
  wave = (0.3 * np.random.default_rng(1).standard_normal((2, 4000))).astype(np.float32)
  latents = np.asarray(codec.encode(wave))
  np.testing.assert_allclose(latents, _librosa_latents(codec, wave), atol=1e-5)
  assert -1.0 < latents.min() and latents.max() < 1.0


def test_decode_keeps_pitch_and_loudness_envelope():
  codec = MelCodec()
  sr = codec.sample_rate
  time = np.arange(sr) / sr
  envelope = np.where(time < 0.5, 0.5, 0.1)  # a 14 dB step half way
  tone = (envelope * np.sin(2 * np.pi * 440.0 * time)).astype(np.float32)[None]
  decoded = codec.decode(codec.encode(tone), num_samples=sr)
  np.testing.assert_array_equal(decoded, codec.decode(codec.encode(tone), num_samples=sr))  # seeded phase

  def peak_hz(x):
    return np.argmax(np.abs(np.fft.rfft(x))) * sr / x.size

  def block_db(x):
    blocks = x[:sr // 1024 * 1024].reshape(-1, 1024)
    return 10 * np.log10(np.mean(blocks**2, axis=1))

  assert abs(peak_hz(decoded[0]) - 440.0) < 30.0  # within the mel band around 440 Hz (~46 Hz wide)
  level_in, level_out = block_db(tone[0]), block_db(decoded[0])
  inner = np.r_[1:6, 9:14]  # blocks away from the ends and from the step
  assert np.all(np.abs(level_out[inner] - level_in[inner]) < 4.0)
  step_in = level_in[1:6].mean() - level_in[9:14].mean()
  step_out = level_out[1:6].mean() - level_out[9:14].mean()
  assert abs(step_in - 20 * np.log10(5)) < 0.1 and abs(step_out - step_in) < 1.5


def test_errors():
  with pytest.raises(ValueError, match="floor and ceiling"):
    MelCodec(floor=1.0, ceiling=0.5)
  with pytest.raises(ValueError, match="hop must be"):
    MelCodec(n_fft=256, hop=512)
  with pytest.raises(ValueError, match=r"latents must be \(B, T_a, 64\)"):
    MelCodec().decode(np.zeros((1, 10, 32)))

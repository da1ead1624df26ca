"""CLAP audio encoder: mel front end and network parity with transformers, resampling, sizes."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avflow.interop import hf_import
from avflow.models import clap, clip
from avflow.train import partition

TINY = clap.clap_config("tiny")
# jitted once per signature: far fewer XLA compilations than op-by-op execution
init = jax.jit(clap.init_clap, static_argnames="config")
forward = jax.jit(clap.clap_forward, static_argnames="config")
encode = jax.jit(clap.encode_audio, static_argnums=2, static_argnames="config")


def _hf_config(cfg: clap.CLAPConfig):
  return transformers.ClapAudioConfig(
      num_mel_bins=cfg.num_mel_bins, spec_size=cfg.spec_size, window_size=cfg.window_size,
      patch_size=cfg.patch_size, patch_stride=[cfg.patch_stride] * 2, patch_embeds_hidden_size=cfg.embed_dim,
      depths=list(cfg.depths), num_attention_heads=list(cfg.heads), hidden_size=cfg.hidden_size,
      projection_dim=cfg.projection_dim, mlp_ratio=cfg.mlp_ratio)


def _extractor(cfg: clap.CLAPConfig, padding: str):
  return transformers.ClapFeatureExtractor(
      feature_size=cfg.num_mel_bins, sampling_rate=cfg.sample_rate, hop_length=cfg.hop_length,
      fft_window_size=cfg.n_fft, frequency_min=cfg.f_min, frequency_max=cfg.f_max,
      truncation="rand_trunc", padding=padding)


def _hf_features(cfg, waves, padding="repeatpad"):
  out = _extractor(cfg, padding)(waves, max_length=cfg.max_samples, sampling_rate=cfg.sample_rate,
                                 return_tensors="np")["input_features"]
  return out[:, 0].transpose(0, 2, 1)[..., None].astype(np.float32)     # (B, 1, T, M) -> (B, M, T, 1)


def _noise(n, seed):
  return (0.1 * np.random.RandomState(seed).randn(n)).astype(np.float32)


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = transformers.ClapAudioModelWithProjection(_hf_config(TINY)).eval()
  with torch.no_grad():  # move LayerNorms, biases and position tables off their init
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    bn = model.audio_model.audio_encoder.batch_norm
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
  return model


@pytest.fixture(scope="module")
def params(hf_model):
  return hf_import.import_clap(hf_model.state_dict(), init(jax.random.key(0), config=TINY))


@pytest.mark.parametrize("padding", clap.PADDING_MODES)
def test_log_mel_matches_feature_extractor_tiny(padding):
  waves = [_noise(30000, 1), _noise(TINY.max_samples, 2)]
  ref = _hf_features(TINY, waves, padding)
  ours = jnp.concatenate([clap.log_mel_spectrogram(clap.fit_length(jnp.asarray(w)[None], TINY.max_samples,
                                                                   padding), TINY) for w in waves])
  assert ours.shape == ref.shape == (2, TINY.num_mel_bins, TINY.num_frames, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_log_mel_matches_feature_extractor_full_settings():
  cfg = clap.clap_config("full")
  wave = _noise(62345, 3)
  ref = _hf_features(cfg, [wave])
  ours = clap.audio_features(jnp.asarray(wave)[None, :, None], cfg.sample_rate, cfg)
  assert ours.shape == ref.shape == (1, 64, 1001, 1)
  np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_parity_with_transformers(hf_model, params):
  mel = _hf_features(TINY, [_noise(50000, 4), _noise(TINY.max_samples, 5)])
  with torch.no_grad():
    ref = hf_model(input_features=torch.from_numpy(mel[..., 0].transpose(0, 2, 1)[:, None]))
  out = forward(params, jnp.asarray(mel), config=TINY)
  hidden = ref.last_hidden_state.numpy()                                # (B, C, F', T')
  np.testing.assert_allclose(out["last_hidden_state"], hidden.transpose(0, 2, 3, 1), atol=1e-4, rtol=0)
  tokens = hidden.reshape(*hidden.shape[:2], -1).transpose(0, 2, 1)
  assert out["tokens"].shape == (2, 16, TINY.hidden_size)
  np.testing.assert_allclose(out["tokens"], tokens, atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["audio_embeds"], ref.audio_embeds.numpy(), atol=1e-4, rtol=0)


def test_encode_audio_end_to_end(hf_model, params):
  waves = [_noise(40000, 6), _noise(40000, 7)]
  mel = _hf_features(TINY, waves)
  with torch.no_grad():
    ref = hf_model(input_features=torch.from_numpy(mel[..., 0].transpose(0, 2, 1)[:, None]))
  out = encode(params, jnp.asarray(np.stack(waves))[..., None], TINY.sample_rate, config=TINY)
  np.testing.assert_allclose(out["audio_embeds"], ref.audio_embeds.numpy(), atol=1e-4, rtol=0)
  # a 16 kHz clip is resampled to 48 kHz, then padded to the model's length
  assert clap.audio_features(jnp.zeros((2, 16000, 1)), 16000, TINY).shape == (2, 16, TINY.num_frames, 1)


def test_fit_length_crops():
  x = jnp.arange(20.0).reshape(2, 10)
  np.testing.assert_array_equal(clap.fit_length(x, 4), x[:, :4])
  y = clap.fit_length(x, 4, key=jax.random.key(0))
  for row, out in zip(np.asarray(x), np.asarray(y)):
    start = int(out[0] - row[0])
    np.testing.assert_array_equal(out, row[start:start + 4])
  np.testing.assert_array_equal(clap.fit_length(x[:, :3], 8, "repeatpad")[0], [0, 1, 2, 0, 1, 2, 0, 0])
  np.testing.assert_array_equal(clap.fit_length(x[:, :3], 8, "repeat")[0], [0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("orig_sr,new_sr", [(44100, 48000), (16000, 48000)])
def test_resample_preserves_a_tone(orig_sr, new_sr):
  n = orig_sr // 10
  tone = lambda sr, length: np.sin(2 * np.pi * 1000.0 * np.arange(length) / sr)
  y = clap.resample(jnp.asarray(tone(orig_sr, n), jnp.float32)[None], orig_sr, new_sr)
  assert y.shape == (1, -(-n * new_sr // orig_sr))
  want = tone(new_sr, y.shape[1])
  np.testing.assert_allclose(y[0, 200:-200], want[200:-200], atol=2e-3)


def test_full_config_shapes_match_transformers_on_meta():
  cfg = clap.clap_config("full")
  shapes = jax.eval_shape(functools.partial(clap.init_clap, config=cfg), jax.random.key(0))
  with torch.device("meta"):
    model = transformers.ClapAudioModelWithProjection(transformers.ClapAudioConfig())
  n_torch = sum(p.numel() for p in model.parameters())
  ref = {k: tuple(v.shape) for k, v in model.state_dict().items()
         if k.rsplit(".", 1)[-1] not in hf_import.DERIVED_BUFFERS}
  mapped = hf_import.key_map(shapes)
  assert sorted(mapped) == sorted(ref)
  leaves = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  for key, (path, convert) in mapped.items():
    assert convert(np.broadcast_to(np.float32(0), ref[key])).shape == leaves[path].shape, key
  assert n_torch == 28_190_872
  assert sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes)) == n_torch + 2 * 64  # + BN statistics


def test_full_encode_audio_shapes():
  cfg = clap.clap_config("full")
  shapes = jax.eval_shape(functools.partial(clap.init_clap, config=cfg), jax.random.key(0))
  audio = jax.ShapeDtypeStruct((2, 441000, 1), jnp.float32)                # 10 s at 44.1 kHz
  out = jax.eval_shape(functools.partial(clap.encode_audio, sample_rate=44100, config=cfg), shapes, audio)
  assert out["tokens"].shape == (2, 64, 768) and out["audio_embeds"].shape == (2, 512)
  assert out["last_hidden_state"].shape == (2, 2, 32, 768)


def test_import_from_full_clapmodel_skips_the_text_tower(hf_model):
  text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              vocab_size=50, max_position_embeddings=16)
  full = transformers.ClapModel(transformers.ClapConfig(
      text_config=text, audio_config=hf_model.config.to_dict(), projection_dim=TINY.projection_dim))
  state = full.state_dict()
  assert any(k.startswith("text_model.") for k in state) and "logit_scale_a" in state
  loaded = hf_import.import_clap(state, init(jax.random.key(0), config=TINY))
  np.testing.assert_array_equal(loaded["audio_projection"]["linear2"]["kernel"],
                                state["audio_projection.linear2.weight"].numpy().T)


class _Conditioner(nn.Module):
  """The intended composition: CLAP tokens of the audio feed the CLIP adapter of every frame."""
  clip_config: clip.CLIPConfig
  clap_config: clap.CLAPConfig

  def setup(self):
    self.clap = clap.CLAPAudio(self.clap_config)
    self.clip = clip.CLIPVision(self.clip_config)

  def __call__(self, frames, audio, sample_rate):
    tokens = self.clap.encode_audio(audio, sample_rate)["tokens"]
    return self.clip.encode_frames(frames, jax.lax.stop_gradient(tokens))  # frozen CLAP: no backward


def test_clap_tokens_drive_the_clip_adapter_as_submodules(params):
  clip_cfg = clip.clip_config("tiny")
  assert clip_cfg.audio_dim == TINY.hidden_size
  model = _Conditioner(clip_cfg, TINY)
  rng = np.random.RandomState(8)
  frames = jnp.asarray(rng.randint(0, 256, size=(2, 2, 32, 32, 3), dtype=np.uint8))
  audio = jnp.asarray(0.1 * rng.randn(2, 8000, 1).astype(np.float32))
  params = {"clap": params, "clip": jax.jit(clip.init_clip, static_argnames="config")(
      jax.random.key(1), config=clip_cfg)}
  expected = jax.eval_shape(functools.partial(model.init, sample_rate=16000),
                            jax.random.key(0), frames, audio)["params"]
  assert jax.tree.map(jnp.shape, expected) == jax.tree.map(jnp.shape, params)
  frozen = ("clap",) + tuple(f"clip/{p}" for p in clip.BACKBONE)
  tx = partition.freeze(optax.adam(1e-2), frozen)
  state = tx.init(params)

  def loss(p):  # pull the two frames of each clip together
    feats = model.apply({"params": p}, frames, audio, 16000)
    return -jnp.sum(feats[:, 0] * feats[:, 1])

  grads = jax.jit(jax.grad(loss))(params)
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert float(grads["clip"]["adapter"]["lambda_e"]) != 0.0
  mask = partition.frozen_mask(params, frozen)
  for old, upd, f in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(mask)):
    if f:
      np.testing.assert_array_equal(old, upd)
  assert float(new["clip"]["adapter"]["lambda_e"]) != 0.0

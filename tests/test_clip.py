"""CLIP vision encoder + adapter: parity with transformers, adapter identity, import, freezing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avflow.interop import hf_import
from avflow.models import clip
from avflow.train import partition

TINY = clip.clip_config("tiny")
BACKBONE = clip.BACKBONE
# jitted once per signature: far fewer XLA compilations than op-by-op execution
init = jax.jit(clip.init_clip, static_argnames="config")
forward = jax.jit(clip.clip_forward, static_argnames="config")
encode = jax.jit(clip.encode_frames, static_argnames="config")


def _hf_config(cfg: clip.CLIPConfig):
  return transformers.CLIPVisionConfig(
      hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.layers,
      num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
      projection_dim=cfg.proj_dim)


@pytest.fixture(scope="module")
def hf_model():
  torch.manual_seed(0)
  model = transformers.CLIPVisionModelWithProjection(_hf_config(TINY)).eval()
  with torch.no_grad():  # move LayerNorms and biases off their 1/0 init
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def params(hf_model):
  return hf_import.import_clip(hf_model.state_dict(), init(jax.random.key(0), config=TINY))


def _pixels(n=2, seed=0):
  return np.random.RandomState(seed).randn(n, TINY.image_size, TINY.image_size, 3).astype(np.float32)


def _tokens(n, dim, seed):
  return jnp.asarray(np.random.RandomState(seed).randn(n, 5, dim).astype(np.float32))


def _with_lambda(params, value):
  return {**params, "adapter": {**params["adapter"], "lambda_e": jnp.float32(value)}}


def test_parity_with_transformers(hf_model, params):
  x = _pixels()
  with torch.no_grad():
    ref = hf_model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)), output_hidden_states=True)
  out = forward(params, jnp.asarray(x), config=TINY)
  assert len(out["hidden_states"]) == len(ref.hidden_states) == TINY.layers + 1
  for ours, theirs in zip(out["hidden_states"], ref.hidden_states):
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["last_hidden_state"], ref.last_hidden_state.numpy(), atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["image_embeds"], ref.image_embeds.numpy(), atol=1e-4, rtol=0)
  normalized = ref.image_embeds / ref.image_embeds.norm(dim=-1, keepdim=True)
  np.testing.assert_allclose(out["image_features"], normalized.numpy(), atol=1e-4, rtol=0)


def test_adapter_at_zero_lambda_is_plain_clip(params):
  x = jnp.asarray(_pixels())
  plain = forward(params, x, config=TINY)
  cfg = clip.clip_config("tiny", text_dim=48)
  p = {**params, "adapter": init(jax.random.key(1), config=cfg)["adapter"]}
  assert float(p["adapter"]["lambda_e"]) == 0.0
  for kwargs in (dict(audio_tokens=_tokens(2, TINY.audio_dim, 1)),
                 dict(text_tokens=_tokens(2, 48, 2)),
                 dict(audio_tokens=_tokens(2, TINY.audio_dim, 1), text_tokens=_tokens(2, 48, 2))):
    out = forward(p, x, config=cfg, **kwargs)
    for a, b in zip(out["hidden_states"], plain["hidden_states"]):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out["image_embeds"], plain["image_embeds"])


def test_adapter_with_nonzero_lambda_uses_audio(params):
  x = jnp.asarray(_pixels())
  p = _with_lambda(params, 0.5)
  plain = forward(p, x, config=TINY)
  a = forward(p, x, _tokens(2, TINY.audio_dim, 1), config=TINY)
  b = forward(p, x, _tokens(2, TINY.audio_dim, 2), config=TINY)
  k = TINY.adapter_layer
  for i in range(k):  # layers before the adapter are untouched
    np.testing.assert_array_equal(a["hidden_states"][i], plain["hidden_states"][i])
  assert np.abs(a["hidden_states"][k] - plain["hidden_states"][k]).max() > 1e-3
  assert np.abs(a["image_features"] - b["image_features"]).max() > 1e-4


def test_encode_frames_shares_audio_across_frames(params):
  rng = np.random.RandomState(3)
  frames = rng.randint(0, 256, size=(2, 3, 32, 32, 3), dtype=np.uint8)
  audio = _tokens(2, TINY.audio_dim, 4)
  p = _with_lambda(params, 0.5)
  feats = encode(p, jnp.asarray(frames), audio, config=TINY)
  assert feats.shape == (2, 3, TINY.proj_dim)
  np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, atol=1e-5)
  pixels = (frames[1, 2].astype(np.float32) / 255 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
  one = forward(p, jnp.asarray(pixels[None], jnp.float32), audio[1:2], config=TINY)
  np.testing.assert_allclose(feats[1, 2], one["image_features"][0], atol=1e-5)
  # non-square frames are resized (shortest side) and center-cropped
  wide = rng.randint(0, 256, size=(1, 2, 40, 56, 3), dtype=np.uint8)
  assert encode(params, jnp.asarray(wide), config=TINY).shape == (1, 2, TINY.proj_dim)


def _meta_shapes(model) -> dict:
  return {k: tuple(v.shape) for k, v in model.state_dict().items()
          if k.rsplit(".", 1)[-1] not in hf_import.DERIVED_BUFFERS}


def test_full_vit_l14_shapes_match_transformers_on_meta():
  cfg = clip.clip_config("vit_l14")
  shapes = jax.eval_shape(functools.partial(clip.init_clip, config=cfg), jax.random.key(0))
  with torch.device("meta"):
    ref = _meta_shapes(transformers.CLIPVisionModelWithProjection(_hf_config(cfg)))
  mapped = hf_import.key_map(shapes, keep=("adapter",))
  assert sorted(mapped) == sorted(ref)
  leaves = dict(jax.tree_util.tree_flatten_with_path(shapes)[0])
  for key, (path, convert) in mapped.items():
    assert convert(np.broadcast_to(np.float32(0), ref[key])).shape == leaves[path].shape, key
  n_backbone = sum(int(np.prod(s)) for s in ref.values())
  n_flax = sum(int(np.prod(l.shape)) for l in jax.tree.leaves({k: v for k, v in shapes.items() if k != "adapter"}))
  assert n_flax == n_backbone == 303_966_208
  n_adapter = sum(int(np.prod(l.shape)) for l in jax.tree.leaves(shapes["adapter"]))
  assert n_adapter == 431_361  # ~0.43M trainable parameters at bottleneck width 128


def test_import_reports_missing_unexpected_and_misshaped(hf_model):
  state = dict(hf_model.state_dict())
  state.pop("vision_model.encoder.layers.1.mlp.fc1.bias")
  state["vision_model.encoder.layers.9.mlp.fc1.bias"] = torch.zeros(3)
  state["visual_projection.weight"] = torch.zeros(TINY.proj_dim + 1, TINY.width)
  state["text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 4)  # other tower: skipped
  state["logit_scale"] = torch.zeros(())
  with pytest.raises(hf_import.CheckpointMismatchError) as err:
    hf_import.import_clip(state, init(jax.random.key(0), config=TINY))
  msg = str(err.value)
  assert "missing (1):\n    vision_model.encoder.layers.1.mlp.fc1.bias" in msg
  assert "unexpected (1):\n    vision_model.encoder.layers.9.mlp.fc1.bias" in msg
  assert "mis-shaped (1):\n    visual_projection.weight: checkpoint (25, 32) -> (32, 25), expected (32, 24)" in msg
  assert "text_model" not in msg and "logit_scale" not in msg


def test_load_state_dict_bin_and_safetensors(hf_model, params, tmp_path):
  from safetensors.torch import save_file
  state = hf_model.state_dict()
  torch.save(state, tmp_path / "pytorch_model.bin")
  save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
  fresh = init(jax.random.key(0), config=TINY)
  for name in ("pytorch_model.bin", "model.safetensors"):
    loaded = hf_import.load_clip(str(tmp_path / name), fresh)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_frozen_backbone_has_no_optimizer_state_and_does_not_move(params):
  frames = jnp.asarray(np.random.RandomState(5).randint(0, 256, size=(2, 2, 32, 32, 3), dtype=np.uint8))
  audio = _tokens(2, TINY.audio_dim, 6)
  target = jnp.asarray(np.random.RandomState(7).randn(2, 2, TINY.proj_dim).astype(np.float32))
  tx = partition.freeze(optax.adam(1e-2), BACKBONE)
  state = tx.init(params)

  mask = partition.frozen_mask(params, BACKBONE)
  n_trainable = sum(l.size for l, f in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if not f)
  adam = state.inner_states[partition.TRAINABLE].inner_state[0]
  assert sum(l.size for l in jax.tree.leaves(adam.mu)) == n_trainable
  assert sum(l.size for l in jax.tree.leaves(adam.nu)) == n_trainable
  assert jax.tree.leaves(state.inner_states[partition.FROZEN]) == []
  assert n_trainable == sum(l.size for l in jax.tree.leaves(params["adapter"]))

  def loss(p):
    return jnp.mean((encode(p, frames, audio, config=TINY) - target) ** 2)

  @jax.jit
  def step(p, s):
    grads = jax.grad(loss)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  new = params
  for _ in range(3):
    new, state = step(new, state)
  for name in BACKBONE:
    jax.tree.map(np.testing.assert_array_equal, new[name], params[name])
  assert float(new["adapter"]["lambda_e"]) != 0.0
  assert np.abs(new["adapter"]["up"]["kernel"] - params["adapter"]["up"]["kernel"]).max() > 0


def test_import_from_full_clipmodel_skips_the_text_tower(hf_model):
  vision = {k: getattr(hf_model.config, k) for k in (
      "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size")}
  text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
              vocab_size=50, max_position_embeddings=8)
  full = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                        projection_dim=TINY.proj_dim))
  state = full.state_dict()
  assert any(k.startswith("text_model.") for k in state) and "logit_scale" in state
  loaded = hf_import.import_clip(state, init(jax.random.key(0), config=TINY))
  np.testing.assert_array_equal(loaded["visual_projection"]["kernel"], state["visual_projection.weight"].numpy().T)


def test_full_encode_frames_shapes():
  cfg = clip.clip_config("vit_l14")
  shapes = jax.eval_shape(functools.partial(clip.init_clip, config=cfg), jax.random.key(0))
  frames = jax.ShapeDtypeStruct((2, 10, 224, 224, 3), jnp.uint8)
  audio = jax.ShapeDtypeStruct((2, 64, 768), jnp.float32)
  out = jax.eval_shape(functools.partial(clip.encode_frames, config=cfg), shapes, frames, audio)
  assert out.shape == (2, 10, 768)

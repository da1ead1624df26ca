"""The DAVIS Separation U-Net, visual encoder and separator: sizes of the public model, blocks against
independent numpy computations, the temporal transformer against `torch.nn.Transformer`, conditioning effects."""
import functools
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from avflow.models.davis import presets
from avflow.models.davis.separator import Separator, example_batch, parameter_counts
from avflow.models.davis.unet import Block, TimeAttention, layer_norm_fc, weight_standardize
from avflow.nn.embeddings import timestep_embedding
from avflow.nn.transformer import Transformer


def _micro():
  """A 2-level model small enough to run eagerly in a test: 8 x 8 inputs, both attentions at both levels."""
  cfg = presets.model_config("toy")
  cfg.update(dict(dim=8, dim_mults=(1, 2), resnet_groups=4, freq_bins=8, attention_levels=(0, 1)))
  cfg.linear_attention.update(dict(heads=2, dim_head=4))
  cfg.attention.update(dict(heads=2, dim_head=4))
  cfg.time_attention.update(dict(heads=2, qk_dim=16))
  cfg.conditioning.kind = "features"
  cfg.temporal.update(dict(d_model=8, heads=2, ff_dim=16))
  return cfg


def _random_params(module, rng, *args, method=None, scale=0.5, offset=0.0):
  """Parameters of `module` drawn from numpy, N(offset, scale²) (shapes from `eval_shape`: XLA:CPU compiles
  the random initializers of a whole model slowly)."""
  shapes = jax.eval_shape(functools.partial(module.init, method=method), jax.random.key(0), *args)["params"]
  return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * scale + offset, jnp.float32), shapes)


def _count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_paper_counts_match_the_public_model():
  cfg = presets.model_config("paper")
  counts = parameter_counts(cfg)
  with torch.device("meta"):
    transformer = torch.nn.Transformer(d_model=512, nhead=8, num_encoder_layers=3, num_decoder_layers=1,
                                       dim_feedforward=2048, batch_first=True)
  assert counts["unet"] == 36_549_603  # public `Unet(dim=64, dim_mults=(1, 2, 4, 4, 8), channels=1, self_condition)`
  assert counts["temporal_transformer"] == sum(p.numel() for p in transformer.parameters()) == 13_663_232
  assert counts["frame_encoder"] == 87_849_216  # CLIP ViT-B/32 vision tower + projection, frozen
  assert counts["trainable"] == counts["unet"] + counts["temporal_transformer"]
  cfg.fim_time = False  # the public forward: the FIM's three time MLPs (2 x 1024 x (256 + 1) each) are not built
  assert parameter_counts(cfg)["unet"] == 36_549_603 - 3 * 1024 * 257


def test_toy_shapes_and_size():
  cfg = presets.model_config("toy")
  audio = presets.audio_config("toy")
  model = Separator(cfg)
  batch = example_batch(cfg, batch_size=8, num_frames=audio.num_frames, frames=32)
  t = jnp.zeros((8,))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, t))
  context = jax.eval_shape(lambda p: model.apply(p, batch, method=Separator.encode), params)
  v = jax.eval_shape(lambda p: model.apply(p, batch, t), params)
  assert context.shape == (8, cfg.temporal.d_model)
  assert v.shape == (8, cfg.freq_bins, 32, 1)
  counts = parameter_counts(cfg)
  assert 200_000 < counts["total"] == counts["trainable"] < 500_000
  assert counts["total"] == _count(params["params"])


def test_time_and_visual_vector_change_the_output():
  cfg = _micro()
  model = Separator(cfg)
  rng = np.random.default_rng(0)
  x_t = jnp.asarray(np.repeat(rng.standard_normal((1, 8, 8, 1)), 3, axis=0), jnp.float32)
  mixture = jnp.asarray(np.repeat(rng.uniform(0, 1, (1, 8, 8, 1)), 3, axis=0), jnp.float32)
  visual = jnp.asarray(rng.standard_normal((2, 8)), jnp.float32)[jnp.array([0, 0, 1])]
  t = jnp.array([0.2, 0.7, 0.2])  # row 1 differs from row 0 in t only, row 2 in the visual vector only
  batch = {"mixture": mixture, "context": jnp.zeros((3, 2, 8))}
  params = _random_params(model, rng, batch, t)
  apply = jax.jit(lambda p: model.apply({"params": p}, x_t, t, visual, mixture, method=Separator.velocity))
  velocity = lambda p: np.asarray(apply(p))
  v = velocity(params)
  scale = np.abs(v[0]).mean()
  assert np.abs(v[1] - v[0]).mean() > 1e-2 * scale
  assert np.abs(v[2] - v[0]).mean() > 1e-2 * scale
  # t enters only through the time MLP and the FiLMs: with every FiLM projection zeroed, t has no effect.
  flat = flax.traverse_util.flatten_dict(params)
  no_film = flax.traverse_util.unflatten_dict({k: jnp.zeros_like(p) if "mlp" in k else p for k, p in flat.items()})
  v = velocity(no_film)
  np.testing.assert_allclose(v[1], v[0], atol=1e-6)
  assert np.abs(v[2] - v[0]).mean() > 1e-2 * np.abs(v[0]).mean()


def test_block_is_weight_standardised_conv_groupnorm_film_silu():
  rng = np.random.default_rng(0)
  b, f, t, cin, cout, groups = 2, 5, 4, 3, 8, 4
  x = rng.standard_normal((b, f, t, cin)).astype(np.float32)
  scale, shift = (rng.standard_normal((b, 1, 1, cout)).astype(np.float32) for _ in range(2))
  block = Block(cout, groups, "xla")
  params = _random_params(block, rng, x, scale=1.0, offset=0.5)
  out = np.asarray(block.apply({"params": params}, x, (scale, shift)))

  w = np.asarray(params["proj"]["kernel"], np.float64).transpose(3, 2, 0, 1)  # PyTorch layout (O, I, kh, kw)
  w = (w - w.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(w.var(axis=(1, 2, 3), keepdims=True) + 1e-5)
  np.testing.assert_allclose(np.asarray(weight_standardize(params["proj"]["kernel"])),
                             w.transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-5)
  padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = sum(np.einsum("bftc,oc->bfto", padded[:, i:i + f, j:j + t], w[:, :, i, j]) for i in range(3) for j in range(3))
  y = y + np.asarray(params["proj"]["bias"])
  g = y.reshape(b, f, t, groups, cout // groups)
  g = (g - g.mean(axis=(1, 2, 4), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 4), keepdims=True) + 1e-5)
  y = g.reshape(b, f, t, cout) * np.asarray(params["norm"]["scale"]) + np.asarray(params["norm"]["bias"])
  y = y * (1 + scale) + shift
  np.testing.assert_allclose(out, y / (1 + np.exp(-y)), rtol=1e-4, atol=1e-4)


def _layer_norm_4d_cf(x, gamma, beta):
  """TF-GridNet's LayerNormalization4DCF in PyTorch layout: x (B, C, T, F), gamma/beta (1, C, 1, F)."""
  mean = x.mean(axis=(1, 3), keepdims=True)
  return (x - mean) / np.sqrt(x.var(axis=(1, 3), keepdims=True) + 1e-5) * gamma + beta


def test_layer_norm_over_channels_and_frequencies():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 5, 4))  # (B, F, T, C)
  gamma, beta = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))  # (F, C)
  ref = _layer_norm_4d_cf(x.transpose(0, 3, 2, 1), gamma.T[None, :, None], beta.T[None, :, None])
  out = layer_norm_fc(jnp.asarray(x, jnp.float32), jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32))
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 2, 1), ref, rtol=1e-4, atol=1e-4)


def test_time_attention_against_numpy():
  """The TF-GridNet time attention (per head: 1x1 conv, PReLU, (C, F) LayerNorm; attention over T with the whole
  band as one token) in PyTorch layout, with the head loop of the public code."""
  rng = np.random.default_rng(0)
  b, f, t, c, heads, qk_dim = 2, 4, 6, 8, 2, 10
  x = rng.standard_normal((b, f, t, c)).astype(np.float32)
  module = TimeAttention(heads, qk_dim)
  params = _random_params(module, rng, x, None, offset=0.2)
  out = np.asarray(module.apply({"params": params}, x, None))

  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  xt = x.astype(np.float64).transpose(0, 3, 2, 1)  # (B, C, T, F)

  def project(name, h, inp):
    q = p[name]
    y = np.einsum("bctf,ce->betf", inp, q["kernel"][h]) + q["bias"][h][None, :, None, None]
    y = np.where(y >= 0, y, q["slope"][h] * y)
    return _layer_norm_4d_cf(y, q["gamma"][h].T[None, :, None], q["beta"][h].T[None, :, None])

  outs = []
  for h in range(heads):
    qh, kh, vh = (project(name, h, xt).transpose(0, 2, 1, 3) for name in ("query", "key", "value"))  # (B, T, E, F)
    logits = np.einsum("bsef,bref->bsr", qh, kh) / math.sqrt(qh.shape[2] * qh.shape[3])
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)
    outs.append(np.einsum("bsr,bref->bsef", attn, vh).transpose(0, 2, 1, 3))  # (B, C/H, T, F)
  ref = xt + project("concat_proj", 0, np.concatenate(outs, axis=1))
  assert math.ceil(qk_dim / f) == p["query"]["kernel"].shape[-1]
  np.testing.assert_allclose(out.transpose(0, 3, 2, 1), ref, rtol=1e-4, atol=1e-4)


def test_temporal_transformer_matches_torch():
  torch.manual_seed(0)
  d, heads, ff = 16, 2, 32
  ref = torch.nn.Transformer(d_model=d, nhead=heads, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=ff,
                             dropout=0.0, batch_first=True).eval()
  with torch.no_grad():  # non-trivial LayerNorms
    for name, p in ref.named_parameters():
      if "norm" in name:
        p.add_(0.3 * torch.randn_like(p))
  module = Transformer(heads, 2, 1, ff)
  x = np.random.default_rng(0).standard_normal((3, 5, d)).astype(np.float32)
  params = flax.traverse_util.flatten_dict(jax.eval_shape(module.init, jax.random.key(0), x, x)["params"], sep="/")
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  loaded = {}
  for path, leaf in params.items():
    key = path.replace("layers_", "layers.").replace("/", ".").replace("in_proj_kernel", "in_proj_weight")
    key = key.replace("kernel", "weight").replace("scale", "weight")
    value = state.pop(key)
    loaded[path] = jnp.asarray(value.T if path.endswith("kernel") else value)
    assert loaded[path].shape == leaf.shape, path
  assert not state, sorted(state)
  out = module.apply({"params": flax.traverse_util.unflatten_dict(loaded, sep="/")}, x, x)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x), torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4)


def test_clip_conditioning_is_frozen_and_unnormalized():
  cfg = presets.model_config("toy")
  cfg.conditioning.kind = "clip"  # the tiny CLIP: 24-d features
  cfg.temporal.update(dict(d_model=24, heads=2, ff_dim=16))
  model = Separator(cfg)
  batch = example_batch(cfg, batch_size=2)
  batch["frames"] = jnp.asarray(np.random.default_rng(0).integers(0, 255, batch["frames"].shape), jnp.uint8)
  params = _random_params(model, np.random.default_rng(1), batch, method=Separator.encode, scale=0.2)
  features = jax.jit(lambda p: model.apply({"params": p}, batch, method=lambda m, b: m.visual.frame_features(b)))(
      params)
  assert features.shape == (2, 2, 24)
  assert not np.allclose(np.linalg.norm(np.asarray(features), axis=-1), 1.0, atol=1e-3)  # `encode_image`, raw
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, batch, method=Separator.encode)**2)))(params)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["visual"]["clip"]))
  assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(grads["visual"]["temporal_transformer"]))
  counts = parameter_counts(cfg)
  assert counts["trainable"] == counts["total"] - _count(params["visual"]["clip"]) == \
      counts["unet"] + counts["temporal_transformer"]


def test_davis_sinusoidal_embedding():
  """`SinusoidalPosEmb(dim)(1000 t)` of the public U-Net: [sin, cos] of 1000 t · 10000^(-j / (dim/2 − 1))."""
  t = np.array([0.0, 0.25, 1.0])
  dim = 10
  freqs = np.exp(-np.log(10000) * np.arange(dim // 2) / (dim // 2 - 1))
  args = 1000 * t[:, None] * freqs
  np.testing.assert_allclose(np.asarray(timestep_embedding(t, dim, sin_first=True, freq_shift=1)),
                             np.concatenate([np.sin(args), np.cos(args)], axis=-1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change,error", [
    (lambda c, b: b.update(mixture=jnp.zeros((1, 16, 2, 1))), "expected model.freq_bins=8"),
    (lambda c, b: b.update(context=jnp.zeros((1, 2, 5))), "holds 5-d features but model.temporal.d_model is 8"),
    (lambda c, b: c.temporal.update(dict(decoder_layers=0)), "needs at least one decoder layer"),
    (lambda c, b: c.update(dict(attention_levels=(2,))), r"attention_levels=\(2,\); expected levels in \[0, 2\)"),
])
def test_config_errors_name_the_field(change, error):
  cfg = _micro()
  batch = example_batch(cfg)
  change(cfg, batch)
  with pytest.raises(ValueError, match=error):
    jax.eval_shape(lambda: Separator(cfg).init(jax.random.key(0), batch, jnp.zeros((1,))))

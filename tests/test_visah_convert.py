"""VisAH checkpoint conversion (`avflow/interop/visah_convert.py`) and Flax <-> PyTorch parity.

The PyTorch side is `avflow/interop/visah_pytorch.py`, the public VisAH network in the public
checkpoint layout. Parity runs the Flax model on weights converted from random PyTorch ones.
"""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from avflow.interop import visah_pytorch as tv
from avflow.interop import visah_convert as vt
from avflow.interop.hf_import import CheckpointMismatchError
from avflow.models.visah import presets
from avflow.models.visah.latent import ContextEncoderLayer
from avflow.models.visah.network import VisAH
from avflow.nn import demucs_layers as dl
from avflow.nn import stft as jstft

SHAPES_JSON = os.path.join(os.path.dirname(__file__), "data", "visah_state_dict_shapes.json")
REL_TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(scale, context_attention="legacy_batch_axis", **overrides):
  cfg = presets.model_config(scale)
  cfg.latent.context_attention = context_attention
  cfg.update(overrides)
  return cfg


def _random_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return traverse_util.unflatten_dict({
      path: rng.standard_normal(s.shape, np.float32)
      for path, s in vt._abstract_params(cfg).items()})


def _torch_model(cfg, seed=0):
  """The PyTorch network with random values in its zero-initialised parts as well."""
  torch.manual_seed(seed)
  model = tv.build_visah(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith(("latent_transformer.proj_out", "time_embed")):
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1]**0.5)
      elif name.endswith(".scale"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model


def _assert_rel_close(actual, expected, rel=REL_TOL):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  err = np.abs(actual - expected).max() / np.abs(expected).max()
  assert err <= rel, f"max error {err:.2e} relative to the largest value"


def _assert_trees_equal(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


# ------------------------------------------------------------------------------------------
# Conversion.


def test_paper_export_is_the_public_layout_and_round_trips(tmp_path):
  cfg = _cfg("paper")
  params = _random_params(cfg)
  sd = vt.flax_to_torch(params, cfg)
  with open(SHAPES_JSON) as f:
    public = json.load(f)
  assert list(sd) == [k[len("model."):] for k in public if k.startswith("model.")]
  assert {k: list(v.shape) for k, v in sd.items()} == {
      k[len("model."):]: v for k, v in public.items() if k.startswith("model.")}
  _assert_trees_equal(vt.torch_to_flax(sd, cfg), params)
  # The Lightning file loads strictly into the PyTorch network, buffers included.
  path = str(tmp_path / "visah.ckpt")
  vt.save_checkpoint(path, params, cfg)
  stored = torch.load(path, weights_only=True)["state_dict"]
  assert list(stored) == list(public)
  model = tv.build_visah(cfg)
  pe = model.latent_transformer.pe_context.pe.clone()
  tv.load_lightning_state_dict(model, stored)
  np.testing.assert_allclose(model.latent_transformer.pe_context.pe, pe, atol=1e-3)
  np.testing.assert_array_equal(model.freq_emb.embedding.weight.detach(),
                                params["model"]["freq_emb"]["embedding"])


def test_round_trip_with_time_conditioning_is_bitwise():
  cfg = _cfg("toy", time_conditioning="latent_token+encoder")
  params = _random_params(cfg, seed=3)
  sd = vt.flax_to_torch(params, cfg)
  assert list(sd) == list(tv.build_visah(cfg).state_dict())
  extra = set(sd) - set(vt.flax_to_torch(_random_params(_cfg("toy")), _cfg("toy")))
  assert extra and all(k.startswith("time_embed.") for k in extra)
  _assert_trees_equal(vt.torch_to_flax(sd, cfg), params)
  _assert_trees_equal(vt.torch_to_flax(tv.lightning_state_dict(
      {k: torch.from_numpy(v) for k, v in sd.items()}), cfg), params)


def test_strict_import_lists_every_problem_at_once():
  cfg = _cfg("toy")
  sd = vt.flax_to_torch(_random_params(cfg), cfg)
  del sd["encoder.0.conv.weight"]
  sd["encoder.0.extra"] = np.zeros(3, np.float32)
  sd["decoder.1.conv_tr.weight"] = sd["decoder.1.conv_tr.weight"][..., 0]
  sd["latent_transformer.pe_context.pe"] = np.zeros_like(sd["latent_transformer.pe_context.pe"])
  with pytest.raises(CheckpointMismatchError) as info:
    vt.torch_to_flax(sd, cfg)
  message = str(info.value)
  for expected in ("1 missing", "encoder.0.conv.weight", "1 unexpected", "encoder.0.extra",
                   "1 mis-shaped", "decoder.1.conv_tr.weight", "pe_context.pe"):
    assert expected in message
  with pytest.raises(CheckpointMismatchError, match="visah` subtree"):
    vt.flax_to_torch({"visah": _random_params(cfg)}, cfg)


class _Opaque:
  """A pickled object that `weights_only=True` refuses."""


def test_checkpoint_files(tmp_path):
  cfg = _cfg("toy")
  params = _random_params(cfg, seed=1)
  for name in ("a.ckpt", "a.pt", "a.safetensors"):
    path = str(tmp_path / name)
    vt.save_checkpoint(path, params, cfg)
    _assert_trees_equal(vt.load_params(path, cfg), params)
  # A bare network state dict, and one in bfloat16 (read as float32).
  sd = {k: torch.from_numpy(v) for k, v in vt.flax_to_torch(params, cfg).items()}
  torch.save(sd, tmp_path / "bare.pt")
  _assert_trees_equal(vt.load_params(str(tmp_path / "bare.pt"), cfg), params)
  torch.save({k: v.bfloat16() for k, v in sd.items()}, tmp_path / "bf16.pt")
  half = vt.load_params(str(tmp_path / "bf16.pt"), cfg)
  np.testing.assert_allclose(half["model"]["encoder_0"]["conv"]["bias"],
                             params["model"]["encoder_0"]["conv"]["bias"], rtol=1e-2)
  # A Lightning checkpoint holding arbitrary objects needs an explicit opt-in.
  torch.save({"state_dict": tv.lightning_state_dict(sd), "hyper_parameters": _Opaque()},
             tmp_path / "lightning.ckpt")
  with pytest.raises(ValueError, match="allow_pickle=True"):
    vt.load_state_dict(str(tmp_path / "lightning.ckpt"))
  lightning = vt.load_params(str(tmp_path / "lightning.ckpt"), cfg, allow_pickle=True)
  _assert_trees_equal(lightning, params)
  with pytest.raises(ValueError, match="extension"):
    vt.save_checkpoint(str(tmp_path / "a.npz"), params, cfg)


# ------------------------------------------------------------------------------------------
# Whole-network parity.


@pytest.mark.parametrize("scale, context_attention, time_conditioning", [
    ("toy", "legacy_batch_axis", "none"),
    ("toy", "frames", "latent_token+encoder"),
    ("paper", "legacy_batch_axis", "none"),
    ("paper", "frames", "none"),
])
def test_flax_visah_matches_pytorch(scale, context_attention, time_conditioning):
  """1-s clips, batch 2. The toy config windows its BLSTM (max_steps 20 < 63 steps); the
  paper config has the public widths and depths at 44.1 kHz (44 STFT frames)."""
  overrides = dict(time_conditioning=time_conditioning)
  if scale == "toy":
    overrides["lstm_max_steps"] = 20
  cfg = _cfg(scale, context_attention, **overrides)
  model = _torch_model(cfg)
  g = torch.Generator().manual_seed(7)
  mix = 0.1 * torch.randn(2, 1, cfg.sample_rate, generator=g)
  context = torch.randn(2, 3, cfg.latent.context_dim, generator=g)
  t = None if time_conditioning == "none" else torch.tensor([0.25, 0.5])
  with torch.no_grad():
    expected = model(mix, context, t).numpy()
  params = vt.torch_to_flax(model.state_dict(), cfg)
  apply = jax.jit(lambda p, x, c, t: VisAH(cfg).apply({"params": p}, x, c, t))
  out = apply(params, jnp.asarray(mix.numpy().transpose(0, 2, 1)), jnp.asarray(context.numpy()),
              None if t is None else jnp.asarray(t.numpy()))
  _assert_rel_close(np.asarray(out).transpose(0, 2, 1), expected)


# ------------------------------------------------------------------------------------------
# Layer-level parity.


def _flax_params_like(module, args, torch_module):
  """Flax params of `module` (called on `args`) from `torch_module`'s state dict."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
  keys = vt.key_map({("model",) + p: s for p, s in traverse_util.flatten_dict(shapes).items()})
  sd = torch_module.state_dict()
  assert set(keys) == set(sd)
  for key, (_, shape) in keys.items():
    assert tuple(sd[key].shape) == shape, key
  return {"params": traverse_util.unflatten_dict(
      {path[1:]: vt.leaf_to_flax(path, sd[key].numpy()) for key, (path, _) in keys.items()})}


def _channels_last(x):
  return jnp.asarray(np.moveaxis(x.numpy(), 1, -1))


def _check_layer(flax_module, torch_module, x, *extra):
  """Runs both on `x` (PyTorch layout, channels second) and compares."""
  torch_module.eval()
  xf = _channels_last(x)
  variables = _flax_params_like(flax_module, (xf, *extra), torch_module)
  with torch.no_grad():
    expected = torch_module(x).numpy()
  out = jax.jit(flax_module.apply)(variables, xf, *extra)
  _assert_rel_close(np.moveaxis(np.asarray(out), -1, 1), expected)


def test_stft_matches_torch():
  x = torch.randn(2, 3000)
  window = torch.hann_window(512)
  for normalized in (False, True):
    z = torch.stft(x, 512, 128, window=window, normalized=normalized, center=True,
                   return_complex=True, pad_mode="reflect")
    zf = jstft.stft(jnp.asarray(x.numpy()), 512, 128, normalized=normalized)
    _assert_rel_close(np.asarray(zf), z.numpy())
    y = torch.istft(z, 512, 128, window=window, normalized=normalized, length=3000)
    _assert_rel_close(np.asarray(jstft.istft(zf, 512, 128, normalized=normalized, length=3000)),
                      y.numpy())
  for length in (3000, 100):  # 100 samples: shorter than the hybrid padding
    xl = torch.randn(2, 1, length)
    z = tv.hybrid_spec(xl, 1024)
    zf = jstft.hybrid_spec(jnp.asarray(xl.numpy()), 1024)
    _assert_rel_close(np.asarray(zf), z.numpy())
    _assert_rel_close(np.asarray(jstft.hybrid_ispec(zf, length)),
                      tv.hybrid_ispec(z, length).numpy())


@pytest.mark.parametrize("kernel, stride", [((8,), (4,)), ((4,), (2,)), ((8, 1), (4, 1)),
                                            ((4, 1), (2, 1))])
def test_conv_transpose_matches_torch(kernel, stride):
  klass = torch.nn.ConvTranspose1d if len(kernel) == 1 else torch.nn.ConvTranspose2d
  x = torch.randn(2, 6, *([9, 5][:len(kernel)]))
  _check_layer(dl.ConvTranspose(4, kernel, stride), klass(6, 4, kernel, stride), x)


def test_conv2d_matches_torch():
  x = torch.randn(2, 6, 33, 5)
  _check_layer(dl.Conv(4, (8, 1), (4, 1), ((2, 2), (0, 0))),
               torch.nn.Conv2d(6, 4, [8, 1], [4, 1], [2, 0]), x)


@pytest.mark.parametrize("steps", [13, 47])  # one window; three stitched windows
def test_blstm_matches_torch(steps):
  _check_layer(dl.BLSTM(6, layers=2, max_steps=20), tv.BLSTM(6, layers=2, max_steps=20),
               torch.randn(2, 6, steps))


def test_local_state_matches_torch():
  torch.manual_seed(0)
  torch_module = tv.LocalState(8, heads=4, ndecay=4)
  with torch.no_grad():  # a decay large enough to matter
    torch_module.query_decay.weight.normal_()
  _check_layer(dl.LocalState(8, heads=4, ndecay=4), torch_module, torch.randn(2, 8, 30))


def test_group_norm_matches_torch():
  torch_module = torch.nn.GroupNorm(4, 8)
  with torch.no_grad():
    torch_module.weight.normal_()
    torch_module.bias.normal_()
  flax_module = nn.GroupNorm(num_groups=4, epsilon=1e-5, use_fast_variance=False)
  _check_layer(flax_module, torch_module, 3.0 + torch.randn(2, 8, 5, 7))


@pytest.mark.parametrize("attention", ["frames", "legacy_batch_axis"])
def test_packed_attention_matches_torch(attention):
  torch.manual_seed(0)
  torch_layer = tv.ContextEncoderLayer(16, 4, 24, attention).eval()
  src = torch.randn(3, 5, 16)
  pos = torch.randn(1, 5, 16)
  variables = _flax_params_like(ContextEncoderLayer(4, 24, attention),
                                (jnp.asarray(src.numpy()), jnp.asarray(pos.numpy())), torch_layer)
  with torch.no_grad():
    expected = torch_layer(src, pos).numpy()
  out = ContextEncoderLayer(4, 24, attention).apply(variables, jnp.asarray(src.numpy()),
                                                    jnp.asarray(pos.numpy()))
  _assert_rel_close(out, expected)

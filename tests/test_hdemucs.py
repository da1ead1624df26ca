"""Tests for the hybrid Demucs layers, the `HDemucsRemixer` U-Net and the `VisAH` wrapper.

Layer parity uses small PyTorch reference modules written here from the description of the
public demucs / VisAH code (`DConv`, `BLSTM` with its windowing, `LocalState`); weights are
copied from the Flax parameters with the key mapping of the `avflow.models.visah.hdemucs` docstring
(`to_torch_state` below). Model-level tests run on the `toy` preset with short clips, shapes
and parameter counts of the `paper` preset use `jax.eval_shape` only.
"""
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn as tnn

from avflow.models.visah.hdemucs import HDemucsRemixer, unet_plan
from avflow.models.visah.presets import model_config
from avflow.models.visah.network import VisAH
from avflow.nn.demucs_layers import (BiLSTM, BLSTM, Conv, ConvTranspose, conv, conv_fn, DConv, LocalState,
                                     ScaledEmbedding, resolve_conv_impl)
from avflow.nn.stft import hybrid_ispec, hybrid_spec

KEY = jax.random.key(0, impl="rbg")  # cheaper to compile than threefry for large inits


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def to_torch_state(params, prefix=""):
  """Flax params -> PyTorch state dict (numpy), by the mapping of `avflow.models.visah.hdemucs`."""
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, value in flat.items():
    value = np.asarray(value)
    names = []
    for part in path[:-1]:
      m = re.fullmatch(r"(encoder|tencoder|decoder|tdecoder|layers)_(\d+)", part)
      names += [m.group(1), m.group(2)] if m else [part]
    leaf = path[-1]
    if leaf == "kernel":
      leaf = "weight"
      value = value.T if value.ndim in (2, 3) else value.transpose(3, 2, 0, 1)
    elif leaf == "scale" and path[:-1] + ("bias",) in flat:
      leaf = "weight"  # GroupNorm; a LayerScale `scale` has no bias beside it
    elif leaf == "embedding":
      names.append("embedding")
      leaf = "weight"
    out[prefix + ".".join(names + [leaf])] = value
  return out


def load(module, params):
  module.load_state_dict({k: torch.from_numpy(np.array(v))
                          for k, v in to_torch_state(params).items()}, strict=True)
  return module


def randn(*shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def perturb(tree, seed, scale=0.3):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


# ---------------------------------------------------------------------------------------------
# PyTorch references, written from the layer descriptions (channels-first, as in PyTorch).

class TorchBLSTM(tnn.Module):
  """BLSTM(dim, layers=2, max_steps, skip=True); windows are processed one by one."""

  def __init__(self, dim, max_steps):
    super().__init__()
    self.max_steps = max_steps
    self.lstm = tnn.LSTM(dim, dim, num_layers=2, bidirectional=True)
    self.linear = tnn.Linear(2 * dim, dim)

  def _direct(self, x):  # (B, C, T) -> (B, C, T)
    return self.linear(self.lstm(x.permute(2, 0, 1))[0]).permute(1, 2, 0)

  def forward(self, x):
    t = x.shape[-1]
    if t <= self.max_steps:
      return x + self._direct(x)
    width, stride = self.max_steps, self.max_steps // 2
    limit = stride // 2
    n_frames = math.ceil(t / stride)
    padded = F.pad(x, (0, (n_frames - 1) * stride + width - t))
    pieces = []
    for k in range(n_frames):
      y = self._direct(padded[..., k * stride:k * stride + width])
      if k == 0:
        pieces.append(y[..., :-limit])
      elif k == n_frames - 1:
        pieces.append(y[..., limit:])
      else:
        pieces.append(y[..., limit:-limit])
    return x + torch.cat(pieces, -1)[..., :t]


class TorchLocalState(tnn.Module):

  def __init__(self, channels, heads=4, ndecay=4):
    super().__init__()
    self.heads, self.ndecay = heads, ndecay
    self.content = tnn.Conv1d(channels, channels, 1)
    self.query = tnn.Conv1d(channels, channels, 1)
    self.key = tnn.Conv1d(channels, channels, 1)
    self.query_decay = tnn.Conv1d(channels, heads * ndecay, 1)
    self.proj = tnn.Conv1d(channels, channels, 1)

  def forward(self, x):
    b, c, t = x.shape
    idx = torch.arange(t, dtype=x.dtype)
    delta = idx[:, None] - idx[None, :]
    queries = self.query(x).view(b, self.heads, -1, t)
    keys = self.key(x).view(b, self.heads, -1, t)
    dots = torch.einsum("bhct,bhcs->bhts", keys, queries) / keys.shape[2]**0.5
    decays = torch.arange(1, self.ndecay + 1, dtype=x.dtype)
    decay_q = torch.sigmoid(self.query_decay(x).view(b, self.heads, -1, t)) / 2
    decay_kernel = -decays.view(-1, 1, 1) * delta.abs() / self.ndecay**0.5
    dots = dots + torch.einsum("fts,bhfs->bhts", decay_kernel, decay_q)
    dots = dots.masked_fill(torch.eye(t, dtype=torch.bool), -100)
    weights = torch.softmax(dots, dim=2)
    content = self.content(x).view(b, self.heads, -1, t)
    result = torch.einsum("bhts,bhct->bhcs", weights, content).reshape(b, -1, t)
    return x + self.proj(result)


class TorchLayerScale(tnn.Module):

  def __init__(self, channels):
    super().__init__()
    self.scale = tnn.Parameter(torch.zeros(channels))

  def forward(self, x):
    return self.scale[:, None] * x


class TorchDConv(tnn.Module):

  def __init__(self, channels, depth=2, compress=4, lstm=False, attn=False, max_steps=200):
    super().__init__()
    hidden = int(channels / compress)
    self.layers = tnn.ModuleList()
    for d in range(depth):
      dil = 2**d
      mods = [tnn.Conv1d(channels, hidden, 3, dilation=dil, padding=dil),
              tnn.GroupNorm(1, hidden), tnn.GELU(),
              tnn.Conv1d(hidden, 2 * channels, 1), tnn.GroupNorm(1, 2 * channels), tnn.GLU(1),
              TorchLayerScale(channels)]
      if attn:
        mods.insert(3, TorchLocalState(hidden))
      if lstm:
        mods.insert(3, TorchBLSTM(hidden, max_steps))
      self.layers.append(tnn.Sequential(*mods))

  def forward(self, x):
    for layer in self.layers:
      x = x + layer(x)
    return x


def torch_out(module, x_nlc):
  """Run a channels-first torch module on a channels-last numpy array."""
  with torch.no_grad():
    y = module(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x_nlc, -1, 1))))
  return np.moveaxis(y.numpy(), 1, -1)


# ---------------------------------------------------------------------------------------------
# Layers.

def _assert_matches_torch_with_gradients(module, params, ref, x):
  """Output, and the gradients of input and kernel for a random cotangent, against the PyTorch module's."""
  out, vjp = jax.vjp(lambda p, x: module.apply({"params": p}, x), params, x)
  want = torch_out(ref, x)
  np.testing.assert_allclose(np.asarray(out), want, atol=1e-5)
  cotangent = randn(*want.shape, seed=1)
  d_params, d_x = vjp(jnp.asarray(cotangent))
  x_t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_()
  ref(x_t).backward(torch.from_numpy(np.ascontiguousarray(np.moveaxis(cotangent, -1, 1))))
  np.testing.assert_allclose(np.asarray(d_x), np.moveaxis(x_t.grad.numpy(), 1, -1), rtol=1e-4, atol=1e-4)
  kernel = ref.weight.grad.numpy()
  kernel = kernel.T if kernel.ndim == 3 else kernel.transpose(2, 3, 1, 0)
  np.testing.assert_allclose(np.asarray(d_params["kernel"]), kernel, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(d_params["bias"]), ref.bias.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["xla", "matmul"])
@pytest.mark.parametrize("kernel,stride,pad,dilation,cin,cout", [
    ((8,), (4,), ((2, 2),), 1, 3, 5), ((3,), (1,), ((2, 2),), 2, 4, 4),
    ((8, 1), (4, 1), ((2, 2), (0, 0)), 1, 2, 3), ((3, 3), (1, 1), ((1, 1), (1, 1)), 1, 3, 6)])
def test_conv_matches_torch(kernel, stride, pad, dilation, cin, cout, impl):
  conv = Conv(cout, kernel, stride, pad, dilation=dilation, impl=impl)
  x = randn(2, *(20,) * len(kernel), cin)
  params = conv.init(KEY, x)["params"]
  klass = tnn.Conv1d if len(kernel) == 1 else tnn.Conv2d
  ref = load(klass(cin, cout, kernel, stride, tuple(p[0] for p in pad), dilation), params)
  _assert_matches_torch_with_gradients(conv, params, ref, x)


@pytest.mark.parametrize("impl", ["xla", "matmul"])
@pytest.mark.parametrize("kernel,stride", [((8,), (4,)), ((4,), (2,)), ((4,), (4,)), ((3,), (2,)),
                                           ((8, 1), (4, 1)), ((4, 1), (4, 1))])
def test_conv_transpose_matches_torch(kernel, stride, impl):
  conv = ConvTranspose(3, kernel, stride, impl=impl)
  x = randn(2, *(9,) * len(kernel), 5)
  params = conv.init(KEY, x)["params"]
  klass = tnn.ConvTranspose1d if len(kernel) == 1 else tnn.ConvTranspose2d
  ref = load(klass(5, 3, kernel, stride), params)
  assert conv.apply({"params": params}, x).shape[1] == (9 - 1) * stride[0] + kernel[0]
  _assert_matches_torch_with_gradients(conv, params, ref, x)


def _convs(fn, *args):
  """Convolutions in fn's jaxpr: {"custom": inside a custom-gradient call, "xla": the others}."""
  from jax.extend import core
  counts = {"custom": 0, "xla": 0}

  def walk(jaxpr, custom):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        counts["custom" if custom else "xla"] += 1
      for sub in core.jaxprs_in_params(eqn.params):
        walk(sub, custom or eqn.primitive.name.startswith("custom_vjp"))
  walk(jax.make_jaxpr(fn)(*args).jaxpr, False)
  return counts


@pytest.mark.parametrize("module,x_shape", [(Conv(4, (8,), (4,), ((2, 2),)), (1, 20, 3)),
                                            (ConvTranspose(4, (8,), (4,)), (1, 5, 3))])
def test_conv_impl_xla_differentiates_with_xla_convolutions_matmul_with_matmuls(module, x_shape):
  x = jnp.ones(x_shape)
  params = module.init(KEY, x)["params"]
  counts = {}
  for impl in ("xla", "matmul"):
    layer = module.clone(impl=impl)
    counts[impl] = _convs(jax.grad(lambda p, x: jnp.sum(layer.apply({"params": p}, x)), argnums=(0, 1)), params, x)
  # XLA's: the forward and both gradients are XLA convolutions; matmul's: at most the custom-gradient forward is.
  assert counts == {"xla": {"custom": 0, "xla": 3}, "matmul": {"custom": int(isinstance(module, Conv)), "xla": 0}}
  assert resolve_conv_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="conv_impl='cudnn'"):
    resolve_conv_impl("cudnn")


@pytest.mark.parametrize("module,x_shape", [
    (Conv(6, (3,)), (1, 10, 4)), (Conv(6, (8, 1)), (1, 16, 3, 4)),
    (ConvTranspose(6, (8,), (4,)), (1, 10, 4)),
    (Conv(8, (1,), kernel_gain=0.01, bias_value=-2.0), (1, 10, 4))])
def test_rescale_divides_weight_and_bias_by_sqrt_std_ratio(module, x_shape):
  x = jnp.zeros(x_shape)
  raw = module.init(KEY, x)["params"]
  scaled = module.clone(rescale=0.1).init(KEY, x)["params"]
  s = np.sqrt(np.std(np.asarray(raw["kernel"]), ddof=1) / 0.1)
  np.testing.assert_allclose(np.asarray(scaled["kernel"]), np.asarray(raw["kernel"]) / s, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(scaled["bias"]), np.asarray(raw["bias"]) / s, rtol=1e-5)


def test_torch_style_init_bounds():
  params = Conv(6, (3,)).init(KEY, jnp.zeros((1, 10, 4)))["params"]
  bound = 1 / math.sqrt(4 * 3)
  assert np.abs(params["kernel"]).max() <= bound and np.abs(params["bias"]).max() <= bound
  params = ConvTranspose(6, (8,), (4,)).init(KEY, jnp.zeros((1, 10, 4)))["params"]
  assert np.abs(params["kernel"]).max() <= 1 / math.sqrt(6 * 8)  # fan_in = out * k in torch


def test_bilstm_matches_torch_lstm():
  lstm = BiLSTM(6, num_layers=2)
  x = randn(3, 11, 5)
  params = lstm.init(KEY, x)["params"]
  ref = tnn.LSTM(5, 6, num_layers=2, bidirectional=True)
  ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
  with torch.no_grad():
    expected = ref(torch.from_numpy(x).transpose(0, 1))[0].transpose(0, 1).numpy()
  np.testing.assert_allclose(np.asarray(lstm.apply({"params": params}, x)), expected, atol=1e-5)


@pytest.mark.parametrize("t,max_steps", [(5, 8), (8, 8), (9, 8), (21, 8), (24, 8), (41, 8),
                                         (431, 200)])
def test_blstm_matches_direct_and_windowed_reference(t, max_steps):
  blstm = BLSTM(4, max_steps=max_steps)
  x = randn(2, t, 4, seed=t)
  params = blstm.init(KEY, x)["params"]
  ref = load(TorchBLSTM(4, max_steps), params)
  np.testing.assert_allclose(np.asarray(blstm.apply({"params": params}, x)), torch_out(ref, x),
                             atol=1e-5)


def test_blstm_windowing_only_changes_long_sequences():
  x = randn(2, 30, 4)
  params = BLSTM(4, max_steps=None).init(KEY, x)["params"]
  full = BLSTM(4, max_steps=None).apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(BLSTM(4, max_steps=32).apply({"params": params}, x)),
                             np.asarray(full), atol=1e-6)
  windowed = BLSTM(4, max_steps=8).apply({"params": params}, x)
  assert np.abs(np.asarray(windowed - full)).max() > 1e-4


def test_local_state_matches_torch():
  layer = LocalState(8, rescale=0.1)
  x = randn(2, 13, 8)
  params = perturb(layer.init(KEY, x)["params"], 1)
  ref = load(TorchLocalState(8), params)
  np.testing.assert_allclose(np.asarray(layer.apply({"params": params}, x)), torch_out(ref, x),
                             atol=1e-5)


def test_local_state_decay_init():
  params = LocalState(8).init(KEY, jnp.zeros((1, 5, 8)))["params"]["query_decay"]
  assert params["kernel"].shape == (1, 8, 16)
  np.testing.assert_array_equal(np.asarray(params["bias"]), -2.0)
  assert np.abs(np.asarray(params["kernel"])).max() <= 0.01 / math.sqrt(8)


@pytest.mark.parametrize("lstm_attn", [False, True])
def test_dconv_matches_torch(lstm_attn):
  dconv = DConv(16, lstm=lstm_attn, attn=lstm_attn, lstm_max_steps=8, rescale=0.1)
  x = randn(2, 19, 16)
  params = perturb(dconv.init(KEY, x)["params"], 2)  # LayerScale 1e-4 would hide the branches
  ref = load(TorchDConv(16, lstm=lstm_attn, attn=lstm_attn, max_steps=8), params)
  np.testing.assert_allclose(np.asarray(dconv.apply({"params": params}, x)), torch_out(ref, x),
                             atol=2e-5)
  expected = {"0", "1", "3", "4", "6"} | ({"5", "8"} if lstm_attn else set())
  assert set(params["layers_0"]) == expected


def test_scaled_embedding_stores_weight_divided_by_scale():
  emb = ScaledEmbedding(512, 24, scale=10.0, smooth=True)
  params = emb.init(KEY, jnp.arange(3))["params"]
  table = np.asarray(params["embedding"])
  np.testing.assert_allclose(np.asarray(emb.apply({"params": params}, jnp.arange(512))),
                             10 * table, rtol=1e-6)
  assert 0.07 < table.std() < 0.13  # smoothed N(0, 1) rows keep unit variance, then / 10
  assert np.abs(np.diff(table, axis=0)).mean() < 0.5 * np.abs(table).mean()  # smooth in freq


# ---------------------------------------------------------------------------------------------
# U-Net construction, shapes and parameter counts.

def _cfg(scale="toy", time_conditioning="none"):
  """A preset; "toy" here is a 5-layer, nfft-512 variant of the toy preset, whose merge layer needs the
  generalised time-branch stride and whose layer 4 carries the BLSTM and LocalState."""
  cfg = model_config(scale)
  if scale == "toy":
    cfg.update(dict(depth=5, nfft=512, norm_starts=4, dconv_lstm=4, dconv_attn=4))
  cfg.time_conditioning = time_conditioning
  return cfg


def test_unet_plan_paper():
  plan = unet_plan(_cfg("paper"))
  enc = [(s.chin, s.chout, s.kernel, s.stride, s.freq, s.pad, s.norm, s.lstm) for s in plan.encoder]
  assert enc == [(1, 24, 8, 4, True, 2, False, False), (24, 48, 8, 4, True, 2, False, False),
                 (48, 96, 8, 4, True, 2, False, False), (96, 192, 8, 4, True, 2, False, False),
                 (192, 384, 8, 4, True, 0, True, True), (384, 768, 4, 2, False, 1, True, True)]
  tenc = [(s.kernel, s.stride, s.empty) for s in plan.tencoder]
  assert tenc == [(8, 4, False)] * 4 + [(8, 4, True)]
  assert [(s.chin, s.chout, s.last) for s in plan.decoder] == [
      (768, 384, False), (384, 192, False), (192, 96, False), (96, 48, False), (48, 24, False),
      (24, 1, True)]
  assert [(s.chin, s.chout, s.empty, s.norm) for s in plan.tdecoder] == [
      (384, 192, True, True), (192, 96, False, False), (96, 48, False, False),
      (48, 24, False, False), (24, 1, False, False)]
  assert plan.freq_emb == (512, 24)


def test_unet_plan_rejects_inconsistent_configs():
  cfg = _cfg()
  cfg.depth = 3  # 4 frequency layers: the branches would never merge
  with pytest.raises(ValueError, match="never merge"):
    unet_plan(cfg)
  cfg = _cfg()
  cfg.nfft = 384  # 4 frequency layers (192 -> 48 -> 12 -> 3 -> 1): hop 96 vs stride 4**3
  with pytest.raises(ValueError, match="does not fit"):
    unet_plan(cfg)


def _layer_shapes(cfg, batch, length, n_ctx=3):
  model = HDemucsRemixer(cfg)
  mix = jax.ShapeDtypeStruct((batch, length, 1), jnp.float32)
  ctx = jax.ShapeDtypeStruct((batch, n_ctx, cfg.latent.context_dim), jnp.float32)
  variables = jax.eval_shape(model.init, KEY, mix, ctx)
  out, state = jax.eval_shape(
      lambda v, m, c: model.apply(v, m, c, capture_intermediates=True), variables, mix, ctx)
  inter = state["intermediates"]
  shapes = {}
  for name, value in inter.items():
    if name != "__call__":
      y = value["__call__"][0]
      shapes[name] = tuple((y[0] if isinstance(y, tuple) else y).shape)
  return variables["params"], shapes, out.shape


def test_toy_layer_shapes():
  # 2 s at 16 kHz, nfft 512 (hop 128): 4 frequency layers 256 -> 64 -> 16 -> 4 -> 1, the
  # merge layer of the time branch has stride 2, then one time layer (stride 2) to 125 tokens.
  _, shapes, out = _layer_shapes(_cfg(), 2, 32000)
  assert out == (2, 32000, 1)
  assert shapes == {
      "encoder_0": (2, 64, 250, 8), "encoder_1": (2, 16, 250, 16), "encoder_2": (2, 4, 250, 32),
      "encoder_3": (2, 1, 250, 64), "encoder_4": (2, 125, 128),
      "tencoder_0": (2, 8000, 8), "tencoder_1": (2, 2000, 16), "tencoder_2": (2, 500, 32),
      "tencoder_3": (2, 250, 64),
      "latent_transformer": (2, 125, 128),
      "decoder_0": (2, 250, 64), "decoder_1": (2, 4, 250, 32), "decoder_2": (2, 16, 250, 16),
      "decoder_3": (2, 64, 250, 8), "decoder_4": (2, 256, 250, 1),
      "tdecoder_0": (2, 500, 32), "tdecoder_1": (2, 2000, 16), "tdecoder_2": (2, 8000, 8),
      "tdecoder_3": (2, 32000, 1),
      "freq_emb": (64, 8)}


@pytest.fixture(scope="module")
def paper():
  return _layer_shapes(_cfg("paper"), 2, 441000, n_ctx=10)


def test_paper_layer_shapes(paper):
  _, shapes, out = paper
  assert out == (2, 441000, 1)
  expected_enc = [(2, 512, 431, 24), (2, 128, 431, 48), (2, 32, 431, 96), (2, 8, 431, 192),
                  (2, 1, 431, 384), (2, 216, 768)]
  expected_tenc = [(2, 110250, 24), (2, 27563, 48), (2, 6891, 96), (2, 1723, 192), (2, 431, 384)]
  expected_dec = [(2, 431, 384), (2, 8, 431, 192), (2, 32, 431, 96), (2, 128, 431, 48),
                  (2, 512, 431, 24), (2, 2048, 431, 1)]
  expected_tdec = [(2, 1723, 192), (2, 6891, 96), (2, 27563, 48), (2, 110250, 24), (2, 441000, 1)]
  assert [shapes[f"encoder_{i}"] for i in range(6)] == expected_enc
  assert [shapes[f"tencoder_{i}"] for i in range(5)] == expected_tenc
  assert [shapes[f"decoder_{i}"] for i in range(6)] == expected_dec
  assert [shapes[f"tdecoder_{i}"] for i in range(5)] == expected_tdec
  assert shapes["latent_transformer"] == (2, 216, 768)


def test_paper_parameter_counts(paper):
  params = paper[0]
  count = lambda prefix, n: [n_params(params[f"{prefix}_{i}"]) for i in range(n)]
  assert count("encoder", 6) == [3228, 20472, 80112, 316896, 2120864, 7264544]
  assert sum(count("tencoder", 5)) == 1010916
  assert count("decoder", 6) == [4724352, 3246912, 811488, 202992, 50808, 10609]
  assert sum(count("tdecoder", 5)) == 1078777
  assert n_params(params["freq_emb"]) == 12288
  unet = {k: v for k, v in params.items() if k != "latent_transformer"}
  assert n_params(unet) == 20955258
  assert n_params(params["latent_transformer"]) == 39000832


def test_paper_visah_total_parameters_and_no_time_parameters():
  cfg = _cfg("paper")
  variables = jax.eval_shape(VisAH(cfg).init, KEY,
                             jax.ShapeDtypeStruct((1, 441000, 1), jnp.float32),
                             jax.ShapeDtypeStruct((1, 10, 768), jnp.float32))
  assert list(variables["params"]) == ["model"]
  assert n_params(variables) == 59956090


def test_paper_param_tree_maps_onto_pytorch_keys(paper):
  params = {k: v for k, v in paper[0].items() if k != "latent_transformer"}
  shapes = {k: tuple(v.shape) for k, v in
            to_torch_state(jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), params),
                           "model.").items()}
  assert len(shapes) == 395  # 561 `model.` keys - 164 latent-transformer keys - 2 buffers
  spot = {
      "model.encoder.0.conv.weight": (24, 1, 8, 1),
      "model.encoder.0.rewrite.weight": (48, 24, 1, 1),
      "model.encoder.0.dconv.layers.0.0.weight": (6, 24, 3),
      "model.encoder.0.dconv.layers.0.1.weight": (6,),
      "model.encoder.0.dconv.layers.0.6.scale": (24,),
      "model.encoder.4.norm1.weight": (384,),
      "model.encoder.4.dconv.layers.0.3.lstm.weight_ih_l1_reverse": (384, 192),
      "model.encoder.4.dconv.layers.0.3.linear.weight": (96, 192),
      "model.encoder.4.dconv.layers.1.4.query_decay.weight": (16, 96, 1),
      "model.encoder.4.dconv.layers.1.8.scale": (384,),
      "model.encoder.5.conv.weight": (768, 384, 4),
      "model.encoder.5.rewrite.weight": (1536, 768, 1),
      "model.encoder.5.dconv.layers.1.5.weight": (1536, 192, 1),
      "model.tencoder.4.conv.weight": (384, 192, 8),
      "model.decoder.0.conv_tr.weight": (768, 384, 4),
      "model.decoder.0.rewrite.weight": (1536, 768, 3),
      "model.decoder.1.conv_tr.weight": (384, 192, 8, 1),
      "model.decoder.1.rewrite.weight": (768, 384, 3, 3),
      "model.decoder.5.conv_tr.weight": (24, 1, 8, 1),
      "model.tdecoder.0.norm2.weight": (192,),
      "model.tdecoder.4.conv_tr.weight": (24, 1, 8),
      "model.freq_emb.embedding.weight": (512, 24),
  }
  for key, shape in spot.items():
    assert shapes[key] == shape, key
  assert not any(k.startswith(("model.tencoder.4.", "model.tdecoder.0.")) and "rewrite" in k
                 for k in shapes)
  assert "model.tdecoder.0.norm1.weight" not in shapes
  assert "model.decoder.2.norm1.weight" not in shapes


# ---------------------------------------------------------------------------------------------
# The full network on the toy preset (short clips).

B, L, N_CTX = 2, 4000, 3


@pytest.fixture(scope="module")
def toy():
  """Toy VisAH with encoder time injection (its parameters contain every variant's)."""
  cfg = _cfg("toy", "latent_token+encoder")
  keys = jax.random.split(jax.random.key(3), 3)
  mix = 0.3 * jax.random.normal(keys[0], (B, L, 1))
  ctx = jax.random.normal(keys[1], (B, N_CTX, cfg.latent.context_dim))
  t = jnp.array([0.2, 0.7])
  variables = jax.jit(VisAH(cfg).init)(KEY, mix, ctx, t)
  return cfg, variables["params"], mix, ctx, t


@functools.lru_cache
def _apply(time_conditioning):
  return jax.jit(lambda p, m, c, t=None: VisAH(_cfg("toy", time_conditioning)).apply(
      {"params": p}, m, c, t, capture_intermediates=True))


def _without_time(params):
  model = {k: v for k, v in params["model"].items() if "_time_" not in k}
  return {"model": model}


def test_time_parameters_per_variant(toy):
  cfg, params, *_ = toy
  model = params["model"]
  assert set(params) == {"model", "time_embed_0", "time_embed_1"}
  assert sorted(k for k in model if k.startswith("encoder_time_")) == [
      f"encoder_time_{i}" for i in range(5)]
  assert sorted(k for k in model if k.startswith("tencoder_time_")) == [
      f"tencoder_time_{i}" for i in range(3)]  # the empty merge layer gets none
  assert params["time_embed_1"]["kernel"].shape == (64, 64)
  assert params["time_embed_0"]["kernel"].shape == (cfg.time_embed_dim, 64)


def test_latent_block_is_identity_at_init_and_output_is_finite(toy):
  _, params, mix, ctx, _ = toy
  out, state = _apply("none")(_without_time(params), mix, ctx)
  inter = state["intermediates"]["model"]
  np.testing.assert_array_equal(np.asarray(inter["latent_transformer"]["__call__"][0]),
                                np.asarray(inter["encoder_4"]["__call__"][0]))
  assert out.shape == (B, L, 1) and np.all(np.isfinite(np.asarray(out)))


def test_mask_and_time_branch_composition(toy):
  # Mask of ones and a silent time decoder: the output is ispec(spec(mix)) + mean(mix).
  _, params, mix, ctx, _ = toy
  params = _without_time(params)
  model = dict(params["model"])
  last = f"decoder_{len(unet_plan(_cfg()).decoder) - 1}"
  conv_tr = model[last]["conv_tr"]
  model[last] = {**model[last], "conv_tr": {"kernel": jnp.zeros_like(conv_tr["kernel"]),
                                            "bias": jnp.ones_like(conv_tr["bias"])}}
  model["tdecoder_3"] = {**model["tdecoder_3"],
                         "conv_tr": jax.tree.map(jnp.zeros_like, model["tdecoder_3"]["conv_tr"])}
  out, _ = _apply("none")({"model": model}, mix, ctx)
  x = mix[..., 0]
  expected = hybrid_ispec(hybrid_spec(x, 512), L) + jnp.mean(x, axis=1, keepdims=True)
  np.testing.assert_allclose(np.asarray(out[..., 0]), np.asarray(expected), atol=1e-5)


def test_none_variant_ignores_t(toy):
  _, params, mix, ctx, t = toy
  apply = _apply("none")
  a, _ = apply(_without_time(params), mix, ctx)
  b, _ = apply(_without_time(params), mix, ctx, t)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _max_diff(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def test_time_token_changes_output_once_proj_out_is_perturbed(toy):
  _, params, mix, ctx, t = toy
  apply = _apply("latent_token")
  params = {k: v for k, v in params.items() if k != "model"} | _without_time(params)
  out_a, _ = apply(params, mix, ctx, t)
  out_b, _ = apply(params, mix, ctx, 1 - t)
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))  # zero proj_out
  latent = params["model"]["latent_transformer"]
  latent = {**latent, "proj_out": perturb(latent["proj_out"], 5, scale=1.0)}
  params = {**params, "model": {**params["model"], "latent_transformer": latent}}
  out_a, state_a = apply(params, mix, ctx, t)
  out_b, state_b = apply(params, mix, ctx, 1 - t)
  tokens = [s["intermediates"]["model"]["latent_transformer"]["__call__"][0]
            for s in (state_a, state_b)]
  assert _max_diff(*tokens) > 1e-2 * float(np.abs(np.asarray(tokens[0])).max())
  assert _max_diff(out_a, out_b) > 1e-6


def test_encoder_time_injection_changes_output(toy):
  _, params, mix, ctx, t = toy
  apply = _apply("latent_token+encoder")
  out_a, _ = apply(params, mix, ctx, t)
  out_b, _ = apply(params, mix, ctx, 1 - t)
  np.testing.assert_array_equal(np.asarray(out_a), np.asarray(out_b))  # zero-initialised
  model = dict(params["model"])
  model["encoder_time_0"] = perturb(model["encoder_time_0"], 6, scale=1.0)
  params = {**params, "model": model}
  out_a, state_a = apply(params, mix, ctx, t)
  out_b, state_b = apply(params, mix, ctx, 1 - t)
  first = [s["intermediates"]["model"]["encoder_0"]["__call__"][0] for s in (state_a, state_b)]
  assert _max_diff(*first) > 1e-2 * float(np.abs(np.asarray(first[0])).max())
  assert _max_diff(out_a, out_b) > 1e-6


def test_missing_or_unexpected_time_is_an_error(toy):
  cfg, params, mix, ctx, t = toy
  with pytest.raises(ValueError, match="needs t"):
    jax.eval_shape(lambda: VisAH(cfg).apply({"params": params}, mix, ctx))
  with pytest.raises(ValueError, match="takes no time_token"):
    jax.eval_shape(lambda: HDemucsRemixer(_cfg()).apply(
        {"params": _without_time(params)["model"]}, mix, ctx, jnp.zeros((B, 64))))


def test_gradients_are_finite(toy):
  _, params, mix, ctx, t = toy
  model = VisAH(_cfg("toy", "latent_token+encoder"))
  loss = lambda p: jnp.mean(model.apply({"params": p}, mix, ctx, t) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert np.abs(np.asarray(grads["model"]["encoder_0"]["conv"]["kernel"])).max() > 0
  assert np.abs(np.asarray(grads["model"]["latent_transformer"]["proj_out"]["kernel"])).max() > 0


CONV_CASES = [  # x, kernel, strides, padding, dilation: every kind of convolution the U-Net uses
    ((2, 37, 3), (8, 3, 5), (4,), ((2, 2),), 1),  # time-branch encoder: kernel 8, stride 4, padding 2
    ((2, 33, 3), (8, 3, 5), (4,), ((0, 0),), 1),  # ... unpadded, a length that is not a multiple of the stride
    ((2, 20, 4), (3, 4, 6), (1,), ((2, 2),), 2),  # DConv: kernel 3, dilation 2
    ((2, 20, 6), (3, 6, 2), (1,), ((2, 2),), 2),  # ... into a bottleneck (fewer output than input channels)
    ((2, 11, 3), (1, 3, 4), (1,), ((0, 0),), 1),  # 1x1
    ((1, 30, 7, 3), (8, 1, 3, 4), (4, 1), ((2, 2), (0, 0)), 1),  # frequency-branch encoder: (8, 1), stride (4, 1)
    ((1, 9, 6, 3), (3, 3, 3, 2), (1, 1), ((1, 1), (1, 1)), 1),  # decoder rewrite: 3x3, padding 1
    ((1, 9, 6, 2), (3, 3, 2, 4), (1, 1), ((1, 1), (1, 1)), 1),  # ... widening (more output than input channels)
]


@pytest.mark.parametrize("impl", ["xla", "matmul"])
@pytest.mark.parametrize("x_shape,k_shape,strides,padding,dilation", CONV_CASES)
def test_conv_and_its_gradients_equal_the_xla_convolution(x_shape, k_shape, strides, padding, dilation, impl):
  x = jax.random.normal(jax.random.key(0), x_shape)
  kernel = jax.random.normal(jax.random.key(1), k_shape)
  spec = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[len(strides)]

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=(dilation,) * len(strides),
                                        dimension_numbers=spec, precision="highest")

  def layer(x, kernel):  # XLA's forward; the gradient XLA's ("xla") or the matmuls' ("matmul")
    return conv_fn(impl)(x, kernel, strides, padding, dilation)

  want, got = reference(x, kernel), layer(x, kernel)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  cotangent = jax.random.normal(jax.random.key(2), want.shape)
  grads = [jax.grad(lambda x, k: jnp.sum(f(x, k) * cotangent), argnums=(0, 1))(x, kernel) for f in (reference, layer)]
  for want_grad, got_grad in zip(*grads):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-5)


def test_conv_refuses_a_stride_that_does_not_divide_the_kernel():
  with pytest.raises(ValueError, match="kernel 3 along spatial axis 0 is not a multiple of its stride 2"):
    conv(jnp.ones((1, 9, 2)), jnp.ones((3, 2, 2)), (2,), ((0, 0),), 1)


def test_model_conv_impl_reaches_every_convolution(toy):
  """`model.conv_impl` reaches every layer: with "xla" no convolution has the custom (matmul) gradient and the
  gradient's program holds XLA's gradient convolutions; with "matmul" its only convolutions are the forwards of
  the custom-gradient convs (their gradients and the transposed convolutions are matmuls)."""
  cfg, params, mix, ctx, t = toy
  convs = {}
  for impl in ("xla", "matmul"):
    variant = cfg.copy_and_resolve_references()
    variant.conv_impl = impl
    model = VisAH(variant)
    convs[impl] = _convs(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, mix, ctx, t))), params)
  assert convs["xla"]["custom"] == 0 and convs["matmul"]["xla"] == 0
  assert convs["xla"]["xla"] > 3 * convs["matmul"]["custom"] > 0

"""Tests for the VisAH latent transformer, its attention layers, embeddings and frame encoder.

PyTorch parity uses small reference modules written here after the public VisAH
`AV_Transformer` (GroupNorm + Conv1d in/out, DETR-style pre-LN context encoder built on
`torch.nn.MultiheadAttention`, latent-diffusion `BasicTransformerBlock`s); weights are copied
from the Flax params with the key mapping documented in `avflow/models/visah/latent.py`.
"""
import math
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn as tnn

from avflow.models.frames import TinyFrameEncoder
from avflow.models.visah.latent import AVLatentTransformer
from avflow.models.visah.presets import model_config
from avflow.nn.attention import GEGLUFeedForward, MultiheadAttention
from avflow.nn.embeddings import sinusoidal_positions, timestep_embedding

C = 64  # audio channels of the tiny config (32 GroupNorm groups of 2)


def tiny_cfg(context_attention="frames"):
  return ml_collections.ConfigDict(dict(
      n_heads=2, d_head=8, depth=2, context_layers=2, context_heads=4, context_ff=24,
      context_dim=12, context_attention=context_attention))


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def random_params(model, *args, seed, scale=0.3):
  """Params with every leaf (norm scales, biases, zero-init proj_out) drawn from N(0, scale^2).

  Shapes come from `jax.eval_shape` and values from numpy, which keeps the tests fast on CPU.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32), shapes)


def inputs(b=2, t=7, n=5, seed=0, cfg=None):
  cfg = cfg or tiny_cfg()
  kx, kc, kt = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kx, (b, t, C)), jax.random.normal(kc, (b, n, cfg.context_dim)),
          jax.random.normal(kt, (b, cfg.n_heads * cfg.d_head)))


# ---------------------------------------------------------------------------------------------
# Flax -> PyTorch key mapping (the table in the `avflow.models.visah.latent` docstring).

def _torch_key(path):
  name = "/".join(path)
  name = re.sub(r"context_encoder_layers_(\d+)", r"context_transformer_encoder/layers/\1", name)
  name = re.sub(r"transformer_blocks_(\d+)", r"transformer_blocks/\1", name)
  name = name.replace("to_out/", "to_out/0/").replace("ff/proj", "ff/net/0/proj")
  name = name.replace("ff/out", "ff/net/2").replace("in_proj_kernel", "in_proj_weight")
  name = re.sub(r"(kernel|scale)$", "weight", name)
  return name.replace("/", ".")


def _torch_value(path, x):
  x = np.asarray(x)
  if path[-1] in ("kernel", "in_proj_kernel"):
    # (in, out) -> (out, in); a 1x1 conv's (1, in, out) -> (out, in, 1).
    return x.transpose(tuple(range(x.ndim))[::-1])
  return x


def to_torch_state_dict(params, in_channels, inner, max_len):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  sd = {}
  for keypath, x in flat:
    path = tuple(k.key for k in keypath)
    sd[_torch_key(path)] = torch.from_numpy(np.array(_torch_value(path, x)))
  sd["pe.pe"] = torch.from_numpy(np.array(sinusoidal_positions(max_len, in_channels)))[None]
  sd["pe_context.pe"] = torch.from_numpy(np.array(sinusoidal_positions(max_len, inner)))[None]
  return sd


# ---------------------------------------------------------------------------------------------
# PyTorch reference modules.

class TorchPositionalEncoding(tnn.Module):

  def __init__(self, d, max_len):
    super().__init__()
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(max_len, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    self.register_buffer("pe", pe[None])


class TorchCrossAttention(tnn.Module):

  def __init__(self, dim, heads, dim_head):
    super().__init__()
    inner = heads * dim_head
    self.heads = heads
    self.to_q = tnn.Linear(dim, inner, bias=False)
    self.to_k = tnn.Linear(dim, inner, bias=False)
    self.to_v = tnn.Linear(dim, inner, bias=False)
    self.to_out = tnn.Sequential(tnn.Linear(inner, dim), tnn.Dropout(0.0))

  def forward(self, x, context=None):
    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    split = lambda z: z.reshape(z.shape[0], z.shape[1], self.heads, -1).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    attn = (q @ k.transpose(-1, -2) * q.shape[-1]**-0.5).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return self.to_out(out)


class TorchGEGLU(tnn.Module):

  def __init__(self, dim, hidden):
    super().__init__()
    self.proj = tnn.Linear(dim, 2 * hidden)

  def forward(self, x):
    value, gate = self.proj(x).chunk(2, dim=-1)
    return value * F.gelu(gate)


class TorchBlock(tnn.Module):

  def __init__(self, dim, heads, dim_head):
    super().__init__()
    self.attn1 = TorchCrossAttention(dim, heads, dim_head)
    self.attn2 = TorchCrossAttention(dim, heads, dim_head)
    self.ff = tnn.Module()
    self.ff.net = tnn.Sequential(TorchGEGLU(dim, 4 * dim), tnn.Dropout(0.0),
                                 tnn.Linear(4 * dim, dim))
    self.norm1, self.norm2, self.norm3 = tnn.LayerNorm(dim), tnn.LayerNorm(dim), tnn.LayerNorm(dim)

  def forward(self, x, context):
    x = self.attn1(self.norm1(x)) + x
    x = self.attn2(self.norm2(x), context) + x
    return self.ff.net(self.norm3(x)) + x


class TorchEncoderLayer(tnn.Module):
  """Pre-LN DETR encoder layer; `batch_first=False` fed (B, N, D) is the public quirk."""

  def __init__(self, dim, heads, ff, batch_first):
    super().__init__()
    self.self_attn = tnn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=batch_first)
    self.linear1, self.linear2 = tnn.Linear(dim, ff), tnn.Linear(ff, dim)
    self.norm1, self.norm2 = tnn.LayerNorm(dim), tnn.LayerNorm(dim)

  def forward(self, src, pos):
    s2 = self.norm1(src)
    q = k = s2 + pos
    src = src + self.self_attn(q, k, value=s2)[0]
    return src + self.linear2(F.gelu(self.linear1(self.norm2(src))))


class TorchAVTransformer(tnn.Module):
  """Channels-first reference: `x (B, C, T)`, `context (B, N, Dc)`, `time_token (B, inner)`."""

  def __init__(self, cfg, in_channels, max_len):
    super().__init__()
    inner = cfg.n_heads * cfg.d_head
    batch_first = cfg.context_attention == "frames"
    self.norm = tnn.GroupNorm(math.gcd(32, in_channels), in_channels, eps=1e-6)
    self.proj_in = tnn.Conv1d(in_channels, inner, 1)
    self.context_proj = tnn.Linear(cfg.context_dim, inner)
    self.context_transformer_encoder = tnn.Module()
    self.context_transformer_encoder.layers = tnn.ModuleList([
        TorchEncoderLayer(inner, cfg.context_heads, cfg.context_ff, batch_first)
        for _ in range(cfg.context_layers)])
    self.transformer_blocks = tnn.ModuleList([
        TorchBlock(inner, cfg.n_heads, cfg.d_head) for _ in range(cfg.depth)])
    self.proj_out = tnn.Conv1d(inner, in_channels, 1)
    self.pe = TorchPositionalEncoding(in_channels, max_len)
    self.pe_context = TorchPositionalEncoding(inner, max_len)

  def forward(self, x, context, time_token=None):
    x_in = x
    x = self.proj_in(self.norm(x)).transpose(1, 2)
    c = self.context_proj(context)
    pos = self.pe_context.pe[:, :c.shape[1]]
    for layer in self.context_transformer_encoder.layers:
      c = layer(c, pos)
    if time_token is not None:
      c = torch.cat([c, time_token[:, None]], dim=1)
    for block in self.transformer_blocks:
      x = block(x, c)
    return self.proj_out(x.transpose(1, 2)) + x_in


def torch_reference(cfg, params, max_len=16):
  ref = TorchAVTransformer(cfg, C, max_len)
  ref.load_state_dict(to_torch_state_dict(params, C, cfg.n_heads * cfg.d_head, max_len),
                      strict=True)
  return ref.eval()


def run_torch(ref, x, context, time_token=None):
  t = lambda a: torch.from_numpy(np.array(a))
  with torch.no_grad():
    out = ref(t(x).transpose(1, 2), t(context), None if time_token is None else t(time_token))
  return out.transpose(1, 2).numpy()


# ---------------------------------------------------------------------------------------------
# Parameter counts and naming.

def test_paper_param_counts():
  cfg = model_config("paper").latent
  model = AVLatentTransformer(cfg, 768)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 768)),
                          jnp.zeros((1, 3, 768)), jnp.zeros((1, 512)))["params"]
  assert n_params(shapes) == 39_000_832
  group = lambda prefix: sum(n_params(v) for k, v in shapes.items() if k.startswith(prefix))
  assert group("transformer_blocks_") == 31_509_504
  assert group("context_encoder_layers_") == 6_308_352
  assert n_params(shapes["context_encoder_layers_0"]) == 2_102_784
  assert n_params(shapes["proj_in"]) == 393_728
  assert n_params(shapes["context_proj"]) == 393_728
  assert n_params(shapes["proj_out"]) == 393_984
  assert n_params(shapes["norm"]) == 1_536


def test_paper_torch_key_layout():
  """The mapped Flax tree has exactly the checkpoint's 166 `latent_transformer` keys."""
  cfg = model_config("paper").latent
  shapes = jax.eval_shape(AVLatentTransformer(cfg, 768).init, jax.random.key(0),
                          jnp.zeros((1, 4, 768)), jnp.zeros((1, 3, 768)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  mapped = {}
  for keypath, x in flat:
    path = tuple(k.key for k in keypath)
    mapped[_torch_key(path)] = tuple(x.shape[::-1] if path[-1].endswith("kernel") else x.shape)
  mapped["pe.pe"], mapped["pe_context.pe"] = (1, 5000, 768), (1, 5000, 512)
  with torch.device("meta"):
    ref = TorchAVTransformer(cfg, 768, 5000)
  assert mapped == {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  assert len(mapped) == 166
  assert mapped["proj_in.weight"] == (512, 768, 1)
  assert mapped["proj_out.weight"] == (768, 512, 1)
  assert mapped["context_transformer_encoder.layers.2.self_attn.in_proj_weight"] == (1536, 512)
  assert mapped["transformer_blocks.5.ff.net.0.proj.weight"] == (4096, 512)
  assert mapped["transformer_blocks.5.ff.net.2.weight"] == (512, 2048)
  assert mapped["transformer_blocks.0.attn2.to_out.0.bias"] == (512,)


# ---------------------------------------------------------------------------------------------
# Behaviour.

def test_identity_at_init():
  x, context, time_token = inputs()
  model = AVLatentTransformer(tiny_cfg(), C)
  params = jax.jit(model.init)(jax.random.key(1), x, context, time_token)
  assert not np.any(np.asarray(params["params"]["proj_out"]["kernel"]))
  np.testing.assert_array_equal(model.apply(params, x, context), x)
  np.testing.assert_array_equal(model.apply(params, x, context, time_token), x)


def test_time_token_changes_output():
  x, context, time_token = inputs()
  model = AVLatentTransformer(tiny_cfg(), C)
  params = {"params": random_params(model, x, context, seed=2)}
  base = model.apply(params, x, context)
  with_t = model.apply(params, x, context, time_token)
  other_t = model.apply(params, x, context, -time_token)
  assert np.max(np.abs(with_t - base)) > 1e-3
  assert np.max(np.abs(with_t - other_t)) > 1e-3
  with pytest.raises(ValueError, match="time_token"):
    model.apply(params, x, context, time_token[:, :3])


def test_non_multiple_of_32_channels_use_gcd_groups():
  cfg = tiny_cfg()
  model = AVLatentTransformer(cfg, 48)
  x = jnp.ones((1, 3, 48))
  params = jax.jit(model.init)(jax.random.key(0), x, jnp.ones((1, 2, cfg.context_dim)))
  np.testing.assert_array_equal(model.apply(params, x, jnp.ones((1, 2, cfg.context_dim))), x)


def test_unknown_context_attention_raises():
  x, context, _ = inputs()
  with pytest.raises(ValueError, match="context_attention"):
    AVLatentTransformer(tiny_cfg("bogus"), C).init(jax.random.key(0), x, context)


@pytest.mark.parametrize("mode", ["frames", "legacy_batch_axis"])
@pytest.mark.parametrize("with_time", [False, True])
def test_torch_parity(mode, with_time):
  cfg = tiny_cfg(mode)
  x, context, time_token = inputs(b=3, t=7, n=5)
  time_token = time_token if with_time else None
  model = AVLatentTransformer(cfg, C)
  params = random_params(model, x, context, seed=3)
  out = np.asarray(model.apply({"params": params}, x, context, time_token))
  ref = run_torch(torch_reference(cfg, params), x, context, time_token)
  assert np.max(np.abs(out - ref)) <= 1e-5
  assert np.max(np.abs(out - np.asarray(x))) > 1e-2  # the check is not vacuous


def test_legacy_batch_of_one_is_per_frame():
  cfg = tiny_cfg("legacy_batch_axis")
  _, context, _ = inputs(b=1, n=5)
  model = AVLatentTransformer(cfg, C)
  params = {"params": random_params(model, jnp.zeros((1, 2, C)), context, seed=4)}
  encode = lambda c: model.apply(params, c, method=AVLatentTransformer.encode_context)
  whole = encode(context)
  per_frame = jnp.concatenate([encode(context[:, i:i + 1]) for i in range(5)], axis=1)
  np.testing.assert_allclose(whole, per_frame, atol=1e-6, rtol=0)
  # In frames mode the same weights mix frames, so the two differ.
  frames = AVLatentTransformer(tiny_cfg("frames"), C)
  mixed = frames.apply(params, context, method=AVLatentTransformer.encode_context)
  assert np.max(np.abs(mixed - whole)) > 1e-3


@pytest.mark.parametrize("mode", ["frames", "legacy_batch_axis"])
def test_batch_composition(mode):
  cfg = tiny_cfg(mode)
  x, context, time_token = inputs(b=3)
  model = AVLatentTransformer(cfg, C)
  params = {"params": random_params(model, x, context, seed=5)}
  batched = model.apply(params, x, context, time_token)[0]
  alone = model.apply(params, x[:1], context[:1], time_token[:1])[0]
  diff = float(np.max(np.abs(batched - alone)))
  if mode == "frames":
    assert diff <= 1e-5
  else:
    assert diff > 1e-3


# ---------------------------------------------------------------------------------------------
# Layers, embeddings and the frame encoder.

def test_multihead_attention_matches_torch():
  q, k, v = (jax.random.normal(jax.random.key(i), (2, n, 16)) for i, n in ((0, 3), (1, 5), (2, 5)))
  mha = MultiheadAttention(num_heads=4)
  params = random_params(mha, q, k, v, seed=6)
  out = mha.apply({"params": params}, q, k, v)
  ref = tnn.MultiheadAttention(16, 4, batch_first=True)
  ref.load_state_dict({
      "in_proj_weight": torch.from_numpy(np.array(params["in_proj_kernel"]).T.copy()),
      "in_proj_bias": torch.from_numpy(np.array(params["in_proj_bias"])),
      "out_proj.weight": torch.from_numpy(np.array(params["out_proj"]["kernel"]).T.copy()),
      "out_proj.bias": torch.from_numpy(np.array(params["out_proj"]["bias"]))})
  t = lambda a: torch.from_numpy(np.array(a))
  with torch.no_grad():
    expected = ref(t(q), t(k), t(v))[0].numpy()
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_geglu_matches_torch():
  x = jax.random.normal(jax.random.key(0), (2, 3, 8))
  ff = GEGLUFeedForward(hidden=12)
  params = random_params(ff, x, seed=7)
  ref = tnn.Sequential(TorchGEGLU(8, 12), tnn.Dropout(0.0), tnn.Linear(12, 8))
  ref.load_state_dict({
      "0.proj.weight": torch.from_numpy(np.array(params["proj"]["kernel"]).T.copy()),
      "0.proj.bias": torch.from_numpy(np.array(params["proj"]["bias"])),
      "2.weight": torch.from_numpy(np.array(params["out"]["kernel"]).T.copy()),
      "2.bias": torch.from_numpy(np.array(params["out"]["bias"]))})
  with torch.no_grad():
    expected = ref(torch.from_numpy(np.array(x))).numpy()
  np.testing.assert_allclose(ff.apply({"params": params}, x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("d", [16, 7])
def test_sinusoidal_positions_match_visah_buffer(d):
  table = np.asarray(sinusoidal_positions(50, d))
  assert table.shape == (50, d)
  if d % 2 == 0:
    np.testing.assert_allclose(table, TorchPositionalEncoding(d, 50).pe[0].numpy(), atol=1e-6)
  np.testing.assert_array_equal(table[0, 0::2], 0.0)
  np.testing.assert_array_equal(table[0, 1::2], 1.0)


def test_timestep_embedding():
  t = jnp.array([0.0, 0.25, 1.0])
  emb = timestep_embedding(t, 8)
  assert emb.shape == (3, 8)
  np.testing.assert_array_equal(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])
  np.testing.assert_allclose(emb[1, [0, 4]], [np.cos(250.0), np.sin(250.0)], atol=1e-5)
  np.testing.assert_allclose(timestep_embedding(1000 * t, 8, scale=1.0), emb, atol=1e-5)
  odd = timestep_embedding(t, 9)
  assert odd.shape == (3, 9)
  np.testing.assert_array_equal(odd[:, -1], 0.0)
  np.testing.assert_array_equal(odd[:, :8], emb)


def test_tiny_frame_encoder():
  frames = jax.random.randint(jax.random.key(0), (2, 3, 16, 16, 3), 0, 256).astype(jnp.uint8)
  enc = TinyFrameEncoder(context_dim=12)
  params = {"params": random_params(enc, frames, seed=8)}
  tokens = enc.apply(params, frames)
  assert tokens.shape == (2, 3, 12)
  np.testing.assert_allclose(enc.apply(params, frames.astype(jnp.float32) / 255.0), tokens,
                             atol=1e-6)
  # One token per frame: changing frame 1 of clip 0 changes only that token.
  edited = frames.at[0, 1].set(0)
  delta = np.abs(np.asarray(enc.apply(params, edited) - tokens)).max(axis=-1)
  assert delta[0, 1] > 0 and np.all(np.delete(delta.ravel(), 1) == 0)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(enc.apply(p, frames)**2)))(params)
  assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))

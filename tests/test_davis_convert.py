"""DAVIS checkpoint conversion (`avflow/interop/davis_convert.py`), Flax <-> PyTorch parity of the separator and
`python -m avflow import` of a public DAVIS-Flow checkpoint.

The PyTorch side is `avflow/interop/davis_pytorch.py`; parity runs the Flax `Separator` on weights converted from
random PyTorch ones. The public layout is `tests/data/davis_state_dict_shapes.json` (the two files the public code
saves, CLIP left out of the frame file).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from avflow.interop import davis_convert as dc
from avflow.interop import davis_pytorch as dp
from avflow.interop.hf_import import CheckpointMismatchError
from avflow.models.davis import presets
from avflow.models.davis.separator import Separator, abstract_params
from avflow.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_JSON = os.path.join(ROOT, "tests", "data", "davis_state_dict_shapes.json")
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _small(fim_time=True):
  """3 levels of 8/8/16 -> 32 channels on 32 x 8 inputs, both attentions at every level, stored features."""
  cfg = presets.model_config("toy")
  cfg.update(dict(dim=8, dim_mults=(1, 2, 4), resnet_groups=4, attention_levels=None, freq_bins=32,
                  fim_time=fim_time))
  cfg.linear_attention.update(dict(heads=2, dim_head=4))
  cfg.attention.update(dict(heads=2, dim_head=4))
  cfg.time_attention.update(dict(heads=2, qk_dim=16))
  cfg.conditioning.kind = "features"
  cfg.temporal.update(dict(d_model=16, heads=2, encoder_layers=2, decoder_layers=1, ff_dim=32))
  return cfg


def _torch_model(cfg, seed=0):
  """The PyTorch separator with random values in its norms' gains and offsets and PReLU slopes as well."""
  torch.manual_seed(seed)
  model = dp.DavisSeparator(cfg).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith((".g", ".gamma")) or ("norm" in name and name.endswith(".weight")):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      elif name.endswith(".beta") or ("norm" in name and name.endswith(".bias")):
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
      elif p.shape == (1,):  # PReLU slopes
        p.copy_(torch.rand(p.shape, generator=g))
  return model


def _random_params(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), abstract_params(cfg))


def _assert_trees_equal(a, b):
  fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def _public_files(model, seed=0):
  """`model`'s state dict as the public code saves it: the U-Net with the wrapper's own (unused) time MLP, built as
  the U-Net's, and the transformer with (a stand-in for) the CLIP tower."""
  g = torch.Generator().manual_seed(seed)
  state = model.state_dict()
  unet = {k: v for k, v in state.items() if k.startswith(dc.UNET_PREFIX)}
  unet.update({dc.WRAPPER_TIME_MLP + k: torch.randn(v.shape, generator=g)
               for k, v in model.net_unet.time_mlp.state_dict().items()})
  frame = {"model.visual.proj": torch.randn(4, 3, generator=g), "model.logit_scale": torch.ones(())}
  frame.update({k: v for k, v in state.items() if k.startswith(dc.TRANSFORMER_PREFIX)})
  return unet, frame


@pytest.mark.parametrize("fim_time", [True, False])
def test_flax_separator_matches_pytorch(fim_time):
  """Batch 2, 32 x 8 inputs, 3 frames; every block type at every level. Max abs differences seen (float32,
  outputs up to ~6): 5.5e-6 (fim_time=True), 3.8e-6 (False); visual vector 3.6e-7."""
  cfg = _small(fim_time)
  model = _torch_model(cfg)
  g = torch.Generator().manual_seed(7)
  x_t, mixture = torch.randn(2, 1, 32, 8, generator=g), torch.rand(2, 1, 32, 8, generator=g)
  t, features = torch.tensor([0.3, 0.85]), torch.randn(2, 3, 16, generator=g)
  with torch.no_grad():
    visual, expected = model.encode(features).numpy(), model(x_t, t, features, mixture).numpy()
  params = dc.torch_to_flax(model.state_dict(), cfg)
  channels_last = lambda x: jnp.asarray(x.numpy().transpose(0, 2, 3, 1))

  @jax.jit
  def apply(params, x_t, t, features, mixture):
    variables = {"params": params}
    context = Separator(cfg).apply(variables, {"context": features}, method=Separator.encode)
    return context, Separator(cfg).apply(variables, x_t, t, context, mixture, method=Separator.velocity)

  context, out = apply(params, channels_last(x_t), jnp.asarray(t.numpy()), jnp.asarray(features.numpy()),
                       channels_last(mixture))
  np.testing.assert_allclose(np.asarray(context), visual, rtol=TOL, atol=TOL)
  np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), expected, rtol=TOL, atol=TOL)
  assert np.abs(expected).max() > 1


def test_round_trips_are_bitwise():
  """Flax -> PyTorch (loads strictly into `DavisSeparator`) -> Flax, and PyTorch -> Flax -> PyTorch, exactly."""
  cfg = _small()
  params = _random_params(cfg)
  state = dc.flax_to_torch(params, cfg)
  model = dp.DavisSeparator(cfg)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  assert list(state) == list(model.state_dict())
  _assert_trees_equal(dc.torch_to_flax(model.state_dict(), cfg), params)
  again = dc.flax_to_torch(dc.torch_to_flax(model.state_dict(), cfg), cfg)
  for k, v in model.state_dict().items():
    assert np.array_equal(again[k], v.numpy()), k
  # A frame encoder's parameters are not in the layout and are left out.
  with_encoder = {**params, "visual": {**params["visual"], "frame_encoder": {"w": np.zeros(3, np.float32)}}}
  assert dc.flax_to_torch(with_encoder, cfg).keys() == state.keys()


def test_paper_public_layout_maps_onto_the_flax_tree():
  """Every tensor of the public files (zeros of the recorded shapes) has its Flax leaf and every Flax leaf but CLIP's
  its tensor; with fim_time=False the FIM's time MLPs are the only ones left out. The network's tensors load into
  the PyTorch separator with strict=True."""
  with open(SHAPES_JSON) as f:
    public = json.load(f)
  state = {k: np.broadcast_to(np.float32(0), shape) for part in public.values() for k, shape in part.items()}
  state["model.visual.proj"] = np.zeros((768, 512), np.float32)  # a tensor of the CLIP tower: not read
  for fim_time in (True, False):
    cfg = presets.model_config("paper")
    cfg.fim_time = fim_time
    params = traverse_util.flatten_dict(dc.torch_to_flax(state, cfg))
    model_tree = traverse_util.flatten_dict(abstract_params(cfg))
    assert {p for p in model_tree if p[:2] != ("visual", "clip")} == set(params)
    assert all(params[p].shape == model_tree[p].shape for p in params)
    network = dc.network_state_dict({k: torch.empty(v.shape, device="meta") for k, v in state.items()}, cfg)
    with torch.device("meta"):
      dp.DavisSeparator(cfg).load_state_dict(network, strict=True, assign=True)
    left_out = set(state) - set(network)
    fim_mlps = {k for k in public["unet"] if k.startswith(("net_unet.mid_block", "net_unet.mid_attn"))
                and ".mlp.1." in k}
    assert left_out == {"model.visual.proj", *(k for k in public["unet"] if k.startswith("time_mlp."))} | (
        set() if fim_time else fim_mlps)
    assert len(fim_mlps) == 6


def test_strict_conversion_names_every_problem_at_once():
  cfg = _small()
  unet, frame = _public_files(_torch_model(cfg))
  state = {**unet, **frame}
  del state["net_unet.downs.1.2.fn.attn_conv_K_1.2.gamma"]
  state["net_unet.downs.0.0.extra"] = torch.zeros(3)
  state["net_unet.mid_attn.fn.norm.g"] = torch.zeros(1, 7, 1, 1)
  state["time_mlp.3.bias"] = torch.zeros(5)  # an unused tensor is still shape-checked
  with pytest.raises(CheckpointMismatchError) as info:
    dc.torch_to_flax(state, cfg)
  message = str(info.value)
  for expected in ("DAVIS separator", "1 missing", "net_unet.downs.1.2.fn.attn_conv_K_1.2.gamma", "1 unexpected",
                   "net_unet.downs.0.0.extra", "2 mis-shaped", "net_unet.mid_attn.fn.norm.g: (1, 7, 1, 1) != "
                   "(1, 32, 1, 1)", "time_mlp.3.bias: (5,) != (32,)"):
    assert expected in message
  with pytest.raises(CheckpointMismatchError, match=r"(?s)no temporal_transformer\. tensors.*frame_<suffix>\.pth"):
    dc.torch_to_flax(unet, cfg)
  params = _random_params(cfg)
  params["unet"]["mid_block2"]["block1"]["proj"]["kernel"] = np.zeros((3, 3, 32, 2), np.float32)
  params["unet"]["mid_block2"]["extra"] = {"bias": np.zeros(2, np.float32)}
  del params["visual"]["temporal_transformer"]["decoder"]["norm"]
  with pytest.raises(CheckpointMismatchError) as info:
    dc.flax_to_torch(params, cfg)
  message = str(info.value)
  for expected in ("2 missing", "visual/temporal_transformer/decoder/norm/scale", "1 unexpected",
                   "unet/mid_block2/extra/bias", "unet/mid_block2/block1/proj/kernel: (3, 3, 32, 2) != "
                   "(3, 3, 32, 32)"):
    assert expected in message


def test_public_pair_is_read_from_either_file_and_imported_as_a_run(tmp_path):
  """The public files of a toy-scale model written by the PyTorch separator: `read_public` merges the pair from
  either name; `python -m avflow import` writes the run of the public forward (fim_time=False)."""
  model = _torch_model(presets.model_config("toy"))
  unet, frame = _public_files(model)
  torch.save(unet, tmp_path / "unet_best.pth")
  torch.save(frame, tmp_path / "frame_best.pth")
  torch.save(unet, tmp_path / "unet_latest.pth")  # no frame_latest.pth beside it
  for name in ("unet_best.pth", "frame_best.pth"):
    state, files = dc.read_public(str(tmp_path / name))
    assert sorted(os.path.basename(f) for f in files) == ["frame_best.pth", "unet_best.pth"]
    assert state.keys() == {**unet, **frame}.keys()
  assert dc.read_public(str(tmp_path / "unet_latest.pth"))[1] == [str(tmp_path / "unet_latest.pth")]

  run = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "avflow", "import", f"--ckpt={tmp_path / 'unet_best.pth'}",
                         f"--out={run}", "--config=configs/davis_flow.py:toy"], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "frame_best.pth" in proc.stdout and "model.fim_time = False" in proc.stdout
  assert "visual/frame_encoder/" in proc.stdout  # the toy frame encoder is not in the layout: it starts fresh
  config = checkpoint.load_config(str(run))
  assert config.task == "separate" and not config.model.fim_time
  imported = checkpoint.load_params(str(run))
  public_forward = presets.model_config("toy")
  public_forward.fim_time = False
  _assert_trees_equal(jax.tree.map(np.asarray, imported), dc.torch_to_flax({**unet, **frame}, public_forward))
  assert set(imported) == {"unet", "visual"} and set(imported["visual"]) == {"temporal_transformer"}

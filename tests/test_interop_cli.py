"""`python -m avflow import` / `export` (avflow/commands/import_ckpt.py, export.py) and the PyTorch VisAH-FM
highlighter (`visah_pytorch.VisAHFMHighlighter`) on exported weights against the Flax predict function.

The CLI tests go file -> `import` -> run directory -> `export` -> file and check both directions bitwise.
"""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors import safe_open

import visah
import visah_fm
from avflow.interop import visah_pytorch as tv
from avflow.interop import visah_convert as vt
from avflow.interop.hf_import import load_state_dict
from avflow.models.visah.highlighter import Highlighter
from avflow.train import checkpoint
from avflow.train.loop import merge_params
from avflow.train.state import abstract_params
from avflow.train.step import make_predict_fn
from conftest import cli_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC_KEYS = 564  # the released VisAH Lightning checkpoint
REL_TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*args, fails=False):
  proc = subprocess.run([sys.executable, "-m", "avflow", *args], cwd=ROOT, capture_output=True, text=True)
  assert (proc.returncode != 0) == fails, proc.stderr[-3000:]
  return proc


def _torch_network(model_cfg, seed=0):
  """A PyTorch network with random values in its zero-initialised parts too, so every path counts."""
  torch.manual_seed(seed)
  model = tv.build_visah(model_cfg.to_dict()).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith("latent_transformer.proj_out"):
        p.copy_(torch.randn(p.shape, generator=g))
      elif name.startswith("time_embed"):
        p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1]**0.5)
      elif name.endswith(".scale"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
      elif name.endswith("self_attn.out_proj.weight"):  # so that the attention mode visibly matters
        p.mul_(10.0)
  return model


def test_public_checkpoint_import_export_round_trip_at_paper_scale(tmp_path):
  """The 564-key Lightning checkpoint -> run (legacy attention, params under visah/) -> the same file."""
  config = visah.get_config("paper")
  public = tv.lightning_state_dict(tv.build_visah(config.model.to_dict()))
  torch.save({"state_dict": public, "epoch": 199}, tmp_path / "VisAH.ckpt")
  run = str(tmp_path / "run")
  out = _cli("import", f"--ckpt={tmp_path / 'VisAH.ckpt'}", f"--out={run}").stdout
  assert "legacy_batch_axis" in out and "batch axis" in out
  run_config = checkpoint.load_config(run)
  assert run_config.model.latent.context_attention == "legacy_batch_axis"
  params = checkpoint.load_params(run)
  conv = ("model", "encoder_0", "conv", "kernel")
  assert np.array_equal(params["visah"]["model"]["encoder_0"]["conv"]["kernel"],
                        vt.leaf_to_flax(conv, public["model.encoder.0.conv.weight"].numpy()))

  # VisAH-FM starts from it: the backbone is loaded, the time embedding stays fresh (stored-feature conditioning
  # keeps the tree small; a conditioner subtree would stay fresh the same way).
  fm = visah_fm.get_config("paper")
  fm.model.conditioning.kind = "features"
  fresh = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), abstract_params(Highlighter(fm.model), fm))
  merged = traverse_util.flatten_dict(merge_params(fresh, params)["visah"])
  for path, value in traverse_util.flatten_dict(params["visah"]).items():
    assert np.array_equal(merged[path], value), path
  assert np.all(np.asarray(merged["time_embed_0", "kernel"]) == 1)

  path = str(tmp_path / "back.ckpt")
  _cli("export", f"--workdir={run}", "--format=visah", f"--out={path}")
  back = torch.load(path, weights_only=True)["state_dict"]
  assert len(back) == PUBLIC_KEYS and list(back) == list(public)
  for k in public:  # the positional tables included
    assert back[k].dtype == public[k].dtype and torch.equal(back[k], public[k]), k
  tv.LightningVisAH(run_config.model.to_dict()).load_state_dict(back, strict=True)


def test_random_init_torch_export_with_its_conditioner_round_trips(tmp_path):
  """The toy VisAH (2 levels on 32 bins) with its frame encoder: random init -> `.safetensors` (into a missing
  folder) -> run -> the same tensors; neither command overwrites its input."""
  path = str(tmp_path / "new" / "folder" / "toy.safetensors")
  out = _cli("export", "--config=configs/visah.py:toy", "--config.model.depth=2", "--config.model.nfft=64",
             "--random_init", "--format=torch", f"--out={path}").stdout
  assert "frame_encoder.*" in out and "context tokens" in out
  network, exported, conditioner = tv.load_export(path)
  assert exported["model"]["time_conditioning"] == "none" and network.time_conditioning == "none"
  assert conditioner and all(k.startswith("frame_encoder.") for k in conditioner)

  run = str(tmp_path / "run")
  _cli("import", f"--ckpt={path}", f"--out={run}")
  params = checkpoint.load_params(run)
  assert set(params) == {"visah", "frame_encoder"}
  assert sorted(os.listdir(tmp_path)) == ["new", "run"] and sorted(os.listdir(run)) == ["checkpoints", "config.json"]
  assert "is the input" in cli_error(_cli("import", f"--ckpt={path}", f"--out={path}", fails=True), "import")
  into_checkpoints = os.path.join(run, "checkpoints", "0", "x.safetensors")
  assert "lies inside the input" in cli_error(
      _cli("export", f"--workdir={run}", "--format=torch", f"--out={into_checkpoints}", fails=True), "export")
  missing_run = str(tmp_path / "no_run")  # the output is checked before the run is read
  assert "must end in .safetensors" in cli_error(
      _cli("export", f"--workdir={missing_run}", "--format=torch", f"--out={tmp_path / 'x.ckpt'}", fails=True),
      "export")
  assert sorted(os.listdir(tmp_path)) == ["new", "run"] and not os.path.exists(into_checkpoints)
  with safe_open(path, framework="np") as f:
    stored = {k: f.get_tensor(k) for k in f.keys()}
  again = vt.highlighter_to_torch(params, checkpoint.load_config(run).model)
  assert again.keys() == stored.keys()
  for k in stored:
    assert again[k].dtype == stored[k].dtype and np.array_equal(again[k], stored[k]), k


def test_unreadable_checkpoints_are_named_with_a_reason(tmp_path):
  torch.save({"w": torch.ones(2)}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
  assert set(load_state_dict(str(tmp_path / "old.pt"))) == {"w"}  # a pickle from before torch 1.6 still loads
  for name, reason in (("bad.ckpt", "is not a PyTorch checkpoint that can be read (invalid data)"),
                       ("bad.safetensors", "is not a safetensors file that can be read")):
    (tmp_path / name).write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / name} {reason}")):
      load_state_dict(str(tmp_path / name))


def test_import_reports_every_mismatch_at_once(tmp_path):
  state = tv.lightning_state_dict(tv.build_visah(visah.get_config("toy").model.to_dict()))
  del state["model.encoder.0.conv.weight"]
  state["model.encoder.0.extra"] = torch.zeros(3)
  state["model.decoder.1.conv_tr.weight"] = state["model.decoder.1.conv_tr.weight"][..., 0]
  torch.save({"state_dict": state}, tmp_path / "bad.ckpt")
  run = tmp_path / "run"
  err = _cli("import", f"--ckpt={tmp_path / 'bad.ckpt'}", f"--out={run}", "--config=configs/visah.py:toy",
             fails=True).stderr
  report = err[err.index("avflow import:"):]
  for expected in ("1 missing", "encoder.0.conv.weight", "1 unexpected", "encoder.0.extra", "1 mis-shaped",
                   "decoder.1.conv_tr.weight"):
    assert expected in report
  assert not run.exists()


@pytest.mark.parametrize("scale", ["toy", "paper"])
def test_pytorch_highlighter_on_exported_weights_matches_flax(scale, tmp_path):
  """VisAH-FM on stored features (both sides take the same context tokens): 1-s clips, batch 2, 3 tokens, 4 Euler
  steps, both context-attention modes, on a file of the `export --format=torch` writer. The toy model also windows
  its BLSTM and adds the time to every encoder layer; the paper one has the public widths at 44.1 kHz."""
  config = visah_fm.get_config(scale)
  config.model.conditioning.kind = "features"
  config.data.clip_seconds = 1.0
  if scale == "toy":
    config.model.lstm_max_steps = 20
    config.model.time_conditioning = "latent_token+encoder"
  params = {"visah": vt.torch_to_flax(_torch_network(config.model).state_dict(), config.model)}
  path = str(tmp_path / "model.safetensors")
  vt.save_torch_export(path, params, config)

  network, exported, conditioner = tv.load_export(path)
  assert conditioner == {} and exported["model"]["time_conditioning"] == config.model.time_conditioning
  rng = np.random.default_rng(0)
  x0 = (0.1 * rng.standard_normal((2, config.data.sample_rate, 1))).astype(np.float32)
  context = rng.standard_normal((2, 3, config.model.latent.context_dim)).astype(np.float32)
  outputs = {}
  for mode in tv.CONTEXT_ATTENTION_MODES:
    exported["model"]["latent"]["context_attention"] = mode
    with torch.device("meta"):
      model = tv.build_visah(exported["model"])
    model.load_state_dict(network.state_dict(), assign=True)
    highlighter = tv.VisAHFMHighlighter(model.eval(), exported["inference"]["num_steps"],
                                        exported["model"]["warm_start"])
    with torch.no_grad():
      expected = highlighter(torch.from_numpy(x0.transpose(0, 2, 1)), torch.from_numpy(context)).numpy()
    config.model.latent.context_attention = mode
    predict = jax.jit(make_predict_fn(Highlighter(config.model), config))
    final, trajectory = predict(params, {"x0": jnp.asarray(x0), "context": jnp.asarray(context)})
    assert trajectory.states.shape[0] == 5  # x0 and 4 steps
    actual = np.asarray(final).transpose(0, 2, 1)
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= REL_TOL, f"{mode}: max error {err:.2e} relative to the largest value"
    outputs[mode] = expected
  change = np.abs(outputs["frames"] - outputs["legacy_batch_axis"]).max() / np.abs(outputs["frames"]).max()
  assert change > 10 * REL_TOL  # the two modes are different functions here

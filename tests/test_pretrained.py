"""Pretrained CLIP / CLAP weights in a run: imported once at init, frozen, carried by the checkpoint."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avflow.interop import hf_import
from avflow.models import clap, clip
from avflow.train import checkpoint, pretrained
from avflow.train.loop import train
from conftest import tiny
from test_clap import _hf_config as clap_hf_config
from test_clip import _hf_config as clip_hf_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _off_init(model):
  """Moves every parameter (LayerNorms and biases included) off its initial value."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _clip_model():
  """A full transformers `CLIPModel` (text tower included) whose vision tower has the tiny CLIP's shapes."""
  cfg = clip.clip_config("tiny")
  vision = {k: v for k, v in clip_hf_config(cfg).to_dict().items()
            if k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                     "patch_size")}
  text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
              max_position_embeddings=8)
  return _off_init(transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                                  projection_dim=cfg.proj_dim)))


def _clap_tower(**overrides):
  """The tiny CLAP audio tower (`ClapAudioModelWithProjection`) with random BatchNorm statistics."""
  model = _off_init(transformers.ClapAudioModelWithProjection(clap_hf_config(clap.clap_config("tiny", **overrides))))
  bn = model.audio_model.audio_encoder.batch_norm
  with torch.no_grad():
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
  return model


def _bits(x) -> np.ndarray:
  return np.ascontiguousarray(x).view(np.uint32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  """CLIP as a `save_pretrained` folder of the full model, CLAP as a `.safetensors` of the audio tower."""
  from safetensors.torch import save_file
  root = tmp_path_factory.mktemp("weights")
  torch.manual_seed(0)
  clip_model, clap_model = _clip_model(), _clap_tower()
  clip_model.save_pretrained(str(root / "clip"))
  save_file({k: v.contiguous() for k, v in clap_model.state_dict().items()}, str(root / "clap.safetensors"))
  return dict(clip=str(root / "clip"), clap=str(root / "clap.safetensors"), models=(clip_model, clap_model))


def _config(clip_weights="", clap_weights="", **fields):
  import visah_fm
  config = tiny(visah_fm.get_config("toy_va"), encoders=True)
  # Three steps: the first has lr 0 (warm-up), the second moves only the zero-initialized latent output layer.
  config.update(total_steps=3, eval_every=3, checkpoint_every=3, **fields)
  config.model.conditioning.update(clip_weights=clip_weights, clap_weights=clap_weights, random_encoders=False)
  return config


def test_a_run_starts_from_the_weights_and_its_checkpoint_carries_them(weights, tmp_path):
  """The paper's V+A conditioning (`toy_va`, the toy default: CLIP + CLAP on x0 + the adapter) through train and
  eval, its encoders read from files and frozen."""
  import visah_fm
  assert visah_fm.get_config("toy").to_json() == visah_fm.get_config("toy_va").to_json()
  run = str(tmp_path / "run")
  config = _config(weights["clip"], weights["clap"])
  train(config, run)
  params = checkpoint.load_params(run)
  with open(os.path.join(run, "eval.json")) as f:
    assert np.isfinite(json.load(f)["prediction"]["ldif"])

  # The frozen encoders in the checkpoint are the saved tensors, bit for bit (the adapter trains).
  clip_saved, clip_files = hf_import.load_pretrained(weights["clip"])
  clap_saved, clap_files = hf_import.load_pretrained(weights["clap"])
  counts = {}
  for name, saved, other in (("clip", clip_saved, hf_import.CLIP_OTHER_TOWER),
                             ("clap", clap_saved, hf_import.CLAP_OTHER_TOWER)):
    stored = hf_import.export_state_dict({k: v for k, v in params[name].items() if k != "adapter"})
    expected = {k for k in saved if not k.startswith(other) and k.rsplit(".", 1)[-1] not in hf_import.DERIVED_BUFFERS}
    assert set(stored) == expected, name
    counts[name] = len(expected)
    for key, value in stored.items():
      np.testing.assert_array_equal(_bits(value), _bits(saved[key]), err_msg=key)
  lambdas = [v for k, v in traverse_util.flatten_dict(params, sep="/").items() if k.endswith("lambda_e")]
  assert lambdas and all(float(v) != 0.0 for v in lambdas)  # λ_E leaves its zero init

  with open(os.path.join(run, checkpoint.CONFIG_FILE)) as f:
    record = json.load(f)[checkpoint.PRETRAINED_KEY]
  assert record["clip"]["files"] == [os.path.join(weights["clip"], "model.safetensors")] == clip_files
  assert record["clap"]["files"] == [weights["clap"]] == clap_files
  assert {name: r["tensors"] for name, r in record.items()} == counts
  assert checkpoint.load_pretrained_record(run) == record
  assert checkpoint.PRETRAINED_KEY not in checkpoint.load_config(run)

  # --resume restores the encoders from the checkpoint: the weights are not read again, the record stays.
  moved = _config(str(tmp_path / "moved"), str(tmp_path / "moved.safetensors"))
  assert int(train(moved, run, resume=True).step) == 3
  assert checkpoint.load_pretrained_record(run) == record

  # The in-memory import of the same models (what `init_from` of an imported run starts from) gives the encoders the
  # files gave, bit for bit.
  for name, model, importer in (("clip", weights["models"][0], hf_import.import_clip),
                                ("clap", weights["models"][1], hf_import.import_clap)):
    imported = importer(model.state_dict(), params[name])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(_bits(a), _bits(b)), imported, params[name])


def test_missing_weights_stop_small_and_paper_runs():
  import visah_fm
  for variant, missing in (("paper", ["clip_weights", "clap_weights"]), ("small", ["clip_weights", "clap_weights"]),
                           ("paper_vt", ["clip_weights"])):
    config = visah_fm.get_config(variant)
    with pytest.raises(pretrained.EncoderWeightsError) as err:
      pretrained.check_weights(config)
    named = [n for n in ("clip_weights", "clap_weights") if f"model.conditioning.{n}" in str(err.value)]
    assert named == missing and "random_encoders" in str(err.value) and "\n" not in str(err.value), variant
    config.model.conditioning.random_encoders = True
    pretrained.check_weights(config)
  pretrained.check_weights(visah_fm.get_config("paper_t"))  # stored text features: no encoder runs
  pretrained.check_weights(visah_fm.get_config("small_v"))  # stored CLIP image features (the ablation base)
  pretrained.check_weights(visah_fm.get_config("toy"))  # the toy's tiny encoders are random by design
  config = visah_fm.get_config("paper")
  config.model.conditioning.update(clip_weights="clip", clap_weights="clap.bin")
  pretrained.check_weights(config)


def test_paper_run_without_weights_stops_with_one_line(tmp_path):
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "avflow", "train", "--config=configs/visah_fm.py:paper",
                        f"--workdir={workdir}", "--config.total_steps=0", "--config.data.source=toy_movies"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("avflow train: model.conditioning.clip_weights"), out.stderr
  assert not workdir.exists()  # stopped before anything was written, let alone compiled


def test_weights_of_the_wrong_shape_get_the_importer_report(tmp_path):
  torch.manual_seed(1)
  state = _clap_tower(projection_dim=40).state_dict()
  torch.save(state, tmp_path / "clap.bin")
  config = _config(clap_weights=str(tmp_path / "clap.bin"))
  config.model.conditioning.random_encoders = True  # CLIP stays random; the CLAP file is read and refused
  with pytest.raises(hf_import.CheckpointMismatchError) as err:
    train(config, str(tmp_path / "run"))
  msg = str(err.value)
  assert msg.startswith(f"model.conditioning.clap_weights={tmp_path / 'clap.bin'}: checkpoint does not match")
  assert "audio_projection.linear1.weight: checkpoint (40, 64) -> (64, 40), expected (64, 32)" in msg
  assert "missing (0)" in msg and "unexpected (0)" in msg


def test_init_leaves_out_the_imported_encoders_and_draws_the_rest_alike():
  """`init_params(without=...)` skips the frozen CLIP the weights file will fill: its leaves come back as shapes, and
  every other leaf is the full init's, bit for bit."""
  import visah_fm
  from flax import traverse_util as tu
  from avflow.models.visah.highlighter import Highlighter
  from avflow.train.state import abstract_batch, init_params
  config = tiny(visah_fm.get_config("toy"), micro=True, **{"model.conditioning.kind": "clip",
                                                          "model.latent.context_dim": 24})
  assert pretrained.imported_prefixes(config) == ()  # no weights configured: everything is drawn
  config.model.conditioning.clip_weights = "clip"  # only named here, never read
  without = pretrained.imported_prefixes(config)
  assert without == ("clip/vision_model", "clip/visual_projection")
  model = Highlighter(config.model)
  batch = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_batch(config, 2))
  full = tu.flatten_dict(init_params(model, config, batch), sep="/")
  part = tu.flatten_dict(init_params(model, config, batch, without), sep="/")
  assert set(full) == set(part)
  left_out = {k for k, v in part.items() if isinstance(v, jax.ShapeDtypeStruct)}
  assert left_out == {k for k in full if k.startswith(tuple(p + "/" for p in without))} and len(left_out) < len(full)
  for key, value in full.items():
    if key in left_out:
      assert (part[key].shape, part[key].dtype) == (value.shape, value.dtype), key
    else:
      np.testing.assert_array_equal(_bits(part[key]), _bits(value), err_msg=key)

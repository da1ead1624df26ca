"""Held-out evaluation: Env per batch, clips with silent targets, and KLD / IB through `eval --semantic` end to end
with small local PaSST / ImageBind stand-ins (packages of the same interface, tiny torch models, saved weights)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import visah_fm
from conftest import ROOT, tiny
from PIL import Image

from avflow.data.pipeline import make_source
from avflow.metrics import loudness
from avflow.metrics import semantic as sem
from avflow.metrics import signal
from avflow.models.visah.highlighter import Highlighter
from avflow.train import checkpoint
from avflow.train.evaluate import evaluate, run_predictions
from avflow.train.loop import train
from avflow.train.step import jit, make_predict_fn

SR = 8000


def _clip(i: int, silent: bool = False) -> dict:
  rng = np.random.default_rng(i)
  t = np.arange(SR) / SR
  stems = np.stack([0.1 * (k + 1) * np.sin(2 * np.pi * (150 + 90 * k + 20 * i) * t) for k in range(3)])
  stems = stems * (1 + 0.5 * rng.random((3, 1)))
  return {"clip_id": f"c{i}", "stems": (0 * stems if silent else stems).astype(np.float32),
          "frames": np.zeros((1, 16, 16, 3), np.uint8)}


def test_evaluate_pools_env_per_batch_and_counts_silent_targets(tiny_fm_config, tmp_path):
  source = [_clip(0), _clip(1, silent=True), _clip(2)]
  config = tiny_fm_config
  config.eval.env_batch_size = 2
  predict = lambda params, batch: (0.8 * batch["x0"] + 0.1 * batch["x1"], None)  # noqa: E731
  report = evaluate(predict, None, source, config, str(tmp_path), 1)
  assert report["silent_target_clips"] == 1 and report["silent_target_clip_ids"] == ["c1"]
  assert report["env_batch_size"] == 2
  res = run_predictions(predict, None, source, config)
  for part, x in (("input", res["x0"]), ("prediction", res["pred"])):
    got = report[part]
    assert all(np.isfinite(v) for v in got.values()), got
    ldif = [loudness.oracle_ldif(x[i], res["target_stems"][i], res["stems"][i], SR) for i in (0, 2)]
    assert got["ldif"] == pytest.approx(np.mean(ldif))
    batches = [signal.envelope_distance(x[:2], res["x1"][:2]), signal.envelope_distance(x[2:], res["x1"][2:])]
    assert got["env"] == pytest.approx(np.mean(batches))
  assert json.load(open(tmp_path / "eval.json"))["silent_target_clips"] == 1


# KLD / IB end to end ---------------------------------------------------------------------------------------------

FAKE_PACKAGES = {
    "hear21passt/__init__.py": "",
    "hear21passt/base.py": """
        import os
        import torch

        class TinyPasst(torch.nn.Module):
          def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(33, 7)

          def forward(self, x):
            frames = x[:, :x.shape[1] // 64 * 64].reshape(len(x), -1, 64)
            return self.proj(torch.log(torch.fft.rfft(frames).abs() ** 2 + 1e-6).mean(1))

        def get_basic_model(mode="logits"):
          assert mode == "logits"
          model = TinyPasst()
          weights = os.path.join(torch.hub.get_dir(), "checkpoints", "passt-s-f128-p16-s10-ap.476-swa.pt")
          model.load_state_dict(torch.load(weights))
          return model
        """,
    "imagebind/__init__.py": "",
    "imagebind/models/__init__.py": "",
    "imagebind/models/imagebind_model.py": """
        import torch

        class ModalityType:
          AUDIO = "audio"
          VISION = "vision"

        class TinyImageBind(torch.nn.Module):
          def __init__(self):
            super().__init__()
            self.audio = torch.nn.Linear(33, 8)
            self.vision = torch.nn.Linear(48, 8)

          def forward(self, inputs):
            return {k: getattr(self, k)(v) for k, v in inputs.items()}

        def imagebind_huge(pretrained=False):
          assert not pretrained
          return TinyImageBind()
        """,
    "imagebind/data.py": """
        import numpy as np
        import soundfile
        import torch
        from PIL import Image

        def load_and_transform_audio_data(paths, device):
          feats = []
          for p in paths:
            wav, _ = soundfile.read(p, dtype="float32")
            frames = wav[:len(wav) // 64 * 64].reshape(-1, 64)
            feats.append(np.log(np.abs(np.fft.rfft(frames)) ** 2 + 1e-6).mean(0))
          return torch.tensor(np.stack(feats), dtype=torch.float32, device=device)

        def load_and_transform_vision_data(paths, device):
          pixels = [np.asarray(Image.open(p).convert("RGB").resize((4, 4)), np.float32).reshape(-1) / 255
                    for p in paths]
          return torch.tensor(np.stack(pixels), device=device)
        """,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """An initialized tiny VisAH-FM run (`total_steps=0`) on 3 evaluation clips."""
  config = tiny(visah_fm.get_config("toy"))
  config.total_steps = 0
  config.data.num_eval_clips = 3
  workdir = str(tmp_path_factory.mktemp("run"))
  train(config, workdir)
  return workdir


@pytest.fixture
def local_models(tmp_path, monkeypatch):
  """The stand-in packages on the path, random weights where the wrappers look: (PYTHONPATH, env, checkpoint)."""
  torch = pytest.importorskip("torch")
  packages = tmp_path / "packages"
  for name, text in FAKE_PACKAGES.items():
    (packages / name).parent.mkdir(parents=True, exist_ok=True)
    (packages / name).write_text(textwrap.dedent(text))
  monkeypatch.syspath_prepend(str(packages))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  from hear21passt.base import TinyPasst
  from imagebind.models.imagebind_model import TinyImageBind
  torch.manual_seed(0)
  (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
  torch.save(TinyPasst().state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / sem.PasstClassifier.weights_file)
  torch.save(TinyImageBind().state_dict(), tmp_path / "imagebind_huge.pth")
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(packages), str(ROOT)]), "TORCH_HOME": str(tmp_path / "torch")}
  return env, str(tmp_path / "imagebind_huge.pth")


def _eval(env, *args):
  return subprocess.run([sys.executable, "-m", "avflow", "eval", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)


def test_eval_semantic_kld_and_ib_match_the_models_applied_directly(run_dir, local_models, tmp_path):
  env, checkpoint_file = local_models
  done = _eval(env, f"--workdir={run_dir}", "--semantic=passt,imagebind", f"--imagebind_checkpoint={checkpoint_file}")
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.load(open(os.path.join(run_dir, "eval.json")))

  # The same predictions and the same tiny models, applied here to the arrays and to files of our own.
  config = checkpoint.load_config(run_dir)
  predict = jit(make_predict_fn(Highlighter(config.model), config))
  source = make_source(config.data, "val")
  res = run_predictions(predict, checkpoint.load_params(run_dir), source, config)
  classifier, embedder = sem.PasstClassifier(), sem.ImageBindEmbedder(checkpoint_file)
  target_logits = sem.classify(res["x1"], SR, classifier)
  assert report["input"]["kld"] == pytest.approx(sem.kld(target_logits, sem.classify(res["x0"], SR, classifier)),
                                                 rel=1e-5)
  assert report["prediction"]["kld"] == pytest.approx(
      sem.kld(target_logits, sem.classify(res["pred"], SR, classifier)), rel=1e-5)
  assert report["input"]["kld"] != pytest.approx(report["prediction"]["kld"], rel=1e-3)

  frames_of = {c["clip_id"]: c["frames"] for c in map(source.__getitem__, range(len(source)))}
  ib = []
  for i, clip in enumerate(res["clip_id"]):
    folder = tmp_path / "direct" / clip
    folder.mkdir(parents=True)
    wavs = []
    for key in ("x0", "pred", "x1"):
      sf.write(folder / f"{key}.wav", res[key][i], SR, subtype="FLOAT")
      wavs.append(folder / f"{key}.wav")
    images = []
    for k, frame in enumerate(frames_of[clip]):
      Image.fromarray(frame).save(folder / f"frame{k}.png")
      images.append(folder / f"frame{k}.png")
    audio_emb, frame_emb = embedder.embed_audio(wavs), embedder.embed_frames(images)
    ib.append(sem.ib_per_clip(audio_emb, np.stack([frame_emb] * 3)))
  for part, value in zip(("input", "prediction", "target"), np.mean(ib, axis=0)):
    assert report[part]["ib"] == pytest.approx(value, rel=1e-5)
  assert report["num_clips"] == 3 and np.isfinite(report["prediction"]["ldif"])


def test_eval_semantic_names_a_missing_package_or_weights_file_in_one_line(run_dir, local_models, tmp_path):
  env, checkpoint_file = local_models
  bare = {**env, "PYTHONPATH": str(ROOT)}
  cases = [
      (bare, ["--semantic=passt"], "'hear21passt' package"),
      (bare, ["--semantic=imagebind", f"--imagebind_checkpoint={checkpoint_file}"], "'imagebind' package"),
      ({**env, "TORCH_HOME": str(tmp_path / "empty")}, ["--semantic=passt"], "passt-s-f128-p16-s10-ap.476-swa.pt"),
      (env, ["--semantic=imagebind", f"--imagebind_checkpoint={tmp_path / 'none.pth'}"],
       f"imagebind_huge.pth at {tmp_path / 'none.pth'}"),
      (env, ["--semantic=passt,clap"], "unknown clap"),
  ]
  for case_env, args, message in cases:
    done = _eval(case_env, f"--workdir={run_dir}", *args)
    assert done.returncode != 0, args
    errors = [line for line in done.stderr.splitlines() if line.startswith("avflow eval: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in done.stderr, (args, done.stderr[-2000:])


def test_ablate_names_a_missing_semantic_package_before_training(tmp_path):
  done = subprocess.run([sys.executable, "-m", "avflow", "ablate", "--table=3", "--set=eval.semantic=passt",
                         f"--runs={tmp_path}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                        capture_output=True, text=True, timeout=600)
  assert done.returncode != 0 and "avflow ablate: PasstClassifier needs the 'hear21passt' package" in done.stderr
  assert not os.listdir(tmp_path)

"""The ingest: real files → muddy_mix ArrayRecord records → RecordSource and the Grain pipeline.

Every test builds its own tiny inputs (8 kHz audio, 2-s windows, 16-px frames).
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avflow import configs_lib
from avflow.data import pipeline, records, video
from avflow.data.records import discovery
from avflow.metrics.loudness import stem_loudness
from avflow.outputs import OutputError
from test_video import make_video, picture, tone

SR = 8000
SPEC = records.WindowSpec(sample_rate=SR, clip_seconds=2.0, min_seconds=0.5, image_size=16)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stems_for(name: str, seconds: float, sr: int = SR) -> np.ndarray:
  rng = np.random.default_rng(sum(map(ord, name)))
  n = int(round(seconds * sr))
  return np.stack([rng.uniform(-a, a, n) for a in (0.3, 0.1, 0.05)]).astype(np.float32)


def muddy_clip(root, name, seconds=2.0, stems=None, sr=SR, frames=None):
  """A public-layout clip folder; float wavs so the samples round-trip exactly."""
  folder = os.path.join(root, "movie", "sub_video", name)
  stems = stems_for(name, seconds, sr) if stems is None else stems
  for sub in ("separated", "audio_raw", "frames"):
    os.makedirs(os.path.join(folder, sub), exist_ok=True)
  for file, stem in zip(records.STEM_FILES["muddy_mix"], stems):
    sf.write(os.path.join(folder, "separated", file), stem, sr, subtype="FLOAT")
  sf.write(os.path.join(folder, "audio_raw", f"{name}.wav"), stems.sum(axis=0), sr, subtype="FLOAT")
  count = int(np.ceil(stems.shape[1] / sr)) if frames is None else frames
  for i in range(count):
    Image.fromarray(picture(i)).save(os.path.join(folder, "frames", f"{i + 1:03d}.png"))
  return folder


def write_splits(root, **splits):
  for split, names in splits.items():
    with open(os.path.join(root, records.SPLIT_FILES[split]), "w") as f:
      f.writelines(f"./data/Muddy_Mix/movie/sub_video/{n}\n" for n in names)


def by_id(source):
  return {source[i]["clip_id"]: source[i] for i in range(len(source))}


def data_config(records_dir):
  cfg = configs_lib.base_config("toy", "flow").data
  cfg.update(dict(source="records", records_dir=str(records_dir), sample_rate=SR, clip_seconds=2.0, image_size=16))
  return cfg


def test_good_clips_round_trip(tmp_path):
  inp, out = tmp_path / "in", tmp_path / "out"
  muddy_clip(inp, "a_000", 2.0)
  muddy_clip(inp, "a_001", 3.0)  # 2 windows: the 1-s rest is padded (>= 0.5 s)
  muddy_clip(inp, "b_000", 4.2)  # 2 windows: the 0.2-s rest is dropped
  silent = stems_for("c_000", 2.0)
  silent[1] = 0.0
  muddy_clip(inp, "c_000", stems=silent)
  write_splits(inp, train=["a_000", "a_001", "b_000"], val=["c_000"], test=["not_there"])
  report = records.prepare(str(inp), str(out), spec=SPEC)

  assert report == json.loads((out / records.REPORT_FILE).read_text())
  assert sorted(report["ok"]) == ["a_000", "a_001", "b_000", "c_000"] and report["skipped"] == []
  assert report["examples"] == {"train": 5, "val": 1, "test": 0}
  texts = [w["warning"] for w in report["warnings"]]
  assert any("music stem is all silent" in t for t in texts)
  assert any("split 'test' has no usable clips" in t for t in texts)
  assert any("1 of 1 entries match no clip" in t for t in texts)

  train = by_id(records.RecordSource(str(out), "train"))
  assert sorted(train) == ["a_000_w000", "a_001_w000", "a_001_w001", "b_000_w000", "b_000_w001"]
  for clip_id, ex in train.items():
    assert ex["stems"].shape == (3, 2 * SR) and ex["stems"].dtype == np.float32
    assert ex["mix"].shape == (2 * SR,) and ex["frames"].shape == (2, 16, 16, 3) and ex["frames"].dtype == np.uint8
    np.testing.assert_array_equal(ex["loudness"], stem_loudness(ex["stems"], SR).astype(np.float32))
    np.testing.assert_allclose(ex["mix"], ex["stems"].sum(axis=0), atol=1e-6)
  source = stems_for("a_001", 3.0)
  np.testing.assert_array_equal(train["a_001_w001"]["stems"][:, :SR], source[:, 2 * SR:])
  assert not np.any(train["a_001_w001"]["stems"][:, SR:])
  frames = train["a_001_w001"]["frames"]  # frames at 2 s and (repeated, past the end) 2 s
  expected = video.clip_frame(Image.fromarray(picture(2)), 16)
  np.testing.assert_array_equal(frames[0], expected)
  np.testing.assert_array_equal(frames[1], expected)

  val = records.RecordSource(str(out), "val")
  assert np.isneginf(val[0]["loudness"][1])
  with pytest.raises(ValueError, match="split 'test' is not in the records"):
    records.RecordSource(str(out), "test")

  cfg = data_config(out)
  batch = next(iter(pipeline.make_dataset(records.records_source(cfg, "train"), cfg, batch_size=2, seed=0,
                                          train=True)))
  assert batch["x0"].shape == batch["x1"].shape == (2, 2 * SR, 1)
  assert batch["stems"].shape == (2, 3, 2 * SR) and batch["frames"].shape == (2, 2, 16, 16, 3)
  batch = next(iter(pipeline.make_dataset(records.records_source(cfg, "val"), cfg, batch_size=1, seed=0,
                                          train=False)))
  assert batch["gains_db"][0, 1] == 0.0  # the silent stem is left alone by the remix
  cfg.image_size = 32
  with pytest.raises(ValueError, match="image_size: config 32, records 16"):
    records.records_source(cfg, "train")

  with pytest.raises(records.PrepareError, match="already holds"):
    records.prepare(str(inp), str(out), spec=SPEC)
  write_splits(inp, train=["a_000"], val=[], test=[])
  report = records.prepare(str(inp), str(out), spec=SPEC, overwrite=True)
  assert report["examples"] == {"train": 1, "val": 0, "test": 0}
  assert len(records.RecordSource(str(out), "train")) == 1


def test_bad_inputs_are_reported_and_the_run_continues(tmp_path):
  inp, out = tmp_path / "in", tmp_path / "out"
  muddy_clip(inp, "good")
  garbage = muddy_clip(inp, "garbage")
  with open(os.path.join(garbage, "separated", "speech.wav"), "wb") as f:
    f.write(b"not audio at all " * 100)
  truncated = muddy_clip(inp, "truncated")
  path = os.path.join(truncated, "separated", "music.wav")
  sf.write(path, stems_for("truncated", 2.0)[1], SR, subtype="PCM_16")
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])
  missing = muddy_clip(inp, "missing")
  os.remove(os.path.join(missing, "separated", "music.wav"))
  nan = stems_for("nan", 2.0)
  nan[2, 100] = np.nan
  muddy_clip(inp, "nan", stems=nan)
  muddy_clip(inp, "stereo", stems=np.stack([stems_for("stereo", 2.0)] * 2, axis=-1))
  muddy_clip(inp, "rate", stems=stems_for("rate", 2.0, sr=2 * SR), sr=2 * SR)
  muddy_clip(inp, "short", 0.3)
  muddy_clip(inp, "padded", 1.2)
  no_frames = muddy_clip(inp, "no_frames")
  for name in os.listdir(os.path.join(no_frames, "frames")):
    os.remove(os.path.join(no_frames, "frames", name))
  report = records.prepare(str(inp), str(out), spec=SPEC)

  reasons = {s["clip"]: s["reason"] for s in report["skipped"]}
  assert sorted(report["ok"]) == ["good", "padded", "rate", "stereo"]
  assert "not a readable audio file" in reasons["garbage"]
  assert reasons["truncated"].startswith("truncated")
  assert reasons["missing"] == "missing stem music.wav"
  assert "NaN/Inf" in reasons["nan"]
  assert "shorter than the minimum of 0.50 s" in reasons["short"]
  assert "no frames" in reasons["no_frames"]
  assert {s["path"] for s in report["skipped"] if s["clip"] == "garbage"} == {
      os.path.join(garbage, "separated", "speech.wav")}
  warned = {(w["clip"], w["warning"]) for w in report["warnings"]}
  assert ("stereo", "2 channels averaged to mono") in warned
  assert ("rate", f"resampled from {2 * SR} Hz to {SR} Hz") in warned
  assert sum(report["examples"].values()) == 4

  examples = {}
  for split, count in report["examples"].items():
    if count:
      examples.update(by_id(records.RecordSource(str(out), split)))
  np.testing.assert_array_equal(examples["stereo_w000"]["stems"], stems_for("stereo", 2.0))
  rate = examples["rate_w000"]
  assert rate["stems"].shape == (3, 2 * SR)
  np.testing.assert_array_equal(rate["loudness"], stem_loudness(rate["stems"], SR).astype(np.float32))
  assert not np.any(examples["padded_w000"]["stems"][:, int(1.2 * SR):])


def test_strict_stops_at_the_first_bad_clip(tmp_path):
  inp, out = tmp_path / "in", tmp_path / "out"
  muddy_clip(inp, "a_good")
  bad = muddy_clip(inp, "b_bad")
  os.remove(os.path.join(bad, "separated", "speech.wav"))
  muddy_clip(inp, "c_good")
  write_splits(inp, train=["a_good", "b_bad", "c_good"])
  code = ("import sys; from absl import app; from avflow.commands import prepare; "
          "app.run(prepare.main, argv=['avflow prepare'] + sys.argv[1:], flags_parser=prepare.parse_flags)")
  args = [f"--input={inp}", f"--output={out}", "--sample_rate=8000", "--clip_seconds=2", "--image_size=16"]
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, "-c", code, *args, "--strict"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
  assert run.returncode != 0
  assert "b_bad: missing stem speech.wav" in run.stderr
  report = json.loads((out / records.REPORT_FILE).read_text())
  assert report["ok"] == ["a_good"] and [s["clip"] for s in report["skipped"]] == ["b_bad"]
  assert not os.path.isdir(out / records.NAME / str(records.MuddyMix.VERSION))

  run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
  assert run.returncode == 0, run.stderr
  assert "2 clips ok, 1 skipped" in run.stdout
  assert len(records.RecordSource(str(out), "train")) == 2

  with pytest.raises(records.PrepareError, match="b_bad"):  # a failed rebuild keeps the records already there
    records.prepare(str(inp), str(out), spec=SPEC, strict=True, overwrite=True)
  assert len(records.RecordSource(str(out), "train")) == 2
  with pytest.raises(OutputError, match="lies inside the input"):
    records.prepare(str(inp), str(inp / "records"), spec=SPEC)
  assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # no temporary folder left behind


def test_video_stems_layout(tmp_path):
  inp, stems_dir, out = tmp_path / "videos", tmp_path / "stems", tmp_path / "out"
  os.makedirs(inp)

  def write_stems(name, seconds):
    os.makedirs(stems_dir / name)
    for file, stem in zip(records.STEM_FILES["video_stems"], stems_for(name, seconds)):
      sf.write(stems_dir / name / file, stem, SR, subtype="FLOAT")

  make_video(inp / "with_audio.mp4", seconds=3.0, audio=tone(3.0))
  write_stems("with_audio", 3.0)
  make_video(inp / "mute.mp4", seconds=2.0)
  write_stems("mute", 2.0)
  make_video(inp / "mute_no_stems.mp4", seconds=2.0)
  make_video(inp / "no_stems.mp4", seconds=2.0, audio=tone(2.0))
  (inp / "broken.mkv").write_bytes(b"\x1a\x45\xdf\xa3 garbage" * 40)
  report = records.prepare(str(inp), str(out), "video_stems", stems_dir=str(stems_dir), spec=SPEC)

  reasons = {s["clip"]: s["reason"] for s in report["skipped"]}
  assert sorted(report["ok"]) == ["mute", "with_audio"]
  assert reasons["mute_no_stems"].startswith("the video has no audio track and missing stem speech.wav")
  assert reasons["no_stems"].startswith("missing stem speech.wav")
  assert reasons["broken"].startswith("unreadable video")
  assert ("mute", "the video has no audio track; the stems' sum stands in for the original mix") in {
      (w["clip"], w["warning"]) for w in report["warnings"]}

  examples = {}
  for split, count in report["examples"].items():
    if count:
      examples.update(by_id(records.RecordSource(str(out), split)))
  assert sorted(examples) == ["mute_w000", "with_audio_w000", "with_audio_w001"]
  np.testing.assert_allclose(examples["mute_w000"]["mix"], stems_for("mute", 2.0).sum(axis=0), atol=1e-6)
  first = examples["with_audio_w000"]
  assert np.corrcoef(first["mix"], tone(2.0))[0, 1] > 0.99
  decoded = video.read_video(str(inp / "with_audio.mp4"), SR, 16)
  np.testing.assert_array_equal(first["frames"], decoded.frames[:2])
  np.testing.assert_array_equal(examples["with_audio_w001"]["frames"], decoded.frames[[2, 2]])
  np.testing.assert_array_equal(first["loudness"], stem_loudness(first["stems"], SR).astype(np.float32))


def test_hash_split_is_stable_and_groups_sub_clips(tmp_path):
  splits = [discovery._hash_split(f"movie{i}") for i in range(2000)]
  assert splits == [discovery._hash_split(f"movie{i}") for i in range(2000)]
  fractions = [splits.count(s) / len(splits) for s in records.SPLITS]
  np.testing.assert_allclose(fractions, records.HASH_FRACTIONS, atol=0.03)
  clips = [records.Clip(f"m{i}_{j:03d}", "", f"m{i}") for i in range(20) for j in range(3)]
  assigned = records.assign_splits(clips, str(tmp_path), records.Report())
  for split, members in assigned.items():
    assert all(discovery._hash_split(c.group) == split for c in members)
  assert sum(len(m) for m in assigned.values()) == 60


def test_held_out_clips_are_stable_and_leave_training_clips():
  clips = [f"clip{i}" for i in range(25)]
  held = records.held_out_clips(clips)
  assert len(held) == 2 and held == records.held_out_clips(clips[::-1] + clips[:3])  # order and repeats do not matter
  assert set(held) < set(clips)
  assert records.held_out_clips(["a", "b"]) in (["a"], ["b"]) and records.held_out_clips(["only"]) == []
  assert [records.window_clip(w) for w in ("a_w000", "b_w0_w012", "c")] == ["a", "b_w0", "c"]


def test_clip_features_become_context(tmp_path):
  torch = pytest.importorskip("torch")
  inp, out = tmp_path / "in", tmp_path / "out"
  feats = torch.arange(24, dtype=torch.float32).reshape(3, 8)
  for name in ("a", "b"):
    folder = muddy_clip(inp, name, 3.0)
    os.makedirs(os.path.join(folder, "frames_feats"))
    torch.save(feats, os.path.join(folder, records.FEATURES_FILE))
  muddy_clip(inp, "no_feats")
  report = records.prepare(str(inp), str(out), spec=SPEC)
  assert sorted(report["ok"]) == ["a", "b"]
  assert [s["clip"] for s in report["skipped"]] == ["no_feats"]
  examples = {}
  for split, count in report["examples"].items():
    if count:
      examples.update(by_id(records.RecordSource(str(out), split)))
  np.testing.assert_array_equal(examples["a_w000"]["context"], feats[:2].numpy())
  np.testing.assert_array_equal(examples["a_w001"]["context"], feats[[2, 2]].numpy())


def test_prepare_with_a_config_then_train_on_three_clips(tmp_path, tiny_fm_config, caplog):
  """A small own folder, end to end: prepare takes its shapes from the config, a run on records without a
  val split evaluates on a held-out clip, and the report shows its frames, loudness and curves."""
  from avflow.report.html import write_report
  from avflow.train.loop import train
  inp, stems_dir, out, run_dir = tmp_path / "videos", tmp_path / "stems", tmp_path / "out", tmp_path / "run"
  os.makedirs(inp)
  names = ("beach", "city", "forest")
  assert {discovery._hash_split(n) for n in names} == {"train"}  # the case that left train without a val split
  for name in names:
    make_video(inp / f"{name}.mp4", seconds=2.0, audio=tone(2.0))
    os.makedirs(stems_dir / name)
    for file, stem in zip(records.STEM_FILES["video_stems"], stems_for(name, 2.0)):
      sf.write(stems_dir / name / file, stem, SR, subtype="FLOAT")
  cfg = tiny_fm_config
  code = ("import sys; from absl import app; from avflow.commands import prepare; "
          "app.run(prepare.main, argv=['avflow prepare'] + sys.argv[1:], flags_parser=prepare.parse_flags)")
  args = [f"--input={inp}", f"--output={out}", "--layout=video_stems", f"--stems_dir={stems_dir}",
          f"--config={REPO}/configs/visah_fm.py:toy", f"--config.data.clip_seconds={cfg.data.clip_seconds}",
          f"--config.data.image_size={cfg.data.image_size}"]
  env = dict(os.environ, PYTHONPATH=REPO)
  bad = subprocess.run([sys.executable, "-c", code, *args, "--image_size=24"], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
  assert bad.returncode != 0 and not os.path.exists(out)
  assert bad.stderr.strip().splitlines()[-1] == (
      f"avflow prepare: --image_size=24 conflicts with config.data.image_size={cfg.data.image_size} of --config; "
      f"drop --image_size or pass --config.data.image_size=24")
  done = subprocess.run([sys.executable, "-c", code, *args, f"--sample_rate={cfg.data.sample_rate}"],
                        capture_output=True, text=True, env=env, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert "Downloading and preparing" not in done.stdout + done.stderr
  assert "downloaded and prepared" not in done.stdout + done.stderr
  assert f"prepare: writing muddy_mix {records.MuddyMix.VERSION} records to " in done.stdout
  assert "no val split: training holds out beach for evaluation" in done.stdout
  report = json.loads((out / records.REPORT_FILE).read_text())
  assert report["examples"] == {"train": 6, "val": 0, "test": 0} and report["held_out"] == ["beach"]
  meta = records.RecordSource(str(out), "train").metadata
  assert (meta["sample_rate"], meta["clip_seconds"], meta["image_size"]) == (
      cfg.data.sample_rate, cfg.data.clip_seconds, cfg.data.image_size)

  cfg.data.update(dict(source="records", records_dir=str(out)))
  cfg.total_steps = cfg.eval_every = cfg.checkpoint_every = 2
  train_ids = {ex["clip_id"] for ex in pipeline.make_source(cfg.data, "train")}
  assert train_ids == {f"{n}_w00{k}" for n in ("city", "forest") for k in (0, 1)}
  with caplog.at_level("WARNING"):
    train(cfg, str(run_dir))
  assert "no val split: evaluating on train clips beach, training on the other 2" in caplog.text
  evaluated = json.loads((run_dir / "eval.json").read_text())
  assert evaluated["steps"] == 2 and evaluated["num_clips"] == 2
  assert os.listdir(run_dir / "samples") == ["beach_w000"]
  sample = run_dir / "samples" / "beach_w000"  # what the report shows per clip: frames and each source's loudness
  assert sorted(os.listdir(sample / "frames")) == ["000.png"]
  loud = json.loads((sample / "loudness.json").read_text())
  held = by_id(records.RecordSource(str(out), "train"))["beach_w000"]
  assert loud["sources"] == ["speech", "music", "effects"] and len(loud["prediction"]) == 3
  np.testing.assert_allclose(loud["target"], stem_loudness(held["stems"], SR), atol=1e-3)
  page = open(write_report(str(run_dir))).read()
  for link in ("report_files/loss_curves.png", "report_files/trajectory_cosine.png",
               "report_files/beach_w000/loudness.png", "samples/beach_w000/frames/000.png"):
    assert f'src="{link}"' in page, link


def test_clip_weights_store_the_frames_clip_features_in_both_layouts(tmp_path):
  """`prepare(clip_weights=...)` against transformers' `CLIPVisionModelWithProjection` + L2 normalisation."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from avflow.models import clip
  from test_clip import _hf_config
  torch.manual_seed(0)
  model = transformers.CLIPVisionModelWithProjection(_hf_config(clip.clip_config("tiny"))).eval()
  with torch.no_grad():  # move LayerNorms and biases off their 1/0 init
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path / "clip"))
  spec = records.WindowSpec(sample_rate=SR, clip_seconds=2.0, min_seconds=0.5, image_size=32)  # the tiny CLIP's
  options = dict(spec=spec, clip_weights=str(tmp_path / "clip"), clip_variant="tiny", clip_batch_size=2)

  muddy, videos, stems_dir = tmp_path / "muddy", tmp_path / "videos", tmp_path / "stems"
  folder = muddy_clip(muddy, "a", 3.0)
  os.makedirs(os.path.join(folder, "frames_feats"))  # stored features of another width are replaced
  torch.save(torch.zeros(3, 8), os.path.join(folder, records.FEATURES_FILE))
  os.makedirs(videos)
  make_video(videos / "v.mp4", seconds=3.0, audio=tone(3.0))
  os.makedirs(stems_dir / "v")
  for file, stem in zip(records.STEM_FILES["video_stems"], stems_for("v", 3.0)):
    sf.write(stems_dir / "v" / file, stem, SR, subtype="FLOAT")
  examples = {}
  for inp, layout, kw in ((muddy, "muddy_mix", {}), (videos, "video_stems", dict(stems_dir=str(stems_dir)))):
    out = tmp_path / f"out_{layout}"
    report = records.prepare(str(inp), str(out), layout, **kw, **options)
    assert report["skipped"] == []
    for split, count in report["examples"].items():
      if count:
        source = records.RecordSource(str(out), split)
        assert source.metadata["context_dim"] == 24
        assert source.metadata["clip_weights"] == str(tmp_path / "clip")
        examples.update(by_id(source))
  assert sorted(examples) == ["a_w000", "a_w001", "v_w000", "v_w001"]

  frames = np.concatenate([examples[k]["frames"] for k in sorted(examples)])
  pixels = (frames.astype(np.float32) / 255 - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
  with torch.no_grad():
    embeds = model(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float()).image_embeds
  expected = (embeds / embeds.norm(dim=-1, keepdim=True)).numpy()
  context = np.concatenate([examples[k]["context"] for k in sorted(examples)])
  assert context.shape == (8, 24) and context.dtype == np.float32
  np.testing.assert_allclose(context, expected, atol=1e-5, rtol=0)
  assert np.abs(expected[0] - expected[2]).max() > 1e-2  # the frames differ, and so do their features


def test_clip_weights_of_the_wrong_shape_stop_prepare(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import save_file
  muddy_clip(tmp_path / "in", "a")
  weights = str(tmp_path / "clip.safetensors")
  save_file({"visual_projection.weight": torch.zeros(25, 32)}, weights)
  with pytest.raises(records.PrepareError) as err:
    records.prepare(str(tmp_path / "in"), str(tmp_path / "out"), spec=SPEC, clip_weights=weights, clip_variant="tiny")
  msg = str(err.value)
  assert msg.startswith(f"CLIP weights {weights} do not fit (CLIP tiny): checkpoint does not match")
  assert "visual_projection.weight: checkpoint (25, 32) -> (32, 25), expected (32, 24)" in msg
  assert "missing (" in msg and "vision_model.post_layernorm.weight" in msg

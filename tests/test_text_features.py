"""T5 caption features computed at prepare time: the encoder, `prepare --text_encoder`, the records and batches.

A tiny random T5 encoder (d_model 16, one layer) and a word-level tokenizer are built and saved locally: no hub.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from avflow.data import pipeline, records  # noqa: E402
from avflow.data.text_features import TextEncoder, TextEncoderError  # noqa: E402
from avflow.train.state import check_batch  # noqa: E402
from conftest import tiny  # noqa: E402
from test_prepare import REPO, SPEC, by_id, data_config, muddy_clip  # noqa: E402

WORDS = "a dog barks loudly while music plays in the rain car engine speech crowd cheers".split()
DIM, TOKENS = 16, 6


def tiny_t5(folder) -> dict:
  """A random 1-layer T5 encoder and a T5-like tokenizer (appends `</s>`, pads with id 0) saved in `folder`."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                       unk_token="<unk>").save_pretrained(folder)
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=32, d_model=DIM, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
  transformers.T5EncoderModel(config).eval().save_pretrained(folder)
  return vocab


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("t5"))
  return folder, tiny_t5(folder)


def reference(folder, ids) -> np.ndarray:
  """The saved model run directly on unpadded token ids (no attention mask needed)."""
  model = transformers.T5EncoderModel.from_pretrained(folder).eval()
  with torch.no_grad():
    return model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()


def test_encoder_matches_the_model_and_zeroes_padding(t5):
  folder, vocab = t5
  encoder = TextEncoder(folder, TOKENS, DIM, device="cpu", batch_size=2)
  short, empty = "A dog  barks", ""
  long = "a dog barks loudly while music plays in the rain"  # 10 words: cut to 5 words + </s>
  out = encoder.encode([short, empty, long])
  assert out.shape == (3, TOKENS, DIM) and out.dtype == np.float32

  ids = [vocab[w] for w in ("a", "dog", "barks")] + [1]
  np.testing.assert_allclose(out[0, :4], reference(folder, ids), atol=1e-6)
  assert not np.any(out[0, 4:])  # padded positions are zero
  np.testing.assert_allclose(out[1, :1], reference(folder, [1]), atol=1e-6)
  assert not np.any(out[1, 1:]) and np.any(out[1, 0])
  truncated = [vocab[w] for w in long.split()[:TOKENS - 1]] + [1]
  np.testing.assert_allclose(out[2], reference(folder, truncated), atol=1e-6)
  tokens = encoder.tokenize([short])
  assert tokens["input_ids"][0].tolist() == ids + [0, 0] and tokens["attention_mask"][0].tolist() == [1] * 4 + [0, 0]
  # A caption's features do not depend on what it is batched with.
  np.testing.assert_allclose(encoder.encode_one(short), out[0], atol=1e-6)
  assert encoder.encode([]).shape == (0, TOKENS, DIM)


def test_a_wrong_width_or_folder_is_a_clear_error(t5, tmp_path, tiny_fm_config):
  folder, _ = t5
  with pytest.raises(TextEncoderError, match="gives 16-d features but 4096-d were asked for"):
    TextEncoder(folder, TOKENS, 4096)
  with pytest.raises(TextEncoderError, match="does not exist"):
    TextEncoder(str(tmp_path / "nowhere"), TOKENS)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(TextEncoderError, match="no config.json"):
    TextEncoder(str(tmp_path / "empty"), TOKENS)

  # The command line: --text_dim defaults to T5-XXL's 4096, so the 16-d encoder is refused before any work.
  inp = tmp_path / "in"
  folder_a = muddy_clip(inp, "a")
  os.makedirs(os.path.join(folder_a, records.CAPTIONS_DIR))
  with open(os.path.join(folder_a, records.CAPTIONS_DIR, records.CAPTION_FILE), "w") as f:
    f.write("a dog barks\n")
  code = ("import sys; from absl import app; from avflow.commands import prepare; "
          "app.run(prepare.main, argv=['avflow prepare'] + sys.argv[1:], flags_parser=prepare.parse_flags)")
  run = subprocess.run([sys.executable, "-c", code, f"--input={inp}", f"--output={tmp_path / 'out'}",
                        f"--text_encoder={folder}"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=REPO), cwd=tmp_path)
  assert run.returncode != 0
  assert "gives 16-d features but 4096-d were asked for" in run.stderr, run.stderr
  assert "--text_dim=16" in run.stderr and "conditioning.text_dim=16" in run.stderr
  assert not os.path.exists(tmp_path / "out" / records.NAME)

  # Training: stored 6 x 16 text against a config that expects 10 x 4096 (the `t` row's defaults).
  import visah_fm
  config = tiny(visah_fm.get_config("toy_t"))
  config.model.conditioning.text_dim = 4096
  batch = {"x0": np.zeros((2, 8, 1)), "text": np.zeros((2, TOKENS, DIM), np.float32)}
  with pytest.raises(ValueError, match=r"stored `text` features are 6 x 16 .* expects 10 x 4096"):
    check_batch(config, batch)
  with pytest.raises(ValueError, match="prepare --text_encoder"):
    check_batch(config, {"x0": batch["x0"]})


def caption(folder, text, name=records.CAPTION_FILE):
  os.makedirs(os.path.join(folder, records.CAPTIONS_DIR), exist_ok=True)
  with open(os.path.join(folder, records.CAPTIONS_DIR, name), "w") as f:
    f.write(text)


def test_prepare_stores_caption_features_and_batches_carry_them(t5, tmp_path):
  folder, _ = t5
  inp, out = tmp_path / "in", tmp_path / "out"
  caption(muddy_clip(inp, "a", 3.0), "A dog barks\nloudly in the rain\n")  # 2 windows, one caption
  caption(muddy_clip(inp, "b"), "music plays", name="other_captioner.txt")
  caption(muddy_clip(inp, "empty"), "  \n")
  muddy_clip(inp, "no_caption")
  for split, names in (("train", ["a", "b", "empty", "no_caption"]), ("val", []), ("test", [])):
    with open(inp / records.SPLIT_FILES[split], "w") as f:
      f.writelines(f"{n}\n" for n in names)
  report = records.prepare(str(inp), str(out), spec=SPEC, text_encoder=folder, text_dim=DIM, text_tokens=TOKENS)

  assert sorted(report["ok"]) == ["a", "b", "empty"]
  assert report["skipped"] == [{"clip": "no_caption", "reason": "no caption file (text features are stored for "
                                "every clip)", "path": os.path.join(str(inp), "movie", "sub_video", "no_caption",
                                                                    records.CAPTIONS_DIR, records.CAPTION_FILE)}]
  assert ("empty", "empty caption: the encoding of the empty string is stored") in {
      (w["clip"], w["warning"]) for w in report["warnings"]}
  assert report == json.loads((out / records.REPORT_FILE).read_text())

  source = records.RecordSource(str(out), "train")
  assert source.metadata["text_dim"] == DIM and source.metadata["text_tokens"] == TOKENS
  assert source.metadata["text_encoder"] == os.path.abspath(folder)
  examples = by_id(source)
  assert sorted(examples) == ["a_w000", "a_w001", "b_w000", "empty_w000"]
  encoder = TextEncoder(folder, TOKENS, DIM, device="cpu")
  want = encoder.encode(["A dog barks loudly in the rain", "music plays", ""])
  for clip_id, expected in (("a_w000", want[0]), ("a_w001", want[0]), ("b_w000", want[1]), ("empty_w000", want[2])):
    text = examples[clip_id]["text"]
    assert text.shape == (TOKENS, DIM) and text.dtype == np.float32
    np.testing.assert_allclose(text, expected, atol=1e-6, err_msg=clip_id)

  # The records pipeline batches `text`; a `t` config whose text_dim/text_tokens match accepts the batch.
  import visah_fm
  cfg = data_config(out)
  train_source = records.records_source(cfg, "train")  # the records have no val split: one clip is held out
  assert len(train_source) >= 2
  batch = next(iter(pipeline.make_dataset(train_source, cfg, batch_size=len(train_source), seed=0, train=False)))
  assert batch["text"].shape == (len(train_source), TOKENS, DIM) and batch["text"].dtype == np.float32
  for clip_id, text in zip(batch["clip_id"], batch["text"]):
    np.testing.assert_array_equal(text, examples[clip_id]["text"])
  config = tiny(visah_fm.get_config("toy_t"))
  config.data = cfg
  config.model.conditioning.update(text_dim=DIM, text_tokens=TOKENS)
  assert config.model.latent.context_dim == DIM  # linked to text_dim by the `t` row
  check_batch(config, batch)


def test_caption_files_are_found_per_layout(tmp_path):
  warnings = []
  warn = lambda path, text: warnings.append(text)
  clip = records.Clip("c", str(tmp_path / "c"), "c")
  assert records.caption_path("muddy_mix", clip) is None
  with pytest.raises(records.BadClip, match="no caption file"):
    records.read_caption("muddy_mix", clip, warn)
  caption(clip.path, "second", name="b.txt")
  caption(clip.path, "first", name="a.txt")
  assert records.read_caption("muddy_mix", clip, warn) == "first" and "2 caption files" in warnings[-1]
  caption(clip.path, " the\tpublic\n caption \n")
  assert records.read_caption("muddy_mix", clip, warn) == "the public caption"
  with open(records.caption_path("muddy_mix", clip), "wb") as f:
    f.write(b"\xff\xfe\x00bad")
  with pytest.raises(records.BadClip, match="unreadable caption"):
    records.read_caption("muddy_mix", clip, warn)
  video = records.Clip("v", str(tmp_path / "videos" / "v.mp4"), "v")
  assert records.caption_path("video_stems", video) is None
  os.makedirs(tmp_path / "videos")
  (tmp_path / "videos" / "v.txt").write_text("a car engine\n")
  assert records.read_caption("video_stems", video, warn) == "a car engine"


def _caption_run(workdir, row: str) -> str:
  """A tiny run of Table 2 row `row` whose zero-initialized layers (λ_E, the latent output) are made non-zero, so
  the caption reaches the output."""
  import jax
  import jax.numpy as jnp
  import visah_fm
  from avflow.models.visah.highlighter import Highlighter
  from avflow.train import checkpoint
  from avflow.train.state import abstract_batch

  config = tiny(visah_fm.get_config(f"toy_{row}"), encoders=True)
  config.model.conditioning.update(text_dim=DIM, text_tokens=TOKENS)
  batch = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract_batch(config, 1))
  params = jax.jit(Highlighter(config.model).init)(jax.random.PRNGKey(0), batch, jnp.zeros((1,)))["params"]
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda p: 0.3 * rng.standard_normal(p.shape, np.float32) if not p.any() else p, params)
  checkpoint.save_config(workdir, config)
  ckpt = checkpoint.Checkpointer(workdir, async_save=False)
  ckpt.save(0, {"step": np.int32(0), "params": params})
  ckpt.close()
  return str(workdir)


def test_highlight_takes_a_caption_for_caption_conditioned_runs(t5, tmp_path, run_dir):
  """Rows V+T (adapter over CLIP) and T (caption features only): `highlight --caption --text_encoder` encodes the
  caption and the output follows it; a missing caption, or one given to a run without text, is a clear error."""
  from avflow.inference import load_run, rebalance
  folder, _ = t5
  sr = 8000
  t = np.arange(int(2.5 * sr)) / sr
  audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 3100 * t)).astype(np.float32)
  import soundfile as sf
  from PIL import Image
  sf.write(tmp_path / "in.wav", audio, sr, subtype="FLOAT")
  frames_dir = tmp_path / "frames"
  frames_dir.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(frames_dir / f"{i:03d}.png")
  encoder = TextEncoder(folder, TOKENS, DIM, device="cpu")
  captions = ("a dog barks in the rain", "music plays while the crowd cheers")

  def highlight(*args):
    return subprocess.run([sys.executable, "-m", "avflow", "highlight", str(tmp_path / "in.wav"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))

  for row, frame_args in (("vt", [f"--frames={frames_dir}"]), ("t", [])):
    workdir = _caption_run(tmp_path / row, row)
    out = tmp_path / f"{row}.wav"
    res = highlight(out, f"--workdir={workdir}", *frame_args, f"--caption={captions[0]}", f"--text_encoder={folder}")
    assert res.returncode == 0, res.stderr[-3000:]
    written, _ = sf.read(out, dtype="float32")
    run = load_run(workdir)
    frames = np.stack([np.asarray(Image.open(frames_dir / f"{i:03d}.png")) for i in range(3)]) if frame_args else None
    text = [encoder.encode_one(c) for c in captions]
    same, other = (np.clip(rebalance(run, audio, frames, None, t), -1, 1) for t in text)
    np.testing.assert_allclose(written, same, rtol=0, atol=1e-6, err_msg=row)  # the wav holds float32 samples
    # Another caption, another remix: far further from the CLI's output than the same caption (at random weights
    # the tiny U-Net barely reads its context, so the difference itself is small).
    assert np.abs(written - other).max() > 10 * np.abs(written - same).max() + 1e-7, row

  # The caption checks run before any model does, the same for both rows: shown on the last one.
  res = highlight(tmp_path / "x.wav", f"--workdir={workdir}")
  assert res.returncode != 0 and "is conditioned on a caption: pass --caption" in res.stderr, res.stderr[-2000:]
  res = highlight(tmp_path / "x.wav", f"--workdir={workdir}", "--caption=a dog",
                  f"--text_encoder={tmp_path / 'no_such_t5'}")
  assert res.returncode != 0 and "does not exist" in res.stderr, res.stderr[-2000:]

  res = highlight(tmp_path / "x.wav", f"--workdir={run_dir}", f"--frames={frames_dir}", "--caption=a dog")
  assert res.returncode != 0 and "not conditioned on captions; drop --caption" in res.stderr, res.stderr[-2000:]

"""The self-contained PyTorch VisAH / VisAH-FM module (`avflow/interop/visah_pytorch.py`)."""
import json
import math
import os

import pytest
import torch

from avflow.interop import visah_pytorch as tv
from avflow.models.visah import presets

SHAPES_JSON = os.path.join(os.path.dirname(__file__), "data", "visah_state_dict_shapes.json")
PAPER_PARAMS = 59_956_090  # the public VContextEnc3 checkpoint


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(scale, **latent):
  cfg = presets.model_config(scale).to_dict()
  cfg["latent"].update(latent)
  return cfg


def _toy_inputs(cfg, batch, seconds=1.0, seed=0):
  g = torch.Generator().manual_seed(seed)
  mix = 0.1 * torch.randn(batch, 1, int(seconds * cfg["sample_rate"]), generator=g)
  context = torch.randn(batch, 3, cfg["latent"]["context_dim"], generator=g)
  return mix, context


def _perturb_zero_init(model, seed=0):
  """Random values for the zero/1e-4-initialised proj_out and LayerScales, so all paths count."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith("latent_transformer.proj_out"):
        p.copy_(torch.randn(p.shape, generator=g))
      elif name.endswith(".scale"):
        p.copy_(0.1 * torch.randn(p.shape, generator=g))
  return model


def test_paper_state_dict_is_the_public_checkpoint_layout():
  torch.manual_seed(0)
  model = tv.build_visah(_cfg("paper"))
  with open(SHAPES_JSON) as f:
    expected = json.load(f)
  full = tv.lightning_state_dict(model)
  assert len(model.state_dict()) == 561 and len(full) == 564
  assert list(full) == list(expected)  # same keys in the same order
  assert {k: list(v.shape) for k, v in full.items()} == expected
  assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS
  # Stored embedding = effective / emb_scale; positional tables are sin/cos.
  emb = model.freq_emb
  assert torch.allclose(emb(torch.arange(3)), emb.embedding.weight[:3] * 10.0)
  pe = full["model.latent_transformer.pe_context.pe"]
  assert torch.allclose(pe[0, 7, :2], torch.tensor([torch.sin(torch.tensor(7.0)),
                                                     torch.cos(torch.tensor(7.0))]))
  assert torch.equal(full["mr_stft_loss.stft_losses.1.window"], torch.hann_window(1024))
  assert not model.latent_transformer.proj_out.weight.any()


def test_time_conditioning_adds_keys_only_under_time_embed():
  base = set(tv.build_visah(_cfg("toy")).state_dict())
  token = tv.build_visah(dict(_cfg("toy"), time_conditioning="latent_token")).eval()
  both = tv.build_visah(dict(_cfg("toy"), time_conditioning="latent_token+encoder")).eval()
  for model in (token, both):
    extra = set(model.state_dict()) - base
    assert extra and all(k.startswith("time_embed.") for k in extra)
  # The encoder projections start at zero: the model then equals the token-only one.
  _perturb_zero_init(token)
  both.load_state_dict(token.state_dict(), strict=False)
  mix, context = _toy_inputs(_cfg("toy"), batch=2, seconds=0.5)
  t = torch.tensor([0.0, 0.75])
  with torch.no_grad():
    torch.testing.assert_close(both(mix, context, t), token(mix, context, t))
    assert (token(mix, context, t) - token(mix, context, 1 - t)).abs().max() > 0
  with pytest.raises(ValueError, match="needs flow time"):
    token(mix, context)
  with pytest.raises(ValueError, match="takes no flow time"):
    tv.build_visah(_cfg("toy"))(mix, context, t)


def test_toy_forward_shapes_and_identity_bottleneck():
  cfg = _cfg("toy")
  torch.manual_seed(0)
  model = tv.build_visah(cfg).eval()
  mix, context = _toy_inputs(cfg, batch=2)
  with torch.no_grad():
    out = model(mix, context)
    # proj_out is zero-initialised: the latent transformer starts as the identity.
    bottleneck = torch.randn(2, model.latent_transformer.proj_in.in_channels, 5)
    same = model.latent_transformer(bottleneck, context)
  assert out.shape == mix.shape and torch.isfinite(out).all()
  assert torch.equal(same, bottleneck)


def test_context_attention_modes():
  """"frames" attends over each clip's frames; "legacy_batch_axis" over the batch, per frame.

  So the two agree for one clip with one frame; with one clip the legacy encoder is a
  per-frame map (no frame sees another); with several clips only "frames" keeps them apart.
  """
  torch.manual_seed(0)
  frames = _perturb_zero_init(tv.build_visah(_cfg("toy", context_attention="frames"))).eval()
  legacy = tv.build_visah(_cfg("toy", context_attention="legacy_batch_axis")).eval()
  legacy.load_state_dict(frames.state_dict())
  mix, context = _toy_inputs(_cfg("toy"), batch=2)
  with torch.no_grad():
    a, b = frames(mix, context), legacy(mix, context)
    a1, b1 = frames(mix[:1], context[:1]), legacy(mix[:1], context[:1])
    a11, b11 = frames(mix[:1], context[:1, :1]), legacy(mix[:1], context[:1, :1])
    context_effect = (a - frames(mix, torch.randn_like(context))).abs().max()
    c = legacy.latent_transformer.context_proj(context[:1])
    pos = legacy.latent_transformer.pe_context.pe[:, :3]
    enc, enc_frame0 = (legacy.latent_transformer.context_transformer_encoder(x, p)
                       for x, p in ((c, pos), (c[:, :1], pos[:, :1])))
  assert context_effect > 0
  torch.testing.assert_close(a11, b11, rtol=1e-5, atol=1e-6)
  torch.testing.assert_close(enc[:, :1], enc_frame0, rtol=1e-5, atol=1e-6)
  assert (a1 - b1).abs().max() > 0.01 * context_effect
  assert (a - b).abs().max() > 0.1 * context_effect
  torch.testing.assert_close(a[:1], a1, rtol=1e-5, atol=1e-6)
  assert (b[:1] - b1).abs().max() > 0.1 * context_effect


def test_blstm_windows_are_stitched_from_independent_chunks():
  torch.manual_seed(0)
  blstm = tv.BLSTM(6, layers=2, max_steps=20).eval()
  x = torch.randn(2, 6, 47)
  with torch.no_grad():
    out = blstm(x)
    first = blstm(x[..., :20])  # a lone window of max_steps frames is not framed
    # The first window keeps its first 15 frames; the second (frames 10..29) its middle 10.
    second = blstm(x[..., 10:30])
  assert out.shape == x.shape
  torch.testing.assert_close(out[..., :15], first[..., :15])
  torch.testing.assert_close(out[..., 15:25], second[..., 5:15])


def test_hybrid_spec_shapes_and_interior_round_trip():
  """Frames and the Nyquist bin are dropped, so only the interior of a band-limited signal
  (no Nyquist content) comes back exactly; short inputs are padded as demucs `pad1d` does."""
  t = torch.arange(5000.0)
  x = (torch.sin(2 * math.pi * 0.01 * t) + 0.5 * torch.cos(2 * math.pi * 0.123 * t + 1))
  z = tv.hybrid_spec(x[None, None], 1024)
  assert z.shape == (1, 1, 512, 20)
  y = tv.hybrid_ispec(z, 5000)[0, 0]
  torch.testing.assert_close(y[512:-512], x[512:-512], rtol=0, atol=1e-4)
  assert tv.hybrid_spec(torch.randn(2, 1, 100), 1024).shape == (2, 1, 512, 1)


def test_invalid_hybrid_geometry_is_a_clear_error():
  with pytest.raises(ValueError, match="does not fit the time branch"):
    tv.build_visah(dict(_cfg("toy"), nfft=1000))
  with pytest.raises(ValueError, match="never merge"):
    tv.build_visah(dict(_cfg("toy"), depth=2))
  with pytest.raises(ValueError, match="context_attention"):
    tv.build_visah(_cfg("toy", context_attention="batch"))


def test_lightning_round_trip():
  torch.manual_seed(0)
  a = _perturb_zero_init(tv.build_visah(_cfg("toy"))).eval()
  b = tv.build_visah(_cfg("toy")).eval()
  tv.load_lightning_state_dict(b, {"state_dict": tv.lightning_state_dict(a)})
  mix, context = _toy_inputs(_cfg("toy"), batch=1)
  with torch.no_grad():
    torch.testing.assert_close(a(mix, context), b(mix, context), rtol=0, atol=0)


def test_fm_highlighter_euler_steps():
  cfg = dict(_cfg("toy"), time_conditioning="latent_token")
  torch.manual_seed(0)
  model = _perturb_zero_init(tv.build_visah(cfg)).eval()
  mix, context = _toy_inputs(cfg, batch=2, seconds=0.5)
  fm = tv.VisAHFMHighlighter(model, num_steps=4, warm_start=True)
  with torch.no_grad():
    traj = fm(mix, context, return_trajectory=True)
    partial = fm(mix, context, stop_after=2)
    one = fm(mix, context, num_steps=1)
    u0 = model(mix, context, torch.zeros(2))
    t2 = torch.full((2,), 0.5)
    x3 = traj[2] + (model(traj[2], context, t2) - mix) / 4
    cold = tv.VisAHFMHighlighter(model, num_steps=2, warm_start=False)(mix, context, stop_after=1)
  assert len(traj) == 5 and torch.equal(traj[0], mix)
  torch.testing.assert_close(partial, traj[2], rtol=0, atol=0)
  torch.testing.assert_close(traj[3], x3)
  torch.testing.assert_close(one, u0)  # one warm-started step lands on u(x0, 0)
  torch.testing.assert_close(cold, mix + u0 / 2)
  assert torch.equal(fm(mix, context, stop_after=0), mix)
  with pytest.raises(ValueError, match="stop_after"):
    fm(mix, context, stop_after=5)
  with pytest.raises(ValueError, match="time conditioning"):
    tv.VisAHFMHighlighter(tv.build_visah(_cfg("toy")))

"""The self-contained PyTorch DAVIS separator (`avflow/interop/davis_pytorch.py`): the public checkpoint layout and
identities of its forward. Its parity with the Flax `Separator` is in test_davis_convert.py."""
import json
import os

import pytest
import torch

from avflow.interop import davis_pytorch as dp
from avflow.models.davis import presets

SHAPES_JSON = os.path.join(os.path.dirname(__file__), "data", "davis_state_dict_shapes.json")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _micro(**overrides):
  """2 levels, 8 x 8 inputs, every attention at both levels, stored features of width 8."""
  cfg = presets.model_config("toy")
  cfg.update(dict(dict(dim=8, dim_mults=(1, 2), resnet_groups=4, freq_bins=8, attention_levels=None), **overrides))
  cfg.linear_attention.update(dict(heads=2, dim_head=4))
  cfg.attention.update(dict(heads=2, dim_head=4))
  cfg.time_attention.update(dict(heads=2, qk_dim=16))
  cfg.temporal.update(dict(d_model=8, heads=2, ff_dim=16))
  return cfg


def _inputs(batch=2, frames=3, seed=0):
  g = torch.Generator().manual_seed(seed)
  return (torch.randn(batch, 1, 8, 8, generator=g), torch.rand(batch, generator=g),
          torch.randn(batch, frames, 8, generator=g), torch.rand(batch, 1, 8, 8, generator=g))


def test_paper_state_dict_is_the_public_layout():
  """The public `unet_*.pth` (less the wrapper's unused `time_mlp`) and `frame_*.pth` (less CLIP): same keys in the
  same order, same shapes, the public parameter counts."""
  with open(SHAPES_JSON) as f:
    public = json.load(f)
  expected = {k: v for k, v in public["unet"].items() if not k.startswith("time_mlp.")}
  expected.update(public["frame"])
  with torch.device("meta"):
    model = dp.DavisSeparator(presets.model_config("paper"))
  state = model.state_dict()
  assert list(state) == list(expected)
  assert {k: list(v.shape) for k, v in state.items()} == expected
  assert sum(p.numel() for p in model.net_unet.parameters()) == 36_549_603
  assert sum(p.numel() for p in model.temporal_transformer.parameters()) == 13_663_232
  assert [k for k in public["unet"] if k.startswith("time_mlp.")] == [
      "time_mlp.1.weight", "time_mlp.1.bias", "time_mlp.3.weight", "time_mlp.3.bias"]


def test_levels_without_attention_keep_the_key_indices():
  """`attention_levels=(1,)` leaves out the attentions of level 0 only; every other key and shape is unchanged."""
  with torch.device("meta"):
    full = {k: v.shape for k, v in dp.DavisSeparator(_micro()).state_dict().items()}
    partial = {k: v.shape for k, v in dp.DavisSeparator(_micro(attention_levels=(1,))).state_dict().items()}
  dropped = set(full) - set(partial)
  assert not set(partial) - set(full) and all(full[k] == partial[k] for k in partial)
  level0 = ("net_unet.downs.0.1.", "net_unet.downs.0.2.", "net_unet.ups.1.1.", "net_unet.ups.1.2.")
  assert dropped and all(k.startswith(level0) for k in dropped)
  assert all(any(k.startswith(prefix) for k in dropped) for prefix in level0)
  assert "net_unet.downs.0.3.1.weight" in partial and "net_unet.ups.0.1.fn.norm.g" in partial


def test_fim_time_false_is_the_fim_without_its_time_mlps():
  """With zero FIM time MLPs the FiLM is the identity, so the fim_time=True network is the fim_time=False one;
  non-zero ones change the output."""
  torch.manual_seed(0)
  with_time = dp.DavisSeparator(_micro(fim_time=True)).eval()
  without = dp.DavisSeparator(_micro(fim_time=False)).eval()
  fim_mlps = {k for k in with_time.state_dict() if k.startswith(("net_unet.mid_block", "net_unet.mid_attn"))
              and ".mlp." in k}
  assert len(fim_mlps) == 6 and set(with_time.state_dict()) - set(without.state_dict()) == fim_mlps
  without.load_state_dict({k: v for k, v in with_time.state_dict().items() if k not in fim_mlps}, strict=True)
  x_t, t, features, mixture = _inputs()
  with torch.no_grad():
    timed = with_time(x_t, t, features, mixture)
    for name in fim_mlps:
      with_time.get_parameter(name).zero_()
    torch.testing.assert_close(with_time(x_t, t, features, mixture), without(x_t, t, features, mixture),
                               rtol=0, atol=0)
  assert (timed - without(x_t, t, features, mixture)).abs().max() > 1e-3


def test_visual_vector_is_the_mean_over_the_transformed_frames():
  """No positional encoding: the frames' order does not matter; the vector is the mean of the decoder's output."""
  torch.manual_seed(0)
  model = dp.DavisSeparator(_micro()).eval()
  _, _, features, _ = _inputs(frames=4)
  with torch.no_grad():
    visual = model.encode(features)
    torch.testing.assert_close(model.encode(features[:, [2, 0, 3, 1]]), visual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(visual, model.temporal_transformer(features, features).mean(dim=1), rtol=0, atol=0)
  assert visual.shape == (2, 8)


def test_input_sizes_are_checked():
  model = dp.DavisSeparator(_micro()).eval()
  x_t, t, features, mixture = _inputs()
  with pytest.raises(ValueError, match="expected freq_bins=8 bins and both multiples of 2"):
    model(x_t[:, :, :, :7], t, features, mixture[:, :, :, :7])
  cfg = _micro()
  cfg.time_attention.heads = 3
  with pytest.raises(ValueError, match="8 channels are not divisible by 3 heads"):
    dp.DavisSeparator(cfg)

"""Model-size presets shared by every config file (`configs/*.py`).

`paper` is the public VisAH model exactly (59,956,090 parameters, `visah.md` §2.7);
`small` and `toy` scale sample rate, clip length, channels, depth and nfft down.
"""
import ml_collections

SCALES = ("toy", "small", "paper")


def audio_config(scale: str) -> ml_collections.ConfigDict:
  """Sample rate and clip length of one training example."""
  return ml_collections.ConfigDict({
      "toy": dict(sample_rate=8000, clip_seconds=1.0, frames_per_second=1),
      "small": dict(sample_rate=22050, clip_seconds=5.0, frames_per_second=1),
      "paper": dict(sample_rate=44100, clip_seconds=10.0, frames_per_second=1),
  }[_check(scale)])


def model_config(scale: str) -> ml_collections.ConfigDict:
  """The VisAH backbone (`HDemucsRemixer` + `AV_Transformer`) at one scale."""
  common = dict(
      audio_channels=1,
      growth=2,
      kernel_size=8,
      stride=4,
      time_stride=2,
      norm_starts=4,
      norm_groups=4,
      dconv_depth=2,
      dconv_comp=4,
      dconv_attn=4,
      dconv_lstm=4,
      dconv_init=1e-4,
      lstm_max_steps=200,
      freq_emb=0.2,
      emb_scale=10.0,
      rescale=0.1,
      # "auto" (matmul gradients and transposed convolutions on CPU, XLA's own elsewhere), "xla" or "matmul".
      conv_impl="auto",
      # VisAH-FM additions (Sec. 2.2.2 "Time (CFM) Conditioning", Table 6).
      time_conditioning="none",
      time_embed_dim=256,
  )
  per_scale = {
      # 4 layers: three frequency layers (128 → 32 → 8 → 1 bins, the last one merging the time branch) and one
      # time layer. No DConv BLSTM / LocalState (dconv_lstm = dconv_attn = depth): on the band-split toy movies
      # they add no accuracy and most of the CPU time (the `small` and `paper` scales keep them on layers 4–5).
      "toy": dict(
          channels=8, depth=4, nfft=256, norm_starts=3, dconv_lstm=4, dconv_attn=4,
          latent=dict(n_heads=4, d_head=16, depth=2, context_layers=1, context_heads=4,
                      context_ff=128, context_dim=64, context_attention="frames"),
      ),
      "small": dict(
          channels=16, depth=6, nfft=1024,
          latent=dict(n_heads=8, d_head=32, depth=4, context_layers=2, context_heads=8,
                      context_ff=512, context_dim=768, context_attention="frames"),
      ),
      "paper": dict(
          channels=24, depth=6, nfft=4096,
          latent=dict(n_heads=16, d_head=32, depth=6, context_layers=3, context_heads=16,
                      context_ff=1024, context_dim=768, context_attention="frames"),
      ),
  }[_check(scale)]
  cfg = ml_collections.ConfigDict({**common, **per_scale})
  cfg.sample_rate = audio_config(scale).sample_rate
  return cfg


def _check(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; expected one of {', '.join(SCALES)}")
  return scale

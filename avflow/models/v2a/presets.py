"""VAFlow model scales: `config.model` of the DiT velocity field (`dit.VelocityDiT`), `config.prior` of the
alignment VAE (`prior.AlignmentVAE`) and the toy's codec.

The paper (Sec. 4.4, Fig. 4) scales its DiT by width and depth to 142M, 264M, 527M and 1.05B parameters but gives
no layer counts, widths or heads; Sec. 4.2 uses "VAFlow-CLIP-142M". `paper` is a reconstruction of that model,
not a published configuration:

  paper  width 768, depth 12, 12 heads of 64 (RoPE on 32 of them), sinusoid 256, D_a = 64 (the Stable Audio Open
         latent), D_v = 768 (CLIP at 10 fps): 142,603,072 parameters. A block holds 18·w² + 2·w·D_v weights
         (self-attention 4w², cross-attention 2w² + 2w·D_v, GEGLU 12w²); at the head width of Stable Audio Open
         (64) and its time-feature width (256), 12 blocks of width 768 (the DiT-B / ViT-B shape) give 142.6M,
         0.4 % above 142M. (Stable Audio Open's own DiT, width 1536 and depth 24, is ~1.05B, the largest scale.)
  small  width 384, depth 8, 6 heads of 64; D_a = 64, D_v = 768: ~26M, for one-accelerator experiments.
  toy    width 64, depth 2, 4 heads of 16 (RoPE on 8); D_a = 64 (the toy's 64-band log-mel codec), D_v = 64:
         ~0.18M, trained on a CPU in minutes.

The alignment VAE's sizes are not published either (Sec. 4.1: "three alignment VAEs with comparable parameter
scales", one per visual encoder); every `prior_config` width below is a choice, not the paper's:

  paper  D_v = 768 -> D_a = 64, width 512, 2 residual blocks of kernel 3 per side: 4,892,544 parameters.
  small  the same features at width 256, 1 block: 1,265,536.
  toy    D_v = 64 (the toy DiT's video width) -> D_a = 64, width 32, 1 block: 25,152.

Every field can be overridden (`--config.model.depth=...`); `learned_null` chooses the null condition of
classifier-free guidance (False: zero video features, the paper's).
"""
import ml_collections

SCALES = ("toy", "small", "paper")


def model_config(scale: str) -> ml_collections.ConfigDict:
  """`config.model` of the `VelocityDiT` at one scale."""
  per_scale = {
      "toy": dict(latent_dim=64, video_dim=64, width=64, depth=2, heads=4, rope_dim=8, time_embed_dim=64),
      "small": dict(latent_dim=64, video_dim=768, width=384, depth=8, heads=6, rope_dim=32, time_embed_dim=256),
      "paper": dict(latent_dim=64, video_dim=768, width=768, depth=12, heads=12, rope_dim=32, time_embed_dim=256),
  }[_check(scale)]
  return ml_collections.ConfigDict({**per_scale, "rope_base": 10000.0, "learned_null": False})


def prior_config(scale: str) -> ml_collections.ConfigDict:
  """`config.prior` of the `AlignmentVAE` at one scale; its `video_dim` and `latent_dim` are the DiT's."""
  model = model_config(scale)
  per_scale = {"toy": dict(width=32, blocks=1), "small": dict(width=256, blocks=1),
               "paper": dict(width=512, blocks=2)}[scale]
  return ml_collections.ConfigDict(dict(video_dim=model.video_dim, latent_dim=model.latent_dim, kernel_size=3,
                                        **per_scale))


def vama_config(scale: str) -> ml_collections.ConfigDict:
  """`config.model.vama`: Foley-Flow's masked alignment (`vama.VAMA`, `vama.VideoEncoder`) at one scale. The
  masking ratio 0.8 is the paper's (Table 5); it gives no sizes or segment length, so every other field is a choice:
  segments of 8 latent frames at the toy (0.128 s, about one 8 fps video frame) and 16 at 62.5 latent frames per
  second otherwise; the reconstructor `width`, `depth`, `heads` (RoPE on `rope_dim` channels per head) and the
  video encoder's `encoder_depth`."""
  per_scale = {"toy": dict(width=64, depth=2, heads=4, rope_dim=8, encoder_depth=1, segment=8),
               "small": dict(width=256, depth=4, heads=4, rope_dim=32, encoder_depth=2, segment=16),
               "paper": dict(width=512, depth=6, heads=8, rope_dim=32, encoder_depth=4, segment=16)}[_check(scale)]
  return ml_collections.ConfigDict(dict(per_scale, ratio=0.8))


def codec_config() -> ml_collections.ConfigDict:
  """The toy's `codec.MelCodec`: 16 kHz, STFT 1024 / 256 (62.5 latent frames per second), 64 Slaney mel bands
  (the width of the paper's latent), 32 Griffin-Lim iterations. The `small` and `paper` scales take a pretrained
  codec (Stable Audio Open's VAE: 44.1 kHz, 64 channels, ~21.5 frames per second)."""
  return ml_collections.ConfigDict(dict(sample_rate=16000, n_fft=1024, hop=256, n_mels=64, fmin=0.0, fmax=None,
                                        floor=1e-5, ceiling=10.0, griffin_lim_iters=32, seed=0))


def _check(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"unknown VAFlow scale {scale!r}; expected one of {', '.join(SCALES)}")
  return scale

"""DAVIS model scales: `paper` is the public DAVIS-Flow MUSIC model, `toy` a CPU-sized one of the same shape.

`paper` (`Unet(dim=64, dim_mults=(1, 2, 4, 4, 8), channels=1, self_condition=True)` of the public code, run by
`scripts/run_fm.sh`): 11.025 kHz, 65,535 samples, STFT 1022 / 256 warped to a 256 x 256 input; attention at all 5
levels with `n_freqs` 256/128/64/32/16; CLIP ViT-B/32 on 11 frames; a 512-wide temporal transformer (3 encoder +
1 decoder layers, 8 heads, FF 2048). Parameters: U-Net 36,549,603, temporal transformer 13,663,232 (the public
counts; the paper's Tables 2 and 8 say 35.04 M for the U-Net).

`toy`: 8 kHz, 2,047 samples, STFT 62 / 32 without the warp: a 32 x 64 input. (A log-frequency warp of so few bins
samples its top rows ~6 bins apart and loses the toy's high band: resynthesised from their true magnitudes with the
mixture's phase, the toy's sources score −3.4 dB SDR through a 64 → 32-row warp, 28.3 dB through this linear front
end.) σ = 0.5 (`TOY_LOG_SCALE`); 3 levels of 16/16/32 channels with the TF and time attentions at the coarsest
level only; the tiny trainable frame encoder and a 32-wide 1 + 1-layer temporal transformer.

Every field of `model_config` can be overridden (`--config.model.dim_mults=...`); `audio_config` gives the front
end (`avflow.nn.spectrogram.Spectrogram`) and the video sampling that go with a scale.
"""
import ml_collections

from avflow.nn.spectrogram import LOG_SCALE, Spectrogram

SCALES = ("toy", "paper")
# The toy's σ: its 62-point STFT of sources at -20 LUFS has magnitudes ~16x below a 1022-point one, so σ = 0.15 would
# put 99 % of its bins below 0.17 (mean 0.017), a whisper against x0 ~ N(0, I); σ = 0.5 spreads them to 0.57 (none
# clipped at 1), as the paper's σ does its own spectrograms.
TOY_LOG_SCALE = 0.5


def audio_config(scale: str) -> ml_collections.ConfigDict:
  """Waveform, STFT and video sampling of one example; `bins` is the model's frequency size after the warp."""
  return ml_collections.ConfigDict({
      "toy": dict(sample_rate=8000, clip_samples=2047, n_fft=62, hop=32, bins=None, log_scale=TOY_LOG_SCALE,
                  num_frames=4, image_size=32),
      "paper": dict(sample_rate=11025, clip_samples=65535, n_fft=1022, hop=256, bins=256, log_scale=LOG_SCALE,
                    num_frames=11, image_size=224),
  }[_check(scale)])


def spectrogram(audio: ml_collections.ConfigDict) -> Spectrogram:
  """The front end of an `audio_config`."""
  return Spectrogram(n_fft=audio.n_fft, hop=audio.hop, bins=audio.bins, scale=audio.log_scale)


def model_config(scale: str) -> ml_collections.ConfigDict:
  """`config.model` of the `Separator` at one scale."""
  per_scale = {
      "paper": dict(
          dim=64, dim_mults=(1, 2, 4, 4, 8), resnet_groups=8,
          attention_levels=None,  # None: every level
          linear_attention=dict(heads=4, dim_head=32),
          attention=dict(heads=4, dim_head=32),
          time_attention=dict(heads=4, qk_dim=512),
          conditioning=dict(kind="clip", clip="vit_b32", features_key="context"),
          temporal=dict(d_model=512, heads=8, encoder_layers=3, decoder_layers=1, ff_dim=2048),
      ),
      "toy": dict(
          dim=16, dim_mults=(1, 2, 2), resnet_groups=8,
          attention_levels=(2,),
          linear_attention=dict(heads=2, dim_head=16),
          attention=dict(heads=2, dim_head=16),
          time_attention=dict(heads=2, qk_dim=64),
          conditioning=dict(kind="frames_tiny", clip="tiny", features_key="context"),
          temporal=dict(d_model=32, heads=4, encoder_layers=1, decoder_layers=1, ff_dim=64),
      ),
  }[_check(scale)]
  cfg = ml_collections.ConfigDict(per_scale)
  audio = audio_config(scale)
  cfg.freq_bins = audio.bins or audio.n_fft // 2 + 1  # rows of the U-Net input: warped, else linear
  cfg.fim_time = True  # the FIM's time FiLM (paper; `unet.py`); False is the public forward
  cfg.conv_impl = "auto"  # `avflow.nn.demucs_layers.CONV_IMPLS`
  return cfg


def _check(scale: str) -> str:
  if scale not in SCALES:
    raise ValueError(f"unknown DAVIS scale {scale!r}; expected one of {', '.join(SCALES)}")
  return scale

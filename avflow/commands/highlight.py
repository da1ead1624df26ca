"""`python -m avflow highlight INPUT OUTPUT --workdir=RUN [--steps=k] [--frames=DIR]`.

INPUT is a video (its audio track and its frames at 1 fps drive the model) or an audio file together with
`--frames`, a directory of the video's frames at 1 fps. Frames from either get CLIP's geometry, as `prepare` gives
them (`video.clip_frame`: shortest side resized, centre crop), so a video and its soundtrack with its extracted
frames give the same result. OUTPUT ending in `.wav` gets the rebalanced soundtrack (32-bit float); OUTPUT ending
in `.mp4`, `.m4v`, `.mov` or `.mkv` gets the input video with its picture stream unchanged and the new audio as AAC
at the input's bit rate. Either way the soundtrack keeps the input's sample rate and channels: the model hears
the mono mix at its own rate, and `--channels` says how its mono result fills the input's channels. OUTPUT is
checked before the model runs: it may not be an input, its missing folders are created, and it is written to a
temporary file beside it that replaces it only when complete. The windows of a long input go through the model in
batches that fit `--memory_budget` (the compiled one-window call's memory analysis says what one window needs). A run
conditioned on captions (Table 2 rows V+T, V+T+A, T) also takes `--caption="..." --text_encoder=DIR`: the caption
is encoded by the same local T5 encoder the training records were prepared with.
"""
import os
import time

import numpy as np
import soundfile as sf
from absl import flags

from avflow.commands import parse_flags  # noqa: F401
from avflow.data.video import (AAC_BITRATE, AUDIO_EXTENSIONS, VIDEO_OUTPUTS, VideoError, mono_resample, read_audio,
                               read_frames, read_video, write_video_with_audio)
from avflow.errors import UsageError
from avflow.inference import CHANNEL_MODES, describe_change, in_input_format, load_run, rebalance, speed_line
from avflow.outputs import check_output, staged_file
from avflow.train.checkpoint import run_files

flags.DEFINE_string("workdir", None, "Trained run directory (its config.json and checkpoints/).", required=True)
flags.DEFINE_string("frames", None, "For an audio INPUT: the directory of the video's frames at 1 fps, in name "
                    "order; they get the geometry `prepare` gives frames (shortest side resized, centre crop).")
flags.DEFINE_integer("steps", None, "Stop after k of the N flow steps (how strong the remix); default: all N.")
flags.DEFINE_integer("sample_rate", None, "Refuse to run unless the checkpoint was trained at this sample rate.")
flags.DEFINE_string("caption", None, "For a caption-conditioned run: the clip's caption (one text for the whole clip).")
flags.DEFINE_string("text_encoder", None, "For --caption: the local T5 encoder folder the records were prepared with.")
flags.DEFINE_float("memory_budget", 2.0, "GiB of activations one model call may use: the windows of a long input "
                   "go through the model in batches that fit (0: one window at a time).")
flags.DEFINE_enum("channels", "copy", list(CHANNEL_MODES), "; ".join(f"{k}: {v}" for k, v in CHANNEL_MODES.items()))


def _fail(message: str):
  raise SystemExit(f"avflow highlight: {message}")


def _caption_features(run, caption: str | None, encoder_dir: str | None) -> np.ndarray | None:
  """The caption's T5 features (text_tokens, text_dim) for a caption-conditioned run, else None."""
  if not run.uses_text:
    if caption is not None:
      _fail(f"the run in {flags.FLAGS.workdir} is not conditioned on captions; drop --caption")
    return None
  if caption is None or not encoder_dir:
    _fail(f"the run in {flags.FLAGS.workdir} is conditioned on a caption: pass --caption=\"...\" and "
          "--text_encoder=DIR (the local T5 folder its records were prepared with)")
  from avflow.data.text_features import TextEncoder, TextEncoderError
  try:
    return TextEncoder(encoder_dir, *run.text_shape).encode_one(caption)
  except TextEncoderError as e:
    _fail(str(e))


def _frames(folder: str, image_size: int):
  try:
    return read_frames(folder, image_size)
  except (FileNotFoundError, VideoError) as e:
    _fail(str(e))


def main(argv):
  if len(argv) != 3:
    raise UsageError("expected INPUT and OUTPUT, e.g. `python -m avflow highlight movie.mp4 out.mp4 --workdir=RUN`")
  source, output = argv[1], argv[2]
  f = flags.FLAGS
  if not os.path.exists(source):
    _fail(f"{source} does not exist")
  if f.frames and not os.path.isdir(f.frames):
    _fail(f"--frames={f.frames} is not a folder of frames")
  check_output(output, [source, f.frames, f.text_encoder, *run_files(f.workdir)], suffixes=(".wav", *VIDEO_OUTPUTS))
  is_audio = source.lower().endswith(AUDIO_EXTENSIONS)
  if is_audio and not output.lower().endswith(".wav"):
    _fail("an audio INPUT can only be written to a .wav OUTPUT")
  try:
    run = load_run(f.workdir, "highlight")
  except (FileNotFoundError, ValueError) as e:
    _fail(str(e))
  if f.sample_rate and f.sample_rate != run.sample_rate:
    _fail(f"the checkpoint in {f.workdir} was trained at {run.sample_rate} Hz, not the requested {f.sample_rate} Hz")
  text = _caption_features(run, f.caption, f.text_encoder)
  image_size = run.config.data.image_size
  if is_audio:
    if not f.frames and run.uses_frames:
      _fail(f"{source} is an audio file: pass --frames=DIR with the video's frames at 1 fps")
    native, native_rate = read_audio(source)
    bit_rate = None
    audio = mono_resample(native, native_rate, run.sample_rate)
    frames = _frames(f.frames, image_size) if f.frames else None
  else:
    video = read_video(source, run.sample_rate, image_size, run.config.data.frames_per_second)
    audio, frames = video.audio, video.frames
    native, native_rate, bit_rate = video.native_audio, video.native_rate, video.audio_bit_rate
    if f.frames:
      frames = _frames(f.frames, image_size)
  if f.memory_budget < 0:
    _fail(f"--memory_budget={f.memory_budget} GiB; expected 0 (one window at a time) or more")
  start = time.perf_counter()
  try:
    x1_hat = np.clip(rebalance(run, audio, frames, f.steps, text, f.memory_budget * 2**30), -1.0, 1.0)
  except ValueError as e:
    _fail(str(e))
  seconds, audio_seconds = time.perf_counter() - start, len(audio) / run.sample_rate
  out = np.clip(in_input_format(x1_hat, audio, run.sample_rate, native, native_rate, f.channels), -1.0, 1.0)
  channels = f"{len(out)} channel{'s' * (len(out) > 1)}"
  with staged_file(output) as partial:
    if output.lower().endswith(".wav"):
      sf.write(partial, out.T, native_rate, subtype="FLOAT")  # unquantized
      written = f"{channels} at {native_rate} Hz, 32-bit float"
    else:
      write_video_with_audio(source, out, native_rate, partial, bit_rate)
      written = f"{channels} at {native_rate} Hz, AAC {(bit_rate or AAC_BITRATE) // 1000} kbps"
  print(f"wrote {output} ({out.shape[-1] / native_rate:.2f} s of audio, {written}; the model ran in mono at "
        f"{run.sample_rate} Hz, --channels={f.channels})")
  print(describe_change(audio, x1_hat, run.sample_rate))
  print(speed_line(seconds, audio_seconds))

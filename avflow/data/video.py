"""Video I/O with PyAV: the soundtrack and 1-fps frames of a clip, and writing a video with new audio.

VisAH conditions on one CLIP image per second of video, taken every `fps`-th frame from frame 0 and
prepared with CLIP's image processor. Frames here are the frame nearest each whole second (t = 0, 1,
2, ... while t is inside the picture stream) with CLIP's geometry: the shortest side resized to N
pixels (bicubic, PIL) and a center N x N crop, kept as uint8. CLIP's mean/std normalization is left
to the model (`avflow.models.clip.preprocess_frames`), so stored frames stay plain images.

The soundtrack is averaged to mono and resampled like `librosa.load(sr=...)`, which is how the public
Muddy Mix generator reads its audio.
"""
import dataclasses
import os
import re

import av
import numpy as np
import soundfile as sf
from PIL import Image

from avflow.audio import resample
from avflow.errors import AvflowError

AAC_BITRATE = 192_000
FALLBACK_VIDEO_CODEC = "libx264"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff")  # inputs the commands read as audio, not video
VIDEO_OUTPUTS = (".mp4", ".m4v", ".mov", ".mkv")  # containers that take the copied picture stream and AAC audio


class VideoError(AvflowError, ValueError):
  """A file that cannot be read as a video (or, by `read_audio`, as audio)."""


class NoAudioTrackError(VideoError):
  """A readable video without an audio track."""


@dataclasses.dataclass
class Video:
  """A decoded clip: `frames` (F, N, N, 3) uint8, one per `1 / frames_per_second` seconds; `audio` (L,)
  float32 mono at `sample_rate`, or None when the file has no audio track; `duration` of the picture
  stream in seconds. The soundtrack as stored is kept too: `native_audio` (C, L') float32 at `native_rate`,
  and `audio_bit_rate` (bits/s, None when the container does not declare it)."""
  frames: np.ndarray
  audio: np.ndarray | None
  sample_rate: int
  duration: float
  native_audio: np.ndarray | None = None
  native_rate: int | None = None
  audio_bit_rate: int | None = None


def clip_frame(image: Image.Image, size: int) -> np.ndarray:
  """CLIP's geometry: shortest side to `size` (bicubic), center crop `size` x `size`; (size, size, 3) uint8."""
  image = image.convert("RGB")
  w, h = image.size
  short, long = min(w, h), max(w, h)
  new_long = int(size * long / short)
  nw, nh = (size, new_long) if w <= h else (new_long, size)
  if (nw, nh) != (w, h):
    image = image.resize((nw, nh), Image.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


def natural_key(name: str) -> list:
  """Sort key that orders digit runs by value: "2.png" before "10.png"."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_frames(folder: str, size: int) -> np.ndarray:
  """The frames stored as images in `folder` (.png/.jpg, in `natural_key` order) with `clip_frame`'s geometry:
  (F, size, size, 3) uint8. Raises `FileNotFoundError` for a folder without frames and `VideoError` naming an
  unreadable image."""
  names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS)), key=natural_key) \
      if os.path.isdir(folder) else []
  if not names:
    raise FileNotFoundError(f"{folder} holds no .png/.jpg frames")
  frames = []
  for name in names:
    path = os.path.join(folder, name)
    try:
      with Image.open(path) as image:
        frames.append(clip_frame(image, size))
    except OSError as e:
      raise VideoError(f"{path}: unreadable frame ({e})") from e
  return np.stack(frames)


def unreadable(path: str, error: Exception) -> VideoError:
  """A `VideoError` that says in words why PyAV or libsndfile could not read `path`."""
  if isinstance(error, FileNotFoundError):
    reason = "does not exist"
  elif isinstance(error, IsADirectoryError):
    reason = "is a folder, not a video or audio file"
  elif isinstance(error, PermissionError):
    reason = "cannot be opened (permission denied)"
  elif isinstance(error, (av.error.InvalidDataError, sf.LibsndfileError)):
    reason = "is not a video or audio file that can be decoded (invalid data)"
  else:
    reason = f"cannot be decoded ({getattr(error, 'strerror', None) or error})"
  return VideoError(f"{path} {reason}")


def read_audio(path: str) -> tuple[np.ndarray, int]:
  """The samples (C, L) float32 and sample rate of an audio file; `VideoError` when it cannot be decoded."""
  try:
    audio, sample_rate = sf.read(path, dtype="float32", always_2d=True)
  except (sf.LibsndfileError, OSError) as e:
    raise unreadable(path, e) from e
  return audio.T, sample_rate


def mono_resample(audio: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
  """(C, L) or (L,) audio → (L',) float32: the channel mean, resampled to `target_rate` (`avflow.audio.resample`)."""
  x = np.asarray(audio, dtype=np.float32)
  if x.ndim == 2:
    x = x.mean(axis=0)
  return np.ascontiguousarray(resample(x, sample_rate, target_rate))


def read_video(path: str, sample_rate: int, image_size: int, frames_per_second: float = 1.0,
               require_audio: bool = True) -> Video:
  """Decode `path` in one pass: frames at `frames_per_second` with CLIP geometry and mono audio at `sample_rate`.

  The audio runs from the first decoded sample of the first audio track to its declared end (the
  encoder's padding dropped). Raises `VideoError` for a file PyAV cannot open or decode (or one without
  a picture stream), and `NoAudioTrackError` for a video without audio when `require_audio`.
  """
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
      video = container.streams.video[0]
      video.thread_type = "AUTO"
      audio = container.streams.audio[0] if container.streams.audio else None
      if audio is None and require_audio:
        raise NoAudioTrackError(f"{path}: the video has no audio track")
      picker = _FramePicker(1.0 / frames_per_second, image_size, _frame_seconds(video))
      chunks, native_rate = [], None
      resampler = av.AudioResampler(format="fltp")
      streams = [video] + ([audio] if audio is not None else [])
      for packet in container.demux(*streams):
        for frame in packet.decode():
          if packet.stream.type == "video":
            picker.add(frame, _frame_time(frame, video))
          else:
            native_rate = frame.sample_rate
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
      if audio is not None:
        chunks += [f.to_ndarray() for f in resampler.resample(None)]
        declared = audio.duration * audio.time_base if audio.duration and audio.time_base else None
  except (av.FFmpegError, OSError) as e:
    raise unreadable(path, e) from e
  frames = picker.finish()
  if frames is None:
    raise VideoError(f"{path}: the video stream holds no decodable frames")
  if audio is None:
    return Video(frames=frames, audio=None, sample_rate=sample_rate, duration=picker.duration)
  if not chunks:
    raise VideoError(f"{path}: the audio track holds no decodable samples")
  native = np.concatenate(chunks, axis=1)
  if declared is not None:  # drop the encoder's padding after the declared end
    native = native[:, :max(1, int(round(float(declared) * native_rate)))]
  return Video(frames=frames, audio=mono_resample(native, native_rate, sample_rate), sample_rate=sample_rate,
               duration=picker.duration, native_audio=native, native_rate=native_rate,
               audio_bit_rate=audio.bit_rate or audio.codec_context.bit_rate or None)


def _frame_seconds(stream) -> float:
  rate = stream.average_rate or stream.guessed_rate
  return float(1 / rate) if rate else 0.0


def _frame_time(frame, stream) -> float | None:
  if frame.pts is None or frame.time_base is None:
    return None
  start = stream.start_time if stream.start_time is not None else 0
  return float((frame.pts - start) * frame.time_base)


class _FramePicker:
  """Streaming choice of the frame nearest each target time k * step, from 0 while inside the stream.

  Frames arrive in presentation order; a target between two frames takes the nearer (the earlier on a tie).
  """

  def __init__(self, step: float, size: int, frame_seconds: float):
    self.step, self.size, self.frame_seconds = step, size, frame_seconds
    self.picked: list[np.ndarray] = []
    self.prev = None  # (time, frame) of the latest frame
    self.duration = 0.0

  def add(self, frame, t: float | None) -> None:
    if t is None:  # no timestamp: assume a constant rate
      t = self.prev[0] + self.frame_seconds if self.prev else 0.0
    while len(self.picked) * self.step <= t:
      target = len(self.picked) * self.step
      use_prev = self.prev is not None and target - self.prev[0] <= t - target
      self.picked.append(clip_frame((self.prev[1] if use_prev else frame).to_image(), self.size))
    self.prev = (t, frame)
    self.duration = t + self.frame_seconds

  def finish(self) -> np.ndarray | None:
    """The picked frames; targets after the latest frame but before its end take that frame."""
    if self.prev is None:
      return None
    last = None
    while len(self.picked) * self.step < self.duration - 1e-9:
      if last is None:
        last = clip_frame(self.prev[1].to_image(), self.size)
      self.picked.append(last)
    return np.stack(self.picked)


def write_video_with_audio(src_video: str, audio: np.ndarray, sample_rate: int, out_path: str,
                           bit_rate: int | None = None) -> None:
  """Write `out_path` with the picture stream of `src_video` and `audio` ((L,) mono or (C, L)) as AAC at
  `sample_rate` and `bit_rate` bits/s (default `AAC_BITRATE`).

  The picture packets are copied unchanged (remuxed) when the output container accepts their codec;
  otherwise the frames are re-encoded with H.264 at the same size and timestamps. Other streams of the
  source (its old audio, subtitles) are dropped. Audio is clipped to [-1, 1].
  """
  samples = np.asarray(audio, dtype=np.float32)
  samples = np.ascontiguousarray(np.clip(samples.reshape(-1, samples.shape[-1]), -1.0, 1.0))
  layout = av.AudioLayout(f"{len(samples)}c").name  # FFmpeg's default layout for that many channels
  if not samples.size:
    raise ValueError("write_video_with_audio: the audio is empty")
  try:
    source = av.open(src_video)
  except (av.FFmpegError, OSError) as e:
    raise unreadable(src_video, e) from e
  with source:
    if not source.streams.video:
      raise VideoError(f"{src_video}: no video stream")
    in_video = source.streams.video[0]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with av.open(out_path, "w") as out:
      try:
        out_video, copy = out.add_stream_from_template(in_video), True
      except ValueError:  # the container does not accept this codec
        out_video, copy = out.add_stream(FALLBACK_VIDEO_CODEC, rate=in_video.average_rate or 25), False
        out_video.width, out_video.height = in_video.codec_context.width, in_video.codec_context.height
        out_video.pix_fmt = "yuv420p"
        out_video.options = {"crf": "18"}
      out_audio = out.add_stream("aac", rate=sample_rate, layout=layout)
      out_audio.bit_rate = bit_rate or AAC_BITRATE
      frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
      frame.sample_rate, frame.pts = sample_rate, 0
      out.mux(out_audio.encode(frame))
      out.mux(out_audio.encode(None))
      for packet in source.demux(in_video):
        if copy:
          if packet.dts is not None:
            packet.stream = out_video
            out.mux(packet)
          continue
        for picture in packet.decode():
          picture.pict_type = av.video.frame.PictureType.NONE
          out.mux(out_video.encode(picture))
      if not copy:
        out.mux(out_video.encode(None))

"""Video decoding (1-fps CLIP-geometry frames, mono audio) and writing a video with new audio, on tiny files."""
import fractions

import av
import numpy as np
import pytest
from PIL import Image

from avflow.data import video

SR = 8000


def picture(i: int, h: int = 48, w: int = 64) -> np.ndarray:
  """A frame that differs from every other: a gradient, a moving bar and an index-dependent colour."""
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
  img[..., 1] = (40 * i) % 256
  img[:, (5 * i) % w] = 255
  return img


def make_video(path, seconds=3.0, fps=10, audio=None, sample_rate=SR, codec="mpeg4", size=(64, 48), bit_rate=None):
  """Encode `seconds` of `picture(i)` frames at `fps` (a Fraction is fine) and optional `audio` ((L,) mono or
  (C, L)) as AAC at `bit_rate` (FFmpeg's default if None)."""
  fps = fractions.Fraction(fps)
  if audio is not None:
    audio = np.asarray(audio, np.float32).reshape(-1, np.shape(audio)[-1])
    layout = av.AudioLayout(f"{len(audio)}c").name
  with av.open(str(path), "w") as out:
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    if audio is not None:
      sound = out.add_stream("aac", rate=sample_rate, layout=layout)
      if bit_rate:
        sound.bit_rate = bit_rate
    for i in range(int(round(seconds * fps))):
      frame = av.VideoFrame.from_ndarray(picture(i, size[1], size[0]), format="rgb24")
      frame.pts = i
      out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    if audio is not None:
      frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
      frame.sample_rate, frame.pts = sample_rate, 0
      out.mux(sound.encode(frame))
      out.mux(sound.encode(None))
  return str(path)


def tone(seconds: float, hz: float = 440.0, sr: int = SR) -> np.ndarray:
  return (0.3 * np.sin(2 * np.pi * hz * np.arange(int(seconds * sr)) / sr)).astype(np.float32)


def decoded_pictures(path):
  with av.open(str(path)) as c:
    return [(f.time, f.to_ndarray(format="rgb24"), f.to_image()) for f in c.decode(video=0)]


def test_read_video_frames_and_audio(tmp_path):
  path = make_video(tmp_path / "a.mp4", seconds=3.5, fps=10, audio=tone(3.5))
  v = video.read_video(path, SR, image_size=16)
  assert v.frames.shape == (4, 16, 16, 3) and v.frames.dtype == np.uint8  # t = 0, 1, 2, 3 s
  assert v.duration == pytest.approx(3.5)
  assert v.sample_rate == SR and v.audio.dtype == np.float32 and v.audio.shape == (28000,)
  assert np.corrcoef(v.audio, tone(3.5))[0, 1] > 0.99
  pictures = decoded_pictures(path)
  for k in range(4):
    np.testing.assert_array_equal(v.frames[k], video.clip_frame(pictures[10 * k][2], 16))
  assert video.read_video(path, 2 * SR, image_size=16).audio.shape == (56000,)


def test_frames_are_nearest_to_each_second(tmp_path):
  # 4/3 fps: frames at 0, 0.75, 1.5, 2.25, 3.0 s; the nearest to 1 s and 2 s are frames 1 and 3.
  path = make_video(tmp_path / "b.mp4", seconds=3.75, fps=fractions.Fraction(4, 3), audio=tone(3.75))
  v = video.read_video(path, SR, image_size=24)
  pictures = decoded_pictures(path)
  assert [p[0] for p in pictures] == pytest.approx([0, 0.75, 1.5, 2.25, 3.0])
  assert v.frames.shape[0] == 4
  for k, index in enumerate([0, 1, 3, 4]):
    np.testing.assert_array_equal(v.frames[k], video.clip_frame(pictures[index][2], 24))


def test_clip_frame_geometry():
  img = Image.fromarray(picture(3, h=48, w=64))
  out = video.clip_frame(img, 32)  # shortest side 48 -> 32, long side 64 -> 42, centre crop 32
  expected = np.asarray(img.resize((42, 32), Image.BICUBIC))[:, 5:37]
  np.testing.assert_array_equal(out, expected)
  tall = video.clip_frame(Image.fromarray(picture(1, h=64, w=48)), 16)
  assert tall.shape == (16, 16, 3) and tall.dtype == np.uint8


def test_read_video_errors(tmp_path):
  silent = make_video(tmp_path / "silent.mp4", seconds=2.0)
  with pytest.raises(video.NoAudioTrackError, match="no audio track"):
    video.read_video(silent, SR, 16)
  v = video.read_video(silent, SR, 16, require_audio=False)
  assert v.audio is None and v.frames.shape == (2, 16, 16, 3)
  garbage = tmp_path / "garbage.mp4"
  garbage.write_bytes(b"this is not a video" * 50)
  with pytest.raises(video.VideoError, match=r"garbage.mp4 is not a video or audio file that can be decoded \(invalid"):
    video.read_video(str(garbage), SR, 16)
  with pytest.raises(video.VideoError, match="missing.mp4 does not exist"):
    video.read_video(str(tmp_path / "missing.mp4"), SR, 16)
  with pytest.raises(video.VideoError, match="garbage.mp4 is not a video or audio file that can be decoded"):
    video.read_audio(str(garbage))


@pytest.mark.parametrize("codec,suffix,exact", [("mpeg4", "mp4", True), ("rawvideo", "mkv", False)])
def test_write_video_with_audio(tmp_path, codec, suffix, exact):
  """The picture stream is kept (remuxed; re-encoded only when the container refuses the codec)."""
  src = make_video(tmp_path / f"src.{suffix}", seconds=2.0, fps=10, audio=tone(2.0, 220.0), codec=codec)
  new = tone(1.5, 660.0)
  out = str(tmp_path / "out.mp4")
  video.write_video_with_audio(src, new, SR, out)
  before, after = decoded_pictures(src), decoded_pictures(out)
  assert len(after) == len(before) == 20
  assert [t for t, _, _ in after] == pytest.approx([t for t, _, _ in before])
  for (_, a, _), (_, b, _) in zip(before, after):
    if exact:
      np.testing.assert_array_equal(a, b)
    else:
      assert np.abs(a.astype(int) - b).mean() < 8
  with av.open(out) as c:
    assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
    assert (c.streams.video[0].codec_context.name == codec) == exact
  v = video.read_video(out, SR, 16)
  assert v.duration == pytest.approx(2.0, abs=0.1)
  assert v.audio.shape == new.shape
  assert np.corrcoef(v.audio, new)[0, 1] > 0.99


def test_native_soundtrack_kept_and_written_back_in_its_format(tmp_path):
  """A stereo 16 kHz track at 64 kbps: read keeps it as stored, and writing (C, L) keeps channels, rate, bit rate."""
  sr = 16000
  left, right = tone(2.0, 220.0, sr), tone(2.0, 550.0, sr)
  src = make_video(tmp_path / "stereo.mp4", seconds=2.0, fps=10, audio=np.stack([left, right]), sample_rate=sr,
                   bit_rate=64_000)
  v = video.read_video(src, SR, 16)
  assert v.native_rate == sr and v.native_audio.shape[0] == 2 and v.audio.shape == (2 * SR,)
  assert 48_000 <= v.audio_bit_rate <= 80_000
  def corr(a, b):
    return np.corrcoef(a[2000:30000], b[2000:30000])[0, 1]
  assert corr(v.native_audio[0], left) > 0.97 and corr(v.native_audio[1], right) > 0.97
  assert abs(corr(v.native_audio[0], right)) < 0.2
  out = str(tmp_path / "out.mp4")
  video.write_video_with_audio(src, v.native_audio[::-1], sr, out, v.audio_bit_rate)
  w = video.read_video(out, SR, 16)
  assert w.native_rate == sr and w.native_audio.shape[0] == 2
  assert abs(w.audio_bit_rate - v.audio_bit_rate) < 16_000
  assert corr(w.native_audio[0], right) > 0.95 and corr(w.native_audio[1], left) > 0.95


def test_read_frames_in_natural_order_with_clip_geometry(tmp_path):
  for i in (1, 2, 10):
    Image.fromarray(picture(i)).save(tmp_path / f"{i}.png")
  (tmp_path / "notes.txt").write_text("not a frame")
  got = video.read_frames(str(tmp_path), 16)
  want = [video.clip_frame(Image.fromarray(picture(i)), 16) for i in (1, 2, 10)]  # "10.png" sorts last
  np.testing.assert_array_equal(got, np.stack(want))
  (tmp_path / "11.png").write_bytes(b"not an image")
  with pytest.raises(video.VideoError, match="11.png: unreadable frame"):
    video.read_frames(str(tmp_path), 16)
  with pytest.raises(FileNotFoundError, match="holds no .png/.jpg frames"):
    video.read_frames(str(tmp_path / "missing"), 16)

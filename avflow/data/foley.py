"""Toy foley: clips whose frames show events and whose audio holds their sounds, a small stand-in for the
video-to-audio data of VAFlow.

A clip holds 1 to `max_events` events, each of one of `CLASSES`. An event strikes at a frame time k / fps: its
object (a shape and colour of its own class, `SHAPES`, `COLOURS`) appears at a random place in frame k and stays
`visible_frames` frames, and its sound, of a timbre of its own class, starts at sample k / fps · sample_rate:

- bell: a pitched, decaying tone of inharmonic partials (fundamental 500-800 Hz; partials above 0.45 · sample_rate
  are left out);
- drum: a decaying burst of low-passed noise (cut-off 120-250 Hz);
- rattle: a train of clicks (50-80 per second, each a damped 2.5-3.5 kHz ring), fading out;
- whistle: a sine sweeping up or down between 1 and 3 kHz.

Onsets sit on the frame grid and at least `MIN_GAP_SECONDS` apart, so the frames give every event's time and class
exactly; what the audio carries beyond them (pitch, decay, click rate, sweep, the event's level, a faint noise floor)
is drawn at random, independently of the frames, so audio can only be matched to a clip by watching it. Each clip
also has a caption naming its events, e.g. "a bell rings twice, then a drum is hit", and one caption per class it
holds ("a bell rings twice"; `class_captions`). Its audio is the noise floor plus one stem per class, the sounds of
that class's events alone (step-by-step foley, NAG, generates them one track at a time). Everything is deterministic
in `(seed, split, index)` and vectorized numpy.
"""
import math
import operator

import numpy as np

SPLITS = ("train", "val", "test")
CLASSES = ("bell", "drum", "rattle", "whistle")
SHAPES = ("disc", "square", "cross", "triangle")  # per class
COLOURS = np.array([[235, 200, 30], [215, 35, 35], [35, 75, 225], [30, 185, 60]], dtype=np.float64)  # per class
PHRASES = ("a bell rings", "a drum is hit", "a rattle shakes", "a whistle blows")
TIMES = {1: "", 2: " twice", 3: " three times"}
MIN_SAMPLE_RATE = 8000  # the whistle reaches 3 kHz
EVENT_SECONDS = 0.3  # every sound ends (with a 10 ms release) within this of its onset
RELEASE_SECONDS = 0.01
MIN_GAP_SECONDS = 0.35  # between onsets: more than twice a ±0.1 s onset tolerance, and more than an event's sound
VISIBLE_SECONDS = 0.2  # how long an object stays on screen (rounded to whole frames, at least one)
EVENT_PEAK = (0.3, 0.8)  # range of an event's peak amplitude; sounds never overlap, so a clip peaks below 0.9
NOISE_FLOOR = (1e-3, 4e-3)  # range of the background noise's standard deviation
FOLEY_STREAM = 2  # the last entry of a clip's seed, so foley clips and toy movies never share a random stream


class ToyFoley:
  """Indexable toy foley clips; `ToyFoley(num_clips=..., split=...)[i]` is a dict:

  `clip_id` (str), `audio` (L,) float32, `frames` (F, H, W, 3) uint8 (frame f shows the time f / fps), `events` (a
  list of (time_s, class) with class an index into `CLASSES`, in time order), `caption` (str), `class_captions` (a
  list of (class, caption), one per class of the clip in order of first appearance), `stems` (len(CLASSES), L)
  float32 (each class's sounds alone, silent for the classes the clip lacks) and `noise` (L,) float32 (the noise
  floor): `audio` is `noise + stems.sum(0)` rounded to float32 once, as sounds never overlap. Different splits never
  share clips.
  """

  def __init__(self, sample_rate: int = MIN_SAMPLE_RATE, clip_seconds: float = 2.0, frames_per_second: float = 8,
               image_size: int = 32, num_clips: int = 1024, seed: int = 0, split: str = "train", max_events: int = 3):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if sample_rate < MIN_SAMPLE_RATE:
      raise ValueError(f"sample_rate={sample_rate}; expected at least {MIN_SAMPLE_RATE} (the whistle reaches 3 kHz)")
    if max_events < 1:
      raise ValueError(f"max_events={max_events}; expected at least 1")
    self.sample_rate = int(sample_rate)
    self.frames_per_second = float(frames_per_second)
    self.num_samples = int(round(sample_rate * clip_seconds))
    self.num_frames = int(round(clip_seconds * frames_per_second))
    self.image_size = int(image_size)
    self.num_clips = int(num_clips)
    self.seed = int(seed)
    self.split = split
    self.max_events = int(max_events)
    self.visible_frames = max(1, int(round(VISIBLE_SECONDS * frames_per_second)))
    self.gap_frames = math.ceil(MIN_GAP_SECONDS * frames_per_second)
    # Onset frames: from 1 (a sound at sample 0 has no onset to hear) to the last whose sound and object both fit.
    self.last_onset = min(self.num_frames - self.visible_frames,
                          math.floor((clip_seconds - EVENT_SECONDS) * frames_per_second))
    if self.gap_frames <= self.visible_frames:
      raise ValueError(f"frames_per_second={frames_per_second}: an object stays {self.visible_frames} frames and "
                       f"onsets are {self.gap_frames} frames apart, so one event's object would run into the next "
                       "one's; expected more frames per second")
    if self.last_onset < 1:
      raise ValueError(f"clip_seconds={clip_seconds}: expected room for one event after the first frame "
                       f"({EVENT_SECONDS + 1 / frames_per_second:.3g} s or more)")
    # The most events that fit with `gap_frames` between onsets.
    self.capacity = min(self.max_events, 1 + (self.last_onset - 1) // self.gap_frames)

  def __len__(self) -> int:
    return self.num_clips

  def __getitem__(self, index) -> dict:
    i = operator.index(index)
    if i < 0:
      i += self.num_clips
    if not 0 <= i < self.num_clips:
      raise IndexError(f"index {index} out of range for {self.num_clips} clips")
    rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i, FOLEY_STREAM])
    onsets = self._onset_frames(rng)
    classes = rng.integers(len(CLASSES), size=onsets.size)
    sr, fps = self.sample_rate, self.frames_per_second
    noise = rng.uniform(*NOISE_FLOOR) * rng.standard_normal(self.num_samples)
    stems = np.zeros((len(CLASSES), self.num_samples))
    for k, c in zip(onsets, classes):
      a = int(round(k / fps * sr))
      sound = SOUNDS[c](rng, sr, min(int(EVENT_SECONDS * sr), self.num_samples - a))
      stems[c, a:a + sound.size] += rng.uniform(*EVENT_PEAK) / np.max(np.abs(sound)) * sound
    events = [(float(k / fps), int(c)) for k, c in zip(onsets, classes)]
    return dict(clip_id=f"foley-{self.split}-s{self.seed}-{i:06d}", audio=(noise + stems.sum(0)).astype(np.float32),
                frames=self._frames(rng, onsets, classes), events=events, caption=caption([c for _, c in events]),
                class_captions=class_captions([c for _, c in events]), stems=stems.astype(np.float32),
                noise=noise.astype(np.float32))

  def _onset_frames(self, rng) -> np.ndarray:
    """Onset frames of 1..capacity events (count uniform), uniform over the sets at least `gap_frames` apart."""
    n = int(rng.integers(1, self.capacity + 1))
    slack = self.last_onset - 1 - (n - 1) * (self.gap_frames - 1)  # slots left when n - 1 gaps are set aside
    return 1 + np.sort(rng.choice(slack + 1, size=n, replace=False)) + np.arange(n) * (self.gap_frames - 1)

  def _frames(self, rng, onsets: np.ndarray, classes: np.ndarray) -> np.ndarray:
    size = self.image_size
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    # A dull backdrop (grey, a tint, a vertical gradient) far from every class colour.
    background = rng.uniform(60.0, 150.0) + rng.uniform(-10.0, 10.0, 3)
    background = background * (1.0 + rng.uniform(-0.2, 0.2) * (yy - 0.5))[..., None]
    out = np.broadcast_to(background, (self.num_frames, size, size, 3)).copy()
    for k, c in zip(onsets, classes):
      radius = rng.uniform(0.15, 0.25)
      cx, cy = rng.uniform(radius, 1.0 - radius, 2)
      mask = _shape_mask(SHAPES[c], (xx - cx) / radius, (yy - cy) / radius)
      colour = COLOURS[c] * rng.uniform(0.9, 1.05)
      out[k:k + self.visible_frames, mask] = colour
    out += rng.normal(0.0, 4.0, out.shape)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def class_captions(classes) -> list[tuple[int, str]]:
  """(class, its caption) for each class of a clip whose events have `classes` in time order, in order of first
  appearance, with the class's count, e.g. [(0, "a bell rings twice"), (1, "a drum is hit")]."""
  order = list(dict.fromkeys(int(c) for c in classes))
  counts = [sum(int(c) == k for c in classes) for k in order]
  return [(k, PHRASES[k] + TIMES.get(n, f" {n} times")) for k, n in zip(order, counts)]


def caption(classes) -> str:
  """The caption of a clip whose events have `classes` in time order: its `class_captions` joined, e.g. "a bell
  rings twice, then a drum is hit"."""
  return ", then ".join(text for _, text in class_captions(classes))


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Pixels of `shape`, with (u, v) the pixel's offset from its centre in radii (v down)."""
  if shape == "disc":
    return u ** 2 + v ** 2 < 1.0
  if shape == "square":
    return (np.abs(u) < 0.8) & (np.abs(v) < 0.8)
  if shape == "cross":
    return ((np.abs(u) < 0.3) | (np.abs(v) < 0.3)) & (np.abs(u) < 1.0) & (np.abs(v) < 1.0)
  return (v < 0.8) & (np.abs(u) < (v + 1.0) * 0.5)  # triangle, apex up


# ---------------------------------------------------------------------------------------------
# Sounds: `length` samples each, silent after EVENT_SECONDS - RELEASE_SECONDS; the caller sets the level.

def _envelope(sr: int, length: int, attack: float, decay: float) -> np.ndarray:
  t = np.arange(length) / sr
  release = np.clip((EVENT_SECONDS - t) / RELEASE_SECONDS, 0.0, 1.0)
  return np.minimum(t / attack, 1.0) * np.exp(-t / decay) * release


def _shaped_noise(rng, sr: int, length: int, gain) -> np.ndarray:
  """White noise through the magnitude response `gain(f)` (f in Hz), by FFT."""
  spectrum = np.fft.rfft(rng.standard_normal(length))
  return np.fft.irfft(spectrum * gain(np.fft.rfftfreq(length, 1.0 / sr)), length)


def _bell(rng, sr: int, length: int) -> np.ndarray:
  t = np.arange(length) / sr
  f0 = rng.uniform(500.0, 800.0)
  partials = sum(a * np.sin(2.0 * np.pi * r * f0 * t + rng.uniform(0, 2 * np.pi))
                 for r, a in ((1.0, 1.0), (2.76, 0.5), (5.4, 0.25)) if r * f0 < 0.45 * sr)
  return partials * _envelope(sr, length, 0.002, rng.uniform(0.06, 0.12))


def _drum(rng, sr: int, length: int) -> np.ndarray:
  cutoff = rng.uniform(120.0, 250.0)
  noise = _shaped_noise(rng, sr, length, lambda f: 1.0 / np.sqrt(1.0 + (f / cutoff) ** 4))
  return noise * _envelope(sr, length, 0.001, rng.uniform(0.03, 0.07))


def _rattle(rng, sr: int, length: int) -> np.ndarray:
  """Identical clicks (a damped 2.5-3.5 kHz ring) at a steady rate: a periodic train, so its spectrum holds still."""
  train = np.zeros(length)
  train[np.arange(0.0, length, sr / rng.uniform(50.0, 80.0)).astype(int)] = 1.0
  t = np.arange(int(0.004 * sr)) / sr
  click = np.exp(-t / 0.0007) * np.sin(2.0 * np.pi * rng.uniform(2500.0, 3500.0) * t)
  return np.convolve(train, click)[:length] * _envelope(sr, length, 0.0005, rng.uniform(0.08, 0.15))


def _whistle(rng, sr: int, length: int) -> np.ndarray:
  t = np.arange(length) / sr
  low, high = rng.uniform(1000.0, 1500.0), rng.uniform(2200.0, 3000.0)
  start, end = (low, high) if rng.random() < 0.5 else (high, low)
  hz = start * (end / start) ** np.minimum(t / EVENT_SECONDS, 1.0)  # exponential sweep
  phase = 2.0 * np.pi * np.cumsum(hz) / sr + rng.uniform(0, 2 * np.pi)
  return np.sin(phase) * _envelope(sr, length, 0.001, rng.uniform(0.1, 0.2))


SOUNDS = (_bell, _drum, _rattle, _whistle)  # per class

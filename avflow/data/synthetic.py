"""Toy movies: a small synthetic stand-in for the Muddy Mix dataset.

Each clip has the three Muddy Mix stems (VisAH-FM Sec. 2.1: speech, music, effects), here
synthesized, and frames at `frames_per_second` that show which source is on screen (a face, an
instrument or an explosion over a cluttered background). The well-balanced original puts the
on-screen source forward: it sits at -20 LUFS and the others at -30 LUFS (+-2 LU), so the target
balance is a function of the frames, which is what makes visually guided highlighting learnable.
One off-screen stem is silent in a few clips, like the silent stems of the public data.
With `layout="bands"` (the toy default) each source is kept to its own frequency band (speech below
1 kHz, music 1-2 kHz, effects above 2 kHz), so a model of a few thousand parameters can learn the
rebalancing in minutes; `layout="natural"` keeps the full, overlapping spectra of the three sources.
Everything is deterministic in `(seed, split, index)` and vectorized numpy: a 2-s clip at 16 kHz
costs about 15 ms of CPU, loudness measurement included.
"""
import operator

import numpy as np

from avflow.metrics.loudness import SOURCES, stem_loudness

SPLITS = ("train", "val", "test")
LAYOUTS = ("bands", "natural")
# Per source (ordered like `SOURCES`), the band in Hz that `layout="bands"` keeps.
BANDS = ((0.0, 1000.0), (1000.0, 2000.0), (2000.0, np.inf))
BAND_EDGE_OCTAVES = 0.1  # width of the raised-cosine transition at each band edge
ON_SCREEN_LUFS = -20.0
OFF_SCREEN_LUFS = -30.0
LUFS_JITTER = 2.0
SILENT_PROB = 0.05
PEAK_LIMIT = 0.9
N_FFT = 512
HOP = N_FFT // 2


class ToyMovies:
  """Indexable toy dataset; `ToyMovies(**audio_config(scale), num_clips=..., split=...)`.

  `ds[i]` is a dict: `clip_id` (str), `stems` (3, L) float32 ordered like `SOURCES`, `frames`
  (F, H, W, 3) uint8, `on_screen` (int index into `SOURCES`), `loudness` (3,) float32 LUFS of
  the stems (-inf for a silent stem). Different splits never share clips.
  """

  def __init__(self, sample_rate: int = 16000, clip_seconds: float = 2.0,
               frames_per_second: float = 1, image_size: int = 32, num_clips: int = 1024,
               seed: int = 0, split: str = "train", layout: str = "bands"):
    if split not in SPLITS:
      raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if layout not in LAYOUTS:
      raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    self.sample_rate = int(sample_rate)
    self.num_samples = max(1, int(round(sample_rate * clip_seconds)))
    self.num_frames = max(1, int(round(clip_seconds * frames_per_second)))
    self.image_size = int(image_size)
    self.num_clips = int(num_clips)
    self.seed = int(seed)
    self.split = split
    self.layout = layout

  def __len__(self) -> int:
    return self.num_clips

  def __getitem__(self, index) -> dict:
    return self.clip(index)

  def clip(self, index, shown: int | None = None) -> dict:
    """`self[index]`, its frames showing source `shown` (an index into `SOURCES`) in place of the on-screen one:
    the same background, clutter, motion and noise, another object. Separation pairs picture any stem this way;
    the audio, `on_screen` and `loudness` are those of `self[index]`."""
    if shown is not None and shown not in range(len(SOURCES)):
      raise ValueError(f"shown={shown!r}; expected an index into {SOURCES}")
    i = operator.index(index)
    if i < 0:
      i += self.num_clips
    if not 0 <= i < self.num_clips:
      raise IndexError(f"index {index} out of range for {self.num_clips} clips")
    rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])
    sr, n = self.sample_rate, self.num_samples
    on_screen = int(rng.integers(len(SOURCES)))
    raw = np.stack([_speech(rng, sr, n), _music(rng, sr, n), _effects(rng, sr, n)])
    if self.layout == "bands":
      raw = np.stack([_bandpass(x, sr, *band) for x, band in zip(raw, BANDS)])

    target = OFF_SCREEN_LUFS + rng.uniform(-LUFS_JITTER, LUFS_JITTER, size=3)
    target[on_screen] = ON_SCREEN_LUFS + rng.uniform(-LUFS_JITTER, LUFS_JITTER)
    if rng.random() < SILENT_PROB:
      off = [c for c in range(len(SOURCES)) if c != on_screen]
      target[off[int(rng.integers(2))]] = -np.inf
    raw_lufs = stem_loudness(raw, sr)
    target[np.isneginf(raw_lufs)] = -np.inf
    gain = np.where(np.isneginf(target), 0.0,
                    10.0 ** ((target - np.where(np.isneginf(raw_lufs), 0.0, raw_lufs)) / 20.0))
    stems = raw * gain[:, None]
    peak = np.max(np.abs(stems.sum(axis=0)))
    if peak > PEAK_LIMIT:  # a pure gain shifts every stem's loudness by the same dB
      scale = (1.0 - 1e-4) * PEAK_LIMIT / peak  # margin for the float32 rounding
      stems *= scale
      target += 20.0 * np.log10(scale)

    return dict(
        clip_id=f"toy-{self.split}-s{self.seed}-{i:06d}",
        stems=stems.astype(np.float32),
        frames=_frames(rng, on_screen if shown is None else shown, self.image_size, self.num_frames),
        on_screen=on_screen,
        loudness=target.astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------
# Signal helpers. Time-domain synthesis runs in float32 (several times faster than float64 for
# the transcendental functions); spectra use sqrt-Hann frames with 50 % overlap (exact inverse).

WINDOW = np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N_FFT) / N_FFT))


def _num_frames(n: int) -> int:
  return -(-n // HOP) + 1


def _stft(x: np.ndarray) -> np.ndarray:
  """(T, N_FFT // 2 + 1) spectra; frame k is centred on sample k * HOP."""
  t = _num_frames(x.size)
  padded = np.zeros((t + 1) * HOP)
  padded[HOP:HOP + x.size] = x
  blocks = padded.reshape(t + 1, HOP)
  return np.fft.rfft(np.concatenate([blocks[:-1], blocks[1:]], axis=1) * WINDOW, axis=1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
  frames = np.fft.irfft(spec, N_FFT, axis=1) * WINDOW
  blocks = np.zeros((spec.shape[0] + 1, HOP))
  blocks[:-1] += frames[:, :HOP]
  blocks[1:] += frames[:, HOP:]
  return blocks.reshape(-1)[HOP:HOP + n]


def _bandpass(x: np.ndarray, sr: int, low: float, high: float) -> np.ndarray:
  """`x` with only [low, high) Hz left, through raised-cosine edges `BAND_EDGE_OCTAVES` wide."""
  octaves = np.log2(np.maximum(np.fft.rfftfreq(N_FFT, 1.0 / sr), 1e-3))

  def rise(edge):  # 0 below the edge, 1 above it; an edge at 0 Hz (log −∞) or ∞ clips to all 1 or all 0
    with np.errstate(divide="ignore"):
      u = np.clip((octaves - np.log2(edge)) / BAND_EDGE_OCTAVES + 0.5, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * u)

  return _istft(_stft(x) * (rise(low) - rise(high)), x.size).astype(np.float32)


def _noise_spectra(rng, t: int) -> np.ndarray:
  """Spectra of white noise frames (complex Gaussian), to be shaped and inverted."""
  return rng.standard_normal((t, 2 * (N_FFT // 2 + 1))).view(np.complex128)


def _seconds(m: int, sr: int) -> np.ndarray:
  return np.arange(m, dtype=np.float32) / np.float32(sr)


def _frac(x: np.ndarray) -> np.ndarray:
  return x - np.floor(x)


def _lookup(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
  """Read a one-period table at phases in cycles (nearest entry)."""
  return table[(_frac(phase) * np.float32(table.size)).astype(np.int32) % table.size]


# ---------------------------------------------------------------------------------------------
# Speech: glottal pulses through moving formant resonators, syllable envelopes, fricatives.

# (F1, F2, F3, F4) in Hz of a, i, u, e, o and a schwa (adult male averages; F4 fixed).
VOWELS = np.array([[730, 1090, 2440, 3500], [270, 2290, 3010, 3500], [300, 870, 2240, 3500],
                   [530, 1840, 2480, 3500], [570, 840, 2410, 3500], [500, 1500, 2500, 3500]],
                  dtype=np.float64)
BANDWIDTHS = np.array([80.0, 100.0, 150.0, 250.0])
TABLE_SIZE = 4096


def _glottal_table() -> np.ndarray:
  """Derivative of a Rosenberg glottal pulse (opening 40 %, closing 20 % of a period), i.e. the
  glottal flow with lip radiation, over one period."""
  p = np.arange(TABLE_SIZE) / TABLE_SIZE
  slope = np.where(p < 0.4, 0.5 * np.pi / 0.4 * np.sin(np.pi * p / 0.4),
                   np.where(p < 0.6, -0.5 * np.pi / 0.2 * np.sin(0.5 * np.pi * (p - 0.4) / 0.2), 0.0))
  return slope.astype(np.float32)


GLOTTAL = _glottal_table()


def _speech(rng, sr: int, n: int) -> np.ndarray:
  dur = n / sr
  f0_base = rng.uniform(95.0, 230.0)
  fscale = (1.0 + 0.2 * (f0_base - 95.0) / 135.0) * rng.uniform(0.95, 1.05)
  syllables, fricatives = [], []
  t = rng.uniform(0.0, 0.1)
  while True:
    if rng.random() < 0.6:  # consonant onset
      length = rng.uniform(0.03, 0.08)
      fricatives.append((t, t + length, rng.uniform(2000.0, 5000.0)))
      t += length
    length = rng.uniform(0.12, 0.28)
    syllables.append((t, t + length, int(rng.integers(len(VOWELS))), rng.uniform(0.6, 1.0),
                      rng.normal(0.0, 1.5), rng.uniform(-2.0, 2.0)))
    t += length + rng.uniform(0.03, 0.1) + (rng.uniform(0.15, 0.35) if rng.random() < 0.15 else 0)
    if t >= dur - 0.1:
      break

  time = _seconds(n, sr)
  voicing = np.zeros(n, dtype=np.float32)
  knots_t, knots_st = [], []
  for start, end, _, amp, accent, slope in syllables:
    a, b = int(start * sr), min(n, int(end * sr))
    if a < b:
      u = np.arange(b - a, dtype=np.float32) / np.float32(int(end * sr) - a)
      voicing[a:b] = amp * np.sin(np.float32(np.pi) * u) ** 0.6 * (1.0 - 0.3 * u)
    declination = -2.0 * start / dur
    knots_t += [start, end]
    knots_st += [declination + accent, declination + accent + slope]
  semitones = np.interp(time, knots_t, knots_st).astype(np.float32)
  vibrato = 0.01 * np.sin(np.float32(2.0 * np.pi * rng.uniform(4.0, 6.0)) * time)
  f0 = np.float32(f0_base) * np.exp2(semitones / 12.0) * (1.0 + vibrato)
  source = _lookup(GLOTTAL, np.cumsum(f0 / np.float32(sr))) * (f0 / np.float32(f0_base))
  source += 0.05 * np.std(source) * rng.standard_normal(n, dtype=np.float32)  # breath noise
  voiced = _stft(source * voicing)

  frames = voiced.shape[0]
  frame_t = np.arange(frames) * HOP / sr
  freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
  centres = [0.5 * (s[0] + s[1]) for s in syllables]
  formants = VOWELS[[s[2] for s in syllables]] * fscale * rng.uniform(0.95, 1.05, (len(syllables), 4))
  tracks = np.stack([np.interp(frame_t, centres, formants[:, k]) for k in range(4)], axis=-1)
  f2 = freqs.astype(np.float32)[None, :, None] ** 2
  fk2 = tracks.astype(np.float32)[:, None, :] ** 2
  voiced *= np.prod(fk2 / np.sqrt((fk2 - f2) ** 2 + f2 * BANDWIDTHS.astype(np.float32) ** 2), axis=-1)

  fric_env = np.zeros(frames)
  cutoff = np.full(frames, 4000.0)
  for start, end, fc in fricatives:
    inside = (frame_t >= start) & (frame_t < end)
    fric_env[inside] = np.sin(np.pi * (frame_t[inside] - start) / (end - start)) + 0.3
    cutoff[inside] = fc
  active = np.flatnonzero(fric_env)
  highpass = (freqs[None] / cutoff[active, None]) ** 4
  noise = _noise_spectra(rng, active.size) * (fric_env[active, None] * highpass / (1.0 + highpass))
  e_voiced = np.sum(np.abs(voiced) ** 2) / max(1, np.count_nonzero(voicing))
  e_noise = np.sum(np.abs(noise) ** 2) / max(1, active.size * HOP)
  if e_noise > 0:  # fricatives 12 dB below the vowels
    voiced[active] += noise * (np.sqrt(e_voiced / e_noise) * 10.0 ** (-12.0 / 20.0))
  return _istft(voiced, n)


# ---------------------------------------------------------------------------------------------
# Music: a bass line, chords and a melody of harmonic notes with decaying envelopes.

SCALES = (np.array([0, 2, 4, 5, 7, 9, 11]), np.array([0, 2, 3, 5, 7, 8, 10]))


def _midi_hz(m) -> float:
  return 440.0 * 2.0 ** ((float(m) - 69.0) / 12.0)


def _harmonic_table(rng, amps: np.ndarray) -> np.ndarray:
  """One period of a harmonic waveform with random phases, peak 1."""
  k = np.arange(1, amps.size + 1)[:, None]
  x = np.arange(TABLE_SIZE) / TABLE_SIZE
  table = amps @ np.sin(2.0 * np.pi * k * x + rng.uniform(0, 2 * np.pi, (amps.size, 1)))
  return (table / np.max(np.abs(table))).astype(np.float32)


def _timbre(rng, sr: int, f_max: float) -> np.ndarray:
  """A random instrument timbre, band-limited for notes up to `f_max` Hz."""
  k = np.arange(1, max(1, min(8, int(0.45 * sr / f_max))) + 1)
  return _harmonic_table(rng, k ** -rng.uniform(0.8, 2.0) * np.where(k % 2, 1.0, rng.uniform(0.3, 1.0)))


def _add_note(out, rng, table, sr, hz, start, end, amp, attack, decay):
  a, b = int(start * sr), min(out.size, int(end * sr))
  if a >= b:
    return
  t = _seconds(b - a, sr)
  env = np.minimum(t / np.float32(attack), 1.0) * np.exp(t / np.float32(-decay))
  release = min(b - a, int(0.005 * sr) + 1)
  env[-release:] *= np.linspace(1.0, 0.0, release, dtype=np.float32)
  out[a:b] += np.float32(amp) * env * _lookup(table, np.float32(rng.random()) + np.float32(hz) * t)


def _music(rng, sr: int, n: int) -> np.ndarray:
  dur = n / sr
  out = np.zeros(n, dtype=np.float32)
  root = int(rng.integers(45, 57))
  scale = SCALES[int(rng.integers(2))]
  beat = 60.0 / rng.uniform(90.0, 150.0)
  sustained = rng.random() < 0.5  # pad-like chords, else piano-like decays
  chord_table = _timbre(rng, sr, _midi_hz(root + 24))
  bass_table = _timbre(rng, sr, _midi_hz(root))
  melody_table = _timbre(rng, sr, _midi_hz(root + 41))

  t = 0.0
  while t < dur:
    length = beat * int(rng.integers(2, 5))
    degree = int(rng.integers(7))
    for step in (0, 2, 4):
      d = degree + step
      midi = root + 12 + scale[d % 7] + 12 * (d // 7)
      _add_note(out, rng, chord_table, sr, _midi_hz(midi), t, t + length, 0.3,
                0.08 if sustained else 0.005, 2.0 if sustained else rng.uniform(0.3, 0.8))
    _add_note(out, rng, bass_table, sr, _midi_hz(root - 12 + scale[degree]), t, t + length, 0.5,
              0.01, rng.uniform(0.4, 1.0))
    t += length

  t = rng.uniform(0.0, 0.5) * beat
  degree = int(rng.integers(14, 21))
  while t < dur:
    length = beat * rng.choice([0.5, 1.0, 1.5, 2.0])
    degree = int(np.clip(degree + rng.integers(-2, 3), 14, 23))
    midi = root + scale[degree % 7] + 12 * (degree // 7)
    _add_note(out, rng, melody_table, sr, _midi_hz(midi), t, t + length, 0.6, 0.01,
              rng.uniform(0.2, 0.6))
    t += length
  return out


# ---------------------------------------------------------------------------------------------
# Effects: a hum or a wind bed, plus impacts, explosions and whooshes of shaped noise.

def _lowpass_noise(rng, sr: int, m: int, cutoff: float) -> np.ndarray:
  """m samples of unit-variance noise under a 2nd-order low-pass response at `cutoff` Hz."""
  size = -(-m // HOP) * HOP  # a length with small prime factors keeps the FFT fast
  f = np.fft.rfftfreq(size, 1.0 / sr)
  x = np.fft.irfft(np.fft.rfft(rng.standard_normal(size)) / np.sqrt(1.0 + (f / cutoff) ** 4), size)
  return (x[:m] / (np.std(x) + 1e-12)).astype(np.float32)


def _effects(rng, sr: int, n: int) -> np.ndarray:
  dur = n / sr
  time = _seconds(n, sr)
  frames = _num_frames(n)
  frame_t = np.arange(frames) * HOP / sr
  freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
  out = np.zeros(n, dtype=np.float32)
  shaped = np.zeros((frames, freqs.size))  # noise components: per-frame RMS times band shape

  def band(centre, octaves):
    shape = 1.0 / (1.0 + (np.log2(freqs[None] / centre[:, None] + 1e-3) / octaves) ** 2)
    return shape / np.sqrt(np.sum(shape ** 2, axis=1, keepdims=True))

  # A noise bed (wind, rumble or rain), drifting slowly in level and colour.
  drift = np.sin(2.0 * np.pi * rng.uniform(0.2, 0.8) * frame_t + rng.uniform(0, 2 * np.pi))
  centre = rng.choice([800.0, 150.0, 3000.0]) * 2.0 ** (rng.uniform(0.0, 0.7) * drift)
  shaped += rng.uniform(0.05, 0.15) * (1.0 + 0.3 * drift[:, None]) * band(centre, 1.5)
  if rng.random() < 0.4:  # mains or engine hum with a slow swell
    hum = _lookup(_harmonic_table(rng, 1.0 / np.arange(1, 7)), np.float32(rng.uniform(45.0, 120.0)) * time)
    swell = 1.0 + 0.3 * np.sin(np.float32(2.0 * np.pi * rng.uniform(0.3, 2.0)) * time)
    out += np.float32(rng.uniform(0.05, 0.1)) * hum * swell

  for _ in range(int(rng.integers(1, 4))):
    t0 = rng.uniform(0.0, max(0.0, dur - 0.2))
    a = int(t0 * sr)
    kind = int(rng.integers(3))
    if kind == 0:  # impact: a noise crack and a falling low thump
      m = min(n - a, int(0.5 * sr))
      t = _seconds(m, sr)
      crack = _lowpass_noise(rng, sr, m, rng.uniform(1500.0, 6000.0))
      crack *= np.exp(t / np.float32(-rng.uniform(0.02, 0.08)))
      thump_hz = np.float32(rng.uniform(45.0, 90.0)) * (1.0 + np.exp(t / np.float32(-0.05)))
      thump = np.sin(np.float32(2.0 * np.pi / sr) * np.cumsum(thump_hz))
      thump *= np.exp(t / np.float32(-rng.uniform(0.08, 0.2)))
      out[a:a + m] += np.float32(rng.uniform(0.5, 1.0)) * (0.3 * crack + thump)
    elif kind == 1:  # explosion: a long dark noise burst
      m = n - a
      t = _seconds(m, sr)
      burst = _lowpass_noise(rng, sr, m, rng.uniform(500.0, 2000.0))
      envelope = np.minimum(t / 0.01, 1.0) * np.exp(t / np.float32(-rng.uniform(0.2, 0.6)))
      out[a:a + m] += 0.4 * burst * envelope
    else:  # whoosh: a band of noise sweeping up or down
      length = rng.uniform(0.3, 0.9)
      u = np.clip((frame_t - t0) / length, 0.0, 1.0)
      env = np.where((frame_t >= t0) & (frame_t < t0 + length), np.sin(np.pi * u) ** 2, 0.0)
      lo, hi = np.log(rng.uniform(300.0, 1000.0)), np.log(rng.uniform(2000.0, 6000.0))
      centre = np.exp(lo + (hi - lo) * (u if rng.random() < 0.5 else 1.0 - u))
      shaped += rng.uniform(0.2, 0.4) * env[:, None] * band(centre, 0.5)
  # Complex Gaussian frames of unit power per unit of `shaped`, after the 1/N of the inverse FFT.
  return out + (0.5 * N_FFT * _istft(_noise_spectra(rng, frames) * shaped, n)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Frames: the on-screen source's object at a random, drifting position over clutter.

SKIN = np.array([[235, 195, 165], [210, 160, 120], [175, 120, 85], [135, 90, 60]], dtype=np.float64)
INSTRUMENT = np.array([[40, 80, 220], [30, 170, 210], [140, 50, 200], [40, 170, 80]],
                      dtype=np.float64)
FIRE = np.array([[255, 245, 170], [255, 150, 20], [210, 40, 10]], dtype=np.float64)


def _frames(rng, on_screen: int, size: int, num_frames: int) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
  image = rng.uniform(50.0, 170.0) + rng.normal(0.0, 6.0, 3)
  image = image * (1.0 + rng.uniform(-0.3, 0.3) * (yy / size - 0.5))[..., None]
  for _ in range(int(rng.integers(3, 7))):  # muted clutter: boxes and bars
    x0, y0 = rng.uniform(0, size, 2)
    w, h = rng.uniform(0.05, 0.35, 2) * size
    box = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
    image = np.where(box[..., None], rng.uniform(30.0, 220.0) + rng.normal(0.0, 8.0, 3), image)

  radius = rng.uniform(0.25, 0.35) * size
  centre = rng.uniform(radius, size - radius, 2)
  velocity = rng.uniform(-0.06, 0.06, 2) * size
  angle = rng.uniform(-0.5, 0.5)
  draw = (_face, _instrument, _explosion)[on_screen]
  params = (rng.integers(len(SKIN)), rng.integers(len(INSTRUMENT)), rng.uniform(0.85, 1.1),
            int(rng.integers(5, 9)), rng.uniform(0, 2 * np.pi))
  out = np.empty((num_frames, size, size, 3), dtype=np.uint8)
  for f in range(num_frames):
    cx, cy = np.clip(centre + f * velocity, radius, size - radius)
    c, s = np.cos(angle), np.sin(angle)
    u = (c * (xx - cx) + s * (yy - cy)) / radius
    v = (-s * (xx - cx) + c * (yy - cy)) / radius
    frame = draw(image, u, v, params)
    frame = frame + rng.normal(0.0, 4.0, frame.shape)
    out[f] = np.clip(np.round(frame), 0, 255).astype(np.uint8)
  return out


def _paint(image, mask, colour):
  return np.where(mask[..., None], colour, image)


def _face(image, u, v, params):
  """A skin-toned oval with hair, eyes and a red mouth."""
  skin = SKIN[params[0]] * params[2]
  head = (u / 0.75) ** 2 + v ** 2 < 1.0
  image = _paint(image, head, skin)
  image = _paint(image, head & (v < -0.5), np.array([45.0, 30.0, 20.0]))
  eyes = (np.abs(u) - 0.32) ** 2 + (v + 0.1) ** 2 < 0.15 ** 2
  image = _paint(image, eyes, np.array([20.0, 20.0, 25.0]))
  return _paint(image, (np.abs(u) < 0.35) & (np.abs(v - 0.45) < 0.09), np.array([180.0, 40.0, 50.0]))


def _instrument(image, u, v, params):
  """A guitar-like body in a saturated cool colour, with a dark hole, a neck and strings."""
  body = (u ** 2 + (v - 0.35) ** 2 < 0.55 ** 2) | (u ** 2 + (v + 0.15) ** 2 < 0.42 ** 2)
  image = _paint(image, body, INSTRUMENT[params[1]] * params[2])
  image = _paint(image, (np.abs(u) < 0.12) & (v > -1.0) & (v < -0.3), np.array([70.0, 45.0, 30.0]))
  image = _paint(image, u ** 2 + (v - 0.2) ** 2 < 0.17 ** 2, np.array([15.0, 15.0, 20.0]))
  return _paint(image, (np.abs(u) < 0.05) & (v > -1.0) & (v < 0.7), np.array([235.0, 230.0, 200.0]))


def _explosion(image, u, v, params):
  """A spiky burst, white-yellow at the core through orange to red at the rim."""
  rho = np.hypot(u, v)
  theta = np.arctan2(v, u)
  rim = 0.6 + 0.4 * np.abs(np.sin(0.5 * params[3] * theta + params[4])) ** 3
  r = np.clip(rho / rim, 0.0, 1.0) * 2.0
  colour = np.where((r < 1.0)[..., None], FIRE[0] + (FIRE[1] - FIRE[0]) * r[..., None],
                    FIRE[1] + (FIRE[2] - FIRE[1]) * (r[..., None] - 1.0))
  return np.where((rho < rim)[..., None], colour, image)

"""A trained run on audio of any length: rebalancing (the `highlight` command) and separation (`separate`).

`load_run` reads a run of either task (`avflow.tasks`). The audio is cut into windows of the model's clip length
with 25% overlap (`WINDOW_HOP`), and `predict_windows` joins the windows' results with linear cross-fades.

Highlighting: each window is carried along the flow from x0 (t=0) for k of the N steps (k = N: the full remix;
fewer steps: a gentler one, Sec. 9) with the frames (1 per second) that fall in it. Runs conditioned on captions
(Table 2 rows V+T, V+T+A, T) take the caption's T5 features, the same for every window. The model hears and writes
mono at its own rate; `in_input_format` brings its soundtrack back to the input's channels and rate
(`CHANNEL_MODES`).

Separation (DAVIS-Flow, DAVIS): each window of the mixture is separated with `data.num_frames` frames spread
uniformly over its time span from its start, as the training clips' frames are (`window_frames`).
"""
import dataclasses

import jax
import librosa
import numpy as np
import scipy.interpolate

from avflow import tasks
from avflow.audio import resample
from avflow.configs_lib import set_field
from avflow.metrics.loudness import integrated_loudness
from avflow.train import checkpoint
from avflow.train.step import jit, make_predict_fn

# Task name (`Task.name`) → the runs it trains, for the message that refuses a run of the other task.
RUN_KINDS = {"highlight": "highlighting run (VisAH-FM, VisAH)", "separate": "separation run (DAVIS-Flow, DAVIS)",
             "v2a": "video-to-audio run (VAFlow)", "nag": "step-by-step foley run (NAG)"}
# Task name → the command that runs its runs on a video.
RUN_COMMANDS = {"highlight": "highlight", "separate": "separate", "v2a": "generate", "nag": "foley"}


@dataclasses.dataclass
class LoadedRun:
  config: object
  params: object
  predict: object

  @property
  def sample_rate(self) -> int:
    return int(self.config.data.sample_rate)

  @property
  def clip_length(self) -> int:
    """Samples of one model window: `data.clip_samples` (separation), else `data.clip_seconds` at the run's rate."""
    data = self.config.data
    return int(data.clip_samples) if "clip_samples" in data else int(round(data.sample_rate * data.clip_seconds))

  @property
  def uses_frames(self) -> bool:
    return self.config.model.conditioning.kind != "features"

  @property
  def uses_text(self) -> bool:
    cond = self.config.model.conditioning
    return ((cond.kind == "clip_adapter" and "text" in cond.modalities)
            or (cond.kind == "features" and cond.features_key == "text"))

  @property
  def text_shape(self) -> tuple[int, int]:
    """(text_tokens, width) of a caption's features: T5's width through the adapter, the context width alone."""
    cond = self.config.model.conditioning
    return cond.text_tokens, cond.text_dim if cond.kind == "clip_adapter" else self.config.model.latent.context_dim

  @property
  def frames_per_clip(self) -> int:
    return max(1, int(round(self.config.data.clip_seconds * self.config.data.frames_per_second)))


def load_run(run_dir: str, task: str | None = None, step: int | None = None,
             inference: dict | None = None) -> LoadedRun:
  """The config, parameters (latest checkpoint, or `step`) and jitted `predict(params, batch, stop_after)` of a run;
  `inference` ({field: value}) replaces fields of the run's `config.inference` before the sampler is built.

  Raises `ValueError` for a run of another task than `task` (a `Task.name`; None: any) and for a run conditioned on
  precomputed frame features, which cannot read a video's frames."""
  config = checkpoint.load_config(run_dir)
  found = tasks.get(config)
  if task is not None and found.name != task:
    raise ValueError(f"{run_dir} is a {RUN_KINDS[found.name]} with config.task={config.task!r}, not a "
                     f"{RUN_KINDS[task]}: use `python -m avflow {RUN_COMMANDS[found.name]}`")
  for name, value in (inference or {}).items():
    set_field(config, f"inference.{name}", value)
  cond = config.model.conditioning
  if cond.kind == "features" and cond.features_key != "text":
    raise ValueError(f"{run_dir} conditions on precomputed {cond.features_key!r} features; running on a video "
                     "needs a run whose model.conditioning encodes the frames themselves")
  params = checkpoint.load_params(run_dir, step)
  return LoadedRun(config, params, jit(make_predict_fn(found.build(config.model), config), static_argnums=2))


WINDOW_HOP = 0.75  # windows start every 3/4 of the model's clip length (25% overlap)


def window_starts(length: int, window: int, hop: int) -> list[int]:
  if length <= window:
    return [0]
  starts = list(range(0, length - window, hop))
  return starts + [length - window]


def _window_batch(run: LoadedRun, starts: list[int], padded: np.ndarray, frames, text) -> dict:
  """The model inputs of the windows starting at `starts` (one example each)."""
  window, fps = run.clip_length, run.config.data.frames_per_second
  batch = {"x0": np.stack([padded[s:s + window, None] for s in starts])}
  if run.uses_frames:
    firsts = [int(s / run.sample_rate * fps) for s in starts]
    batch["frames"] = np.stack([frames[np.clip(np.arange(f, f + run.frames_per_clip), 0, len(frames) - 1)]
                                for f in firsts])
  if text is not None:
    batch["text"] = np.repeat(text, len(starts), axis=0)
  return batch


def window_bytes(run: LoadedRun, example: dict, steps: int | None) -> int | None:
  """Bytes one window's model call needs besides the parameters (temporaries, inputs, outputs), from the compiled
  one-window call's memory analysis; None where the backend gives none."""
  memory = run.predict.lower(run.params, example, steps).compile().memory_analysis()
  if memory is None:
    return None
  params = sum(x.nbytes for x in jax.tree.leaves(run.params))
  return memory.temp_size_in_bytes + memory.output_size_in_bytes + memory.argument_size_in_bytes - params


def windows_per_batch(run: LoadedRun, example: dict, steps: int | None, memory_budget: float) -> int:
  """How many windows one call may carry within `memory_budget` bytes (`window_bytes` each). Runs whose context
  encoder attends across the batch (`legacy_batch_axis`) take one window at a time: batching would change their
  result."""
  latent = run.config.model.get("latent")
  if latent is not None and latent.context_attention == "legacy_batch_axis":
    return 1
  per_window = window_bytes(run, example, steps)
  return 1 if per_window is None else max(1, int(memory_budget // max(per_window, 1)))


def rebalance(run: LoadedRun, audio: np.ndarray, frames: np.ndarray | None, steps: int | None = None,
              text: np.ndarray | None = None, memory_budget: float = 0.0) -> np.ndarray:
  """The rebalanced (L,) soundtrack for mono `audio` (L,) at the run's rate, `frames` (F, H, W, 3) at 1 fps (None
  for a text-only run) and, for a caption-conditioned run, the caption's `text` features (text_tokens, text_dim).

  Windows go through the model in batches that fit `memory_budget` bytes (`predict_windows`); each window's result
  is the one it gets alone, up to float rounding.
  """
  n = run.config.inference.num_steps
  if steps is not None and not 0 <= steps <= n:
    raise ValueError(f"--steps must be in [0, {n}] (the model integrates over {n} steps), got {steps}")
  if run.uses_text:
    if text is None:
      raise ValueError("this run is conditioned on a caption: give its T5 features (--caption and --text_encoder)")
    if tuple(text.shape) != run.text_shape:
      raise ValueError(f"caption features of shape {tuple(text.shape)}; this run expects {run.text_shape} "
                       "(model.conditioning.text_tokens, text width)")
    text = np.asarray(text, np.float32)[None]
  elif text is not None:
    raise ValueError("this run is not conditioned on captions; drop --caption")
  if run.uses_frames and frames is None:
    raise ValueError("this run is conditioned on the video's frames; none were given")
  padded = np.pad(audio.astype(np.float32), (0, max(0, run.clip_length - len(audio))))
  return predict_windows(run, len(audio), lambda starts: _window_batch(run, starts, padded, frames, text), steps,
                         memory_budget)


def predict_windows(run: LoadedRun, length: int, window_batch, steps: int | None = None,
                    memory_budget: float = 0.0) -> np.ndarray:
  """The model's (length,) output for an input of `length` samples: windows of `run.clip_length` samples start
  every `WINDOW_HOP` of it (`window_starts`; the last ends at the input's end, and an input shorter than a window
  is one window that `window_batch` pads), each window's (window,) result weighs in with linear cross-fades.

  `window_batch(starts)` gives the model inputs of the windows starting at `starts` (one example each). Windows go
  through the model in batches that fit `memory_budget` bytes (`windows_per_batch`; 0: one at a time); the last
  batch is filled up with copies of its last window, so every call has the same shape (one compile).
  """
  window = run.clip_length
  hop = int(window * WINDOW_HOP)
  out = np.zeros(max(length, window), np.float32)
  weight = np.zeros_like(out)
  fade = window - hop
  ramp = np.ones(window, np.float32)
  ramp[:fade] = np.linspace(0, 1, fade + 2, dtype=np.float32)[1:-1]
  ramp[-fade:] = ramp[:fade][::-1]
  starts = window_starts(len(out), window, hop)
  size = 1
  if memory_budget and len(starts) > 1:
    size = min(len(starts), windows_per_batch(run, window_batch(starts[:1]), steps, memory_budget))
  for first in range(0, len(starts), size):
    chunk = starts[first:first + size]
    pred = np.asarray(run.predict(run.params, window_batch(chunk + chunk[-1:] * (size - len(chunk))), steps)[0])
    for start, result in zip(chunk, pred.reshape(size, window)):
      out[start:start + window] += ramp * result
      weight[start:start + window] += ramp
  return (out / np.maximum(weight, 1e-8))[:length]


def model_frame_rate(run: LoadedRun) -> float:
  """The frame rate at which one window spans `data.num_frames` frames (frames per second)."""
  return run.config.data.num_frames * run.sample_rate / run.clip_length


def window_frames(run: LoadedRun, starts: list[int], frame_rate: float, count: int) -> np.ndarray:
  """(len(starts), data.num_frames) indices into `count` frames at `frame_rate` fps (frame i shows the time
  i / frame_rate): for the window starting at sample s, the frames nearest the times (s + k · clip_length /
  num_frames) / sample_rate, k < num_frames, spread uniformly over its span from its start as a training clip's
  frames are; times past the last frame take the last."""
  n = run.config.data.num_frames
  seconds = (np.asarray(starts, np.float64)[:, None] + np.arange(n) * run.clip_length / n) / run.sample_rate
  return np.clip(np.rint(seconds * frame_rate).astype(np.int64), 0, count - 1)


def separate(run: LoadedRun, mixture: np.ndarray, frames: np.ndarray, frame_rate: float,
             memory_budget: float = 0.0) -> np.ndarray:
  """The (L,) waveform of the source `frames` show, separated from the mono `mixture` (L,) at the run's rate: the
  estimated magnitude with the mixture's phase (DAVIS-Flow, DAVIS; Alg. 2). `frames` (F, S, S, 3) uint8 at
  `frame_rate` fps, S = `data.image_size`. Window by window (`predict_windows`, `window_frames`); an input
  shorter than a window is padded with silence and the result trimmed.  Every window starts from the same x0 (DAVIS-Flow's Gaussian source, DAVIS's noise, drawn from `inference.seed`),
  so the result does not depend on `memory_budget`.
  """
  size = run.config.data.image_size
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or not len(frames):
    raise ValueError(f"frames of shape {frames.shape}; this run reads (F >= 1, {size}, {size}, 3) (data.image_size)")
  if not len(mixture):
    raise ValueError("the mixture holds no samples")
  if not frame_rate > 0:
    raise ValueError(f"a frame rate of {frame_rate} frames per second; expected a positive rate")
  window = run.clip_length
  padded = np.pad(np.asarray(mixture, np.float32), (0, max(0, window - len(mixture))))
  frames = frames.astype(np.uint8)

  def window_batch(starts):
    return {"mixture": np.stack([padded[s:s + window] for s in starts]),
            "frames": frames[window_frames(run, starts, frame_rate, len(frames))]}

  return predict_windows(run, len(mixture), window_batch, memory_budget=memory_budget)


def generate(run: LoadedRun, frames: np.ndarray, seconds: float) -> tuple[np.ndarray, int]:
  """The (L,) audio a video-to-audio run (VAFlow) generates for `frames` (T_v, S, S, 3) uint8 at the run's
  `data.frames_per_second`, and the sampler's NFE. The frames go through the model in one pass (the prior's
  interpolation and convolutions and the DiT's attention take any length): the latents of the span the frames cover
  (T_v / fps s), decoded by the run's codec and cut to `seconds` (L = `seconds` at the run's rate)."""
  from avflow.tasks import v2a
  config = run.config
  if config.model.stage == "prior":
    raise ValueError("the run pretrains the alignment VAE (model.stage='prior') and has no velocity field yet: "
                     "generate with a run of the next stage, which starts from it (configs/vaflow.py:"
                     "<scale>_prior_frozen with --config.init_from=RUN)")
  size = config.data.image_size
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[1:] != (size, size, 3) or not len(frames):
    raise ValueError(f"frames of shape {frames.shape}; this run reads (T_v >= 1, {size}, {size}, 3) (data.image_size)")
  length = int(round(seconds * run.sample_rate))
  if not 0 < length <= v2a.num_samples(config, len(frames)):
    raise ValueError(f"{seconds:.3f} s of audio from {len(frames)} frames at {config.data.frames_per_second} fps: "
                     "expected a duration within the frames' span")
  latents, generation = run.predict(run.params, {"frames": frames.astype(np.uint8)[None]}, None)
  audio = v2a.decode(config, latents, v2a.num_samples(config, len(frames)))[0]
  return audio[:length], int(generation.nfe)


# How a mono model's soundtrack fills the input's channels.
CHANNEL_MODES = {
    "copy": "the model's soundtrack, resampled to the input's rate, in every channel",
    "gain": "the model's time-frequency gain |x̂|/|x0| applied to each input channel: keeps the stereo image and, "
            "above the model's band, the input's highs (at the gain of the model's top octave)",
}
GAIN_WINDOW_SECONDS = 0.064


def _gain_stft(x: np.ndarray, rate: int):
  """STFT with a GAIN_WINDOW_SECONDS window at any rate: (spectrum, bin frequencies in Hz, frame times in s)."""
  n_fft = 2 * int(round(GAIN_WINDOW_SECONDS * rate / 2))
  hop = n_fft // 4
  spec = librosa.stft(x, n_fft=n_fft, hop_length=hop)
  return spec, librosa.fft_frequencies(sr=rate, n_fft=n_fft), np.arange(spec.shape[-1]) * hop / rate, hop


def in_input_format(x1_hat: np.ndarray, x0: np.ndarray, rate: int, native: np.ndarray, native_rate: int,
                    mode: str = "copy") -> np.ndarray:
  """The model's soundtrack `x1_hat` (L,) at `rate`, computed from the mono mix `x0` (L,), in the format of the
  input's own soundtrack `native` (C, L') at `native_rate`: (C, L') float32, by `mode` (`CHANNEL_MODES`)."""
  if mode not in CHANNEL_MODES:
    raise ValueError(f"unknown channel mode {mode!r}; expected one of {sorted(CHANNEL_MODES)}")
  native = np.asarray(native, np.float32).reshape(-1, np.shape(native)[-1])
  length = native.shape[-1]
  if mode == "copy":
    mono = resample(x1_hat, rate, native_rate)
    mono = np.pad(mono, (0, max(0, length - len(mono))))[:length]
    return np.repeat(mono[None], len(native), axis=0)
  pred, freqs, times, _ = _gain_stft(np.asarray(x1_hat, np.float32), rate)
  mix, _, _, _ = _gain_stft(np.asarray(x0, np.float32), rate)
  eps = 1e-4 * np.abs(mix).max() + 1e-12  # where the mix is silent the gain is 1, not noise / 0
  gain = (np.abs(pred) + eps) / (np.abs(mix) + eps)
  top = freqs >= freqs[-1] / 2  # the model's top octave, whose energy ratio carries on above its band
  top_gain = np.sqrt((np.sum(np.abs(pred[top]) ** 2, 0) + eps ** 2) / (np.sum(np.abs(mix[top]) ** 2, 0) + eps ** 2))
  spec, native_freqs, native_times, hop = _gain_stft(native, native_rate)
  t = np.clip(native_times, times[0], times[-1])
  inside = native_freqs <= freqs[-1]
  grid = np.stack(np.meshgrid(native_freqs[inside], t, indexing="ij"), axis=-1)
  native_gain = np.empty(spec.shape[-2:], np.float64)
  native_gain[inside] = scipy.interpolate.RegularGridInterpolator((freqs, times), gain)(grid)
  native_gain[~inside] = np.interp(t, times, top_gain)[None]
  out = librosa.istft(spec * native_gain, hop_length=hop, n_fft=2 * (spec.shape[-2] - 1), length=length)
  return out.astype(np.float32)


def describe_change(x0: np.ndarray, x1_hat: np.ndarray, rate: int) -> str:
  """One line on what the model changed: integrated loudness before and after, and the change's level."""
  before, after = integrated_loudness(x0, rate), integrated_loudness(x1_hat, rate)
  change = 10 * np.log10(np.sum((x1_hat - x0) ** 2) / max(np.sum(x0 ** 2), 1e-20) + 1e-20)
  return (f"the model moved the mix's loudness from {before:.1f} to {after:.1f} LUFS; the change itself lies "
          f"{-change:.1f} dB below the input")


def speed_line(seconds: float, audio_seconds: float) -> str:
  """One line on how long the model took for `audio_seconds` of audio."""
  return (f"the model took {seconds:.1f} s for {audio_seconds:.1f} s of audio ({3600 * seconds / audio_seconds:.0f} s "
          "per hour, compilation included)")

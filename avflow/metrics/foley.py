"""Video-to-audio metrics that need no pretrained network: toy stand-ins for the Fréchet distance, semantic and
synchronisation scores that VAFlow reports with pretrained networks (FD_pas, KL, Acc).

- **Onset sync** (`onset_sync`): onsets detected in generated audio by librosa's spectral-flux onset detector
  (`detect_onsets`) against the reference event times, matched one to one within ±`ONSET_TOLERANCE` s
  (`mir_eval.onset.f_measure`); F1, precision and recall per clip, averaged over clips.
- **Fréchet distance** (`audio_frechet_distance`): the Gaussian Fréchet distance between two sets of audio on a
  fixed embedding, each clip's per-band mean and standard deviation over time of its log-mel spectrogram
  (`audio_embedding`, 2 · `N_MELS` numbers).
- **Event-class accuracy** (`train_event_classifier`, `event_class_accuracy`): a small multi-label MLP on the
  log-mel statistics, trained deterministically on real clips, predicts the set of event classes a clip holds.

The log-mel spectrogram (`log_mel`) has a window of about 64 ms (`n_fft` the nearest power of two), a hop of a
quarter window and `N_MELS` bands from 0 Hz to Nyquist; every metric here reads audio at its own sample rate.
"""
import dataclasses
import functools
import math
import warnings
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import librosa
import mir_eval
import numpy as np
import optax
import scipy.linalg

ONSET_TOLERANCE = 0.1  # s: a detected onset matches a reference event within ± this
ONSET_WAIT = 0.1  # s: the detector keeps at most one onset within this of another
# dB: the least spectral flux (mean rise of the log-mel bands per frame) an onset needs; a steady noise floor
# fluctuates by up to about 2 dB, the softest toy foley onset (a whistle's) rises by 4 or more.
ONSET_THRESHOLD = 3.0
N_MELS = 32
WINDOW_SECONDS = 0.064
LOG_FLOOR = 1e-10  # added to the mel power before the log: silence is at -100 dB


def _geometry(sample_rate: int) -> tuple[int, int]:
  n_fft = 2 ** round(math.log2(WINDOW_SECONDS * sample_rate))
  return n_fft, n_fft // 4


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int) -> np.ndarray:
  return librosa.filters.mel(sr=sample_rate, n_fft=_geometry(sample_rate)[0], n_mels=N_MELS, fmin=0.0,
                             fmax=sample_rate / 2)


def log_mel(audio, sample_rate: int) -> np.ndarray:
  """`audio (L,)` -> mel power in dB `(N_MELS, T)`, 10 log10(mel + `LOG_FLOOR`); frame t is centred on sample
  t · hop, the signal reflected at its ends."""
  x = np.asarray(audio, np.float32)
  if x.ndim != 1:
    raise ValueError(f"expected a clip of shape (L,), got {x.shape}")
  n_fft, hop = _geometry(sample_rate)
  power = np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, pad_mode="reflect")) ** 2
  # einsum's own loop: a product this small costs more in waking BLAS threads than in arithmetic.
  return 10.0 * np.log10(np.einsum("mf,ft->mt", _mel_basis(sample_rate), power) + LOG_FLOOR)


# ---------------------------------------------------------------------------------------------
# Onset sync.

def detect_onsets(audio, sample_rate: int) -> np.ndarray:
  """Onset times in seconds, by librosa's onset detector on `log_mel`: its spectral flux (`onset_strength`: the mean
  rise in dB of the bands from one frame to the next) less `ONSET_THRESHOLD` dB, clipped at 0 and peak-picked with
  peaks at least `ONSET_WAIT` s apart. Silence, steady noise and slow sweeps give no onsets."""
  n_fft, hop = _geometry(sample_rate)
  flux = librosa.onset.onset_strength(S=log_mel(audio, sample_rate), sr=sample_rate, n_fft=n_fft, hop_length=hop)
  return librosa.onset.onset_detect(onset_envelope=np.maximum(flux - ONSET_THRESHOLD, 0.0), sr=sample_rate,
                                    hop_length=hop, units="time", normalize=False, delta=1e-6,
                                    wait=int(round(ONSET_WAIT * sample_rate / hop)))


def onset_sync(audio: Sequence, event_times: Sequence, sample_rate: int,
               tolerance: float = ONSET_TOLERANCE) -> dict:
  """Onset-sync accuracy of clips `audio[i]` (L_i,) against their reference event times `event_times[i]` (seconds):
  {"f1", "precision", "recall"} of `mir_eval.onset.f_measure` (one-to-one matches within ± `tolerance` s), each the
  mean over clips (NaN for no clips), and "count" (clips). A clip without detected onsets scores 0."""
  if len(audio) != len(event_times):
    raise ValueError(f"{len(audio)} clips of audio but {len(event_times)} lists of event times")
  scores = []
  for x, times in zip(audio, event_times):
    with warnings.catch_warnings():  # mir_eval warns on an empty list; an empty detection is a valid 0
      warnings.filterwarnings("ignore", message=".*onsets are empty", category=UserWarning)
      scores.append(mir_eval.onset.f_measure(np.sort(np.asarray(times, np.float64)), detect_onsets(x, sample_rate),
                                             window=tolerance))
  f1, precision, recall = np.mean(scores, axis=0) if scores else (math.nan,) * 3
  return {"f1": float(f1), "precision": float(precision), "recall": float(recall), "count": len(scores)}


# ---------------------------------------------------------------------------------------------
# Fréchet distance.

def audio_embedding(audio: Sequence, sample_rate: int) -> np.ndarray:
  """Clips `audio[i]` (L_i,) -> `(N, 2 · N_MELS)` float64: each clip's log-mel mean over time, then its standard
  deviation over time, per band."""
  mels = [log_mel(x, sample_rate) for x in audio]
  return np.stack([np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in mels]).astype(np.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), the squared 2-Wasserstein distance between two Gaussians.

  A singular product (fewer clips than dimensions) gets 1e-6 · I added to both covariances, as the FID reference
  code does; the square root's imaginary round-off is dropped."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
    raise ValueError(f"expected means (D,) and covariances (D, D) of one D, got {mu1.shape}, {sigma1.shape}, "
                     f"{mu2.shape}, {sigma2.shape}")
  root = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(root)):
    offset = 1e-6 * np.eye(mu1.size)
    root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(root.real))


def audio_frechet_distance(audio_a: Sequence, audio_b: Sequence, sample_rate: int) -> float:
  """The Fréchet distance (in dB²) between two sets of clips, each two or more, on `audio_embedding`: the Gaussians
  of the sets' embeddings, with their means and (unbiased) covariances."""
  if len(audio_a) < 2 or len(audio_b) < 2:
    raise ValueError(f"a Fréchet distance needs two or more clips per set, got {len(audio_a)} and {len(audio_b)}")
  a, b = audio_embedding(audio_a, sample_rate), audio_embedding(audio_b, sample_rate)
  return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


# ---------------------------------------------------------------------------------------------
# Event-class accuracy.

def classifier_features(audio: Sequence, sample_rate: int) -> np.ndarray:
  """Clips -> `(N, 3 · N_MELS)` float32: each clip's log-mel mean, standard deviation and maximum over time."""
  mels = [log_mel(x, sample_rate) for x in audio]
  return np.stack([np.concatenate([m.mean(axis=1), m.std(axis=1), m.max(axis=1)]) for m in mels]).astype(np.float32)


class EventMLP(nn.Module):
  """Standardized features -> one logit per class (multi-label): Dense, ReLU, Dense."""
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


@dataclasses.dataclass(frozen=True)
class EventClassifier:
  """A trained `EventMLP` with its feature standardization; `probabilities(audio)` -> `(N, num_classes)`."""
  params: dict
  feature_mean: np.ndarray
  feature_std: np.ndarray
  sample_rate: int
  num_classes: int
  hidden: int

  def probabilities(self, audio: Sequence) -> np.ndarray:
    x = (classifier_features(audio, self.sample_rate) - self.feature_mean) / self.feature_std
    logits = EventMLP(self.hidden, self.num_classes).apply(self.params, jnp.asarray(x))
    return np.asarray(jax.nn.sigmoid(logits))


def _multi_hot(classes: Sequence, num_classes: int) -> np.ndarray:
  out = np.zeros((len(classes), num_classes), np.float32)
  for i, cs in enumerate(classes):
    for c in cs:
      if not 0 <= int(c) < num_classes:
        raise ValueError(f"class {c} of clip {i} is not in [0, {num_classes})")
      out[i, int(c)] = 1.0
  return out


@functools.partial(jax.jit, static_argnames=("hidden", "steps", "learning_rate", "weight_decay"))
def _fit(params, x, y, hidden: int, steps: int, learning_rate: float, weight_decay: float):
  """`steps` full-batch AdamW steps on the mean sigmoid cross-entropy of `EventMLP` on (x, y), one `lax.scan`."""
  model, tx = EventMLP(hidden, y.shape[1]), optax.adamw(learning_rate, weight_decay=weight_decay)

  def step(carry, _):
    p, state = carry
    grads = jax.grad(lambda q: optax.sigmoid_binary_cross_entropy(model.apply(q, x), y).mean())(p)
    updates, state = tx.update(grads, state, p)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), length=steps)
  return params


def train_event_classifier(examples: Sequence, sample_rate: int, num_classes: int, hidden: int = 32,
                           steps: int = 500, learning_rate: float = 1e-2, weight_decay: float = 1e-3,
                           seed: int = 0) -> EventClassifier:
  """Trains an `EventClassifier` on `examples`, (audio (L,), classes) pairs with classes the event classes the clip
  holds (any iterable of ints, repeats allowed): features standardized over the examples, then `steps` full-batch
  AdamW steps on the mean sigmoid cross-entropy from an initialization drawn from `seed`, so the result is a function
  of the arguments."""
  if not examples:
    raise ValueError("training the event classifier needs at least one example")
  audio, classes = zip(*examples)
  x = classifier_features(audio, sample_rate)
  mean, std = x.mean(0), x.std(0) + 1e-3
  x, y = jnp.asarray((x - mean) / std), jnp.asarray(_multi_hot(classes, num_classes))
  params = EventMLP(hidden, num_classes).init(jax.random.key(seed), x[:1])
  params = _fit(params, x, y, hidden=hidden, steps=steps, learning_rate=learning_rate, weight_decay=weight_decay)
  return EventClassifier(jax.device_get(params), mean, std, int(sample_rate), int(num_classes), int(hidden))


def event_class_accuracy(classifier: EventClassifier, audio: Sequence, classes: Sequence) -> dict:
  """Scores clips `audio[i]` against their reference event classes `classes[i]` (an iterable of ints; the set is
  what counts): "accuracy", the fraction of clips whose predicted class set (probability > 0.5) is exactly the
  reference set; "label_accuracy", the fraction of (clip, class) decisions that are right; and "count" (clips).
  Both are NaN for no clips."""
  if len(audio) != len(classes):
    raise ValueError(f"{len(audio)} clips of audio but {len(classes)} lists of classes")
  if not len(audio):
    return {"accuracy": math.nan, "label_accuracy": math.nan, "count": 0}
  predicted = classifier.probabilities(audio) > 0.5
  reference = _multi_hot(classes, classifier.num_classes) > 0.5
  return {"accuracy": float(np.mean(np.all(predicted == reference, axis=1))),
          "label_accuracy": float(np.mean(predicted == reference)), "count": len(audio)}

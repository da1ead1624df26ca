"""Video-to-audio metrics without a pretrained network: onset sync, Fréchet distance, event-class accuracy."""
import collections
import warnings

import jax
import mir_eval
import numpy as np
import pytest

from avflow.data.foley import CLASSES, ToyFoley
from avflow.metrics import foley

SR = 8000
BURSTS = (0.3, 0.95, 1.6)


def bursts(times=BURSTS, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
  """A faint noise floor with a decaying noise burst starting at each of `times`."""
  rng = np.random.default_rng(seed)
  x = 1e-3 * rng.standard_normal(int(seconds * SR))
  t = np.arange(int(0.2 * SR)) / SR
  for start in times:
    a = int(start * SR)
    x[a:a + t.size] += 0.5 * rng.standard_normal(t.size) * np.exp(-t / 0.04)
  return x.astype(np.float32)


def test_detect_onsets_finds_each_burst_and_nothing_in_silence_noise_or_a_slow_swell():
  onsets = foley.detect_onsets(bursts(), SR)
  assert onsets.size == len(BURSTS)
  np.testing.assert_allclose(onsets, BURSTS, atol=0.03)
  t = np.arange(2 * SR) / SR
  assert foley.detect_onsets(np.zeros(2 * SR, np.float32), SR).size == 0
  assert foley.detect_onsets(0.1 * np.random.default_rng(1).standard_normal(2 * SR), SR).size == 0
  assert foley.detect_onsets(0.5 * np.minimum(t / 1.5, 1.0) * np.sin(2 * np.pi * 440 * t), SR).size == 0
  assert foley.detect_onsets(bursts(seconds=1.0, times=(0.5,)), 16000).size == 1  # any rate: 2 s of audio at 16 kHz


def test_onset_sync_averages_mir_eval_f_measure_over_clips_within_the_tolerance():
  audio = [bursts(), bursts(seed=1), np.zeros(2 * SR, np.float32)]
  references = [BURSTS, BURSTS + (1.9,), BURSTS]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a clip without onsets scores 0 without a warning
    got = foley.onset_sync(audio, references, SR)
  # Clip 1 misses one of four events (recall 3/4); the silent clip detects nothing.
  assert got == pytest.approx({"f1": (1.0 + 6 / 7 + 0.0) / 3, "precision": 2 / 3, "recall": (1.0 + 0.75) / 3,
                               "count": 3})
  expected = np.mean([mir_eval.onset.f_measure(np.array(r), foley.detect_onsets(x, SR), window=0.1)
                      for x, r in zip(audio[:2], references[:2])], axis=0)
  assert foley.onset_sync(audio[:2], references[:2], SR)["f1"] == pytest.approx(expected[0])
  late = [np.array(BURSTS) + 0.08]  # the detector's onsets lie within 0.03 s of the bursts
  assert foley.onset_sync(audio[:1], late, SR)["f1"] == 1.0
  assert foley.onset_sync(audio[:1], late, SR, tolerance=0.04)["f1"] == 0.0
  with pytest.raises(ValueError, match="3 clips of audio but 2 lists of event times"):
    foley.onset_sync(audio, references[:2], SR)
  with pytest.raises(ValueError, match=r"expected a clip of shape \(L,\), got \(16000, 1\)"):
    foley.onset_sync(np.stack(audio)[..., None], references, SR)  # channels-last batches: squeeze the channel
  assert np.isnan(foley.onset_sync([], [], SR)["f1"])


def test_frechet_distance_of_gaussians_in_closed_form():
  assert foley.frechet_distance(0.0, 4.0, 3.0, 1.0) == pytest.approx(9.0 + (2.0 - 1.0) ** 2)
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  var1, var2 = rng.uniform(0.5, 2.0, 6), rng.uniform(0.5, 2.0, 6)  # diagonal: ‖Δμ‖² + Σ (σ1 − σ2)²
  assert foley.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
      np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2))
  a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  sigma1, sigma2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
  # tr (Σ1 Σ2)^½ is the sum of the square roots of the (real, positive) eigenvalues of Σ1 Σ2.
  cross = np.sum(np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).real))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross
  assert foley.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
  assert foley.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-9)
  assert foley.frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match="expected means"):
    foley.frechet_distance(mu1, sigma1, mu2[:5], sigma2[:5, :5])


def test_audio_frechet_distance_is_zero_for_one_set_and_grows_with_a_level_shift():
  a = [c["audio"] for c in map(ToyFoley(num_clips=16, seed=2).__getitem__, range(16))]
  b = [c["audio"] for c in map(ToyFoley(num_clips=16, seed=2, split="val").__getitem__, range(16))]
  assert foley.audio_embedding(a, SR).shape == (16, 2 * foley.N_MELS)
  assert foley.audio_frechet_distance(a, a, SR) == pytest.approx(0.0, abs=1e-2)
  # A gain g moves every log-mel value by 20 log10 g dB: the means shift by that, the deviations stay.
  shift = foley.audio_frechet_distance(b, [0.5 * x for x in b], SR)
  assert shift == pytest.approx(foley.N_MELS * (20.0 * np.log10(0.5)) ** 2, rel=1e-3)
  same = foley.audio_frechet_distance(a, b, SR)
  assert 0.0 < same < foley.audio_frechet_distance(a, [0.5 * x for x in b], SR)
  assert same < 0.5 * shift
  with pytest.raises(ValueError, match="two or more clips per set, got 16 and 1"):
    foley.audio_frechet_distance(a, b[:1], SR)


def _classes(clip) -> list[int]:
  return [c for _, c in clip["events"]]


@pytest.fixture(scope="module")
def toy_sets():
  train = ToyFoley(num_clips=100, seed=2)
  val = ToyFoley(num_clips=40, seed=2, split="val")
  return [train[i] for i in range(100)], [val[i] for i in range(40)]


@pytest.fixture(scope="module")
def classifier(toy_sets):
  return foley.train_event_classifier([(c["audio"], _classes(c)) for c in toy_sets[0]], SR, len(CLASSES))


def _best_constant(class_sets) -> float:
  """Exact-set accuracy of the best single guess for every clip: the chance level."""
  return max(collections.Counter(frozenset(s) for s in class_sets).values()) / len(class_sets)


def test_event_classifier_names_the_classes_of_held_out_clips(toy_sets, classifier):
  val = toy_sets[1]
  audio, classes = [c["audio"] for c in val], [_classes(c) for c in val]
  got = foley.event_class_accuracy(classifier, audio, classes)
  assert got["accuracy"] >= 0.9 and got["label_accuracy"] >= 0.97 and got["count"] == 40
  predicted = classifier.probabilities(audio) > 0.5
  reference = np.array([[k in s for k in range(len(CLASSES))] for s in classes])
  assert got["accuracy"] == np.mean(np.all(predicted == reference, axis=1))
  assert got["label_accuracy"] == np.mean(predicted == reference)
  chance = _best_constant(classes)
  assert chance < 0.25
  noise = [level * np.random.default_rng(i).standard_normal(2 * SR) for i, level in enumerate(np.geomspace(1e-3, 0.3,
                                                                                                           40))]
  assert foley.event_class_accuracy(classifier, noise, classes)["accuracy"] <= chance + 0.05


def test_event_classifier_trained_on_mismatched_labels_stays_near_chance(toy_sets, classifier):
  train, val = toy_sets
  examples = [(c["audio"], _classes(c)) for c in train]
  again = foley.train_event_classifier(examples, SR, len(CLASSES))  # a function of its arguments
  assert jax.tree.all(jax.tree.map(np.array_equal, again.params, classifier.params))
  labels = np.random.default_rng(0).permutation(len(train))
  shuffled = foley.train_event_classifier([(x, examples[j][1]) for (x, _), j in zip(examples, labels)], SR,
                                          len(CLASSES))
  classes = [_classes(c) for c in val]
  got = foley.event_class_accuracy(shuffled, [c["audio"] for c in val], classes)
  assert got["accuracy"] <= _best_constant(classes) + 0.1
  with pytest.raises(ValueError, match="class 4 of clip 1 is not in"):
    foley.train_event_classifier([(x, [0]) for x, _ in examples[:1]] + [(examples[1][0], [4])], SR, len(CLASSES))
  with pytest.raises(ValueError, match="2 clips of audio but 1 lists of classes"):
    foley.event_class_accuracy(classifier, [x for x, _ in examples[:2]], classes[:1])
  assert foley.event_class_accuracy(classifier, [], [])["count"] == 0

"""Metrics against independent references computed here (torch.stft, FFT analytic signal, sorted samples, ...)."""
import functools
import sys
import types

import numpy as np
import pytest
import scipy.special
import soundfile

from avflow.metrics import loudness as ld
from avflow.metrics import semantic as sem
from avflow.metrics import signal as sig


def _noise(seed, *shape):
  return np.random.default_rng(seed).standard_normal(shape) * 0.1


# Signal metrics -------------------------------------------------------------------------------

def _torch_mag_distance(pred, target, sr):
  torch = pytest.importorskip("torch")
  win, hop = int(sr * 0.040), int(sr / 100)
  window = torch.hann_window(win, dtype=torch.float64)

  def mag(x):
    spec = torch.stft(torch.from_numpy(x), 2048, hop_length=hop, win_length=win, window=window,
                      center=True, return_complex=True)
    return torch.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-8)

  return float(torch.mean(torch.abs(mag(pred) - mag(target))))


@pytest.mark.parametrize("sr", [16000, 22050, 44100])
def test_mag_matches_torch_stft(sr):
  pred, target = _noise(0, 2, sr // 2), _noise(1, 2, sr // 2)
  want = _torch_mag_distance(pred, target, sr)
  np.testing.assert_allclose(sig.mag_distance(pred, target, sr), want, rtol=1e-10)
  np.testing.assert_allclose(sig.mag_distance(pred[..., None], target[..., None], sr), want, rtol=1e-10)


def test_mag_magnitude_floor_on_silence():
  silence, faint = np.zeros((1, 8000)), _noise(13, 1, 8000) * 1e-5
  want = _torch_mag_distance(silence, faint, 16000)
  np.testing.assert_allclose(sig.mag_distance(silence, faint, 16000), want, rtol=1e-10)


def test_mag_float32_and_identity():
  pred, target = _noise(2, 3, 8000).astype(np.float32), _noise(3, 3, 8000).astype(np.float32)
  want = _torch_mag_distance(pred.astype(np.float64), target.astype(np.float64), 16000)
  np.testing.assert_allclose(sig.mag_distance(pred, target, 16000), want, rtol=1e-6)
  assert sig.mag_distance(pred, pred, 16000) == 0.0


def _analytic(x):
  n = x.shape[-1]
  h = np.zeros(n)
  h[0] = 1.0
  if n % 2 == 0:
    h[n // 2] = 1.0
    h[1:n // 2] = 2.0
  else:
    h[1:(n + 1) // 2] = 2.0
  return np.fft.ifft(np.fft.fft(x, axis=-1) * h, axis=-1)


@pytest.mark.parametrize("length", [4000, 4001])
def test_envelope_matches_fft_analytic_signal_pooled_over_batch(length):
  pred, target = _noise(4, 3, length), _noise(5, 3, length)
  pred[0] *= 5.0  # unequal per-clip errors: pooled RMSE differs from the mean of per-clip RMSEs
  sq = (np.abs(_analytic(pred)) - np.abs(_analytic(target))) ** 2
  got = sig.envelope_distance(pred, target)
  np.testing.assert_allclose(got, np.sqrt(sq.mean()), rtol=1e-10)
  assert abs(got - np.sqrt(sq.mean(axis=1)).mean()) > 1e-3
  np.testing.assert_allclose(sig.envelope_distance(pred[..., None], target[..., None]), got, rtol=1e-12)


def test_envelope_over_batches_of_20_as_the_public_evaluation_reports_it():
  pred, target = _noise(14, 45, 600), _noise(15, 45, 600)
  pred[20:40] *= 4.0  # batches with unequal errors: the mean over batches differs from one pooled RMSE
  sq = (np.abs(_analytic(pred)) - np.abs(_analytic(target))) ** 2
  per_batch = [np.sqrt(sq[0:20].mean()), np.sqrt(sq[20:40].mean()), np.sqrt(sq[40:45].mean())]
  got = sig.envelope_distance_over_batches(pred, target)
  np.testing.assert_allclose(got, np.mean(per_batch), rtol=1e-10)
  whole = sig.envelope_distance_over_batches(pred, target, batch_size=0)
  np.testing.assert_allclose(whole, np.sqrt(sq.mean()), rtol=1e-10)
  assert abs(got - whole) > 1e-3
  np.testing.assert_allclose(sig.envelope_distance_over_batches(pred[..., None], target[..., None]), got, rtol=1e-12)
  with pytest.raises(ValueError, match="differ in shape"):
    sig.envelope_distance_over_batches(pred[:44], target)


def test_envelope_of_pure_tones_is_their_amplitude():
  t = np.arange(8000) / 8000
  tone = np.sin(2 * np.pi * 100 * t)  # whole number of periods: the envelope is exactly flat
  np.testing.assert_allclose(sig.envelope_distance(0.8 * tone[None], 0.3 * tone[None]), 0.5, atol=1e-9)


def test_wasserstein_equals_sorted_sample_formula_and_ignores_time_order():
  pred, target = _noise(6, 4, 3000), _noise(7, 4, 3000) * 1.5 + 0.01
  want = np.mean(np.abs(np.sort(pred, axis=1) - np.sort(target, axis=1)), axis=1).mean()
  np.testing.assert_allclose(sig.wasserstein(pred, target), want, rtol=1e-10)
  shuffled = np.random.default_rng(8).permuted(pred, axis=1)
  np.testing.assert_allclose(sig.wasserstein(shuffled[..., None], target[..., None]), want, rtol=1e-10)


def test_paper_display_scales_all_but_ldif():
  shown = sig.paper_display({"mag": 0.0828, "Env": 0.0274, "ldif": 7.77, "LDif_oracle": 1.5})
  assert shown == pytest.approx({"mag": 8.28, "Env": 2.74, "ldif": 7.77, "LDif_oracle": 1.5})


# LDif ------------------------------------------------------------------------------------------

SR = 16000


def _stems(seed, seconds=1.0):
  rng = np.random.default_rng(seed)
  n = int(SR * seconds)
  return np.stack([rng.standard_normal(n) * a for a in (0.05, 0.1, 0.2)])


def test_loudness_of_full_scale_1khz_tone_and_short_block_rule():
  # BS.1770: a 0 dBFS 1-kHz sine reads -3.01 LUFS; 1407 samples at 44.1 kHz are shorter than a block.
  for sr, n in ((48000, 48000), (44100, 1407)):
    tone = np.sin(2 * np.pi * 1000 * np.arange(n) / sr)
    assert ld.integrated_loudness(tone, sr) == pytest.approx(-3.01, abs=0.05)
  assert ld.integrated_loudness(np.zeros(SR), SR) == -np.inf


def test_oracle_projection_recovers_mixing_coefficients():
  basis = _stems(0)
  coef = np.array([0.5, -2.0, 1.3])
  est = ld.oracle_stems(coef @ basis, basis)
  np.testing.assert_allclose(est, coef[:, None] * basis, atol=1e-12)
  np.testing.assert_allclose(np.sum(est * basis, axis=1) / np.sum(basis ** 2, axis=1), coef, atol=1e-12)
  np.testing.assert_allclose(ld.oracle_stems((coef @ basis)[:, None], basis), est, atol=1e-12)


@pytest.mark.parametrize("gain_db", [3.0, -9.0])
def test_oracle_ldif_of_a_gain_on_one_stem(gain_db):
  stems = _stems(1)
  boosted = stems.copy()
  boosted[1] *= 10 ** (gain_db / 20)
  got = ld.oracle_ldif(boosted.sum(0), stems, stems, SR)
  assert got == pytest.approx(abs(gain_db) / 3, abs=0.05)
  assert ld.oracle_ldif(stems.sum(0), boosted, stems, SR) == pytest.approx(got, abs=1e-9)
  assert ld.oracle_ldif(stems.sum(0), stems, stems, SR) == pytest.approx(0.0, abs=1e-9)


def test_separator_ldif_uses_the_same_separator_on_both():
  stems = _stems(2)
  boosted = stems * np.array([[1.0], [1.0], [2.0]])
  separator = functools.partial(ld.oracle_stems, basis_stems=stems)
  got = ld.separator_ldif(boosted.sum(0), stems.sum(0), separator, SR)
  assert got == pytest.approx(ld.oracle_ldif(boosted.sum(0), stems, stems, SR), abs=1e-9)
  assert got == pytest.approx(20 * np.log10(2) / 3, abs=0.05)


def test_silent_stem_rules():
  stems = _stems(3)
  louder = stems * 10 ** (6 / 20)
  silent_target = stems.copy()
  silent_target[1] = 0.0
  # A silent target stem is left out: the mean runs over the other two sources.
  assert ld.ldif(louder, silent_target, SR) == pytest.approx(6.0, abs=0.05)
  # A silent predicted stem counts at the -70 LUFS floor.
  silent_pred = stems.copy()
  silent_pred[0] = 0.0
  want = abs(-70.0 - ld.integrated_loudness(stems[0], SR)) / 3
  assert ld.ldif(silent_pred, stems, SR) == pytest.approx(want, abs=1e-9)
  # All target stems silent: undefined, and left out of the batch mean.
  assert np.isnan(ld.ldif(stems, np.zeros_like(stems), SR))


def test_all_silent_means_every_target_stem_silent():
  stems = _stems(7)
  assert ld.all_silent(np.zeros_like(stems), SR)
  one_left = np.zeros_like(stems)
  one_left[2] = stems[2]
  assert not ld.all_silent(one_left, SR) and not ld.all_silent(stems, SR)


def test_over_clips_returns_per_clip_values_and_defined_mean():
  stems = np.stack([_stems(4), _stems(5), _stems(6)])
  targets = stems.copy()
  targets[0] *= 10 ** (3 / 20)
  targets[2] = 0.0
  per_clip, mean = ld.over_clips(functools.partial(ld.oracle_ldif, sr=SR), stems.sum(1), targets, stems)
  assert per_clip.shape == (3,) and np.isnan(per_clip[2])
  np.testing.assert_allclose(per_clip[:2], [3.0, 0.0], atol=0.05)
  assert mean == pytest.approx(per_clip[:2].mean())


# Semantic metrics ------------------------------------------------------------------------------

def test_kld_matches_rel_entr_with_floor_and_is_asymmetric():
  rng = np.random.default_rng(9)
  t, p = rng.normal(size=(4, 527)) * 3, rng.normal(size=(4, 527)) * 3
  want = scipy.special.rel_entr(scipy.special.softmax(t, axis=1),
                                scipy.special.softmax(p, axis=1) + 1e-6).sum(1)
  np.testing.assert_allclose(sem.kld_per_clip(t, p), want, rtol=1e-10)
  assert sem.kld(t, p) == pytest.approx(want.mean())
  assert abs(sem.kld(t, p) - sem.kld(p, t)) > 1e-3
  assert abs(sem.kld(t, t)) < 527 * 1e-6  # only the floor remains


def test_ib_is_mean_frame_cosine_after_renormalization():
  rng = np.random.default_rng(10)
  audio, frames = rng.normal(size=(2, 8)), rng.normal(size=(2, 5, 8))
  want = [np.mean([a @ f / np.linalg.norm(a) / np.linalg.norm(f) for f in fs]) for a, fs in zip(audio, frames)]
  np.testing.assert_allclose(sem.ib_per_clip(20 * audio, 3 * frames), want, rtol=1e-10)
  assert sem.ib_score(audio, frames) == pytest.approx(np.mean(want))


class _TinyEmbedder:
  """Random embedding per file name; records the order in which frames arrive."""

  def __init__(self, names):
    rng = np.random.default_rng(11)
    self.table = {n: rng.normal(size=6) for n in names}
    self.frame_order = None

  def embed_audio(self, wav_paths):
    return np.stack([self.table[p.name] for p in wav_paths])

  def embed_frames(self, image_paths):
    self.frame_order = [p.name for p in image_paths]
    return np.stack([self.table[p.name] for p in image_paths])


def test_ib_for_clip_with_a_tiny_embedder(tmp_path):
  frames = [tmp_path / f"{i:03d}.png" for i in (3, 1, 2)]
  wavs = [tmp_path / n for n in ("input_audio.wav", "pred_audio.wav")]
  emb = _TinyEmbedder([p.name for p in frames + wavs])
  got = sem.ib_for_clip(wavs, frames, emb)
  assert emb.frame_order == ["001.png", "002.png", "003.png"]
  frame_embs = np.stack([emb.table[n] for n in emb.frame_order])
  want = sem.ib_per_clip(emb.embed_audio(wavs), np.stack([frame_embs] * 2))
  np.testing.assert_allclose(got, want, rtol=1e-12)


class _SpectralClassifier:
  """Logits = log band energies of the wav at 16 kHz; remembers the lengths it was given."""

  sample_rate = 16000

  def __init__(self):
    self.lengths = []

  def __call__(self, wav):
    self.lengths.append(wav.shape[-1])
    power = np.abs(np.fft.rfft(wav, axis=-1)) ** 2
    return np.log(np.stack([b.sum(-1) for b in np.array_split(power, 16, axis=-1)], axis=-1) + 1e-9)


def test_kld_for_files_pairs_by_name_not_directory_order(tmp_path):
  (tmp_path / "pred").mkdir()
  (tmp_path / "target").mkdir()
  names = [f"clip{i}.wav" for i in range(4)]
  audio = {n: (_noise(20 + i, 2, 44100), _noise(40 + i, 2, 44100)) for i, n in enumerate(names)}
  order = np.random.default_rng(12)
  for folder, k in (("target", 1), ("pred", 0)):
    for n in order.permutation(names):
      soundfile.write(tmp_path / folder / n, audio[n][k].T.astype(np.float32) * 0.5, 44100, subtype="FLOAT")
  clf = _SpectralClassifier()
  per_file, mean = sem.kld_for_files(tmp_path / "pred", tmp_path / "target", clf)
  assert list(per_file) == names
  assert set(clf.lengths) == {16000}
  for n in names:
    pred, target = (np.float32(0.5) * a.astype(np.float32) for a in audio[n])
    want = sem.kld_for_audio(pred.mean(0, dtype=np.float32)[None], target.mean(0, dtype=np.float32)[None], 44100, clf)
    assert per_file[n] == pytest.approx(want, rel=1e-5)
  assert mean == pytest.approx(np.mean(list(per_file.values())))
  (tmp_path / "pred" / "clip0.wav").rename(tmp_path / "pred" / "extra.wav")
  with pytest.raises(ValueError, match=r"only in .*pred.*\['extra.wav'\].*only in .*target.*\['clip0.wav'\]"):
    sem.kld_for_files(tmp_path / "pred", tmp_path / "target", clf)


@pytest.mark.parametrize("cls, blocked, package", [
    (sem.PasstClassifier, ["hear21passt", "hear21passt.base"], "hear21passt"),
    (sem.ImageBindEmbedder, ["imagebind", "imagebind.models", "imagebind.models.imagebind_model",
                             "imagebind.data"], "imagebind"),
])
def test_missing_package_is_named(monkeypatch, cls, blocked, package):
  pytest.importorskip("torch")
  for name in blocked:
    monkeypatch.setitem(sys.modules, name, None)
  with pytest.raises(ImportError, match=f"'{package}' package"):
    cls()


def test_missing_weights_files_are_named(monkeypatch, tmp_path):
  pytest.importorskip("torch")
  for name in ("hear21passt", "hear21passt.base", "imagebind.models.imagebind_model", "imagebind.data"):
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="passt-s-f128-p16-s10-ap.476-swa.pt"):
    sem.PasstClassifier()
  with pytest.raises(FileNotFoundError, match="imagebind_huge.pth"):
    sem.ImageBindEmbedder(checkpoint=str(tmp_path / "imagebind_huge.pth"))

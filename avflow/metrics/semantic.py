"""Semantic metrics of VisAH / VisAH-FM: KLD on PaSST logits and the ImageBind (IB) score.

Both follow the public VisAH evaluation code. KLD is softmax-based (not sigmoid, although AudioSet
is multi-label) with a 1e-6 floor inside the log of the prediction; IB is the cosine between each
audio embedding and every video frame, averaged over frames. The models are pluggable: any
`AudioClassifier` / `AudioVisualEmbedder` works; `PasstClassifier` and `ImageBindEmbedder` wrap
the models the paper used and import their packages only when built.

Unlike the public code, which indexes a clip's wav files in directory-listing order, files are
always matched and ordered by name.
"""
import importlib
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import scipy.special
import soundfile

from avflow.audio import resample

KLD_FLOOR = 1e-6
DEFAULT_IMAGEBIND_CHECKPOINT = ".checkpoints/imagebind_huge.pth"  # where ImageBind keeps its weights


class AudioClassifier(Protocol):
  """Mono audio `(B, L)` at `sample_rate` -> class logits `(B, K)`."""

  sample_rate: int

  def __call__(self, wav: np.ndarray) -> np.ndarray:
    ...


class AudioVisualEmbedder(Protocol):
  """Audio files and image files -> embeddings `(N, D)` in one joint space."""

  def embed_audio(self, wav_paths: Sequence[Path]) -> np.ndarray:
    ...

  def embed_frames(self, image_paths: Sequence[Path]) -> np.ndarray:
    ...


def kld_per_clip(target_logits, pred_logits) -> np.ndarray:
  """Σ_k p_k (log p_k − log(q_k + 1e-6)) per clip, p = softmax(target), q = softmax(pred).

  The public VisAH code computes it as `kl_div(log(softmax(pred) + 1e-6), softmax(target), 'sum')`.
  """
  t = np.asarray(target_logits, dtype=np.float64)
  p = np.asarray(pred_logits, dtype=np.float64)
  if t.shape != p.shape or t.ndim != 2:
    raise ValueError(f"expected logits of equal shape (B, K), got {t.shape} and {p.shape}")
  log_t = scipy.special.log_softmax(t, axis=-1)
  log_q = np.log(scipy.special.softmax(p, axis=-1) + KLD_FLOOR)
  return np.sum(np.exp(log_t) * (log_t - log_q), axis=-1)


def kld(target_logits, pred_logits) -> float:
  """KLD: `kld_per_clip` averaged over the batch."""
  return float(np.mean(kld_per_clip(target_logits, pred_logits)))


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ib_per_clip(audio_emb, frame_embs) -> np.ndarray:
  """Mean over frames of cos(audio, frame): `audio_emb (B, D)`, `frame_embs (B, F, D)` -> `(B,)`.

  Both sets are L2-renormalized first, as the public VisAH code does (ImageBind's audio
  embeddings come out scaled).
  """
  a = np.asarray(audio_emb, dtype=np.float64)
  f = np.asarray(frame_embs, dtype=np.float64)
  if a.ndim != 2 or f.ndim != 3 or (f.shape[0], f.shape[2]) != a.shape:
    raise ValueError(f"expected audio (B, D) and frames (B, F, D), got {a.shape} and {f.shape}")
  return np.einsum("bd,bfd->bf", _unit(a), _unit(f)).mean(axis=-1)


def ib_score(audio_emb, frame_embs) -> float:
  """IB score: `ib_per_clip` averaged over the batch."""
  return float(np.mean(ib_per_clip(audio_emb, frame_embs)))


def ib_for_clip(wav_paths: Sequence[Path], frame_paths: Sequence[Path],
                embedder: AudioVisualEmbedder) -> np.ndarray:
  """IB of each of a clip's audio files against all its frames (taken in name order) -> `(N,)`."""
  if not frame_paths:
    raise ValueError("IB needs at least one frame")
  audio = embedder.embed_audio([Path(p) for p in wav_paths])
  frames = embedder.embed_frames(sorted(Path(p) for p in frame_paths))
  return ib_per_clip(audio, np.broadcast_to(frames, (len(audio), *frames.shape)))


def classify(audio, sample_rate: int, classifier: AudioClassifier) -> np.ndarray:
  """Logits of `audio (B, L)` or `(B, L, 1)` at `sample_rate`, resampled to the classifier's rate."""
  audio = np.asarray(audio)
  if audio.ndim == 3 and audio.shape[-1] == 1:
    audio = audio[..., 0]
  if audio.ndim != 2:
    raise ValueError(f"expected mono audio (B, L) or (B, L, 1), got {audio.shape}")
  wav = resample(audio, sample_rate, classifier.sample_rate)
  return np.asarray(classifier(wav), dtype=np.float64)


def kld_for_audio(pred, target, sample_rate: int, classifier: AudioClassifier) -> float:
  """KLD between the classifier's logits for `target` and for `pred` (both `(B, L[, 1])`)."""
  return kld(classify(target, sample_rate, classifier), classify(pred, sample_rate, classifier))


def _load_mono(path: Path) -> tuple[np.ndarray, int]:
  wav, sr = soundfile.read(path, dtype="float32", always_2d=True)
  return wav.mean(axis=-1), sr


def kld_for_files(dir_pred, dir_target, classifier: AudioClassifier,
                  pattern: str = "*.wav") -> tuple[dict[str, float], float]:
  """KLD per file name shared by both folders, and the mean over files.

  Files are paired by name, in sorted order; any name present in only one folder is an error.
  """
  pred_files = {p.name: p for p in Path(dir_pred).glob(pattern)}
  target_files = {p.name: p for p in Path(dir_target).glob(pattern)}
  only_pred = sorted(pred_files.keys() - target_files.keys())
  only_target = sorted(target_files.keys() - pred_files.keys())
  if only_pred or only_target:
    raise ValueError(f"unmatched files: only in {dir_pred}: {only_pred}; only in {dir_target}: {only_target}")
  if not pred_files:
    raise ValueError(f"no files matching {pattern!r} in {dir_pred} and {dir_target}")
  per_file = {}
  for name in sorted(pred_files):
    logits = [classify(wav[None], sr, classifier)
              for wav, sr in (_load_mono(target_files[name]), _load_mono(pred_files[name]))]
    per_file[name] = float(kld_per_clip(*logits)[0])
  return per_file, float(np.mean(list(per_file.values())))


def _require(module: str, package: str, user: str):
  try:
    return importlib.import_module(module)
  except ImportError as err:
    raise ImportError(f"{user} needs the '{package}' package, which is not installed "
                      f"(pip install {package}).") from err


class PasstClassifier:
  """AudioSet logits (527 classes) of PaSST-S, as `hear21passt.base.get_basic_model(mode="logits")`.

  The weights file is read from torch's hub cache (`$TORCH_HOME/hub/checkpoints`), where
  hear21passt keeps it; it must be there beforehand, so nothing is downloaded behind your back.
  """

  sample_rate = 32000
  weights_file = "passt-s-f128-p16-s10-ap.476-swa.pt"

  @classmethod
  def check(cls):
    """(torch, hear21passt.base) when both are installed and the weights file is in place; otherwise an
    `ImportError` naming the package or a `FileNotFoundError` naming the file."""
    torch = _require("torch", "torch", "PasstClassifier")
    base = _require("hear21passt.base", "hear21passt", "PasstClassifier")
    weights = Path(torch.hub.get_dir()) / "checkpoints" / cls.weights_file
    if not weights.is_file():
      raise FileNotFoundError(f"PasstClassifier needs the PaSST weights file {cls.weights_file} at {weights} "
                              "(from the PaSST v0.0.1-audioset release).")
    return torch, base

  def __init__(self, device: str = "cpu"):
    self._torch, base = self.check()
    self._device = device
    self._model = base.get_basic_model(mode="logits").to(device).eval()

  def __call__(self, wav: np.ndarray) -> np.ndarray:
    x = self._torch.as_tensor(np.asarray(wav, dtype=np.float32), device=self._device)
    with self._torch.no_grad():
      return self._model(x).cpu().numpy()


class ImageBindEmbedder:
  """ImageBind-Huge audio and vision embeddings with ImageBind's own file loaders.

  Audio: 16 kHz, 3 × 2-s clips, 128-bin fbank; frames: 224-px bicubic resize, center crop, CLIP
  normalization. The checkpoint must exist beforehand (ImageBind's default place is
  `.checkpoints/imagebind_huge.pth`).
  """

  @staticmethod
  def check(checkpoint: str = DEFAULT_IMAGEBIND_CHECKPOINT):
    """(torch, imagebind.models.imagebind_model, imagebind.data) when installed and `checkpoint` exists;
    otherwise an `ImportError` naming the package or a `FileNotFoundError` naming the file."""
    torch = _require("torch", "torch", "ImageBindEmbedder")
    model_lib = _require("imagebind.models.imagebind_model", "imagebind", "ImageBindEmbedder")
    data = _require("imagebind.data", "imagebind", "ImageBindEmbedder")
    if not Path(checkpoint).is_file():
      raise FileNotFoundError(f"ImageBindEmbedder needs the weights file imagebind_huge.pth at {checkpoint}.")
    return torch, model_lib, data

  def __init__(self, checkpoint: str = DEFAULT_IMAGEBIND_CHECKPOINT, device: str = "cpu"):
    self._torch, model_lib, self._data = self.check(checkpoint)
    self._modality = model_lib.ModalityType
    self._device = device
    model = model_lib.imagebind_huge(pretrained=False)
    model.load_state_dict(self._torch.load(checkpoint, map_location="cpu"))
    self._model = model.to(device).eval()

  def _embed(self, modality: str, inputs) -> np.ndarray:
    with self._torch.no_grad():
      return self._model({modality: inputs})[modality].cpu().numpy()

  def embed_audio(self, wav_paths: Sequence[Path]) -> np.ndarray:
    paths = [str(p) for p in wav_paths]
    return self._embed(self._modality.AUDIO, self._data.load_and_transform_audio_data(paths, self._device))

  def embed_frames(self, image_paths: Sequence[Path]) -> np.ndarray:
    paths = [str(p) for p in image_paths]
    return self._embed(self._modality.VISION, self._data.load_and_transform_vision_data(paths, self._device))

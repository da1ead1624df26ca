"""T5 text features of a clip's caption, computed once at prepare time (the VisAH-FM "T" conditioning).

Captions are fixed per clip, so the frozen text encoder never runs during training: `python -m avflow prepare
--text_encoder=DIR` encodes each clip's caption with `TextEncoder` and stores the result as the records' `text`
field, and the model (`model.conditioning.features_key="text"`, or the adapter's "text" modality) only reads it.

The encoder is a PyTorch `transformers` T5 encoder loaded from a local folder written by `save_pretrained` (the
paper: T5-XXL, d_model 4096 = `model.conditioning.text_dim`; a full T5 / Flan-T5 checkpoint works too, its decoder
is dropped; mT5 and UMT5 folders are read with their own encoder classes). Nothing is ever downloaded.

Fixed length. A caption becomes exactly `text_tokens` tokens: the tokenizer is called with
`max_length=text_tokens, truncation=True, padding="max_length"`, so a long caption is cut (T5's tokenizer keeps the
closing `</s>` as the last token) and a short one is right-padded. The encoder runs with the attention mask, so no
real token attends to padding, and the hidden states at padded positions (computed, but meaningless) are set to 0.
A caption's features are therefore the same whichever captions it is batched with. The empty string encodes to
`</s>` followed by zeros; `records.prepare` stores that for an empty caption file, with a warning.

Output: float32 `(text_tokens, d_model)` per caption (the encoder's `last_hidden_state`, after its final
layer norm), whatever dtype the encoder runs in.
"""
import os
from typing import Sequence

import numpy as np

# model_type in the folder's config.json → the transformers encoder-only class that reads it.
ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
DTYPES = ("float32", "bfloat16")


class TextEncoderError(ValueError):
  """A text encoder folder that cannot be used: missing, not a T5 encoder, or the wrong width."""


class TextEncoder:
  """`TextEncoder(model_dir, text_tokens, text_dim=None)`; `encode(captions)` → float32 (N, text_tokens, d_model).

  `text_dim`, when given, must equal the encoder's d_model (the width the model config expects). `device`:
  "cpu", "cuda", ... (default: CUDA when PyTorch sees it). `dtype`: "float32" or "bfloat16" (T5 is unstable in
  float16).
  """

  def __init__(self, model_dir: str, text_tokens: int, text_dim: int | None = None, *, device: str | None = None,
               dtype: str = "float32", batch_size: int = 32):
    if text_tokens < 1:
      raise TextEncoderError(f"text_tokens={text_tokens}; expected at least 1")
    if dtype not in DTYPES:
      raise TextEncoderError(f"dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
    if not model_dir or not os.path.isdir(model_dir):
      raise TextEncoderError(f"text encoder folder {model_dir!r} does not exist; give a local folder written by "
                             "`save_pretrained` (config.json, weights and tokenizer files); nothing is downloaded")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
      raise TextEncoderError(f"{model_dir} has no config.json: not a folder written by `save_pretrained`")
    try:
      import torch
      import transformers
    except ImportError as e:
      raise TextEncoderError(f"the text encoder runs in PyTorch: {e.name} is not installed (the main job's "
                             "requirements.txt leaves it out; pip install -r requirements-dev.txt)") from e

    config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model_type = getattr(config, "model_type", None)
    if model_type not in ENCODER_CLASSES:
      raise TextEncoderError(f"{model_dir} holds a {model_type!r} model; expected a T5 encoder (model_type one of "
                             f"{', '.join(ENCODER_CLASSES)})")
    width = int(config.d_model)
    if text_dim is not None and width != int(text_dim):
      raise TextEncoderError(f"text encoder {model_dir} gives {width}-d features but {int(text_dim)}-d were asked "
                             f"for (text_dim): pass text_dim={width} (`--text_dim={width}`) and train with "
                             f"`--config.model.conditioning.text_dim={width}`, or use an encoder of width "
                             f"{int(text_dim)} (T5-XXL: 4096)")
    try:
      self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
      raise TextEncoderError(f"no usable tokenizer in {model_dir} ({type(e).__name__}: {e}); save the tokenizer "
                             "there with `tokenizer.save_pretrained`") from e
    if self.tokenizer.pad_token is None:
      raise TextEncoderError(f"the tokenizer in {model_dir} has no pad token")
    self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder_class = getattr(transformers, ENCODER_CLASSES[model_type])
    self.model = encoder_class.from_pretrained(model_dir, local_files_only=True,
                                               dtype=getattr(torch, dtype)).to(self.device).eval()
    self.model_dir, self.text_tokens, self.dim, self.batch_size = model_dir, int(text_tokens), width, batch_size

  def tokenize(self, captions: Sequence[str]) -> dict:
    """`input_ids` and `attention_mask`, int64 (N, text_tokens) torch tensors (see the module docstring)."""
    if isinstance(captions, str) or any(not isinstance(c, str) for c in captions):
      raise TypeError("captions must be a sequence of str")
    return self.tokenizer(list(captions), max_length=self.text_tokens, truncation=True, padding="max_length",
                          return_tensors="pt")

  def encode(self, captions: Sequence[str]) -> np.ndarray:
    """float32 (N, text_tokens, d_model): the encoder's last hidden state, zero at padded positions."""
    import torch
    out = [np.zeros((0, self.text_tokens, self.dim), np.float32)]
    for start in range(0, len(captions), self.batch_size):
      tokens = self.tokenize(captions[start:start + self.batch_size])
      ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
      with torch.inference_mode():
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
      hidden = hidden.float() * mask[..., None].to(torch.float32)
      out.append(hidden.cpu().numpy())
    return np.concatenate(out)

  def encode_one(self, caption: str) -> np.ndarray:
    """float32 (text_tokens, d_model) for one caption."""
    return self.encode([caption])[0]

"""CLIP vision encoder with the VisAH-FM cross-modal adapter (paper Sec. 2.2.2, Eq. 6–7).

The backbone reproduces transformers' `CLIPVisionModelWithProjection`:

    x = [class_embedding, patch_embedding(pixels)] + position_embedding   # conv without bias
    x = pre_layrnorm(x)
    x = layer_k(x) for k = 1..L          # pre-LN: x += attn(ln1(x)); x += mlp(ln2(x)), quick-GELU
    image_embeds = visual_projection(post_layernorm(x[:, 0]))             # Linear without bias

and `image_features = image_embeds / |image_embeds|`, the L2-normalized embedding that VisAH
uses as one context token per frame (CLIP `get_image_features` followed by normalization).
`hidden_states[0]` is the pre-LN embedding and `hidden_states[k]` the output of layer k,
as in transformers.

Adapter (Eq. 6–7). After layer k (`adapter_layer`; the paper uses 18 of 24) the features F_k
are replaced by

    adapter(F_k, E) = F_k + λ_E · m(F_k, E),
    m(F_k, E) = Att(queries = LN(F_k)·W_down^F, keys/values = LN(E)·W_down^E)·W_up,

and the result feeds layer k+1 (and is what `hidden_states[k]` holds). Reading of Eq. 6: the
paper writes Att(E·W_down^E, F_k·W_down^F) without fixing which side is the query; the CLIP
tokens must be the queries because the output is added to F_k and so needs its shape (one
vector per CLIP token), and the audio tokens are the keys and values. Att is a multi-head
cross-attention with its own query/key/value/output projections, working at the bottleneck
width (`adapter_dim`, 128 for ViT-L/14, 4 heads of 32), as in the cross-modal adapters the
paper builds on. Two choices not written in Eq. 6: a LayerNorm on each input before its
down-projection (CLIP's residual stream and the CLAP tokens live at very different scales),
and text tokens as a second key/value source with their own LayerNorm and W_down^T,
concatenated with the audio tokens along the token axis after the down-projections (the
paper's V+T and V+T+A variants). "Incorporated as the 18th layer" is read as k = 18: the
adapter takes the output of layer 18 and feeds layer 19 (Eq. 7's "next layer k + 1").
λ_E is one learnable scalar initialized to 0, so at initialization the encoder is exactly the
pretrained CLIP; the adapter's projections (W_up included) have a LeCun-normal random init, so
m has unit scale and λ_E receives a gradient from the first step. Without audio or text tokens
the adapter is skipped and the model is plain CLIP.

The Flax parameter tree mirrors the transformers names (`vision_model/encoder/layers_3/...`),
which `avflow.interop.hf_import` maps to PyTorch keys; the adapter lives under `adapter/`.
"""
import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow.nn.attention import multi_head_attention

# Parameter prefixes of the pretrained tower (frozen in VisAH-FM; everything but `adapter`).
BACKBONE = ("vision_model", "visual_projection")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Vision tower sizes (transformers `CLIPVisionConfig` names in brackets) and adapter."""
  image_size: int = 224
  patch_size: int = 14
  width: int = 1024          # hidden_size
  layers: int = 24           # num_hidden_layers
  heads: int = 16            # num_attention_heads
  mlp_dim: int = 4096        # intermediate_size
  proj_dim: int = 768        # projection_dim
  layer_norm_eps: float = 1e-5
  adapter_layer: Optional[int] = 18   # k of Eq. 7; None: no adapter
  adapter_dim: int = 128
  adapter_heads: int = 4
  audio_dim: Optional[int] = 768      # width of the audio tokens E (CLAP hidden size)
  text_dim: Optional[int] = None      # width of optional text tokens
  dtype: Any = jnp.float32            # compute dtype; parameters stay float32

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    if self.adapter_layer is not None:
      if not 0 <= self.adapter_layer <= self.layers:
        raise ValueError(f"adapter_layer {self.adapter_layer} is outside [0, {self.layers}]")
      if self.audio_dim is None and self.text_dim is None:
        raise ValueError("the adapter needs audio_dim or text_dim")


VARIANTS = {
    "vit_l14": CLIPConfig(),
    # OpenAI ViT-B/32, the frozen frame encoder of DAVIS (512-d image embeddings); no adapter.
    "vit_b32": CLIPConfig(patch_size=32, width=768, layers=12, heads=12, mlp_dim=3072, proj_dim=512,
                          adapter_layer=None, audio_dim=None),
    "tiny": CLIPConfig(image_size=32, patch_size=8, width=32, layers=3, heads=4, mlp_dim=64,
                       proj_dim=24, adapter_layer=2, adapter_dim=16, adapter_heads=2, audio_dim=64),
}


def clip_config(name: str, **overrides) -> CLIPConfig:
  """A named variant (`vit_l14`, `vit_b32`, `tiny`) with optional field overrides."""
  if name not in VARIANTS:
    raise ValueError(f"unknown CLIP variant {name!r}; expected one of {', '.join(VARIANTS)}")
  return dataclasses.replace(VARIANTS[name], **overrides)


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


def _dense(features: int, dtype, use_bias: bool = True, name: Optional[str] = None,
           kernel_init=nn.initializers.normal(0.02)) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=kernel_init, name=name)


def _layer_norm(cfg: CLIPConfig) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=jnp.float32)


class CLIPAttention(nn.Module):
  """Self-attention with separate q/k/v/out projections (all with bias), scale Dh**-0.5."""
  cfg: CLIPConfig

  def setup(self):
    d = self.cfg.width
    self.q_proj = _dense(d, self.cfg.dtype)
    self.k_proj = _dense(d, self.cfg.dtype)
    self.v_proj = _dense(d, self.cfg.dtype)
    self.out_proj = _dense(d, self.cfg.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = multi_head_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.cfg.heads)
    return self.out_proj(out)


class CLIPMLP(nn.Module):
  cfg: CLIPConfig

  def setup(self):
    self.fc1 = _dense(self.cfg.mlp_dim, self.cfg.dtype)
    self.fc2 = _dense(self.cfg.width, self.cfg.dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
  """Pre-LN transformer layer: x + attn(ln1(x)), then + mlp(ln2(x))."""
  cfg: CLIPConfig

  def setup(self):
    self.self_attn = CLIPAttention(self.cfg)
    self.layer_norm1 = _layer_norm(self.cfg)
    self.mlp = CLIPMLP(self.cfg)
    self.layer_norm2 = _layer_norm(self.cfg)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.self_attn(self.layer_norm1(x))
    return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
  """Holds the layers; `CLIPVision` runs them one by one so it can insert the adapter."""
  cfg: CLIPConfig

  def setup(self):
    self.layers = [CLIPEncoderLayer(self.cfg) for _ in range(self.cfg.layers)]


class CLIPVisionEmbeddings(nn.Module):
  """Class token + bias-free patch convolution + learned position embeddings."""
  cfg: CLIPConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    cfg = self.cfg
    if pixels.shape[1:3] != (cfg.image_size, cfg.image_size):
      raise ValueError(f"expected {cfg.image_size}x{cfg.image_size} images, got {pixels.shape[1:3]}")
    p = cfg.patch_size
    x = nn.Conv(cfg.width, (p, p), strides=(p, p), padding="VALID", use_bias=False, dtype=cfg.dtype,
                param_dtype=jnp.float32, kernel_init=nn.initializers.normal(0.02),
                name="patch_embedding")(pixels.astype(cfg.dtype))
    n = x.shape[0]
    x = x.reshape(n, -1, cfg.width)
    cls = self.param("class_embedding", nn.initializers.normal(0.02), (cfg.width,), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, cfg.width)), x], axis=1)
    pos = nn.Embed(x.shape[1], cfg.width, param_dtype=jnp.float32,
                   embedding_init=nn.initializers.normal(0.02), name="position_embedding")
    return x + pos.embedding.astype(x.dtype)[None]


class CLIPVisionTransformer(nn.Module):
  """transformers' `CLIPVisionModel` submodules; the forward pass lives in `CLIPVision`."""
  cfg: CLIPConfig

  def setup(self):
    self.embeddings = CLIPVisionEmbeddings(self.cfg)
    self.pre_layrnorm = _layer_norm(self.cfg)
    self.encoder = CLIPEncoder(self.cfg)
    self.post_layernorm = _layer_norm(self.cfg)


class CrossModalAdapter(nn.Module):
  """`F + λ_E·Att(LN(F)·W_down^F, [LN(E)·W_down^E, LN(T)·W_down^T])·W_up` (Eq. 6–7).

  `f (N, L, width)`; `audio (N, Na, audio_dim)` and/or `text (N, Nt, text_dim)`. Kernels use
  LeCun-normal init, so m has unit scale and λ_E alone sets the adapter's contribution.
  """
  width: int
  dim: int
  heads: int
  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, f: jax.Array, audio: Optional[jax.Array] = None,
               text: Optional[jax.Array] = None) -> jax.Array:
    if audio is None and text is None:
      raise ValueError("the adapter needs audio or text tokens")

    dense = lambda features, name: _dense(features, self.dtype, name=name,
                                          kernel_init=nn.initializers.lecun_normal())

    def down(x, name):
      x = nn.LayerNorm(epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32, name=f"norm_{name}")(x)
      return dense(self.dim, f"down_{name}")(x)

    queries = down(f, "clip")
    memory = [down(x, name) for x, name in ((audio, "audio"), (text, "text")) if x is not None]
    memory = jnp.concatenate(memory, axis=1)
    q, k, v = dense(self.dim, "query")(queries), dense(self.dim, "key")(memory), dense(self.dim, "value")(memory)
    m = dense(self.dim, "out")(multi_head_attention(q, k, v, self.heads))
    m = dense(self.width, "up")(m)
    lambda_e = self.param("lambda_e", nn.initializers.zeros, (), jnp.float32)
    return f + lambda_e.astype(m.dtype) * m


class CLIPVision(nn.Module):
  """`CLIPVisionModelWithProjection` plus the audio/text adapter after layer `adapter_layer`.

  `__call__(pixels (N, H, W, 3) normalized, audio_tokens=None, text_tokens=None)` returns a
  dict with `image_embeds (N, proj_dim)`, `image_features` (L2-normalized), `pooled`
  (post-LN class token), `last_hidden_state` and `hidden_states` (tuple of layers+1 arrays).
  `encode_frames(frames (B, F, H, W, 3) uint8, ...)` gives one context token per frame.
  """
  config: CLIPConfig

  def setup(self):
    cfg = self.config
    self.vision_model = CLIPVisionTransformer(cfg)
    self.visual_projection = _dense(cfg.proj_dim, cfg.dtype, use_bias=False)
    if cfg.adapter_layer is not None:
      self.adapter = CrossModalAdapter(cfg.width, cfg.adapter_dim, cfg.adapter_heads,
                                       cfg.layer_norm_eps, cfg.dtype)

  def __call__(self, pixels: jax.Array, audio_tokens: Optional[jax.Array] = None,
               text_tokens: Optional[jax.Array] = None) -> dict:
    cfg = self.config
    use_adapter = audio_tokens is not None or text_tokens is not None
    if use_adapter and cfg.adapter_layer is None:
      raise ValueError("audio/text tokens given but the config has no adapter (adapter_layer=None)")
    vm = self.vision_model
    x = vm.pre_layrnorm(vm.embeddings(pixels))
    if use_adapter and cfg.adapter_layer == 0:
      x = self.adapter(x, audio_tokens, text_tokens)
    hidden_states = [x]
    for k, layer in enumerate(vm.encoder.layers, start=1):
      x = layer(x)
      if use_adapter and k == cfg.adapter_layer:
        x = self.adapter(x, audio_tokens, text_tokens)
      hidden_states.append(x)
    pooled = vm.post_layernorm(x[:, 0])
    embeds = self.visual_projection(pooled).astype(jnp.float32)
    return dict(image_embeds=embeds,
                image_features=embeds / jnp.linalg.norm(embeds, axis=-1, keepdims=True),
                pooled=pooled, last_hidden_state=x, hidden_states=tuple(hidden_states))

  def encode_frames(self, frames: jax.Array, audio_tokens: Optional[jax.Array] = None,
                    text_tokens: Optional[jax.Array] = None, normalize: bool = True) -> jax.Array:
    """Frames `(B, F, H, W, 3)` (uint8, or float in [0, 1]) -> image features `(B, F, proj_dim)`.

    Each frame goes through CLIP on its own; the tokens `(B, N, D)` of a clip are shared by
    all of its frames. `normalize=False` returns the un-normalized `image_embeds` (OpenAI
    CLIP's `encode_image`, what DAVIS feeds its temporal transformer).
    """
    b, f = frames.shape[:2]
    pixels = preprocess_frames(frames.reshape(b * f, *frames.shape[2:]), self.config.image_size)
    per_frame = lambda t: None if t is None else jnp.repeat(t, f, axis=0)
    out = self(pixels, per_frame(audio_tokens), per_frame(text_tokens))
    return out["image_features" if normalize else "image_embeds"].reshape(b, f, -1)


def preprocess_frames(frames: jax.Array, image_size: int) -> jax.Array:
  """Frames `(..., H, W, 3)` -> CLIP input `(..., S, S, 3)`: to [0, 1], resize, crop, mean/std.

  uint8 frames are divided by 255; float frames are taken to be in [0, 1] already.
  Frames already S x S are only rescaled and normalized (as `CLIPImageProcessor`). Other
  sizes get the shortest side resized to S (antialiased bicubic in float, which matches PIL's
  uint8 bicubic only approximately) and a center crop.
  """
  x = frames.astype(jnp.float32) / 255.0 if frames.dtype == jnp.uint8 else frames.astype(jnp.float32)
  h, w = x.shape[-3:-1]
  if (h, w) != (image_size, image_size):
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(image_size * long / short)
    nh, nw = (image_size, new_long) if h <= w else (new_long, image_size)
    x = jax.image.resize(x, (*x.shape[:-3], nh, nw, 3), method="bicubic", antialias=True)
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    x = x[..., top:top + image_size, left:left + image_size, :]
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def init_clip(key: jax.Array, config: CLIPConfig) -> dict:
  """Random parameters, including the adapter's for every configured token source."""
  s = config.image_size
  tokens = lambda dim: None if dim is None or config.adapter_layer is None else jnp.zeros((1, 1, dim))
  return CLIPVision(config).init(key, jnp.zeros((1, s, s, 3)), tokens(config.audio_dim),
                                 tokens(config.text_dim))["params"]


def clip_forward(params: dict, pixels: jax.Array, audio_tokens: Optional[jax.Array] = None,
                 text_tokens: Optional[jax.Array] = None, *, config: CLIPConfig) -> dict:
  """Pure-function form of `CLIPVision.__call__`."""
  return CLIPVision(config).apply({"params": params}, pixels, audio_tokens, text_tokens)


def encode_frames(params: dict, frames: jax.Array, audio_tokens: Optional[jax.Array] = None,
                  text_tokens: Optional[jax.Array] = None, *, config: CLIPConfig) -> jax.Array:
  """Pure-function form of `CLIPVision.encode_frames`: `(B, F, H, W, 3)` -> `(B, F, proj_dim)`."""
  return CLIPVision(config).apply({"params": params}, frames, audio_tokens, text_tokens,
                                  method=CLIPVision.encode_frames)

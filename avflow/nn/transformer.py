"""`torch.nn.Transformer` in Flax: post-LN encoder and decoder stacks with ReLU feed-forwards.

`Transformer(d_model, num_heads, encoder_layers, decoder_layers, ff_dim)(src, tgt)` follows the PyTorch module
with its defaults (`norm_first=False`, `activation="relu"`, `layer_norm_eps=1e-5`, `batch_first=True`) and without
dropout, masks or positional encodings (PyTorch adds none either):

    memory = encoder.norm(encoder_layer_N(... encoder_layer_1(src)))
    out    = decoder.norm(decoder_layer_M(... decoder_layer_1(tgt, memory), memory))
    encoder layer:  x = norm1(x + self_attn(x));  x = norm2(x + linear2(relu(linear1(x))))
    decoder layer:  x = norm1(x + self_attn(x));  x = norm2(x + multihead_attn(x, memory));  x = norm3(x + ff(x))

Parameter names mirror the PyTorch keys (`encoder/layers_{i}/...` <-> `encoder.layers.{i}....`, `decoder/norm` <->
`decoder.norm`; Dense `kernel` = `weight.T`, LayerNorm `scale` = `weight`; attention as
`avflow.nn.attention.MultiheadAttention`), so the parameter count equals PyTorch's. Weights are initialised
Xavier-uniform, as `nn.Transformer._reset_parameters` does for every matrix.
"""
import flax.linen as nn
import jax

from avflow.nn.attention import MultiheadAttention

_LN_EPS = 1e-5


def _layer_norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=_LN_EPS, use_fast_variance=False, name=name)


def _feed_forward(x: jax.Array, ff_dim: int) -> jax.Array:
  xavier = nn.initializers.xavier_uniform()
  h = nn.relu(nn.Dense(ff_dim, kernel_init=xavier, name="linear1")(x))
  return nn.Dense(x.shape[-1], kernel_init=xavier, name="linear2")(h)


class EncoderLayer(nn.Module):
  """`nn.TransformerEncoderLayer` (post-LN, ReLU) on `(B, L, D)`."""
  num_heads: int
  ff_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _layer_norm("norm1")(x + MultiheadAttention(self.num_heads, name="self_attn")(x, x, x))
    return _layer_norm("norm2")(x + _feed_forward(x, self.ff_dim))


class DecoderLayer(nn.Module):
  """`nn.TransformerDecoderLayer` (post-LN, ReLU) on `(B, L, D)` attending to `memory (B, M, D)`."""
  num_heads: int
  ff_dim: int

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array) -> jax.Array:
    x = _layer_norm("norm1")(x + MultiheadAttention(self.num_heads, name="self_attn")(x, x, x))
    x = _layer_norm("norm2")(x + MultiheadAttention(self.num_heads, name="multihead_attn")(x, memory, memory))
    return _layer_norm("norm3")(x + _feed_forward(x, self.ff_dim))


class Encoder(nn.Module):
  num_heads: int
  ff_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = EncoderLayer(self.num_heads, self.ff_dim, name=f"layers_{i}")(x)
    return _layer_norm("norm")(x)


class Decoder(nn.Module):
  num_heads: int
  ff_dim: int
  num_layers: int

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = DecoderLayer(self.num_heads, self.ff_dim, name=f"layers_{i}")(x, memory)
    return _layer_norm("norm")(x)


class Transformer(nn.Module):
  """`nn.Transformer(d_model=D, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward)`:
  `src (B, S, D)`, `tgt (B, L, D)` -> `(B, L, D)`; D is the width of the inputs."""
  num_heads: int
  encoder_layers: int
  decoder_layers: int
  ff_dim: int

  @nn.compact
  def __call__(self, src: jax.Array, tgt: jax.Array) -> jax.Array:
    memory = Encoder(self.num_heads, self.ff_dim, self.encoder_layers, name="encoder")(src)
    return Decoder(self.num_heads, self.ff_dim, self.decoder_layers, name="decoder")(tgt, memory)

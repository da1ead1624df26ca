"""Demucs building blocks in Flax, channels-last, with PyTorch-compatible parameters.

Ported from the layer descriptions of the public demucs / VisAH code (`DConv`, `BLSTM`,
`LocalState`, `LayerScale`, `ScaledEmbedding`, `rescale_module`). Every parameter maps
one-to-one onto a PyTorch tensor:

- `Conv` / `ConvTranspose`: `kernel` is the PyTorch `weight` transposed: `.T` for 1-D,
  `transpose(2, 3, 1, 0)` for 2-D (back to PyTorch: `.T` / `transpose(3, 2, 0, 1)`); this
  holds for transposed convolutions too, whose Flax kernel is `(spatial..., out, in)`
  (`transpose_kernel=True` semantics). `bias` as is.
- `nn.GroupNorm`: `scale` / `bias` = `weight` / `bias`. `nn.Dense`: `kernel` = `weight.T`.
- `BiLSTM`: parameters carry the PyTorch names and shapes exactly (`weight_ih_l0`,
  `bias_hh_l1_reverse`, ...; gate order i, f, g, o), so they copy without change.
- `LayerScale.scale`, `ScaledEmbedding.embedding` (= `embedding.weight`): as is.

Initialisation follows PyTorch (uniform in `±1/sqrt(fan_in)` for convs, linears and LSTMs),
so that the `rescale` trick of demucs sees the same weight statistics: a conv built with
`rescale=r` divides its weight and bias by `sqrt(std(weight) / r)` at init.
"""
import functools
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
# `model.conv_impl`: "matmul" differentiates convolutions and computes transposed convolutions as matmuls (fast on
# XLA:CPU, whose convolution gradients run slowly inside loops), "xla" leaves both to XLA's own convolutions,
# "auto" picks matmul on the CPU backend and XLA's elsewhere.
CONV_IMPLS = ("auto", "xla", "matmul")


def resolve_conv_impl(impl: str) -> str:
  """"xla" or "matmul" for a `model.conv_impl` ("auto": by `jax.default_backend()` when traced)."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl={impl!r}; expected one of {CONV_IMPLS}")
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  return impl


def torch_uniform(fan_in: int):
  """PyTorch's default init for conv / linear weights and biases: U(±1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as `torch.nn.functional.gelu`."""
  return jax.nn.gelu(x, approximate=False)


def glu(x: jax.Array) -> jax.Array:
  """`torch.nn.functional.glu` on the channel (last) axis: first half * sigmoid(second)."""
  a, b = jnp.split(x, 2, axis=-1)
  return a * jax.nn.sigmoid(b)


def group_norm(num_groups: int, name: str) -> nn.GroupNorm:
  """`torch.nn.GroupNorm(num_groups, C)` (eps 1e-5) on channels-last inputs."""
  return nn.GroupNorm(num_groups=num_groups, epsilon=1e-5, use_fast_variance=False, name=name)


def dense(features: int, fan_in: int, name: str) -> nn.Dense:
  """`torch.nn.Linear` with its default initialisation."""
  return nn.Dense(features, kernel_init=torch_uniform(fan_in), bias_init=torch_uniform(fan_in),
                  name=name)


def _conv_params(module: nn.Module, kernel_shape: Tuple[int, ...], fan_in: int,
                 features: int, rescale: Optional[float], kernel_gain: float,
                 bias_value: Optional[float]):
  """Kernel and bias with PyTorch init, then the demucs rescale (weight and bias / s).

  `s = sqrt(std(w) / rescale)` with the unbiased std of the initial weight `w`. The bias
  init recovers `s` from the already rescaled kernel: `std(w / s) / rescale == s`.
  """
  def kernel_init(key, shape):
    w = kernel_gain * torch_uniform(fan_in)(key, shape)
    if rescale:
      w = w / jnp.sqrt(jnp.std(w, ddof=1) / rescale)
    return w

  kernel = module.param("kernel", kernel_init, kernel_shape)

  def bias_init(key, shape):
    if bias_value is None:
      b = torch_uniform(fan_in)(key, shape)
    else:
      b = jnp.full(shape, bias_value, jnp.float32)
    if rescale:
      b = b / (jnp.std(kernel, ddof=1) / rescale)
    return b

  return kernel, module.param("bias", bias_init, (features,))


def _tap_slices(kernel_size: Sequence[int], dilation: int, out_size: Sequence[int]):
  """For every kernel tap (multi-index j), the window `j·dilation : j·dilation + out` of each spatial axis."""
  for tap in np.ndindex(*kernel_size):
    yield tap, tuple(slice(j * dilation, j * dilation + o) for j, o in zip(tap, out_size))


def _taps_conv_grads(x: jax.Array, kernel: jax.Array, dilation: int, g: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Gradients of a stride-1, unpadded convolution `(N, *S, C) x (*K, C, O)` for the output cotangent g, as one
  pair of matmuls per kernel tap: the input's as `g · kernelᵀ` added back at the tap's window (the matmul form of
  the transposed convolution), the kernel's as `x · g` over that window.

  Every tap needs x and g aligned, i.e. one of them copied: the one with fewer channels. g is padded into x's
  frame where it has fewer (O < C: the DConv bottlenecks and the strided encoders' folded channels), else x's
  window is sliced out (docs/performance.md: 0.3–0.4 s of the paper-shape FM step).
  """
  batch_axes = tuple(range(g.ndim - 1))
  pad_g = g.shape[-1] < x.shape[-1]
  d_kernel, d_x = [], None
  for tap, window in _tap_slices(kernel.shape[:-2], dilation, g.shape[1:-1]):
    # g's window placed in x's frame: zeros before and after the window on each spatial axis.
    shifts = [(0, 0, 0), *[(w.start, size - w.stop, 0) for w, size in zip(window, x.shape[1:-1])], (0, 0, 0)]
    if pad_g:
      d_kernel.append(jnp.tensordot(x, jax.lax.pad(g, jnp.zeros((), g.dtype), shifts), axes=(batch_axes, batch_axes)))
    else:
      d_kernel.append(jnp.tensordot(x[(slice(None), *window)], g, axes=(batch_axes, batch_axes)))
    d_x_tap = jnp.tensordot(g, kernel[tap], axes=((g.ndim - 1,), (1,)))
    d_x_tap = jax.lax.pad(d_x_tap, jnp.zeros((), d_x_tap.dtype), shifts)
    d_x = d_x_tap if d_x is None else d_x + d_x_tap
  return d_x, jnp.stack(d_kernel).reshape(kernel.shape)


def _check_foldable(kernel_size: Sequence[int], strides: Sequence[int], dilation: int) -> None:
  for axis, (k, s) in enumerate(zip(kernel_size, strides)):
    if s != 1 and (k % s or dilation != 1):
      raise ValueError(f"conv: kernel {k} along spatial axis {axis} is not a multiple of its stride {s} (or the "
                       "layer is both strided and dilated); its gradient cannot be folded into matmuls")


def _fold_strides(x: jax.Array, kernel: jax.Array, strides: Sequence[int], padding: Sequence[Tuple[int, int]],
                  dilation: int) -> Tuple[jax.Array, jax.Array]:
  """Pads x and folds every strided axis into the channels: the stride-1 convolution of the results equals the
  strided one. A strided axis needs a kernel that is a multiple of its stride (`_check_foldable`; every strided
  demucs conv: kernel 8, stride 4 → 2 taps over 4·C channels)."""
  nd = kernel.ndim - 2
  x = jnp.pad(x, [(0, 0), *padding, (0, 0)])
  for axis, (k, s) in enumerate(zip(kernel.shape[:nd], strides)):
    if s == 1:
      continue
    n_out = (x.shape[axis + 1] - k) // s + 1
    blocks = n_out + k // s - 1
    x = jnp.pad(x, [(0, 0)] * (axis + 1) + [(0, max(0, blocks * s - x.shape[axis + 1]))] + [(0, 0)] * (nd - axis))
    x = jax.lax.slice_in_dim(x, 0, blocks * s, axis=axis + 1)
    # (..., blocks·s, ..., C) -> (..., blocks, ..., s·C), channel index = phase·C + c.
    x = x.reshape(*x.shape[:axis + 1], blocks, s, *x.shape[axis + 2:])
    x = jnp.moveaxis(x, axis + 2, -2).reshape(*x.shape[:axis + 2], *x.shape[axis + 3:-1], s * x.shape[-1])
    # (..., k, ..., C, O) -> (..., k/s, ..., s·C, O), the same phase-major channel order.
    kernel = kernel.reshape(*kernel.shape[:axis], k // s, s, *kernel.shape[axis + 1:])
    kernel = jnp.moveaxis(kernel, axis + 1, -3)
    kernel = kernel.reshape(*kernel.shape[:-3], s * kernel.shape[-2], kernel.shape[-1])
  return x, kernel


def xla_conv(x: jax.Array, kernel: jax.Array, strides: Tuple[int, ...], padding: Tuple[Tuple[int, int], ...],
             dilation: int = 1) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last `x (N, *S, C)` and `kernel (*K, C, O)`, differentiated by XLA."""
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=(dilation,) * len(strides),
                                      dimension_numbers=_DIMENSION_NUMBERS[len(strides)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x: jax.Array, kernel: jax.Array, strides: Tuple[int, ...], padding: Tuple[Tuple[int, int], ...],
         dilation: int = 1) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last `x (N, *S, C)` and `kernel (*K, C, O)`: XLA's own forward, the
  gradient as matmuls (strided axes folded into the channels, then one matmul pair per kernel tap).

  XLA:CPU runs a convolution's forward well everywhere, but the convolutions of its gradient (input-dilated for
  strided layers) ~10x slower inside a `while` loop, i.e. in the backward pass of the rollout's `lax.scan`; as
  matmuls they run at full speed there. Only x and the kernel are kept for the backward.
  """
  _check_foldable(kernel.shape[:-2], strides, dilation)
  return xla_conv(x, kernel, strides, padding, dilation)


def _conv_fwd(x, kernel, strides, padding, dilation):
  return conv(x, kernel, strides, padding, dilation), (x, kernel)


def _conv_bwd(strides, padding, dilation, residuals, g):
  (x, kernel), unfold = jax.vjp(lambda x, k: _fold_strides(x, k, strides, padding, dilation), *residuals)
  return unfold(_taps_conv_grads(x, kernel, dilation, g))


conv.defvjp(_conv_fwd, _conv_bwd)


def conv_fn(impl: str):
  """The convolution of a `model.conv_impl`: `conv` (matmul gradient) or `xla_conv`."""
  return conv if resolve_conv_impl(impl) == "matmul" else xla_conv


def flax_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, precision=None, impl="auto"):
  """`conv_fn(impl)` behind `lax.conv_general_dilated`'s signature, for `flax.linen.Conv(conv_general_dilated=)`
  (channels-last, no input dilation or feature groups, the same dilation on every axis)."""
  del dimension_numbers, precision  # flax passes channels-last numbers; the default precision is used
  nd = rhs.ndim - 2
  if any(d != 1 for d in lhs_dilation or ()) or feature_group_count != 1 or len(set(rhs_dilation or (1,))) != 1:
    raise ValueError("flax_conv: no input dilation, feature groups or per-axis dilation")
  dilation = (rhs_dilation or (1,))[0]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], [dilation * (k - 1) + 1 for k in rhs.shape[:nd]],
                                      window_strides, padding)
  return conv_fn(impl)(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), dilation)


class Conv(nn.Module):
  """`torch.nn.Conv1d` / `Conv2d` on `(N, spatial..., C)`; kernel `(spatial..., in, out)`.

  `padding` holds one `(low, high)` pair per spatial axis (zeros). `kernel_gain` and
  `bias_value` modify the PyTorch init before the rescale (used by `LocalState`); `impl` is a
  `model.conv_impl` (`conv_fn`).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Optional[Sequence[int]] = None
  padding: Optional[Sequence[Tuple[int, int]]] = None
  dilation: int = 1
  rescale: Optional[float] = None
  kernel_gain: float = 1.0
  bias_value: Optional[float] = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = len(self.kernel_size)
    cin = x.shape[-1]
    kernel, bias = _conv_params(
        self, (*self.kernel_size, cin, self.features), cin * math.prod(self.kernel_size),
        self.features, self.rescale, self.kernel_gain, self.bias_value)
    y = conv_fn(self.impl)(x, kernel, tuple(self.strides or (1,) * nd),
                           tuple(map(tuple, self.padding or ((0, 0),) * nd)), self.dilation)
    return y + bias


def _overlap_add(y: jax.Array, stride: int) -> jax.Array:
  """`y (N, T, k, ...)`: frames of k positions every `stride` along axis 1, summed where they
  overlap -> `(N, (T - 1) * stride + k, ...)`."""
  n, t, k = y.shape[:3]
  rest = y.shape[3:]
  r = -(-k // stride)
  tail = [(0, 0)] * len(rest)
  y = jnp.pad(y, [(0, 0), (0, 0), (0, r * stride - k)] + tail)
  y = y.reshape(n, t, r, stride, *rest)
  out = sum(jnp.pad(y[:, :, j], [(0, 0), (j, r - 1 - j), (0, 0)] + tail) for j in range(r))
  return out.reshape(n, (t + r - 1) * stride, *rest)[:, :(t - 1) * stride + k]


class ConvTranspose(nn.Module):
  """`torch.nn.ConvTranspose1d` / `2d` without padding: length `(n - 1) * stride + k`.

  Kernel `(spatial..., out, in)`, i.e. `transpose_kernel=True` semantics, so that it is
  the PyTorch weight `(in, out, spatial...)` transposed like a conv weight: `.T` (1-D),
  `transpose(2, 3, 1, 0)` (2-D). PyTorch's init uses `fan_in = out * prod(kernel)`.
  2-D kernels must be `(k, 1)` with strides `(s, 1)` (the demucs frequency layers).

  With `impl` "matmul" (`model.conv_impl`, the CPU default) computed as one matmul giving
  every output frame, then an overlap-add: exact, and much faster (forward and backward) than
  an input-dilated convolution on XLA:CPU; with "xla" as `lax.conv_transpose`.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  rescale: Optional[float] = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    nd = len(self.kernel_size)
    if nd == 2 and (self.kernel_size[1] != 1 or self.strides[1] != 1):
      raise ValueError("2-D transposed convs must have kernel (k, 1) and stride (s, 1)")
    kernel, bias = _conv_params(
        self, (*self.kernel_size, self.features, x.shape[-1]),
        self.features * math.prod(self.kernel_size), self.features, self.rescale, 1.0, None)
    if resolve_conv_impl(self.impl) == "xla":
      y = jax.lax.conv_transpose(x, kernel, tuple(self.strides), [(k - 1, k - 1) for k in self.kernel_size],
                                 dimension_numbers=_DIMENSION_NUMBERS[nd], transpose_kernel=True)
    elif nd == 1:
      y = _overlap_add(jnp.einsum("ntc,koc->ntko", x, kernel), self.strides[0])
    else:
      y = _overlap_add(jnp.einsum("nftc,koc->nfkto", x, kernel[:, 0]), self.strides[0])
    return y + bias


class LayerScale(nn.Module):
  """Per-channel scale initialised to `init_value` (demucs `LayerScale`, channels-last)."""
  init_value: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],))
    return scale * x


class ScaledEmbedding(nn.Module):
  """Embedding stored divided by `scale` and multiplied back at use (demucs, freq. emb.).

  With `smooth`, the initial table is the cumulative sum of N(0, 1) rows divided by
  `sqrt(row index + 1)`, so that neighbouring frequencies start with similar embeddings.
  """
  num_embeddings: int
  features: int
  scale: float = 10.0
  smooth: bool = True

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    def init(key, shape):
      w = jax.random.normal(key, shape)
      if self.smooth:
        w = jnp.cumsum(w, axis=0) / jnp.sqrt(jnp.arange(1, shape[0] + 1, dtype=w.dtype))[:, None]
      return w / self.scale

    table = self.param("embedding", init, (self.num_embeddings, self.features))
    return table[ids] * self.scale


def _lstm_scan(gates_x: jax.Array, w_hh: jax.Array) -> jax.Array:
  """Run D independent LSTMs: `gates_x (D, N, T, 4h)` input projections (biases included),
  `w_hh (D, 4h, h)`; returns hidden states `(D, N, T, h)`. Gate order i, f, g, o."""
  d, n, _, four_h = gates_x.shape
  h = four_h // 4

  def step(carry, gx):
    hid, cell = carry
    g = gx + jnp.einsum("dnk,dgk->dng", hid, w_hh)
    i, f, gg, o = jnp.split(g, 4, axis=-1)
    cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(gg)
    hid = jax.nn.sigmoid(o) * jnp.tanh(cell)
    return (hid, cell), hid

  zeros = jnp.zeros((d, n, h), gates_x.dtype)
  _, hs = jax.lax.scan(step, (zeros, zeros), jnp.moveaxis(gates_x, 2, 0))
  return jnp.moveaxis(hs, 0, 2)


class BiLSTM(nn.Module):
  """`torch.nn.LSTM(dim, hidden, num_layers, bidirectional=True)` on `(N, T, C)`.

  Zero initial state; returns `(N, T, 2 * hidden)` (forward, then backward features).
  Both directions of a layer run in one `lax.scan`.
  """
  hidden: int
  num_layers: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.hidden
    init = torch_uniform(h)
    for layer in range(self.num_layers):
      names = [f"l{layer}", f"l{layer}_reverse"]
      w_ih = jnp.stack([self.param(f"weight_ih_{s}", init, (4 * h, x.shape[-1])) for s in names])
      w_hh = jnp.stack([self.param(f"weight_hh_{s}", init, (4 * h, h)) for s in names])
      bias = jnp.stack([self.param(f"bias_ih_{s}", init, (4 * h,))
                        + self.param(f"bias_hh_{s}", init, (4 * h,)) for s in names])
      gx = jnp.einsum("ntc,dgc->dntg", x, w_ih) + bias[:, None, None, :]
      gx = jnp.stack([gx[0], gx[1, :, ::-1]])
      hs = _lstm_scan(gx, w_hh)
      x = jnp.concatenate([hs[0], hs[1, :, ::-1]], axis=-1)
    return x


class BLSTM(nn.Module):
  """Demucs `BLSTM(dim, layers=2, max_steps, skip=True)` on `(N, T, C)`, C = `dim`.

  A bidirectional LSTM with hidden size `dim`, then `Linear(2 dim, dim)`, plus the input.
  When `T > max_steps` the LSTM runs on windows of `max_steps` frames with stride
  `max_steps // 2` (zero-padded at the end); the outputs are stitched by keeping
  `[:-limit]` of the first window, `[limit:-limit]` of the middle ones and `[limit:]` of the
  last, `limit = max_steps // 4`, then cropped to T.
  """
  dim: int
  layers: int = 2
  max_steps: Optional[int] = 200

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, c = x.shape
    lstm = BiLSTM(self.dim, self.layers, name="lstm")
    linear = dense(self.dim, 2 * self.dim, "linear")
    if self.max_steps is None or t <= self.max_steps:
      return x + linear(lstm(x))
    if self.max_steps % 4:
      raise ValueError(f"max_steps must be a multiple of 4, got {self.max_steps}")
    width = self.max_steps
    stride = width // 2
    limit = stride // 2
    n_frames = -(-t // stride)
    padded = jnp.pad(x, ((0, 0), (0, (n_frames + 1) * stride - t), (0, 0)))
    blocks = padded.reshape(n, n_frames + 1, stride, c)
    frames = jnp.concatenate([blocks[:, :-1], blocks[:, 1:]], axis=2)  # (N, F, width, C)
    y = linear(lstm(frames.reshape(n * n_frames, width, c))).reshape(n, n_frames, width, c)
    middle = y[:, :, limit:width - limit].reshape(n, n_frames * stride, c)
    y = jnp.concatenate([y[:, 0, :limit], middle, y[:, -1, width - limit:]], axis=1)
    return x + y[:, :t]


class LocalState(nn.Module):
  """Demucs `LocalState(channels, heads=4, ndecay=4)`: local attention over time.

  `dots[t, s] = k_t . q_s / sqrt(C / heads) + sum_f sigmoid(qd_{f,s}) / 2 * (-f |t - s| /
  sqrt(ndecay))`, f = 1..ndecay, with the diagonal set to -100, softmax over keys t;
  returns `x + proj(attention . content)`. 1x1 convs `content`, `query`, `key`,
  `query_decay` (heads * ndecay outputs; init weight x0.01, bias -2) and `proj`.
  """
  channels: int
  heads: int = 4
  ndecay: int = 4
  rescale: Optional[float] = None
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, c = x.shape
    heads, ndecay = self.heads, self.ndecay

    def conv(features, name, **kw):
      return Conv(features, (1,), rescale=self.rescale, impl=self.conv_impl, name=name, **kw)

    queries = conv(c, "query")(x).reshape(n, t, heads, c // heads)
    keys = conv(c, "key")(x).reshape(n, t, heads, c // heads)
    dots = jnp.einsum("nthc,nshc->nhts", keys, queries) / math.sqrt(c // heads)
    decay_q = conv(heads * ndecay, "query_decay", kernel_gain=0.01, bias_value=-2.0)(x)
    decay_q = jax.nn.sigmoid(decay_q.reshape(n, t, heads, ndecay)) / 2
    delta = np.abs(np.arange(t)[:, None] - np.arange(t)[None, :]).astype(np.float32)
    decay_kernel = -np.arange(1, ndecay + 1, dtype=np.float32)[:, None, None] * delta
    dots = dots + jnp.einsum("fts,nshf->nhts", decay_kernel / math.sqrt(ndecay), decay_q)
    dots = jnp.where(np.eye(t, dtype=bool), -100.0, dots)
    weights = jax.nn.softmax(dots, axis=2)
    content = conv(c, "content")(x).reshape(n, t, heads, c // heads)
    result = jnp.einsum("nhts,nthc->nshc", weights, content).reshape(n, t, c)
    return x + conv(c, "proj")(result)


class DConvLayer(nn.Module):
  """One residual branch of `DConv`; sub-modules are named by their PyTorch `Sequential`
  index: conv(3, dilation) `0`, GroupNorm(1) `1`, GELU, [BLSTM `3`], [LocalState],
  conv(1) to 2C, GroupNorm(1), GLU, LayerScale (`3..6` without, `5..8` with LSTM+attn)."""
  channels: int
  hidden: int
  dilation: int
  scale_init: float
  lstm: bool
  attn: bool
  lstm_max_steps: Optional[int]
  rescale: Optional[float]
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = self.dilation
    y = Conv(self.hidden, (3,), padding=((d, d),), dilation=d, rescale=self.rescale,
             impl=self.conv_impl, name="0")(x)
    y = gelu(group_norm(1, "1")(y))
    index = 3
    if self.lstm:
      y = BLSTM(self.hidden, layers=2, max_steps=self.lstm_max_steps, name=str(index))(y)
      index += 1
    if self.attn:
      y = LocalState(self.hidden, rescale=self.rescale, conv_impl=self.conv_impl, name=str(index))(y)
      index += 1
    y = Conv(2 * self.channels, (1,), rescale=self.rescale, impl=self.conv_impl, name=str(index))(y)
    y = glu(group_norm(1, str(index + 1))(y))
    return LayerScale(self.scale_init, name=str(index + 3))(y)


class DConv(nn.Module):
  """Demucs `DConv` residual stack on `(N, T, C)`: `depth` branches with dilation `2**d`,
  hidden width `C / compress`, each added to its input. Branches are `layers_{d}`."""
  channels: int
  compress: float = 4
  depth: int = 2
  scale_init: float = 1e-4
  lstm: bool = False
  attn: bool = False
  lstm_max_steps: Optional[int] = 200
  rescale: Optional[float] = None
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = int(self.channels / self.compress)
    for d in range(self.depth):
      x = x + DConvLayer(self.channels, hidden, 2**d, self.scale_init, self.lstm, self.attn,
                         self.lstm_max_steps, self.rescale, self.conv_impl, name=f"layers_{d}")(x)
    return x

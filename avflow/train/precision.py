"""Mixed precision (`config.precision`): float32 parameters and optimizer state, bfloat16 matmuls and convolutions.

`autocast(fn, "bf16")` traces `fn` and evaluates its jaxpr again with every float32 `dot_general` and
`conv_general_dilated` (also inside scans, remat and jit calls) run on bfloat16 operands with a bfloat16 result cast
back to float32, as `torch.autocast` does. Everything else (STFT, normalization, softmax, losses and reductions) stays
float32, and gradients with respect to float32 parameters come back float32. The model code needs no dtype plumbing.
"""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.extend import core

PRECISIONS = {"fp32": None, "bf16": jnp.bfloat16}
_LOW_PRECISION_OPS = ("dot_general", "conv_general_dilated")


def compute_dtype(precision: str):
  if precision not in PRECISIONS:
    raise ValueError(f"config.precision={precision!r}; expected one of {tuple(PRECISIONS)}")
  return PRECISIONS[precision]


def autocast(fn: Callable, precision: str) -> Callable:
  """`fn` with its float32 matmuls and convolutions computed in the precision's dtype (identity for fp32)."""
  dtype = compute_dtype(precision)
  if dtype is None:
    return fn

  @functools.wraps(fn)
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    outs = _eval(closed.jaxpr, closed.consts, dtype, jax.tree.leaves(args))
    return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

  return wrapped


def _eval(jaxpr, consts, dtype, args):
  env = {}

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    with eqn.ctx.manager:
      if eqn.primitive.name in _LOW_PRECISION_OPS and all(x.dtype == jnp.float32 for x in invals):
        params = dict(eqn.params, preferred_element_type=dtype)
        outs = [eqn.primitive.bind(*(x.astype(dtype) for x in invals), **params).astype(jnp.float32)]
      else:
        params = eqn.primitive.get_bind_params({k: _rewrite(v, dtype) for k, v in eqn.params.items()})
        outs = eqn.primitive.bind(*invals, **params)
        outs = outs if eqn.primitive.multiple_results else [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def _rewrite(param, dtype):
  """Sub-jaxprs of higher-order primitives (scan, remat, jit, cond, while, custom_jvp) with the same rewrite."""
  if isinstance(param, core.ClosedJaxpr):
    return _rewrite_closed(param.jaxpr, tuple(param.consts), dtype)
  if isinstance(param, core.Jaxpr):
    closed = _rewrite_closed(param, (), dtype)
    if closed.consts:
      raise NotImplementedError("autocast: an open sub-jaxpr acquired constants")
    return closed.jaxpr
  if isinstance(param, tuple) and any(isinstance(p, (core.ClosedJaxpr, core.Jaxpr)) for p in param):
    return tuple(_rewrite(p, dtype) for p in param)
  return param


def _rewrite_closed(jaxpr, consts, dtype) -> core.ClosedJaxpr:
  avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type) for v in jaxpr.invars]
  return jax.make_jaxpr(lambda *a: _eval(jaxpr, consts, dtype, a))(*avals)

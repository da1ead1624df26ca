"""VisAH-FM's velocity algebra (warm start, Sec. 3.1 / Table 7) and the conditioning kinds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow.models.visah.highlighter import Highlighter, frozen_prefixes
from avflow.train.state import abstract_batch
from conftest import tiny


def _random_batch(config, key):
  spec = abstract_batch(config, batch_size=2)
  keys = jax.random.split(key, len(spec))
  out = {}
  for k, (name, s) in zip(keys, sorted(spec.items())):
    if s.dtype == jnp.uint8:
      out[name] = jax.random.randint(k, s.shape, 0, 256).astype(jnp.uint8)
    else:
      out[name] = 0.1 * jax.random.normal(k, s.shape, s.dtype)
  return out


def test_warm_start_velocity_is_u_minus_x0():
  import visah_fm
  c = tiny(visah_fm.get_config("toy"), micro=True)
  batch = _random_batch(c, jax.random.PRNGKey(0))
  t = jnp.array([0.25, 0.5])
  model = Highlighter(c.model)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), batch, t)
  x_t = batch["x1"]  # any state; x0 enters only through the warm start

  @jax.jit
  def parts(params):
    ctx = model.apply(params, batch, method=Highlighter.encode)
    v = model.apply(params, x_t, t, ctx, batch["x0"], method=Highlighter.velocity)
    u = model.apply(params, x_t, ctx, t, method=lambda m, x, c, t: m.backbone(x, c, t))
    c.model.warm_start = False
    v_plain = Highlighter(c.model).apply(params, x_t, t, ctx, batch["x0"], method=Highlighter.velocity)
    return v, u, v_plain

  v, u, v_plain = parts(params)
  np.testing.assert_allclose(v, u - batch["x0"], atol=1e-6)
  np.testing.assert_allclose(v_plain, u, atol=1e-6)
  assert float(jnp.abs(u).mean()) > 0


def test_conditioning_kinds_and_frozen_parts(tiny_fm_config):
  c = tiny_fm_config
  assert frozen_prefixes(c.model) == ()
  c.model.conditioning.kind = "clip_adapter"
  c.model.conditioning.modalities = ("audio",)
  assert frozen_prefixes(c.model) == ("clip/vision_model", "clip/visual_projection", "clap")
  c.model.conditioning.modalities = ("text",)
  assert "clap" not in frozen_prefixes(c.model)
  c.model.conditioning.kind = "telepathy"
  batch = _random_batch(tiny_fm_config, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="conditioning.kind"):
    jax.eval_shape(Highlighter(c.model).init, jax.random.PRNGKey(0), batch, jnp.zeros(2))
  c.model.conditioning.kind = "clip_adapter"
  c.model.conditioning.modalities = ("audio",)  # tiny CLIP gives 24-d features, the toy latent expects 16
  with pytest.raises(ValueError, match="context_dim"):
    jax.eval_shape(Highlighter(c.model).init, jax.random.PRNGKey(0), batch, jnp.zeros(2))

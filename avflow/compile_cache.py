"""JAX's persistent compilation cache, on for every command: a second `train`, `eval`, `highlight` or `bench` of
the same shapes loads its compiled steps from disk instead of compiling them again.

Where it lives, first match wins:
- `JAX_COMPILATION_CACHE_DIR`, JAX's own setting, when set;
- `AVFLOW_COMPILATION_CACHE`: a folder, or `off` to compile afresh every time;
- `$XDG_CACHE_HOME/avflow/jax` (`~/.cache/avflow/jax` without XDG_CACHE_HOME).
"""
import contextlib
import os

import jax
from jax import monitoring

ENV = "AVFLOW_COMPILATION_CACHE"
OFF = ("off", "0", "false", "no")
HIT_EVENT = "/jax/compilation_cache/cache_hits"


def cache_dir() -> str | None:
  """The cache folder the environment chooses, or None when it is turned off."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  choice = os.environ.get(ENV, "").strip()
  if choice.lower() in OFF:
    return None
  if choice:
    return os.path.expanduser(choice)
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "avflow", "jax")


def enable() -> str | None:
  """Points JAX at `cache_dir()` (JAX reads its own variable itself); returns the folder, None when off."""
  folder = cache_dir()
  if folder and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", folder)
  return folder


@contextlib.contextmanager
def count_hits():
  """Counts the compiles inside the block that the persistent cache answered: yields a one-element list."""
  hits = [0]

  def listener(event, **kwargs):
    if event == HIT_EVENT:
      hits[0] += 1

  monitoring.register_event_listener(listener)
  try:
    yield hits
  finally:
    monitoring.unregister_event_listener(listener)

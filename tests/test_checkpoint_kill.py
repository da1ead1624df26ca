"""A SIGKILL during a checkpoint save never damages the last complete checkpoint.

This file doubles as the child process: `python test_checkpoint_kill.py WORKDIR FIRST_STEP` saves a 64 MiB tree
with the project's `Checkpointer` at steps FIRST_STEP, FIRST_STEP + 1, ... until it is killed.
"""
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from avflow.train.checkpoint import Checkpointer


def _tree(step: int) -> dict:
  """The tree saved at `step`: 64 MiB of float32 whose every value depends on the step."""
  base = np.random.default_rng(0).standard_normal((4, 2 ** 22), dtype=np.float32)
  return {"params": {"w": jnp.asarray(base + step), "b": jnp.full((1000,), step, jnp.float32)},
          "step": jnp.asarray(step, jnp.int32)}


def _save_forever(workdir: str, first_step: int) -> None:
  ckpt = Checkpointer(workdir, max_to_keep=2)
  step = first_step
  while True:
    tree = _tree(step)
    print(f"saving {step}", flush=True)
    ckpt.save(step, tree)
    ckpt.wait()
    print(f"saved {step}", flush=True)
    step += 1


def _run_and_kill(workdir: str, first_step: int, kill_at: int, delay_s: float) -> list[str]:
  """Starts the saver and SIGKILLs it `delay_s` after it starts saving step `kill_at`; returns its output lines."""
  proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), workdir, str(first_step)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  lines = []
  for line in proc.stdout:
    lines.append(line.strip())
    if lines[-1] == f"saving {kill_at}":
      time.sleep(delay_s)
      proc.send_signal(signal.SIGKILL)
      break
  proc.wait(timeout=120)
  assert proc.returncode == -signal.SIGKILL, lines
  return lines


def test_sigkill_during_saves_keeps_the_last_complete_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  first, partial_seen = 1, False
  for delay_s in (0.0, 0.05, 0.2):
    lines = _run_and_kill(workdir, first, first + 1, delay_s)
    last_saved = max(int(line.split()[1]) for line in lines if line.startswith("saved"))
    entries = os.listdir(os.path.join(workdir, "checkpoints"))
    partial_seen |= any("tmp" in name for name in entries)
    ckpt = Checkpointer(workdir)
    latest = ckpt.latest_step()
    # The save in flight either never became a checkpoint or completed before the kill landed.
    assert latest in (last_saved, last_saved + 1), (latest, lines, entries)
    restored = ckpt.restore(_tree(0), step=latest)
    expected = _tree(latest)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    ckpt.close()
    first = latest + 1
  assert partial_seen, "no kill landed while a save was being written"


if __name__ == "__main__":
  _save_forever(sys.argv[1], int(sys.argv[2]))

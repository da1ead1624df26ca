"""Joining a multi-process JAX job (several hosts, or several processes on one machine) before any computation.

The environment decides:
  JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=n, JAX_PROCESS_ID=i  an explicit job (any launcher, tests)
  AVFLOW_DISTRIBUTED=auto                     JAX detects the job itself (Cloud TPU pods, SLURM `srun`, Open MPI)
  neither                                     a single process: nothing to do
Each process then sees every device of the job in `jax.devices()` and feeds its own rows of each batch
(`sharding.global_batch`).
"""
import logging
import os

import jax


def initialize() -> bool:
  """Calls `jax.distributed.initialize` when the environment describes a job; True when one is running."""
  if jax.distributed.is_initialized():
    return True
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env.get("JAX_PROCESS_ID", "0")))
  elif env.get("AVFLOW_DISTRIBUTED") == "auto":
    kwargs = {}
  else:
    return False
  # CPU processes exchange collectives over gloo (ignored by GPU and TPU backends); must precede backend start-up.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.getLogger(__name__).info("process %d of %d, %d local of %d devices", jax.process_index(),
                                   jax.process_count(), jax.local_device_count(), jax.device_count())
  return True

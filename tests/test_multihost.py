"""Multi-process training (2 CPU processes form one JAX job) and the dry runs of the cluster launch scripts."""
import json
import os
import shlex
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
import visah_fm

from avflow.data.pipeline import device_batch, make_dataset, make_source
from avflow.models.visah.highlighter import Highlighter
from avflow.train import checkpoint, distributed
from avflow.train.state import create_train_state, make_optimizer
from avflow.train.step import make_train_step
from conftest import FAST_COMPILE, MICRO, tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Global batch 4 (2 rows per process); parameters sharded across the two processes (FSDP over hosts).
TWO_PROCESS = {"batch_size": 4, "mesh.fsdp": 2}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_single_process_needs_no_initialization(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "AVFLOW_DISTRIBUTED"):
    monkeypatch.delenv(name, raising=False)
  assert not distributed.initialize()


def test_two_processes_train_like_one_process_on_the_same_global_batches(tmp_path):
  workdir = str(tmp_path / "run")
  flags = [f"--config.{k}={v}" for k, v in {**MICRO, **TWO_PROCESS}.items()]
  port = _free_port()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu", XLA_FLAGS=FAST_COMPILE)
    procs.append(subprocess.Popen([sys.executable, "-m", "avflow", "train", f"--workdir={workdir}", *flags],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
  errors = [p.communicate(timeout=1800)[1] for p in procs]
  for i, (p, err) in enumerate(zip(procs, errors)):
    assert p.returncode == 0, err[-3000:]
    assert f"process {i} of 2, 1 local of 2 devices" in err

  # The same global batches (process 0's rows, then process 1's) through the plain one-device step.
  config = tiny(visah_fm.get_config("toy"), micro=True, **TWO_PROCESS)
  model, tx = Highlighter(config.model), make_optimizer(config)
  source = make_source(config.data, "train")
  shards = [iter(make_dataset(source, config.data, batch_size=config.batch_size, seed=config.seed, train=True,
                              process_index=p, process_count=2)) for p in range(2)]
  step_fn = jax.jit(make_train_step(model, config, tx))
  state, losses = None, {}
  for step in range(config.total_steps):
    parts = [device_batch(next(shard)) for shard in shards]
    batch = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    state = create_train_state(model, config, batch, tx) if state is None else state
    state, metrics = step_fn(state, batch, jax.random.fold_in(state.rng, step))
    losses[step + 1] = float(metrics["loss"])

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = {r["step"]: r["loss"] for r in map(json.loads, f)}
  assert set(logged) == set(losses)
  np.testing.assert_allclose([logged[s] for s in losses], list(losses.values()), rtol=1e-5)

  # The checkpoint both processes wrote (orbax, collectively) restores into the one-device layout.
  restored = checkpoint.Checkpointer(workdir, optimizer=tx).restore(state)
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), restored.params,
                       state.params)
  assert max(jax.tree.leaves(diffs)) <= 1e-5
  data_dir = os.path.join(workdir, "checkpoints", str(config.total_steps), "data")
  assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))


OVERRIDES = ["--config.batch_size=64", "--config.mesh.fsdp=4", "--config.mesh.rules=(('.*', 'fsdp'),)"]


def _dry_run(script, *args):
  done = subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args, "--dry-run", "--", *OVERRIDES],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  return done.stdout


def test_tpu_pod_dry_run_prints_create_install_and_train_on_all_workers():
  out = _dry_run("tpu_pod.sh", "--name=pod", "--zone=us-east5-a", "--accelerator=v5p-32", "--create",
                 "--bucket=runs-bucket", "--workdir=/mnt/avflow/runs/paper", "--repo=https://example.com/avflow.git",
                 "--ref=0123abc")
  create, install, train = [shlex.split(line) for line in out.strip().splitlines()]
  assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--zone=us-east5-a",
                    "--accelerator-type=v5p-32", "--version=v2-alpha-tpuv5"]
  for cmd in (install, train):
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in cmd and "--zone=us-east5-a" in cmd
  remote_install = next(a for a in install if a.startswith("--command="))
  assert "git clone -q https://example.com/avflow.git avflow" in remote_install and "0123abc" in remote_install
  assert "jax[tpu]==0.10.2" in remote_install and "gcsfuse --implicit-dirs runs-bucket /mnt/avflow" in remote_install
  # The main job's set only: no PyTorch, transformers or test tools on the workers.
  assert "pip install -q -r avflow/requirements.txt -e avflow " in remote_install
  assert "requirements-dev" not in remote_install and "torch" not in remote_install
  remote = shlex.split(next(a for a in train if a.startswith("--command="))[len("--command="):])
  start = remote.index("AVFLOW_DISTRIBUTED=auto")
  assert remote[start + 1:start + 7] == ["~/venv/bin/python", "-m", "avflow", "train",
                                         "--config=configs/visah_fm.py:paper", "--workdir=/mnt/avflow/runs/paper"]
  assert "--resume" in remote and all(o in remote for o in OVERRIDES)


def test_slurm_dry_run_prints_sbatch_and_srun_with_per_task_env():
  out = _dry_run("slurm_gpu.sh", "--nodes=4", "--gpus_per_node=8", "--partition=gpu", "--account=proj",
                 "--venv=/opt/avflow-venv", "--workdir=/scratch/runs/paper")
  head, *script = out.strip().splitlines()
  assert script[-1] == "EOF"
  sbatch = shlex.split(head.replace("<<'EOF'", ""))
  assert sbatch[0] == "sbatch" and {"--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu",
                                    "--account=proj", "--requeue"} <= set(sbatch)
  body = "\n".join(script[:-1])
  syntax = subprocess.run(["bash", "-n"], input=body, capture_output=True, text=True)
  assert syntax.returncode == 0, syntax.stderr
  assert 'JAX_COORDINATOR_ADDRESS="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):12355"' in body
  assert 'JAX_NUM_PROCESSES="$SLURM_NNODES"' in body
  srun = shlex.split(body[body.index("srun"):].replace("\\\n", " "))
  assert srun[:4] == ["srun", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
  assert srun[4:7] == ["bash", "-c", 'JAX_PROCESS_ID=$SLURM_PROCID exec "$0" "$@"']
  assert srun[7:11] == ["/opt/avflow-venv/bin/python", "-m", "avflow", "train"]
  assert "--workdir=/scratch/runs/paper" in srun and "--resume" in srun and srun[-3:] == OVERRIDES


def test_launch_scripts_reject_unknown_arguments():
  for script in ("tpu_pod.sh", "slurm_gpu.sh"):
    done = subprocess.run(["bash", os.path.join(ROOT, "launch", script), "--no-such-flag"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown argument '--no-such-flag'" in done.stderr


def test_ablate_sweep_dry_run_launches_every_row_and_seed_of_a_table():
  done = subprocess.run(["bash", os.path.join(ROOT, "launch", "ablate_sweep.sh"), "--table=7", "--seeds=0,1",
                         "--runs=/scratch/ablate", "--launcher=slurm_gpu.sh", f"--python={sys.executable}",
                         "--nodes=2", "--venv=/opt/v", "--dry-run", "--", "--config.batch_size=64"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  runs = [shlex.split(line[line.index("/opt/v/bin/python"):]) for line in done.stdout.splitlines()
          if "/opt/v/bin/python -m avflow train" in line]
  expected = [(f"--config=configs/visah_fm.py:{variant}", f"--config.seed={seed}",
               f"--workdir=/scratch/ablate/table7_paper/{variant}/seed{seed}")
              for variant in ("paper_v", "paper_fm", "paper_no_warm_start", "paper_fm_no_warm_start")
              for seed in (0, 1)]
  assert [(r[4], r[-2], r[5]) for r in runs] == expected
  assert all(r[-1] == "--config.batch_size=64" and "--resume" in r for r in runs)
  assert done.stdout.count("sbatch --job-name=avflow --nodes=2") == 8
  bad = subprocess.run(["bash", os.path.join(ROOT, "launch", "ablate_sweep.sh"), "--table=7", "--runs=/r",
                        "--launcher=qsub.sh"], capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "--launcher must be slurm_gpu.sh or tpu_pod.sh" in bad.stderr

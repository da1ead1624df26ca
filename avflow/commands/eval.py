"""`python -m avflow eval --workdir=RUN [--step=N] [--num_steps=N] [--semantic=passt,imagebind]`: re-scores a run.

Writes `<workdir>/eval.json` (see `avflow/train/evaluate.py`). `--semantic` adds KLD (PaSST) and / or IB
(ImageBind) with the locally installed packages and weights: PaSST's weights file in torch's hub cache
(`$TORCH_HOME/hub/checkpoints`), ImageBind's at `--imagebind_checkpoint`. A missing package or weights file stops
the command with one line naming it, before any prediction runs.
"""
import json

from absl import flags

from avflow.commands import no_arguments, parse_flags  # noqa: F401
from avflow import tasks
from avflow.train import checkpoint
from avflow.train.evaluate import check_semantic
from avflow.train.step import jit, make_predict_fn

flags.DEFINE_string("workdir", None, "Run directory.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("num_steps", None, "Override the number of inference steps N.")
flags.DEFINE_string("semantic", None, "Semantic metrics to add: passt (KLD), imagebind (IB), comma-separated; "
                    "default: the run's eval.semantic.")
flags.DEFINE_string("imagebind_checkpoint", None, "ImageBind-Huge weights file (default: the run's "
                    "eval.imagebind_checkpoint).")
flags.DEFINE_integer("env_batch_size", None, "Env pooled per batch of this many clips, averaged over batches; "
                     "0 pools the whole set (default: the run's eval.env_batch_size, 20 as the public VisAH code).")


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  config = checkpoint.load_config(f.workdir)
  if f.num_steps:
    config.inference.num_steps = f.num_steps
  for field in ("semantic", "imagebind_checkpoint", "env_batch_size"):
    if f[field].value is not None:
      config.eval[field] = f[field].value
  try:
    check_semantic(config)
  except (ImportError, FileNotFoundError, ValueError) as e:
    raise SystemExit(f"avflow eval: {e}")
  params = checkpoint.load_params(f.workdir, f.step)
  step = f.step if f.step is not None else checkpoint.Checkpointer(f.workdir).latest_step()
  task = tasks.get(config)
  predict = jit(make_predict_fn(task.build(config.model), config))
  report = task.evaluate(predict, params, task.source(config.data, "val"), config, f.workdir, step)
  print(json.dumps(report, indent=2))

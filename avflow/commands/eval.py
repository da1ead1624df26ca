"""`python -m avflow eval --workdir=RUN [--step=N] [--num_steps=N]`: re-scores a run; writes `<workdir>/eval.json`."""
import json

from absl import flags

from avflow.commands import no_arguments, parse_flags  # noqa: F401
from avflow.data.pipeline import make_source
from avflow.models.highlighter import Highlighter
from avflow.train import checkpoint
from avflow.train.evaluate import evaluate
from avflow.train.step import jit, make_predict_fn

flags.DEFINE_string("workdir", None, "Run directory.", required=True)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.DEFINE_integer("num_steps", None, "Override the number of inference steps N.")


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  config = checkpoint.load_config(f.workdir)
  if f.num_steps:
    config.inference.num_steps = f.num_steps
  params = checkpoint.load_params(f.workdir, f.step)
  step = f.step if f.step is not None else checkpoint.Checkpointer(f.workdir).latest_step()
  predict = jit(make_predict_fn(Highlighter(config.model), config))
  report = evaluate(predict, params, make_source(config.data, "val"), config, f.workdir, step)
  print(json.dumps(report, indent=2))

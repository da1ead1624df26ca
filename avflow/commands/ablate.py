"""`python -m avflow ablate --table=3 --scale=toy [--seeds=0,1] [--total_steps=N] [--set=a.b=v ...]`: one paper table.

At `toy` (and `small`) scale every row is trained and evaluated here and `docs/results/table<T>_<scale>.md/.json`
are written; at `paper` scale the per-row training commands are printed for a cluster (`launch/ablate_sweep.sh`).
First comes the conditioning the table's rows train with, e.g. "Table 3: conditioning V (CLIP, no adapter)".
"""
from absl import flags

from avflow import ablate
from avflow.commands import no_arguments, parse_flags  # noqa: F401
from avflow.train.evaluate import check_semantic

flags.DEFINE_string("table", None, "A table: VisAH-FM's by number (1–11) or another system's by name (davis, "
                    "vaflow, nag, foleyflow).", required=True)
flags.DEFINE_enum("scale", "toy", ["toy", "small", "paper"], "Config scale of every row.")
flags.DEFINE_list("seeds", ["0"], "Training seeds.")
flags.DEFINE_integer("total_steps", None, "Override every row's total_steps (to fit a time budget).")
flags.DEFINE_multi_string("set", [], "a.b=value applied to every row's config (repeatable), e.g. "
                          "--set=model.conditioning.kind=frames_tiny; values are Python literals, else strings. "
                          "--set=eval.semantic=passt,imagebind adds the KLD and IB columns.")
flags.DEFINE_string("runs", "runs/ablate", "Root of the per-row run directories.")
flags.DEFINE_string("out", "docs/results", "Where the table's .md and .json go.")


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  seeds = [int(s) for s in f.seeds]
  try:
    overrides = ablate.parse_overrides(f.set)
    conditioning = ablate.table_conditioning(f.table, f.scale, overrides)
    for row in ablate.table_rows(f.table, f.scale):
      config = ablate.load_config(row, overrides)
      if f.scale != "paper":  # evaluated here: the semantic models must be in place before anything trains
        check_semantic(config)
  except (ValueError, ImportError, FileNotFoundError) as e:
    raise SystemExit(f"avflow ablate: {e}")
  if f.scale == "paper":  # a shell comment, then the commands: the output stays a script
    print(f"# {ablate.conditioning_line(f.table, conditioning)}")
    print("\n".join(ablate.launch_commands(f.table, f.scale, seeds, f.runs, overrides)))
    return
  print(ablate.conditioning_line(f.table, conditioning))
  run = ablate.run_table(f.table, f.scale, seeds, f.runs, f.total_steps, overrides)
  md, js = ablate.write(ablate.summarize(f.table, f.scale, seeds, run, f.runs), f.out)
  print(open(md).read())
  print(f"wrote {md} and {js}")

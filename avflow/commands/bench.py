"""`python -m avflow bench --what=rollout|step|infer|data|torch [--config=configs/visah_fm.py:toy] [--config.x=v]`.

Prints a table of the figures, then the same figures as ONE JSON line (last line of the output):
  rollout  FM-only vs FM + rollout (T=4) train steps: time and peak-memory ratios, per remat policy
  step     the config's train step: time, compile time, FLOPs, FLOP/s, MFU (with --peak_flops), peak memory
  infer    highlighting one clip with 4 Euler steps: seconds and real-time factor
  data     examples/s of the Grain pipeline (toy source) at the config's shape and at 44.1 kHz × 10 s
  torch    side by side with the PyTorch mirror (eager; TF32 on CUDA, --torch_bf16 for bf16 autocast): FM step,
           FM + rollout step and 4-step highlight on the same device, shapes and weights, both on the same context
           tokens; `speedup` = PyTorch FM step / avflow FM step (also `rollout_speedup`, `infer_speedup`)
Each compiled step reports `compile_s` (lowering + compiling), `hlo_lines` (lines of its StableHLO text) and
`compile_cache_hit` (loaded from the persistent compilation cache, `avflow.compile_cache`).
"""
import json

from absl import flags
from ml_collections import config_flags

from avflow import bench
from avflow.commands import DEFAULT_CONFIG, no_arguments, parse_flags  # noqa: F401  (parse_flags is used by __main__)
from avflow.flow.objectives import REMAT_POLICIES

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file and variant whose shapes are measured.",
                                lock_config=True)
flags.DEFINE_enum("what", "rollout", ["rollout", "step", "infer", "data", "torch"], "What to measure.")
flags.DEFINE_integer("batch_size", 1, "Batch size of the measured steps (infer: windows per call; data: defaults to "
                     "the config's).")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant (after one warm-up call); the median is reported.")
flags.DEFINE_float("peak_flops", 0.0, "Peak FLOP/s of one device, for MFU (e.g. 989e12 for an H100 in bf16).")
flags.DEFINE_list("remat_policies", list(REMAT_POLICIES), "Remat policies of the rollout step to compare.")
flags.DEFINE_list("timed_policies", None, "Of --remat_policies, those also timed (default: all); the others are "
                  "only compiled, for their memory.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts for --what=data.")
flags.DEFINE_bool("torch_bf16", False, "--what=torch: run the PyTorch steps under bf16 autocast.")
flags.DEFINE_integer("torch_threads", 0, "--what=torch: PyTorch's CPU threads (0: PyTorch's default).")


def table(figures: dict, prefix: str = "") -> list[str]:
  """`name  value` lines of a (nested) dict of figures."""
  lines = []
  for key, value in figures.items():
    if isinstance(value, dict):
      lines += table(value, f"{prefix}{key}.")
    elif isinstance(value, float):
      lines.append(f"{prefix + key:<44} {value:.4g}")
    else:
      lines.append(f"{prefix + key:<44} {value}")
  return lines


def main(argv):
  no_arguments(argv)
  f = flags.FLAGS
  config = f.config
  timed = f.remat_policies if f.timed_policies is None else f.timed_policies
  unknown = set(f.remat_policies) - set(REMAT_POLICIES) | set(timed) - set(f.remat_policies)
  if unknown:
    raise SystemExit(f"avflow bench: unknown remat policies {sorted(unknown)}; expected some of "
                     f"{f.remat_policies}")
  if f.what == "rollout":
    figures = bench.bench_rollout(config, f.batch_size, f.repeats, f.peak_flops, tuple(f.remat_policies),
                                  tuple(timed))
  elif f.what == "step":
    figures = bench.bench_step(config, f.batch_size, f.repeats, f.peak_flops)
  elif f.what == "infer":
    figures = bench.bench_infer(config, f.repeats, batch_size=f.batch_size)
  elif f.what == "torch":
    figures = bench.bench_torch(config, f.batch_size, f.repeats, f.torch_bf16, f.torch_threads)
  else:
    batch_size = f.batch_size if f["batch_size"].present else config.batch_size
    workers = [int(w) for w in f.workers]
    paper = config.data.copy_and_resolve_references()
    paper.update(sample_rate=44100, clip_seconds=10.0)
    step = bench.bench_step(config, batch_size, f.repeats)
    figures = {"batch_size": batch_size,
               "config_shape": bench.bench_data(config.data, batch_size, workers),
               "44k_10s": bench.bench_data(paper, batch_size, workers),
               # What the config's train step consumes, for comparison with the pipeline's rates.
               "trainer": {"step_s": step["step_s"], "examples_per_s": batch_size / step["step_s"]}}
  figures = {"what": f.what, "config": config_flags.get_config_filename(f["config"]),
             "overrides": config_flags.get_override_values(f["config"]), **figures, "machine": bench.machine()}
  print("\n".join(table(figures)))
  print(json.dumps(figures))

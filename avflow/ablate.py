"""Reproduce a table of the paper: train and evaluate every row on the same data and seeds, print ours beside theirs.

Rows that differ only in inference settings (Table 8: the rollout-only model integrated with 1–4 steps) share one
training run. Our numbers are raw metric values scaled for display as the paper's tables are (×100 except LDif);
IB and KLD need a PaSST / ImageBind model and are left empty where none is configured.
"""
import dataclasses
import json
import os
import shlex
import time

import jax
import numpy as np

from avflow.data.pipeline import make_source
from avflow.metrics.signal import paper_display
from avflow.models.highlighter import Highlighter
from avflow.report.paper_tables import METRICS, TABLES
from avflow.train import checkpoint
from avflow.train.evaluate import evaluate
from avflow.train.loop import train
from avflow.train.step import make_predict_fn

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass
class Row:
  key: str
  label: str
  config_file: str
  variant: str
  paper: dict


def table_rows(table: str, scale: str) -> list[Row]:
  """The rows of a table as config variants at `scale` (the unprocessed input row has no config)."""
  if table not in TABLES:
    raise ValueError(f"unknown table {table!r}; expected one of {sorted(TABLES, key=int)}")
  rows = []
  for key, paper in TABLES[table]["rows"].items():
    if key == "input":
      continue
    if key.startswith("visah:"):
      suffix = key.split(":", 1)[1]
      rows.append(Row(key, paper["label"], "visah.py", f"{scale}_{suffix}" if suffix else scale, paper))
    else:
      rows.append(Row(key, paper["label"], "visah_fm.py", f"{scale}_{key}" if key else scale, paper))
  return rows


def load_config(row: Row):
  import importlib.util
  spec = importlib.util.spec_from_file_location(row.config_file[:-3], os.path.join(CONFIG_DIR, row.config_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(row.variant)


def _training_key(config) -> str:
  """Identifies what is trained: the config without its inference settings."""
  c = config.copy_and_resolve_references()
  c.inference = {}
  return c.to_json(sort_keys=True)


def launch_commands(table: str, scale: str, seeds: list[int], root: str) -> list[str]:
  """The `python -m avflow train` command of every row and seed (for a cluster: see launch/ablate_sweep.sh)."""
  out = []
  for row in table_rows(table, scale):
    for seed in seeds:
      workdir = os.path.join(root, f"table{table}_{scale}", row.variant, f"seed{seed}")
      out.append(" ".join(["python", "-m", "avflow", "train",
                           shlex.quote(f"--config=configs/{row.config_file}:{row.variant}"),
                           f"--config.seed={seed}", shlex.quote(f"--workdir={workdir}")]))
  return out


def run_table(table: str, scale: str, seeds: list[int], root: str, total_steps: int | None = None) -> dict:
  """Trains (or reuses) every row × seed and returns {row: {seed: eval report}} plus wall times."""
  results, trained, wall = {}, {}, {}
  for row in table_rows(table, scale):
    config = load_config(row)
    if total_steps is not None:
      config.total_steps = total_steps
      config.eval_every = config.checkpoint_every = total_steps
    results[row.key] = {}
    for seed in seeds:
      config.seed = seed
      key = (_training_key(config), seed)
      start = time.time()
      if key not in trained:
        workdir = os.path.join(root, f"table{table}_{scale}", row.variant, f"seed{seed}")
        resume = checkpoint.Checkpointer(workdir).latest_step() is not None
        train(config, workdir, resume=resume)
        trained[key] = workdir
      workdir = trained[key]
      report_dir = os.path.join(workdir, f"eval_{row.variant}")
      os.makedirs(report_dir, exist_ok=True)
      predict = jax.jit(make_predict_fn(Highlighter(config.model), config))
      report = evaluate(predict, checkpoint.load_params(workdir), make_source(config.data, "val"), config,
                        report_dir, config.total_steps)
      results[row.key][seed] = report
      wall[f"{row.key}/{seed}"] = time.time() - start
  return {"results": results, "wall_s": wall}


def _mean_std(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values))


def summarize(table: str, scale: str, seeds: list[int], run: dict) -> dict:
  """Per row: our display-scaled metrics (mean, std over seeds), trajectory drift, and the paper's row."""
  rows = {}
  for row in table_rows(table, scale):
    reports = run["results"][row.key]
    ours = {}
    for metric in ("ldif", "mag", "env", "was"):
      ours[metric] = _mean_std([paper_display(r["prediction"])[metric] for r in reports.values()])
    cosine = [r["trajectory"]["waveform"]["cosine"] for r in reports.values() if "trajectory" in r]
    rows[row.key] = {
        "label": row.label, "config": f"configs/{row.config_file}:{row.variant}", "ours": ours,
        "input": {m: _mean_std([paper_display(r["input"])[m] for r in reports.values()])[0]
                  for m in ("ldif", "mag", "env", "was")},
        "cosine_per_step": np.mean(cosine, axis=0).tolist() if cosine else None,
        "curvature": _mean_std([r["trajectory"]["waveform"]["curvature"] for r in reports.values()
                                if "trajectory" in r])[0],
        "paper": {m: row.paper.get(m) for m in METRICS},
    }
  return {"table": table, "title": TABLES[table]["title"], "scale": scale, "seeds": seeds, "rows": rows,
          "wall_s": run["wall_s"]}


def _fmt(value, std=None):
  if value is None:
    return "—"
  return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def markdown(summary: dict) -> str:
  s = summary
  lines = [f"# Table {s['table']} at `{s['scale']}` scale: {s['title']}", "",
           f"Seeds: {s['seeds']}. Ours: mean ± std over seeds, display-scaled like the paper (×100 except LDif); "
           "IB/KLD need PaSST/ImageBind and are not computed here. Paper: the published numbers "
           "(paper scale, Muddy Mix), for reference only — the scales differ.", "",
           "| row | config | LDif ours | Mag ours | Env ours | Was ours | cos(v̂, v) per step | curvature "
           "| IB paper | KLD paper | LDif paper | Mag paper | Env paper | Was paper |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in s["rows"].values():
    o = r["ours"]
    cos = "—" if r["cosine_per_step"] is None else " / ".join(f"{c:.3f}" for c in r["cosine_per_step"])
    curv = "—" if r["curvature"] is None else f"{r['curvature']:.3f}"
    lines.append(f"| {r['label']} | `{r['config']}` | " + " | ".join(_fmt(*o[m]) for m in ("ldif", "mag", "env", "was"))
                 + f" | {cos} | {curv} | " + " | ".join(_fmt(r["paper"][m]) for m in METRICS) + " |")
  first = next(iter(s["rows"].values()))["input"]
  lines += ["", "Input (unprocessed x0): " + ", ".join(f"{m} {_fmt(first[m])}" for m in ("ldif", "mag", "env", "was")),
            "", f"Wall time: {sum(s['wall_s'].values()) / 60:.1f} min in all "
            + "(" + ", ".join(f"{k} {v / 60:.1f}" for k, v in s["wall_s"].items()) + ")."]
  return "\n".join(lines) + "\n"


def write(summary: dict, out_dir: str) -> tuple[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f"table{summary['table']}_{summary['scale']}")
  with open(base + ".json", "w") as f:
    json.dump(summary, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(markdown(summary))
  return base + ".md", base + ".json"

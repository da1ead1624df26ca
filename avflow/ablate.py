"""Reproduce a table of the paper: train and evaluate every row on the same data and seeds, print ours beside theirs.

A row × seed is trained once: before training, the runs root is searched for a finished run of the same training
config and seed, from this table or another (Table 8's rows differ only in inference steps and share one run;
Table 7's warm-start rows are Table 3's first two). Our numbers are raw metric values scaled for display as the
paper's tables are (×100 except LDif); IB and KLD are computed when `eval.semantic` names their models (e.g.
`--set=eval.semantic=passt,imagebind`, see `avflow/train/evaluate.py`) and left empty otherwise.
"""
import ast
import dataclasses
import glob
import importlib.util
import json
import os
import shlex
import time

import numpy as np

from avflow import tasks
from avflow.configs_lib import set_field, shipped_configs_dir
from avflow.metrics.signal import paper_display
from avflow.report.paper_tables import METRICS, TABLES, paper_metrics, table_metrics
from avflow.train import checkpoint
from avflow.train.loop import train
from avflow.train.state import check_batch
from avflow.train.step import jit, make_predict_fn

TRAIN_TIME_FILE = "train_time.json"
EVAL_KEY_FILE = "eval_key.json"


@dataclasses.dataclass
class Row:
  key: str
  label: str
  config_file: str
  variant: str
  paper: dict
  every_seed: bool = True  # False: trained with the first seed only (a table's rows outside its "main" ones)

  @property
  def name(self) -> str:
    """The row's folder and wall-time key: its variant, prefixed by its config file unless that is visah_fm.py."""
    return self.variant if self.config_file == "visah_fm.py" else f"{self.config_file[:-3]}_{self.variant}"


def table_names() -> list[str]:
  """The tables `ablate` reproduces: VisAH-FM's by number, then the other systems' by name."""
  return sorted(TABLES, key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0, t))


def table_rows(table: str, scale: str) -> list[Row]:
  """The rows of a table as config variants at `scale` (the unprocessed input row has no config): a key
  `<file>:<suffix>` is `configs/<file>.py:<scale>_<suffix>` (`<scale>` for an empty suffix), any other key a row of
  `configs/visah_fm.py`."""
  if table not in TABLES:
    raise ValueError(f"unknown table {table!r}; expected one of {', '.join(table_names())}")
  main = TABLES[table].get("main")
  rows = []
  for key, paper in TABLES[table]["rows"].items():
    if key == "input":
      continue
    stem, _, suffix = key.rpartition(":")
    rows.append(Row(key, paper["label"], f"{stem or 'visah_fm'}.py", f"{scale}_{suffix}" if suffix else scale, paper,
                    every_seed=main is None or key in main))
  return rows


def row_seeds(row: Row, seeds: list[int]) -> list[int]:
  return seeds if row.every_seed else seeds[:1]


def parse_overrides(items: list[str]) -> dict:
  """["a.b=1e-3", "c=frames_tiny"] → {"a.b": 0.001, "c": "frames_tiny"}: Python literals, anything else a string."""
  overrides = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or not name:
      raise ValueError(f"override {item!r}: expected a.b=value")
    try:
      overrides[name] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[name] = text
  return overrides


def _config_module(config_file: str):
  spec = importlib.util.spec_from_file_location(config_file[:-3], os.path.join(shipped_configs_dir(), config_file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(row: Row, overrides: dict | None = None):
  """The row's config variant with `overrides` ({"a.b": value}) applied on top, e.g. a smaller model for every row."""
  config = _config_module(row.config_file).get_config(row.variant)
  for name, value in (overrides or {}).items():
    try:
      set_field(config, name, value)
    except (KeyError, TypeError) as e:
      raise ValueError(f"override {name}={value!r} does not apply to {row.config_file}:{row.variant}: "
                       f"{e.args[0] if isinstance(e, KeyError) else e}") from e
  return config


def parent_row(row: Row) -> Row | None:
  """The row whose finished run `row` starts from (`init_from`), where its config file names one with
  `parent_variant(variant)` (VAFlow's stages: the estimator starts from the VAE's pretraining, joint tuning from the
  estimator), else None."""
  parent = getattr(_config_module(row.config_file), "parent_variant", lambda variant: None)(row.variant)
  if parent is None:
    return None
  return Row(f"{row.config_file[:-3]}:{parent}", f"configs/{row.config_file}:{parent}", row.config_file, parent, {})


def _lineage(row: Row) -> list[Row]:
  """`row` after the rows it starts from, the first stage first."""
  parent = parent_row(row)
  return ([] if parent is None else _lineage(parent)) + [row]


def table_conditioning(table: str, scale: str, overrides: dict | None = None) -> dict[str, str]:
  """Row label → what the row's config (with `overrides`) conditions on."""
  return {row.label: describe_conditioning(load_config(row, overrides)) for row in table_rows(table, scale)}


def describe_conditioning(config) -> str:
  """What a row's model conditions on, in its system's terms."""
  return tasks.get(config).describe_conditioning(config.model)


def _conditioning_text(conditioning: dict[str, str]) -> str:
  """The one conditioning of every row, or each row's where they differ."""
  if len(set(conditioning.values())) == 1:
    return next(iter(conditioning.values()))
  return "per row — " + "; ".join(f"{label}: {text}" for label, text in conditioning.items())


def conditioning_line(table: str, conditioning: dict[str, str]) -> str:
  """E.g. "Table 3: conditioning V (CLIP, no adapter)", from `table_conditioning`."""
  return f"Table {table}: conditioning {_conditioning_text(conditioning)}"


def _training_key(config) -> str:
  """Identifies what is trained: the config without its inference and evaluation settings."""
  c = config.copy_and_resolve_references()
  c.inference = {}
  c.eval = {}
  return c.to_json(sort_keys=True)


def _workdir(root: str, table: str, scale: str, row: Row, seed: int) -> str:
  return os.path.join(root, f"table{table}_{scale}", row.name, f"seed{seed}")


def launch_commands(table: str, scale: str, seeds: list[int], root: str, overrides: dict | None = None) -> list[str]:
  """The `python -m avflow train` command of every row and seed (for a cluster: see launch/ablate_sweep.sh); a row
  that starts from another's run comes after it, with `--config.init_from` naming it."""
  out, launched = [], set()
  for row in table_rows(table, scale):
    for seed in row_seeds(row, seeds):
      init_from = None
      for stage in _lineage(row):
        workdir = _workdir(root, table, scale, stage, seed)
        if workdir not in launched:
          launched.add(workdir)
          out.append(" ".join(["python", "-m", "avflow", "train",
                               shlex.quote(f"--config=configs/{stage.config_file}:{stage.variant}"),
                               *(shlex.quote(f"--config.{k}={v}") for k, v in (overrides or {}).items()),
                               *([shlex.quote(f"--config.init_from={init_from}")] if init_from else []),
                               f"--config.seed={seed}", shlex.quote(f"--workdir={workdir}")]))
        init_from = workdir
  return out


def _finished_run(root: str, key: str, config) -> str | None:
  """A run under `root` (any table, any row) that trained `config` (its training `key`, its seed) to the end."""
  for path in sorted(glob.glob(os.path.join(root, "*", "*", f"seed{config.seed}", checkpoint.CONFIG_FILE))):
    workdir = os.path.dirname(path)
    if _training_key(checkpoint.load_config(workdir)) == key and \
        checkpoint.Checkpointer(workdir).latest_step() == config.total_steps:
      return workdir
  return None


def _evaluation_key(config) -> str:
  """What an evaluation of a finished run depends on: the whole config, inference settings included."""
  return config.copy_and_resolve_references().to_json(sort_keys=True)


def _stored_evaluation(report_dir: str, config) -> dict | None:
  """The report of an earlier evaluation of this row's config, if there is one (delete the folder to redo it)."""
  key_path, report_path = os.path.join(report_dir, EVAL_KEY_FILE), os.path.join(report_dir, "eval.json")
  if not (os.path.exists(key_path) and os.path.exists(report_path)):
    return None
  with open(key_path) as f:
    if json.load(f)["config"] != _evaluation_key(config):
      return None
  with open(report_path) as f:
    return json.load(f)


def _stored_train_seconds(workdir: str) -> float | None:
  """Training wall time stored with a run (summed over resumes), None for a run trained outside `ablate`."""
  path = os.path.join(workdir, TRAIN_TIME_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["train_s"]


def _record_train_seconds(workdir: str, seconds: float) -> None:
  total = (_stored_train_seconds(workdir) or 0.0) + seconds
  with open(os.path.join(workdir, TRAIN_TIME_FILE), "w") as f:
    json.dump({"train_s": total}, f)


def _row_config(row: Row, overrides: dict | None, total_steps: int | None):
  config = load_config(row, overrides)
  if total_steps is not None:
    config.total_steps = total_steps
    config.eval_every = config.checkpoint_every = total_steps
  return config


def _trained_run(root: str, table: str, scale: str, row: Row, config, overrides: dict | None,
                 total_steps: int | None, wall: dict) -> tuple[str, bool]:
  """The workdir of a finished run of `config` (row `row`, seed `config.seed`) and whether it was found under `root`
  rather than trained (or resumed) here. A row with a `parent_row` first gets the parent's run the same way and
  starts from it; the parent's training time goes into `wall` under its own name."""
  parent = parent_row(row)
  if parent is not None:
    parent_config = _row_config(parent, overrides, total_steps)
    parent_config.seed = config.seed
    config.init_from, reused = _trained_run(root, table, scale, parent, parent_config, overrides, total_steps, wall)
    wall.setdefault(f"{parent.name}/{config.seed}", {"train_s": _stored_train_seconds(config.init_from),
                                                     "eval_s": 0.0, "reused": reused})
  key = _training_key(config)
  workdir = _finished_run(root, key, config)
  if workdir is not None:
    return workdir, True
  workdir = _workdir(root, table, scale, row, config.seed)
  resume = checkpoint.Checkpointer(workdir).latest_step() is not None
  if resume and _training_key(checkpoint.load_config(workdir)) != key:
    raise ValueError(f"{workdir} holds an unfinished run of another config than row {row.label!r}, seed "
                     f"{config.seed} now has (other overrides or code defaults?): remove it or pick another runs root")
  start = time.time()
  train(config, workdir, resume=resume)
  _record_train_seconds(workdir, time.time() - start)
  return workdir, False


def run_table(table: str, scale: str, seeds: list[int], root: str, total_steps: int | None = None,
              overrides: dict | None = None) -> dict:
  """Trains (or reuses) and evaluates (or reuses the report of) every row × seed.

  Returns {row: {seed: eval report}}, wall times, the run each row × seed was evaluated from and each row's
  conditioning.
  """
  results, wall, runs, conditioning, not_run = {}, {}, {}, {}, {}
  for row in table_rows(table, scale):
    config = _row_config(row, overrides, total_steps)
    conditioning[row.key] = describe_conditioning(config)
    reason = _missing_inputs(config)
    if reason:
      print(f"row {row.label!r} not run at {scale} scale: {reason}")
      not_run[row.key] = reason
      continue
    results[row.key] = {}
    for seed in row_seeds(row, seeds):
      config.seed = seed
      workdir, reused = _trained_run(root, table, scale, row, config, overrides, total_steps, wall)
      start = time.time()
      report_dir = os.path.join(workdir, f"eval_{row.name}")
      report = _stored_evaluation(report_dir, config)
      if report is None:
        os.makedirs(report_dir, exist_ok=True)
        task = tasks.get(config)
        predict = jit(make_predict_fn(task.build(config.model), config))
        report = task.evaluate(predict, checkpoint.load_params(workdir), task.source(config.data, "val"), config,
                               report_dir, config.total_steps)
        with open(os.path.join(report_dir, EVAL_KEY_FILE), "w") as f:
          json.dump({"config": _evaluation_key(config)}, f)
      results[row.key][seed] = report
      wall[f"{row.name}/{seed}"] = {"train_s": _stored_train_seconds(workdir), "eval_s": time.time() - start,
                                    "reused": reused}
      runs[f"{row.name}/{seed}"] = workdir
  return {"results": results, "wall_s": wall, "runs": runs, "conditioning": conditioning, "not_run": not_run}


def _missing_inputs(config) -> str | None:
  """Why the row's data cannot feed its conditioning (e.g. captions on the toy movies, which have none), else None."""
  clip = tasks.get(config).source(config.data, "train")[0]
  try:
    check_batch(config, {k: np.asarray(v)[None] for k, v in clip.items() if k != "clip_id"})
  except ValueError as e:
    return str(e)
  return None


def _mean_std(values):
  values = [v for v in values if v is not None and np.isfinite(v)]
  if not values:
    return None, None
  return float(np.mean(values)), float(np.std(values))


def summarize(table: str, scale: str, seeds: list[int], run: dict, root: str) -> dict:
  """Per row: our metrics (mean, std over seeds; the headline metric per seed), display-scaled as the paper's
  tables are, trajectory drift where the sampler records it, the paper's row, and the run (relative to the runs
  `root`) each seed was evaluated from."""
  metrics, headline = table_metrics(table), TABLES[table].get("headline", "ldif")
  display = paper_display if metrics == METRICS else dict  # VisAH-FM prints ×100 (but LDif); dB stay dB
  rows = {}
  for row in table_rows(table, scale):
    if row.key in run["not_run"]:
      rows[row.key] = {"label": row.label, "config": f"configs/{row.config_file}:{row.variant}",
                       "conditioning": run["conditioning"][row.key], "not_run": run["not_run"][row.key],
                       "paper": {m: row.paper.get(m) for m in paper_metrics(table)}}
      continue
    reports = run["results"][row.key]
    ours = {}
    for metric in metrics:  # IB and KLD only where eval.semantic computed them
      ours[metric] = _mean_std([display(r["prediction"]).get(metric) for r in reports.values()])
    cosine = [r["trajectory"]["waveform"]["cosine"] for r in reports.values() if "trajectory" in r]
    rows[row.key] = {
        "label": row.label, "config": f"configs/{row.config_file}:{row.variant}",
        "conditioning": run["conditioning"][row.key], "ours": ours,
        f"{headline}_per_seed": {seed: display(r["prediction"])[headline] for seed, r in reports.items()},
        "runs": {seed: os.path.relpath(run["runs"][f"{row.name}/{seed}"], root) for seed in reports},
        "input": {m: _mean_std([display(r["input"]).get(m) for r in reports.values()])[0] for m in metrics},
        **({"reconstruction": {m: _mean_std([r["reconstruction"].get(m) for r in reports.values()])[0]
                               for m in metrics}} if all("reconstruction" in r for r in reports.values()) else {}),
        "cosine_per_step": np.mean(cosine, axis=0).tolist() if cosine else None,
        "curvature": _mean_std([r["trajectory"]["waveform"]["curvature"] for r in reports.values()
                                if "trajectory" in r])[0],
        "paper": {m: row.paper.get(m) for m in paper_metrics(table)},
    }
  return {"table": table, "title": TABLES[table]["title"], "scale": scale, "seeds": seeds, "rows": rows,
          "wall_s": run["wall_s"]}


def _fmt(value, std=None):
  if value is None:
    return "—"
  return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def _wall_line(wall: dict) -> str:
  trained = [w["train_s"] for w in wall.values() if not w["reused"]]
  reused = [k for k, w in wall.items() if w["reused"]]
  minutes = lambda v: "?" if v is None else f"{v / 60:.1f}"  # noqa: E731
  return (f"Wall time: {sum(trained) / 60:.1f} min training {len(trained)} run{'s' * (len(trained) != 1)} here, "
          f"{sum(w['eval_s'] for w in wall.values()) / 60:.1f} min evaluating"
          + (f"; {len(reused)} of the row/seed evaluations reused a finished run" if reused else "")
          + ". Per row/seed, training + evaluation minutes (r: a reused run, its stored training time): "
          + ", ".join(f"{k} {minutes(w['train_s'])}{' r' if w['reused'] else ''} + {minutes(w['eval_s'])}"
                      for k, w in wall.items()) + ".")


def markdown(summary: dict) -> str:
  s = summary
  if table_metrics(s["table"]) != METRICS:
    return _markdown_system(summary)
  conditioning = _conditioning_text({r["label"]: r["conditioning"] for r in s["rows"].values()})
  lines = [f"# Table {s['table']} at `{s['scale']}` scale: {s['title']}", "", f"Conditioning: {conditioning}.", "",
           f"Seeds: {s['seeds']}. Ours: mean ± std over seeds, display-scaled like the paper (×100 except LDif); "
           "IB/KLD are — unless eval.semantic names PaSST/ImageBind. Paper: the published numbers "
           "(paper scale, Muddy Mix), for reference only — the scales differ.", "",
           "| row | config | IB ours | KLD ours | LDif ours | LDif per seed | Mag ours | Env ours | Was ours "
           "| cos(v̂, v) per step | curvature | IB paper | KLD paper | LDif paper | Mag paper | Env paper "
           "| Was paper |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in s["rows"].values():
    if "not_run" in r:
      lines.append(f"| {r['label']} | `{r['config']}` | not run at this scale: {r['not_run']} |"
                   + " |" * 8 + " " + " | ".join(_fmt(r["paper"][m]) for m in METRICS) + " |")
      continue
    o = r["ours"]
    cos = "—" if r["cosine_per_step"] is None else " / ".join(f"{c:.3f}" for c in r["cosine_per_step"])
    curv = "—" if r["curvature"] is None else f"{r['curvature']:.3f}"
    per_seed = " / ".join(_fmt(v) for v in r["ldif_per_seed"].values())
    lines.append(f"| {r['label']} | `{r['config']}` | {_fmt(*o['ib'])} | {_fmt(*o['kld'])} | {_fmt(*o['ldif'])} "
                 f"| {per_seed} | "
                 + " | ".join(_fmt(*o[m]) for m in ("mag", "env", "was"))
                 + f" | {cos} | {curv} | " + " | ".join(_fmt(r["paper"][m]) for m in METRICS) + " |")
  first = next(r for r in s["rows"].values() if "not_run" not in r)["input"]
  lines += ["", "Input (unprocessed x0): " + ", ".join(f"{m} {_fmt(first[m])}" for m in METRICS),
            "", _wall_line(s["wall_s"])]
  return "\n".join(lines) + "\n"


def _markdown_system(summary: dict) -> str:
  """Another system's table: its metrics (mean ± std over seeds, the headline per seed) beside the paper's columns,
  with the table's own notes on units, the paper's numbers and the unprocessed input."""
  s, t = summary, TABLES[summary["table"]]
  metrics, theirs, headline = table_metrics(s["table"]), paper_metrics(s["table"]), t["headline"]
  name = lambda m: m.upper().replace("_", " ")  # noqa: E731
  conditioning = _conditioning_text({r["label"]: r["conditioning"] for r in s["rows"].values()})
  lines = [f"# {s['title']} at `{s['scale']}` scale", "", f"Conditioning: {conditioning}.", "",
           f"Seeds: {s['seeds']} for the rows {', '.join(t['main'])}, the first seed for the others. "
           f"Ours: mean ± std over seeds, {t['units']}. Paper: {t['paper_note']}, for reference only — the scales "
           "differ.", "",
           "| row | config | " + " | ".join(f"{name(m)} ours" for m in metrics) + f" | {name(headline)} per seed | "
           + " | ".join(f"{name(m)} paper" for m in theirs) + " |",
           "|---|---|" + "---|" * (len(metrics) + len(theirs) + 1)]
  for r in s["rows"].values():
    paper = " | ".join(_fmt(r["paper"][m]) for m in theirs)
    if "not_run" in r:
      lines.append(f"| {r['label']} | `{r['config']}` | not run at this scale: {r['not_run']} |"
                   + " |" * len(metrics) + f" {paper} |")
      continue
    per_seed = " / ".join(_fmt(v) for v in r[f"{headline}_per_seed"].values())
    lines.append(f"| {r['label']} | `{r['config']}` | " + " | ".join(_fmt(*r["ours"][m]) for m in metrics)
                 + f" | {per_seed} | {paper} |")
  first = next(r for r in s["rows"].values() if "not_run" not in r)
  scores = lambda values: ", ".join(f"{name(m)} {_fmt(values[m])}" for m in metrics  # noqa: E731
                                    if values.get(m) is not None)
  lines += ["", f"Input ({t['input_note']}): {scores(first['input'])}"]
  if "reconstruction" in first:
    lines += ["", f"The real held-out audio through the codec (the ceiling): {scores(first['reconstruction'])}"]
  lines += ["", _wall_line(s["wall_s"])]
  return "\n".join(lines) + "\n"


def write(summary: dict, out_dir: str) -> tuple[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  name = TABLES[summary["table"]].get("file", f"table{summary['table']}")
  base = os.path.join(out_dir, f"{name}_{summary['scale']}")
  with open(base + ".json", "w") as f:
    json.dump(summary, f, indent=2)
  with open(base + ".md", "w") as f:
    f.write(markdown(summary))
  return base + ".md", base + ".json"

"""`avflow ablate`: every row trained and evaluated once, reused across rows and invocations, ours beside the paper's."""
import json
import os
import subprocess
import sys

import pytest
import visah_fm
from conftest import ROOT, tiny_fields

from avflow import ablate
from avflow.models.visah.highlighter import describe_conditioning
from avflow.report.paper_tables import TABLES
from avflow.train import evaluate as evaluation


def _micro_overrides() -> dict:
  """conftest's micro fields of the toy config at batch 2, minus the inference steps and the rollout weight that
  Table 8's rows set."""
  overrides = {**tiny_fields(visah_fm.get_config("toy"), micro=True), "batch_size": 2}
  for row_field in ("inference.num_steps", "objective.rollout_weight"):
    overrides.pop(row_field)
  return overrides


def test_table8_trains_once_reuses_its_run_and_prints_the_papers_numbers(tmp_path, monkeypatch):
  calls = []
  real_train = ablate.train
  monkeypatch.setattr(ablate, "train", lambda config, workdir, resume: calls.append(workdir)
                      or real_train(config, workdir, resume))
  overrides = _micro_overrides()
  root = str(tmp_path / "runs")

  run = ablate.run_table("8", "toy", [0], root, total_steps=2, overrides=overrides)
  # Table 8's four rows differ only in inference steps: one training run, evaluated with 1, 2, 3 and 4 steps.
  assert calls == [os.path.join(root, "table8_toy", "toy_rollout_only_infer1", "seed0")]
  assert set(run["runs"].values()) == {calls[0]}
  assert [w["reused"] for w in run["wall_s"].values()] == [False, True, True, True]
  ldif = [run["results"][key][0]["prediction"]["ldif"] for key in TABLES["8"]["rows"]]
  assert len(set(ldif)) == 4, f"1–4 Euler steps gave identical predictions: {ldif}"

  summary = ablate.summarize("8", "toy", [0], run, root)
  text = ablate.markdown(summary)
  for key, row in TABLES["8"]["rows"].items():
    line = next(l for l in text.splitlines() if l.startswith(f"| {row['label']} |"))
    assert f"{row['ldif']:.2f}" in line and f"{summary['rows'][key]['ours']['ldif'][0]:.2f}" in line
  assert summary["rows"]["rollout_only"]["runs"] == {0: "table8_toy/toy_rollout_only_infer1/seed0"}
  assert "training 1 run here" in text and "3 of the row/seed evaluations reused" in text
  assert "\nConditioning: V (tiny trainable frame encoder).\n" in text  # the tiny overrides' frame encoder
  md, js = ablate.write(summary, str(tmp_path / "out"))
  assert json.load(open(js))["rows"]["rollout_only"]["ldif_per_seed"] == {"0": ldif[-1]}

  # A second invocation neither trains nor evaluates: the stored runs and reports give the same numbers.
  evaluations = []
  real_evaluate = evaluation.evaluate  # what the highlight task's `evaluate` runs
  monkeypatch.setattr(evaluation, "evaluate", lambda *a: evaluations.append(a[3]) or real_evaluate(*a))
  again = ablate.run_table("8", "toy", [0], root, total_steps=2, overrides=overrides)
  assert len(calls) == 1 and evaluations == []
  assert [again["results"][key][0]["prediction"]["ldif"] for key in TABLES["8"]["rows"]] == ldif
  assert all(w["reused"] and w["train_s"] == run["wall_s"]["toy_rollout_only_infer1/0"]["train_s"]
             for w in again["wall_s"].values())

  # Other inference settings re-evaluate every row from the same run, without training.
  midpoint = ablate.run_table("8", "toy", [0], root, total_steps=2,
                              overrides={**overrides, "inference.method": "midpoint"})
  assert len(calls) == 1 and len(evaluations) == 4
  assert midpoint["results"]["rollout_only"][0]["prediction"]["ldif"] != ldif[-1]

  # Other overrides must not resume into a run of another config.
  with pytest.raises(ValueError, match="another config"):
    ablate.run_table("8", "toy", [0], root, total_steps=2, overrides={**overrides, "optimizer.learning_rate": 1e-4})


def test_overrides_are_checked_against_every_rows_config():
  assert ablate.parse_overrides(["model.channels=4", "model.conditioning.kind=frames_tiny", "a.b=(1, 2)"]) == {
      "model.channels": 4, "model.conditioning.kind": "frames_tiny", "a.b": (1, 2)}
  with pytest.raises(ValueError, match="expected a.b=value"):
    ablate.parse_overrides(["model.channels"])
  row = ablate.table_rows("3", "toy")[0]
  with pytest.raises(ValueError, match="no such field 'nope'"):
    ablate.load_config(row, {"model.nope": 1})
  with pytest.raises(ValueError, match="model.channels='wide'"):
    ablate.load_config(row, {"model.channels": "wide"})
  assert ablate.load_config(row, {"model.channels": 4}).model.channels == 4
  commands = ablate.launch_commands("7", "paper", [1], "/r", {"model.conditioning.kind": "frames_tiny"})
  assert all("--config.model.conditioning.kind=frames_tiny --config.seed=1" in c for c in commands)


def test_cli_names_a_bad_override_before_training_anything():
  done = subprocess.run([sys.executable, "-m", "avflow", "ablate", "--table=3", "--set=model.nope=1"],
                        cwd=ROOT, capture_output=True, text=True)
  assert done.returncode != 0
  assert "override model.nope=1 does not apply to visah_fm.py:toy" in done.stderr


@pytest.mark.parametrize("scale", visah_fm.SCALES)
def test_ablation_tables_condition_on_vision_only_and_the_method_on_vision_and_audio(scale):
  method = visah_fm.get_config(scale).model
  assert describe_conditioning(method) == "V+A (CLIP with the adapter fed by CLAP audio)"
  # Table 2's "✗ V" row: CLIP image features without adapter, stored in the records where the scale trains on them.
  v_only = visah_fm.get_config(f"{scale}_v").model
  assert v_only.conditioning.kind == ("clip" if scale == "toy" else "features")
  assert v_only.conditioning.features_key == "context" and v_only.latent.context_dim == (24 if scale == "toy" else 768)
  for table in ("3", "4", "5", "6", "7", "8"):
    for row in ablate.table_rows(table, scale):
      if row.config_file == "visah_fm.py":
        model = ablate.load_config(row).model
        assert model.conditioning.to_dict() == v_only.conditioning.to_dict(), (table, row.label)
        assert model.latent.context_dim == v_only.latent.context_dim, (table, row.label)
  assert ablate.conditioning_line("3", ablate.table_conditioning("3", scale)) == (
      "Table 3: conditioning " + ("V (CLIP, no adapter)" if scale == "toy" else "V (stored CLIP features, no adapter)"))
  # The base rows of Tables 3, 4, 6 and 7 are Table 2's "✗ V" run; Table 8's 4-step row is Table 3's rollout-only.
  assert {next(r.variant for r in ablate.table_rows(t, scale) if r.key == "v") for t in "3467"} == {f"{scale}_v"}
  assert ablate._training_key(visah_fm.get_config(f"{scale}_rollout_only_infer1")) == \
      ablate._training_key(visah_fm.get_config(f"{scale}_rollout_only"))


def test_table5_compares_with_visah_text_on_the_fixed_remixes():
  rows = ablate.table_rows("5", "toy")
  assert [r.label for r in rows] == ["VisAH Text", "FM", "FM + Rollout (λ=0.1)", "FM + Rollout (λ=0.3)", "Rollout"]
  configs = [ablate.load_config(r) for r in rows]
  assert all(c.data.remix == "fixed" for c in configs)
  assert (configs[0].task, describe_conditioning(configs[0].model)) == ("regression", "T (stored T5 features)")
  assert [c.objective.rollout_weight for c in configs[1:]] == [0.0, 0.1, 0.3, 1.0]
  assert configs[4].objective.fm_weight == 0.0
  line = ablate.conditioning_line("5", ablate.table_conditioning("5", "toy"))
  assert line.startswith("Table 5: conditioning per row — VisAH Text: T (stored T5 features); FM: V (CLIP, no")


def test_cli_prints_the_tables_conditioning_as_a_comment_above_the_cluster_commands():
  done = subprocess.run([sys.executable, "-m", "avflow", "ablate", "--table=7", "--scale=paper", "--runs=/r"],
                        cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]
  first, *commands = done.stdout.splitlines()
  assert first == "# Table 7: conditioning V (stored CLIP features, no adapter)"
  assert len(commands) == 4 and all(c.startswith("python -m avflow train --config=configs/visah_fm.py:paper_")
                                    for c in commands)


def test_summary_shows_kld_and_ib_where_the_evaluation_computed_them():
  rows = ablate.table_rows("1", "toy")
  signal_part = {"ldif": 5.0, "mag": 0.1, "env": 0.02, "was": 0.003}
  reports = {row.key: {0: {"input": dict(signal_part), "prediction": dict(signal_part)}} for row in rows}
  reports["va"][0]["prediction"].update(kld=0.0970, ib=0.2912)
  reports["va"][0]["input"].update(kld=0.2074, ib=0.2814)
  run = {"results": reports, "runs": {f"{row.name}/0": f"/r/{row.variant}" for row in rows},
         "wall_s": {f"{row.variant}/0": {"train_s": 1.0, "eval_s": 1.0, "reused": False} for row in rows},
         "conditioning": {row.key: describe_conditioning(ablate.load_config(row).model) for row in rows},
         "not_run": {}}
  summary = ablate.summarize("1", "toy", [0], run, "/r")
  assert summary["rows"]["va"]["ours"]["kld"] == pytest.approx((9.70, 0.0))
  assert summary["rows"]["va"]["ours"]["ib"] == pytest.approx((29.12, 0.0))
  assert summary["rows"]["visah:"]["ours"]["kld"] == (None, None)
  lines = ablate.markdown(summary).splitlines()
  va = next(l for l in lines if l.startswith("| VisAH-FM (CLIP-CLAP) |")).split(" | ")
  clip = next(l for l in lines if l.startswith("| VisAH CLIP |")).split(" | ")
  assert va[2:5] == ["29.12 ± 0.00", "9.70 ± 0.00", "5.00 ± 0.00"] and clip[2:4] == ["—", "—"]


def test_rows_whose_inputs_the_data_lacks_are_listed_as_not_run():
  """Table 2's caption rows need T5 features, which the toy movies do not carry: they are named, with the reason,
  and the rest of the table runs."""
  rows = {row.key: row for row in ablate.table_rows("2", "toy")}
  for key in ("vt", "vta", "t"):
    reason = ablate._missing_inputs(ablate.load_config(rows[key]))
    assert reason and "`text`" in reason and "toy_movies" in reason, (key, reason)
  for key in ("v", "va"):
    assert ablate._missing_inputs(ablate.load_config(rows[key])) is None, key
  run = {"results": {}, "wall_s": {}, "runs": {}, "conditioning": {k: "?" for k in rows},
         "not_run": {k: "no captions" for k in rows}}
  summary = ablate.summarize("2", "toy", [0], run, "/runs")
  summary["rows"]["v"] = {**summary["rows"]["v"], "ours": {m: (1.0, None) for m in ("ib", "kld", "ldif", "mag", "env",
                                                                                   "was")}}
  del summary["rows"]["v"]["not_run"]
  summary["rows"]["v"].update(ldif_per_seed={0: 1.0}, cosine_per_step=None, curvature=None,
                              input={m: 9.0 for m in ("ib", "kld", "ldif", "mag", "env", "was")})
  text = ablate.markdown(summary)
  line = next(l for l in text.splitlines() if l.startswith(f"| {rows['t'].label} |"))
  assert "not run at this scale: no captions" in line and line.count("|") == text.splitlines()[6].count("|")
  assert "Input (unprocessed x0): ib 9.00" in text

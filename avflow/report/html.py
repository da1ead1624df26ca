"""A static HTML report of an evaluated run: `<workdir>/report.html`.

Reads what training and `avflow.train.evaluate` leave in a run directory: `eval.json`, `metrics.jsonl` (the
training losses) and `samples/<clip>/`: *.wav (input, prediction, target and, when saved, per-step outputs
`step_<k>.wav`), the video frames `frames/*.png|jpg`, `loudness.json` (per-source LUFS) and `events.json` (a
video-to-audio clip's events and caption). The page shows the
metrics table with raw values, the paper's display scaling (×100 except LDif, Table 1 caption) and which way is
better; the loss curves; the per-step cosine of the inference trajectory as a plot beside its variance and
curvature; and per clip the frames, a bar chart of each source's loudness in input, prediction and target, and per
stream an audio player, a waveform and a spectrogram. Images are written to `report_files/`. All links are
relative, so the run folder can be copied or served as is. The page has no scripts and fits a 1280-px window.
"""
import html
import json
import os
import re
from urllib.parse import quote

import librosa
import numpy as np
import soundfile as sf
from matplotlib.figure import Figure

from avflow.errors import RunNotFoundError
from avflow.metrics import trajectory
from avflow.metrics.signal import paper_display

REPORT_NAME = "report.html"
ASSETS_DIR = "report_files"
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
METRIC_NAMES = {"ldif": "LDif", "mag": "Mag", "env": "Env", "was": "Was", "sdr": "SDR (dB)", "sir": "SIR (dB)",
                "sar": "SAR (dB)", "fd": "FD (log-mel statistics)", "onset_f1": "onset-sync F1",
                "event_accuracy": "event-class accuracy"}
PAPER_SCALED = ("ib", "kld", "ldif", "mag", "env", "was")  # VisAH-FM's metrics, printed ×100 but LDif by its paper
# Which way each metric improves: LDif and the signal distances, the trajectory's variance and curvature (a
# straighter path) and the losses go down; the cosine to the ground-truth velocity goes up.
BETTER = {"ldif": "lower", "mag": "lower", "env": "lower", "was": "lower", "variance": "lower", "curvature": "lower",
          "cosine": "higher", "loss": "lower", "sdr": "higher", "sir": "higher", "sar": "higher", "fd": "lower",
          **{k: "higher" for k in ("onset_f1", "onset_precision", "onset_recall", "event_accuracy",
                                   "event_label_accuracy")}}
# The scored streams of eval.json, as metric-table columns: the unprocessed input (or the source x0), the
# prediction, and where a codec sits between model and audio, the real audio through it (the codec's ceiling).
SCORED = ("input", "prediction", "reconstruction")
NOT_LOSSES = ("step", "grad_norm", "examples_per_s")  # the other fields of metrics.jsonl
STREAM_COLORS = {"input": "0.6", "prediction": "tab:blue", "target": "tab:green"}
STYLE = """
body { font-family: sans-serif; margin: 24px auto; padding: 0 16px; max-width: 1200px; color: #222;
       background: #fff; overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #eef; }
td.num { text-align: right; font-family: monospace; }
td.better { color: #555; font-size: 90%; }
table.streams { width: 100%; table-layout: fixed; }
table.streams col.name { width: 110px; }
table.streams col.audio { width: 260px; }
table.streams audio { width: 100%; }
section.clip { border-top: 2px solid #88a; margin-top: 24px; padding-top: 8px; }
.frames { display: flex; flex-wrap: wrap; gap: 4px; }
.frames img { height: 96px; width: auto; border: 1px solid #ccc; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; max-width: 480px; }
figcaption, .note { color: #555; font-size: 90%; }
"""


def _stream_order(name: str) -> tuple:
  """input, step_1 … step_K (numerically), prediction, target, then any other wav by name."""
  step = re.fullmatch(r"step_(\d+)", name)
  if step:
    return (1, int(step.group(1)), name)
  return ({"input": 0, "prediction": 2, "target": 3}.get(name, 4), 0, name)


def _url(path: str, root: str) -> str:
  """A relative, percent-encoded link from `root` to `path`."""
  return quote(os.path.relpath(path, root).replace(os.sep, "/"))


def _mono(path: str) -> tuple[np.ndarray, int]:
  """A wav file as mono float64 (channels averaged) and its sample rate."""
  audio, sr = sf.read(path, dtype="float64", always_2d=True)
  return audio.mean(axis=1), sr


def _figure() -> tuple[Figure, object]:
  """A 400 × 140 px figure with fixed margins (no layout pass)."""
  fig = Figure(figsize=(4.0, 1.4), dpi=100)
  fig.subplots_adjust(left=0.11, right=0.98, bottom=0.22, top=0.95)
  ax = fig.add_subplot()
  ax.tick_params(labelsize=7)
  ax.set_xlabel("s", fontsize=7, labelpad=0)
  return fig, ax


def waveform_png(audio: np.ndarray, sample_rate: int, path: str, columns: int = 800) -> None:
  """The waveform on a fixed [−1, 1] scale against time in seconds, drawn as its min/max envelope per column."""
  fig, ax = _figure()
  if len(audio) > columns:
    starts = np.linspace(0, len(audio), columns, endpoint=False).astype(int)
    ax.fill_between(starts / sample_rate, np.minimum.reduceat(audio, starts), np.maximum.reduceat(audio, starts),
                    lw=0.5, color="tab:blue")
  else:
    ax.plot(np.arange(len(audio)) / sample_rate, audio, lw=0.5, color="tab:blue")
  ax.set(ylim=(-1.0, 1.0), xlim=(0, max(len(audio), 1) / sample_rate))
  fig.savefig(path, format="png")


def spectrogram_png(audio: np.ndarray, sample_rate: int, path: str) -> None:
  """The STFT magnitude in dB on a fixed scale ([−100, 0] dB re full scale: the Hann window's sum is 0 dB), so
  streams compare by colour."""
  n_fft = int(min(512, max(16, len(audio))))
  hop = n_fft // 2
  spec = librosa.stft(np.asarray(audio, np.float32), n_fft=n_fft, hop_length=hop, window="hann", pad_mode="constant")
  freqs = librosa.fft_frequencies(sr=sample_rate, n_fft=n_fft)
  times = np.arange(spec.shape[-1]) * hop / sample_rate
  db = 20.0 * np.log10(np.abs(spec) / librosa.filters.get_window("hann", n_fft).sum() + 1e-10)
  fig, ax = _figure()
  ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=-100.0, vmax=0.0,
            extent=(times[0], times[-1], freqs[0] / 1000, freqs[-1] / 1000))
  ax.set_ylabel("kHz", fontsize=7, labelpad=1)
  fig.savefig(path, format="png")


def _fmt(value) -> str:
  """A run field: floats to 4 significant digits, anything else as text."""
  return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _num(value, fmt: str) -> str:
  """A metric cell: formatted number, or empty when the metric is missing."""
  return "" if value is None else fmt.format(value)


def _better(metric: str) -> str:
  """A table cell saying which way `metric` improves (empty when unknown)."""
  return f"<td class=\"better\">{BETTER[metric]} is better</td>" if metric in BETTER else "<td></td>"


def _figure_html(path: str, workdir: str, alt: str, caption: str) -> str:
  return (f"<figure><img src=\"{_url(path, workdir)}\" alt=\"{html.escape(alt)}\">"
          f"<figcaption>{caption}</figcaption></figure>")


def loss_curves_png(rows: list[dict], path: str) -> None:
  """The training loss and its terms against the step (log scale when every value is positive)."""
  fig = Figure(figsize=(4.5, 3.0), dpi=100)
  fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.95)
  ax = fig.add_subplot()
  names = list(dict.fromkeys(k for r in rows for k in r if k not in NOT_LOSSES))
  positive = True
  for name in names:
    points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
    ax.plot(*zip(*points), lw=1.2 if name == "loss" else 0.8, marker="o" if len(points) <= 20 else None, ms=3,
            label=name)
    positive &= all(v > 0 for _, v in points)
  if positive:
    ax.set_yscale("log")
  ax.set(xlabel="step", ylabel="training loss")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.savefig(path, format="png")


def training_html(workdir: str) -> str:
  """The loss curves from `metrics.jsonl` (the last record of each step, so a resumed run draws once)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return "<p class=\"note\">No metrics.jsonl in this run.</p>"
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        by_step[row["step"]] = row
  if not by_step:
    return "<p class=\"note\">metrics.jsonl is empty.</p>"
  png = os.path.join(workdir, ASSETS_DIR, "loss_curves.png")
  loss_curves_png([by_step[k] for k in sorted(by_step)], png)
  return _figure_html(png, workdir, "loss curves", f"Training loss and its terms over {len(by_step)} logged "
                      "steps (lower is better).")


def trajectory_html(report: dict, workdir: str) -> str:
  """The per-step cosine to the ground-truth velocity as a plot, and variance and curvature per representation."""
  traj = report.get("trajectory")
  if not traj:
    return "<p class=\"note\">No trajectory analysis in eval.json (a model integrated in one step).</p>"
  png = os.path.join(workdir, ASSETS_DIR, "trajectory_cosine.png")
  trajectory.plot_cosine({rep: m["cosine"] for rep, m in traj.items()}, png)
  figure = _figure_html(png, workdir, "per-step cosine", "Cosine similarity of each step's velocity to the "
                        "ground truth x1 − x0 (Fig. 4a; higher is better).")
  head = "".join(f"<th>{html.escape(rep)}</th>" for rep in traj)
  body = "".join(f"<tr><th>{k}</th>" + "".join(f"<td class=\"num\">{_num(m.get(k), '{:.4g}')}</td>"
                                                for m in traj.values()) + _better(k) + "</tr>"
                 for k in ("variance", "curvature"))
  table = f"<table class=\"trajectory\"><tr><th>metric</th>{head}<th></th></tr>{body}</table>"
  return f"<div class=\"plots\">{figure}{table}</div>"


def loudness_png(loud: dict, path: str) -> None:
  """Grouped bars: per source, its LUFS in input, prediction and target; a silent source is marked, not drawn."""
  sources, streams = loud["sources"], [s for s in ("input", "prediction", "target") if s in loud]
  values = [v for s in streams for v in loud[s] if v is not None]
  floor = (min(values) if values else -70.0) - 6.0
  fig = Figure(figsize=(4.0, 2.2), dpi=100)
  fig.subplots_adjust(left=0.14, right=0.98, bottom=0.12, top=0.86)
  ax = fig.add_subplot()
  width = 0.8 / len(streams)
  for j, stream in enumerate(streams):
    x = np.arange(len(sources)) + (j - (len(streams) - 1) / 2) * width
    heights = [0.0 if v is None else v - floor for v in loud[stream]]
    bars = ax.bar(x, heights, width, bottom=floor, label=stream, color=STREAM_COLORS[stream])
    ax.bar_label(bars, ["silent" if v is None else f"{v:.1f}" for v in loud[stream]], fontsize=6, padding=1)
  ax.set_xticks(np.arange(len(sources)), sources, fontsize=8)
  ax.set_ylim(floor, (max(values) if values else floor) + 4.0)
  ax.set_ylabel("LUFS", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.legend(fontsize=7, ncol=len(streams), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
  fig.savefig(path, format="png")


def metrics_html(report: dict) -> str:
  """The eval.json summary: run fields, then a metric table for input, prediction and reconstruction where scored
  (raw values, and VisAH-FM's metrics also in the paper's scaling)."""
  rows = []
  for key, value in report.items():
    if key in (*SCORED, "trajectory"):  # the trajectory has its own section
      continue
    items = value.items() if isinstance(value, dict) else [("", value)]
    for sub, v in items:
      rows.append(f"<tr><th>{html.escape(key + ('.' + sub if sub else ''))}</th><td>{_fmt(v)}</td></tr>")
  out = [f"<table class=\"run\">{''.join(rows)}</table>"] if rows else []
  columns = [name for name in SCORED if isinstance(report.get(name), dict)]
  if columns:
    raw = {name: report[name] for name in columns}
    keys = list(dict.fromkeys(k for name in columns for k in report[name]))
    scaled = any(k in PAPER_SCALED for k in keys)
    paper = {name: paper_display(report[name]) for name in columns}
    head = "".join(f"<th>{n} (raw)</th>" for n in columns)
    head += "".join(f"<th>{n} (paper)</th>" for n in columns) if scaled else ""
    head += "<th></th>"
    body = []
    for k in keys:
      tds = "".join(f"<td class=\"num\">{_num(raw[n].get(k), '{:.4g}')}</td>" for n in columns)
      tds += "".join(f"<td class=\"num\">{_num(paper[n].get(k), '{:.2f}')}</td>" for n in columns) if scaled else ""
      tds += _better(k)
      body.append(f"<tr><th>{html.escape(METRIC_NAMES.get(k, k))}</th>{tds}</tr>")
    out.append(f"<table class=\"metrics\"><tr><th>metric</th>{head}</tr>{''.join(body)}</table>")
    if scaled:
      out.append("<p class=\"note\">Paper scaling: every value ×100 except LDif (VisAH-FM Table 1).</p>")
  return "\n".join(out)


def clip_html(workdir: str, clip: str) -> str:
  """One clip: frames, the loudness chart, then per stream an audio player, a waveform and a spectrogram (images
  written here)."""
  clip_dir = os.path.join(workdir, "samples", clip)
  assets = os.path.join(workdir, ASSETS_DIR, clip)
  os.makedirs(assets, exist_ok=True)
  parts = [f"<section class=\"clip\" id=\"clip-{quote(clip)}\"><h3>{html.escape(clip)}</h3>"]
  for folder in sorted(f for f in os.listdir(clip_dir)
                       if f.startswith("frames") and os.path.isdir(os.path.join(clip_dir, f))):  # frames, or frames_<source>
    frames_dir = os.path.join(clip_dir, folder)
    frames = sorted(f for f in os.listdir(frames_dir) if f.lower().endswith(FRAME_EXTENSIONS))
    imgs = "".join(f"<img src=\"{_url(os.path.join(frames_dir, f), workdir)}\" alt=\"frame {html.escape(f)}\">"
                   for f in frames)
    label = "" if folder == "frames" else f"<p class=\"note\">{html.escape(folder)}</p>"
    parts.append(f"{label}<div class=\"frames\">{imgs}</div>")
  events_path = os.path.join(clip_dir, "events.json")
  if os.path.isfile(events_path):
    with open(events_path) as f:
      events = json.load(f)
    shown = ", ".join(f"{e['class']} at {e['time']:.2f} s" for e in events["events"])
    parts.append(f"<p class=\"note\">Caption: {html.escape(events.get('caption', ''))}. Events the frames show: "
                 f"{html.escape(shown) or 'none'}.</p>")
  loud_path = os.path.join(clip_dir, "loudness.json")
  if os.path.isfile(loud_path):
    with open(loud_path) as f:
      loud = json.load(f)
    png = os.path.join(assets, "loudness.png")
    loudness_png(loud, png)
    parts.append(_figure_html(png, workdir, f"{clip} loudness per source", "Loudness of each source (LUFS; the "
                              "prediction's by projection on the input stems, as LDif): what was highlighted."))
  streams = sorted((f[:-4] for f in os.listdir(clip_dir) if f.endswith(".wav")), key=_stream_order)
  rows = []
  for name in streams:
    wav = os.path.join(clip_dir, name + ".wav")
    audio, sr = _mono(wav)
    wave_png, spec_png = (os.path.join(assets, f"{name}_{kind}.png") for kind in ("waveform", "spectrogram"))
    waveform_png(audio, sr, wave_png)
    spectrogram_png(audio, sr, spec_png)
    label = html.escape(name)
    rows.append(
        f"<tr><th>{label}</th>"
        f"<td><audio controls preload=\"metadata\" src=\"{_url(wav, workdir)}\" data-clip=\"{html.escape(clip)}\" "
        f"data-stream=\"{label}\"></audio></td>"
        f"<td><img src=\"{_url(wave_png, workdir)}\" alt=\"{label} waveform\"></td>"
        f"<td><img src=\"{_url(spec_png, workdir)}\" alt=\"{label} spectrogram\"></td></tr>")
  parts.append("<table class=\"streams\"><colgroup><col class=\"name\"><col class=\"audio\"><col><col></colgroup>"
               "<tr><th>stream</th><th>audio</th><th>waveform</th><th>spectrogram</th></tr>"
               + "".join(rows) + "</table></section>")
  return "\n".join(parts)


def write_report(workdir: str) -> str:
  """Writes `<workdir>/report.html` (and its images under `report_files/`); returns its path."""
  if not os.path.isdir(workdir):
    raise RunNotFoundError(f"no run directory {workdir!r}")
  eval_path = os.path.join(workdir, "eval.json")
  report = None
  if os.path.exists(eval_path):
    with open(eval_path) as f:
      report = json.load(f)
  samples = os.path.join(workdir, "samples")
  clips = []
  if os.path.isdir(samples):
    clips = sorted(c for c in os.listdir(samples) if os.path.isdir(os.path.join(samples, c)))
  os.makedirs(os.path.join(workdir, ASSETS_DIR), exist_ok=True)
  title = f"avflow report: {os.path.basename(os.path.abspath(workdir))}"
  body = [f"<h1>{html.escape(title)}</h1>", "<h2>Metrics</h2>",
          metrics_html(report) if report is not None else "<p class=\"note\">No eval.json in this run.</p>",
          "<h2>Training</h2>", training_html(workdir)]
  if report is not None:
    body += ["<h2>Inference trajectory</h2>", trajectory_html(report, workdir)]
  body.append(f"<h2>Clips ({len(clips)})</h2>")
  body += [clip_html(workdir, clip) for clip in clips] or ["<p class=\"note\">No samples/ in this run.</p>"]
  page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
          "<meta name=\"viewport\" content=\"width=device-width\">"
          f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
  path = os.path.join(workdir, REPORT_NAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write(page)
  return path

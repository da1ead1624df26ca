"""The run report: its HTML and links, the `report` command, and the page in a real headless Chromium.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (NUL-separated JSON on file
descriptors 3 and 4), so nothing beyond the Debian `chromium` package is needed. Without it the browser test fails.
"""
import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from urllib.parse import quote, unquote

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from avflow.report import html as report_html

SR = 16000
CLIPS = {"clip_a": ("input", "step_1", "step_2", "prediction", "target"), "clip b&c": ("input", "prediction", "target")}
EVAL = {
    "input": {"ldif": 9.48, "mag": 0.1157, "env": 0.0468, "was": 0.0108},
    "prediction": {"ldif": 7.87, "mag": 0.0846, "env": 0.0279, "was": 0.0064},
    "steps": 23500, "num_clips": 2, "sample_rate": SR, "inference": {"num_steps": 4, "method": "euler"},
    "trajectory": {"waveform": {"cosine": [0.91, 0.95, 0.97, 0.99], "variance": 0.0123, "curvature": 0.21},
                   "stft": {"cosine": [0.62, 0.71, 0.78, 0.84], "variance": 0.0456, "curvature": 0.47}},
}
LOUDNESS = {"sources": ["speech", "music", "effects"], "input": [-31.2, -18.4, -22.0],
            "prediction": [-20.5, -27.9, -24.1], "target": [-19.8, -28.3, None]}  # a silent target effects stem
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--mute-audio", "--remote-debugging-pipe")  # scrollbars shown: they narrow the page as in a desktop


@pytest.fixture
def run_dir(tmp_path):
  """A run directory as evaluation leaves it: eval.json, samples/<clip>/*.wav, frames for one clip."""
  rng = np.random.default_rng(0)
  t = np.arange(SR // 2) / SR
  root = tmp_path / "run"
  for c, (clip, streams) in enumerate(CLIPS.items()):
    clip_dir = root / "samples" / clip
    clip_dir.mkdir(parents=True)
    for s, stream in enumerate(streams):
      audio = 0.3 * np.sin(2 * np.pi * (220 + 110 * s + 40 * c) * t) + 0.05 * rng.standard_normal(len(t))
      sf.write(str(clip_dir / f"{stream}.wav"), audio, SR)
  frames = root / "samples" / "clip_a" / "frames"
  frames.mkdir()
  for k in range(2):
    grad = np.linspace(0, 255, 64, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(grad, (48, 1)), np.full((48, 64), 80 * k, np.uint8),
                              np.tile(grad[::-1], (48, 1))], axis=-1)).save(frames / f"{k:03d}.png")
  for clip in CLIPS:
    (root / "samples" / clip / "loudness.json").write_text(json.dumps(LOUDNESS))
  with open(root / "metrics.jsonl", "w") as f:
    for step in range(1, 41):  # the loop appends a line per logged step; a resume repeats steps 39-40
      f.write(json.dumps({"step": step, "grad_norm": 1.0, "loss": 2.0 / step, "fm": 1.5 / step,
                          "rollout": 0.5 / step, "examples_per_s": 3.0}) + "\n")
    f.write(json.dumps({"step": 39, "loss": 0.05, "fm": 0.04, "rollout": 0.01}) + "\n")
  (root / "eval.json").write_text(json.dumps(EVAL))
  return root


def _links(page: str) -> list[str]:
  return re.findall(r'(?:src|href)="([^"]*)"', page)


def test_report_html_links_and_metrics(run_dir):
  path = report_html.write_report(str(run_dir))
  assert path == str(run_dir / "report.html")
  page = (run_dir / "report.html").read_text()
  links = _links(page)
  # loss curves, cosine plot, then per clip frames, a loudness chart and audio + 2 images per stream
  assert len(links) == 2 + 2 + len(CLIPS) + 3 * sum(map(len, CLIPS.values()))
  for link in links:
    assert not link.startswith(("/", "file:", "http")), link
    assert (run_dir / unquote(link)).is_file(), link
  assert "samples/clip%20b%26c/input.wav" in links and 'data-clip="clip b&amp;c"' in page
  metrics = re.search(r'<table class="metrics">.*?</table>', page, re.S).group(0)
  rows = {m[0]: re.findall(r'<td class="num">([^<]*)</td>', m[1])
          for m in re.findall(r"<tr><th>(\w+)</th>(.*?)</tr>", metrics)}
  assert rows["LDif"] == ["9.48", "7.87", "9.48", "7.87"]  # no display scaling for LDif
  assert rows["Mag"] == ["0.1157", "0.0846", "11.57", "8.46"]
  assert rows["Was"][-1] == "0.64"
  assert re.findall(r'<td class="better">([^<]*)</td>', metrics) == ["lower is better"] * 4
  assert "report_files/loss_curves.png" in links and "report_files/trajectory_cosine.png" in links
  assert "'cosine'" not in page and "[0.91" not in page  # the per-step cosine is a plot, not a raw dict
  trajectory = re.search(r'<table class="trajectory">.*?</table>', page, re.S).group(0)
  assert "<th>curvature</th><td class=\"num\">0.21</td><td class=\"num\">0.47</td>" in trajectory
  assert trajectory.count("lower is better") == 2 and "higher is better" in page
  assert sorted(f"report_files/{quote(c)}/loudness.png" for c in CLIPS) == [
      link for link in links if link.endswith("loudness.png")]
  assert "<td>23500</td>" in page and "<td>euler</td>" in page
  order = re.findall(r'data-clip="clip_a" data-stream="(\w+)"', page)
  assert order == list(CLIPS["clip_a"])


def test_report_without_eval_or_samples(tmp_path):
  page = open(report_html.write_report(str(tmp_path))).read()
  assert "No eval.json" in page and "No samples/" in page and "<audio" not in page


def test_report_command(run_dir):
  code = ("import sys; from absl import app; from avflow.commands import report as m; "
          "app.run(m.main, argv=['avflow report'] + sys.argv[1:], flags_parser=m.parse_flags)")
  done = subprocess.run([sys.executable, "-c", code, f"--workdir={run_dir}"], capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == str(run_dir / "report.html")
  assert (run_dir / "report_files" / "clip_a" / "step_2_spectrogram.png").is_file()
  bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and "workdir" in bad.stderr


class Chromium:
  """A headless Chromium driven through the DevTools protocol over a pipe."""

  def __init__(self, binary: str, profile: str, log_path: str):
    to_child_r, self._to_child = self._high_pipe(read_end=True)
    self._from_child, from_child_w = self._high_pipe(read_end=False)

    def child_fds():
      os.dup2(to_child_r, 3)
      os.dup2(from_child_w, 4)

    with open(log_path, "wb") as log:
      self.proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=False,
                                   preexec_fn=child_fds)
    os.close(to_child_r)
    os.close(from_child_w)
    self._buf = b""
    self._next_id = 0
    self.events: list[dict] = []

  @staticmethod
  def _high_pipe(read_end: bool) -> tuple[int, int]:
    """A close-on-exec pipe whose fds are ≥ 10, so moving them to 3 and 4 in the child cannot clobber each other."""
    r, w = os.pipe()
    hi = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r, w))
    os.close(r)
    os.close(w)
    return hi

  def _read(self, deadline: float) -> dict:
    while b"\0" not in self._buf:
      left = deadline - time.monotonic()
      if left <= 0:
        raise TimeoutError("no answer from chromium")
      if select.select([self._from_child], [], [], left)[0]:
        chunk = os.read(self._from_child, 1 << 20)
        if not chunk:
          raise RuntimeError(f"chromium closed its DevTools pipe (exit status {self.proc.poll()})")
        self._buf += chunk
    message, self._buf = self._buf.split(b"\0", 1)
    return json.loads(message)

  def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
    self._next_id += 1
    message = {"id": self._next_id, "method": method, "params": params or {}}
    if session:
      message["sessionId"] = session
    os.write(self._to_child, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + timeout
    while True:
      reply = self._read(deadline)
      if reply.get("id") == self._next_id:
        if "error" in reply:
          raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]
      self.events.append(reply)

  def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    seen = len(self.events)
    while True:
      for event in self.events[seen:]:
        if event.get("method") == method and event.get("sessionId") == session:
          return event
      seen = len(self.events)
      self.events.append(self._read(deadline))

  def close(self):
    try:
      self.send("Browser.close", timeout=10)
    except (RuntimeError, TimeoutError, OSError):
      pass
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    os.close(self._to_child)
    os.close(self._from_child)


INSPECT_JS = """(async () => {
  const audios = [...document.querySelectorAll('audio')];
  const settled = a => (a.readyState >= 1 || a.error) ? Promise.resolve() : new Promise(r => {
    a.addEventListener('loadedmetadata', r, {once: true});
    a.addEventListener('error', r, {once: true});
    a.load();
  });
  await Promise.race([Promise.all(audios.map(settled)), new Promise(r => setTimeout(r, 15000))]);
  return {
    audio: audios.map(a => ({clip: a.dataset.clip, stream: a.dataset.stream, ready: a.readyState,
                             error: a.error ? a.error.code : null, duration: a.duration})),
    images: [...document.images].map(i => ({src: i.getAttribute('src'), alt: i.alt,
                                            ok: i.complete && i.naturalWidth > 0})),
    title: document.title,
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
    text: document.body.innerText,
  };
})()"""


def _console_errors(events: list[dict], session: str) -> list[str]:
  """Console errors, uncaught exceptions and error log entries (failed resource loads included)."""
  errors = []
  for e in events:
    method, p = e.get("method"), e.get("params", {})
    if e.get("sessionId") != session:
      continue
    if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
      errors.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
    elif method == "Runtime.exceptionThrown":
      errors.append(p["exceptionDetails"].get("text", "exception"))
    elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
      errors.append(f"{p['entry']['text']} {p['entry'].get('url', '')}")
  return errors


def _load(browser: Chromium, path: str) -> tuple[dict, list[str], np.ndarray]:
  """Opens a file in a new tab: (page inspection, console errors, screenshot as grey levels)."""
  target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
  session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
  for domain in ("Page", "Runtime", "Log"):
    browser.send(f"{domain}.enable", session=session)
  browser.send("Emulation.setDeviceMetricsOverride",
               {"width": 1280, "height": 1200, "deviceScaleFactor": 1, "mobile": False}, session)
  browser.send("Page.navigate", {"url": "file://" + path}, session)
  browser.wait_event("Page.loadEventFired", session)
  info = browser.send("Runtime.evaluate", {"expression": INSPECT_JS, "awaitPromise": True, "returnByValue": True},
                      session, timeout=40)["result"]["value"]
  shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
  pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("L"), np.float64)
  return info, _console_errors(browser.events, session), pixels


def test_report_in_headless_chromium(run_dir, tmp_path):
  binary = shutil.which("chromium")
  if binary is None:
    pytest.fail("chromium is not installed: the report test needs a real headless browser "
                "(Debian: apt-get install -y chromium)")
  report_html.write_report(str(run_dir))
  copy = tmp_path / "copied run"  # links must be relative: open the report from a copy of the folder
  shutil.copytree(run_dir, copy)
  broken = tmp_path / "broken"
  shutil.copytree(run_dir, broken)
  (broken / "report_files" / "clip_a" / "target_waveform.png").unlink()

  browser = Chromium(binary, str(tmp_path / "profile"), str(tmp_path / "chromium.log"))
  try:
    info, errors, pixels = _load(browser, str(copy / "report.html"))
    broken_info, broken_errors, _ = _load(browser, str(broken / "report.html"))
  finally:
    browser.close()

  assert errors == [], errors
  assert info["title"] == "avflow report: run"
  pairs = [(a["clip"], a["stream"]) for a in info["audio"]]
  assert sorted(pairs) == sorted((c, s) for c, streams in CLIPS.items() for s in streams)  # one per clip and stream
  for a in info["audio"]:
    assert a["error"] is None and a["ready"] >= 1, a
    assert a["duration"] == pytest.approx(0.5, abs=0.01), a
  # frames, a waveform and a spectrogram per stream, a loudness chart per clip, the loss and cosine plots
  assert len(info["images"]) == 2 + 2 * len(pairs) + len(CLIPS) + 2 and all(i["ok"] for i in info["images"]), \
      info["images"]
  alts = [i["alt"] for i in info["images"]]
  assert alts.count("frame 000.png") == alts.count("frame 001.png") == 1
  assert sorted(a for a in alts if a.endswith("loudness per source")) == sorted(
      f"{c} loudness per source" for c in CLIPS)
  assert "loss curves" in alts and "per-step cosine" in alts
  assert info["text"].count("lower is better") >= 4 + 2 and "higher is better" in info["text"]
  # No horizontal scroll in a 1280-px window, its vertical scrollbar included.
  assert info["scrollWidth"] <= info["clientWidth"] <= 1280, (info["scrollWidth"], info["clientWidth"])
  assert pixels.shape[1] == info["clientWidth"] and pixels.var() > 200.0, pixels.var()  # the page, less its scrollbar
  # The same checks see a broken link: one missing image, reported on the console.
  assert [i["src"] for i in broken_info["images"] if not i["ok"]] == ["report_files/clip_a/target_waveform.png"]
  assert any("target_waveform.png" in e or "ERR_FILE_NOT_FOUND" in e for e in broken_errors), broken_errors

"""The html export in a real headless Chromium: the graph draws, and the page reacts."""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmnflow import viz
from dmnflow.compiler.limits import LIMITS
from dmnflow.plan import EdgePlan, NodePlan, Plan, ProcessPlan, RestartPlan

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs Debian's `chromium` package)")]

LAYERS = {"trading/market": "data", "features": "features", "lstm[0]": "models",
          "lstm[1]": "models", "meta": "models", "risk": "risk", "portfolio": "portfolio",
          "execution": "execution", "monitor": "monitoring"}
LINKS = [("trading/market", "features"), ("features", "lstm[0]"), ("features", "lstm[1]"),
         ("lstm[0]", "meta"), ("lstm[1]", "meta"), ("meta", "risk"), ("risk", "portfolio"),
         ("portfolio", "execution"), ("execution", "portfolio"), ("execution", "monitor"),
         ("risk", "monitor")]


def pipeline() -> Plan:
    """The seed's shape, with replicas, a '/' in a name and a feedback edge."""
    restart = RestartPlan(when="never", max_restarts=0, backoff_s=0.1, backoff_max_s=1.0)
    nodes = [NodePlan(name=name, spec_name=name.split("[")[0], uses=f"nodes.{layer}:Node{i}",
                      params={"i": i}, layer=layer, process=name, cpus=[i % 2], gpu=None,
                      replica=None, replicas=1, restart=restart, busy=False, source=i == 0,
                      model=None, inputs=[], outputs=[], loc="g.yaml:1:1")
             for i, (name, layer) in enumerate(LAYERS.items())]
    edges = [EdgePlan(id=k, src=a, src_port="out", dst=b, dst_port="in", type="Any",
                      codec="msgpack", transport="ipc", endpoint=f"ipc://{{run_dir}}/{k}", bind=f"{a}.out",
                      pattern="pub", policy="block", queue=64, topics=[],
                      feedback=(a, b) == ("execution", "portfolio"), delivery="at-most-once", credit=0,
                      block_timeout_s=None)
             for k, (a, b) in enumerate(LINKS)]
    return Plan(graph="dmn-trading", file="g.yaml", profile=None, machine_cpus=[0, 1],
                nodes=nodes, edges=edges,
                processes=[ProcessPlan(name=n.name, nodes=[n.name], cpus=n.cpus) for n in nodes],
                warnings=[], limits=LIMITS)


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium, offline, and return its stdout. It starts in a session of its
    own so that on a timeout the whole process group (zygote, renderer, ...) is killed."""
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,800",
           "--virtual-time-budget=2000", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium (pid {proc.pid}) did not finish in 90 s; killed its group")
    finally:
        with contextlib.suppress(ProcessLookupError):  # helpers left behind by the browser
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


def page(tmp_path: Path, extra: str = "") -> str:
    """The plan's html page as a file:// URL, with ``extra`` markup before </body>."""
    path = tmp_path / "graph.html"
    path.write_text(str(viz.render(pipeline(), "html")).replace("</body>", extra + "</body>"))
    return path.as_uri()


def body_data(dom: str) -> dict[str, str]:
    tag = re.search(r"<body([^>]*)>", dom)
    assert tag is not None, dom[:500]
    return {k: html.unescape(v) for k, v in re.findall(r'data-([\w-]+)="([^"]*)"', tag.group(1))}


def png_pixels(data: bytes) -> np.ndarray:
    """The image's RGB pixels (Pillow decodes what resvg, Graphviz and Chromium write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_every_node_box_renders(tmp_path: Path) -> None:
    data = body_data(chromium(tmp_path, "--dump-dom", page(tmp_path)))
    assert data.get("rendered") == str(len(LAYERS))


def test_screenshot_shows_the_graph(tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", page(tmp_path))
    pixels = png_pixels(shot.read_bytes()).astype(int)[..., :3]
    assert pixels.shape[:2] == (800, 1200)
    graph = pixels[60:]  # below the page header
    ink = (graph < 200).any(axis=2)
    assert ink.mean() > 0.005  # boxes, edges and text were painted ...
    rows = np.flatnonzero(ink.any(axis=1))
    assert rows[-1] - rows[0] > 100  # ... over a real area, not a stray line
    assert len(np.unique(graph.reshape(-1, 3), axis=0)) > 20  # in the layers' colours


def test_hover_click_zoom_and_pan(tmp_path: Path) -> None:
    probe = """<script>
(() => {
  const out = {};
  const svg = document.querySelector("#stage svg");
  const risk = [...svg.querySelectorAll(".node")].find((n) => n.dataset.node === "risk");
  risk.dispatchEvent(new MouseEvent("mouseenter"));
  out.edges = svg.querySelectorAll(".edge.hl").length;
  out.nodes = svg.querySelectorAll(".node.hl").length;
  risk.dispatchEvent(new MouseEvent("mouseleave"));
  out.after = svg.querySelectorAll(".hl").length;
  const r = risk.querySelector("rect.box").getBoundingClientRect();
  const at = { clientX: r.x + r.width / 2, clientY: r.y + r.height / 2, pointerId: 1 };
  svg.dispatchEvent(new PointerEvent("pointerdown", at));
  svg.dispatchEvent(new PointerEvent("pointerup", at));
  const panel = document.getElementById("panel");
  out.open = panel.classList.contains("open");
  out.panel = panel.textContent;
  let box = svg.getAttribute("viewBox");
  svg.dispatchEvent(new WheelEvent("wheel", { deltaY: -300, clientX: 600, clientY: 400,
                                              cancelable: true }));
  out.zoomed = box !== svg.getAttribute("viewBox");
  box = svg.getAttribute("viewBox");
  for (const [kind, x] of [["pointerdown", 100], ["pointermove", 220], ["pointerup", 220]]) {
    svg.dispatchEvent(new PointerEvent(kind, { clientX: x, clientY: 300, pointerId: 1 }));
  }
  out.panned = box !== svg.getAttribute("viewBox");
  document.body.dataset.probe = JSON.stringify(out);
})();
</script>"""
    data = body_data(chromium(tmp_path, "--dump-dom", page(tmp_path, probe)))
    probe_out = json.loads(data["probe"])
    assert (probe_out["edges"], probe_out["nodes"]) == (3, 4)  # meta->, ->portfolio, ->monitor
    assert probe_out["after"] == 0
    assert probe_out["open"] and "nodes.risk:Node5" in probe_out["panel"]
    assert '"i": 5' in probe_out["panel"]
    assert probe_out["zoomed"] and probe_out["panned"]

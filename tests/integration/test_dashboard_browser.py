"""The live dashboard in a real headless Chromium while the trading graph runs: the page
draws the graph, its figures change as the graph runs, the equity curve and positions
appear, and without the token nothing is served."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .procs import ROOT, alive, kill_all, wait_until, workers_of

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs Debian's `chromium` package)")]
pytest.importorskip("torch")
websockets = pytest.importorskip("websockets.sync.client")


class Browser:
    """Headless Chromium driven over the DevTools protocol; its process group is killed at close."""

    def __init__(self, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
             "--remote-debugging-port=0", "--window-size=1500,950", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        assert wait_until(lambda: port_file.exists() and port_file.read_text().strip() != "", 30)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20))
        self.calls = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.calls:
                assert "error" not in msg, msg
                return msg["result"]

    def js(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


READ = """(() => ({
  status: document.getElementById('status').textContent,
  elapsed: document.getElementById('elapsed').textContent,
  labels: [...document.querySelectorAll('.elabel text:last-of-type')].map(t => t.textContent),
  figures: document.querySelector('#figures .figs').innerText,
  equity: !document.getElementById('equity').classList.contains('empty'),
  points: (document.querySelector('#equity polyline') || {getAttribute: () => ''}).getAttribute('points'),
  positions: document.querySelectorAll('#positions tr').length,
  nodes: [...document.querySelectorAll('.node .status-text')].map(t => t.textContent),
}))()"""


def test_the_dashboard_shows_the_trading_graph_live(tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "dmnflow", "launch", "graphs/dmn_trading.yaml",
                                 "--dashboard", "127.0.0.1:0", "--name", "dash-test", "--set", "vars.rate=400"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "NO_COLOR": "1"})
    browser = None
    seen: set[int] = set()
    try:
        assert wait_until(lambda: "token=" in log.read_text(), 120, 0.2), log.read_text()
        url = re.search(r"http://\S+token=\S+", log.read_text()).group(0)
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no page
            urllib.request.urlopen(url.split("?")[0], timeout=10)
        assert refused.value.code == 403
        browser = Browser(tmp_path / "profile")
        browser.call("Page.enable")
        browser.call("Page.navigate", url=url)

        def ready() -> bool:
            seen.update(workers_of(proc.pid).values())
            state = browser.js(READ)
            return bool(state) and state["status"] == "running" and state["equity"] and state["positions"] > 1
        assert wait_until(ready, 180, 1.0), browser.js(READ)
        first = browser.js(READ)
        time.sleep(4)
        second = browser.js(READ)
        assert first["elapsed"] != second["elapsed"]
        assert first["labels"] != second["labels"] or first["figures"] != second["figures"] \
            or first["points"] != second["points"], (first, second)
        assert any("/s · p50" in label for label in second["labels"])
        assert "sharpe" in second["figures"] and "equity" in second["figures"]
        assert all(text.startswith(("running", "done")) for text in second["nodes"]), second["nodes"]
        shot = browser.call("Page.captureScreenshot", format="png")["data"]
        png = tmp_path / "dashboard.png"
        png.write_bytes(base64.b64decode(shot))
        assert png.stat().st_size > 20_000
        if os.environ.get("DMNFLOW_KEEP_SCREENSHOT"):  # to look at it: a path to copy it to
            shutil.copy(png, os.environ["DMNFLOW_KEEP_SCREENSHOT"])
    finally:
        if browser is not None:
            browser.close()
        seen.update(workers_of(proc.pid).values())
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        kill_all(sorted(p for p in seen if alive(p)))
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_the_dashboards_tables_keep_names_readable(tmp_path: Path) -> None:
    """A snapshot of the trading graph (no run needed): a budget's name gets a row of its own,
    on one line at 900 px, and an edge's name breaks only between its parts."""
    import dmnflow
    from dmnflow.observe.dashboard import serve_dashboard

    snap = json.loads((ROOT / "tests/unit/data/trading_snapshot.json").read_text())

    class Snapshot:
        def snapshot(self, history: bool = False) -> dict[str, Any]:
            return {"report": snap, "events": [], "history": {}}

    plan = dmnflow.compile_graph(ROOT / "graphs/dmn_trading.yaml", models=False)
    server = serve_dashboard("127.0.0.1:0", plan, Snapshot())
    browser = None
    try:
        browser = Browser(tmp_path / "profile")
        browser.call("Emulation.setDeviceMetricsOverride", width=900, height=1800, deviceScaleFactor=1, mobile=False)
        browser.call("Page.enable")
        browser.call("Page.navigate", url=server.url)
        read = "[...document.querySelectorAll('#budgets td.name')].map(td => td.innerText)"
        assert wait_until(lambda: len(browser.js(read) or []) == len(snap["budgets"]), 30, 0.5), browser.js(read)
        names = browser.js(read)
        assert names == [b["name"] for b in snap["budgets"]]
        heights = browser.js("[...document.querySelectorAll('#budgets td.name')].map(td => "
                             "td.getBoundingClientRect().height)")
        first_cells = browser.js("[...document.querySelectorAll('#edges td:first-child')].map(td => td.innerText)")
        assert max(heights) < 30, heights  # one line each (the squeezed column took 5-9 lines)
        assert all(not re.search(r"[a-z]\n[a-z]", text) for text in first_cells), first_cells  # never inside a word
    finally:
        if browser is not None:
            browser.close()
        server.close()

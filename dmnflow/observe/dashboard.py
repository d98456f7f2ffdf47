"""The live web dashboard: ``launch --dashboard 127.0.0.1:8050`` or ``dmnflow dashboard RUN``.

One local page, no CDN (its script, style and fonts are inline): the graph drawn as
``dmnflow viz`` draws it, with each edge's rate and latency on its label and each node's
status on its box; the run's progress; and, for a graph whose nodes report them, the
equity curve, positions, figures and alerts as they fire (the monitoring layer's
summaries, and missed latency budgets). Updates are pushed every second over
Server-Sent Events (``/events``).

It reads the supervisor's reports, never the data plane: in the launching process
directly, from another one through the run's admin socket (``snapshot``). It serves on
loopback unless told otherwise, and every request must carry the token printed with the
URL (``?token=...``), so another user of the machine cannot read it.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from rich.console import Console

from ..errors import ControlError
from ..plan import Plan
from ..viz import font_faces, live_svg

__all__ = ["DashboardServer", "serve_dashboard", "serve_run_dashboard"]

PAGE = Path(__file__).with_name("dashboard.html")
PUSH_S = 1.0


def _clean(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null (a browser's JSON.parse refuses them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


class _Remote:
    """A run in another process, through its admin socket."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def snapshot(self, history: bool = False) -> dict[str, Any] | None:
        from .top import snapshot

        try:
            return snapshot(self.run, history=history, timeout_s=2.0)
        except ControlError:
            return None


def _page(plan: Plan, token: str) -> bytes:
    svg, edge_ids = live_svg(plan)
    data = {"graph": plan.graph, "edges": edge_ids,
            "names": {str(e.id): f"{e.src}.{e.src_port} → {e.dst}.{e.dst_port}" for e in plan.edges},
            "token": token}
    parts = {"FONTS": font_faces(), "TITLE": plan.graph.replace("<", "&lt;"), "SVG": svg,
             "DATA": json.dumps(data).replace("<", "\\u003c")}
    page = PAGE.read_text(encoding="utf-8")
    for key, value in parts.items():
        page = page.replace(f"%{key}%", value)
    return page.encode()


class DashboardServer:
    """The running dashboard; ``close`` stops it."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread, url: str) -> None:
        self.httpd, self.thread, self.url = httpd, thread, url
        self.closing = threading.Event()

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5.0)


def serve_dashboard(address: str, plan: Plan, source: Any) -> DashboardServer:
    """Serve the dashboard of ``plan`` at ``address`` (``HOST:PORT``; port 0 picks one), its
    figures from ``source.snapshot(history)``.

    Raises:
        ObserveError: the address cannot be served.
    """
    from .prometheus import parse_address
    from .session import ObserveError

    host, port = parse_address(address, "--dashboard")
    token = secrets.token_urlsafe(18)
    page = _page(plan, token)
    holder: dict[str, DashboardServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return  # quiet: the terminal shows the graph

        def _authorised(self) -> bool:
            given = parse_qs(urlparse(self.path).query).get("token", [""])[0]
            if hmac.compare_digest(given.encode(), token.encode()):
                return True
            self.send_error(403, "this dashboard needs the token printed with its URL")
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            route = urlparse(self.path).path
            if not self._authorised():
                return
            if route == "/":
                self._send(200, "text/html; charset=utf-8", page)
            elif route == "/snapshot":
                snap = source.snapshot(history=True)
                self._send(200 if snap else 503, "application/json", json.dumps(_clean(snap)).encode())
            elif route == "/events":
                self._events()
            else:
                self.send_error(404)

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _events(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            server = holder["server"]
            try:
                while not server.closing.is_set():
                    snap = source.snapshot(history=True)
                    if snap is not None:
                        self.wfile.write(b"data: " + json.dumps(_clean(snap)).encode() + b"\n\n")
                        self.wfile.flush()
                    server.closing.wait(PUSH_S)
            except (BrokenPipeError, ConnectionResetError):
                return  # the page was closed

    class Server(ThreadingHTTPServer):
        daemon_threads = True

    try:
        httpd = Server((host, port), Handler)
    except OSError as exc:
        raise ObserveError(f"--dashboard {address}: cannot serve there: {exc.strerror or exc}") from None
    thread = threading.Thread(target=httpd.serve_forever, name="dmnflow-dashboard", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    server = holder["server"] = DashboardServer(httpd, thread, f"http://{shown}:{httpd.server_address[1]}/?token={token}")
    return server


def serve_run_dashboard(ref: str | None, address: str, console: Console, *, duration_s: float | None = None) -> None:
    """Serve the dashboard of a running graph until it ends, ``duration_s`` passes or Ctrl-C.

    Raises:
        ControlError: the run cannot be found.
    """
    from .top import pick_run

    run = pick_run(ref)
    plan = Plan.from_json(Path(run.run_dir, "plan.json").read_bytes())
    source = _Remote(run)
    server = serve_dashboard(address, plan, source)
    console.print(f"dashboard of {run.name} (pid {run.pid}): {server.url}")
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.5)
            if not Path(run.run_dir, "admin").exists():
                console.print(f"{run.name} ended")
                break
    except KeyboardInterrupt:
        pass
    finally:
        server.close()

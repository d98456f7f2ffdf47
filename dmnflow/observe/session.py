"""What ``dmnflow launch`` (and ``replay``) runs beside the graph: the live view on a
terminal or status lines in a log, ``/metrics``, the dashboard, a recording.

``watching(plan, ...)`` is a context manager: it yields a ``Session`` whose ``plan`` (the
plan to launch: with a recording, its recorded outputs), ``observer`` and ``on_status``
go to ``launch``; on exit it stops what it started.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..errors import ExitCode, LaunchError
from ..plan import Plan
from ..runtime import protocol
from ..runtime.observer import Observer
from .view import live_view, status_line

__all__ = ["ObserveError", "Session", "StartView", "watching"]

status_log = logging.getLogger("dmnflow.status")
start_log = logging.getLogger("dmnflow.start")  # the start's phases (the CLI's and the supervisor's)


class ObserveError(LaunchError):
    """An observing option cannot be served: a bad address, a missing package, an unknown output."""

    exit_code = ExitCode.INVALID


@dataclass
class Session:
    """What to hand ``launch``, and what is being served."""

    plan: Plan
    observer: Observer
    urls: dict[str, str] = field(default_factory=dict)
    displays: list[Any] = field(default_factory=list)

    def on_status(self, report: Any) -> None:
        for show in self.displays:
            show(report)


class _StatusLog:
    """One status line every ``every_s`` seconds through logging (runs without a terminal)."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.next = time.monotonic() + every_s
        if not status_log.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
            status_log.addHandler(handler)
            status_log.setLevel(logging.INFO)
            status_log.propagate = False

    def __call__(self, report: Any) -> None:
        now = time.monotonic()
        if now >= self.next:
            self.next = now + self.every_s
            status_log.info("%s", status_line(report))


class StartView(logging.Handler):
    """The start's phases as they happen (``dmnflow.start``: validated, N/M processes up,
    ready, first message), so a start of many seconds is never a blank screen: on a terminal
    one status line, which the live view replaces once it has figures; otherwise a log line
    each, stamped like the status lines. ``with StartView(console, "compiling ...")``."""

    current: StartView | None = None  # the one being shown: `watching` hands its status line over

    def __init__(self, console: Console, first: str) -> None:
        super().__init__(logging.INFO)
        self.console = console
        self.last = first
        self.status = console.status(first) if console.is_terminal else None
        self.live: Live | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))

    def __enter__(self) -> StartView:
        start_log.addHandler(self)
        start_log.setLevel(logging.INFO)
        StartView.current = self
        if self.status is not None:
            self.status.start()
        start_log.info("%s", self.last)  # a log says it too: a cold compile takes seconds
        return self

    def __exit__(self, *exc: object) -> None:
        start_log.removeHandler(self)
        StartView.current = None
        self.release()

    def release(self) -> None:
        """Stop the status line (a terminal has one Rich display at a time)."""
        if self.status is not None:
            self.status.stop()
            self.status = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()
        if not self.console.is_terminal:
            self.console.print(self.format(record), soft_wrap=True, highlight=False, markup=False)
        elif self.live is not None:
            self.live.update(Text(self.last))
        elif self.status is not None:
            self.status.update(self.last)


@contextlib.contextmanager
def watching(plan: Plan, console: Console, *, status_every_s: float = 5.0, metrics: str | None = None,
             dashboard: str | None = None, record: Path | None = None, edges: list[str] | None = None,
             title: str | None = None) -> Iterator[Session]:
    """Set up the watching a launch asked for (see the module docstring).

    Raises:
        ObserveError: an address cannot be served, a package is missing, an output is unknown.
    """
    recorder = None
    if record is not None:
        from .record import Recorder, recordable_outputs

        outputs = recordable_outputs(plan, edges)
        plan = plan.model_copy(update={"record": [f"{n}.{p}" for n, p in outputs]})
        recorder = Recorder(record, plan, outputs)
    elif edges:
        raise ObserveError("--edges chooses what --record writes: give --record FILE too")
    observer = Observer(plan, record=recorder)
    session = Session(plan, observer)
    with contextlib.ExitStack() as stack:
        if metrics is not None:
            from .prometheus import serve_metrics

            server = serve_metrics(metrics, lambda: observer.latest, plan)
            stack.callback(server.close)
            session.urls["metrics"] = server.url
            console.print(f"metrics: {server.url}")
        if dashboard is not None:
            from .dashboard import serve_dashboard

            board = serve_dashboard(dashboard, plan, _InProcess(observer))
            stack.callback(board.close)
            session.urls["dashboard"] = board.url
            console.print(f"dashboard: {board.url}")
        if console.is_terminal:
            start = StartView.current
            if start is not None:
                start.release()
            live = stack.enter_context(Live(console=console, refresh_per_second=4, transient=True))
            if start is not None:  # the start's phases show in the live display until it has figures
                start.live = live
                live.update(Text(start.last))

            def show(report: Any) -> None:
                if start is not None:
                    start.live = None
                live.update(live_view(report, title, console.width, console.height))

            session.displays.append(show)
        elif status_every_s > 0:
            session.displays.append(_StatusLog(status_every_s))
        yield session


class _InProcess:
    """The dashboard's view of a run in this process: the observer itself."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def snapshot(self, history: bool = False) -> dict[str, Any] | None:
        ok, result = self.observer.admin(protocol.SNAPSHOT, {"history": history}, time.monotonic())
        return result if ok else None

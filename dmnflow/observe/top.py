"""Looking into a running graph from another terminal: ``dmnflow top [RUN]``.

The supervisor answers ``snapshot`` on its admin socket with its latest report (live
figures included); ``top`` asks for one every interval and shows it as ``launch`` does.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live

from ..errors import ControlError
from ..runtime import protocol
from ..runtime.admin import RunInfo, ask, find_run, list_runs, starting_message, starting_runs
from ..runtime.report import EdgeReport, NodeReport, Report
from ..transport.stats import Histogram
from .view import live_view, status_line

__all__ = ["pick_run", "report_from_dict", "snapshot", "top"]


def pick_run(ref: str | None) -> RunInfo:
    """The run named (or with pid) ``ref``; without one, the only run there is.

    Raises:
        ControlError: no such run, none running, or several (name one).
    """
    if ref is not None:
        return find_run(ref)
    runs = list_runs()
    if len(runs) == 1:
        return runs[0]
    if not runs:
        if len(starting := starting_runs()) == 1:
            raise ControlError(starting_message(starting[0]))
        raise ControlError("no graph is running (start one with `dmnflow launch GRAPH`)" if not starting else
                           f"{len(starting)} graphs are starting: "
                           + ", ".join(f"{r.name} (pid {r.pid}, {r.phase})" for r in starting)
                           + "; try again in a moment")
    names = ", ".join(f"{r.name} (pid {r.pid})" for r in runs)
    raise ControlError(f"{len(runs)} graphs are running: {names}; name one")


def snapshot(run: RunInfo, history: bool = False, timeout_s: float = 5.0) -> dict[str, Any]:
    """The run's latest report (as data), its budget events and, asked for, its history.

    Raises:
        ControlError: it did not answer, or is still starting.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        answer = ask(run, protocol.SNAPSHOT, {"history": history}, timeout_s=timeout_s)
        if answer.ok:
            return answer.message
        if time.monotonic() > deadline:
            raise ControlError(f"run {run.name!r}: {answer.message}")
        time.sleep(0.2)  # still starting


def report_from_dict(data: dict[str, Any]) -> Report:
    """A ``Report`` back from ``Report.to_dict`` (what ``snapshot`` carries)."""
    nodes = {name: NodeReport(**{k: v for k, v in n.items() if k in NodeReport.__dataclass_fields__})
             for name, n in data.get("nodes", {}).items()}
    edges = [EdgeReport(**{k: v for k, v in e.items() if k in EdgeReport.__dataclass_fields__})
             for e in data.get("edges", [])]
    report = Report(data["graph"], data["status"], data.get("exit_code", 0), data.get("duration_s", 0.0),
                    data.get("startup_s", 0.0), nodes, edges, data.get("e2e", []), data.get("errors", []),
                    [], data.get("control_junk", 0), data.get("budgets", []), cut=data.get("cut"),
                    live=data.get("live"))
    report.latency = {int(k): Histogram.from_sparse(v) for k, v in (data.get("latency") or {}).items()}
    return report


def top(ref: str | None, console: Console, *, interval_s: float = 1.0, once: bool = False,
        duration_s: float | None = None) -> int:
    """Show the live view of a running graph until it ends, ``duration_s`` passes or Ctrl-C.

    Raises:
        ControlError: the run cannot be found or does not answer.
    """
    run = pick_run(ref)
    title = f"{run.name} (pid {run.pid})"
    if once:
        console.print(live_view(report_from_dict(snapshot(run)["report"]), title, console.width,
                                console.height if console.is_terminal else None))
        return 0
    end = None if duration_s is None else time.monotonic() + duration_s
    try:
        if console.is_terminal:
            with Live(console=console, refresh_per_second=4, screen=False) as live:
                _loop(run, interval_s, end, lambda r: live.update(live_view(r, title, console.width, console.height)))
        else:
            _loop(run, interval_s, end, lambda r: console.print(status_line(r), soft_wrap=True))
    except KeyboardInterrupt:
        pass
    return 0


def _loop(run: RunInfo, interval_s: float, end: float | None, show: Any) -> None:
    while end is None or time.monotonic() < end:
        try:
            data = snapshot(run)
        except ControlError:
            if not any(r.pid == run.pid for r in list_runs()):
                return  # the run ended
            raise
        show(report_from_dict(data["report"]))
        time.sleep(interval_s)

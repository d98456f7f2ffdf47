"""The supervisor's eyes: what it makes of each status tick's report, and what it answers
clients that look in (``dmnflow top``, ``echo``, ``hz``, ``dashboard``).

Every status tick (0.5 s) the supervisor builds a ``Report`` from the counters files and
heartbeats and hands it to ``Observer.update``, which adds the windowed figures
(``live``), watches the latency budgets (and has the supervisor tell the nodes when one is
missed or met again), and keeps a short history of the figures a dashboard charts. The
admin socket's ``snapshot`` answers with the latest of these reports; ``tap`` takes or
renews a client's lease on an output's tap (``runtime/taps.py``). A recording
(``launch --record``) is opened with the run directory and closed after the workers.

Nothing heavy is imported here: every supervisor (every trial of ``dmnflow tune``) imports
this module. The verbs it answers and sends are ``runtime/protocol.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..compiler.budgets import BudgetWatch
from ..errors import did_you_mean
from ..plan import Plan
from . import live as _live
from . import protocol
from .taps import tap_endpoint

__all__ = ["HISTORY_KEYS", "Observer", "TapLeases", "find_outputs"]

log = logging.getLogger("dmnflow.observe")

HISTORY_KEYS = ("t", "equity", "pnl", "drawdown", "sharpe")  # summary figures a dashboard charts
HISTORY_POINTS = 1000  # per node; when full, every other point goes (the whole run stays, coarser)
LEASE_S = 3.0  # a tap whose clients stopped renewing for this long is switched off
EVENTS_KEPT = 100

Tell = Callable[..., None]  # (node instance, verb, *args): a control message to the node's worker


class History:
    """The figures of ``HISTORY_KEYS`` of every node whose summary has them, over the run."""

    def __init__(self, points: int = HISTORY_POINTS) -> None:
        self.points = points
        self.series: dict[str, dict[str, list[Any]]] = {}
        self.step: dict[str, int] = {}
        self.seen: dict[str, int] = {}

    def add(self, report: Any, wall_s: float) -> None:
        for name, node in report.nodes.items():
            summary = node.summary
            if not summary or not any(k in summary for k in HISTORY_KEYS[1:]):
                continue
            values = [summary.get(k) for k in HISTORY_KEYS]
            series = self.series.setdefault(name, {k: [] for k in ("wall_s", *HISTORY_KEYS)})
            if series["wall_s"] and [series[k][-1] for k in HISTORY_KEYS] == values:
                continue  # no new heartbeat since the last tick
            self.seen[name] = self.seen.get(name, 0) + 1
            step = self.step.get(name, 1)
            if (self.seen[name] - 1) % step:
                continue
            series["wall_s"].append(round(wall_s, 3))
            for k, v in zip(HISTORY_KEYS, values, strict=True):
                series[k].append(v if isinstance(v, int | float) else None)
            if len(series["wall_s"]) >= self.points:
                for k in series:
                    series[k] = series[k][::2]
                self.step[name] = step * 2

    def to_dict(self) -> dict[str, dict[str, list[Any]]]:
        # (read by the dashboard's thread while the supervisor adds: copy the keys first)
        return {name: {k: list(v) for k, v in list(s.items())} for name, s in list(self.series.items())}


def find_outputs(plan: Plan, ref: str) -> list[tuple[str, str]]:
    """The output instances ``node.port`` names: that instance, every replica of a replicated
    node, and, when no node has that name, the one node of an include with it (``meta.positions``
    for ``dmn/meta.positions``)."""
    node, _, port = ref.strip().rpartition(".")
    found = [(n.name, port) for n in plan.nodes if node in (n.name, n.spec_name) and
             any(o.port == port for o in n.outputs)]
    if not found and "/" not in node:
        scoped = {n.spec_name for n in plan.nodes if n.spec_name != node and n.spec_name.rsplit("/", 1)[-1] == node}
        if len(scoped) == 1:
            return find_outputs(plan, f"{scoped.pop()}.{port}")
    return found


def no_output_hint(plan: Plan, ref: str) -> str:
    """``did you mean 'market.market_data'? outputs: ...`` for a ``node.port`` no output has."""
    known = sorted({f"{n.spec_name}.{o.port}" for n in plan.nodes for o in n.outputs})
    near = did_you_mean(ref.strip(), known)
    return (f"{near} " if near else "") + f"outputs: {', '.join(known)}"


class TapLeases:
    """Which clients listen to which outputs, and what the tap of each must do for them."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.ids = plan.output_ids()
        self.leases: dict[tuple[str, str], dict[str, tuple[float, int, str]]] = {}
        self.applied: dict[tuple[str, str], dict[str, Any]] = {}

    def outputs(self, ref: str) -> list[tuple[str, str]]:
        """The output instances ``ref`` (``node.port``; a replicated node's every replica) names."""
        return find_outputs(self.plan, ref)

    def request(self, args: dict[str, Any], run_dir: str, tell: Tell, now: float) -> tuple[bool, Any]:
        ref, client = args.get("output"), args.get("client")
        if not isinstance(ref, str) or not isinstance(client, str):
            return False, "a tap request names an output ('node.port') and a client"
        found = self.outputs(ref)
        if not found:
            return False, f"the run has no output {ref!r}; {no_output_hint(self.plan, ref)}"
        rate = args.get("max_rate", 0)
        rate = int(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) and rate >= 0 else 0
        topic = args.get("topic") if isinstance(args.get("topic"), str) else ""
        for key in found:
            held = self.leases.setdefault(key, {})
            if args.get("on", True):
                held[client] = (now + LEASE_S, rate, topic)
            else:
                held.pop(client, None)
            self.apply(key, tell, force=True)
        return True, {"outputs": [{"node": n, "port": p, "id": self.ids[(n, p)],
                                   "endpoint": tap_endpoint(run_dir, self.ids[(n, p)])} for n, p in found]}

    def expire(self, now: float, tell: Tell) -> None:
        for key, held in self.leases.items():
            gone = [c for c, (until, _, _) in held.items() if until < now]
            for client in gone:
                del held[client]
            if gone:
                self.apply(key, tell)

    def apply(self, key: tuple[str, str], tell: Tell, force: bool = False) -> None:
        """Tell the worker what its tap must do now (sent again on each renewal: a restarted
        worker starts without taps)."""
        held = self.leases.get(key, {})
        if held:
            rates = [r for _, r, _ in held.values()]
            topics = {t for _, _, t in held.values()}
            settings: dict[str, Any] = {"max_rate": 0 if 0 in rates else max(rates),
                                        "topic": topics.pop() if len(topics) == 1 else ""}
        else:
            settings = {}
        if force or settings != self.applied.get(key, {}):
            if settings or key in self.applied:
                tell(key[0], protocol.TAP, key[0], key[1], settings)
            if settings:
                self.applied[key] = settings
            else:
                self.applied.pop(key, None)


class Observer:
    """What the supervisor does with each status tick's report, and what clients may ask."""

    def __init__(self, plan: Plan, *, record: Any = None) -> None:
        self.plan = plan
        self.window = _live.LiveWindow()
        self.budgets = BudgetWatch(plan)
        self.leases = TapLeases(plan)
        self.history = History()
        self.events: list[dict[str, Any]] = []  # budget events, newest last
        self.latest: Any = None
        self.recorder = record  # observe.record.Recorder, opened with the run directory
        self.run_dir = ""
        self.remote = False
        self.tell: Tell = lambda *_: None
        self.broadcast: Callable[..., None] = lambda *_: None
        self.started = time.time()

    def open(self, run_dir: str, tell: Tell, broadcast: Callable[..., None], remote: bool = False) -> None:
        """The run directory exists, the workers do not yet: a recording connects now.
        ``remote``: the workers run on other hosts (``--backend ray``), where no tap can be read."""
        self.run_dir, self.tell, self.broadcast, self.remote = run_dir, tell, broadcast, remote
        if self.recorder is not None:
            self.recorder.open(run_dir)

    def update(self, report: Any, now: float) -> None:
        """A running report: add the windowed figures and budgets; tell nodes of budget events."""
        report.live = self.window.update(report, now)
        if self.budgets:
            for event in self.budgets.update(report, now):
                self.events = [*self.events[-EVENTS_KEPT + 1:], event]
                with contextlib.suppress(Exception):
                    self.broadcast(protocol.BUDGET, event)
            report.budgets = self.budgets.table()
        self.history.add(report, time.time() - self.started)
        self.latest = report

    def poll(self, now: float) -> None:
        """Between ticks: taps whose clients went away are switched off."""
        self.leases.expire(now, self.tell)

    def admin(self, verb: str, args: dict[str, Any], now: float) -> tuple[bool, Any]:
        """An admin request (``protocol.SNAPSHOT``, ``protocol.TAP``): (ok, result)."""
        if verb == protocol.TAP:
            if self.remote:
                return False, ("taps are ipc sockets in the workers' run directories, on the Ray nodes: echo, hz "
                               "and bw need the local backend (top, --metrics and the dashboard work on both)")
            return self.leases.request(args, self.run_dir, self.tell, now)
        if self.latest is None:
            return False, "the graph is still starting; try again in a moment"
        out: dict[str, Any] = {"report": self.latest.to_dict(), "events": list(self.events)}
        if args.get("history"):
            out["history"] = self.history.to_dict()
        return True, out

    def finish(self, report: Any) -> None:
        """The final report: budgets over the whole run, the recording closed."""
        if self.budgets:
            self.budgets.update(report, float("inf"))
            report.budgets = self.budgets.table()
        by = {}
        for name, node in report.nodes.items():
            if node.progress:
                p = dict(node.progress)
                if p.get("total"):
                    p["fraction"] = min(1.0, p["done"] / p["total"])
                by[name] = p
        if by:
            report.live = {"progress": _live.overall_progress(by)}
        self.history.add(report, time.time() - self.started)
        self.latest = report

    def close(self) -> None:
        """After the workers have gone: the recording gets what is left and is finished."""
        if self.recorder is not None:
            try:
                self.recorder.close()
            except Exception as exc:  # a recording that cannot be finished is reported, not raised over the run
                log.error("the recording %s could not be finished: %s", getattr(self.recorder, "path", ""), exc)

"""Windowed figures of a running graph: what changed over the last few seconds.

A ``Report`` holds totals since the start (counts from the counters files, cumulative
latency histograms and cpu time from heartbeats). ``LiveWindow`` keeps the reports of the
last few seconds and turns them into rates: per edge msg/s, p50/p99 latency of the
messages of the window, messages in flight (sent, not yet received: the queue depth) and
drops; per node msg/s in and out and cpu %; per finite source its progress, and the ETA
of the whole graph from the rate its slowest source advances at.

Heartbeats come once a second, so latencies and cpu move in steps of a second; counts
are read from the counters files at every status tick.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..transport.stats import Histogram

__all__ = ["WINDOW_S", "LiveWindow", "overall_progress"]

WINDOW_S = 3.0


class _Sample:
    __slots__ = ("cpu", "done", "edges", "hist", "nodes", "t")

    def __init__(self, report: Any, now: float) -> None:
        self.t = now
        self.edges = {e.id: (e.sent, e.received, e.dropped + e.gaps + e.decode_errors) for e in report.edges}
        self.nodes = {n: (r.messages_in, r.messages_out) for n, r in report.nodes.items()}
        self.cpu = {n: r.cpu_s for n, r in report.nodes.items()}
        self.hist = {e: list(h.counts) for e, h in report.latency.items() if h.n}
        self.done = {n: r.progress["done"] for n, r in report.nodes.items() if r.progress}


class LiveWindow:
    """Feed it every status tick's report; ``update`` returns the ``live`` figures of it."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[_Sample] = deque()

    def update(self, report: Any, now: float) -> dict[str, Any]:
        sample = _Sample(report, now)
        self.samples.append(sample)
        while len(self.samples) > 2 and now - self.samples[1].t >= self.window_s:
            self.samples.popleft()
        old = self.samples[0]
        dt = now - old.t
        edges: dict[str, dict[str, Any]] = {}
        for e in report.edges:
            sent, received, drops = sample.edges[e.id]
            row: dict[str, Any] = {"queued": max(0, sent - received), "drops": drops, "msg_s": None,
                                   "p50_us": None, "p99_us": None}
            if dt > 0 and e.id in old.edges:
                row["msg_s"] = round((received - old.edges[e.id][1]) / dt, 1)
                row["drops_s"] = round((drops - old.edges[e.id][2]) / dt, 1)
            now_hist, then = sample.hist.get(e.id), old.hist.get(e.id)
            if now_hist is not None:
                window = Histogram(now_hist if then is None or then is now_hist else
                                   [max(0, a - b) for a, b in zip(now_hist, then, strict=True)])
                if window.n == 0 and len(self.samples) > 1:  # nothing arrived lately: the latest known
                    window = Histogram(now_hist)
                p50, p99 = window.quantile(0.5), window.quantile(0.99)
                row["p50_us"] = None if p50 is None else round(p50 / 1e3, 1)
                row["p99_us"] = None if p99 is None else round(p99 / 1e3, 1)
            edges[str(e.id)] = row
        nodes: dict[str, dict[str, Any]] = {}
        for name in report.nodes:
            m_in, m_out = sample.nodes[name]
            row = {"in_s": None, "out_s": None, "cpu_pct": None}
            if dt > 0 and name in old.nodes:
                row["in_s"] = round((m_in - old.nodes[name][0]) / dt, 1)
                row["out_s"] = round((m_out - old.nodes[name][1]) / dt, 1)
                row["cpu_pct"] = round(max(0.0, sample.cpu[name] - old.cpu[name]) / dt * 100, 1)
            nodes[name] = row
        progress = self._progress(report, sample, old, dt)
        return {"window_s": round(dt, 2), "edges": edges, "nodes": nodes, "progress": progress}

    def _progress(self, report: Any, sample: _Sample, old: _Sample, dt: float) -> dict[str, Any] | None:
        by: dict[str, dict[str, Any]] = {}
        for name, node in report.nodes.items():
            p = node.progress
            if not p:
                continue
            done, total = p["done"], p.get("total")
            row: dict[str, Any] = {"done": done, "total": total, "unit": p.get("unit", ""), "rate": None,
                                   "eta_s": None}
            if total:
                row["fraction"] = min(1.0, done / total)
            if dt > 0 and name in old.done:
                rate = (done - old.done[name]) / dt
                row["rate"] = round(rate, 2)
                if total and rate > 0:
                    row["eta_s"] = round(max(0.0, total - done) / rate, 1)
            by[name] = row
        return overall_progress(by)


def overall_progress(by: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The graph's progress: its slowest finite source's (``by``: per source, as ``LiveWindow`` makes them)."""
    finite = {n: r for n, r in by.items() if r.get("fraction") is not None}
    if not finite:
        return {"by": by} if by else None
    name = min(finite, key=lambda n: finite[n]["fraction"])
    slow = finite[name]
    return {"fraction": slow["fraction"], "done": slow["done"], "total": slow["total"], "unit": slow["unit"],
            "eta_s": slow.get("eta_s"), "source": name, "by": by}

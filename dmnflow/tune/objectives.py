"""Objectives: report figures by name, and reading them from a run's report.

A figure is named ``NODE.FIGURE`` (a key of that node's ``summary()`` in the report, e.g.
``performance.sharpe``; NODE is the node's name, or its last part when that is unique, so
``performance`` finds ``dmn/performance``), ``report.FIGURE`` (the run itself: its duration,
start-up, throughput, losses, end-to-end latency) or ``train.FIGURE`` (what a trial's trainer
reported last). A figure that is missing or not a finite number fails the trial: an
optimiser must never rank a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import Location

__all__ = ["REPORT_FIGURES", "Objective", "match_node", "report_figures"]

REPORT_FIGURES = {
    "duration_s": "wall time of the run, start-up included",
    "startup_s": "from launch until every worker was ready",
    "run_s": "duration_s minus startup_s: the run itself",
    "messages": "messages received over every edge",
    "throughput": "messages per second of the run itself",
    "lost": "messages lost over every edge (0 for a lossless run)",
    "e2e_p50_us": "end-to-end latency p50 of the slowest source-to-sink path, microseconds",
    "e2e_p99_us": "end-to-end latency p99 of the slowest source-to-sink path, microseconds",
    "cpu_s": "CPU seconds of every node together",
}


@dataclass(frozen=True)
class Objective:
    """A figure to optimise and its direction."""

    name: str  # as written: performance.sharpe
    direction: Literal["maximize", "minimize"]
    node: str = ""  # the report's node name it reads (dmn/performance); "report" or "train" for those
    figure: str = ""
    loc: Location | None = None

    @property
    def scope(self) -> str:
        return self.node if self.node in ("report", "train") else "node"


def match_node(name: str, nodes: Iterable[str]) -> list[str]:
    """The nodes ``name`` can mean: itself, or those whose last ``/`` part it is."""
    names = list(nodes)
    if name in names:
        return [name]
    return [n for n in names if n.rsplit("/", 1)[-1] == name]


def report_figures(report: Any) -> dict[str, float]:
    """The ``report.*`` figures of a run's Report."""
    run_s = max(report.duration_s - report.startup_s, 1e-9)
    messages = sum(e.received for e in report.edges)
    worst = max(report.e2e, key=lambda r: r["p50_us"], default=None)
    return {"duration_s": report.duration_s, "startup_s": report.startup_s, "run_s": run_s,
            "messages": float(messages), "throughput": messages / run_s,
            "lost": float(sum(e.lost for e in report.edges)),
            "e2e_p50_us": math.nan if worst is None else float(worst["p50_us"]),
            "e2e_p99_us": math.nan if worst is None else float(worst["p99_us"]),
            "cpu_s": sum(n.cpu_s for n in report.nodes.values())}


def value_of(objective: Objective, figures: Mapping[str, Any]) -> tuple[float | None, str]:
    """The objective's value from ``figures`` (``node.figure`` -> value), or None and why not."""
    key = f"{objective.node}.{objective.figure}"
    if key not in figures:
        have = sorted(k.split(".", 1)[1] for k in figures if k.startswith(objective.node + "."))
        where = f"node {objective.node!r}" if objective.scope == "node" else objective.node
        return None, (f"{where} reported no figure {objective.figure!r}" +
                      (f" (it has {', '.join(have[:12])})" if have else " (it reported nothing)"))
    value = figures[key]
    if value is None or isinstance(value, float) and math.isnan(value):
        return None, f"{objective.name} is undefined (NaN): nothing to rank the trial by"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None, f"{objective.name} is {value!r}, not a finite number"
    return float(value), ""

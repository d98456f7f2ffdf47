"""What the benchmarks share: running a generated graph, reading the nodes' result files,
watching the machine's noise, and printing tables."""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from dmnflow import compile_graph
from dmnflow.runtime import Report, launch

ROOT = Path(__file__).resolve().parent.parent


def enter_repo() -> None:
    """Graphs say ``uses: bench.nodes:...``: the compiler and workers import from the cwd."""
    os.chdir(ROOT)


def _yaml(value: Any) -> str:
    return json.dumps(value)  # JSON is YAML; flow style keeps generated graphs short


def graph_yaml(name: str, nodes: dict[str, dict[str, Any]], defaults: dict[str, Any],
               top: dict[str, Any] | None = None) -> str:
    lines = [f"graph: {name}", f"defaults: {_yaml(defaults)}", *(f"{k}: {_yaml(v)}" for k, v in (top or {}).items()),
             "nodes:"]
    for node, spec in nodes.items():
        lines.append(f"  {node}:")
        lines.extend(f"    {key}: {_yaml(value)}" for key, value in spec.items())
    return "\n".join(lines) + "\n"


class Run:
    """One launch of a generated graph: the report, the result files, the wall time."""

    def __init__(self, report: Report, results: dict[str, dict[str, Any]], launched_ns: int, wall_s: float) -> None:
        self.report = report
        self.results = results
        self.launched_ns = launched_ns
        self.wall_s = wall_s

    def edge(self, src: str, dst: str) -> Any:
        return next(e for e in self.report.edges if e.src.startswith(src + ".") and e.dst.startswith(dst + "."))

    def e2e(self, source: str, sink: str) -> dict[str, Any]:
        return next(p for p in self.report.e2e if p["source"] == source and p["sink"] == sink)


def run_graph(name: str, nodes: dict[str, dict[str, Any]], defaults: dict[str, Any], *,
              timeout_s: float = 120.0, top: dict[str, Any] | None = None,
              place: dict[str, dict[str, Any]] | None = None, backend: str = "local",
              address: str | None = None) -> Run:
    """Write the graph to a temporary file, compile it, launch it until it ends, collect results.

    Every node with a ``result`` param of ``"auto"`` gets a file in the temporary directory.
    ``place``: keys added to nodes (``{"ping": {"resources": {"a": 1}}}``) for ``backend="ray"``
    at ``address`` (bench/ray_backend.py).
    """
    for node, keys in (place or {}).items():
        nodes[node] = {**nodes[node], **keys}
    with tempfile.TemporaryDirectory(prefix="dmnflow-bench-") as tmp:
        for node, spec in nodes.items():
            params = spec.get("params", {})
            if params.get("result") == "auto":
                params["result"] = f"{tmp}/{node}.json"
        path = Path(tmp, f"{name}.yaml")
        path.write_text(graph_yaml(name, nodes, defaults, top), encoding="utf-8")
        plan = compile_graph(path)
        launched_ns = time.time_ns()
        start = time.perf_counter()
        report = launch(plan, duration_s=timeout_s, backend=backend, address=address)
        wall_s = time.perf_counter() - start
        results = {}
        for node in nodes:
            f = Path(tmp, f"{node}.json")
            if f.exists():
                results[node] = json.loads(f.read_text(encoding="utf-8"))
    if report.status != "finished" or report.errors:
        raise RuntimeError(f"graph {name}: {report.status}, errors: {report.errors}")
    return Run(report, results, launched_ns, wall_s)


class Noise:
    """The machine's noise over an interval: steal and other processes' CPU, load average."""

    def __init__(self) -> None:
        self.start = self._read()
        self.ours = self._ours()
        self.t0 = time.monotonic()

    @staticmethod
    def _ours() -> float:
        """CPU seconds of this process and its reaped children (workers, raw baselines)."""
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    @staticmethod
    def _read() -> list[int]:
        with open("/proc/stat", encoding="ascii") as f:
            return [int(x) for x in f.readline().split()[1:]]

    def summary(self) -> dict[str, Any]:
        end = self._read()
        delta = [b - a for a, b in zip(self.start, end, strict=True)]
        total = sum(delta[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is in user)
        busy = total - delta[3] - delta[4] - delta[7]
        ours = (self._ours() - self.ours) * os.sysconf("SC_CLK_TCK")
        return {"wall_s": round(time.monotonic() - self.t0, 1), "cpus": os.cpu_count(),
                "busy_pct": round(100 * busy / total, 1),
                "others_pct": round(max(0.0, 100 * (busy - ours) / total), 1),
                "steal_pct": round(100 * delta[7] / total, 2), "loadavg": os.getloadavg()}


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def fmt(x: Any, spec: str = ".1f") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    return format(x, spec)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (readable in a terminal too)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(out)


def human_size(n: int) -> str:
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"

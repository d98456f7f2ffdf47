"""Tick-to-trade of the live DMN trading graph, and where its time goes, edge by edge.

    python bench/tick_to_trade.py                              # 12 symbols, 40 s, once
    python bench/tick_to_trade.py --symbols 12,96 --repeat 3   # both sizes, interleaved
    python bench/tick_to_trade.py --profile latency --set vars.rate=480 --json out/t2t.json

It launches ``graphs/dmn_trading.yaml`` (the live synthetic market, paper broker) as
``dmnflow launch`` does, for ``--seconds``, through the public API (``compile_graph`` +
``launch``), and prints per run:

- **tick-to-trade** p50/p99: the ``performance`` node's own figure (``tick_to_trade_p50_us``,
  the bar that completed a day's cross-section entering the graph -> its Fills arriving at
  ``performance``), what ``dmnflow launch`` reports; and the same path from the run's
  latency histograms over the **steady state** only (from the first status after the graph
  has caught up with its market: the warm-up history is published at once and queues);
- **days/s**: days the market published and the graph traded per second of the steady state,
  against the rate the market is paced at (``vars.rate`` bars a second);
- **the critical path**, ``market -> features -> lstm/transformer -> meta -> risk ->
  portfolio -> execution -> performance``: per edge its latency (emit -> the consumer's
  socket read: queues, coalescing, waking the consumer), and per node the time from the
  bar's emit to the end of that node's handler (a path budget ``from: market`` on each node
  makes the runtime measure it; at a node with several inputs it counts each of them, so
  the single-input nodes, lstm, transformer, portfolio and execution, read cleanest);
- cpu seconds per node, and the machine's noise (load average, steal, other processes).

Nothing is asserted: this is a benchmark. Medians over ``--repeat`` runs with min-max.
Every process it starts is a worker of ``launch()``, which reaps them when the run ends.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Noise, fmt, table  # noqa: E402

GRAPH = ROOT / "graphs" / "dmn_trading.yaml"
# the critical path, in order; each node gets a path budget from the market so its e2e is measured
PATH = ["features", "lstm", "transformer", "meta", "risk", "portfolio", "execution", "performance"]
# the edges on it (src node.port prefix -> dst node.port prefix; replicas merge)
EDGES = [("market.market_data", "features.market_data"), ("features.windows", "lstm.x"),
         ("features.long_windows", "transformer.x"), ("features.signals", "meta.signals"),
         ("lstm.y", "meta.lstm"), ("transformer.y", "meta.transformer"), ("meta.positions", "risk.positions"),
         ("features.signals", "risk.signals"), ("risk.targets", "portfolio.targets"),
         ("portfolio.orders", "execution.orders"), ("execution.fills", "performance.fills"),
         ("execution.account", "performance.account")]


def _base(name: str) -> str:
    """``lstm[1].y`` -> ``lstm.y``; ``lstm[0]`` -> ``lstm``."""
    node, _, port = name.partition(".")
    node = node.split("[", 1)[0]
    return f"{node}.{port}" if port else node


class Snapshots:
    """What ``on_status`` sees: cumulative histograms per edge and per node, and the days."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.steady: dict[str, Any] | None = None  # the snapshot the steady state starts at
        self.last: dict[str, Any] | None = None
        self.series: list[tuple[Any, ...]] = []
        self.t0 = 0.0

    def __call__(self, report: Any) -> None:
        snap = self.take(report)
        if self.last is not None:  # the windowed market -> performance latency, for --series
            h = _diff(snap["nodes"].get("performance"), self.last["nodes"].get("performance")) \
                if snap["nodes"].get("performance") is not None else None
            self.series.append((round(snap["t"] - self.t0, 1), snap["market_days"], snap["traded_days"],
                                h.n if h is not None else 0, _q(h, 0.5), _q(h, 0.99), snap["node_p99"]))
        else:
            self.t0 = snap["t"]
        self.last = snap
        if self.steady is None and snap["market_days"] > self.history and snap["traded_days"] >= 0 \
                and snap["market_days"] - snap["traded_days"] <= 2:
            self.steady = snap

    @staticmethod
    def take(report: Any) -> dict[str, Any]:
        from dmnflow.transport.stats import Histogram

        def copy(h: Histogram) -> Histogram:
            return Histogram(list(h.counts))

        edges: dict[str, Histogram] = {}
        names = {e.id: (_base(e.src), _base(e.dst)) for e in report.edges}
        for eid, h in report.latency.items():
            key = "{} -> {}".format(*names[eid])
            edges.setdefault(key, Histogram()).merge(copy(h))
        nodes: dict[str, Histogram] = {}
        for (source, sink), h in report.e2e_latency.items():
            if _base(source) == "market":
                nodes.setdefault(_base(sink), Histogram()).merge(copy(h))
        market = report.nodes.get("market")
        perf = report.nodes.get("performance")
        market_days = int(((market.progress or {}).get("done")) or 0) if market else 0
        traded = int(((perf.summary or {}).get("accounts")) or -1) if perf else -1
        node_p99 = (perf.summary or {}).get("tick_to_trade_p99_us") if perf else None
        return {"t": time.monotonic(), "edges": edges, "nodes": nodes, "market_days": market_days,
                "traded_days": traded, "node_p99": node_p99, "cpu": {n: v.cpu_s for n, v in report.nodes.items()}}


def _diff(after: Any, before: Any | None) -> Any:
    from dmnflow.transport.stats import Histogram

    if before is None:
        return after
    return Histogram([a - b for a, b in zip(after.counts, before.counts, strict=True)])


def _q(h: Any, q: float) -> float | None:
    v = h.quantile(q) if h is not None else None
    return None if v is None else v / 1e3


def run_once(symbols: int, seconds: float, sets: list[str], profile: str | None) -> dict[str, Any]:
    import dmnflow

    overrides = [f"vars.symbols={symbols}", *sets]
    overrides += [f"nodes.{n}.budget={{from: market, p99: 600s}}" for n in PATH]
    plan = dmnflow.compile_graph(GRAPH, overrides, profile=profile)
    history = int(next(n for n in plan.nodes if n.name == "market").params.get("history", 0))
    rate = float(next(n for n in plan.nodes if n.name == "market").params.get("rate", 0))
    snaps = Snapshots(history)
    noise = Noise()
    report = dmnflow.launch(plan, duration_s=seconds, on_status=snaps)
    machine = noise.summary()
    final = Snapshots.take(report)
    steady = snaps.steady
    perf = report.nodes["performance"].summary or {}
    market = report.nodes["market"]
    out: dict[str, Any] = {
        "symbols": symbols, "seconds": seconds, "sets": sets, "profile": profile, "status": report.status,
        "rate": rate, "history": history, "noise": machine,
        "days": int((market.progress or {}).get("done") or 0),
        "traded_days": perf.get("accounts"),
        "t2t_p50_us": perf.get("tick_to_trade_p50_us"), "t2t_p99_us": perf.get("tick_to_trade_p99_us"),
        "t2t_samples": perf.get("latency_samples"),
        "lost": sum(e.lost for e in report.edges),
        "join_incomplete": {n: v.join_incomplete for n, v in report.nodes.items() if v.join_incomplete},
        "cpu": {n: round(v.cpu_s, 2) for n, v in report.nodes.items()},
        "steady": steady is not None,
        "steady_from_s": round(steady["t"] - snaps.t0, 1) if steady is not None else None,
        "series": snaps.series,
    }
    last = snaps.last if snaps.last is not None else final
    if steady is not None:
        span = max(last["t"] - steady["t"], 1e-9)
        out["steady_s"] = round(span, 1)
        out["market_days_per_s"] = (last["market_days"] - steady["market_days"]) / span
        out["traded_days_per_s"] = (last["traded_days"] - steady["traded_days"]) / span
        out["paced_days_per_s"] = rate / symbols if rate else None
    base = steady or {"edges": {}, "nodes": {}}
    out["edges"] = {}
    for key, h in final["edges"].items():
        d = _diff(h, base["edges"].get(key))
        out["edges"][key] = {"n": d.n, "p50_us": _q(d, 0.5), "p99_us": _q(d, 0.99)}
    out["nodes"] = {}
    for key, h in final["nodes"].items():
        d = _diff(h, base["nodes"].get(key))
        out["nodes"][key] = {"n": d.n, "p50_us": _q(d, 0.5), "p99_us": _q(d, 0.99)}
    return out


def _med(xs: list[Any]) -> str:
    vals = [x for x in xs if x is not None]
    if not vals:
        return "-"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m, ",.0f") if m >= 100 else fmt(m, ".2f")
    spec = ",.0f" if m >= 100 else ".2f"
    return f"{format(m, spec)} ({format(min(vals), spec)}-{format(max(vals), spec)})"


def print_summary(symbols: int, runs: list[dict[str, Any]]) -> None:
    print(f"\n## {symbols} symbols: {len(runs)} run(s) of {runs[0]['seconds']:.0f} s"
          f"{' profile ' + runs[0]['profile'] if runs[0]['profile'] else ''}"
          f"{' ' + ' '.join(runs[0]['sets']) if runs[0]['sets'] else ''}")
    rows = [
        ["tick-to-trade p50 us (performance node)", _med([r["t2t_p50_us"] for r in runs])],
        ["tick-to-trade p99 us (performance node)", _med([r["t2t_p99_us"] for r in runs])],
        ["  steady state: market -> performance p50 us", _med([r["nodes"].get("performance", {}).get("p50_us")
                                                              for r in runs])],
        ["  steady state: market -> performance p99 us", _med([r["nodes"].get("performance", {}).get("p99_us")
                                                              for r in runs])],
        ["days published (whole run)", _med([r["days"] for r in runs])],
        ["days traded (whole run)", _med([r["traded_days"] for r in runs])],
        ["steady state: market days/s", _med([r.get("market_days_per_s") for r in runs])],
        ["steady state: traded days/s", _med([r.get("traded_days_per_s") for r in runs])],
        ["paced at days/s (rate / symbols)", _med([r.get("paced_days_per_s") for r in runs])],
        ["steady state reached (runs)", str(sum(r["steady"] for r in runs))],
        ["lost messages", _med([r["lost"] for r in runs])],
    ]
    print(table(["figure", "median (min-max)"], rows))
    print("\ncritical path, steady state: per edge emit -> socket read; per node bar emit -> end of its handler")
    erows = []
    for src, dst in EDGES:
        key = f"{src} -> {dst}"
        vals = [r["edges"].get(key) for r in runs]
        erows.append([key, _med([v and v["p50_us"] for v in vals]), _med([v and v["p99_us"] for v in vals]),
                      _med([v and v["n"] for v in vals])])
    print(table(["edge", "p50 us", "p99 us", "messages"], erows))
    nrows = []
    for node in PATH:
        vals = [r["nodes"].get(node) for r in runs]
        nrows.append([node, _med([v and v["p50_us"] for v in vals]), _med([v and v["p99_us"] for v in vals]),
                      _med([v and v["n"] for v in vals])])
    print(table(["node (end of handler)", "p50 us from bar", "p99 us from bar", "messages"], nrows))
    print("(features: every bar, not only a day's last; meta, risk, performance: every input message, "
          "so their figures mix the early inputs with the one that completes the day)")
    cpu: dict[str, list[float]] = {}
    for r in runs:
        for n, v in r["cpu"].items():
            cpu.setdefault(n, []).append(v)
    print("\ncpu s per node: " + ", ".join(f"{n} {statistics.median(v):.1f}"
                                          for n, v in sorted(cpu.items(), key=lambda kv: -statistics.median(kv[1]))))
    for r in runs:
        nz = r["noise"]
        print(f"  run: status {r['status']}, busy {nz['busy_pct']}%, others {nz['others_pct']}%, "
              f"steal {nz['steal_pct']}%, loadavg {' '.join(f'{x:.2f}' for x in nz['loadavg'])}"
              f"{', joins given up ' + str(r['join_incomplete']) if r['join_incomplete'] else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--symbols", default="12", help="comma-separated symbol counts (vars.symbols)")
    parser.add_argument("--seconds", type=float, default=40.0, help="how long each run lasts")
    parser.add_argument("--repeat", type=int, default=1, help="runs per symbol count, interleaved")
    parser.add_argument("--profile", default=None, help="a profile of the graph (e.g. latency)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed to the graph, as --set")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--series", action="store_true",
                        help="also print, every status (0.5 s), the days and the market -> performance latency")
    args = parser.parse_args()
    os.chdir(ROOT)
    counts = [int(s) for s in args.symbols.split(",") if s]
    print(f"{GRAPH.relative_to(ROOT)}: {args.seconds:.0f} s per run, symbols {counts}, repeat {args.repeat}; "
          f"machine {os.cpu_count()} cpus, python {sys.version.split()[0]}, loadavg "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for _ in range(args.repeat):
        for n in counts:
            r = run_once(n, args.seconds, args.sets, args.profile)
            results[n].append(r)
            print(f"  {n} symbols: t2t p50 {fmt(r['t2t_p50_us'], ',.0f')} us, p99 {fmt(r['t2t_p99_us'], ',.0f')} us;"
                  f" steady market->performance p50 {fmt(r['nodes'].get('performance', {}).get('p50_us'), ',.0f')}"
                  f" us; {r['days']} days", flush=True)
    for n in counts:
        print_summary(n, results[n])
        if args.series:
            for r in results[n]:
                print(f"\n{n} symbols, steady from {r['steady_from_s']} s: t s, market days, traded days, "
                      "messages at performance, p50 us, p99 us, the performance node's p99 so far")
                for row in r["series"]:
                    print("  " + "  ".join(fmt(v, ",.0f") if isinstance(v, float) and v >= 100 else str(v)
                                           for v in row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

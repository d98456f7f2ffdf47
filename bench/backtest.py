"""How long a whole DMN backtest takes: 84 markets x 21 years of daily bars through every node
(features, LSTM x2, Transformer, meta-learner, risk, portfolio, execution, performance,
alerts, health), as tuning would run it many times.

    python bench/backtest.py                 # the trendfollowing futures, 1995-2015 (+ warm-up)
    python bench/backtest.py --synthetic     # 84 synthetic markets x 21 years instead
    python bench/backtest.py --repeats 3

It launches graphs/dmn_futures.yaml (or graphs/dmn_backtest.yaml with 84 symbols) as
`dmnflow launch` does, and prints the wall time, the days per second, where the CPU went
per node, and whether anything was lost. Run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(graph: Path, sets: list[str]) -> dict[str, object]:
    import dmnflow
    from dmnflow.runtime import launch

    t0 = time.perf_counter()
    plan = dmnflow.compile_graph(graph, sets)
    compiled = time.perf_counter() - t0
    report = launch(plan)
    if report.status != "finished":
        raise SystemExit(f"the backtest did not finish: {report.status} {report.errors}")
    days = next(n.messages_out for name, n in report.nodes.items() if name.endswith("market"))
    perf = next(n.summary for name, n in report.nodes.items() if name.endswith("performance"))
    return {"wall_s": report.duration_s, "startup_s": report.startup_s, "compile_s": compiled, "days": days,
            "lost": sum(e.lost for e in report.edges), "cpu": {n: v.cpu_s for n, v in report.nodes.items()},
            "sharpe": (perf or {}).get("sharpe"), "messages": sum(e.received for e in report.edges)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="84 synthetic markets instead of the futures")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed to the graph, as --set")
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.synthetic:
        graph = ROOT / "graphs" / "dmn_backtest.yaml"
        sets = ["vars.symbols=84", "vars.days=5292", *args.sets]  # 21 years of business days
    else:
        try:
            import importlib.metadata

            from nodes.market.trendfollowing import load_trendfollowing  # noqa: F401

            importlib.metadata.distribution("trendfollowing")
        except Exception:
            raise SystemExit("the futures need `pip install --no-deps trendfollowing`; or pass --synthetic") from None
        graph = ROOT / "graphs" / "dmn_futures.yaml"
        sets = list(args.sets)
    print(f"{graph.relative_to(ROOT)} {' '.join('--set ' + s for s in sets)}")
    print(f"machine: {os.cpu_count()} cpus, python {sys.version.split()[0]}")
    results = [run(graph, sets) for _ in range(args.repeats)]
    walls = [float(r["wall_s"]) for r in results]  # type: ignore[arg-type]
    r = results[-1]
    days = int(r["days"])  # type: ignore[arg-type]
    wall = statistics.median(walls)
    print(f"\n{days} days, {r['messages']} messages between nodes, lost {r['lost']}")
    print(f"wall {wall:.1f}s (runs: {', '.join(f'{w:.1f}' for w in walls)}), of which start-up "
          f"{r['startup_s']:.1f}s; compile {r['compile_s']:.1f}s")
    print(f"{days / wall:,.0f} days/s through the whole graph; strategy Sharpe {r['sharpe']}")
    print("\ncpu seconds per node (the 2 cores' budget is 2 x wall):")
    cpu = r["cpu"]
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):  # type: ignore[union-attr]
        print(f"  {name:<20} {seconds:6.1f}")
    print(f"  {'total':<20} {sum(cpu.values()):6.1f}")  # type: ignore[union-attr]


if __name__ == "__main__":
    main()

"""The strategies through the whole graph, next to the vectorised evaluation: ``python -m nodes.models.compare``.

Runs ``graphs/dmn_futures.yaml`` (84 futures markets) once per strategy (the DMN models
weighted by the meta-learner, long-only, TSMOM, MACD), period and delay between signal and
trade, each a real ``dmnflow launch`` of every node (features, models, risk, portfolio,
paper broker, performance), and scores the baselines on the same closes with the
vectorised evaluation (``nodes.models.evaluate``, what the walk-forward uses). In the
paper's setting (no rebalance threshold, no position limits, no kill switch, no costs: the
graph's defaults) the two agree to rounding; the table goes into ``docs/dmn/backtest.md``
between the ``graph:begin``/``graph:end`` markers.

The DMN row is the *shipped* LSTM and Transformer (trained on the synthetic market, so
out of sample on these markets) weighted by the meta-learner, which the vectorised
evaluation does not model: it has a graph figure only.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "dmn_futures.yaml"
STRATEGIES = {"long": "Long-only", "tsmom": "TSMOM", "macd": "MACD", "meta": "DMN (shipped LSTM + Transformer)"}
# period: (replay start, replay end, first day measured); the replay warms the features up for five years
PERIODS = {"1995-2015": ("1990-01-01", "2015-12-31", "1995-01-01"), "2016-": ("2011-01-01", None, "2016-01-01")}
PAPER = {"long": 0.76, "tsmom": 1.39, "macd": 1.11}
# the features node's masks, as days of all 8 features (graphs/dmn_trading.yaml: window 63, long_window 126)
UNIVERSES = {"ready": 63, "ready_long": 126, None: None}

__all__ = ["graph_sets", "run_graph", "vectorised"]


def graph_sets(strategy: str, start: str, end: str | None, measure_from: str, *, delay: int = 0,
               cost_bps: float = 0.0, symbols: list[str] | None = None, out: str = "out/compare") -> list[str]:
    """The ``--set`` overrides of one run of ``graphs/dmn_futures.yaml`` (its other vars keep the paper's setting)."""
    sets = [f"vars.strategy={strategy}", f"vars.start={start}", f"vars.end={end or 'null'}",
            f"vars.measure_from={measure_from}", f"vars.cost_bps={cost_bps}", "vars.slippage_bps=0",
            f"vars.delay={delay}", f"vars.out={out}/{strategy}"]
    if symbols:
        sets.append("vars.symbols=" + json.dumps(symbols))
    return sets


def run_graph(sets: list[str], graph: Path = GRAPH) -> dict[str, Any]:
    """One launch: the performance node's summary and the wall time."""
    import dmnflow
    from dmnflow.runtime import launch

    t0 = time.perf_counter()
    report = launch(dmnflow.compile_graph(graph, sets))
    if report.status != "finished":
        raise RuntimeError(f"{graph.name} {' '.join(sets)}: {report.status}: {report.errors}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "summary": report.nodes["dmn/performance"].summary or {}}


def vectorised(panel: Any, strategy: str, measure_from: str | None, measure_to: str | None = None,
               universe: str | None = "ready_long", delay: int = 0) -> dict[str, float]:
    """A baseline's figures from the vectorised evaluation of ``panel`` (``build_panel`` of the
    closes the graph replays), as the graph trades it: on the asset-days of the features
    node's ``universe`` mask, ``delay`` days after the signal, no costs, measured on the days
    from ``measure_from`` to ``measure_to`` (inclusive)."""
    from .evaluate import baselines, figures, strategy_returns

    positions = baselines(panel, UNIVERSES[universe])[strategy]
    return figures(strategy_returns(panel, positions, 0.0, delay), measure_from, measure_to)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", default="0", help="commission in bps per traded notional, comma-separated")
    parser.add_argument("--delays", default="0,1", help="days between signal and trade, comma-separated")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated: " + ", ".join(STRATEGIES))
    parser.add_argument("--periods", default=",".join(PERIODS), help="comma-separated: " + ", ".join(PERIODS))
    parser.add_argument("--doc", type=Path, default=None,
                        help="also write the table into this page (docs/dmn/backtest.md), between its markers; "
                        "a page is rewritten only when asked")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "compare.json")
    parser.add_argument("--from-json", help="render the table from earlier runs' --json files (comma-separated, "
                                            "e.g. one per period run separately) instead of running")
    args = parser.parse_args()
    if args.from_json:
        rows = [row for f in args.from_json.split(",") for row in json.loads(Path(f).read_text())]
        commands = dict.fromkeys(row.get("command", "python -m nodes.models.compare") for row in rows)
        if args.doc is not None:
            write_doc(args.doc, rows, "`; `".join(commands))
        return
    sys.path.insert(0, str(ROOT))
    command = shlex.join(["python", "-m", "nodes.models.compare", *sys.argv[1:]])
    from nodes.market.trendfollowing import load_trendfollowing

    from .data import build_panel

    rows = []
    for period in args.periods.split(","):
        start, end, begin = PERIODS[period]
        panel = build_panel(load_trendfollowing(start, end))  # exactly what the graph's market replays
        for delay in (int(d) for d in args.delays.split(",")):
            for cost in (float(c) for c in args.costs.split(",")):
                for strategy in args.strategies.split(","):
                    result = run_graph(graph_sets(strategy, start, end, begin, delay=delay, cost_bps=cost))
                    s = result["summary"]
                    vec = (vectorised(panel, strategy, begin, end, delay=delay)["sharpe"]
                           if strategy in PAPER and cost == 0 else None)
                    rows.append({"period": period, "strategy": strategy, "delay": delay, "cost_bps": cost,
                                 "wall_s": result["wall_s"], "vectorised_sharpe": vec, "command": command,
                                 **{k: s.get(k) for k in ("sharpe", "sortino", "calmar", "max_drawdown", "ann_vol",
                                                           "turnover", "periods", "tick_to_trade_p50_us")}})
                    print(json.dumps(rows[-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    if args.doc is not None:
        write_doc(args.doc, rows, command)


def write_doc(doc: Path, rows: list[dict[str, Any]], command: str) -> None:
    """The table between the page's ``graph:begin`` and ``graph:end`` markers."""
    lines = [f"Command: `{command}` ({sum(r['wall_s'] for r in rows):.0f} s in all, one launch per row)", ""]
    for period in dict.fromkeys(r["period"] for r in rows):
        lines += [f"**{period}** (the graph's own 15% volatility targeting, mean over assets; the vectorised "
                  "Sharpe on the same closes)",
                  "", "| strategy | delay (days) | cost (bps) | Sharpe (graph) | Sharpe (vectorised) | difference | "
                  "Sortino | Calmar | MDD | ann. vol | turnover | paper Sharpe | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["period"] == period):
            paper = PAPER.get(r["strategy"]) if period == "1995-2015" and r["delay"] == 0 else None
            vec = r["vectorised_sharpe"]
            diff = None if vec is None or r["sharpe"] is None else r["sharpe"] - vec
            lines.append(f"| {STRATEGIES[r['strategy']]} | {r['delay']} | {r['cost_bps']:g} | {_f(r['sharpe'], 4)} | "
                         f"{_f(vec, 4)} | {_e(diff)} | {_f(r['sortino'])} | {_f(r['calmar'])} | "
                         f"{_pct(r['max_drawdown'])} | {_pct(r['ann_vol'])} | {_f(r['turnover'])} | {_f(paper)} | "
                         f"{r['wall_s']:.0f} |")
        lines.append("")
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- graph:begin -->", "<!-- graph:end -->"
    block = begin + "\n" + "\n".join(lines) + end
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _e(x: Any) -> str:
    return "–" if x is None else f"{x:+.1e}"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
    main()

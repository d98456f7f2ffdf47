"""The strategies through the whole graph: ``python -m nodes.models.compare``.

Runs ``graphs/dmn_futures.yaml`` (84 futures markets) once per strategy (the DMN models
weighted by the meta-learner, long-only, TSMOM, MACD) and period, each a real ``dmnflow
launch`` of every node (features, models, risk, portfolio, paper broker with costs,
performance), prints the performance node's figures and writes them to ``--json``; with
``--doc docs/dmn/backtest.md`` also as a table into that page, between its
``graph:begin``/``graph:end`` markers (a page is rewritten only when asked).

It shows that the *graph* reproduces the ordering of the baselines (it is not the
walk-forward: the graph's LSTM and Transformer are the shipped models, trained on the
synthetic market, so their row says how a model that never saw these markets does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "dmn_futures.yaml"
STRATEGIES = {"long": "Long-only", "tsmom": "TSMOM", "macd": "MACD", "meta": "DMN (shipped LSTM + Transformer)"}
PERIODS = {"1995-2015": ("1993-07-01", "2015-12-31", "1995-01-01"), "2016-": ("2014-07-01", None, "2016-01-01")}
PAPER = {"long": 0.76, "tsmom": 1.39, "macd": 1.11}


def run(strategy: str, start: str, end: str | None, begin: str, cost_bps: float) -> dict[str, Any]:
    """One launch, replaying from ``start`` and measuring from ``begin`` (the features warm up first)."""
    import dmnflow
    from dmnflow.runtime import launch

    sets = [f"vars.strategy={strategy}", f"vars.start={start}", f"vars.end={end or 'null'}",
            f"vars.measure_from={begin}", f"vars.cost_bps={cost_bps}", "vars.slippage_bps=0",
            f"vars.out=out/compare/{strategy}"]
    t0 = time.perf_counter()
    report = launch(dmnflow.compile_graph(GRAPH, sets))
    if report.status != "finished":
        raise SystemExit(f"{strategy}: {report.status}: {report.errors}")
    return {"wall_s": round(time.perf_counter() - t0, 1), "summary": report.nodes["dmn/performance"].summary or {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", default="0", help="commission in bps per traded notional, comma-separated")
    parser.add_argument("--doc", type=Path, default=None,
                        help="also write the table into this page (docs/dmn/backtest.md), between its markers")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "compare.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    rows = []
    for period, (start, end, begin) in PERIODS.items():
        for cost in (float(c) for c in args.costs.split(",")):
            for strategy in STRATEGIES:
                result = run(strategy, start, end, begin, cost)
                s = result["summary"]
                rows.append({"period": period, "strategy": strategy, "cost_bps": cost, "wall_s": result["wall_s"],
                             **{k: s.get(k) for k in ("sharpe", "sortino", "calmar", "max_drawdown", "ann_vol",
                                                       "turnover", "tick_to_trade_p50_us")}})
                print(json.dumps(rows[-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=1))
    if args.doc is not None:
        write_doc(args.doc, rows, " ".join(["python -m nodes.models.compare", *sys.argv[1:]]))


def write_doc(doc: Path, rows: list[dict[str, Any]], command: str) -> None:
    """The table between the page's ``graph:begin`` and ``graph:end`` markers."""
    lines = [f"Command: `{command}` ({sum(r['wall_s'] for r in rows):.0f} s in all, one launch per row)", ""]
    for period in dict.fromkeys(r["period"] for r in rows):
        lines += [f"**{period}** (the graph's own 15% volatility targeting, mean over assets; no position limits)",
                  "", "| strategy | cost (bps) | Sharpe | Sortino | Calmar | MDD | ann. vol | turnover | "
                  "paper Sharpe (1995-2015) | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["period"] == period):
            paper = PAPER.get(r["strategy"]) if period == "1995-2015" else None
            lines.append(f"| {STRATEGIES[r['strategy']]} | {r['cost_bps']:g} | {_f(r['sharpe'])} | "
                         f"{_f(r['sortino'])} | {_f(r['calmar'])} | {_pct(r['max_drawdown'])} | "
                         f"{_pct(r['ann_vol'])} | {_f(r['turnover'])} | {_f(paper)} | {r['wall_s']:.0f} |")
        lines.append("")
    text = doc.read_text(encoding="utf-8")
    begin, end = "<!-- graph:begin -->", "<!-- graph:end -->"
    block = begin + "\n" + "\n".join(lines) + end
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def _f(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


if __name__ == "__main__":
    main()

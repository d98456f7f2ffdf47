"""Walk-forward evaluation on the ``trendfollowing`` futures: ``python -m nodes.models.walkforward``.

The protocol of Lim et al. (2019): an expanding training window, retrained every 5 years;
each model trades only the block after its training data (its targets' prices included),
so every position reported is out of sample. The blocks' positions are stitched into one
series per model and scored, with the baselines (long-only, TSMOM, MACD: the reference
signals), over 1995-2015 and from 2016 on, with 0, 1, 2, 3 and 5 bps of cost per unit of
turnover, at 15% volatility (docs/dmn/backtest.md has the table and the command).

All strategies trade the same asset-days: those on which the features node would send
every evaluated model a full window (63 days of all 8 features for the LSTM, 126 for the
Transformer), so the comparison is not about coverage.
Hyperparameters are fixed before the run (flags below, defaults documented); nothing is
chosen by looking at a test block.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import build_panel
from .evaluate import figures, predict_positions, strategy_returns, turnover
from .train import TrainConfig, fit

__all__ = ["PAPER", "blocks", "main", "run_walkforward"]

# Lim et al. (2019), 1995-2015, 15% vol, no costs (ANCHORS.md): Sharpe ratios
PAPER = {"long_only": 0.76, "tsmom": 1.39, "macd": 1.11, "lstm": 2.91}
PERIODS = {"1995-2015": ("1995-01-01", "2015-12-31"), "2016-": ("2016-01-01", None)}
BEGIN, END = "<!-- walkforward:begin -->", "<!-- walkforward:end -->"


def blocks(first_test: int, step: int, last_date: Any) -> list[tuple[str, str | None]]:
    """Test blocks ``[start, end)`` of ``step`` years from ``first_test`` to the data's end."""
    out: list[tuple[str, str | None]] = []
    year = first_test
    while year <= last_date.year:
        nxt = year + step
        out.append((f"{year}-01-01", f"{nxt}-01-01" if nxt <= last_date.year else None))
        year = nxt
    return out


def run_walkforward(closes: Any, configs: dict[str, TrainConfig], first_test: int = 1995, step: int = 5,
                    costs: tuple[float, ...] = (0, 1, 2, 3, 5), log: Any = print, universe: int | None = None,
                    delays: tuple[int, ...] = (1,), trade: tuple[int, float] = (1, 2.0), ensemble: int = 1
                    ) -> dict[str, Any]:
    """Train and test every model block by block; score models and baselines. A JSON-able dict.

    ``universe``: the days of all 8 features an asset-day needs to be traded (default: the
    longest window of the models, at least 63); ``delays``: extra days between signal and
    trade to score at zero cost, besides the paper's none; ``trade``: the tradable convention
    (delay in days, cost in bps) every strategy is also scored under, the headline; ``ensemble``:
    members per model and block, trained from seeds ``seed .. seed + ensemble - 1``, whose
    positions are averaged."""
    began = time.perf_counter()
    panel = build_panel(closes)
    log(f"features for {closes.shape[1]} markets, {closes.index[0].date()} .. {closes.index[-1].date()} "
        f"in {time.perf_counter() - began:.0f}s")
    plan = blocks(first_test, step, closes.index[-1])
    positions: dict[str, np.ndarray] = {}
    trained: list[dict[str, Any]] = []
    for name, config in configs.items():
        pos = np.full(panel.sigma.shape, np.nan)
        for start, end in plan:
            members = []
            for seed in range(config.seed, config.seed + ensemble):
                t0 = time.perf_counter()
                result = fit(panel, config.model_copy(update={"seed": seed}), None, start)
                members.append(predict_positions(result.net, panel, config.window, start, end))
                seconds = time.perf_counter() - t0
                trained.append({"model": name, "seed": seed, "test": [start, end],
                                "train_windows": result.train_windows, "valid_from": result.valid_from,
                                "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                                "valid_sharpe": round(result.valid_sharpe, 4), "seconds": round(seconds, 1)})
                log(f"{name} (seed {seed}) test {start} .. {end or 'end'}: {result.train_windows} windows, best "
                    f"epoch {result.best_epoch}/{result.epochs_run}, valid Sharpe {result.valid_sharpe:.2f}, "
                    f"{seconds:.0f}s")
            block = members[0] if len(members) == 1 else np.mean(members, axis=0)  # (NaN where any has none)
            pos = np.where(np.isfinite(block), block, pos)
        positions[name] = pos
    # the common universe: asset-days with a full window of features for every model, from the first test date on
    universe = universe or max([63, *(c.window for c in configs.values())])
    on = panel.window_ready(universe) & (panel.dates >= np.datetime64(plan[0][0]))[:, None]
    for pos in positions.values():
        on &= np.isfinite(pos)
    strategies = {"long_only": np.ones_like(panel.sigma), "tsmom": panel.tsmom, "macd": panel.macd, **positions}
    table: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    turns: dict[str, dict[str, dict[str, float]]] = {}
    delayed: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    tradable: dict[str, dict[str, dict[str, float]]] = {}
    for name, pos in strategies.items():
        masked = np.where(on & np.isfinite(pos), pos, np.nan)
        gross, turn = strategy_returns(panel, masked, 0.0), turnover(panel, masked)
        turns[name] = {}
        for period, (a, b) in PERIODS.items():
            g, tr = gross.loc[a:b].mean(), turn.loc[a:b].mean()
            turns[name][period] = {"annual": round(float(tr * 252), 2),
                                   "break_even_bps": round(float(g / tr * 1e4), 2) if tr > 0 else math.nan}
        table[name] = {}
        for cost in costs:
            r = strategy_returns(panel, masked, cost)
            table[name][_bps(cost)] = {period: {k: round(v, 4) for k, v in figures(r, a, b).items()}
                                       for period, (a, b) in PERIODS.items()}
        r = strategy_returns(panel, masked, trade[1], trade[0])
        tradable[name] = {period: {k: round(v, 4) for k, v in figures(r, a, b).items()}
                          for period, (a, b) in PERIODS.items()}
        for delay in dict.fromkeys((0, *delays)) if delays else ():
            r = strategy_returns(panel, masked, 0.0, delay)
            delayed.setdefault(str(delay), {})[name] = {period: {k: round(v, 4) for k, v in figures(r, a, b).items()}
                                                        for period, (a, b) in PERIODS.items()}
    return {"markets": closes.shape[1], "data_end": str(closes.index[-1].date()), "blocks": plan,
            "universe": universe, "delayed": delayed, "costs_bps": list(costs),
            "trade": {"delay": trade[0], "cost_bps": trade[1]}, "tradable": tradable,
            "configs": {k: c.model_dump() for k, c in configs.items()}, "ensemble": ensemble,
            "trained": trained, "figures": table, "turnover": turns, "seconds": round(time.perf_counter() - began, 1)}


def _bps(cost: float) -> str:
    return f"{cost:g}"


def markdown(results: dict[str, Any], command: str) -> str:
    """The results as markdown tables (one per period), with the paper's Sharpe ratios beside."""
    names = {"long_only": "Long-only", "tsmom": "TSMOM", "macd": "MACD", "lstm": "LSTM",
             "transformer": "Transformer"}
    lines = [f"Command: `{command}`  ", f"Runtime: {results['seconds']:.0f} s (one torch thread; 2 CPU cores shared "
             "with other work); "
             f"{results['markets']} markets, data to {results['data_end']}; test blocks "
             + ", ".join(f"{a[:4]}–{(str(int(b[:4]) - 1)) if b else 'end'}" for a, b in results["blocks"])
             + f"; universe: asset-days with {results.get('universe', 126)} days of all 8 features.", ""]
    if "tradable" in results:  # the headline: what a trader acting after the close can take
        delay, cost = results["trade"]["delay"], results["trade"]["cost_bps"]
        members = results.get("ensemble", 1)
        how = ", ".join(f"{names.get(n, n)} trained for a delay of {c.get('delay', 0)} and {c.get('cost_bps', 0):g} bps"
                        + (f", the mean of {members} seeds" if members > 1 else "")
                        for n, c in results["configs"].items())
        lines += [f"**Tradable: traded {delay} day{'s' if delay != 1 else ''} after the signal, {cost:g} bps per unit "
                  f"of turnover** (15% vol{'; ' + how if how else ''})", "",
                  "| strategy | " + " | ".join(f"Sharpe {p} | MDD {p}" for p in PERIODS) + " |",
                  "|---|" + "---:|" * (2 * len(PERIODS))]
        for name, per in results["tradable"].items():
            cells = [f"{_f(per[p]['sharpe'])} | {_f(per[p]['mdd'], pct=True)}" for p in PERIODS]
            lines.append(f"| {names.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    for period in PERIODS:
        lines += [f"**{period}** (15% vol; figures per cost in bps)", "",
                  "| strategy | cost (bps) | Sharpe | Sortino | Calmar | MDD | paper Sharpe | turnover / yr | "
                  "break-even (bps) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, by_cost in results["figures"].items():
            for cost, per in by_cost.items():
                f = per[period]
                first = cost == next(iter(by_cost))
                paper = PAPER.get(name) if cost == "0" and period == "1995-2015" else None
                tr = results["turnover"][name][period]
                extra = f"{tr['annual']:.1f} | {_f(tr['break_even_bps'])}" if first else " | "
                lines.append(f"| {names.get(name, name)} | {cost} | {_f(f['sharpe'])} | {_f(f['sortino'])} | "
                             f"{_f(f['calmar'])} | {_f(f['mdd'], pct=True)} | {'' if paper is None else paper} | "
                             f"{extra} |")
        lines.append("")
    by_delay = results.get("delayed", {})
    for delay, per_name in by_delay.items():
        if delay == "0":
            continue
        lines += [f"**{delay} more day{'s' if delay != '1' else ''} between signal and trade** (cost 0; Sharpe, "
                  "the same positions traded a close later)", "",
                  "| strategy | " + " | ".join(f"{p} (no delay) | {p} (delayed)" for p in PERIODS) + " |",
                  "|---|" + "---:|" * (2 * len(PERIODS))]
        for name, per in per_name.items():
            cells = [f"{_f(by_delay['0'][name][p]['sharpe'])} | {_f(per[p]['sharpe'])}" for p in PERIODS]
            lines.append(f"| {names.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    if not results["trained"]:
        return "\n".join(lines) + "\n"
    lines += ["Training per block:", "", "| model | test block | training windows | validation from | best/run "
              "epochs | validation Sharpe | seconds |", "|---|---|---:|---|---:|---:|---:|"]
    for t in results["trained"]:
        a, b = t["test"]
        lines.append(f"| {t['model']} | {a[:4]}–{str(int(b[:4]) - 1) if b else 'end'} | {t['train_windows']} | "
                     f"{t['valid_from']} | {t['best_epoch']}/{t['epochs_run']} | {t['valid_sharpe']:.2f} | "
                     f"{t['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _f(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def write_doc(path: Path, block: str) -> None:
    """Replace the text between the walk-forward markers of ``path`` with ``block``."""
    text = path.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{path} has no {BEGIN} ... {END} markers")
    path.write_text(pattern.sub(lambda _: f"{BEGIN}\n{block}{END}", text))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodes.models.walkforward", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default="lstm", help="comma-separated: lstm, transformer; none: the baselines only")
    ap.add_argument("--first-test", type=int, default=1995, help="first test year (the paper: 1995)")
    ap.add_argument("--step", type=int, default=5, help="years per test block (retrain every this many years)")
    ap.add_argument("--costs", default="0,1,2,3,5", help="costs in bps per unit of turnover")
    ap.add_argument("--symbols", help="comma-separated tickers (default: all 84 markets)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--epochs", type=int, default=20, help="most epochs per block")
    ap.add_argument("--patience", type=int, default=5, help="early-stopping patience")
    ap.add_argument("--hidden", type=int, default=32, help="LSTM hidden units")
    ap.add_argument("--batch", type=int, default=256, help="windows per batch")
    ap.add_argument("--max-windows", type=int, default=None, help="windows drawn per epoch (default: all for the "
                                                                   "LSTM, 1024 for the Transformer)")
    ap.add_argument("--tf-window", type=int, default=126, help="the Transformer's window (the graph's long windows)")
    ap.add_argument("--tf-batch", type=int, default=64, help="the Transformer's windows per batch (smaller "
                                                            "batches of long windows run faster on a CPU)")
    ap.add_argument("--universe", type=int, help="days of all 8 features an asset-day needs to be traded (default: "
                                                 "the longest model window, at least 63)")
    ap.add_argument("--delays", default="1", help="extra days between signal and trade to score too (cost 0), "
                                                "comma-separated; empty: none")
    ap.add_argument("--train-delay", type=int, default=1, help="days between signal and trade the models are "
                                                                "trained for (the loss scores X_t on r_{t+1+delay})")
    ap.add_argument("--train-cost", type=float, default=2.0, help="turnover cost in bps in the training loss")
    ap.add_argument("--trade-delay", type=int, default=1, help="the headline's days between signal and trade")
    ap.add_argument("--trade-cost", type=float, default=2.0, help="the headline's cost in bps per unit of turnover")
    ap.add_argument("--dropout", type=float, default=0.2, help="dropout rate")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    ap.add_argument("--ensemble", type=int, default=1, help="models per block, from seeds seed .. seed+N-1, their "
                                                             "positions averaged")
    ap.add_argument("--json", help="write every figure as JSON here")
    ap.add_argument("--doc", help="replace the walk-forward block of this markdown file (docs/dmn/backtest.md)")
    ap.add_argument("--from-json", help="render the tables from a previous run's --json file instead of running")
    args = ap.parse_args(argv)
    from nodes.market.trendfollowing import load_trendfollowing

    symbols = [s.strip() for s in args.symbols.split(",")] if args.symbols else None

    def closes() -> Any:
        return load_trendfollowing(symbols=symbols)

    common = {"seed": args.seed, "epochs": args.epochs, "patience": args.patience, "batch": args.batch,
              "delay": args.train_delay, "cost_bps": args.train_cost, "dropout": args.dropout, "lr": args.lr}
    configs: dict[str, TrainConfig] = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "none"]:
        if name == "lstm":
            configs[name] = TrainConfig(model="lstm", window=63, hidden=args.hidden, max_windows=args.max_windows,
                                        **common)
        elif name == "transformer":
            configs[name] = TrainConfig(model="transformer", window=args.tf_window, stride=63,
                                        max_windows=args.max_windows or 1024, **{**common, "batch": args.tf_batch})
        else:
            ap.error(f"unknown model {name!r}: lstm or transformer")
    costs = tuple(float(c) for c in args.costs.split(","))

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        delays = tuple(int(d) for d in args.delays.split(",") if d.strip())
        results = run_walkforward(closes(), configs, args.first_test, args.step, costs, log, args.universe, delays,
                                  (args.trade_delay, args.trade_cost), args.ensemble)
        results["command"] = "python -m nodes.models.walkforward " + shlex.join(sys.argv[1:] if argv is None else argv)
    table = markdown(results, results.get("command", "(not recorded)"))
    print(table)
    if args.json and not args.from_json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.doc:
        write_doc(Path(args.doc), table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

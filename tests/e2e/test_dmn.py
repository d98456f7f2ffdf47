"""The DMN trading graph end to end: it validates, draws its layers, backtests to a report,
and two backtests on the same data give identical positions and figures.

Small on purpose (a few symbols, a few hundred days): tests/e2e keeps CI in minutes. The
full-size run is bench/backtest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

import dmnflow  # noqa: E402
from dmnflow.runtime import launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"
LATENCY = ("tick_to_trade", "tick_to_account", "latency")  # wall-clock figures: not compared across runs


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


@pytest.mark.parametrize("graph", ["dmn_trading.yaml", "dmn_backtest.yaml", "dmn_futures.yaml"])
def test_the_graphs_validate_cleanly_with_their_models(graph: str) -> None:
    issues = dmnflow.validate(GRAPHS / graph)
    assert issues == [], "\n".join(map(str, issues))


def test_the_picture_shows_the_seeds_layers() -> None:
    out = subprocess.run([sys.executable, "-m", "dmnflow", "viz", str(GRAPHS / "dmn_trading.yaml"), "-f", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    layers = {n["layer"] for n in json.loads(out.stdout)["nodes"]}
    assert {"data", "features", "models", "risk", "portfolio", "execution", "monitoring"} <= layers


def backtest(tmp: Path, days: int = 420, symbols: int = 6, sets: str = "") -> tuple[dmnflow.Report, list, list]:
    """The trading graph as a finite replay, with collectors on the risk targets and the account
    (``sets``: more ``set:`` lines for the include, YAML)."""
    g = tmp / "bt.yaml"
    g.write_text(textwrap.dedent(f"""
        graph: dmn_e2e
        include:
          dmn:
            path: {GRAPHS / "dmn_trading.yaml"}
            vars: {{live: false, mode: panel, rate: 0, join_timeout: null, days: {days}, symbols: {symbols}}}
            set:
              nodes.performance.params.equity_png: {tmp}/equity.png
              {sets}
        nodes:
          targets:
            {{uses: nodes.basic:Collect, params: {{path: {tmp}/targets.jsonl}}, inputs: {{values: dmn/risk.targets}}}}
          account:
            uses: nodes.basic:Collect
            params: {{path: {tmp}/account.jsonl}}
            inputs: {{values: dmn/execution.account}}
        """).lstrip())
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished" and report.exit_code == 0, report.errors
    targets, account = ([json.loads(line) for line in (tmp / f"{name}.jsonl").read_text().splitlines()]
                        for name in ("targets", "account"))
    return report, targets, account


def test_a_backtest_ends_by_itself_with_the_performance_report_and_repeats_exactly(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, targets_a, account_a = backtest(tmp_path / "a")
    second, targets_b, account_b = backtest(tmp_path / "b")
    days = 420
    assert len(targets_a) == len(account_a) == days  # one decision and one account per day, none lost
    assert all(e.lost == 0 and e.decode_errors == 0 for e in first.edges)
    # the joins (meta over the models, risk over positions and signals) completed every day
    assert first.nodes["dmn/meta"].join_incomplete == 0 and first.nodes["dmn/risk"].join_incomplete == 0
    assert first.nodes["dmn/lstm[0]"].messages_in > 0 and first.nodes["dmn/lstm[1]"].messages_in > 0
    perf = first.nodes["dmn/performance"].summary
    for key in ("sharpe", "sortino", "calmar", "max_drawdown", "var_95", "turnover", "tick_to_trade_p50_us"):
        assert key in perf, key
    assert perf["periods"] == days and (tmp_path / "a" / "equity.png").stat().st_size > 1000
    # deterministic: the same positions, fills and figures (wall-clock latency aside)
    assert targets_a == targets_b
    assert account_a == account_b
    same = {k: v for k, v in perf.items() if not k.startswith(LATENCY)}
    assert same == {k: v for k, v in second.nodes["dmn/performance"].summary.items() if not k.startswith(LATENCY)}
    weights = [t["weight"] for t in targets_a[-50:]]
    assert any(any(abs(w) > 0 for w in day) for day in weights), "the strategy never took a position"


def test_the_latency_profile_s_models_trade_what_the_default_s_trade(tmp_path: Path) -> None:
    """IncrementalModel (the `latency` profile's runner) against TorchScriptModel: the same days,
    symbols and weights up to float rounding, and most rows from its cache."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, plain, _ = backtest(tmp_path / "a")
    sets = ("nodes.lstm.uses: nodes.models:IncrementalModel\n              "
            "nodes.transformer.uses: nodes.models:IncrementalModel\n              nodes.lstm.replicas: 1")
    report, cached, _ = backtest(tmp_path / "b", sets=sets)
    assert [t["t"] for t in plain] == [t["t"] for t in cached]
    assert [t["symbols"] for t in plain] == [t["symbols"] for t in cached]
    worst = max(abs(x - y) for a, b in zip(plain, cached, strict=True) for x, y in zip(a["weight"], b["weight"],
                                                                                      strict=True))
    assert worst < 1e-5
    lstm = report.nodes["dmn/lstm"].summary
    assert lstm["incremental_rows"] > 10 * lstm["full_rows"] > 0

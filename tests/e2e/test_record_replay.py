"""Record a DMN backtest, replay its model predictions and signals into risk -> portfolio ->
execution, and get identical accounts: the subgraph sees exactly what it saw in the run."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

pytest.importorskip("torch")
pytest.importorskip("mcap")

import dmnflow  # noqa: E402
from dmnflow.observe.replay import read_records, replay_plan  # noqa: E402
from dmnflow.observe.session import watching  # noqa: E402
from dmnflow.runtime import launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GRAPH = ROOT / "graphs" / "dmn_backtest.yaml"


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_replaying_a_backtests_predictions_into_risk_gives_identical_accounts(tmp_path: Path) -> None:
    sets = ["vars.days=320", "vars.symbols=4", f"vars.out={tmp_path}/bt"]
    recorded = tmp_path / "backtest.mcap"
    plan = dmnflow.compile_graph(GRAPH, sets)
    with watching(plan, Console(file=io.StringIO()), record=recorded,
                  edges=["dmn/meta.positions", "dmn/features.signals", "dmn/execution.account"]) as session:
        report = launch(session.plan, observer=session.observer)
    assert report.status == "finished", report.errors

    replayed = tmp_path / "replayed.mcap"
    plan = replay_plan(recorded, GRAPH, ["risk"], sets)
    kept = {n.spec_name for n in plan.nodes}
    assert {"dmn/risk", "dmn/portfolio", "dmn/execution", "dmn/performance", "replay"} <= kept
    assert not kept & {"dmn/market", "dmn/features", "dmn/lstm", "dmn/transformer", "dmn/meta"}
    with watching(plan, Console(file=io.StringIO()), record=replayed, edges=["dmn/execution.account"]) as session:
        again = launch(session.plan, observer=session.observer)
    assert again.status == "finished", again.errors

    first = [(r["event_time"], r["value"]) for r in read_records(recorded, ["dmn/execution.account"])]
    second = [(r["event_time"], r["value"]) for r in read_records(replayed, ["dmn/execution.account"])]
    assert len(first) == 320 and second == first  # every account, equal to the last float
    before = report.nodes["dmn/performance"].summary
    after = again.nodes["dmn/performance"].summary
    for key in ("equity", "pnl", "sharpe", "max_drawdown", "turnover"):
        assert after[key] == before[key], key

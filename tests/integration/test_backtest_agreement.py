"""The graph's backtest is the vectorised evaluation's: every node of the DMN graph (streaming
features, model runners, meta-learner, risk, portfolio, paper broker, performance) gives the
Sharpe ratio that ``nodes.models.evaluate`` computes on the same closes, in the paper's setting
(no rebalance threshold, no position limits, no kill switch, no costs), with and without a day
between signal and trade. Tuning optimises what the graph reports, so this must hold exactly.

Small on purpose (a few markets, under three years, one of them starting late so the universe
mask and its first traded day matter); the full-size table is ``python -m nodes.models.compare``
(docs/dmn/backtest.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pandas")

from nodes.models.compare import graph_sets, run_graph, vectorised  # noqa: E402
from nodes.models.data import build_panel  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PAPER_SETTING = ["nodes.dmn/risk.params.max_weight=null", "nodes.dmn/risk.params.max_gross=null",
                 "nodes.dmn/risk.params.max_drawdown=null", "vars.rebalance_threshold=0", "vars.cost_bps=0",
                 "vars.slippage_bps=0"]
EXACT = 1e-9  # the issue asks for 0.01; both sides compute the same sums, so anything above rounding is a bug


@pytest.fixture(autouse=True)
def _root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_the_futures_graph_reproduces_the_vectorised_macd_traded_a_day_late(tmp_path: Path) -> None:
    tf = pytest.importorskip("nodes.market.trendfollowing")
    try:
        tf.trendfollowing_file()
    except tf.TrendFollowingMissing as exc:
        pytest.skip(str(exc))
    # TWT1 starts in June 2000: it enters the universe months after the others
    symbols = ["ES1 Index", "TY1 Comdty", "EC1 Curncy", "GC1 Comdty", "TWT1 Index"]
    start, end, measure_from = "2000-01-03", "2002-06-28", "2001-10-01"
    run = run_graph(graph_sets("macd", start, end, measure_from, delay=1, symbols=symbols, out=str(tmp_path)))
    graph = run["summary"]
    panel = build_panel(tf.load_trendfollowing(start, end, symbols))
    want = vectorised(panel, "macd", measure_from, end, delay=1)
    assert graph["sharpe"] == pytest.approx(want["sharpe"], abs=EXACT)
    assert graph["sortino"] == pytest.approx(want["sortino"], abs=EXACT)  # neither moves with the vol rescaling
    undelayed = vectorised(panel, "macd", measure_from, end, delay=0)["sharpe"]
    assert abs(undelayed - want["sharpe"]) > 1e-3  # the delay is a real difference the graph reproduces


def test_the_synthetic_backtest_reproduces_the_vectorised_tsmom_measured_from_before_it_trades(tmp_path: Path
                                                                                                ) -> None:
    from nodes.market.synthetic import synthetic_closes

    # the 63-day mask (the LSTM's) this time; nothing is ready before 2001-06-11, so the first measured
    # days are flat in both (an account that holds nothing earns 0), and the day counts must agree
    symbols, days, measure_from = 6, 500, "2001-06-01"
    sets = ["vars.strategy=tsmom", f"vars.symbols={symbols}", f"vars.days={days}", "vars.universe=ready",
            f"vars.measure_from={measure_from}", "vars.windows={early: {end: 2001-08-31}, late: {start: 2001-09-03}}",
            f"vars.out={tmp_path}", *PAPER_SETTING]
    graph = run_graph(sets, ROOT / "graphs" / "dmn_backtest.yaml")["summary"]
    panel = build_panel(synthetic_closes(seed=7, symbols=symbols, days=days))
    want = vectorised(panel, "tsmom", measure_from, universe="ready")
    assert graph["periods"] == int((panel.dates >= measure_from).sum())  # one return per day measured
    assert graph["sharpe"] == pytest.approx(want["sharpe"], abs=EXACT)
    # the in-sample / held-out windows of the same run (what `dmnflow tune` selects and reports on)
    early, late = vectorised(panel, "tsmom", None, "2001-08-31", "ready"), vectorised(panel, "tsmom", "2001-09-03",
                                                                                         universe="ready")
    assert graph["early.periods"] == int((panel.dates <= "2001-08-31").sum())
    assert graph["early.sharpe"] == pytest.approx(early["sharpe"], abs=EXACT)
    assert graph["late.sharpe"] == pytest.approx(late["sharpe"], abs=EXACT)

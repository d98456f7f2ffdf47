"""PortfolioOptimizer: weights to quantities, threshold, lots, kill flattening, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest

from dmnflow.testing import RecordingContext, run_node
from nodes.portfolio import PortfolioOptimizer, round_lot

NAN = float("nan")



def make(params: dict[str, Any] | None = None) -> tuple[PortfolioOptimizer, RecordingContext]:
    node, ctx = PortfolioOptimizer(), RecordingContext(PortfolioOptimizer, params)
    node.setup(ctx)
    return node, ctx


def targets(t: int, weights: dict[str, float], close: dict[str, float], killed: bool = False) -> dict[str, Any]:
    syms = list(weights)
    return {"t": t, "symbols": syms, "weight": [weights[s] for s in syms], "close": [close[s] for s in syms],
            "killed": killed}


def test_round_lot() -> None:
    assert round_lot(12.4, 1.0) == 12.0 and round_lot(12.5, 1.0) == 13.0 and round_lot(-12.5, 1.0) == -13.0
    assert round_lot(0.4, 1.0) == 0.0 and round_lot(7.3, 0.0) == 7.3
    assert round_lot(237.0, 100.0) == 200.0 and round_lot(-0.3, 0.25) == -0.25


def test_weights_to_orders_with_run_node() -> None:
    msgs = [targets(1, {"A": 0.1, "B": -0.05}, {"A": 100.0, "B": 50.0}),
            targets(2, {"A": 0.1, "B": -0.05}, {"A": 110.0, "B": 50.0})]
    out = run_node(PortfolioOptimizer, params={"capital": 1e6}, inputs=[("targets", m) for m in msgs])
    first, second = out["orders"]
    assert first["t"] == 1 and first["equity"] == 1e6
    assert first["orders"] == [{"symbol": "A", "qty": 1000.0, "side": "buy", "ref_price": 100.0},
                               {"symbol": "B", "qty": 1000.0, "side": "sell", "ref_price": 50.0}]
    assert first["prices"] == {"A": 100.0, "B": 50.0}
    # A rose 10%: equity 1,010,000; A's target 0.1 * 1.01e6 / 110 = 918.18..; B's -0.05 * 1.01e6 / 50 = -1010
    assert second["equity"] == pytest.approx(1_010_000.0)
    a, b = second["orders"]
    assert a["symbol"] == "A" and a["side"] == "sell" and a["qty"] == pytest.approx(1000 - 101_000 / 110)
    assert b == {"symbol": "B", "qty": pytest.approx(10.0), "side": "sell", "ref_price": 50.0}


def test_rebalance_threshold_and_lots() -> None:
    node, ctx = make({"capital": 1e6, "rebalance_threshold": 0.02, "lot_size": 10.0})
    node.on_targets(targets(1, {"A": 0.1}, {"A": 300.0}), ctx)
    assert ctx.out["orders"][0]["orders"][0]["qty"] == 330.0  # 333.3 -> lots of 10
    # price up 10%: current weight 0.10857 vs 0.1 target, a change below 0.02: no trade
    node.on_targets(targets(2, {"A": 0.1}, {"A": 330.0}), ctx)
    assert ctx.out["orders"][1]["orders"] == []
    node.on_targets(targets(3, {"A": 0.15}, {"A": 330.0}), ctx)  # change 0.041: trade
    eq = 1e6 + 330 * 30
    assert ctx.out["orders"][2]["orders"][0]["qty"] == round_lot(0.15 * eq / 330, 10) - 330
    assert node.summary()["below_threshold"] == 1


def test_kill_flattens_everything() -> None:
    node, ctx = make({"rebalance_threshold": 0.09})
    node.on_targets(targets(1, {"A": 0.1, "B": 0.2}, {"A": 10.0, "B": 20.0}), ctx)
    # killed: B is left out of the message and A's change (weight 80,000 / 980,000) is below the threshold;
    # both still close
    node.on_targets(targets(2, {"A": 0.0}, {"A": 8.0}, killed=True), ctx)
    orders = ctx.out["orders"][1]["orders"]
    assert {(o["symbol"], o["side"], o["qty"]) for o in orders} == {("A", "sell", 10_000.0), ("B", "sell", 10_000.0)}
    assert ctx.out["orders"][1]["prices"] == {"A": 8.0}  # B is flat now: no need to mark it
    s = node.summary()
    assert s["kill_flattens"] == 1 and s["book_positions"] == 0
    assert s["book_equity"] == pytest.approx(1e6 - 20_000)


def test_missing_symbols_kept_or_closed() -> None:
    node, ctx = make()
    node.on_targets(targets(1, {"A": 0.1, "B": 0.1}, {"A": 10.0, "B": 10.0}), ctx)
    node.on_targets(targets(2, {"A": 0.1}, {"A": 10.0}), ctx)
    assert ctx.out["orders"][1]["orders"] == [] and ctx.out["orders"][1]["prices"] == {"A": 10.0, "B": 10.0}
    node2, ctx2 = make({"close_missing": True})
    node2.on_targets(targets(1, {"A": 0.1, "B": 0.1}, {"A": 10.0, "B": 10.0}), ctx2)
    node2.on_targets(targets(2, {"A": 0.1}, {"A": 10.0}), ctx2)
    assert ctx2.out["orders"][1]["orders"] == [{"symbol": "B", "qty": 10_000.0, "side": "sell", "ref_price": 10.0}]


def test_bad_input_is_counted() -> None:
    node, ctx = make()
    node.on_targets(targets(1, {"A": NAN, "B": 0.1, "C": 0.1, "D": math.inf}, {"A": 10.0, "B": NAN, "C": -3.0,
                                                                               "D": 10.0}), ctx)
    assert ctx.out["orders"][0]["orders"] == [] and ctx.out["orders"][0]["prices"] == {"A": 10.0, "D": 10.0}
    node.on_targets(targets(1, {"A": 0.1}, {"A": 10.0}), ctx)  # duplicate
    node.on_targets(targets(0, {"A": 0.1}, {"A": 10.0}), ctx)  # out of order
    node.on_targets({"t": 2, "symbols": ["A"], "weight": [0.1, 0.2], "close": [1.0]}, ctx)
    node.on_targets({"symbols": [], "weight": [], "close": []}, ctx)
    node.on_targets("junk", ctx)  # type: ignore[arg-type]
    node.on_targets({"t": 3, "symbols": [5], "weight": ["x"], "close": [1.0]}, ctx)
    node.on_targets({"t": 4, "symbols": [], "weight": [], "close": []}, ctx)
    s = node.summary()
    assert (s["bad_weight"], s["no_price"], s["duplicates"], s["out_of_order"], s["bad_messages"]) == (3, 2, 1, 1, 3)
    assert [o["t"] for o in ctx.out["orders"]] == [1, 3, 4]
    assert s["book_equity"] == 1e6 and s["orders"] == 0


def test_account_feedback_reconciles_when_asked() -> None:
    acc = {"t": 1, "equity": 500_000.0, "cash": 400_000.0, "positions": {"A": 1000.0}, "gross": 1e5, "pnl": 0.0}
    node, ctx = make({"use_account": True})
    node.on_account(acc, ctx)
    node.on_account({"cash": "x"}, ctx)
    node.on_targets(targets(2, {"A": 0.4}, {"A": 100.0}), ctx)
    # equity from the broker's view: 400,000 + 1000 * 100; target 0.4 * 500,000 / 100 = 2000
    assert ctx.out["orders"][0]["equity"] == 500_000.0
    assert ctx.out["orders"][0]["orders"] == [{"symbol": "A", "qty": 1000.0, "side": "buy", "ref_price": 100.0}]
    s = node.summary()
    assert s["accounts"] == 1 and s["bad_accounts"] == 1
    node2, ctx2 = make()  # default: the account is noted, the book stays the node's own
    node2.on_account(acc, ctx2)
    node2.on_targets(targets(2, {"A": 0.4}, {"A": 100.0}), ctx2)
    assert ctx2.out["orders"][0]["orders"][0]["qty"] == 4000.0

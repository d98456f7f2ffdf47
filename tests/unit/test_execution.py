"""The paper broker's accounting and the Execution node's rate limits, queue and bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import ValidationError

from dmnflow.testing import RecordingContext, run_node
from nodes.execution import Execution
from nodes.execution import node as execution_module
from nodes.execution.broker import BROKERS, Broker, load_broker, resolve_broker
from nodes.execution.paper import PaperBroker


def make(params: dict[str, Any] | None = None) -> tuple[Execution, RecordingContext]:
    node, ctx = Execution(), RecordingContext(Execution, params)
    node.setup(ctx)
    return node, ctx


def order(symbol: str, qty: float, side: str, ref: float = 100.0) -> dict[str, Any]:
    return {"symbol": symbol, "qty": qty, "side": side, "ref_price": ref}


# -- the paper broker -----------------------------------------------------------------------

def test_paper_fill_prices_costs_and_cash() -> None:
    b = PaperBroker(capital=10_000.0, slippage_bps=10.0, commission_bps=5.0)
    fills = b.submit([order("A", 10, "buy"), order("B", 4, "sell", 50.0)], t=1, prices={"A": 100.0})
    buy, sell = fills
    assert buy == {"symbol": "A", "qty": 10.0, "side": "buy", "price": pytest.approx(100.1, abs=1e-12),
                   "commission": pytest.approx(10 * 100.1 * 5e-4, abs=1e-12),
                   "slippage": pytest.approx(10 * 0.1, abs=1e-12)}
    assert sell["qty"] == -4.0 and sell["price"] == pytest.approx(49.95, abs=1e-12)  # no price given: ref_price
    assert sell["commission"] == pytest.approx(4 * 49.95 * 5e-4, abs=1e-12)
    cash = 10_000 - 10 * 100.1 - buy["commission"] + 4 * 49.95 - sell["commission"]
    acc = b.account(1)
    assert acc["cash"] == pytest.approx(cash, abs=1e-9)
    assert acc["positions"] == {"A": 10.0, "B": -4.0}
    # marked at the reference prices: 10 * 100 - 4 * 50
    assert acc["equity"] == pytest.approx(cash + 1000.0 - 200.0, abs=1e-9)
    assert acc["gross"] == pytest.approx(1200.0, abs=1e-9)
    assert acc["traded"] == pytest.approx(10 * 100.1 + 4 * 49.95, abs=1e-9)
    assert acc["t"] == 1


def test_paper_average_cost_pnl_identity() -> None:
    b = PaperBroker(capital=1_000.0, slippage_bps=3.0, commission_bps=2.0)
    b.submit([order("X", 10, "buy")], 1, {"X": 10.0})
    b.submit([order("X", 10, "buy")], 2, {"X": 12.0})  # average cost ~11
    b.mark(3, {"X": 15.0})
    b.submit([order("X", 25, "sell")], 4, {"X": 14.0})  # closes 20, opens 5 short at the fill price
    acc = b.account()
    assert acc["positions"] == {"X": -5.0}
    p1, p2, p3 = 10 * 1.0003, 12 * 1.0003, 14 * 0.9997
    assert acc["realized_pnl"] == pytest.approx(20 * (p3 - (p1 + p2) / 2), abs=1e-9)
    assert acc["unrealized_pnl"] == pytest.approx(-5 * (14.0 - p3), abs=1e-9)
    assert acc["equity"] - 1_000.0 == pytest.approx(acc["realized_pnl"] + acc["unrealized_pnl"] - acc["commission"],
                                                    abs=1e-9)
    b.submit([order("X", 5, "buy")], 5, {"X": 13.0})
    acc = b.account()
    assert acc["positions"] == {} and acc["unrealized_pnl"] == 0.0
    assert acc["equity"] == pytest.approx(acc["cash"], abs=1e-12)
    assert acc["pnl"] == pytest.approx(acc["realized_pnl"] - acc["commission"], abs=1e-9)


def test_paper_rejects_bad_orders_and_prices() -> None:
    b = PaperBroker(allow_short=False)
    bad = [order("A", -1, "buy"), order("A", math.nan, "buy"), order("A", 1, "hold"), {"qty": 1}, "junk",
           order("A", 1, "buy", ref=math.nan), order("A", 1, "sell")]
    assert b.submit(bad, 1, {"A": -5.0}) == []
    assert b.summary()["rejected"] == len(bad)
    b.mark(2, {"A": math.nan, "B": -1.0, "C": "x", "D": 2.0})  # type: ignore[dict-item]
    assert b.summary()["bad_marks"] == 3
    assert b.account()["equity"] == 1_000_000.0


def test_broker_registry() -> None:
    assert resolve_broker("paper") is PaperBroker
    assert BROKERS["alpaca"] == "nodes.execution.alpaca:AlpacaBroker"
    assert resolve_broker("tests.unit.test_execution:RecordingBroker") is RecordingBroker
    with pytest.raises(ValueError, match="unknown broker"):
        resolve_broker("nope")
    with pytest.raises(ValueError, match="not a nodes.execution.broker.Broker"):
        resolve_broker("nodes.execution.paper:_price")
    assert isinstance(load_broker("paper", {"capital": 5.0}), PaperBroker)


# -- the node ---------------------------------------------------------------------------------

def test_run_node_fills_and_accounts() -> None:
    msgs = [
        {"t": 1, "orders": [order("A", 10, "buy")], "prices": {"A": 100.0}},
        {"t": 2, "orders": [], "prices": {"A": 110.0}},
    ]
    out = run_node(Execution, params={"broker_params": {"capital": 10_000.0, "commission_bps": 10.0}},
                   inputs=[("orders", m) for m in msgs])
    assert len(out["fills"]) == 1 and out["fills"][0]["t"] == 1
    fill = out["fills"][0]["fills"][0]
    assert fill["qty"] == 10.0 and fill["price"] == 100.0 and fill["commission"] == pytest.approx(1.0)
    a1, a2 = out["account"]
    assert (a1["t"], a2["t"]) == (1, 2)
    assert a1["equity"] == pytest.approx(9_999.0) and a2["equity"] == pytest.approx(10_099.0)  # marked daily
    assert a2["positions"] == {"A": 10.0}


def test_per_event_limit_queues_fifo() -> None:
    node, ctx = make({"max_orders_per_event": 2})
    node.on_orders({"t": 1, "orders": [order("A", 1, "buy"), order("B", 1, "buy"), order("C", 1, "buy")],
                    "prices": {"A": 10.0, "B": 20.0, "C": 30.0}}, ctx)
    assert [f["symbol"] for f in ctx.out["fills"][0]["fills"]] == ["A", "B"]
    node.on_orders({"t": 2, "orders": [order("D", 1, "buy"), order("E", 1, "buy")],
                    "prices": {"C": 31.0, "D": 40.0, "E": 50.0}}, ctx)
    second = ctx.out["fills"][1]["fills"]
    assert [f["symbol"] for f in second] == ["C", "D"]  # the queued one first, at today's price
    assert second[0]["price"] == 31.0
    s = node.summary()
    assert (s["orders_received"], s["orders_submitted"], s["orders_queued"], s["orders_queued_now"]) == (5, 4, 2, 1)
    node.teardown(ctx)


def test_per_event_limit_rejects() -> None:
    node, ctx = make({"max_orders_per_event": 1, "on_excess": "reject"})
    node.on_orders({"t": 1, "orders": [order("A", 1, "buy"), order("B", 1, "buy"), order("C", 1, "buy")]}, ctx)
    s = node.summary()
    assert s["orders_submitted"] == 1 and s["orders_rejected_rate"] == 2 and s["orders_queued_now"] == 0
    assert s["broker_fills"] == 1


def test_queue_bound() -> None:
    node, ctx = make({"max_orders_per_event": 1, "max_queue": 1})
    node.on_orders({"t": 1, "orders": [order(s, 1, "buy") for s in "ABCD"]}, ctx)
    s = node.summary()
    assert (s["orders_submitted"], s["orders_queued_now"], s["orders_rejected_queue_full"]) == (1, 1, 2)
    assert s["orders_queued"] == 1
    node.on_orders({"t": 2, "orders": []}, ctx)
    assert [f["symbol"] for f in ctx.out["fills"][1]["fills"]] == ["B"]


def test_per_second_bucket_and_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(execution_module.time, "monotonic", lambda: clock[0])
    node, ctx = make({"max_orders_per_second": 2.0})
    node.on_orders({"t": 5, "orders": [order(s, 1, "buy") for s in "ABCDE"], "prices": {"A": 1.0}}, ctx)
    assert len(ctx.out["fills"][0]["fills"]) == 2  # the bucket holds one second's worth
    node.on_drain(ctx)  # no time has passed: nothing to send
    assert len(ctx.out["fills"]) == 1
    clock[0] += 1.0
    node.on_drain(ctx)
    assert [f["symbol"] for f in ctx.out["fills"][1]["fills"]] == ["C", "D"]
    assert ctx.event_times["fills"][1] == 5 and ctx.out["account"][-1]["t"] == 5
    clock[0] += 10.0
    node.on_drain(ctx)  # the bucket is capped at its size, and only E is left
    assert [f["symbol"] for f in ctx.out["fills"][2]["fills"]] == ["E"]
    assert node.summary()["orders_submitted"] == 5


def test_bad_input_is_skipped_and_counted() -> None:
    node, ctx = make()
    node.on_orders({"t": 3, "orders": [order("A", 1, "buy"), {"symbol": "B"}, "junk", order("C", 0, "sell"),
                                       order("D", True, "buy"), order("E", 2, "sell", ref=math.nan)],
                    "prices": {"A": 10.0}}, ctx)
    node.on_orders({"t": 3, "orders": [order("A", 1, "buy")]}, ctx)  # duplicate event time
    node.on_orders({"t": 2, "orders": [order("A", 1, "buy")]}, ctx)  # out of order
    node.on_orders({"orders": []}, ctx)  # no event time
    node.on_orders("junk", ctx)  # type: ignore[arg-type]
    node.on_orders({"t": 4, "orders": "junk", "prices": None}, ctx)
    s = node.summary()
    assert s["orders_invalid"] == 5 and s["broker_rejected"] == 1 and s["fills"] == 1  # E: no usable price
    assert (s["duplicates"], s["out_of_order"], s["bad_messages"]) == (1, 1, 2)
    assert [a["t"] for a in ctx.out["account"]] == [3, 4]


def test_params_check_the_broker() -> None:
    with pytest.raises(ValidationError, match="capitol"):
        Execution.Params(broker_params={"capitol": 1})
    with pytest.raises(ValidationError, match="unknown broker"):
        Execution.Params(broker="nope")
    with pytest.raises(ValidationError, match="cannot be imported"):
        Execution.Params(broker="no_such_package.module:Broker")


class RecordingBroker(Broker):
    """A second broker, as a user's would drop in: records orders, fills asynchronously."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.seen: list[tuple[int, str]] = []
        self.pending: list[dict[str, Any]] = []

    def submit(self, orders: Any, t: int, prices: Any = None) -> list[Any]:
        for o in orders:
            self.seen.append((t, o["symbol"]))
            sign = 1.0 if o["side"] == "buy" else -1.0
            self.pending.append({"symbol": o["symbol"], "qty": sign * o["qty"], "side": o["side"],
                                 "price": o["ref_price"], "commission": 0.0, "slippage": 0.0})
        return []

    def poll(self, t: int | None = None) -> list[Any]:
        out, self.pending = self.pending, []
        return out

    def mark(self, t: int, prices: Any) -> None:
        pass

    def account(self, t: int | None = None) -> Any:
        return {"t": t, "equity": 1.0, "cash": 1.0, "positions": {}, "gross": 0.0, "pnl": 0.0, "tag": self.tag}


def test_a_second_broker_drops_in() -> None:
    out = run_node(Execution, params={"broker": "tests.unit.test_execution:RecordingBroker",
                                      "broker_params": {"tag": "x"}},
                   inputs=[("orders", {"t": 1, "orders": [order("A", 2, "sell")]})])
    assert out["fills"][0]["fills"][0]["qty"] == -2.0  # returned by poll
    assert out["account"][0]["tag"] == "x"

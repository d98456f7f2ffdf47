"""The ``PortfolioOptimizer`` node: target weights -> the orders that reach them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output
from nodes.support import RateLimitedLog, event_time_of

__all__ = ["PortfolioOptimizer", "round_lot"]


def round_lot(qty: float, lot: float) -> float:
    """``qty`` rounded to the nearest multiple of ``lot`` (halves away from zero); 0 keeps it."""
    if lot <= 0:
        return qty
    n = math.floor(abs(qty) / lot + 0.5)
    return math.copysign(n * lot, qty) if n else 0.0


def _price(value: Any) -> float:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return math.nan
    return p if 0 < p < math.inf else math.nan


class PortfolioOptimizer(Node):
    """Keeps a book of holdings and turns each Targets message into Orders.

    Why: the risk layer speaks in weights of equity; a broker needs quantities. This node
    owns that conversion and the trading discipline around it (rebalance threshold, lots),
    so risk stays a pure function of signals and the broker stays a pure executor.

    For each symbol of a Targets message: ``target_qty = round_lot(weight * equity /
    close)``, with ``close`` carried by the Targets (the RiskManager copies it from the
    Signals, so no second join is needed) and ``equity`` the book's cash plus holdings at
    their latest close. Only symbols with a usable close today trade (one without keeps
    its holding, counted). A trade happens when ``|weight - current_weight| >=
    rebalance_threshold`` and the rounded quantity changes; it is assumed filled at
    ``close`` (the book updates at once, so the next event time starts from it).

    When ``killed`` is true every holding is closed, ignoring the threshold. A symbol
    absent from a Targets message keeps its holding unless ``close_missing`` is set. An
    optional ``account`` input (a feedback edge from the Execution node) replaces the
    book's cash and quantities with the broker's when ``use_account`` is on (live
    trading: fees and rejections reconcile); off by default because when an Account
    arrives relative to the next Targets depends on the wall clock, and a backtest must
    not.

    Every Targets message gives one Orders message, even without orders: its ``prices``
    (the close of every priced symbol) let the Execution node mark the account daily.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        capital: float = Field(1_000_000.0, gt=0, description="starting cash of the book (match the broker's)")
        rebalance_threshold: float = Field(
            0.0, ge=0, description="skip a trade when |target weight - current weight| is below this")
        lot_size: float = Field(0.0, ge=0, description="round quantities to multiples of this; 0: fractional")
        close_missing: bool = Field(False, description="close holdings of symbols a Targets message leaves out")
        use_account: bool = Field(False, description="take cash and positions from the account input (live)")

    targets = Input(dict, doc="Targets: t, symbols, weight, killed, close")
    account = Input(dict, optional=True, doc="Account feedback from the Execution node (live reconciliation)")
    orders = Output(dict, doc="Orders: t, orders [{symbol, qty, side, ref_price}], prices, equity")

    def setup(self, ctx: Any) -> None:
        self.p = ctx.params
        self.log = RateLimitedLog(ctx.log)
        self.cash = float(self.p.capital)
        self.qty: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.last_t: int | None = None
        self.account_seen: Mapping[str, Any] | None = None
        self.counts = dict.fromkeys(
            ("messages", "emitted", "orders", "bad_messages", "out_of_order", "duplicates", "bad_weight", "no_price",
             "below_threshold", "no_equity", "accounts", "bad_accounts", "kill_flattens"), 0)

    # -- inputs ----------------------------------------------------------------------------
    def on_account(self, account: dict, ctx: Any) -> None:
        """Remember the broker's latest account; used at the next Targets when ``use_account``."""
        positions = account.get("positions") if isinstance(account, Mapping) else None
        cash = account.get("cash") if isinstance(account, Mapping) else None
        if not isinstance(positions, Mapping) or not isinstance(cash, float | int) or not math.isfinite(cash):
            self.counts["bad_accounts"] += 1
            self.log.warning("account", "ignored a malformed Account message")
            return
        self.counts["accounts"] += 1
        self.account_seen = account

    def on_targets(self, msg: dict, ctx: Any) -> None:
        c, p = self.counts, self.p
        c["messages"] += 1
        t = event_time_of(msg, ctx)
        if t is None or not isinstance(msg, Mapping):
            return self._bad("a Targets message without an event time")
        if self.last_t is not None and t <= self.last_t:
            c["duplicates" if t == self.last_t else "out_of_order"] += 1
            self.log.warning("order", "skipped Targets at t=%d: already at t=%d", t, self.last_t)
            return None
        symbols, weights, closes = msg.get("symbols"), msg.get("weight"), msg.get("close")
        if not (isinstance(symbols, Sequence) and isinstance(weights, Sequence) and isinstance(closes, Sequence)
                and len(symbols) == len(weights) == len(closes)):
            return self._bad(f"a Targets message whose symbols, weight and close do not match at t={t}")
        self.last_t = t
        if p.use_account and self.account_seen is not None:
            self._sync(self.account_seen)
        last = self.last
        prices: dict[str, float] = {}
        for s, px in zip(symbols, closes, strict=True):
            price = _price(px)
            if price == price and isinstance(s, str):
                last[s] = prices[s] = price
        equity = self.equity()
        orders: list[dict[str, Any]] = []
        killed = bool(msg.get("killed"))
        if not (equity > 0 and math.isfinite(equity)):
            c["no_equity"] += 1
            self.log.warning("equity", "no orders at t=%d: the book's equity is %r", t, equity)
        else:
            wanted: dict[str, float] = {}
            for s, w in zip(symbols, weights, strict=True):
                if not isinstance(s, str):
                    c["bad_weight"] += 1
                    continue
                try:
                    wf = 0.0 if killed else float(w)
                except (TypeError, ValueError):
                    wf = math.nan
                if wf != wf or abs(wf) == math.inf:
                    c["bad_weight"] += 1
                    self.log.warning("weight", "kept %s at t=%d: its target weight is %r", s, t, w)
                    continue
                wanted[s] = wf
            absent = [s for s in self.qty if s not in wanted] if killed or p.close_missing else []
            if killed and self.qty:
                c["kill_flattens"] += 1
            for s, w in wanted.items():  # only at today's price: a symbol without one keeps its holding
                order = self._order(s, w, prices.get(s), equity, force=killed)
                if order is not None:
                    orders.append(order)
            for s in absent:  # closed at the last price known: there is none today
                order = self._order(s, 0.0, last.get(s), equity, force=True)
                if order is not None:
                    orders.append(order)
        for s in self.qty:  # holdings not priced today are marked at their last price
            if s not in prices and s in last:
                prices[s] = last[s]
        c["orders"] += len(orders)
        c["emitted"] += 1
        ctx.emit("orders", {"t": t, "orders": orders, "prices": prices, "equity": equity})
        return None

    # -- the book --------------------------------------------------------------------------
    def equity(self) -> float:
        """Cash plus holdings at their latest price (a holding is only ever bought at a price)."""
        eq = self.cash
        last = self.last
        for s, q in self.qty.items():
            eq += q * last.get(s, 0.0)
        return eq

    def _order(self, s: str, w: float, price: float | None, equity: float, force: bool) -> dict[str, Any] | None:
        held = self.qty.get(s, 0.0)
        if price is None:
            if w != 0.0 or held:
                self.counts["no_price"] += 1
                self.log.warning("price", "no order for %s: no usable price", s)
            return None
        current_w = held * price / equity
        if not force and abs(w - current_w) < self.p.rebalance_threshold:
            self.counts["below_threshold"] += 1
            return None
        target = round_lot(w * equity / price, self.p.lot_size)
        delta = target - held
        if delta == 0.0 or abs(delta) <= 1e-12 * max(abs(target), abs(held)):
            return None
        self.cash -= delta * price
        if target == 0.0:
            self.qty.pop(s, None)
        else:
            self.qty[s] = target
        return {"symbol": s, "qty": abs(delta), "side": "buy" if delta > 0 else "sell", "ref_price": price}

    def _sync(self, account: Mapping[str, Any]) -> None:
        """Take the broker's cash and quantities as the book's."""
        self.cash = float(account["cash"])
        qty: dict[str, float] = {}
        for s, q in account["positions"].items():
            try:
                qf = float(q)
            except (TypeError, ValueError):
                continue
            if qf and math.isfinite(qf) and isinstance(s, str):
                qty[s] = qf
        self.qty = qty

    def _bad(self, what: str) -> None:
        self.counts["bad_messages"] += 1
        self.log.warning("bad", "skipped %s", what)
        return None

    def summary(self) -> dict[str, float | int]:
        """Counters and the book's state, for the launch report."""
        if not hasattr(self, "counts"):  # asked before setup
            return {}
        out: dict[str, float | int] = dict(self.counts)
        eq = self.equity()
        out.update(book_cash=self.cash, book_equity=eq if math.isfinite(eq) else 0.0, book_positions=len(self.qty))
        return out

"""The paper broker: the embedded default of the ``Execution`` node, deterministic.

Every valid order fills in full at once, at the reference price (the symbol's latest price
handed to ``submit``, else the order's ``ref_price``) moved against the trader by
``slippage_bps``, and pays ``commission_bps`` of the filled notional. The account keeps
cash, quantities, average costs and the last price of every symbol; ``mark`` revalues it
on every new price. PnL uses average-cost accounting, so at any time

    equity - capital == realized_pnl + unrealized_pnl - commission

(slippage is inside the fill prices, hence inside realised and unrealised PnL; it is also
reported on its own).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nodes.support import RateLimitedLog

from .broker import Account, Broker, Fill, account_of

__all__ = ["PaperBroker"]

_SIDES = {"buy": 1.0, "sell": -1.0}


def _price(value: Any) -> float:
    """A usable price as float, or NaN (None, non-numbers, NaN, inf, <= 0)."""
    try:
        p = float(value)
    except (TypeError, ValueError):
        return math.nan
    return p if p > 0 and p != math.inf else math.nan


class PaperBroker(Broker):
    """Simulated fills with slippage and commission in bps; cash, positions, equity, PnL."""

    name = "paper"

    class Config(BaseModel):
        """``broker_params`` of the Execution node when ``broker: paper``."""

        model_config = ConfigDict(extra="forbid")
        capital: float = Field(1_000_000.0, gt=0, description="starting cash, in account currency")
        slippage_bps: float = Field(0.0, ge=0, description="fill price moved against the order by this many bps")
        commission_bps: float = Field(0.0, ge=0, description="commission in bps of the filled notional")
        allow_short: bool = Field(True, description="false rejects sells beyond the quantity held")

    def __init__(self, capital: float = 1_000_000.0, slippage_bps: float = 0.0, commission_bps: float = 0.0,
                 allow_short: bool = True, log: logging.Logger | None = None) -> None:
        self.capital = float(capital)
        self.slip = float(slippage_bps) / 1e4
        self.comm = float(commission_bps) / 1e4
        self.allow_short = allow_short
        self.cash = self.capital
        self.qty: dict[str, float] = {}
        self.avg_cost: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.realized = 0.0
        self.commission = 0.0
        self.slippage = 0.0
        self.traded = 0.0  # cumulative filled notional
        self.t: int | None = None
        self.fills = 0
        self.rejected = 0
        self.bad_marks = 0
        self._log = RateLimitedLog(log or logging.getLogger("dmnflow.broker.paper"))

    # -- orders --------------------------------------------------------------------------
    def submit(self, orders: Sequence[Mapping[str, Any]], t: int,
               prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Fill every valid order in full, in the order given; reject (count) the rest."""
        self.t = t
        fills: list[Fill] = []
        for order in orders:
            fill = self._fill(order, prices)
            if fill is not None:
                fills.append(fill)
        return fills

    def _fill(self, order: Mapping[str, Any], prices: Mapping[str, float] | None) -> Fill | None:
        if type(order) is dict or isinstance(order, Mapping):
            symbol, sign = order.get("symbol"), _SIDES.get(order.get("side"))  # type: ignore[arg-type]
        else:
            symbol, sign = None, None
        try:
            qty = float(order["qty"])  # type: ignore[index]
        except (TypeError, ValueError, KeyError, IndexError):
            qty = math.nan
        if not isinstance(symbol, str) or sign is None or not (qty > 0 and qty != math.inf):
            return self._reject("malformed", "rejected a malformed order %r", order)
        ref = _price(prices.get(symbol)) if prices else math.nan
        if ref != ref:
            ref = _price(order.get("ref_price"))
        if ref != ref:
            return self._reject("no_price", "rejected an order for %s: no usable price", symbol)
        held = self.qty.get(symbol, 0.0)
        if not self.allow_short and sign < 0 and qty > held + 1e-12 * max(1.0, held):
            return self._reject("short", "rejected a sell of %s %s: holds %s and shorting is off", qty, symbol, held)
        price = ref * (1.0 + sign * self.slip)
        signed = sign * qty
        notional = qty * price
        commission = notional * self.comm
        slippage = qty * abs(price - ref)
        self.cash -= signed * price + commission
        self.commission += commission
        self.slippage += slippage
        self.traded += notional
        self._book(symbol, held, signed, price)
        self.last[symbol] = ref
        self.fills += 1
        return {"symbol": symbol, "qty": signed, "side": "buy" if sign > 0 else "sell", "price": price,
                "commission": commission, "slippage": slippage}

    def _book(self, symbol: str, held: float, signed: float, price: float) -> None:
        """Average-cost update of the position and the realised PnL."""
        new = held + signed
        if abs(new) <= 1e-12 * max(abs(held), abs(signed)):
            new = 0.0
        avg = self.avg_cost.get(symbol, 0.0)
        if held == 0.0 or (held > 0) == (signed > 0):  # opening or adding
            avg = (avg * abs(held) + price * abs(signed)) / abs(new) if new else 0.0
        else:  # reducing, closing or crossing through zero
            closed = min(abs(signed), abs(held))
            self.realized += (price - avg) * closed * (1.0 if held > 0 else -1.0)
            if new == 0.0:
                avg = 0.0
            elif (new > 0) != (held > 0):  # crossed: the rest opens at this price
                avg = price
        if new == 0.0:
            self.qty.pop(symbol, None)
            self.avg_cost.pop(symbol, None)
        else:
            self.qty[symbol] = new
            self.avg_cost[symbol] = avg

    def _reject(self, key: str, msg: str, *args: Any) -> None:
        self.rejected += 1
        self._log.warning(f"paper:{key}", msg, *args)
        return None

    # -- prices and account --------------------------------------------------------------
    def mark(self, t: int, prices: Mapping[str, float]) -> None:
        """Take every usable price as the symbol's last; unusable ones are counted."""
        self.t = t
        last = self.last
        for symbol, value in prices.items():
            p = _price(value)
            if p == p:
                last[symbol] = p
            else:
                self.bad_marks += 1

    def equity(self) -> float:
        """Cash plus every position at its last price."""
        return self.cash + sum(q * self.last[s] for s, q in self.qty.items())

    def account(self, t: int | None = None) -> Account:
        """The Account message (positions sorted by symbol, so it is the same on every run)."""
        return account_of(self.t if t is None else t, self.cash, self.qty, self.last, self.avg_cost, self.capital,
                          commission=self.commission, slippage=self.slippage, traded=self.traded,
                          realized=self.realized)

    def positions(self) -> dict[str, float]:
        return {s: self.qty[s] for s in sorted(self.qty)}

    def summary(self) -> dict[str, float | int]:
        return {"fills": self.fills, "rejected": self.rejected, "bad_marks": self.bad_marks,
                "commission": self.commission, "slippage": self.slippage, "traded": self.traded}

"""The broker interface the ``Execution`` node talks to, and how a broker is chosen by name.

A broker takes orders (the ``orders`` list of an Orders message, see docs/dmn/messages.md)
and returns fills; it owns the account (cash, positions, equity, PnL). The paper broker
(``nodes.execution.paper:PaperBroker``) is the embedded default; a live broker (Alpaca,
``nodes.execution.alpaca``) implements the same base class, so the ``Execution`` node switches
between them with one param (``broker: paper | alpaca | package.module:Class``) and passes
``broker_params`` to its constructor.

Conventions every broker follows:

- An order is ``{"symbol": str, "qty": float > 0, "side": "buy" | "sell", "ref_price": float}``
  (extra keys are ignored).
- A fill is ``{"symbol", "qty", "side", "price", "commission", "slippage"}``: ``qty`` is
  signed (positive bought, negative sold), ``price`` the executed price, ``commission`` and
  ``slippage`` costs in account currency, both >= 0 (``slippage`` = ``|qty| * |price -
  ref_price|``).
- ``account(t)`` returns the Account message: ``t, equity, cash, positions: {symbol: qty},
  gross`` (sum of ``|qty * price|``, in account currency), ``pnl`` (equity minus starting
  capital), plus what the broker knows: ``leverage`` (gross / equity), ``realized_pnl``,
  ``unrealized_pnl``, ``commission``, ``slippage``, ``traded`` (cumulative filled notional,
  which the Performance node turns into turnover).
- Brokers whose fills arrive later (a live venue) return what is already filled from
  ``submit`` and the rest from ``poll``; the paper broker fills everything in ``submit``.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypedDict

from pydantic import BaseModel

__all__ = ["BROKERS", "Account", "Broker", "Fill", "Order", "account_of", "load_broker", "resolve_broker"]


class Order(TypedDict):
    """One order as it travels in an Orders message (``qty`` is always positive)."""

    symbol: str
    qty: float
    side: str
    ref_price: float


class Fill(TypedDict):
    """One execution as it travels in a Fills message (``qty`` signed: + bought, - sold)."""

    symbol: str
    qty: float
    side: str
    price: float
    commission: float
    slippage: float


class Account(TypedDict, total=False):
    """The Account message. The first six keys are always present."""

    t: int
    equity: float
    cash: float
    positions: dict[str, float]
    gross: float
    pnl: float
    leverage: float
    realized_pnl: float
    unrealized_pnl: float
    commission: float
    slippage: float
    traded: float


class Broker(ABC):
    """What the ``Execution`` node needs from a broker.

    Subclasses are built from the node's ``broker_params`` mapping as keyword arguments
    (``from_config``); a broker that sets ``Config`` (a pydantic model, ``extra="forbid"``)
    has ``broker_params`` checked against it when the graph is compiled, and gets the
    validated fields as keyword arguments. Override ``from_config`` when a broker needs more
    (keys from the environment, a client object). A broker must not raise on a single bad
    order: it rejects it (not in the returned fills) and counts it in ``summary()``.

    ``env`` names the secret environment variables the broker reads (its API keys): the
    Execution node declares them for its worker, which gets no other secret (``dmnflow.Node.env``).
    """

    name: ClassVar[str] = "broker"
    Config: ClassVar[type[BaseModel] | None] = None
    env: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Broker:
        """A broker built from the ``broker_params`` of the Execution node."""
        if cls.Config is not None:
            return cls(**cls.Config.model_validate(dict(config)).model_dump())
        return cls(**dict(config))

    @abstractmethod
    def submit(self, orders: Sequence[Mapping[str, Any]], t: int,
               prices: Mapping[str, float] | None = None) -> list[Fill]:
        """Send ``orders`` decided at event time ``t``; return the fills known now.

        ``prices`` are the latest reference prices by symbol (a paper broker fills at
        them; a live broker may ignore them). Orders for symbols without a usable price
        are rejected, not raised.
        """

    def poll(self, t: int | None = None) -> list[Fill]:
        """Fills that arrived since the last call (asynchronous venues); none by default."""
        return []

    @abstractmethod
    def mark(self, t: int, prices: Mapping[str, float]) -> None:
        """Mark positions to market at ``prices`` (called on every new price)."""

    @abstractmethod
    def account(self, t: int | None = None) -> Account:
        """The account now, as an Account message for event time ``t``."""

    def positions(self) -> dict[str, float]:
        """Held quantity per symbol (non-zero only)."""
        return dict(self.account().get("positions", {}))

    def summary(self) -> dict[str, float | int]:
        """Counters for the launch report (plain JSON-able numbers)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once at the node's teardown."""


# Short names the ``broker`` param accepts; anything else must be ``package.module:Class``.
BROKERS: dict[str, str] = {
    "paper": "nodes.execution.paper:PaperBroker",
    "alpaca": "nodes.execution.alpaca:AlpacaBroker",
}


def account_of(t: int, cash: float, qty: Mapping[str, float], last: Mapping[str, float],
               cost: Mapping[str, float], capital: float, *, commission: float, slippage: float, traded: float,
               realized: float | None = None) -> Account:
    """The Account of a book: holdings marked at ``last`` (positions sorted by symbol, so it is
    the same on every run). ``realized`` defaults to what the rest implies:
    pnl = realized + unrealized - commission."""
    gross = unrealized = value = 0.0
    for s, q in qty.items():
        p = last.get(s, math.nan)
        value += q * p
        gross += abs(q * p)
        unrealized += q * (p - cost.get(s, p))
    equity = cash + value
    pnl = equity - capital
    return {
        "t": t,
        "equity": equity,
        "cash": cash,
        "positions": {s: qty[s] for s in sorted(qty)},
        "gross": gross,
        "pnl": pnl,
        "leverage": gross / equity if equity > 0 else math.nan,
        "realized_pnl": realized if realized is not None else pnl - unrealized + commission,
        "unrealized_pnl": unrealized,
        "commission": commission,
        "slippage": slippage,
        "traded": traded,
    }


def resolve_broker(name: str) -> type[Broker]:
    """The broker class for a short name (``paper``, ``alpaca``) or ``module:Class`` path.

    Raises:
        ValueError: the name is neither a known short name nor a ``module:Class`` path,
            or the class is not a ``Broker``.
        ImportError: the module cannot be imported.
    """
    target = BROKERS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"unknown broker {name!r}: use one of {sorted(BROKERS)} or 'package.module:Class'")
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Broker)):
        raise ValueError(f"broker {name!r} ({target}) is not a nodes.execution.broker.Broker subclass")
    return cls


def load_broker(name: str, config: Mapping[str, Any] | None = None) -> Broker:
    """Build the broker named ``name`` with ``config`` (the node's ``broker_params``)."""
    return resolve_broker(name).from_config(config or {})

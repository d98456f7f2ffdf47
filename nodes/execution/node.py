"""The ``Execution`` node: rate-limits orders and hands them to a broker; emits Fills and Account."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from numbers import Real
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from dmnflow import Input, Node, Output
from nodes.support import RateLimitedLog, event_time_of

from .broker import Broker, load_broker, resolve_broker

__all__ = ["Execution"]

_SIDES = ("buy", "sell")


class Execution(Node):
    """Sends each Orders message's orders to a broker, within an order-rate limit.

    Why a node of its own: the broker (paper or live) is swapped by one param, and the
    limit that protects the venue sits in one place whatever produced the orders. Every
    Orders message first marks the account to its ``prices`` (so equity is current even
    on days without trades), then submits; the node emits one Fills message per event time
    with fills and one Account message per Orders message.

    Rate limits: ``max_orders_per_event`` (orders per event time: deterministic, for
    backtests) and ``max_orders_per_second`` (a token bucket on the wall clock: live only).
    Orders beyond a limit are queued (``on_excess: queue``, first in first out, sent before
    newer orders at the next event time or ``drain`` timer tick, at most ``max_queue``) or
    rejected (``on_excess: reject``); both are counted.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        broker: str = Field("paper", description="paper, alpaca, or a 'package.module:Class' Broker subclass")
        broker_params: dict[str, Any] = Field(
            default_factory=dict,
            description="keyword arguments of the broker (paper: capital, slippage_bps, commission_bps, allow_short)")
        max_orders_per_event: int | None = Field(None, ge=1, description="orders sent per event time; none: no limit")
        max_orders_per_second: float | None = Field(
            None, gt=0, description="orders per wall-clock second (token bucket; live only, not deterministic)")
        burst: int | None = Field(None, ge=1, description="token bucket size; none: one second's worth (at least 1)")
        on_excess: Literal["queue", "reject"] = Field("queue", description="what happens to orders over a limit")
        max_queue: int = Field(10_000, ge=0, description="orders held back at most; more are rejected")

        # field validators (not a model validator), so an error points at the YAML key
        @field_validator("broker")
        @classmethod
        def _known_broker(cls, name: str) -> str:
            try:
                resolve_broker(name)  # an unknown broker is a compile-time error
            except ImportError as exc:
                raise ValueError(f"broker {name!r} cannot be imported: {exc}") from None
            return name

        @field_validator("broker_params")
        @classmethod
        def _broker_params(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
            name = info.data.get("broker")
            broker = resolve_broker(name) if name else None
            if broker is not None and broker.Config is not None:
                try:
                    broker.Config.model_validate(value)
                except ValidationError as exc:
                    errors = exc.errors()
                    problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                                         for e in errors)
                    known = ", ".join(broker.Config.model_fields)
                    unknown = any(e["type"] == "extra_forbidden" for e in errors)
                    raise ValueError(f"broker_params for broker {name!r}: {problems}"
                                     + (f" (known: {known})" if unknown else "")) from None
            return value

    @classmethod
    def environment(cls, params: BaseModel) -> tuple[str, ...]:
        """The broker's keys (``Broker.env``): only this node's worker gets them."""
        try:
            return tuple(resolve_broker(params.broker).env)  # type: ignore[attr-defined]
        except (ImportError, ValueError):  # reported by the Params validator
            return ()

    orders = Input(dict, doc="Orders: t, orders [{symbol, qty, side, ref_price}], prices {symbol: price}")
    fills = Output(dict, doc="Fills: t, fills [{symbol, qty (signed), side, price, commission, slippage}]")
    account = Output(dict, doc="Account: t, equity, cash, positions, gross, pnl, ...")

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.p = p
        self.broker: Broker = load_broker(p.broker, p.broker_params)
        self.log = RateLimitedLog(ctx.log)
        self.queue: deque[dict[str, Any]] = deque()
        self.last_t: int | None = None
        self.sent_this_event = 0
        self.capacity = float(p.burst or max(1.0, p.max_orders_per_second or 1.0))
        self.tokens = self.capacity
        self.refilled = time.monotonic()
        self.last_prices: Mapping[str, float] = {}
        self.counts = dict.fromkeys(
            ("messages", "orders_received", "orders_submitted", "orders_invalid", "orders_queued",
             "orders_rejected_rate", "orders_rejected_queue_full", "fills", "out_of_order", "duplicates",
             "bad_messages"), 0)

    # -- handlers ------------------------------------------------------------------------
    def on_orders(self, msg: dict, ctx: Any) -> None:
        c = self.counts
        c["messages"] += 1
        t = event_time_of(msg, ctx)
        if t is None or not isinstance(msg, Mapping):
            c["bad_messages"] += 1
            self.log.warning("bad", "skipped an Orders message without an event time: %.200r", msg)
            return
        if self.last_t is not None and t <= self.last_t:
            c["duplicates" if t == self.last_t else "out_of_order"] += 1
            self.log.warning("order", "skipped Orders for t=%d: already at t=%d", t, self.last_t)
            return
        self.last_t, self.sent_this_event = t, 0
        prices = msg.get("prices")
        if isinstance(prices, Mapping):
            self.broker.mark(t, prices)
            self.last_prices = prices
        else:
            prices = None
        orders = msg.get("orders")
        added = self._enqueue(orders if isinstance(orders, list) else [orders]) if orders else 0
        fills = self._dispatch(t, prices, added)
        fills.extend(self.broker.poll(t))
        self._emit(t, fills, ctx)

    def on_drain(self, ctx: Any) -> None:
        """Timer (``timers: {drain: 100ms}``): send queued orders the rate limit now allows."""
        if self.last_t is None:
            return
        fills = self._dispatch(self.last_t, self.last_prices, 0) if self.queue else []
        fills.extend(self.broker.poll(self.last_t))
        if fills:
            self._emit(self.last_t, fills, ctx, event_time=self.last_t)

    # -- internals -----------------------------------------------------------------------
    def _enqueue(self, orders: list[Any]) -> int:
        """Valid orders join the queue's tail; how many did."""
        c = self.counts
        before = len(self.queue)
        for order in orders:
            c["orders_received"] += 1
            if not _valid(order):
                c["orders_invalid"] += 1
                self.log.warning("invalid", "skipped an invalid order %.200r", order)
                continue
            self.queue.append(order)
        return len(self.queue) - before

    def _allowed(self) -> int:
        p = self.p
        n = len(self.queue)
        if p.max_orders_per_event is not None:
            n = min(n, p.max_orders_per_event - self.sent_this_event)
        if p.max_orders_per_second is not None:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.refilled) * p.max_orders_per_second)
            self.refilled = now
            n = min(n, int(self.tokens))
        return max(n, 0)

    def _dispatch(self, t: int, prices: Mapping[str, float] | None, added: int) -> list[Any]:
        """Submit what the limits allow from the queue's head; queue or reject the rest.

        ``added`` orders at the queue's tail are new: those left over count as queued.
        """
        p, c, queue = self.p, self.counts, self.queue
        n = self._allowed()
        batch = [queue.popleft() for _ in range(n)]
        self.sent_this_event += n
        if p.max_orders_per_second is not None:
            self.tokens -= n
        if queue:
            if p.on_excess == "reject":
                c["orders_rejected_rate"] += len(queue)
                self.log.warning("rate", "rejected %d orders over the rate limit at t=%d", len(queue), t)
                queue.clear()
            else:
                over = len(queue) - p.max_queue
                for _ in range(over):
                    queue.pop()  # the newest go first
                if over > 0:
                    c["orders_rejected_queue_full"] += over
                    self.log.warning("queue", "queue full: rejected %d orders at t=%d", over, t)
                    added = max(0, added - over)
                c["orders_queued"] += min(len(queue), added)
        c["orders_submitted"] += n
        fills = self.broker.submit(batch, t, prices) if batch else []
        c["fills"] += len(fills)
        return fills

    def _emit(self, t: int, fills: list[Any], ctx: Any, event_time: int | None = None) -> None:
        if fills:
            ctx.emit("fills", {"t": t, "fills": fills}, event_time=event_time)
        ctx.emit("account", self.broker.account(t), event_time=event_time)

    def teardown(self, ctx: Any) -> None:
        if self.queue:
            ctx.log.warning("%d queued orders were never sent (the input ended)", len(self.queue))
        self.broker.close()

    def summary(self) -> dict[str, float | int]:
        """Counters for the launch report, and the broker's own (prefixed ``broker_``)."""
        if not hasattr(self, "counts"):  # asked before setup
            return {}
        out: dict[str, float | int] = dict(self.counts)
        out["orders_queued_now"] = len(self.queue)
        for key, value in self.broker.summary().items():
            out[f"broker_{key}"] = value
        account = self.broker.account()
        for key in ("equity", "cash", "pnl", "gross"):
            value = account.get(key)
            if isinstance(value, float | int) and math.isfinite(value):
                out[f"account_{key}"] = value
        positions = account.get("positions")
        if isinstance(positions, Mapping):  # the dashboard's positions table
            out["positions"] = {str(s): _quantity(p) for s, p in positions.items()}
        return out


def _quantity(position: Any) -> Any:
    """A position's quantity: the number itself, or a position record's ``qty``."""
    return position.get("qty") if isinstance(position, Mapping) else position


def _valid(order: Any) -> bool:
    """An order the broker may be given: a symbol, a side, a positive finite quantity."""
    if type(order) is not dict and not isinstance(order, Mapping):
        return False
    if type(order.get("symbol")) is not str or order.get("side") not in _SIDES:
        return False
    qty = order.get("qty")
    tq = type(qty)
    return (tq is float or tq is int or (isinstance(qty, Real) and tq is not bool)) and 0 < qty < math.inf

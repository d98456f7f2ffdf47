"""What every market-data source and consumer shares: the records, times, topics and the guard.

The message contract is docs/dmn/messages.md: a Bar or a Tick per symbol on topic
``market_data.<SYMBOL>``, or one Panel per day on topic ``market_data``; event times are
int nanoseconds since the epoch (UTC), a daily bar's is midnight UTC of its date.

Sources (the synthetic market, file replay, the ``trendfollowing`` futures, and the live
Polygon/Massive and Alpaca streams) build their records with :func:`make_bar`,
:func:`make_tick` and :func:`make_panel`, and run what they publish through a
:class:`MarketGuard`, which skips and counts bad prices, duplicate and out-of-order records
and unknown symbols, and logs each kind of problem on one rate-limited line.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from nodes.support import RateLimitedLog

__all__ = [
    "DAY_NS", "TOPIC", "MarketGuard", "Pacer", "RateLimitedLog", "day_ns", "day_of", "is_daily", "kind_of",
    "make_bar", "make_panel", "make_tick", "ns_to_date", "parse_date", "topic_for",
]

DAY_NS = 86_400 * 1_000_000_000
"""Nanoseconds in a day: a daily bar's event time is a multiple of it."""

TOPIC = "market_data"
"""The topic of panels, and the prefix of per-symbol topics (``market_data.<SYMBOL>``)."""

_EPOCH = _dt.date(1970, 1, 1)


def topic_for(symbol: str) -> str:
    """The topic a symbol's bars and ticks are published on: ``market_data.<SYMBOL>``."""
    return f"{TOPIC}.{symbol}"


def parse_date(value: str | _dt.date | _dt.datetime | None) -> _dt.date | None:
    """A date from ``YYYY-MM-DD`` text, a date or a datetime (its UTC date); None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC)
        return value.date()
    if isinstance(value, _dt.date):
        return value
    return _dt.date.fromisoformat(str(value)[:10])


def day_ns(date: str | _dt.date | _dt.datetime) -> int:
    """Event time of a daily bar: midnight UTC of ``date`` in int nanoseconds since the epoch."""
    parsed = parse_date(date)
    if parsed is None:
        raise ValueError("day_ns needs a date")
    return (parsed - _EPOCH).days * DAY_NS


def ns_to_date(t: int) -> _dt.date:
    """The UTC date of an event time."""
    return _EPOCH + _dt.timedelta(days=int(t) // DAY_NS)


def day_of(t: int) -> int:
    """The event time of midnight UTC of the day ``t`` falls in (ticks and intraday bars -> their day)."""
    return int(t) - int(t) % DAY_NS


def is_daily(t: int) -> bool:
    """Whether ``t`` is a daily bar's event time (midnight UTC)."""
    return int(t) % DAY_NS == 0


def make_bar(symbol: str, t: int, open: float, high: float, low: float, close: float,  # noqa: A002
             volume: float = 0.0) -> dict[str, Any]:
    """A Bar record (docs/dmn/messages.md): plain Python numbers, so msgpack carries it as is."""
    return {"symbol": symbol, "t": int(t), "open": float(open), "high": float(high), "low": float(low),
            "close": float(close), "volume": float(volume)}


def make_tick(symbol: str, t: int, price: float, size: float = 0.0) -> dict[str, Any]:
    """A Tick record (docs/dmn/messages.md)."""
    return {"symbol": symbol, "t": int(t), "price": float(price), "size": float(size)}


def make_panel(t: int, symbols: Sequence[str], close: Sequence[float] | np.ndarray,
               open: Sequence[float] | np.ndarray | None = None,  # noqa: A002
               high: Sequence[float] | np.ndarray | None = None,
               low: Sequence[float] | np.ndarray | None = None,
               volume: Sequence[float] | np.ndarray | None = None) -> dict[str, Any]:
    """A Panel record: one day's cross-section, ``NaN`` where a symbol has no bar that day.

    Columns are lists of Python floats (``ndarray.tolist()``), which msgpack packs natively.
    """
    panel: dict[str, Any] = {"t": int(t), "symbols": list(symbols), "close": _floats(close)}
    for name, column in (("open", open), ("high", high), ("low", low), ("volume", volume)):
        if column is not None:
            panel[name] = _floats(column)
    return panel


def _floats(column: Sequence[float] | np.ndarray) -> list[float]:
    return np.asarray(column, dtype=np.float64).tolist()


def kind_of(record: Any) -> str | None:
    """``"bar"``, ``"tick"`` or ``"panel"`` for a market-data record, None for anything else."""
    if not isinstance(record, dict):
        return None
    if "symbols" in record and "close" in record:
        return "panel"
    if "symbol" in record:
        if "close" in record:
            return "bar"
        if "price" in record:
            return "tick"
    return None


_COUNTERS = ("accepted", "bad_price", "duplicate", "out_of_order", "unknown_symbol", "malformed")


class MarketGuard:
    """Skips and counts bad market data, per symbol: what every source and consumer runs.

    - ``bad_price``: a close (bar) or price (tick) that is NaN, infinite, zero or negative; or an
      open/high/low that is given but not a positive finite number.
    - ``duplicate``: a bar with the same event time as the symbol's last accepted bar; a tick
      with the same time, price and size as its last accepted tick.
    - ``out_of_order``: an event time before the symbol's last accepted one.
    - ``unknown_symbol``: a symbol outside ``universe`` (when a universe is declared).
    - ``malformed``: a record without a symbol or an integer event time.

    ``summary()`` returns the counters (plain ints), for a node's own ``summary()``.
    """

    def __init__(self, universe: Iterable[str] | None = None, log: logging.Logger | None = None,
                 what: str = "market data", interval_s: float = 10.0) -> None:
        self.universe = None if universe is None else frozenset(universe)
        self.what = what
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self._warn = RateLimitedLog(log or logging.getLogger("dmnflow.market"), interval_s)
        self._last_t: dict[str, int] = {}
        self._last_tick: dict[str, tuple[float, float]] = {}
        self._panel_syms: tuple[str, ...] | None = None
        self._panel_last: np.ndarray = np.empty(0, np.int64)
        self._panel_known: np.ndarray = np.empty(0, bool)
        self._dirty = False  # a bar or tick was accepted since the panel cache was built

    def summary(self) -> dict[str, int]:
        """The counters: accepted records, and each kind of skipped record."""
        return dict(self.counts)

    def skip(self, kind: str, symbol: Any, t: Any, why: str) -> bool:
        """Count one skipped record of ``kind`` (a counter name) and log it (rate-limited); False."""
        self.counts[kind] += 1
        self._warn(kind, "skipped %s for %r at t=%s: %s", self.what, symbol, t, why)
        return False

    def _known(self, symbol: Any, t: Any) -> bool:
        if not isinstance(symbol, str) or not symbol or not _is_int(t):
            return self.skip("malformed", symbol, t, "needs a symbol (str) and an int event time")
        if self.universe is not None and symbol not in self.universe:
            return self.skip("unknown_symbol", symbol, t, "not in the declared universe")
        return True

    def check_bar(self, symbol: Any, t: Any, close: Any, open: Any = None, high: Any = None,  # noqa: A002
                  low: Any = None) -> bool:
        """Whether to accept this bar; if so, it becomes the symbol's last."""
        if not self._known(symbol, t):
            return False
        if not _positive(close):
            return self.skip("bad_price", symbol, t, f"close {close!r}")
        for name, value in (("open", open), ("high", high), ("low", low)):
            if value is not None and not _positive(value) and not _nan(value):
                return self.skip("bad_price", symbol, t, f"{name} {value!r}")
        last = self._last_t.get(symbol)
        if last is not None and t <= last:
            if t == last:
                return self.skip("duplicate", symbol, t, "a bar with this event time was already accepted")
            return self.skip("out_of_order", symbol, t, f"older than the last accepted bar (t={last})")
        self._last_t[symbol] = int(t)
        self._dirty = True
        self.counts["accepted"] += 1
        return True

    def check_record(self, record: Any) -> str | None:
        """Check a Bar or Tick dict: its kind (``"bar"``/``"tick"``) when accepted, else None."""
        kind = kind_of(record)
        if kind == "bar":
            ok = self.check_bar(record.get("symbol"), record.get("t"), record.get("close"),
                                record.get("open"), record.get("high"), record.get("low"))
        elif kind == "tick":
            ok = self.check_tick(record.get("symbol"), record.get("t"), record.get("price"), record.get("size", 0.0))
        else:
            self.skip("malformed", None, None, f"not a Bar or Tick: {type(record).__name__}")
            return None
        return kind if ok else None

    def check_tick(self, symbol: Any, t: Any, price: Any, size: Any = 0.0) -> bool:
        """Whether to accept this tick. Ticks may share a timestamp; an identical repeat is a duplicate."""
        if not self._known(symbol, t):
            return False
        if not _positive(price):
            return self.skip("bad_price", symbol, t, f"price {price!r}")
        last = self._last_t.get(symbol)
        if last is not None:
            if t < last:
                return self.skip("out_of_order", symbol, t, f"older than the last accepted tick (t={last})")
            if t == last and self._last_tick.get(symbol) == (price, size):
                return self.skip("duplicate", symbol, t, "same time, price and size as the last tick")
        self._last_t[symbol] = int(t)
        self._last_tick[symbol] = (price, size)
        self._dirty = True
        self.counts["accepted"] += 1
        return True

    def check_panel(self, t: Any, symbols: Sequence[str], close: np.ndarray) -> np.ndarray:
        """The symbols of a panel to accept, as a bool mask (vectorised; one panel is one day).

        A NaN close is "no bar that day" and is neither accepted nor counted; other bad
        closes, symbols already at or past ``t`` and unknown symbols are skipped and counted.
        """
        close = np.asarray(close, dtype=np.float64)
        if not _is_int(t) or close.ndim != 1 or len(symbols) != close.shape[0]:
            self.skip("malformed", "<panel>", t, "needs an int t and one close per symbol")
            return np.zeros(close.shape[0], bool)
        t = int(t)
        syms = tuple(symbols)
        if syms != self._panel_syms or self._dirty:
            self._dirty = False
            self._panel_syms = syms
            self._panel_last = np.array([self._last_t.get(s, np.iinfo(np.int64).min) for s in syms], np.int64)
            self._panel_known = np.array([self.universe is None or s in self.universe for s in syms], bool)
        present = ~np.isnan(close)
        ok = present.copy()
        bad = present & ~(np.isfinite(close) & (close > 0))
        if bad.any():
            for i in np.flatnonzero(bad):
                self.skip("bad_price", syms[i], t, f"close {close[i]!r}")
            ok &= ~bad
        unknown = ok & ~self._panel_known
        if unknown.any():
            for i in np.flatnonzero(unknown):
                self.skip("unknown_symbol", syms[i], t, "not in the declared universe")
            ok &= ~unknown
        stale = ok & (self._panel_last >= t)
        if stale.any():
            for i in np.flatnonzero(stale):
                last = int(self._panel_last[i])
                if last == t:
                    self.skip("duplicate", syms[i], t, "a bar with this event time was already accepted")
                else:
                    self.skip("out_of_order", syms[i], t, f"older than the last accepted bar (t={last})")
            ok &= ~stale
        self._panel_last[ok] = t
        for i in np.flatnonzero(ok):
            self._last_t[syms[i]] = t
        self.counts["accepted"] += int(ok.sum())
        return ok


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return (isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and math.isnan(value)


class Pacer:
    """Paces a source: ``wait()`` yields turns (``None``) until the next item is due.

    ``period_s = 0`` never waits. Waiting is cut into slices of at most ``slice_s`` so the
    worker keeps reading its control messages while the source sleeps; a late item is
    sent at once and the schedule does not bunch up to catch up.
    """

    def __init__(self, period_s: float, slice_s: float = 0.02) -> None:
        self.period_s = period_s
        self.slice_s = slice_s
        self.due = time.perf_counter()

    def wait(self) -> Iterator[None]:
        if not self.period_s:
            return
        self.due += self.period_s
        while True:
            delay = self.due - time.perf_counter()
            if delay <= 0:
                break
            time.sleep(min(delay, self.slice_s))
            yield None
        if -delay > self.period_s:  # fell behind by more than an item: restart the schedule from now
            self.due = time.perf_counter()

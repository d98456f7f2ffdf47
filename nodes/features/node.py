"""``DMNFeatures``: market data in, the DMN model inputs (windows) and the baseline signals out."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmnflow import Input, Node, Output, Ports, Tensor
from nodes.market.common import MarketGuard, day_of, is_daily, kind_of

from .engine import FEATURE_NAMES, DMNFeatureState, FeatureRows

__all__ = ["CrossSection", "DMNFeatures"]

N_FEATURES = len(FEATURE_NAMES)


class CrossSection:
    """The node's logic without the framework: records in, one cross-section per day out.

    ``add(record)`` takes a Bar, Tick or Panel dict and returns the days it completed, each
    as a :class:`Day` (a list, usually empty or of one); ``finish()`` completes what is
    pending at the end of the stream. Per-symbol bars of a day are held until every
    symbol known before that day has sent its bar (or, with a ``universe``, every symbol of
    it), or until a bar of a later day arrives; ticks and intraday bars are aggregated into
    daily bars, which close when the symbol's first record of a later day arrives.
    """

    def __init__(self, window: int = 63, long_window: int = 0, universe: list[str] | None = None,
                 aggregate_intraday: bool = True, guard: MarketGuard | None = None) -> None:
        self.window, self.long_window = window, long_window
        self.depth = max(window, long_window, 1)
        self.aggregate = aggregate_intraday
        self.guard = guard or MarketGuard(universe)
        self.universe = universe
        self.symbols: list[str] = []
        self.index: dict[str, int] = {}
        self.state = DMNFeatureState(0, capacity=len(universe) if universe else 16)
        cap = self.state.capacity
        # each feature row is written twice (at pos and pos + depth) so that any asset's last L rows are
        # one contiguous run: a window tensor is one gather of contiguous blocks, not a per-row loop
        self.ring = np.full((cap, 2 * self.depth, N_FEATURES), np.nan, np.float32)
        self._view = _windows_view(self.ring)
        self.rows = np.zeros(cap, np.int64)  # feature rows written per asset
        self.run = np.zeros(cap, np.int64)  # consecutive rows with all 8 features finite
        self.pend_t: int | None = None
        self.pend_price = np.full(cap, np.nan)
        self.pend_mask = np.zeros(cap, bool)
        self.pend_known = 0  # symbols of the pending day known before it
        self.known_before = 0  # symbols known before the pending day
        self.pend_since = 0.0
        self.last_t = -(2**62)  # the last completed day
        self.intraday: dict[str, list[float]] = {}  # symbol -> [day, open, high, low, close, volume]
        self.counts = {"days": 0, "late": 0, "ignored_intraday": 0}
        self._panel_key: tuple[str, ...] | None = None
        self._panel_idx = np.empty(0, np.int64)
        if universe:
            for symbol in universe:
                self._register(symbol)

    # -- symbols and storage ---------------------------------------------------------------

    def _register(self, symbol: str) -> int:
        i = self.index.get(symbol)
        if i is not None:
            return i
        i = len(self.symbols)
        self.state.add_assets(1)
        cap = self.state.capacity
        if cap > self.ring.shape[0]:
            self.ring = _grow(self.ring, cap, np.nan)
            self._view = _windows_view(self.ring)
            self.rows, self.run = _grow(self.rows, cap, 0), _grow(self.run, cap, 0)
            self.pend_price, self.pend_mask = _grow(self.pend_price, cap, np.nan), _grow(self.pend_mask, cap, False)
        self.symbols.append(symbol)
        self.index[symbol] = i
        return i

    # -- input -----------------------------------------------------------------------------

    def add(self, record: Any) -> list[Day]:
        """Take one market-data record; the days it completed."""
        kind = kind_of(record)
        if kind == "panel":
            return self.add_panel(record)
        if kind is None or self.guard.check_record(record) is None:
            if kind is None:
                self.guard.skip("malformed", None, None, f"not a Bar, Tick or Panel: {type(record).__name__}")
            return []
        symbol, t = record["symbol"], int(record["t"])
        if kind == "bar" and is_daily(t):
            return self.add_bar(symbol, t, float(record["close"]))
        if not self.aggregate:
            self.counts["ignored_intraday"] += 1
            return []
        price = float(record["close"] if kind == "bar" else record["price"])
        size = float(record.get("volume" if kind == "bar" else "size", 0.0) or 0.0)
        day = day_of(t)
        agg = self.intraday.get(symbol)
        done: list[Day] = []
        if agg is not None and day > agg[0]:
            done = self.add_bar(symbol, int(agg[0]), agg[4])
            agg = None
        if agg is None:
            opening = float(record.get("open", price)) if kind == "bar" else price
            self.intraday[symbol] = [day, opening, price, price, price, size]
        elif day == agg[0]:
            agg[2], agg[3], agg[4], agg[5] = max(agg[2], price), min(agg[3], price), price, agg[5] + size
        return done

    def add_bar(self, symbol: str, t: int, close: float) -> list[Day]:
        """A daily close of one symbol (already checked by the guard)."""
        done: list[Day] = []
        if self.pend_t is not None and t > self.pend_t:
            done = self.flush()
        if t <= self.last_t or (self.pend_t is not None and t < self.pend_t):
            self.counts["late"] += 1  # its day's cross-section has already gone out
            return done
        i = self.index.get(symbol)
        new = i is None
        if i is None:
            i = self._register(symbol)
        if self.pend_t is None:
            self.pend_t, self.pend_since = t, time.monotonic()
            self.known_before = len(self.symbols) - (1 if new else 0)  # a day is complete when these are in
            self.pend_known = 0
        if i < self.known_before:
            self.pend_known += 1
        self.pend_price[i], self.pend_mask[i] = close, True
        if self.known_before and self.pend_known >= self.known_before:
            done += self.flush()
        return done

    def add_panel(self, panel: dict[str, Any]) -> list[Day]:
        """One day's cross-section: updated and returned at once."""
        symbols, t = panel.get("symbols"), panel.get("t")
        try:
            close = np.asarray(panel.get("close"), np.float64)
        except (TypeError, ValueError):
            close = np.empty(0)
        if not isinstance(symbols, list) or close.ndim != 1 or len(symbols) != close.shape[0] \
                or not all(isinstance(s, str) for s in symbols):
            self.guard.skip("malformed", "<panel>", t, "a panel needs symbols (list of str) and one close each")
            return []
        done: list[Day] = []
        if self.pend_t is not None and isinstance(t, int) and t > self.pend_t:
            done = self.flush()
        ok = self.guard.check_panel(t, symbols, close)
        if not ok.any():
            return done
        t = int(t)
        if t <= self.last_t:
            self.counts["late"] += int(ok.sum())
            return done
        key = tuple(symbols)
        if key != self._panel_key:
            self._panel_key = key
            # with a universe, symbols outside it are never registered (the guard has rejected them)
            self._panel_idx = np.array([self.index.get(s, -1) if self.universe else self._register(s)
                                        for s in symbols], np.int64)
        idx, prices = self._panel_idx[ok], close[ok]
        if idx.shape[0] > 1 and (np.diff(idx) < 0).any():  # outputs list symbols in the node's order
            order = np.argsort(idx)
            idx, prices = idx[order], prices[order]
        done.append(self._compute(t, idx, prices))
        return done

    def flush(self) -> list[Day]:
        """Complete the pending day of per-symbol bars (if any)."""
        if self.pend_t is None:
            return []
        t, self.pend_t = self.pend_t, None
        n = len(self.symbols)
        idx = np.flatnonzero(self.pend_mask[:n])
        prices = self.pend_price[idx]
        self.pend_mask[idx] = False
        return [self._compute(t, idx, prices)]

    def finish(self) -> list[Day]:
        """End of stream: close the intraday bars still open, then the pending day."""
        done: list[Day] = []
        for symbol, agg in sorted(self.intraday.items(), key=lambda kv: kv[1][0]):
            done += self.add_bar(symbol, int(agg[0]), agg[4])
        self.intraday.clear()
        return done + self.flush()

    # -- output ----------------------------------------------------------------------------

    def _compute(self, t: int, idx: np.ndarray, prices: np.ndarray) -> Day:
        self.last_t = t
        self.counts["days"] += 1
        rows = self.state.update(None if _is_all(idx, len(self.symbols)) else idx, prices)
        pos = self.rows[idx] % self.depth
        self.ring[idx, pos] = rows.features
        self.ring[idx, pos + self.depth] = rows.features
        self.rows[idx] += 1
        finite = np.isfinite(rows.features).all(axis=1)
        self.run[idx] = np.where(finite, self.run[idx] + 1, 0)
        return Day(self, t, idx, prices, rows)

    def windows(self, idx: np.ndarray, length: int) -> tuple[np.ndarray, list[str]]:
        """The last ``length`` feature rows of the assets of ``idx`` that have that many finite ones:
        a float32 (k, length, 8) array (one gather) and their symbols."""
        ready = idx[self.run[idx] >= length]
        last = (self.rows[ready] - 1) % self.depth + self.depth  # the newest row, in the second copy
        view = self._view.get(length)
        if view is None:
            flat = self.ring.reshape(self.ring.shape[0], -1)
            view = self._view[length] = sliding_window_view(flat, length * N_FEATURES, axis=1)[:, ::N_FEATURES]
        block = view[ready, last - length + 1]  # (k, length * 8), contiguous copies
        return block.reshape(ready.shape[0], length, N_FEATURES), [self.symbols[i] for i in ready.tolist()]


class Day:
    """One completed day: its event time, the assets updated, and what to emit for it."""

    __slots__ = ("cs", "t", "idx", "prices", "rows")

    def __init__(self, cs: CrossSection, t: int, idx: np.ndarray, prices: np.ndarray, rows: FeatureRows) -> None:
        self.cs, self.t, self.idx, self.prices, self.rows = cs, t, idx, prices, rows

    def windows(self, length: int) -> tuple[np.ndarray, list[str]]:
        return self.cs.windows(self.idx, length)

    def signals(self) -> dict[str, Any]:
        """The Signals message (docs/dmn/messages.md); NaN where a value is not yet defined."""
        r = self.rows
        run = self.cs.run[self.idx]
        out = {"t": self.t, "symbols": [self.cs.symbols[i] for i in self.idx.tolist()],
               "close": self.prices.tolist(), "ret": r.ret.tolist(), "sigma": r.sigma.tolist(),
               "tsmom": r.tsmom.tolist(), "macd": r.macd.tolist(), "features": r.features.tolist(),
               "ready": (run >= self.cs.window).tolist()}
        if self.cs.long_window:
            out["ready_long"] = (run >= self.cs.long_window).tolist()
        return out


def _is_all(idx: np.ndarray, n: int) -> bool:
    return idx.shape[0] == n and (n == 0 or (idx[0] == 0 and idx[-1] == n - 1))


def _windows_view(ring: np.ndarray) -> dict[int, np.ndarray]:
    """Window views over a ring, made per window length on first use (reset when the ring grows)."""
    return {}


def _grow(a: np.ndarray, cap: int, fill: Any) -> np.ndarray:
    new = np.full((cap, *a.shape[1:]), fill, a.dtype)
    new[: a.shape[0]] = a
    return new


class DMNFeatures(Node):
    """Turns market data (bars, ticks or panels) into the DMN model inputs and the baseline signals.

    Why: every model of the graph reads the same 8 features (normalised returns and MACD,
    exactly as in the paper; docs/dmn/features.md) over a window of days, and risk and the
    baselines read volatility, TSMOM and MACD signals. This node computes them once,
    incrementally (O(1) per asset and day), and emits one cross-section per day: on the
    live per-symbol path when every known symbol's bar of the day is in (or a later day
    starts), on the backtest path once per panel.

    Outputs per day (event time = the day's midnight UTC): ``windows`` (float32, (k, window, 8),
    attrs ``{"symbols": [...]}``: only symbols whose 8 features have been finite for
    ``window`` consecutive days), ``long_windows`` (the same over ``long_window`` days, for
    the Transformer; absent when 0) and ``signals``.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        window: int = Field(63, ge=1, le=5000, description="days per window on `windows` (the LSTM's 63)")
        long_window: int = Field(252, ge=0, le=5000,
                                 description="days per window on `long_windows` (Transformer); 0 removes that output")
        universe: list[str] | None = Field(
            None, description="the symbols to expect: others are counted as unknown; a day completes when all are in")
        intraday: Literal["aggregate", "ignore"] = Field(
            "aggregate", description="ticks and intraday bars: aggregate into daily bars (UTC day) or ignore")
        emit_empty: bool = Field(False, description="emit windows with no rows while no symbol is warmed up")
        max_wait_s: float = Field(0.0, ge=0, description="with a `flush` timer: complete a day whose bars have "
                                                         "waited this long (wall clock); 0: only by data")
        per_symbol: bool = Field(False, description="also emit `features`: one record per symbol and day on "
                                 "topic features.<SYMBOL> (the seed's stream on port 5556)")

        @model_validator(mode="after")
        def _unique(self) -> DMNFeatures.Params:
            if self.universe is not None and len(set(self.universe)) != len(self.universe):
                raise ValueError("universe lists a symbol twice")
            return self

    market_data = Input(dict, doc="Bar, Tick (per symbol) or Panel records")
    signals = Output(dict, codec="msgpack", doc="per day: close, ret, sigma, tsmom, macd and today's features")

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        base = super().ports(params)
        window, long_window = params.window, params.long_window  # type: ignore[attr-defined]
        outputs: dict[str, Output] = {
            "windows": Output(Tensor("float32", shape=(None, window, N_FEATURES)),
                              doc="the last `window` days of the 8 features, attrs {symbols}"),
            **base.outputs,
        }
        if long_window:
            outputs["long_windows"] = Output(Tensor("float32", shape=(None, long_window, N_FEATURES)),
                                             doc="the last `long_window` days of the 8 features, attrs {symbols}")
        if params.per_symbol:  # type: ignore[attr-defined]
            outputs["features"] = Output(dict, codec="msgpack",
                                         doc="per symbol and day, topic features.<SYMBOL>: t, symbol, close, ret, "
                                         "sigma, tsmom, macd, the 8 features, ready")
        for name, port in outputs.items():
            port.name = name
        return Ports(base.inputs, outputs)

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.cs = CrossSection(p.window, p.long_window, p.universe, p.intraday == "aggregate",
                               MarketGuard(p.universe, ctx.log))
        self.counts = {"windows": 0, "window_rows": 0, "long_windows": 0, "signals": 0}

    def summary(self) -> dict[str, int]:
        """Days emitted, windows and rows sent, late bars and records the guard skipped (per reason)."""
        return {**self.cs.counts, **self.counts, **self.cs.guard.summary(), "symbols": len(self.cs.symbols)}

    def on_market_data(self, record: Any, ctx: Any) -> None:
        for day in self.cs.add(record):
            self._emit(day, ctx)

    def on_flush(self, ctx: Any) -> None:
        """Timer (``timers: {flush: 1s}``): complete a day that has waited ``max_wait_s``."""
        wait = ctx.params.max_wait_s
        if wait and self.cs.pend_t is not None and time.monotonic() - self.cs.pend_since >= wait:
            for day in self.cs.flush():
                self._emit(day, ctx)

    def teardown(self, ctx: Any) -> None:
        for day in self.cs.finish():
            self._emit(day, ctx)

    def _emit(self, day: Day, ctx: Any) -> None:
        p, counts = ctx.params, self.counts
        for port, length in (("windows", p.window), ("long_windows", p.long_window)):
            if not length:
                continue
            tensor, symbols = day.windows(length)
            if symbols or p.emit_empty:
                ctx.emit(port, tensor, event_time=day.t, attrs={"symbols": symbols})
                counts[port] += 1
                if port == "windows":
                    counts["window_rows"] += len(symbols)
        signals = day.signals()
        ctx.emit("signals", signals, event_time=day.t)
        counts["signals"] += 1
        if p.per_symbol:
            keys = ("close", "ret", "sigma", "tsmom", "macd", "features", "ready")
            for i, symbol in enumerate(signals["symbols"]):
                record = {"t": signals["t"], "symbol": symbol, **{k: signals[k][i] for k in keys}}
                ctx.emit("features", record, topic=f"features.{symbol}", event_time=day.t)

"""A seeded synthetic multi-asset market: the embedded default data of the DMN graph.

Each asset switches between a *trending* and a *mean-reverting* regime (a two-state
Markov chain, per asset). Its daily log return is

    r_t = mu + [trend]  d_t                        (d_t: a persistent AR(1) drift)
             + [revert] -kappa * (x_{t-1} - a)     (x: log price, a: its level at regime entry)
             + s * v_t * (sqrt(c) z_m + sqrt(1-c) z_i)

with ``s`` the asset's daily volatility (annual ``vol`` / sqrt(252), drawn per asset), ``v_t``
a slow stochastic-volatility multiplier (log-AR(1)), ``z_m`` a market factor shared by all
assets (correlation ``c``) and ``z_i`` the asset's own noise. In a trend, the drift follows
``d_t = rho d_{t-1} + sqrt(1 - rho^2) * trend_strength * s * eta_t`` with
``rho = 1 - 1/trend_memory``; it is drawn afresh from that stationary law when a trend
starts and is zero in a reversion. Trends are what momentum features (normalised returns,
MACD) can learn; reversions are what a good model learns to stay out of.

Within a day, prices follow a Brownian bridge from the previous close to the close in
``ticks_per_day`` steps: those are the ticks (``mode: ticks``), and the bar's open, high and
low come from the same path, so bars and ticks describe the same market. Daily draws and
intraday draws use separate random streams with a fixed number of draws per day, so the
closes are identical in every mode, and the same seed always gives the same data.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmnflow import Node, Output

from .common import TOPIC, Pacer, day_ns, make_bar, make_panel, make_tick, parse_date, topic_for

__all__ = ["DayBars", "Synthetic", "SyntheticMarket", "SyntheticProcess", "synthetic_arrays", "synthetic_closes"]

_SESSION_OPEN_NS = (14 * 3600 + 30 * 60) * 1_000_000_000  # 14:30 UTC
_SESSION_NS = int(6.5 * 3600) * 1_000_000_000


class SyntheticProcess(BaseModel):
    """The parameters of the synthetic market's process (defaults: learnable trends)."""

    model_config = ConfigDict(extra="forbid")
    trend_days: float = Field(250.0, gt=1, description="mean length of a trending regime, in days")
    revert_days: float = Field(120.0, gt=1, description="mean length of a mean-reverting regime, in days")
    trend_memory: float = Field(120.0, gt=1, description="memory of the trend drift, in days (rho = 1 - 1/memory)")
    trend_strength: float = Field(0.17, ge=0, description="std of the trend drift, as a fraction of daily vol")
    revert_speed: float = Field(0.05, ge=0, lt=1, description="kappa: daily pull of log price back to its anchor")
    vol_min: float = Field(0.10, gt=0, description="lowest annualised volatility drawn for an asset")
    vol_max: float = Field(0.35, gt=0, description="highest annualised volatility drawn for an asset")
    vol_of_vol: float = Field(0.08, ge=0, description="daily std of the log stochastic-volatility multiplier")
    vol_memory: float = Field(50.0, gt=1, description="memory of the stochastic volatility, in days")
    correlation: float = Field(0.2, ge=0, le=1, description="share of return variance from the common market factor")
    drift: float = Field(0.03, description="annualised base drift of every asset (long-only earns about this)")


@dataclass(slots=True)
class DayBars:
    """One business day of the synthetic market: arrays over the symbols."""

    t: int
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    regime: np.ndarray  # 0 trending, 1 mean-reverting (before this day's switch)
    tick_times: np.ndarray  # (ticks_per_day,) int64 event times
    tick_prices: np.ndarray  # (n, ticks_per_day)
    tick_sizes: np.ndarray  # (n, ticks_per_day)


class SyntheticMarket:
    """The process itself, day by day, with numpy only (no pandas, no framework).

    ``next_day()`` returns the next business day's :class:`DayBars`; ``closes(days)`` a whole
    (days, n) array. The training script and the ``Synthetic`` node share it.
    """

    def __init__(self, symbols: int | list[str] = 12, seed: int = 7, start: str | _dt.date = "2000-01-03",
                 ticks_per_day: int = 24, process: SyntheticProcess | dict[str, Any] | None = None) -> None:
        self.symbols = _symbols(symbols)
        n = len(self.symbols)
        self.process = p = (process if isinstance(process, SyntheticProcess)
                            else SyntheticProcess.model_validate(process or {}))
        if p.vol_max < p.vol_min:
            raise ValueError(f"vol_max {p.vol_max} is below vol_min {p.vol_min}")
        self.ticks_per_day = int(ticks_per_day)
        init, self._rng_day, self._rng_intraday = (np.random.default_rng(s)
                                                   for s in np.random.SeedSequence(seed).spawn(3))
        self.vol = init.uniform(p.vol_min, p.vol_max, n)  # annualised
        self.s = self.vol / math.sqrt(252.0)
        self.base_volume = np.exp(init.uniform(math.log(1e5), math.log(5e6), n))
        self.x = np.log(init.uniform(20.0, 200.0, n))  # log price (the last close)
        self.regime = (init.random(n) < p.revert_days / (p.trend_days + p.revert_days)).astype(np.int8)
        self.rho = 1.0 - 1.0 / p.trend_memory
        self.d = np.where(self.regime == 0, p.trend_strength * self.s * init.standard_normal(n), 0.0)
        self.anchor = self.x.copy()
        self.logv = np.zeros(n)
        self.v_rho = 1.0 - 1.0 / p.vol_memory
        self.mu = p.drift / 252.0
        self.p_leave = np.array([1.0 / p.trend_days, 1.0 / p.revert_days])
        start_date = parse_date(start)
        if start_date is None:
            raise ValueError("start must be a date")
        self.date = start_date - _dt.timedelta(days=1)
        k = self.ticks_per_day
        self._bridge_t = np.arange(1, k + 1, dtype=np.float64) / k
        self._tick_offsets = _SESSION_OPEN_NS + (np.arange(k, dtype=np.int64) * (_SESSION_NS // max(k - 1, 1)))

    def _next_date(self) -> _dt.date:
        date = self.date + _dt.timedelta(days=1)
        while date.weekday() >= 5:
            date += _dt.timedelta(days=1)
        self.date = date
        return date

    def next_day(self) -> DayBars:
        """Advance one business day."""
        p, n = self.process, len(self.symbols)
        t = day_ns(self._next_date())
        z = self._rng_day.standard_normal((5, n))  # market, own, drift, vol, volume
        u = self._rng_day.random(n)
        regime = self.regime.copy()
        self.logv = self.v_rho * self.logv + p.vol_of_vol * z[3]
        v = np.exp(self.logv)
        noise = math.sqrt(p.correlation) * z[0, 0] + math.sqrt(1.0 - p.correlation) * z[1]
        trending = regime == 0
        self.d = np.where(trending, self.rho * self.d + math.sqrt(1 - self.rho ** 2) * p.trend_strength * self.s * z[2],
                          0.0)
        revert = np.where(trending, 0.0, -p.revert_speed * (self.x - self.anchor))
        r = self.mu + self.d + revert + self.s * v * noise
        x_prev, self.x = self.x, self.x + r
        # regime switches take effect from tomorrow
        switch = u < self.p_leave[regime]
        if switch.any():
            starting_trend = switch & ~trending
            self.regime = np.where(switch, 1 - regime, regime).astype(np.int8)
            self.anchor = np.where(switch & trending, self.x, self.anchor)
            self.d = np.where(starting_trend, p.trend_strength * self.s * z[2], self.d)
        # intraday: a Brownian bridge from the previous close to this close
        k = self.ticks_per_day
        w = self._rng_intraday.standard_normal((n, k)) * (self.s * v / math.sqrt(k))[:, None]
        sizes_u = self._rng_intraday.random((n, k))
        b = np.cumsum(w, axis=1)
        path = x_prev[:, None] + self._bridge_t * r[:, None] + (b - self._bridge_t * b[:, -1:])
        path[:, -1] = self.x
        prices = np.exp(path)
        close = prices[:, -1].copy()
        volume = np.round(self.base_volume * (1.0 + 0.5 * np.abs(z[4])))
        sizes = np.maximum(1.0, np.round(sizes_u * (2.0 * volume / k)[:, None]))
        return DayBars(t=t, open=prices[:, 0].copy(), high=prices.max(axis=1), low=prices.min(axis=1), close=close,
                       volume=volume, regime=regime, tick_times=t + self._tick_offsets, tick_prices=prices,
                       tick_sizes=sizes)

    def closes(self, days: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(t, closes, regimes)``: event times (days,), closes (days, n), regimes (days, n)."""
        t = np.empty(days, np.int64)
        closes = np.empty((days, len(self.symbols)))
        regimes = np.empty((days, len(self.symbols)), np.int8)
        for i in range(days):
            day = self.next_day()
            t[i], closes[i], regimes[i] = day.t, day.close, day.regime
        return t, closes, regimes


def _symbols(symbols: int | list[str]) -> list[str]:
    if isinstance(symbols, int):
        if symbols < 1:
            raise ValueError("symbols must be at least 1")
        return [f"SYN{i:02d}" for i in range(symbols)]
    names = [str(s) for s in symbols]
    if not names or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"symbols must be distinct non-empty names, got {symbols!r}")
    return names


def synthetic_arrays(seed: int = 7, symbols: int | list[str] = 12, start: str = "2000-01-03", days: int = 2520,
                     **process: Any) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """The synthetic market as arrays: ``(t_ns, symbols, closes (days, n), regimes (days, n))``.

    Identical to what the ``Synthetic`` node publishes with the same seed, symbols, start
    and process (any mode).
    """
    market = SyntheticMarket(symbols, seed=seed, start=start, process=process)
    t, closes, regimes = market.closes(days)
    return t, market.symbols, closes, regimes


def synthetic_closes(seed: int = 7, symbols: int | list[str] = 12, start: str = "2000-01-03", days: int = 2520,
                     **process: Any) -> Any:
    """The synthetic market's daily closes as a wide pandas DataFrame (dates x symbols)."""
    import pandas as pd

    t, names, closes, _ = synthetic_arrays(seed, symbols, start, days, **process)
    index = pd.DatetimeIndex(pd.to_datetime(t, unit="ns"), name="date")
    return pd.DataFrame(closes, index=index, columns=names)


class Synthetic(Node):
    """A seeded synthetic market with trending and mean-reverting regimes, as bars, ticks or panels.

    Why: the DMN graph must run out of the box with no data and no keys, and its models must
    have something learnable to trade; this is that market (see the module docstring for
    the process). Bars and ticks go out per symbol on ``market_data.<SYMBOL>``, panels once
    per day on ``market_data``; event time is the bar's midnight UTC (a tick's own time).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        seed: int = Field(7, description="random seed: the same seed always gives the same data")
        symbols: int | list[str] = Field(12, description="number of assets (named SYN00, SYN01, ...) or their names")
        start: str = Field("2000-01-03", description="first date (YYYY-MM-DD); business days only")
        days: int = Field(2520, ge=1, description="business days to publish (ignored when live)")
        mode: Literal["bars", "ticks", "panel"] = Field(
            "bars", description="bars/ticks per symbol on market_data.<SYMBOL>, or one panel per day on market_data")
        rate: float = Field(0.0, ge=0, description="messages per second; 0 publishes as fast as possible")
        live: bool = Field(False, description="run until the graph is stopped, generating forever")
        history: int = Field(0, ge=0, description="days published at once before pacing starts (`rate`): "
                             "a live run's features and models start warm")
        settle: float = Field(0.0, ge=0, description="live: seconds between the history and the first paced bar, "
                              "so the graph has taken the history in before the session opens")
        ticks_per_day: int = Field(24, ge=2, le=10_000, description="intraday ticks per symbol and day")
        process: SyntheticProcess = Field(default_factory=SyntheticProcess,
                                          description="the market process's parameters")

        @field_validator("start")
        @classmethod
        def _date(cls, value: str) -> str:
            parse_date(value)
            return value

        @field_validator("symbols")
        @classmethod
        def _names(cls, value: int | list[str]) -> int | list[str]:
            _symbols(value)
            return value

    market_data = Output(dict, codec="msgpack", doc="Bar or Tick per symbol, or one Panel per day")

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.market = SyntheticMarket(p.symbols, seed=p.seed, start=p.start, ticks_per_day=p.ticks_per_day,
                                      process=p.process)
        self.topics = [topic_for(s) for s in self.market.symbols]
        self.counts = {"days": 0, "bars": 0, "ticks": 0, "panels": 0}
        self.total_days = None if p.live else p.days

    def summary(self) -> dict[str, int]:
        """What was published: days, and bars, ticks or panels."""
        return dict(self.counts)

    def progress(self) -> tuple[int, int | None, str]:
        """Days published of the days to publish (a live market has no end: total None)."""
        return self.counts["days"], self.total_days, "days"

    def run(self, ctx: Any) -> Iterator[None]:
        p = ctx.params
        paced = Pacer(1.0 / p.rate if p.rate else 0.0)
        pacer = Pacer(0.0) if p.history else paced  # the history goes out as fast as the graph takes it
        symbols, topics, counts = self.market.symbols, self.topics, self.counts
        day = 0
        while p.live or day < p.days:
            bars = self.market.next_day()
            day += 1
            if day == p.history + 1:
                if p.live and p.settle:  # the session opens once the warm-up is through the graph
                    yield from Pacer(p.settle).wait()
                paced.due = time.perf_counter()
                pacer = paced
            counts["days"] = day
            t = bars.t
            if p.mode == "panel":
                yield from pacer.wait()
                ctx.emit("market_data", make_panel(t, symbols, bars.close, bars.open, bars.high, bars.low,
                                                   bars.volume), topic=TOPIC, event_time=t)
                counts["panels"] += 1
            elif p.mode == "bars":
                o, h, lo, c, v = (a.tolist() for a in (bars.open, bars.high, bars.low, bars.close, bars.volume))
                for i, symbol in enumerate(symbols):
                    yield from pacer.wait()
                    ctx.emit("market_data", make_bar(symbol, t, o[i], h[i], lo[i], c[i], v[i]),
                             topic=topics[i], event_time=t)
                counts["bars"] += len(symbols)
            else:
                times, prices, sizes = bars.tick_times.tolist(), bars.tick_prices.tolist(), bars.tick_sizes.tolist()
                for j, tick_t in enumerate(times):
                    for i, symbol in enumerate(symbols):
                        yield from pacer.wait()
                        ctx.emit("market_data", make_tick(symbol, tick_t, prices[i][j], sizes[i][j]),
                                 topic=topics[i], event_time=tick_t)
                counts["ticks"] += len(symbols) * len(times)
            yield None  # a turn for the worker between days


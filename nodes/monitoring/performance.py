"""The ``Performance`` node: strategy metrics from the Account stream, latency, an equity PNG."""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dmnflow import Input, Node, Output
from nodes.support import RateLimitedLog, event_time_of

from .metrics import TRADING_DAYS, RunningStats, performance

__all__ = ["LatencyWindow", "Performance", "Window", "jsonable"]

_DATE = r"^\d{4}-\d{2}-\d{2}$"
_DAY_NS = 86_400 * 1_000_000_000


class Window(BaseModel):
    """A period of the figures: dates, both inclusive; null leaves that side open."""

    model_config = ConfigDict(extra="forbid")
    start: str | None = Field(None, pattern=_DATE, description="first day measured (YYYY-MM-DD)")
    end: str | None = Field(None, pattern=_DATE, description="last day measured (YYYY-MM-DD), inclusive")

    @field_validator("start", "end")
    @classmethod
    def _date(cls, value: str | None) -> str | None:
        return _check_date(value)


def _check_date(value: str | None) -> str | None:
    """A real calendar date (the pattern alone lets 2015-02-30 through)."""
    if value is not None:
        try:
            _dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return value


def _day_ns(date: str | None) -> int | None:
    """Midnight UTC of ``date`` in ns (the event time of a daily bar), or None."""
    if date is None:
        return None
    return int(_dt.datetime.fromisoformat(date).replace(tzinfo=_dt.UTC).timestamp()) * 1_000_000_000


class LatencyWindow:
    """The last ``size`` latencies (ns) in a preallocated ring; percentiles on demand."""

    __slots__ = ("buf", "n", "i")

    def __init__(self, size: int) -> None:
        self.buf = np.zeros(size, dtype=np.int64)
        self.n = 0
        self.i = 0

    def add(self, ns: int) -> None:
        self.buf[self.i] = ns
        self.i = (self.i + 1) % self.buf.size
        if self.n < self.buf.size:
            self.n += 1

    def percentiles_us(self, qs: tuple[float, ...] = (50.0, 99.0)) -> list[float]:
        """Percentiles in microseconds (NaN when empty)."""
        if not self.n:
            return [math.nan] * len(qs)
        return [float(v) / 1e3 for v in np.percentile(self.buf[:self.n], qs)]


def jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    """Floats that are NaN or infinite become None, so the dict is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


class Performance(Node):
    """The strategy's report card, kept while it runs and written when it ends.

    Why a node: the same metrics serve a backtest's final report, a live dashboard and
    alert rules, so they are computed once from what the broker says (the Account stream)
    rather than by each consumer. One equity point per event time (a later Account for the
    same event time replaces it); the first Account's ``equity - pnl`` is the starting
    capital, so first-day costs count. Figures (``nodes/monitoring/metrics.py``): PnL,
    annualised return and volatility, Sharpe, Sortino, Calmar, max drawdown, VaR 95
    (historical), turnover (from the Account's cumulative ``traded``, else from Fills),
    hit rate. ``metrics`` messages carry the O(1) streaming figures every ``emit_every``
    Accounts (VaR and latency only in ``summary()``, unless ``latency_in_metrics``).

    Tick-to-trade latency: ``time.time_ns() - ctx.message.origin_ns`` when a Fills message
    arrives (and tick-to-account at each Account), p50/p99 over the last
    ``latency_window`` messages, leaving out the first ``latency_skip`` days (a live market's
    warm-up history arrives at once: what those would measure is its backlog). Wall-clock
    figures stay out of the deterministic metrics.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        periods_per_year: int = Field(TRADING_DAYS, ge=1, description="periods per year for annualising (252: daily)")
        emit_every: int = Field(1, ge=0, description="emit metrics every this many Accounts; 0: never")
        equity_png: str | None = Field(None, description="draw the equity curve and drawdown here, at the end and "
                                       "every equity_png_every_s while Accounts come")
        equity_png_every_s: float = Field(60.0, ge=0, description="redraw equity_png at the first Account this long "
                                          "after the last drawing (a kill leaves the curve up to then); 0: only at "
                                          "the end")
        latency_in_metrics: bool = Field(
            False, description="add latency p50/p99 to emitted metrics (not deterministic)")
        latency_window: int = Field(100_000, ge=1, description="latencies kept for the percentiles")
        latency_skip: int = Field(0, ge=0, description="days (Accounts) at the start whose Fills and Account are not "
                                                       "timed: a live source's warm-up history, published at once")
        title: str = Field("Strategy equity", description="title of the equity PNG")
        start: str | None = Field(None, pattern=_DATE,
                                  description="count from this day (YYYY-MM-DD): a replay that starts earlier to "
                                              "warm its features up is measured from here; none: from the first")
        end: str | None = Field(None, pattern=_DATE,
                                description="count up to this day, inclusive (YYYY-MM-DD): later Accounts are not "
                                            "measured (an in-sample window); none: to the last")
        steps_every: int = Field(0, ge=0, description="every this many measured periods, keep the figures as they "
                                                     "stand (summary: steps, [[periods, {figure: value}], ...]): a "
                                                     "tuner's intermediate values at exact steps; 0: none")
        windows: dict[str, Window] = Field(
            default_factory=dict, description="more named periods, each {start, end} (dates, inclusive; null: "
                                              "open), whose figures the summary reports as <name>.<figure> "
                                              "(in_sample.sharpe): e.g. in_sample and held_out from one run")

        @field_validator("start", "end")
        @classmethod
        def _date(cls, value: str | None) -> str | None:
            return _check_date(value)

        @field_validator("windows")
        @classmethod
        def _names(cls, windows: dict[str, Window]) -> dict[str, Window]:
            bad = [n for n in windows if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)]
            if bad:
                raise ValueError(f"window names must be identifiers (letters, digits, _), got {bad}")
            return windows

        @model_validator(mode="after")
        def _order(self) -> Performance.Params:
            for name, (a, b) in {"": (self.start, self.end),
                                 **{f"windows.{k}.": (w.start, w.end) for k, w in self.windows.items()}}.items():
                if a is not None and b is not None and a > b:
                    raise ValueError(f"{name}start {a} is after {name}end {b}")
            return self

    summary_keys = ("periods", "equity", "pnl", "total_return", "ann_return", "cagr", "ann_vol", "sharpe", "sortino",
                    "downside_dev", "max_drawdown", "drawdown", "calmar", "var_95", "hit_rate", "avg_win_loss",
                    "turnover", "tick_to_trade_p50_us", "tick_to_trade_p99_us", "tick_to_account_p50_us",
                    "tick_to_account_p99_us", "t", "latency_samples", "accounts", "fills_messages", "fills",
                    "bad_accounts",
                    "out_of_order", "replaced", "bad_fills", "before_start", "after_end")
    summary_steps = {"periods": "steps_every"}  # `dmnflow tune` sets it from the tune file's intermediate.every

    account = Input(dict, doc="Account: t, equity, cash, positions, gross, pnl, traded")
    fills = Input(dict, optional=True, doc="Fills, for tick-to-trade latency and (without traded) turnover")
    metrics = Output(dict, doc="t, equity, pnl, return, drawdown, max_drawdown, sharpe, ... (streaming figures)")

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.p = p
        self.start_ns = _day_ns(p.start)
        end = _day_ns(p.end)
        self.end_ns = None if end is None else end + _DAY_NS  # the first event time after the end day
        self.history: tuple[list[int], list[float], list[float]] = ([], [], [])  # every Account, for windows
        self.capital = math.nan
        self.before: tuple[int, float, float] | None = None
        self.log = RateLimitedLog(ctx.log)
        self.t: list[int] = []
        self.equity: list[float] = []
        self.traded_cum: list[float] = []
        self.stats = RunningStats(p.periods_per_year)  # every point but the last
        self.fill_notional = 0.0
        self.fill_latency = LatencyWindow(p.latency_window)
        self.account_latency = LatencyWindow(p.latency_window)
        self.since_emit = 0
        self.days_seen = 0  # Accounts received until latency_skip is reached
        # the event time after which messages are timed (None: latency_skip Accounts not yet seen);
        # by event time, not by arrival, because Fills and Accounts come on two inputs read in turns
        self.latency_from: int | None = None if p.latency_skip else -(2**63)
        self.seeded = False  # the first point is the starting capital
        self.png_due = time.monotonic() + p.equity_png_every_s if p.equity_png and p.equity_png_every_s else math.inf
        self.steps: list[list[Any]] = []  # [periods, figures] at every steps_every periods, once final
        self.counts = dict.fromkeys(("accounts", "fills_messages", "fills", "bad_accounts", "out_of_order",
                                     "replaced", "bad_fills", "before_start", "after_end"), 0)

    # -- inputs ----------------------------------------------------------------------------
    def on_fills(self, msg: dict, ctx: Any) -> None:
        origin = ctx.message.origin_ns
        if origin and self._timed(msg.get("t") if isinstance(msg, Mapping) else None, ctx):
            self.fill_latency.add(time.time_ns() - origin)
        fills = msg.get("fills") if isinstance(msg, Mapping) else None
        if not isinstance(fills, list):
            self.counts["bad_fills"] += 1
            return
        self.counts["fills_messages"] += 1
        for f in fills:
            try:
                self.fill_notional += abs(float(f["qty"]) * float(f["price"]))
                self.counts["fills"] += 1
            except (TypeError, ValueError, KeyError):
                self.counts["bad_fills"] += 1

    def _timed(self, t: Any, ctx: Any) -> bool:
        """Whether a message of event time ``t`` is past the untimed first days (``latency_skip``)."""
        if self.latency_from is None:
            return False
        if not isinstance(t, int):
            t = ctx.message.event_time
        return not isinstance(t, int) or t > self.latency_from

    def on_account(self, acc: dict, ctx: Any) -> None:
        c = self.counts
        origin = ctx.message.origin_ns
        if self.latency_from is None:
            self.days_seen += 1
            if self.days_seen >= self.p.latency_skip:  # the last untimed day: later ones are timed
                self.latency_from = event_time_of(acc, ctx)
        elif origin and self._timed(acc.get("t") if isinstance(acc, Mapping) else None, ctx):
            self.account_latency.add(time.time_ns() - origin)
        t = event_time_of(acc, ctx)
        equity = _num(acc.get("equity")) if isinstance(acc, Mapping) else math.nan
        if t is None or equity != equity:
            c["bad_accounts"] += 1
            self.log.warning("bad", "skipped an Account without an event time or a finite equity: %.200r", acc)
            return
        traded = _num(acc.get("traded"))
        if traded != traded:
            traded = self.fill_notional
        if self.capital != self.capital:
            self.capital = equity - _num(acc.get("pnl"))
        if self.p.windows:
            _record(self.history, t, equity, traded)
        if self.end_ns is not None and t >= self.end_ns:  # past the measured period
            c["after_end"] += 1
            return
        if self.start_ns is not None and t < self.start_ns:  # warm-up: remembered as the base, not measured
            self.before = (t, equity, traded)
            c["before_start"] += 1
            return
        c["accounts"] += 1
        if not self.t and self.before is not None:  # measured from the last day before the start
            self._append(*self.before)
            self.seeded = True
            self._append(t, equity, traded)
        elif not self.t:
            start = equity - _num(acc.get("pnl"))
            if start == start:  # the starting capital, before the first trades
                self._append(t, start, 0.0)
                self.seeded = True
            self._append(t, equity, traded)
        elif t < self.t[-1]:
            c["out_of_order"] += 1
            self.log.warning("order", "skipped an Account for t=%d: already at t=%d", t, self.t[-1])
            return
        elif t == self.t[-1] and not (self.seeded and len(self.t) == 1):
            c["replaced"] += 1  # a later Account for the same event time (live fills after a drain)
            self.equity[-1], self.traded_cum[-1] = equity, traded
        else:
            self._append(t, equity, traded)
        if self.p.emit_every:
            self.since_emit += 1
            if self.since_emit >= self.p.emit_every:
                self.since_emit = 0
                ctx.emit("metrics", jsonable(self.current()))
        if time.monotonic() >= self.png_due:  # drawn as it goes: a kill -9 keeps the curve up to here
            self.png_due = time.monotonic() + self.p.equity_png_every_s
            self._draw(ctx)

    def _append(self, t: int, equity: float, traded: float) -> None:
        """A new point; the previous one joins the committed statistics (and, at a step, the steps)."""
        self._step()
        if self.t:
            self.stats.add(self.equity[-1], self._period_traded(len(self.t) - 1))
        self.t.append(t)
        self.equity.append(equity)
        self.traded_cum.append(traded)

    def _step(self) -> None:
        """Keep the figures as they stand when the last point is final and ends a step: the
        next point arrives (a later Account for the same day may still replace the last) or
        the run ends. By event time, so the steps are the data's, not the machine's."""
        every = self.p.steps_every
        periods = len(self.t) - 1
        if every and periods > 0 and periods % every == 0 and (not self.steps or self.steps[-1][0] < periods):
            figures = {k: v for k, v in self.report().items() if k != "periods"}
            self.steps.append([periods, jsonable(figures)])

    def _period_traded(self, i: int) -> float:
        return self.traded_cum[i] - self.traded_cum[i - 1] if i > 0 else 0.0

    # -- figures ---------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        """The streaming figures, the last point included (O(1))."""
        snap = self.stats.copy()
        snap.add(self.equity[-1], self._period_traded(len(self.t) - 1))
        out: dict[str, Any] = {"t": self.t[-1]}
        out.update(snap.snapshot())
        if self.p.latency_in_metrics:
            out.update(self._latency())
        return out

    def _latency(self) -> dict[str, float]:
        f50, f99 = self.fill_latency.percentiles_us()
        a50, a99 = self.account_latency.percentiles_us()
        return {"tick_to_trade_p50_us": f50, "tick_to_trade_p99_us": f99,
                "tick_to_account_p50_us": a50, "tick_to_account_p99_us": a99}

    def report(self) -> dict[str, float]:
        """Every figure over the whole run (``metrics.performance``), as plain floats."""
        eq = np.asarray(self.equity, dtype=np.float64)
        cum = np.asarray(self.traded_cum, dtype=np.float64)
        traded = np.diff(cum, prepend=cum[:1]) if cum.size else cum
        return performance(eq, traded, self.p.periods_per_year)

    def window(self, start: str | None, end: str | None) -> dict[str, float]:
        """The figures of one period (``params.windows``): the Accounts from ``start`` to ``end``
        (inclusive), with the last one before ``start`` (else the starting capital) as the base."""
        ts, eq, tr = (np.asarray(v, dtype=np.float64 if i else np.int64) for i, v in enumerate(self.history))
        lo, hi = _day_ns(start), _day_ns(end)
        a = 0 if lo is None else int(np.searchsorted(ts, lo, side="left"))
        b = ts.size if hi is None else int(np.searchsorted(ts, hi + _DAY_NS, side="left"))
        if a > 0:
            equity, traded = eq[a - 1:b], tr[a - 1:b]
        elif self.capital == self.capital:
            equity, traded = np.concatenate([[self.capital], eq[:b]]), np.concatenate([[0.0], tr[:b]])
        else:
            equity, traded = eq[:b], tr[:b]
        if not equity.size:
            return {}
        return performance(equity, np.diff(traded, prepend=traded[:1]), self.p.periods_per_year)

    def summary(self) -> dict[str, Any]:
        """All metrics, latency and counters as one flat JSON-able dict (None: undefined); the
        figures of each of ``params.windows`` as ``<name>.<figure>``."""
        if not hasattr(self, "counts"):  # asked before setup
            return {}
        out: dict[str, Any] = {}
        if self.equity:
            out.update(self.report())
        out.update(self._latency())
        if self.t:
            out["t"] = self.t[-1]  # the last event time measured: where the equity curve is
        out.update(latency_samples=self.fill_latency.n, **self.counts)
        for name, w in self.p.windows.items():
            out.update({f"{name}.{k}": v for k, v in self.window(w.start, w.end).items()})
        out = jsonable(out)
        if self.p.steps_every:
            out["steps"] = list(self.steps)
        return out

    def teardown(self, ctx: Any) -> None:
        self._step()  # the last point is final now
        self._draw(ctx)

    def _draw(self, ctx: Any) -> None:
        """The equity PNG, replaced whole (a reader, or a kill, never sees half of one)."""
        if self.p.equity_png and len(self.equity) >= 2:
            try:
                write_equity_png(Path(self.p.equity_png), self.t, self.equity, self.p.title)
            except OSError as exc:
                ctx.log.warning("could not write the equity curve to %s: %s", self.p.equity_png, exc)


def _record(history: tuple[list[int], list[float], list[float]], t: int, equity: float, traded: float) -> None:
    """One point per event time (a later Account for the same time replaces it; an earlier one is ignored)."""
    ts, eq, tr = history
    if ts and t < ts[-1]:
        return
    if ts and t == ts[-1]:
        eq[-1], tr[-1] = equity, traded
        return
    ts.append(t)
    eq.append(equity)
    tr.append(traded)


def _num(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def write_equity_png(path: Path, t: list[int], equity: list[float], title: str) -> None:
    """Equity (top) and drawdown (bottom) against event time, with matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .metrics import drawdowns

    eq = np.asarray(equity, dtype=np.float64)
    ts = np.asarray(t, dtype=np.int64)
    x: Any = ts.astype("datetime64[ns]") if ts.size and ts.min() > 10**15 else np.arange(eq.size)
    fig = Figure(figsize=(10, 6), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot(x, eq, color="tab:blue", linewidth=1.0)
    top.set_title(title)
    top.set_ylabel("equity")
    top.grid(alpha=0.3)
    bottom.fill_between(x, -drawdowns(eq), 0.0, color="tab:red", alpha=0.4, linewidth=0)
    bottom.set_ylabel("drawdown")
    bottom.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    fig.savefig(part, format="png")
    os.replace(part, path)

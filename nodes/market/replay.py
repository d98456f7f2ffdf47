"""Historical replay from CSV or Parquet, day by day, at a chosen speed or as fast as possible.

Two file layouts are read (``format: auto`` tells them apart by a ``symbol`` column):

- long: one row per symbol and day, columns ``date, symbol, close`` and optionally
  ``open, high, low, volume`` (names are matched case-insensitively);
- wide: one row per day, a date column then one column of closes per symbol
  (``date, ES1, TY1, ...``); an empty cell is "no bar that day".

The date column is ``date`` (or ``datetime``, ``timestamp``, ``time``), else the first
column (a CSV written from a DataFrame's index); a timestamp counts as its UTC date. Rows
are replayed in date order (``sort: true``, stable) or in file order (``sort: false``,
where a row older than its symbol's last one is dropped and counted as out of order).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmnflow import Node, Output

from .common import DAY_NS, TOPIC, MarketGuard, Pacer, make_bar, make_panel, parse_date, topic_for

__all__ = ["MarketFrame", "Replay", "frame_from_long", "frame_from_wide", "read_market_file"]

_DATE_NAMES = ("date", "datetime", "timestamp", "time")
_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass
class MarketFrame:
    """Market data as flat rows (numpy), ready to replay: one row per symbol and day.

    ``t`` are event times (int64 ns, midnight UTC of each row's date), ``sym`` indexes
    ``symbols``; price columns a source lacks are None.
    """

    symbols: list[str]
    t: np.ndarray
    sym: np.ndarray
    close: np.ndarray
    open: np.ndarray | None = None
    high: np.ndarray | None = None
    low: np.ndarray | None = None
    volume: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def select(self, keep: np.ndarray) -> MarketFrame:
        """The rows where ``keep`` (a bool mask or an index array) holds, in that order."""
        cols = {name: (None if getattr(self, name) is None else getattr(self, name)[keep]) for name in _FIELDS}
        return MarketFrame(self.symbols, self.t[keep], self.sym[keep], **cols)

    def sorted(self) -> MarketFrame:
        """Rows in date order; rows of the same date keep their file order."""
        order = np.argsort(self.t, kind="stable")
        return self if np.array_equal(order, np.arange(len(order))) else self.select(order)

    def filtered(self, start: Any = None, end: Any = None, symbols: Sequence[str] | None = None) -> MarketFrame:
        """Rows from ``start`` to ``end`` (dates, inclusive) of ``symbols`` (in that order), if given."""
        keep = np.ones(len(self), bool)
        if start is not None:
            keep &= self.t >= _day(start)
        if end is not None:
            keep &= self.t <= _day(end)
        frame = self
        if symbols is not None:
            index = {s: i for i, s in enumerate(self.symbols)}
            wanted = [s for s in symbols if s in index]
            remap = np.full(len(self.symbols), -1, np.int64)
            remap[[index[s] for s in wanted]] = np.arange(len(wanted))
            keep &= remap[self.sym] >= 0
            frame = MarketFrame(wanted, self.t, remap[self.sym], self.close, self.open, self.high, self.low,
                                self.volume)
        return frame if keep.all() else frame.select(keep)


def _day(value: Any) -> int:
    date = parse_date(value)
    assert date is not None
    return int(np.datetime64(date, "D").astype("datetime64[ns]").astype(np.int64))


def _event_times(column: Any) -> np.ndarray:
    """Midnight UTC of each value's date, as int64 ns (naive timestamps are taken as UTC)."""
    import pandas as pd

    stamps = pd.to_datetime(column, utc=True)
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return ns - ns % DAY_NS


def _date_column(df: Any) -> str:
    lower = {str(c).strip().lower(): c for c in df.columns}
    for name in _DATE_NAMES:
        if name in lower:
            return lower[name]
    return df.columns[0]


def frame_from_long(df: Any) -> MarketFrame:
    """A long table (``date, symbol, close`` and optionally ``open, high, low, volume``) as a frame."""
    import pandas as pd

    lower = {str(c).strip().lower(): c for c in df.columns}
    if "symbol" not in lower or "close" not in lower:
        raise ValueError(f"a long market file needs 'symbol' and 'close' columns; it has {list(df.columns)}")
    date_col = _date_column(df)
    symbols_col = df[lower["symbol"]].astype(str)
    codes, uniques = pd.factorize(symbols_col, sort=False)
    cols = {name: (pd.to_numeric(df[lower[name]], errors="coerce").to_numpy(np.float64)
                   if name in lower else None) for name in _FIELDS}
    return MarketFrame([str(s) for s in uniques], _event_times(df[date_col]), codes.astype(np.int64), **cols)


def frame_from_wide(df: Any, date_column: str | None = None) -> MarketFrame:
    """A wide table of closes (a date column or a DatetimeIndex, then one column per symbol) as a frame.

    Empty cells are days without a bar: they are left out, not counted as bad data.
    """
    import pandas as pd

    if isinstance(df.index, pd.DatetimeIndex):
        dates, values = df.index, df
    else:
        date_col = date_column or _date_column(df)
        dates, values = df[date_col], df.drop(columns=[date_col])
    symbols = [str(c) for c in values.columns]
    closes = values.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    t = _event_times(dates)
    rows, cols = np.nonzero(~np.isnan(closes))  # row-major: day by day, symbols in column order
    return MarketFrame(symbols, t[rows], cols.astype(np.int64), closes[rows, cols])


def read_market_file(path: str | Path, format: Literal["auto", "long", "wide"] = "auto") -> MarketFrame:  # noqa: A002
    """Read a CSV or Parquet market file (long or wide layout, see the module docstring)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"market data file {str(path)!r} does not exist")
    suffixes = "".join(path.suffixes).lower()
    if ".parquet" in suffixes or suffixes.endswith(".pq"):
        df = pd.read_parquet(path)
        if not isinstance(df.index, pd.RangeIndex):
            df = df.reset_index()
    elif ".csv" in suffixes or suffixes.endswith(".txt"):
        df = pd.read_csv(path)
    else:
        raise ValueError(f"{path.name}: not a CSV (.csv, .csv.gz) or Parquet (.parquet) file")
    if df.empty:
        raise ValueError(f"{path.name}: no rows")
    is_long = "symbol" in {str(c).strip().lower() for c in df.columns}
    if format == "long" or (format == "auto" and is_long):
        return frame_from_long(df)
    return frame_from_wide(df)


class DayReplay(Node):
    """The replay loop shared by ``Replay`` and ``TrendFollowing``: a frame, day by day.

    Subclasses provide ``load(ctx) -> MarketFrame``; params must include ``mode``, ``speed``,
    ``start``, ``end``, ``symbols`` and ``sort``.
    """

    market_data = Output(dict, codec="msgpack", doc="Bar per symbol (mode bars) or one Panel per day (mode panel)")

    def load(self, ctx: Any) -> MarketFrame:
        raise NotImplementedError

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        frame = self.load(ctx)
        self.missing = [s for s in p.symbols if s not in set(frame.symbols)] if p.symbols else []
        if self.missing and ctx.log.isEnabledFor(logging.WARNING):
            ctx.log.warning("%d requested symbols are not in the data: %s", len(self.missing), self.missing[:20])
        frame = frame.filtered(p.start, p.end, p.symbols)
        self.frame = frame.sorted() if getattr(p, "sort", True) else frame
        self.guard = MarketGuard(log=ctx.log, what="row")
        self.counts = {"days": 0, "bars": 0, "panels": 0}
        self.total_days = int(np.unique(self.frame.t).size) if len(self.frame) else 0

    def summary(self) -> dict[str, int]:
        """Days, bars and panels published; rows skipped by the guard, per reason; requested symbols missing."""
        return {**self.counts, **self.guard.summary(), "missing_symbols": len(self.missing)}

    def progress(self) -> tuple[int, int, str]:
        """Days replayed of the days to replay: the live view's progress bar and ETA."""
        return self.counts["days"], self.total_days, "days"

    def run(self, ctx: Any) -> Iterator[None]:
        p, f = ctx.params, self.frame
        if not len(f):
            return
        pacer = Pacer(p.speed / 1000.0)
        starts = np.concatenate(([0], np.flatnonzero(np.diff(f.t)) + 1, [len(f)]))
        emit_day = self._panel if p.mode == "panel" else self._bars
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist(), strict=True):
            yield from pacer.wait()
            emit_day(ctx, int(f.t[a]), a, b)
            self.counts["days"] += 1
            yield None

    def _bars(self, ctx: Any, t: int, a: int, b: int) -> None:
        f, guard, emitted = self.frame, self.guard, 0
        closes = f.close[a:b].tolist()
        cols = [None if c is None else c[a:b].tolist() for c in (f.open, f.high, f.low, f.volume)]
        for k, code in enumerate(f.sym[a:b].tolist()):
            symbol, close = f.symbols[code], closes[k]
            o, h, lo, v = (None if c is None else c[k] for c in cols)
            if not guard.check_bar(symbol, t, close, o, h, lo):
                continue
            bar = make_bar(symbol, t, _or(o, close), _or(h, close), _or(lo, close), close, _or(v, 0.0))
            ctx.emit("market_data", bar, topic=topic_for(symbol), event_time=t)
            emitted += 1
        self.counts["bars"] += emitted

    def _panel(self, ctx: Any, t: int, a: int, b: int) -> None:
        f, guard, n = self.frame, self.guard, len(self.frame.symbols)
        codes = f.sym[a:b]
        close = f.close[a:b]
        missing = np.isnan(close)
        if missing.any():  # a long file's row without a close: bad data, not "no bar"
            for k in np.flatnonzero(missing).tolist():
                guard.skip("bad_price", f.symbols[codes[k]], t, "close is missing (NaN)")
        uniq, first = np.unique(codes, return_index=True)
        if len(uniq) < b - a:
            dup = np.ones(b - a, bool)
            dup[first] = False
            for k in np.flatnonzero(dup).tolist():
                guard.skip("duplicate", f.symbols[codes[k]], t, "a second row for this symbol and date")
        full = np.full(n, np.nan)
        full[uniq] = close[first]
        ok = guard.check_panel(t, f.symbols, full)
        if not ok.any():
            return
        full[~ok] = np.nan
        cols: dict[str, np.ndarray] = {}
        for name in ("open", "high", "low", "volume"):
            column = getattr(f, name)
            if column is not None:
                values = np.full(n, np.nan)
                values[uniq] = column[a:b][first]
                values[~ok] = np.nan
                cols[name] = values
        ctx.emit("market_data", make_panel(t, f.symbols, full, **cols), topic=TOPIC, event_time=t)
        self.counts["panels"] += 1


def _or(value: float | None, default: float) -> float:
    return default if value is None or value != value else value


class Replay(DayReplay):
    """Replays a CSV or Parquet file of daily bars or closes (long or wide), as bars or panels.

    Why: backtests and tuning run the same graph as live trading on recorded data, as fast
    as the graph can go or at a pace that looks live (``speed`` ms per trading day).
    Bad rows (missing, zero or negative prices, duplicate or out-of-order dates) are
    skipped and counted in ``summary()``.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str = Field("", validate_default=True, description="CSV (.csv, .csv.gz) or Parquet (.parquet) file")
        format: Literal["auto", "long", "wide"] = Field(
            "auto", description="long (date,symbol,open,high,low,close,volume), wide (date,<SYM>...) or auto-detect")
        mode: Literal["bars", "panel"] = Field(
            "bars", description="a Bar per symbol on market_data.<SYMBOL>, or one Panel per day on market_data")
        speed: float = Field(0.0, ge=0, description="milliseconds per trading day; 0 replays as fast as possible")
        start: str | None = Field(None, description="first date replayed (YYYY-MM-DD, inclusive)")
        end: str | None = Field(None, description="last date replayed (YYYY-MM-DD, inclusive)")
        symbols: list[str] | None = Field(None, description="replay only these symbols, in this order")
        sort: bool = Field(True, description="replay rows in date order; false keeps file order (older rows dropped)")

        @field_validator("path")
        @classmethod
        def _path(cls, value: str) -> str:
            if not value:
                raise ValueError("a market data file is required: params.path (CSV or Parquet)")
            return value

        @field_validator("start", "end")
        @classmethod
        def _date(cls, value: str | None) -> str | None:
            parse_date(value)
            return value

    def load(self, ctx: Any) -> MarketFrame:
        return read_market_file(ctx.params.path, ctx.params.format)

"""The daily continuous futures shipped in the PyPI package ``trendfollowing`` (84 markets).

The package's market data is not under its code licence, so this repository never copies
it: it is read at run time from the installed package, located through
``importlib.metadata`` (``trendfollowing/resources/futures/*.csv``). Install it without
its dependencies::

    pip install --no-deps trendfollowing

``tf_system_data_prices.csv`` holds back-adjusted daily closes, one column per market
(Bloomberg-style tickers such as ``ES1 Index``, ``TY1 Comdty``, ``EC1 Curncy``), Monday to
Friday from 1959; ``tf_system_data_descriptive_df.csv`` names each market and its asset
class (Equities, Bonds, ...).
"""

from __future__ import annotations

import functools
import importlib.metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dmnflow import ConfigError

from .common import parse_date
from .replay import DayReplay, MarketFrame, frame_from_wide

__all__ = ["INSTALL", "TrendFollowing", "TrendFollowingMissing", "load_trendfollowing", "trendfollowing_file",
           "trendfollowing_info"]

INSTALL = "pip install --no-deps trendfollowing"
_RESOURCES = "trendfollowing/resources/futures/"
PRICES = "tf_system_data_prices.csv"
INFO = "tf_system_data_descriptive_df.csv"


class TrendFollowingMissing(RuntimeError, ConfigError):
    """The ``trendfollowing`` package (or one of its data files) is not installed."""


def trendfollowing_file(name: str = PRICES) -> Path:
    """The path of one of the package's futures CSV files, found through ``importlib.metadata``.

    Raises:
        TrendFollowingMissing: with the exact install command, when the package is missing.
    """
    try:
        dist = importlib.metadata.distribution("trendfollowing")
    except importlib.metadata.PackageNotFoundError:
        raise TrendFollowingMissing(
            f"the futures data needs the PyPI package 'trendfollowing', which is not installed; "
            f"install it with: {INSTALL}") from None
    for file in dist.files or ():
        if str(file).replace("\\", "/") == _RESOURCES + name:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise TrendFollowingMissing(f"trendfollowing {dist.version} is installed but has no {_RESOURCES}{name}; "
                                f"reinstall it with: {INSTALL}")


@functools.lru_cache(maxsize=2)
def _read(name: str) -> Any:
    import pandas as pd

    if name == INFO:
        return pd.read_csv(trendfollowing_file(name))
    df = pd.read_csv(trendfollowing_file(name), index_col=0)
    df.index = pd.DatetimeIndex(pd.to_datetime(df.index), name="date")
    return df.sort_index()


def trendfollowing_info() -> Any:
    """The markets: a DataFrame with columns ``ticker, group, name`` (84 rows), in file order."""
    df = _read(INFO).copy()
    return df.rename(columns={"group_data": "group", "names": "name"})[["ticker", "group", "name"]]


def load_trendfollowing(start: Any = None, end: Any = None, symbols: list[str] | None = None,
                        groups: list[str] | None = None) -> Any:
    """Daily closes of the ``trendfollowing`` futures as a wide DataFrame (business days x tickers).

    ``start``/``end`` are inclusive dates; ``symbols`` selects tickers (in that order) and
    ``groups`` asset classes (``Equities``, ``Bonds``, ...); days on which none of the selected
    markets has a price are left out. Empty cells are days without a price for that market.
    The file is read once per process (cached); callers get their own copy.

    Raises:
        TrendFollowingMissing: the package is not installed (the message has the command).
        ValueError: an unknown ticker or group.
    """
    df = _read(PRICES)
    columns = list(df.columns)
    if groups:
        info = trendfollowing_info()
        unknown = sorted(set(groups) - set(info["group"]))
        if unknown:
            raise ValueError(f"unknown trendfollowing groups {unknown}; groups: {sorted(set(info['group']))}")
        in_groups = set(info.loc[info["group"].isin(groups), "ticker"])
        columns = [c for c in columns if c in in_groups]
    if symbols:
        unknown = [s for s in symbols if s not in df.columns]
        if unknown:
            raise ValueError(f"unknown trendfollowing tickers {unknown}; e.g. {list(df.columns[:5])}")
        chosen = set(columns)
        columns = [s for s in symbols if s in chosen]
    import pandas as pd

    start_date, end_date = parse_date(start), parse_date(end)
    lo = None if start_date is None else pd.Timestamp(start_date)
    hi = None if end_date is None else pd.Timestamp(end_date)
    out = df.loc[lo:hi, columns]
    out = out.loc[out.notna().any(axis=1)]
    return out[out.index.day_of_week < 5].copy()


class TrendFollowing(DayReplay):
    """Replays the ``trendfollowing`` package's 84 daily continuous futures, as bars or panels.

    Why: the paper's results are on daily futures; this is the offline data set the
    backtest reproduces them on, read at run time from the installed package (never
    copied into the repository). Setup fails with the install command when the package is
    missing. ``load_trendfollowing`` gives the same data to scripts (training, reports).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        mode: Literal["bars", "panel"] = Field(
            "panel", description="a Bar per symbol on market_data.<SYMBOL>, or one Panel per day on market_data")
        speed: float = Field(0.0, ge=0, description="milliseconds per trading day; 0 replays as fast as possible")
        start: str | None = Field(None, description="first date replayed (YYYY-MM-DD, inclusive); none: 1959")
        end: str | None = Field(None, description="last date replayed (YYYY-MM-DD, inclusive); none: the latest")
        symbols: list[str] | None = Field(None, description="tickers to replay (e.g. 'ES1 Index'), in this order")
        groups: list[str] | None = Field(None, description="asset classes to replay: Equities, Bonds, ...")

        @field_validator("start", "end")
        @classmethod
        def _date(cls, value: str | None) -> str | None:
            parse_date(value)
            return value

    def load(self, ctx: Any) -> MarketFrame:
        p = ctx.params
        return frame_from_wide(load_trendfollowing(p.start, p.end, p.symbols, p.groups))

"""From daily closes to what the models learn from and are judged on.

:func:`build_panel` computes, once per data set, every per-asset-and-day array the training
script and the walk-forward evaluation need, from the vectorised reference features
(``nodes/features/reference.py``, the spec the streaming node is tested against, so a
model sees in training exactly what the graph feeds it):

- ``features`` (dates, assets, 8): the DMN inputs;
- ``sigma`` (dates, assets): ex-ante volatility, EWM span 60, annualised;
- ``next_ret`` (dates, assets): the asset's next return in its own time (its next price
  over today's), the ``r_{t+1}`` that today's position earns;
- ``next_date``: the date of that next price (a training period must not use a target
  whose price lies in the period it is later tested on);
- ``tsmom`` and ``macd``: the baseline positions.

:func:`make_sequences` cuts the panel into training windows per asset. A window holds
consecutive rows of one asset's own series (its days with a price; a gap day of another
market is not a step) on which all 8 features, sigma and the target are defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["VOL_TARGET", "Panel", "Sequences", "build_panel", "make_sequences", "scaled_returns", "target_dates"]

VOL_TARGET = 0.15  # the paper's annualised volatility target per asset


@dataclass
class Panel:
    """Per-date-and-asset arrays of one data set (rows: dates ascending; columns: symbols)."""

    dates: Any  # pandas DatetimeIndex
    symbols: list[str]
    features: np.ndarray  # (D, N, 8) float64, NaN where undefined
    sigma: np.ndarray  # (D, N) annualised ex-ante vol
    next_ret: np.ndarray  # (D, N) r_{t+1} in the asset's own time
    next_date: np.ndarray  # (D, N) datetime64[ns] of that next price (NaT where none)
    tsmom: np.ndarray  # (D, N)
    macd: np.ndarray  # (D, N)
    priced: np.ndarray  # (D, N) bool: the asset has a price that day

    def valid(self) -> np.ndarray:
        """Rows usable as a model step: priced, 8 finite features, sigma > 0 and a next return."""
        ok = self.priced & np.isfinite(self.features).all(axis=-1) & np.isfinite(self.sigma) & (self.sigma > 0)
        return ok & np.isfinite(self.next_ret)

    def window_ready(self, window: int) -> np.ndarray:
        """(D, N) bool: the asset has ``window`` consecutive own rows with all 8 features finite,
        ending today: the rows for which the features node emits a window (its ``run >= window``)."""
        finite = self.priced & np.isfinite(self.features).all(axis=-1)
        run = np.zeros(finite.shape[1], np.int64)
        out = np.zeros(finite.shape, bool)
        for d in range(finite.shape[0]):
            pr = self.priced[d]
            run = np.where(pr, np.where(finite[d], run + 1, 0), run)
            out[d] = pr & (run >= window)
        return out


def build_panel(closes: Any) -> Panel:
    """All the arrays of :class:`Panel` from a wide DataFrame of daily closes."""
    import pandas as pd

    from nodes.features import reference as ref

    closes = closes.apply(pd.to_numeric, errors="coerce").astype(np.float64)
    priced = (np.isfinite(closes) & (closes > 0)).to_numpy()
    next_ret = np.full(closes.shape, np.nan)
    next_date = np.full(closes.shape, np.datetime64("NaT"), dtype="datetime64[ns]")
    dates = closes.index.to_numpy(dtype="datetime64[ns]")
    for j, col in enumerate(closes.columns):
        rows = np.flatnonzero(priced[:, j])
        p = closes[col].to_numpy()[rows]
        if rows.size >= 2:
            next_ret[rows[:-1], j] = p[1:] / p[:-1] - 1.0
            next_date[rows[:-1], j] = dates[rows[1:]]
    return Panel(dates=closes.index, symbols=[str(c) for c in closes.columns], features=ref.feature_tensor(closes),
                 sigma=ref.ewm_vol(closes, annualise=True).to_numpy(np.float64), next_ret=next_ret,
                 next_date=next_date, tsmom=ref.tsmom_signal(closes).to_numpy(np.float64),
                 macd=ref.macd_signal(closes).to_numpy(np.float64), priced=priced)


def scaled_returns(panel: Panel, delay: int = 0) -> np.ndarray:
    """The training target ``r_{t+1+delay} * 0.15 / sigma_t``: what a position of 1 decided at
    close t earns at 15% vol when it is traded ``delay`` days later (as
    ``evaluate.strategy_returns`` trades it: the row ``delay`` dates on, earning that row's next
    return; nothing where the asset has no price that day)."""
    ret = panel.next_ret
    if delay:
        ret = np.full_like(panel.next_ret, np.nan)
        ret[:-delay] = np.where(panel.priced[delay:], panel.next_ret[delay:], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return ret * VOL_TARGET / panel.sigma


def target_dates(panel: Panel, delay: int = 0) -> np.ndarray:
    """(D, N) the date of the price a target needs (:func:`scaled_returns`): a training period
    must not use one that lies in the period it is later tested on (NaT where none)."""
    if not delay:
        return panel.next_date
    out = np.full_like(panel.next_date, np.datetime64("NaT"))
    dates = panel.dates.to_numpy(dtype="datetime64[ns]")
    later = np.broadcast_to(dates[delay:, None], panel.next_date[delay:].shape)
    out[:-delay] = np.where(panel.priced[delay:], panel.next_date[delay:], later)
    return out


@dataclass
class Sequences:
    """Training windows: inputs, targets and sigmas, one row per window."""

    x: np.ndarray  # (S, W, 8) float32
    target: np.ndarray  # (S, W) float32: r_{t+1+delay} * 0.15 / sigma_t
    sigma: np.ndarray  # (S, W) float32: annualised sigma_t (for the turnover cost)
    dates: np.ndarray  # (S, W) datetime64[ns]: the date of each step

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def select(self, keep: np.ndarray) -> Sequences:
        """The windows where ``keep`` (bool, (S,)) is true."""
        return Sequences(self.x[keep], self.target[keep], self.sigma[keep], self.dates[keep])


def make_sequences(panel: Panel, start: Any, end: Any, window: int, stride: int | None = None,
                   delay: int = 0) -> Sequences:
    """Windows of ``window`` consecutive valid rows per asset, every ``stride`` rows (default:
    non-overlapping, as in the paper), whose dates lie in ``[start, end)`` and whose targets'
    prices also lie before ``end`` (no look-ahead into a later test period); the targets are
    those of a trade ``delay`` days after the signal (:func:`scaled_returns`).

    Windows are cut from the end of each run of valid rows backwards, so the most recent
    data is always used; a run shorter than ``window`` gives none.
    """
    import pandas as pd

    stride = stride or window
    lo = np.datetime64(pd.Timestamp(start), "ns") if start is not None else None
    hi = np.datetime64(pd.Timestamp(end), "ns") if end is not None else None
    dates = panel.dates.to_numpy(dtype="datetime64[ns]")
    target = scaled_returns(panel, delay)
    ok = panel.valid() & np.isfinite(target)
    if lo is not None:
        ok &= (dates >= lo)[:, None]
    if hi is not None:
        ok &= (dates < hi)[:, None] & (target_dates(panel, delay) < hi)
    xs, ts, ss, ds = [], [], [], []
    for j in range(ok.shape[1]):
        own = np.flatnonzero(panel.priced[:, j])  # the asset's own time
        good = ok[own, j]
        if not good.any():
            continue
        # runs of consecutive own rows that are all usable
        edges = np.flatnonzero(np.diff(np.concatenate([[0], good.astype(np.int8), [0]])))
        for a, b in zip(edges[0::2], edges[1::2], strict=True):
            for end_k in range(b, a + window - 1, -stride):
                rows = own[end_k - window:end_k]
                xs.append(panel.features[rows, j])
                ts.append(target[rows, j])
                ss.append(panel.sigma[rows, j])
                ds.append(dates[rows])
    if not xs:
        empty = np.zeros((0, window), np.float32)
        return Sequences(np.zeros((0, window, panel.features.shape[-1]), np.float32), empty, empty.copy(),
                         np.zeros((0, window), "datetime64[ns]"))
    return Sequences(np.stack(xs).astype(np.float32), np.stack(ts).astype(np.float32),
                     np.stack(ss).astype(np.float32), np.stack(ds))

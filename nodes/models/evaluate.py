"""Positions from a trained network over a date range, and the paper's strategy returns and figures.

Shared by the training script (its out-of-sample check) and the walk-forward evaluation,
so both score models and baselines the same way:

- position ``X_t`` of an asset on a date comes from the window of its last ``W`` own rows
  ending that date (what the graph's features node sends the model that day);
- its return is ``X_t * 0.15 / sigma_t * r_{t+1} - c * 0.15 * |X_t / sigma_t - X_{t-1} / sigma_{t-1}|``
  (Lim et al. 2019, ``c`` the cost per unit of turnover), ``X_{t-1}`` the asset's previous
  own day (0 before its first position: entering costs too);
- the portfolio holds the weight ``w_t = X_t * 0.15 / sigma_t / N_t`` of each asset, ``N_t`` the
  assets with a position that day, so its return is the mean over them (the paper's);
- a return is dated by the day it is earned (``r_{t+1}`` on the asset's next price date), a
  cost by the day of the trade, as an account marked every day books them: the graph's
  Performance node sees the same daily series (docs/dmn/backtest.md, "graph and vectorised");
- ``delay`` days between signal and trade: the weight computed at close ``t`` is traded at the
  close ``delay`` days later and earns the return after that;
- figures are reported after rescaling the period's returns to 15% annualised volatility,
  as the paper's tables do (Sharpe and Sortino do not change; returns, drawdowns and Calmar
  become comparable across strategies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from nodes.monitoring import metrics

from .data import VOL_TARGET, Panel

__all__ = ["FIGURES", "baselines", "figures", "predict_positions", "strategy_returns", "turnover"]

FIGURES = ("sharpe", "sortino", "calmar", "mdd", "ann_return", "ann_vol")


def predict_positions(net: Any, panel: Panel, window: int, start: Any = None, end: Any = None,
                      chunk: int = 4096) -> np.ndarray:
    """(D, N) positions of ``net`` (time-distributed, with ``forward_last``) on the dates in
    ``[start, end)`` where an asset has a full window of finite features; NaN elsewhere."""
    import pandas as pd
    import torch

    dates = panel.dates.to_numpy(dtype="datetime64[ns]")
    in_range = np.ones(len(dates), bool)
    if start is not None:
        in_range &= dates >= np.datetime64(pd.Timestamp(start), "ns")
    if end is not None:
        in_range &= dates < np.datetime64(pd.Timestamp(end), "ns")
    ready = panel.window_ready(window) & in_range[:, None]
    out = np.full(ready.shape, np.nan)
    net.eval()
    for j in range(ready.shape[1]):
        own = np.flatnonzero(panel.priced[:, j])
        want = np.flatnonzero(ready[own, j])  # positions in the asset's own series
        if not want.size:
            continue
        series = panel.features[own, j].astype(np.float32)
        views = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)  # (n-W+1, 8, W)
        for a in range(0, want.size, chunk):
            k = want[a:a + chunk]
            x = torch.from_numpy(np.ascontiguousarray(views[k - window + 1].transpose(0, 2, 1)))
            with torch.inference_mode():
                y = net.forward_last(x)[:, 0].numpy()
            out[own[k], j] = y
    return out


def baselines(panel: Panel, universe: int | None = None) -> dict[str, np.ndarray]:
    """The classic strategies' positions (long, tsmom, macd; the graph's names), on the asset-days
    with ``universe`` days of all 8 features (the features node's ``ready`` for 63, ``ready_long``
    for its long window), or, with None, wherever the signal and sigma are defined (as the
    graph's baselines without a universe)."""
    ok = np.isfinite(panel.sigma) & panel.priced
    if universe is not None:
        ok &= panel.window_ready(universe)
    out = {}
    for name, pos in {"long": np.ones_like(panel.sigma), "tsmom": panel.tsmom, "macd": panel.macd}.items():
        out[name] = np.where(ok & np.isfinite(pos), np.clip(pos, -1.0, 1.0), np.nan)
    return out


def _legs(panel: Panel, positions: np.ndarray, delay: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per asset and trade day: the portfolio weight held (``X/sigma * 0.15 / N``, computed ``delay``
    days earlier), its turnover ``0.15 * |d(X/sigma)| / N`` (previous = the asset's previous own
    day; flat before its first position), and whether the asset holds a position."""
    x = np.asarray(positions, np.float64)
    sigma = panel.sigma
    held = np.isfinite(x) & np.isfinite(sigma) & (sigma > 0)
    count = held.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = np.where(held, x / sigma, 0.0)  # X / sigma, 0 when flat
        scale = np.where(count > 0, 1.0 / count, 0.0)[:, None]
    if delay:
        lev, scale, held = _shift(lev, delay, 0.0), _shift(scale, delay, 0.0), _shift(held, delay, False)
    held &= panel.priced  # a trade needs today's price
    lev = np.where(held, lev, 0.0)
    turn = np.zeros_like(lev)
    for j in range(x.shape[1]):
        own = np.flatnonzero(panel.priced[:, j])
        lj = lev[own, j]
        turn[own, j] = VOL_TARGET * np.abs(lj - np.concatenate([[0.0], lj[:-1]]))
    return VOL_TARGET * lev * scale, turn * scale, held


def _shift(a: np.ndarray, k: int, fill: Any) -> np.ndarray:
    """``a`` moved ``k`` rows (days) later, ``fill`` in the first ``k``."""
    out = np.full_like(a, fill)
    out[k:] = a[:-k]
    return out


def _by_day(panel: Panel, weight: np.ndarray, turn: np.ndarray, held: np.ndarray, cost_bps: float
            ) -> tuple[Any, Any]:
    """The daily return (earned by the previous day's weights, less the day's trading costs) and
    turnover on every date of the panel (0 while nothing is held, as a flat account), two Series."""
    import pandas as pd

    dates = panel.dates.to_numpy(dtype="datetime64[ns]")
    earns = held & np.isfinite(panel.next_ret)
    gross = np.zeros(len(dates))
    rows, cols = np.nonzero(earns)
    when = np.searchsorted(dates, panel.next_date[rows, cols])  # the asset's next price date
    np.add.at(gross, when, weight[rows, cols] * panel.next_ret[rows, cols])
    daily_turn = turn.sum(axis=1)
    net = gross - cost_bps * 1e-4 * daily_turn
    return (pd.Series(net, index=panel.dates, name="return"),
            pd.Series(daily_turn, index=panel.dates, name="turnover"))


def strategy_returns(panel: Panel, positions: np.ndarray, cost_bps: float = 0.0, delay: int = 0) -> Any:
    """The portfolio's daily returns (a pandas Series by the day they are earned, every date of the
    panel) of ``positions`` (D, N), net of ``cost_bps`` per unit of turnover, traded ``delay``
    days after the signal. Score a period with ``figures(returns, start, end)``."""
    weight, turn, held = _legs(panel, positions, delay)
    return _by_day(panel, weight, turn, held, cost_bps)[0]


def turnover(panel: Panel, positions: np.ndarray, delay: int = 0) -> Any:
    """The portfolio's daily turnover (mean over its assets of ``0.15 * |d(X/sigma)|``), a Series by date.

    Its mean times 252 is the annual turnover; the gross mean return over the mean turnover
    is the cost per unit of turnover at which the strategy breaks even.
    """
    weight, turn, held = _legs(panel, positions, delay)
    return _by_day(panel, weight, turn, held, 0.0)[1]


def figures(returns: Any, start: Any = None, end: Any = None, vol_target: float | None = VOL_TARGET
            ) -> dict[str, float]:
    """Sharpe, Sortino, Calmar, max drawdown, annual return and vol of the returns in
    ``[start, end]`` (inclusive dates), rescaled to ``vol_target`` over that period first."""
    r = returns.loc[start:end].to_numpy(np.float64) if hasattr(returns, "loc") else np.asarray(returns, np.float64)
    if r.size < 2:
        return dict.fromkeys(FIGURES, math.nan)
    vol = r.std(ddof=1) * math.sqrt(metrics.TRADING_DAYS)
    if vol_target is not None and vol > 0:
        r = r * (vol_target / vol)
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])
    return {"sharpe": metrics.sharpe(r), "sortino": metrics.sortino(r), "calmar": metrics.calmar(r, equity),
            "mdd": metrics.max_drawdown(equity), "ann_return": metrics.annualized_return(r),
            "ann_vol": metrics.annualized_vol(r)}

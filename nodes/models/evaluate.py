"""Positions from a trained network over a date range, and the paper's strategy returns and figures.

Shared by the training script (its out-of-sample check) and the walk-forward evaluation,
so both score models and baselines the same way:

- position ``X_t`` of an asset on a date comes from the window of its last ``W`` own rows
  ending that date (what the graph's features node sends the model that day);
- its return is ``X_t * 0.15 / sigma_t * r_{t+1} - c * 0.15 * |X_t / sigma_t - X_{t-1} / sigma_{t-1}|``
  (Lim et al. 2019, ``c`` the cost per unit of turnover), ``X_{t-1}`` the asset's previous
  own day (0 before its first position: entering costs too);
- the portfolio's return on a date is the mean over the assets with a position then;
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

__all__ = ["FIGURES", "figures", "predict_positions", "strategy_returns", "turnover"]

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


def _legs(panel: Panel, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per asset-day: the gross vol-scaled return, the turnover ``0.15 * |X_t/sigma_t - X_{t-1}/sigma_{t-1}|``
    (previous = the asset's previous own day; flat before its first position), and whether it trades."""
    x = np.asarray(positions, np.float64)
    sigma, r = panel.sigma, panel.next_ret
    active = np.isfinite(x) & np.isfinite(sigma) & (sigma > 0) & np.isfinite(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        lev = np.where(active, x / sigma, 0.0)  # X / sigma, 0 when flat
        gross = np.where(active, lev * VOL_TARGET * r, 0.0)
    turn = np.zeros_like(gross)
    for j in range(x.shape[1]):
        own = np.flatnonzero(panel.priced[:, j])
        lj = lev[own, j]
        turn[own, j] = VOL_TARGET * np.abs(lj - np.concatenate([[0.0], lj[:-1]]))
    return gross, np.where(active, turn, 0.0), active


def strategy_returns(panel: Panel, positions: np.ndarray, cost_bps: float = 0.0) -> Any:
    """The portfolio's daily returns (a pandas Series by position date) of ``positions`` (D, N),
    net of ``cost_bps`` per unit of turnover."""
    import pandas as pd

    gross, turn, active = _legs(panel, positions)
    count = active.sum(axis=1)
    keep = count > 0
    net = gross - cost_bps * 1e-4 * turn
    return pd.Series(net.sum(axis=1)[keep] / count[keep], index=panel.dates[keep], name="return")


def turnover(panel: Panel, positions: np.ndarray) -> Any:
    """The portfolio's daily turnover (mean over its assets of ``0.15 * |d(X/sigma)|``), a Series by date.

    Its mean times 252 is the annual turnover; the gross mean return over the mean turnover
    is the cost per unit of turnover at which the strategy breaks even.
    """
    import pandas as pd

    _, turn, active = _legs(panel, positions)
    count = active.sum(axis=1)
    keep = count > 0
    return pd.Series(turn.sum(axis=1)[keep] / count[keep], index=panel.dates[keep], name="turnover")


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

"""The DMN features, vectorised with pandas: the specification the streaming engine is tested against.

Input: a wide DataFrame of daily closes (rows: dates, ascending; columns: symbols). Every
function works on each asset's own series (its finite, positive prices, in order; other
cells are days without a price) and reindexes the result to the input's rows, NaN where
the asset has no price or the value is not yet defined. Conventions are those of
``nodes/features/engine.py`` (and docs/dmn/features.md): returns ``p_t/p_{t-1} - 1``;
``sigma`` = ``ewm(span=60, min_periods=60).std()`` of daily returns; normalised returns
``(p_t/p_{t-k} - 1) / sigma_t / sqrt(k)``; MACD with ``ewm(halflife=ln(0.5)/ln(1-1/n))``
(alpha = 1/n), ``q = m / std_63(p)``, ``Y = q / std_252(q)`` (exact rolling sample stds,
:func:`rolling_std`), no back-filling (a feature is NaN until its windows are full). The paper's own code
back-fills the warm-up with later values, which looks ahead; this does not.

The training script builds its windows from :func:`feature_tensor`; the graph's
``DMNFeatures`` node must agree with it to 1e-9.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .engine import (
    FEATURE_NAMES,
    MACD_PAIRS,
    PRICE_STD_WINDOW,
    RETURN_HORIZONS,
    SIGNAL_STD_WINDOW,
    TRADING_DAYS,
    VOL_SPAN,
    macd_response,
)

__all__ = ["daily_returns", "dmn_features", "ewm_vol", "feature_tensor", "macd_features", "macd_signal",
           "normalised_returns", "rolling_std", "tsmom_signal"]


def _per_asset(closes: Any, fn: Callable[[Any], Any]) -> Any:
    """Apply ``fn`` to each column's own series (finite positive prices) and realign to all rows."""
    import pandas as pd

    out = {}
    for col in closes.columns:
        s = pd.to_numeric(closes[col], errors="coerce").astype(np.float64)
        s = s[np.isfinite(s) & (s > 0)]
        out[col] = fn(s).reindex(closes.index)
    return pd.DataFrame(out, index=closes.index, columns=closes.columns)


def _returns(s: Any, k: int = 1) -> Any:
    return s / s.shift(k) - 1.0


def _vol(s: Any, span: int = VOL_SPAN) -> Any:
    return _returns(s).ewm(span=span, min_periods=span).std()


def daily_returns(closes: Any) -> Any:
    """``p_t / p_{t-1} - 1`` per asset, over its own previous price."""
    return _per_asset(closes, _returns)


def ewm_vol(closes: Any, span: int = VOL_SPAN, annualise: bool = False) -> Any:
    """Ex-ante volatility: EWM std (span 60, defined after 60 returns) of daily returns; ``x sqrt(252)``
    when ``annualise``."""
    vol = _per_asset(closes, lambda s: _vol(s, span))
    return vol * math.sqrt(TRADING_DAYS) if annualise else vol


def normalised_returns(closes: Any, k: int) -> Any:
    """``(p_t / p_{t-k} - 1) / sigma_t / sqrt(k)``, sigma the daily EWM std (span 60)."""
    return _per_asset(closes, lambda s: _returns(s, k) / _vol(s) / np.sqrt(k))


def rolling_std(s: Any, window: int) -> Any:
    """Sample std (ddof 1) over each full window of ``window`` values, two-pass (exact to rounding).

    NaN when the window is not full or holds a NaN; exactly 0 when its values are all equal.
    pandas' ``rolling().std()`` updates its sums as the window slides and can be off by ~1e-8
    relative when the variance is small next to the mean; this is the precise definition.
    """
    import pandas as pd
    from numpy.lib.stride_tricks import sliding_window_view

    values = s.to_numpy(np.float64)
    out = np.full(values.shape[0], np.nan)
    if values.shape[0] >= window:
        win = sliding_window_view(values, window)
        std = win.std(axis=1, ddof=1)
        out[window - 1:] = np.where(win.max(axis=1) == win.min(axis=1), 0.0, std)
    return pd.Series(out, index=s.index)


def _macd(s: Any, short: int, long: int) -> Any:
    def ewma(n: int) -> Any:
        return s.ewm(halflife=np.log(0.5) / np.log(1 - 1 / n)).mean()

    m = ewma(short) - ewma(long)
    std = rolling_std(s, PRICE_STD_WINDOW)
    q = m / std.where(std > 0)
    q = q.where(np.isfinite(q))
    qstd = rolling_std(q, SIGNAL_STD_WINDOW)
    return q / qstd.where(qstd > 0)


def macd_features(closes: Any, short: int, long: int) -> Any:
    """The paper's normalised MACD ``Y = q / std_252(q)``, ``q = (EWMA_S - EWMA_L) / std_63(p)``."""
    return _per_asset(closes, lambda s: _macd(s, short, long))


def tsmom_signal(closes: Any, lookback: int = TRADING_DAYS) -> Any:
    """The TSMOM baseline position: the sign of the 252-day return (NaN until it exists)."""
    return np.sign(_per_asset(closes, lambda s: _returns(s, lookback)))


def macd_signal(closes: Any) -> Any:
    """The MACD baseline position (Baz et al. 2015, as in the paper): ``mean_k phi(Y_k)``,
    ``phi(y) = y exp(-y^2/4) / 0.89``, over (8,24), (16,48), (32,96)."""
    parts = [macd_response(macd_features(closes, s, lo)) for s, lo in MACD_PAIRS]
    return sum(parts[1:], parts[0]) / len(parts)


def dmn_features(closes: Any) -> dict[str, Any]:
    """The 8 DMN inputs: ``{name: DataFrame (dates x symbols)}`` in ``FEATURE_NAMES`` order."""
    out = {f"ret_{k}": normalised_returns(closes, k) for k in RETURN_HORIZONS}
    out.update({f"macd_{s}_{lo}": macd_features(closes, s, lo) for s, lo in MACD_PAIRS})
    assert tuple(out) == FEATURE_NAMES
    return out


def feature_tensor(closes: Any) -> np.ndarray:
    """The 8 features as one float64 array of shape (dates, symbols, 8), NaN where undefined."""
    return np.stack([frame.to_numpy(np.float64) for frame in dmn_features(closes).values()], axis=-1)

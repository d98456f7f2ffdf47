"""Performance metrics of a strategy, as plain functions of its equity curve and returns.

Conventions (also in docs/dmn/monitoring.md):

- ``r`` are simple per-period returns ``E_t / E_{t-1} - 1``; ``periods`` per year is 252
  for daily bars. Risk-free rate 0.
- Annualised return is arithmetic, ``mean(r) * periods`` (the paper's E[Return]);
  ``cagr`` is the geometric one.
- Volatility is the sample standard deviation (``ddof=1``) times ``sqrt(periods)``.
- Sharpe ``= mean(r) / std(r) * sqrt(periods)``; Sortino ``= mean(r) * periods /
  downside deviation``, with downside deviation ``sqrt(mean(min(r, 0)^2)) * sqrt(periods)``
  (all periods in the mean); Calmar ``= annualised return / max drawdown``.
- Drawdown ``1 - E_t / max_{s<=t} E_s`` (a fraction, >= 0); max drawdown its maximum.
- VaR 95 (historical) ``= -quantile(r, 0.05)`` with linear interpolation: the loss (a
  positive number when the 5% worst period loses) not exceeded on 95% of periods.
- Hit rate: the share of positive returns among the non-zero ones (flat periods, e.g.
  while the kill switch holds, do not count).
- Turnover: traded notional over the equity before the trade, averaged over periods and
  annualised (``mean(traded_t / E_{t-1}) * periods``).

Undefined figures (too few periods, zero volatility, no drawdown) are NaN, never raised.
``RunningStats`` keeps the same figures in O(1) per period for streaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "TRADING_DAYS", "RunningStats", "annualized_return", "annualized_vol", "avg_win_loss", "cagr", "calmar",
    "downside_deviation", "drawdowns", "hit_rate", "max_drawdown", "performance", "returns_from_equity", "sharpe",
    "sortino", "turnover", "var_historical",
]

TRADING_DAYS = 252
NAN = float("nan")


def _arr(x: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def returns_from_equity(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """Simple returns ``E_t / E_{t-1} - 1`` (one fewer than the equity points)."""
    e = _arr(equity)
    if e.size < 2:
        return np.empty(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return e[1:] / e[:-1] - 1.0


def annualized_return(r: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """Arithmetic annualised return ``mean(r) * periods``."""
    r = _arr(r)
    return float(r.mean() * periods) if r.size else NAN


def cagr(equity: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """Compound annual growth ``(E_n / E_0) ** (periods / n) - 1`` over ``n`` periods."""
    e = _arr(equity)
    n = e.size - 1
    if n < 1 or not e[0] > 0 or not e[-1] >= 0:
        return NAN
    return float((e[-1] / e[0]) ** (periods / n) - 1.0)


def annualized_vol(r: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """Sample standard deviation (ddof=1) times ``sqrt(periods)``."""
    r = _arr(r)
    return float(r.std(ddof=1) * math.sqrt(periods)) if r.size >= 2 else NAN


def sharpe(r: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """Annualised Sharpe ratio ``mean / std(ddof=1) * sqrt(periods)`` (risk-free 0)."""
    r = _arr(r)
    if r.size < 2:
        return NAN
    sd = r.std(ddof=1)
    return float(r.mean() / sd * math.sqrt(periods)) if sd > 0 else NAN


def downside_deviation(r: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """``sqrt(mean(min(r, 0)^2)) * sqrt(periods)``, the mean over all periods."""
    r = _arr(r)
    if not r.size:
        return NAN
    neg = np.minimum(r, 0.0)
    return float(math.sqrt(float(np.mean(neg * neg))) * math.sqrt(periods))


def sortino(r: Sequence[float] | np.ndarray, periods: int = TRADING_DAYS) -> float:
    """Annualised return over downside deviation."""
    dd = downside_deviation(r, periods)
    return annualized_return(r, periods) / dd if dd > 0 else NAN


def drawdowns(equity: Sequence[float] | np.ndarray) -> np.ndarray:
    """``1 - E_t / running peak``, per point."""
    e = _arr(equity)
    if not e.size:
        return np.empty(0)
    peak = np.maximum.accumulate(e)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, 1.0 - e / peak, 0.0)


def max_drawdown(equity: Sequence[float] | np.ndarray) -> float:
    """The largest drawdown from a running peak, as a fraction (0 when never below a peak)."""
    dd = drawdowns(equity)
    return float(dd.max()) if dd.size else NAN


def calmar(r: Sequence[float] | np.ndarray, equity: Sequence[float] | np.ndarray,
           periods: int = TRADING_DAYS) -> float:
    """Annualised return over max drawdown."""
    mdd = max_drawdown(equity)
    return annualized_return(r, periods) / mdd if mdd > 0 else NAN


def var_historical(r: Sequence[float] | np.ndarray, level: float = 0.95) -> float:
    """Historical value at risk: ``-quantile(r, 1 - level)`` (linear interpolation)."""
    r = _arr(r)
    return float(-np.quantile(r, 1.0 - level)) if r.size else NAN


def hit_rate(r: Sequence[float] | np.ndarray) -> float:
    """Share of positive returns among the non-zero ones."""
    r = _arr(r)
    moved = int(np.count_nonzero(r))
    return float(np.count_nonzero(r > 0) / moved) if moved else NAN


def avg_win_loss(r: Sequence[float] | np.ndarray) -> float:
    """Average positive return over the magnitude of the average negative one."""
    r = _arr(r)
    wins, losses = r[r > 0], r[r < 0]
    if not wins.size or not losses.size:
        return NAN
    return float(wins.mean() / -losses.mean())


def turnover(traded: Sequence[float] | np.ndarray, equity_before: Sequence[float] | np.ndarray,
             periods: int = TRADING_DAYS) -> float:
    """Annualised turnover ``mean(traded_t / E_{t-1}) * periods`` (equal-length inputs)."""
    tr, e = _arr(traded), _arr(equity_before)
    if not tr.size:
        return NAN
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(e > 0, tr / e, 0.0)
    return float(ratio.mean() * periods)


def performance(equity: Sequence[float] | np.ndarray, traded: Sequence[float] | np.ndarray | None = None,
                periods: int = TRADING_DAYS) -> dict[str, float]:
    """Every figure above for one equity curve, as a flat dict of floats.

    ``traded[i]`` is the notional traded in the period ending at ``equity[i]`` (for
    ``i >= 1``; ``traded[0]`` is traded before the first point and counts against it).
    """
    e = _arr(equity)
    r = returns_from_equity(e)
    out = {
        "periods": float(r.size),
        "equity": float(e[-1]) if e.size else NAN,
        "pnl": float(e[-1] - e[0]) if e.size else NAN,
        "total_return": float(e[-1] / e[0] - 1.0) if e.size and e[0] > 0 else NAN,
        "ann_return": annualized_return(r, periods),
        "cagr": cagr(e, periods),
        "ann_vol": annualized_vol(r, periods),
        "sharpe": sharpe(r, periods),
        "sortino": sortino(r, periods),
        "downside_dev": downside_deviation(r, periods),
        "max_drawdown": max_drawdown(e),
        "drawdown": float(drawdowns(e)[-1]) if e.size else NAN,
        "calmar": calmar(r, e, periods),
        "var_95": var_historical(r, 0.95),
        "hit_rate": hit_rate(r),
        "avg_win_loss": avg_win_loss(r),
        "turnover": NAN,
    }
    if traded is not None and e.size >= 2:
        tr = _arr(traded)
        if tr.size == e.size:
            out["turnover"] = turnover(tr[1:], e[:-1], periods)
    return out


class RunningStats:
    """The figures of ``performance`` (VaR aside) kept in O(1) per period.

    ``add(equity, traded)`` takes the next point of the curve; the first point only sets
    the start. Mean and variance use Welford's update, so the figures agree with the
    batch functions to rounding.
    """

    __slots__ = ("periods", "n", "mean", "m2", "down2", "wins", "moved", "last", "first", "peak", "mdd",
                 "turn", "ret")

    def __init__(self, periods: int = TRADING_DAYS) -> None:
        self.periods = periods
        self.n = 0
        self.mean = self.m2 = self.down2 = self.turn = 0.0
        self.wins = self.moved = 0
        self.last = self.first = self.peak = NAN
        self.mdd = 0.0
        self.ret = NAN

    def copy(self) -> RunningStats:
        """An independent copy (a few floats)."""
        other = RunningStats.__new__(RunningStats)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def add(self, equity: float, traded: float = 0.0) -> None:
        """The next equity point and the notional traded since the previous one."""
        if self.last != self.last:  # first point (NaN)
            self.first = self.last = self.peak = equity
            return
        prev = self.last
        r = equity / prev - 1.0 if prev > 0 else 0.0
        self.ret = r
        self.n += 1
        delta = r - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (r - self.mean)
        if r < 0:
            self.down2 += r * r
        if r != 0:
            self.moved += 1
            if r > 0:
                self.wins += 1
        self.turn += traded / prev if prev > 0 else 0.0
        self.last = equity
        if equity > self.peak:
            self.peak = equity
        dd = 1.0 - equity / self.peak if self.peak > 0 else 0.0
        if dd > self.mdd:
            self.mdd = dd

    def snapshot(self) -> dict[str, float]:
        """The current figures, named as in ``performance``."""
        p, n = self.periods, self.n
        ann = self.mean * p if n else NAN
        sd = math.sqrt(self.m2 / (n - 1)) if n >= 2 else NAN
        dd = math.sqrt(self.down2 / n) * math.sqrt(p) if n else NAN
        started = self.first == self.first
        return {
            "periods": float(n),
            "equity": self.last,
            "pnl": self.last - self.first if started else NAN,
            "total_return": self.last / self.first - 1.0 if started and self.first > 0 else NAN,
            "return": self.ret,
            "ann_return": ann,
            "ann_vol": sd * math.sqrt(p) if n >= 2 else NAN,
            "sharpe": self.mean / sd * math.sqrt(p) if n >= 2 and sd > 0 else NAN,
            "sortino": ann / dd if n and dd > 0 else NAN,
            "max_drawdown": self.mdd if started else NAN,
            "drawdown": 1.0 - self.last / self.peak if started and self.peak > 0 else NAN,
            "calmar": ann / self.mdd if n and self.mdd > 0 else NAN,
            "hit_rate": self.wins / self.moved if self.moved else NAN,
            "turnover": self.turn / n * p if n else NAN,
        }

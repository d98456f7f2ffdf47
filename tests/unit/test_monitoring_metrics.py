"""The performance metrics against hand-computed and numpy/pandas-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from nodes.monitoring import metrics as m

EQ = [100.0, 110.0, 99.0, 108.9]  # returns +10%, -10%, +10%
R = m.returns_from_equity(EQ)


def close(a: float, b: float, tol: float = 1e-12) -> bool:
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def test_returns_from_equity() -> None:
    assert np.allclose(R, [0.1, -0.1, 0.1], rtol=0, atol=1e-15)
    assert m.returns_from_equity([5.0]).size == 0


def test_hand_computed_figures() -> None:
    # mean 1/30, sample variance ((2/30)^2 + (4/30)^2 + (2/30)^2) / 2 = 1/75
    assert close(m.annualized_return(R), 252 / 30)
    assert close(m.annualized_vol(R), math.sqrt(1 / 75) * math.sqrt(252))
    assert close(m.sharpe(R), (1 / 30) / math.sqrt(1 / 75) * math.sqrt(252))
    assert close(m.sharpe(R), 4.58257569495584, 1e-12)
    # downside: mean of (0, 0.01, 0) = 0.01/3
    assert close(m.downside_deviation(R), math.sqrt(0.01 / 3) * math.sqrt(252))
    assert close(m.sortino(R), (252 / 30) / (math.sqrt(0.01 / 3) * math.sqrt(252)))
    # drawdown: peak 110, trough 99 -> 10%; ends 1% under the peak
    assert np.allclose(m.drawdowns(EQ), [0.0, 0.0, 0.1, 0.01], rtol=0, atol=1e-15)
    assert close(m.max_drawdown(EQ), 0.1)
    assert close(m.calmar(R, EQ), (252 / 30) / 0.1)
    # VaR 95, linear interpolation over sorted (-0.1, 0.1, 0.1): -0.1 + 0.1 * 0.2 = -0.08
    assert close(m.var_historical(R), 0.08)
    assert close(m.hit_rate(R), 2 / 3)
    assert close(m.avg_win_loss(R), 1.0)
    assert close(m.cagr(EQ), 1.089 ** (252 / 3) - 1, 1e-10)
    # turnover: traded 50, 20, 10 against equity 100, 110, 99 before each period
    assert close(m.turnover([50.0, 20.0, 10.0], [100.0, 110.0, 99.0]), (0.5 + 20 / 110 + 10 / 99) / 3 * 252)


def test_performance_dict() -> None:
    out = m.performance(EQ, traded=[7.0, 50.0, 20.0, 10.0])
    assert out["periods"] == 3.0
    assert close(out["pnl"], 8.9)
    assert close(out["total_return"], 0.089)
    assert close(out["turnover"], (0.5 + 20 / 110 + 10 / 99) / 3 * 252)  # traded[0] is before the first return
    assert close(out["drawdown"], 0.01)
    assert close(out["var_95"], 0.08)
    assert all(isinstance(v, float) for v in out.values())


def test_against_numpy_and_pandas() -> None:
    rng = np.random.default_rng(7)
    r = rng.normal(0.0004, 0.01, 2000)
    eq = 1e6 * np.cumprod(np.r_[1.0, 1.0 + r])
    rr = m.returns_from_equity(eq)
    s = pd.Series(rr)
    assert np.allclose(rr, r, rtol=0, atol=1e-12)
    assert close(m.annualized_vol(rr), s.std() * math.sqrt(252), 1e-10)
    assert close(m.sharpe(rr), s.mean() / s.std() * math.sqrt(252), 1e-10)
    dd_ref = 1 - eq / np.maximum.accumulate(eq)
    assert close(m.max_drawdown(eq), float(dd_ref.max()), 1e-12)
    assert close(m.var_historical(rr), -float(s.quantile(0.05)), 1e-12)
    assert close(m.hit_rate(rr), float((s > 0).sum() / (s != 0).sum()))
    neg = np.minimum(rr, 0)
    assert close(m.sortino(rr), s.mean() * 252 / (math.sqrt(float((neg**2).mean())) * math.sqrt(252)), 1e-10)


def test_undefined_figures_are_nan_not_errors() -> None:
    for f in (m.annualized_return, m.annualized_vol, m.sharpe, m.sortino, m.downside_deviation, m.var_historical,
              m.hit_rate, m.avg_win_loss):
        assert math.isnan(f([]))
    assert math.isnan(m.sharpe([0.01, 0.01, 0.01]))  # zero volatility
    assert math.isnan(m.calmar([0.01, 0.02], [1.0, 1.01, 1.0302]))  # never a drawdown
    assert math.isnan(m.max_drawdown([]))
    assert math.isnan(m.cagr([1.0]))
    out = m.performance([1e6])
    assert out["periods"] == 0.0 and math.isnan(out["sharpe"]) and out["max_drawdown"] == 0.0


@pytest.mark.parametrize("seed", [1, 2])
def test_running_stats_agree_with_batch(seed: int) -> None:
    rng = np.random.default_rng(seed)
    eq = 1e6 * np.cumprod(np.r_[1.0, 1.0 + rng.normal(0.0, 0.01, 500)])
    eq[100:103] = eq[99]  # flat periods: zero returns do not count for the hit rate
    traded = np.abs(rng.normal(0, 1e5, eq.size))
    stats = m.RunningStats()
    for e, tr in zip(eq, traded, strict=True):
        stats.add(float(e), float(tr))
    snap = stats.snapshot()
    ref = m.performance(eq, traded)
    for key in ("periods", "equity", "pnl", "total_return", "ann_return", "ann_vol", "sharpe", "sortino",
                "max_drawdown", "drawdown", "calmar", "hit_rate", "turnover"):
        assert close(snap[key], ref[key], 1e-9), key
    assert close(snap["return"], eq[-1] / eq[-2] - 1)
    copy = stats.copy()
    copy.add(float(eq[-1]) * 1.01)
    assert stats.snapshot() == snap  # the copy is independent

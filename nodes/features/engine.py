"""The 8 Deep Momentum Network inputs, computed incrementally: O(1) per asset per new daily price.

Conventions (the same as ``nodes/features/reference.py``, which is the spec, and as the
paper's code; docs/dmn/features.md has the formulas):

- Each asset lives in its own time: its series is the sequence of its own prices (a day
  without a price for that asset is skipped, not filled), so a gap is one step.
- ``r_t = p_t / p_{t-1} - 1``; ``sigma_t`` = EWM std of ``r`` with span 60 (``alpha = 2/61``,
  pandas ``adjust=True``, bias-corrected, defined once 60 returns are seen). Annualised
  ``sigma * sqrt(252)`` is the ex-ante volatility of the signals.
- Normalised returns, k in (1, 21, 63, 126, 252): ``(p_t / p_{t-k} - 1) / sigma_t / sqrt(k)``.
- MACD, (S, L) in ((8, 24), (16, 48), (32, 96)): ``m = EWMA_S(p) - EWMA_L(p)`` where
  ``EWMA_n`` has half-life ``ln(0.5) / ln(1 - 1/n)``, i.e. ``alpha = 1/n`` (pandas
  ``ewm(halflife=...)``, ``adjust=True``, defined from the first price);
  ``q = m / std_63(p)`` and ``Y = q / std_252(q)``, with rolling sample stds (ddof 1) over
  full windows only. A zero std leaves the feature undefined (NaN).
- Baselines: ``tsmom = sign(p_t / p_{t-252} - 1)``; ``macd`` = the Baz et al. (2015)
  combined signal used by the paper, ``mean_k phi(Y_k)`` with ``phi(y) = y exp(-y^2/4) / 0.89``.

All state is numpy arrays over assets, so one call updates any subset of assets at once
(a day's cross-section) and assets can be added while running. Rolling standard deviations
keep running sums of deviations from a per-asset shift and are recomputed exactly from
their ring buffer every window length (amortised O(1)), so rounding cannot drift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["FEATURE_NAMES", "MACD_PAIRS", "RETURN_HORIZONS", "DMNFeatureState", "FeatureRows", "RollingStd",
           "ewm_alpha_halflife", "ewm_alpha_span", "macd_response"]

RETURN_HORIZONS = (1, 21, 63, 126, 252)
MACD_PAIRS = ((8, 24), (16, 48), (32, 96))
FEATURE_NAMES = tuple(f"ret_{k}" for k in RETURN_HORIZONS) + tuple(f"macd_{s}_{lo}" for s, lo in MACD_PAIRS)
VOL_SPAN = 60
PRICE_STD_WINDOW = 63
SIGNAL_STD_WINDOW = 252
TRADING_DAYS = 252
_RING = max(RETURN_HORIZONS) + 1  # prices kept per asset: p_t back to p_{t-252}


def ewm_alpha_span(span: float) -> float:
    """pandas' alpha for ``ewm(span=...)``: ``1 / (1 + (span - 1) / 2)``, computed as pandas does."""
    return 1.0 / (1.0 + (span - 1) / 2)


def ewm_alpha_halflife(n: float) -> float:
    """alpha of the paper's EWMA of timescale ``n``: half-life ``ln(0.5)/ln(1 - 1/n)``, i.e. ``alpha = 1/n``.

    Computed through pandas' own steps (decay from the half-life, then the centre of mass),
    so that the streaming and the pandas reference use the same float.
    """
    halflife = math.log(0.5) / math.log(1 - 1 / n)
    decay = 1 - math.exp(math.log(0.5) / halflife)
    com = 1 / decay - 1
    return 1.0 / (1.0 + com)


def macd_response(y: np.ndarray) -> np.ndarray:
    """Baz et al.'s response function ``phi(y) = y exp(-y^2 / 4) / 0.89``."""
    return y * np.exp(-y * y / 4.0) / 0.89


class _Grow:
    """Arrays over assets (first axis; named in ``per_asset``) that grow as assets are added."""

    per_asset: tuple[str, ...] = ()

    def grow(self, capacity: int) -> None:
        for name in self.per_asset:
            old = getattr(self, name)
            if old.shape[0] >= capacity:
                continue
            new = np.empty((capacity, *old.shape[1:]), old.dtype)
            new[: old.shape[0]] = old
            new[old.shape[0]:] = np.nan if name in ("buf", "last", "mean") else 0
            setattr(self, name, new)


class RollingStd(_Grow):
    """Rolling sample std (ddof 1) of ``k`` series per asset over a window of ``w`` values.

    Defined only when the window is full and every value in it is finite (pandas'
    ``rolling(w).std()`` with ``min_periods = w``); a window of identical values has std 0
    exactly (as pandas). Running sums are of deviations from a per-series shift and are
    recomputed exactly from the ring buffer every ``w`` pushes.
    """

    per_asset = ("buf", "n", "s1", "s2", "shift", "nbad", "last", "same")

    def __init__(self, w: int, k: int, capacity: int) -> None:
        self.w, self.k = w, k
        self.buf = np.full((capacity, k, w), np.nan)
        self.n = np.zeros(capacity, np.int64)
        self.s1 = np.zeros((capacity, k))
        self.s2 = np.zeros((capacity, k))
        self.shift = np.zeros((capacity, k))
        self.nbad = np.zeros((capacity, k), np.int64)
        self.last = np.full((capacity, k), np.nan)
        self.same = np.zeros((capacity, k), np.int64)

    def push(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (shape (len(idx), k)) to the assets ``idx`` (an index array); the std of each window."""
        w = self.w
        n = self.n[idx]
        pos = n % w
        old = self.buf[idx, :, pos]  # (m, k): only the values leaving the window are read
        full = (n >= w)[:, None]
        shift = np.where((n == 0)[:, None], np.where(np.isfinite(x), x, 0.0), self.shift[idx])
        old_ok = full & np.isfinite(old)
        d_old = np.where(old_ok, old - shift, 0.0)
        ok = np.isfinite(x)
        d = np.where(ok, x - shift, 0.0)
        s1 = self.s1[idx] - d_old + d
        s2 = self.s2[idx] - d_old * d_old + d * d
        nbad = self.nbad[idx] - (full & ~np.isfinite(old)) + ~ok
        same = np.where(x == self.last[idx], self.same[idx] + 1, 1)
        self.buf[idx, :, pos] = x
        n = n + 1
        redo = n % w == 0
        if redo.any():  # exact recomputation over the (full) window, about once per w pushes
            win = self.buf[idx[redo]]
            good = np.isfinite(win)
            cnt = np.maximum(good.sum(axis=2), 1)
            mean = np.where(good, win, 0.0).sum(axis=2) / cnt
            dev = np.where(good, win - mean[:, :, None], 0.0)
            shift[redo], s1[redo], s2[redo] = mean, dev.sum(axis=2), (dev * dev).sum(axis=2)
        self.n[idx], self.s1[idx], self.s2[idx], self.shift[idx] = n, s1, s2, shift
        self.nbad[idx], self.last[idx], self.same[idx] = nbad, x, same
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (s2 - s1 * s1 / w) / (w - 1)
        var = np.where(same >= w, 0.0, np.maximum(var, 0.0))
        return np.where((n >= w)[:, None] & (nbad == 0), np.sqrt(var), np.nan)


class _Ewm(_Grow):
    """EWM means of ``k`` series per asset, pandas ``adjust=True`` (bias-corrected weights)."""

    per_asset = ("mean", "old_wt")

    def __init__(self, alphas: list[float], capacity: int) -> None:
        self.factor = np.array([1.0 - a for a in alphas])
        self.mean = np.full((capacity, len(alphas)), np.nan)
        self.old_wt = np.ones((capacity, len(alphas)))

    def push(self, idx: np.ndarray, first: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (shape (m, k)); ``first`` marks assets seeing their first value. The means after it."""
        mean = self.mean[idx]
        old_wt = self.old_wt[idx] * self.factor
        moved = mean != x
        mixed = np.where(moved, (old_wt * mean + x) / (old_wt + 1.0), mean)
        first = first[:, None]
        mean = np.where(first, x, mixed)
        old_wt = np.where(first, 1.0, old_wt + 1.0)
        self.mean[idx], self.old_wt[idx] = mean, old_wt
        return mean


class _EwmStd(_Grow):
    """EWM std of one series per asset: pandas ``ewm(span).std()`` (adjust=True, bias=False)."""

    per_asset = ("mean", "cov", "sum_wt", "sum_wt2", "old_wt", "nobs")

    def __init__(self, alpha: float, min_periods: int, capacity: int) -> None:
        self.factor = 1.0 - alpha
        self.min_periods = min_periods
        self.mean = np.full(capacity, np.nan)
        self.cov = np.zeros(capacity)
        self.sum_wt = np.ones(capacity)
        self.sum_wt2 = np.ones(capacity)
        self.old_wt = np.ones(capacity)
        self.nobs = np.zeros(capacity, np.int64)

    def push(self, idx: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (m,); assets with ``nobs == 0`` start their series. The std after it."""
        f = self.factor
        nobs = self.nobs[idx]
        first = nobs == 0
        sum_wt = self.sum_wt[idx] * f
        sum_wt2 = self.sum_wt2[idx] * (f * f)
        old_wt = self.old_wt[idx] * f
        old_mean = self.mean[idx]
        mean = np.where(old_mean != x, (old_wt * old_mean + x) / (old_wt + 1.0), old_mean)
        cov = (old_wt * (self.cov[idx] + (old_mean - mean) * (old_mean - mean)) + (x - mean) * (x - mean)) \
            / (old_wt + 1.0)
        sum_wt, sum_wt2, old_wt = sum_wt + 1.0, sum_wt2 + 1.0, old_wt + 1.0
        mean = np.where(first, x, mean)
        cov = np.where(first, 0.0, cov)
        sum_wt = np.where(first, 1.0, sum_wt)
        sum_wt2 = np.where(first, 1.0, sum_wt2)
        old_wt = np.where(first, 1.0, old_wt)
        nobs = nobs + 1
        self.mean[idx], self.cov[idx], self.nobs[idx] = mean, cov, nobs
        self.sum_wt[idx], self.sum_wt2[idx], self.old_wt[idx] = sum_wt, sum_wt2, old_wt
        numerator = sum_wt * sum_wt
        denominator = numerator - sum_wt2
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(denominator > 0.0, numerator / denominator * cov, np.nan)
        return np.where(nobs >= self.min_periods, np.sqrt(np.maximum(var, 0.0)), np.nan)


@dataclass(slots=True)
class FeatureRows:
    """What one update returns, one row per updated asset (NaN where not yet defined)."""

    features: np.ndarray  # (m, 8) float64: the 8 DMN inputs, in FEATURE_NAMES order
    ret: np.ndarray  # (m,) last daily return p_t / p_{t-1} - 1
    sigma: np.ndarray  # (m,) annualised ex-ante volatility: EWM std (span 60) x sqrt(252)
    tsmom: np.ndarray  # (m,) sign of the 252-day return
    macd: np.ndarray  # (m,) Baz et al. combined MACD signal, mean_k phi(Y_k)


class DMNFeatureState:
    """Per-asset incremental state of the DMN features; ``update`` takes one new price per asset.

    Assets are integer indices ``0 .. n_assets - 1`` (``add_assets`` makes more). Prices must
    be finite and positive (the market guard's job); each call advances every asset it
    names by one step of its own series.

        state = DMNFeatureState(3)
        rows = state.update(np.array([0, 2]), np.array([101.5, 47.2]))
        rows.features  # (2, 8)
    """

    def __init__(self, n_assets: int = 0, capacity: int = 16) -> None:
        self.n_assets = 0
        self.capacity = max(int(capacity), int(n_assets), 1)
        cap = self.capacity
        self.nobs = np.zeros(cap, np.int64)
        self.prices = np.full((cap, _RING), np.nan)
        self.vol = _EwmStd(ewm_alpha_span(VOL_SPAN), VOL_SPAN, cap)
        alphas = [ewm_alpha_halflife(n) for pair in MACD_PAIRS for n in pair]
        self.ewma = _Ewm(alphas, cap)
        self.price_std = RollingStd(PRICE_STD_WINDOW, 1, cap)
        self.q_std = RollingStd(SIGNAL_STD_WINDOW, len(MACD_PAIRS), cap)
        self._horizons = np.array(RETURN_HORIZONS, np.int64)
        self._sqrt_h = np.sqrt(self._horizons.astype(np.float64))
        self._all = np.arange(0)
        self.add_assets(n_assets)

    def add_assets(self, count: int = 1) -> np.ndarray:
        """Make room for ``count`` more assets; their indices."""
        start = self.n_assets
        need = start + int(count)
        if need > self.capacity:
            cap = max(need, 2 * self.capacity)
            self.nobs = np.concatenate([self.nobs, np.zeros(cap - self.capacity, np.int64)])
            pad = np.full((cap - self.capacity, _RING), np.nan)
            self.prices = np.concatenate([self.prices, pad])
            for part in (self.vol, self.ewma, self.price_std, self.q_std):
                part.grow(cap)
            self.capacity = cap
        self.n_assets = need
        self._all = np.arange(need)
        return np.arange(start, need)

    def update(self, idx: np.ndarray | None, price: np.ndarray) -> FeatureRows:
        """Advance the assets ``idx`` (None: all, in order) by one price each; their new features."""
        price = np.asarray(price, np.float64)
        sel = self._all if idx is None else np.asarray(idx, np.int64)
        m = price.shape[0]
        nobs = self.nobs[sel]
        # returns over k days from the ring of each asset's last 253 prices
        back = (nobs[:, None] - self._horizons) % _RING  # position of p_{t-k}
        past = self.prices[sel[:, None], back]
        have = nobs[:, None] >= self._horizons  # p_{t-k} exists
        with np.errstate(invalid="ignore", divide="ignore"):
            rets = np.where(have, price[:, None] / past - 1.0, np.nan)  # (m, 5)
        self.prices[sel, nobs % _RING] = price
        first = nobs == 0
        self.nobs[sel] = nobs + 1
        # sigma: EWM std of daily returns, for assets that have a return
        daily = rets[:, 0]
        sigma = np.full(m, np.nan)
        has_ret = ~first
        if has_ret.all():
            sigma = self.vol.push(sel, daily)
        elif has_ret.any():
            sigma[has_ret] = self.vol.push(sel[has_ret], daily[has_ret])
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = rets / sigma[:, None] / self._sqrt_h
            means = self.ewma.push(sel, first, np.repeat(price[:, None], 2 * len(MACD_PAIRS), axis=1))
            macd = means[:, 0::2] - means[:, 1::2]  # (m, 3)
            std63 = self.price_std.push(sel, price[:, None])  # (m, 1)
            q = macd / np.where(std63 > 0.0, std63, np.nan)
            q = np.where(np.isfinite(q), q, np.nan)
            std252 = self.q_std.push(sel, q)
            y = q / np.where(std252 > 0.0, std252, np.nan)
        features = np.concatenate([norm, y], axis=1)
        features[~np.isfinite(features)] = np.nan
        tsmom = np.sign(rets[:, -1])
        signal = macd_response(y).mean(axis=1)
        return FeatureRows(features=features, ret=daily, sigma=sigma * math.sqrt(TRADING_DAYS), tsmom=tsmom,
                           macd=signal)

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
N_FEATURES = len(FEATURE_NAMES)


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

    def push(self, sel: slice | np.ndarray, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (shape (m, k)) to the assets ``sel`` (a slice, or an index array; ``rows``
        is the same as an index array); the std of each window.

        Called inside ``np.errstate(invalid="ignore", divide="ignore")`` (``DMNFeatureState.update``).
        With a slice every read of the state is a view and the sums update in place, so a day's
        cross-section costs the same few dozen numpy calls whatever the number of assets.
        """
        w = self.w
        view = isinstance(sel, slice)
        n0 = self.n[sel]
        pos = n0 % w
        old = self.buf[rows, :, pos]  # (m, k): only the values leaving the window are read
        full = n0 >= w  # the window was full: its oldest value leaves
        all_full = bool(full.all())
        shift = self.shift[sel]  # a view (slice) or a copy
        starting = n0 == 0
        if starting.any():
            shift[starting] = np.where(np.isfinite(x[starting]), x[starting], 0.0)
        bad_old = ~np.isfinite(old)
        if not all_full:
            bad_old |= ~full[:, None]  # nothing leaves a window that is not full
        d_old = old - shift
        d_old[bad_old] = 0.0
        ok = np.isfinite(x)
        d = x - shift
        d[~ok] = 0.0
        s1, s2, nbad, same = self.s1[sel], self.s2[sel], self.nbad[sel], self.same[sel]
        s1 -= d_old
        s1 += d
        d_old *= d_old
        d *= d
        s2 -= d_old
        s2 += d
        nbad -= bad_old if all_full else bad_old & full[:, None]
        nbad += ~ok
        repeat = x == self.last[sel]
        same += 1
        same[~repeat] = 1
        self.buf[rows, :, pos] = x
        self.last[sel] = x
        n1 = n0 + 1
        self.n[sel] = n1
        redo = n1 % w == 0
        if redo.any():  # exact recomputation over the (full) window, about once per w pushes
            win = self.buf[rows[redo]]
            good = np.isfinite(win)
            cnt = np.maximum(good.sum(axis=2), 1)
            mean = np.where(good, win, 0.0).sum(axis=2) / cnt
            dev = np.where(good, win - mean[:, :, None], 0.0)
            shift[redo], s1[redo], s2[redo] = mean, dev.sum(axis=2), (dev * dev).sum(axis=2)
        if not view:  # copies: write them back
            self.s1[sel], self.s2[sel], self.shift[sel] = s1, s2, shift
            self.nbad[sel], self.same[sel] = nbad, same
        var = (s2 - s1 * s1 / w) / (w - 1)
        np.maximum(var, 0.0, out=var)
        var[same >= w] = 0.0
        np.sqrt(var, out=var)
        done = n1 >= w
        var[(nbad != 0) if bool(done.all()) else (nbad != 0) | ~done[:, None]] = np.nan
        return var


class _Ewm(_Grow):
    """EWM means of ``k`` series per asset, pandas ``adjust=True`` (bias-corrected weights)."""

    per_asset = ("mean", "old_wt")

    def __init__(self, alphas: list[float], capacity: int) -> None:
        self.factor = np.array([1.0 - a for a in alphas])
        self.mean = np.full((capacity, len(alphas)), np.nan)
        self.old_wt = np.ones((capacity, len(alphas)))

    def push(self, sel: slice | np.ndarray, first: np.ndarray | None, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (shape (m, 1): one value for all ``k`` series, or (m, k)); ``first`` marks
        assets seeing their first value (None: none does). The means after it."""
        mean = self.mean[sel]
        old_wt = self.old_wt[sel] * self.factor
        mixed = (old_wt * mean + x) / (old_wt + 1.0)
        keep = mean == x  # an unchanged value keeps the mean exactly (pandas)
        if keep.any():
            mixed[keep] = mean[keep]
        old_wt += 1.0
        if first is not None:
            mixed[first] = np.broadcast_to(x, mixed.shape)[first]
            old_wt[first] = 1.0
        self.mean[sel], self.old_wt[sel] = mixed, old_wt
        return mixed


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

    def push(self, sel: slice | np.ndarray, x: np.ndarray) -> np.ndarray:
        """Add ``x`` (m,); assets with ``nobs == 0`` start their series. The std after it.

        Called inside ``np.errstate(invalid="ignore", divide="ignore")``.
        """
        f = self.factor
        nobs = self.nobs[sel] + 1
        first = nobs == 1
        sum_wt = self.sum_wt[sel] * f
        sum_wt2 = self.sum_wt2[sel] * (f * f)
        old_wt = self.old_wt[sel] * f
        old_mean = self.mean[sel]
        mean = (old_wt * old_mean + x) / (old_wt + 1.0)
        keep = old_mean == x
        if keep.any():
            mean[keep] = old_mean[keep]
        dm = old_mean - mean
        dx = x - mean
        cov = (old_wt * (self.cov[sel] + dm * dm) + dx * dx) / (old_wt + 1.0)
        sum_wt += 1.0
        sum_wt2 += 1.0
        old_wt += 1.0
        if first.any():
            mean[first] = x[first]
            cov[first] = 0.0
            sum_wt[first] = sum_wt2[first] = old_wt[first] = 1.0
        self.mean[sel], self.cov[sel], self.nobs[sel] = mean, cov, nobs
        self.sum_wt[sel], self.sum_wt2[sel], self.old_wt[sel] = sum_wt, sum_wt2, old_wt
        numerator = sum_wt * sum_wt
        denominator = numerator - sum_wt2
        var = numerator / denominator * cov
        var[~(denominator > 0.0)] = np.nan
        np.maximum(var, 0.0, out=var)
        np.sqrt(var, out=var)
        var[nobs < self.min_periods] = np.nan
        return var


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
        """Advance the assets ``idx`` (None: all, in order) by one price each; their new features.

        One pass of numpy over the assets named (no Python loop per asset); with ``idx`` None
        the state is read through views and updated in place.
        """
        price = np.asarray(price, np.float64)
        if idx is None:
            sel: slice | np.ndarray = slice(0, self.n_assets)
            rows = self._all
        else:
            sel = rows = np.asarray(idx, np.int64)
        m = price.shape[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            nobs = self.nobs[sel].copy()
            # returns over k days from the ring of each asset's last 253 prices
            back = (nobs[:, None] - self._horizons) % _RING  # position of p_{t-k}
            past = self.prices[rows[:, None], back]  # NaN where p_{t-k} does not exist yet
            rets = price[:, None] / past - 1.0  # (m, 5)
            self.prices[rows, nobs % _RING] = price
            self.nobs[sel] = nobs + 1
            first = nobs == 0
            any_first = bool(first.any())
            # sigma: EWM std of daily returns, for assets that have a return
            daily = rets[:, 0]
            if not any_first:
                sigma = self.vol.push(sel, daily)
            else:
                sigma = np.full(m, np.nan)
                has_ret = ~first
                if has_ret.any():
                    sigma[has_ret] = self.vol.push(rows[has_ret], daily[has_ret])
            features = np.empty((m, N_FEATURES))
            norm = features[:, :len(RETURN_HORIZONS)]
            np.divide(rets, sigma[:, None], out=norm)
            norm /= self._sqrt_h
            means = self.ewma.push(sel, first if any_first else None, price[:, None])
            macd = means[:, 0::2] - means[:, 1::2]  # (m, 3)
            std63 = self.price_std.push(sel, rows, price[:, None])  # (m, 1)
            std63[~(std63 > 0.0)] = np.nan
            q = macd / std63
            q[~np.isfinite(q)] = np.nan
            std252 = self.q_std.push(sel, rows, q)
            std252[~(std252 > 0.0)] = np.nan
            y = features[:, len(RETURN_HORIZONS):]
            np.divide(q, std252, out=y)
            features[~np.isfinite(features)] = np.nan
            tsmom = np.sign(rets[:, -1])
            signal = macd_response(y).mean(axis=1)
        return FeatureRows(features=features, ret=daily, sigma=sigma * math.sqrt(TRADING_DAYS), tsmom=tsmom,
                           macd=signal)

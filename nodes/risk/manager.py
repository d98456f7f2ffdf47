"""The ``RiskManager`` node: volatility targeting, position limits and a drawdown kill switch."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output
from nodes.support import RateLimitedLog, event_time_of

__all__ = ["RiskManager", "vol_target_weights"]


def vol_target_weights(position: np.ndarray, sigma: np.ndarray, valid: np.ndarray, target_vol: float,
                       sigma_floor: float = 0.0) -> np.ndarray:
    """The paper's volatility scaling: ``w_i = X_i * target_vol / sigma_i / N_active``.

    ``N_active`` is the number of ``valid`` assets; invalid ones get weight 0. With these
    weights the portfolio return ``sum_i w_i r_i`` is the paper's ``mean_i X_i (0.15 /
    sigma_i) r_i`` over the active assets.
    """
    w = np.zeros(position.shape[0])
    n = int(np.count_nonzero(valid))
    if n:
        w[valid] = position[valid] * target_vol / np.maximum(sigma[valid], sigma_floor) / n
    return w


def _take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[idx]``, NaN where ``idx`` is -1 (absent)."""
    if not values.size:
        return np.full(idx.shape[0], np.nan)
    return np.where(idx >= 0, values[idx], np.nan)


def _floats(value: Any, n: int) -> np.ndarray | None:
    """``value`` as a float64 vector of length ``n`` (None -> NaN), or None when it is not one."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) else None


class RiskManager(Node):
    """Turns combined positions into portfolio weights the risk limits allow.

    Why: the models say which way and how strongly (a position in [-1, 1]); how much
    capital that is depends on each asset's volatility and on the book's limits, which
    belong in one place whatever model produced the positions. The node joins Positions
    and Signals by event time (YAML: ``join: {inputs: [positions, signals], by:
    event_time}``) and emits Targets:

    1. ``w_i = clip(X_i, -1, 1) * target_vol / sigma_i / N_active`` (the paper's volatility
       targeting; the portfolio is the mean over the active assets);
    2. ``|w_i| <= max_weight``; then, when ``sum |w_i| > max_gross``, every weight scales
       down by the same factor;
    3. with ``delay`` > 0 the weights computed now are emitted ``delay`` event times later,
       with the closes of that day (the trade happens a close after the signal: how much of a
       strategy's return lives on the close it was computed from);
    4. a kill switch on the strategy's own equity: each event time the previous targets
       earn the Signals' realised returns, ``E_t = E_{t-1} (1 + sum_i w_{t-1,i} r_{t,i})``;
       when ``1 - E_t / max E`` exceeds ``max_drawdown`` every target is 0 and ``killed``
       is true, until ``reset_after`` event times have passed (never, by default). It acts on
       the day it trips, delay or not.

    A NaN or missing position or sigma, a sigma <= 0, a symbol missing from the Signals or
    outside ``universe``: weight 0, counted. An event time at or before the last one: the
    pair is skipped, counted.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target_vol: float = Field(0.15, gt=0, description="annualised volatility target per asset (the paper: 0.15)")
        max_weight: float | None = Field(1.0, gt=0, description="largest |weight| of one asset; none: no limit")
        max_gross: float | None = Field(
            3.0, gt=0, description="largest sum of |weights| (scaled down proportionally); none: no limit")
        max_drawdown: float | None = Field(
            0.25, gt=0, le=1, description="drawdown of the strategy's equity that kills it; none: no kill switch")
        reset_after: int | None = Field(
            None, ge=1, description="event times a kill lasts (then the peak restarts); none: stays killed")
        sigma_floor: float = Field(0.0, ge=0, description="sigma below this is raised to it (0: no floor)")
        universe: list[str] | None = Field(None, description="symbols allowed to hold; none: every symbol")
        delay: int = Field(0, ge=0, le=10_000, description="event times between the positions and the targets "
                                                           "sized from them: 0 trades at the close the signal was "
                                                           "computed on (the paper's backtest), 1 at the next close")

    positions = Input(dict, doc="Positions: t, symbols, position in [-1, 1], weights")
    signals = Input(dict, doc="Signals: t, symbols, close, ret, sigma, ...")
    targets = Output(dict, doc="Targets: t, symbols, weight, killed, close, equity, drawdown, gross, scale")

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.p = p
        self.log = RateLimitedLog(ctx.log)
        self.universe = None if p.universe is None else frozenset(p.universe)
        self.last_t: int | None = None
        self.equity = 1.0
        self.peak = 1.0
        self.max_dd = 0.0
        self.killed = False
        self.killed_for = 0
        self.prev_syms: list[str] = []
        self.prev_w = np.zeros(0)
        self.pipeline: deque[tuple[list[str], np.ndarray]] = deque()  # weights waiting out the delay
        self._sig_syms: list[str] | None = None
        self._sig_index: dict[str, int] = {}
        self._pos_syms: list[str] | None = None
        self._idx = np.zeros(0, dtype=np.intp)
        self._allowed = np.zeros(0, dtype=bool)
        self.counts = dict.fromkeys(
            ("pairs", "emitted", "bad_messages", "out_of_order", "duplicates", "unknown_symbol",
             "bad_position", "bad_sigma", "clipped_position", "capped_weight", "gross_scaled", "missing_return",
             "empty", "kill_events", "killed_steps"), 0)

    # -- alignment -----------------------------------------------------------------------
    def _align(self, pos_syms: list[str], sig_syms: list[str]) -> None:
        """Index of each position symbol in the Signals (-1: absent); cached while they repeat."""
        changed = False
        if sig_syms != self._sig_syms:
            self._sig_syms = list(sig_syms)
            self._sig_index = {}
            for i, s in enumerate(sig_syms):
                self._sig_index.setdefault(s, i)
            changed = True
        if changed or pos_syms != self._pos_syms:
            self._pos_syms = list(pos_syms)
            index, universe = self._sig_index, self.universe
            self._idx = np.fromiter((index.get(s, -1) for s in pos_syms), dtype=np.intp, count=len(pos_syms))
            seen: set[str] = set()
            allowed = np.ones(len(pos_syms), dtype=bool)
            for i, s in enumerate(pos_syms):  # a repeated symbol keeps its first entry
                if s in seen or (universe is not None and s not in universe):
                    allowed[i] = False
                seen.add(s)
            self._allowed = allowed

    def _prev_index(self) -> np.ndarray:
        if self.prev_syms is self._pos_syms:
            return self._idx
        return self._index_of(self.prev_syms)

    def _index_of(self, symbols: list[str]) -> np.ndarray:
        """Index of each symbol in today's Signals (-1: absent)."""
        index = self._sig_index
        return np.fromiter((index.get(s, -1) for s in symbols), dtype=np.intp, count=len(symbols))

    # -- the handler ---------------------------------------------------------------------
    def on_join(self, values: dict[str, Any], ctx: Any) -> None:
        c, p = self.counts, self.p
        c["pairs"] += 1
        pos, sig = values.get("positions"), values.get("signals")
        if not isinstance(pos, Mapping) or not isinstance(sig, Mapping):
            return self._bad("a Positions/Signals pair that is not two records")
        t = event_time_of(pos, ctx)
        if t is None:
            t = event_time_of(sig, ctx)
        if t is None:
            return self._bad("a pair without an event time")
        if self.last_t is not None and t <= self.last_t:
            c["duplicates" if t == self.last_t else "out_of_order"] += 1
            self.log.warning("order", "skipped the pair at t=%d: already at t=%d", t, self.last_t)
            return None
        pos_syms, sig_syms = pos.get("symbols"), sig.get("symbols")
        if not isinstance(pos_syms, Sequence) or not isinstance(sig_syms, Sequence):
            return self._bad(f"a pair without symbol lists at t={t}")
        n, m = len(pos_syms), len(sig_syms)
        x = _floats(pos.get("position"), n)
        sigma, ret, close = _floats(sig.get("sigma"), m), _floats(sig.get("ret"), m), _floats(sig.get("close"), m)
        if x is None or sigma is None or ret is None or close is None:
            return self._bad(f"a pair whose lists do not match its symbols at t={t}")
        self.last_t = t
        self._align(pos_syms if isinstance(pos_syms, list) else list(pos_syms),
                    sig_syms if isinstance(sig_syms, list) else list(sig_syms))
        self._update_equity(ret, t)

        idx, known = self._idx, self._idx >= 0
        sig_i = _take(sigma, idx)
        allowed = known & self._allowed
        finite_x = np.isfinite(x)
        good_sigma = np.isfinite(sig_i) & (sig_i > 0)
        valid = allowed & finite_x & good_sigma
        if not allowed.all():
            c["unknown_symbol"] += int(n - np.count_nonzero(allowed))
            self.log.warning("unknown", "weight 0 for symbols absent from the Signals or the universe at t=%d", t)
        if not valid.all():
            bad_x = int(np.count_nonzero(allowed & ~finite_x))
            bad_s = int(np.count_nonzero(allowed & finite_x & ~good_sigma))
            c["bad_position"] += bad_x
            c["bad_sigma"] += bad_s
            if bad_x or bad_s:
                self.log.warning("nan", "weight 0 for %d NaN positions and %d bad sigmas at t=%d", bad_x, bad_s, t)
        xc = np.clip(x, -1.0, 1.0)
        c["clipped_position"] += int(np.count_nonzero(valid & (xc != x)))
        w = vol_target_weights(xc, sig_i, valid, p.target_vol, p.sigma_floor)
        if not valid.any():
            c["empty"] += 1
        if p.max_weight is not None:
            over = np.abs(w) > p.max_weight
            if over.any():
                c["capped_weight"] += int(np.count_nonzero(over))
                np.clip(w, -p.max_weight, p.max_weight, out=w)
        scale = 1.0
        gross = float(np.abs(w).sum())
        if p.max_gross is not None and gross > p.max_gross:
            scale = p.max_gross / gross
            w *= scale
            gross = p.max_gross
            c["gross_scaled"] += 1
        syms: list[str] = self._pos_syms  # type: ignore[assignment]
        if p.delay:
            self.pipeline.append((syms, w))
            if len(self.pipeline) > p.delay:
                syms, w = self.pipeline.popleft()
                idx = self._index_of(syms)
                gross = float(np.abs(w).sum())
            else:
                syms, w, idx, gross = [], np.zeros(0), np.zeros(0, dtype=np.intp), 0.0
        if self.killed:
            w = np.zeros_like(w)
            gross = 0.0
            c["killed_steps"] += 1
        self.prev_syms, self.prev_w = syms, w
        drawdown = 1.0 - self.equity / self.peak if self.peak > 0 else 1.0
        ctx.emit("targets", {
            "t": t, "symbols": syms, "weight": w.tolist(), "killed": self.killed,
            "close": _take(close, idx).tolist(),
            "equity": self.equity, "drawdown": drawdown, "gross": gross, "scale": scale,
        })
        c["emitted"] += 1
        return None

    def _update_equity(self, ret: np.ndarray, t: int) -> None:
        """The previous targets earn today's returns; the kill switch looks at the drawdown."""
        p = self.p
        if self.prev_w.size:
            pidx = self._prev_index()
            r = _take(ret, pidx)
            held = self.prev_w != 0.0
            missing = held & ~np.isfinite(r)
            if missing.any():
                self.counts["missing_return"] += int(np.count_nonzero(missing))
                r = np.where(missing, 0.0, r)
            port = float(self.prev_w[held] @ r[held])
            self.equity = max(self.equity * (1.0 + port), 0.0)
        if self.equity > self.peak:
            self.peak = self.equity
        dd = 1.0 - self.equity / self.peak if self.peak > 0 else 1.0
        self.max_dd = max(self.max_dd, dd)
        if self.killed:
            self.killed_for += 1
            if p.reset_after is not None and self.killed_for >= p.reset_after and self.equity > 0:
                self.killed = False
                self.peak = self.equity
                self.log.log.warning("kill switch reset at t=%d after %d event times", t, p.reset_after)
        elif p.max_drawdown is not None and dd > p.max_drawdown:
            self.killed = True
            self.killed_for = 0
            self.counts["kill_events"] += 1
            self.log.log.warning("kill switch: drawdown %.4f > %.4f at t=%d; every target is 0", dd,
                                 p.max_drawdown, t)

    def _bad(self, what: str) -> None:
        self.counts["bad_messages"] += 1
        self.log.warning("bad", "skipped %s", what)
        return None

    def summary(self) -> dict[str, float | int]:
        """Counters and the kill switch's state, for the launch report."""
        if not hasattr(self, "counts"):  # asked before setup
            return {}
        out: dict[str, float | int] = dict(self.counts)
        out.update(equity=self.equity, drawdown=1.0 - self.equity / self.peak if self.peak > 0 else 1.0,
                   max_drawdown=self.max_dd, killed=int(self.killed))
        return out

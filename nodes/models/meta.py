"""``MetaLearner``: combines the models' predictions, each weighted by its recent realised Sharpe ratio.

Why: no single model wins in every regime (the paper's LSTM fades with costs, the
Transformer needs long histories), and which one is working lately is observable: each
model's positions of yesterday and today's returns give its realised strategy return
``X_{t-1} * 0.15 / sigma_{t-1} * r_t`` (the paper's, per asset, averaged over assets). The
meta-learner keeps each model's last ``window`` such returns, turns their Sharpe ratios into
weights and emits the weighted position per symbol. Everything depends on the messages
only (no clocks, no randomness), so a backtest gives the same positions on every run.

Alignment (which symbol each prediction row is for): the model runner's output carries the
features' ``attrs["symbols"]``, and ``on_join`` reads them from ``ctx.joined[model]`` (the
message behind each joined value). A producer that sends no symbols is aligned through the
Signals message of the same event time instead: the features node emits a model's windows
for exactly the symbols whose ``window``-day history is complete, in the order of
``signals["symbols"]``, and marks them in a list of bools (``signals["ready"]`` for the
63-day windows). ``params.align`` names that field per model (default ``ready``).

When the named field is absent, ``ready`` is tried: windows are nested (a symbol with a
complete 126-day history has a complete 63-day one), so a long-window model's symbols are a
subset of the ``ready`` ones *in the same order*, and when the counts agree the sets are
equal. A prediction that matches no mask by count (nor every symbol of the day) cannot be
aligned: that model sits the day out (counted as ``unaligned``) rather than trade the wrong
symbols.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import compress
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dmnflow import Input, Node, Output, Ports, Tensor

from .baseline import UNIVERSE_DOC, baseline_positions, in_universe

__all__ = ["MetaLearner", "SharpeWeighter", "combine_positions", "realised_return", "sharpe_weights"]

TRADING_DAYS = 252


def sharpe_weights(sharpes: dict[str, float], scheme: str = "softmax", temperature: float = 1.0,
                   floor: float = 0.05) -> dict[str, float]:
    """Weights summing to 1 from the models' Sharpe ratios.

    ``softmax``: ``w ∝ exp(S / temperature)``; ``positive``: ``w ∝ max(S, 0)`` (all models at
    or below zero: equal weights). Then every weight is lifted to at least ``floor`` by
    ``w = floor + (1 - k * floor) * w`` (k models), so a model that has a bad spell keeps a
    say and can earn its way back. A NaN Sharpe counts as 0.
    """
    names = list(sharpes)
    k = len(names)
    if not k:
        return {}
    s = np.array([0.0 if not math.isfinite(sharpes[n]) else sharpes[n] for n in names])
    if scheme == "softmax":
        z = np.exp((s - s.max()) / temperature)
        w = z / z.sum()
    elif scheme == "positive":
        pos = np.maximum(s, 0.0)
        w = pos / pos.sum() if pos.sum() > 0 else np.full(k, 1.0 / k)
    else:
        raise ValueError(f"unknown scheme {scheme!r}: softmax or positive")
    f = min(floor, 1.0 / k)
    w = f + (1.0 - k * f) * w
    return {n: float(x) for n, x in zip(names, w, strict=True)}


Rows = tuple[list[str], np.ndarray]  # one model's prediction of a day: its symbols, one position each (float64)


def _vector(values: Any, n: int) -> np.ndarray:
    """A Signals list as float64 of length ``n`` (None -> NaN; short lists padded with NaN, long ones cut)."""
    arr = np.asarray(values if values is not None else [], np.float64).reshape(-1)
    if arr.shape[0] == n:
        return arr
    out = np.full(n, np.nan)
    out[: min(n, arr.shape[0])] = arr[:n]
    return out


def _take(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``values[idx]``, NaN where ``idx`` is -1 (absent)."""
    if not values.shape[0]:
        return np.full(idx.shape[0], np.nan)
    return np.where(idx >= 0, values[idx], np.nan)


def realised_return(x: np.ndarray, sigma: np.ndarray, ret: np.ndarray, vol_target: float) -> float | None:
    """The paper's strategy return of one day, averaged over assets: ``mean_i x_i * vol_target / sigma_i * r_i``
    over the assets whose position, sigma (> 0) and return are all defined; None when none is."""
    ok = np.isfinite(ret) & np.isfinite(x) & np.isfinite(sigma) & (sigma > 0)
    if not ok.any():
        return None
    return float(np.mean(x[ok] * vol_target / sigma[ok] * ret[ok]))


def combine_positions(weights: list[float], xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per symbol, the weighted mean of the models that predict it (NaN: no prediction), clipped to
    [-1, 1]: ``(has, position)``, ``has`` marking the symbols some model with a weight > 0 predicts.

    The sums run over the models in order, as a loop over models per symbol would.
    """
    n = xs[0].shape[0] if xs else 0
    num, den = np.zeros(n), np.zeros(n)
    for w, x in zip(weights, xs, strict=True):
        ok = np.isfinite(x)
        num += np.where(ok, w * x, 0.0)
        den += np.where(ok, w, 0.0)
    has = den > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        position = np.clip(num / den, -1.0, 1.0)
    return has, position


class SharpeWeighter:
    """The meta-learner's logic without the framework: one :meth:`step` per event time.

    ``step(signals, predictions)`` takes the day's Signals and, per model, ``{symbol: position}``
    (or None when the model has nothing for that day); it first books each model's realised
    return from its previous positions and today's ``ret``, then returns today's combined
    positions and the weights used. ``step_rows`` is the same with each model's prediction as
    ``(symbols, positions array)``: numpy over the symbols, no Python loop per symbol (the
    alignment of a model's symbols with the day's is cached while both repeat). Symbols are
    unique within a Signals message and within a prediction.
    """

    def __init__(self, models: list[str], window: int = 63, warmup: int = 21, scheme: str = "softmax",
                 temperature: float = 1.0, floor: float = 0.05, vol_target: float = 0.15) -> None:
        self.models = list(models)
        self.window, self.warmup = window, warmup
        self.scheme, self.temperature, self.floor, self.vol_target = scheme, temperature, floor, vol_target
        self.returns: dict[str, deque[float]] = {m: deque(maxlen=window) for m in self.models}
        # per model: yesterday's symbols, positions and the day's sigma at them (None: no prediction)
        self.last: dict[str, tuple[list[str], np.ndarray, np.ndarray] | None] = dict.fromkeys(self.models)
        self._symbols: list[str] | None = None  # the current Signals' symbols, and where each is
        self._index: dict[str, int] = {}
        self._memo: dict[str, list[tuple[list[str], list[str], np.ndarray]]] = {m: [] for m in self.models}
        self._booked = dict.fromkeys(self.models, 0)  # returns booked so far, per model
        self._sharpe: dict[str, tuple[int, float]] = {}  # per model: (booked, its Sharpe then)

    def _signals(self, symbols: list[str]) -> None:
        if symbols != self._symbols:
            self._symbols = list(symbols)
            self._index = {s: i for i, s in enumerate(self._symbols)}

    def _positions(self, model: str, names: list[str]) -> np.ndarray:
        """Where each of ``names`` is in the current Signals (-1: absent); the last two per model are kept."""
        memo = self._memo[model]
        for seen, symbols, idx in memo:
            if symbols is self._symbols and (seen is names or seen == names):
                return idx
        index = self._index
        idx = np.fromiter((index.get(s, -1) for s in names), np.intp, len(names))
        memo.insert(0, (names, self._symbols, idx))  # type: ignore[arg-type]
        del memo[2:]
        return idx

    def realised(self, signals: dict[str, Any]) -> None:
        """Book each model's return for today: its positions of the previous step times today's returns."""
        symbols = signals.get("symbols") or []
        self._signals(symbols)
        ret = _vector(signals.get("ret"), len(symbols))
        for m in self.models:
            prev = self.last[m]
            if prev is None:
                continue
            names, x, sigma = prev
            r = realised_return(x, sigma, _take(ret, self._positions(m, names)), self.vol_target)
            if r is not None:
                self.returns[m].append(r)
                self._booked[m] += 1

    def sharpe(self, model: str) -> float:
        """The model's annualised Sharpe ratio over its booked returns (NaN with fewer than 2).

        Computed once per booked return (the node asks twice a day) as ``np.std(ddof=1)`` does:
        the mean, then the sum of squared deviations, so it is the same float."""
        booked = self._booked[model]
        cached = self._sharpe.get(model)
        if cached is not None and cached[0] == booked:
            return cached[1]
        r = np.asarray(self.returns[model], np.float64)
        value = math.nan
        if r.size >= 2:
            mean = r.sum() / r.size
            dev = r - mean
            sd = math.sqrt((dev * dev).sum() / (r.size - 1))
            value = float(mean / sd * math.sqrt(TRADING_DAYS)) if sd > 0 else math.nan
        self._sharpe[model] = (booked, value)
        return value

    def weights(self, present: list[str]) -> dict[str, float]:
        """Weights of the models present today: equal while any of them has fewer than ``warmup``
        booked returns, by recent Sharpe afterwards."""
        if not present:
            return {}
        if any(len(self.returns[m]) < self.warmup for m in present):
            return {m: 1.0 / len(present) for m in present}
        return sharpe_weights({m: self.sharpe(m) for m in present}, self.scheme, self.temperature, self.floor)

    def step(self, signals: dict[str, Any], predictions: dict[str, dict[str, float] | None]
             ) -> tuple[list[str], list[float], dict[str, float]]:
        """Book yesterday's returns, then combine today's predictions: ``(symbols, positions, weights)``.

        A symbol's position is the weighted mean of the models that predict it (weights of the
        others left out and the rest renormalised), clipped to [-1, 1]; symbols come in the
        order of ``signals["symbols"]``.
        """
        rows = {m: (list(p), np.array(list(p.values()), np.float64)) if p else None
                for m, p in predictions.items()}
        return self.step_rows(signals, rows)

    def step_rows(self, signals: dict[str, Any], rows: dict[str, Rows | None], allowed: np.ndarray | None = None
                  ) -> tuple[list[str], list[float], dict[str, float]]:
        """:meth:`step` with each model's prediction as ``(symbols, positions)``; ``allowed`` (one bool
        per Signals symbol) leaves the others out of the result."""
        self.realised(signals)
        symbols = self._symbols or []
        n = len(symbols)
        present = [m for m in self.models if (r := rows.get(m)) is not None and len(r[0])]
        w = self.weights(present)
        spread: dict[str, np.ndarray] = {}  # each model's positions at today's symbols (NaN: none)
        for m in present:
            names, x = rows[m]  # type: ignore[misc]
            idx = self._positions(m, names)
            xs = np.full(n, np.nan)
            inside = idx >= 0
            xs[idx[inside]] = x[inside]
            spread[m] = xs
        has, position = combine_positions([w[m] for m in present], [spread[m] for m in present])
        if not present:
            has, position = np.zeros(n, bool), np.zeros(n)
        if allowed is not None:
            has &= allowed
        sigma = _vector(signals.get("sigma"), n)
        for m in self.models:
            r = rows.get(m)
            self.last[m] = None if r is None or not len(r[0]) else \
                (r[0], r[1], _take(sigma, self._positions(m, r[0])))
        return list(compress(symbols, has.tolist())), position[has].tolist(), w


class MetaLearner(Node):
    """Weights the model nodes' predictions by their recent realised Sharpe ratio; emits Positions.

    Inputs: one Predictions tensor (``(N, 1)`` float32) per model named in ``params.models``
    and the day's ``signals``, all joined by event time in the YAML::

        meta:
          uses: nodes.models:MetaLearner
          params: {models: [lstm, transformer], align: {lstm: ready, transformer: ready_long}}
          inputs: {lstm: lstm.y, transformer: transformer.y, signals: features.signals}
          join: {inputs: [lstm, transformer, signals], by: event_time}

    Output ``positions``: ``t, symbols, position, weights`` (docs/dmn/messages.md), plus
    ``sharpe`` (each model's rolling realised Sharpe, NaN while it has too few returns).
    See the module docstring for the alignment of prediction rows with symbols.
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        models: list[str] = Field(["lstm", "transformer"], min_length=1,
                                  description="the prediction inputs, one per model (names of input ports)")
        align: dict[str, str] = Field(
            default_factory=dict, description="per model, the Signals field (list of bool) marking the symbols its "
                                              "prediction rows are for, in signals order; default 'ready'")
        window: int = Field(63, ge=2, description="days of realised returns in each model's rolling Sharpe ratio")
        warmup: int = Field(21, ge=2, description="equal weights until every model present has this many returns")
        scheme: Literal["softmax", "positive"] = Field(
            "softmax", description="softmax of Sharpe / temperature, or proportional to the positive Sharpe")
        temperature: float = Field(1.0, gt=0, description="softmax temperature, in units of annualised Sharpe")
        floor: float = Field(0.05, ge=0, le=1, description="the least weight a model keeps (at most 1/models)")
        vol_target: float = Field(0.15, gt=0, description="volatility scaling of the realised returns (the paper's)")
        strategy: Literal["meta", "long", "tsmom", "macd"] = Field(
            "meta", description="meta: trade the weighted models; long, tsmom, macd: trade that classic baseline "
                                "instead (the same graph, costs and metrics, for comparison)")
        universe: Literal["ready", "ready_long"] | None = Field(None, description=UNIVERSE_DOC)

        @model_validator(mode="after")
        def _names(self) -> MetaLearner.Params:
            if len(set(self.models)) != len(self.models):
                raise ValueError("models lists a name twice")
            if "signals" in self.models:
                raise ValueError("'signals' is the Signals input; name the models otherwise")
            unknown = sorted(set(self.align) - set(self.models))
            if unknown:
                raise ValueError(f"align names models that are not in models: {unknown}")
            return self

    @classmethod
    def ports(cls, params: BaseModel) -> Ports:
        p: MetaLearner.Params = params  # type: ignore[assignment]
        inputs = {m: Input(Tensor("float32", (None, 1)), doc=f"Predictions of {m}: one position per ready symbol")
                  for m in p.models}
        inputs["signals"] = Input(dict, doc="Signals: symbols, ret, sigma and the readiness masks")
        outputs = {"positions": Output(dict, codec="msgpack", doc="Positions: t, symbols, position, weights")}
        for name, port in (*inputs.items(), *outputs.items()):
            port.name = name
        return Ports(inputs, outputs)

    def setup(self, ctx: Any) -> None:
        p = ctx.params
        self.weighter = SharpeWeighter(p.models, p.window, p.warmup, p.scheme, p.temperature, p.floor, p.vol_target)
        self.align = {m: p.align.get(m, "ready") for m in p.models}
        self.counts = {"days": 0, "unaligned": 0, "missing": 0, "no_universe": 0}
        self.log = ctx.log

    def summary(self) -> dict[str, Any]:
        """Days combined, predictions left out (unaligned, missing), each model's latest Sharpe."""
        w = getattr(self, "weighter", None)
        sharpe = {m: w.sharpe(m) for m in w.models} if w else {}
        return {**getattr(self, "counts", {}), "sharpe": sharpe}

    def _aligned(self, model: str, value: Any, signals: dict[str, Any], ctx: Any) -> Rows | None:
        """The model's rows with their symbols; None when it has none today or they cannot be placed."""
        if value is None:
            self.counts["missing"] += 1
            return None
        x = np.asarray(value, np.float64).reshape(-1)
        if not x.shape[0]:
            return None  # an empty cross-section (the model's windows are not warm yet): nothing to align
        message = getattr(ctx, "joined", {}).get(model)
        attrs = getattr(message, "attrs", None)
        named = attrs.get("symbols") if isinstance(attrs, dict) else None
        if isinstance(named, list) and len(named) == x.shape[0]:  # the rows name their symbols
            if len(set(named)) == len(named):
                return named, x
            unique = dict(zip(named, x.tolist(), strict=True))  # a repeated symbol: its last row
            return list(unique), np.array(list(unique.values()), np.float64)
        symbols = signals.get("symbols") or []
        chosen = None
        for field in dict.fromkeys((self.align[model], "ready")):  # the model's mask, else the 63-day one
            mask = signals.get(field)
            if isinstance(mask, list) and len(mask) == len(symbols):
                marked = list(compress(symbols, mask))
                if len(marked) == x.shape[0]:
                    chosen = marked
                    break
        if chosen is None and x.shape[0] == len(symbols):
            chosen = list(symbols)
        if chosen is None:
            self.counts["unaligned"] += 1
            if self.counts["unaligned"] in (1, 100, 10_000):
                self.log.warning("%s: %d predictions match neither signals field %r nor 'ready' nor all %d symbols; "
                                 "the model sits the day out (%d times so far)", model, x.shape[0], self.align[model],
                                 len(symbols), self.counts["unaligned"])
            return None
        return chosen, x

    def on_join(self, values: dict[str, Any], ctx: Any) -> None:
        signals = values.get("signals")
        if not isinstance(signals, dict):
            return
        universe = ctx.params.universe
        if universe is not None and not isinstance(signals.get(universe), list):
            self.counts["no_universe"] += 1
            if self.counts["no_universe"] in (1, 100, 10_000):
                self.log.warning("the Signals have no list %r (params.universe): no symbol may hold a position "
                                 "(%d times so far)", universe, self.counts["no_universe"])
        if ctx.params.strategy != "meta":  # a baseline in the models' place
            symbols, position = baseline_positions(signals, ctx.params.strategy, universe)
            self.counts["days"] += 1
            ctx.emit("positions", {"t": signals.get("t", ctx.message.event_time), "symbols": symbols,
                                   "position": position, "weights": {ctx.params.strategy: 1.0}})
            return
        preds = {m: self._aligned(m, values.get(m), signals, ctx) for m in ctx.params.models}
        allowed = in_universe(signals, universe)
        symbols, position, weights = self.weighter.step_rows(
            signals, preds, None if allowed is None else np.array(allowed, bool))
        self.counts["days"] += 1
        ctx.emit("positions", {"t": signals.get("t", ctx.message.event_time), "symbols": symbols,
                               "position": position, "weights": weights,
                               "sharpe": {m: self.weighter.sharpe(m) for m in ctx.params.models}})

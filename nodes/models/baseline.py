"""``Baseline``: the classic strategies the paper compares the DMN with, as a drop-in for the
meta-learner, so the *same graph* (risk, portfolio, execution, costs, metrics) replays them.

    long-only   X = 1
    tsmom       X = sign(r_{t-252,t})            (Moskowitz, Ooi, Pedersen 2012)
    macd        X = Baz et al.'s combined MACD signal

It reads the day's Signals (the features node computes ``tsmom`` and ``macd``) and emits
Positions, exactly what the meta-learner emits, so it can stand in for the meta-learner in a
graph without models. In the DMN graphs the meta-learner itself trades a baseline when
asked (``MetaLearner.Params.strategy``, ``--set vars.strategy=tsmom``), so the comparison
runs through the very same graph.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dmnflow import Input, Node, Output

__all__ = ["UNIVERSE_DOC", "Baseline", "baseline_positions", "in_universe"]


UNIVERSE_DOC = ("the Signals mask of the symbols that may hold a position that day (ready: a full window of all "
                "8 features, the LSTM's; ready_long: a full long window, the Transformer's), so that every "
                "strategy trades the same asset-days as the models; none: every symbol with a defined signal")


class Baseline(Node):
    """Positions from a classic signal of the day's Signals: long-only, TSMOM or MACD."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        signal: Literal["long", "tsmom", "macd"] = Field("tsmom", description="long (always +1), tsmom (sign of "
                                                         "the 12-month return) or macd (Baz et al.)")
        universe: Literal["ready", "ready_long"] | None = Field(None, description=UNIVERSE_DOC)

    signals = Input(dict, doc="Signals: t, symbols, sigma, tsmom, macd, ...")
    positions = Output(dict, doc="Positions: t, symbols, position in [-1, 1], weights")

    def setup(self, ctx: Any) -> None:
        self.signal = ctx.params.signal
        self.counts = {"days": 0, "undefined": 0}

    def on_signals(self, signals: dict[str, Any], ctx: Any) -> None:
        symbols, position = baseline_positions(signals, self.signal, ctx.params.universe)
        self.counts["undefined"] += len(signals.get("symbols") or []) - len(symbols)
        self.counts["days"] += 1
        ctx.emit("positions", {"t": signals.get("t", ctx.message.event_time), "symbols": symbols,
                               "position": position, "weights": {self.signal: 1.0}})

    def summary(self) -> dict[str, Any]:
        return {"signal": getattr(self, "signal", None), **getattr(self, "counts", {})}


def in_universe(signals: dict[str, Any], universe: str | None) -> list[bool] | None:
    """The Signals field ``universe`` as one bool per symbol; None when no universe is asked for.

    A field that is missing or of the wrong length allows no symbol (the caller counts it):
    trading everything because a name was misspelt would be the worse failure.
    """
    if universe is None:
        return None
    symbols = signals.get("symbols") or []
    mask = signals.get(universe)
    if not isinstance(mask, list) or len(mask) != len(symbols):
        return [False] * len(symbols)
    return [bool(m) for m in mask]


def baseline_positions(signals: dict[str, Any], signal: str, universe: str | None = None
                       ) -> tuple[list[str], list[float]]:
    """The symbols with a defined signal (and volatility) today, within ``universe`` (a Signals
    field, see :func:`in_universe`), and their positions in [-1, 1]."""
    symbols, position = [], []
    values = signals.get(signal) if signal != "long" else None
    sigma = signals.get("sigma") or []
    allowed = in_universe(signals, universe)
    for i, symbol in enumerate(signals.get("symbols") or []):
        if allowed is not None and not allowed[i]:
            continue
        x = 1.0 if signal == "long" else _at(values, i)
        if x is None or _at(sigma, i) is None:  # warm-up: no view yet
            continue
        symbols.append(symbol)
        position.append(max(-1.0, min(1.0, x)))
    return symbols, position


def _at(values: Any, i: int) -> float | None:
    try:
        x = values[i]
    except (TypeError, IndexError):
        return None
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None

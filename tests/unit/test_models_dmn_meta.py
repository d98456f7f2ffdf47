"""MetaLearner: alignment through the Signals' readiness masks, Sharpe weighting on a hand-made sequence."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from dmnflow import Message
from dmnflow.testing import RecordingContext
from nodes.models import MetaLearner, SharpeWeighter, sharpe_weights
from nodes.models.meta import combine_positions, realised_return


def make(params: dict[str, Any] | None = None) -> tuple[MetaLearner, RecordingContext]:
    node, ctx = MetaLearner(), RecordingContext(MetaLearner, params, name="meta")
    node.setup(ctx)
    return node, ctx


def signals(t: int, symbols: list[str], ret: list[float], sigma: list[float], ready: list[bool] | None = None,
            **extra: Any) -> dict[str, Any]:
    return {"t": t, "symbols": symbols, "ret": ret, "sigma": sigma, "ready": ready or [True] * len(symbols),
            **extra}


def col(values: list[float]) -> np.ndarray:
    return np.asarray(values, np.float32).reshape(-1, 1)


def test_sharpe_weights_schemes_and_floor() -> None:
    w = sharpe_weights({"a": 2.0, "b": 0.0}, "softmax", 1.0, 0.0)
    assert w["a"] == pytest.approx(math.e ** 2 / (math.e ** 2 + 1))
    w = sharpe_weights({"a": 2.0, "b": 0.0}, "softmax", 1.0, 0.1)
    raw = math.e ** 2 / (math.e ** 2 + 1)
    assert w["a"] == pytest.approx(0.1 + 0.8 * raw) and w["b"] == pytest.approx(0.1 + 0.8 * (1 - raw))
    assert sharpe_weights({"a": 1.5, "b": 0.5, "c": -1.0}, "positive", floor=0.0) == pytest.approx(
        {"a": 0.75, "b": 0.25, "c": 0.0})
    assert sharpe_weights({"a": -1.0, "b": float("nan")}, "positive", floor=0.0) == {"a": 0.5, "b": 0.5}
    assert sum(sharpe_weights({"a": 3.0, "b": 1.0, "c": 0.2}, floor=0.05).values()) == pytest.approx(1.0)


def test_realised_sharpe_weights_on_a_hand_made_sequence() -> None:
    """Model `good` is long a symbol that rises every other day more than it falls; `bad` is short it."""
    w = SharpeWeighter(["good", "bad"], window=4, warmup=3, scheme="positive", floor=0.0)
    rets = [0.0, 0.02, -0.01, 0.02, -0.01, 0.02]
    history = []
    for t, r in enumerate(rets):
        sym, pos, weights = w.step(signals(t, ["X"], [r], [0.15]), {"good": {"X": 1.0}, "bad": {"X": -1.0}})
        history.append((pos[0], weights))
    # t=0..2: fewer than 3 booked returns -> equal weights and the positions cancel out
    assert [h[1] for h in history[:3]] == [{"good": 0.5, "bad": 0.5}] * 3
    assert history[0][0] == 0.0
    # from t=3: good booked [0.02, -0.01, 0.02] (x 0.15/0.15), Sharpe > 0; bad the opposite -> all weight on good
    assert history[3][1] == {"good": 1.0, "bad": 0.0} and history[3][0] == 1.0
    r = np.array([0.02, -0.01, 0.02, -0.01])  # good's last 4 returns at t=5 (window 4)
    assert w.sharpe("good") == pytest.approx(r.mean() / r.std(ddof=1) * math.sqrt(252))
    assert w.sharpe("bad") == pytest.approx(-w.sharpe("good"))


def test_returns_use_yesterdays_positions_and_sigma() -> None:
    w = SharpeWeighter(["m"], window=10, warmup=2)
    w.step(signals(0, ["A", "B"], [0.0, 0.0], [0.30, 0.15]), {"m": {"A": 1.0, "B": -0.5}})
    w.step(signals(1, ["A", "B"], [0.01, 0.02], [0.99, 0.99]), {"m": {"A": 0.0, "B": 0.0}})
    booked = list(w.returns["m"])
    assert booked == pytest.approx([np.mean([1.0 * 0.15 / 0.30 * 0.01, -0.5 * 0.15 / 0.15 * 0.02])])


def test_node_aligns_predictions_through_the_signals_masks() -> None:
    node, ctx = make({"models": ["lstm", "transformer"], "align": {"transformer": "ready_long"}, "warmup": 2})
    sig = signals(1, ["A", "B", "C"], [0.0] * 3, [0.2] * 3, ready=[True, False, True],
                  ready_long=[False, False, True])
    node.on_join({"lstm": col([0.4, -0.6]), "transformer": col([1.0]), "signals": sig}, ctx)
    out = ctx.out["positions"][-1]
    assert out["symbols"] == ["A", "C"] and out["weights"] == {"lstm": 0.5, "transformer": 0.5}
    assert out["position"] == pytest.approx([0.4, (-0.6 + 1.0) / 2])  # A: LSTM alone; C: both, equal weights
    assert out["t"] == 1


def test_without_its_own_mask_a_long_window_model_aligns_through_ready_when_the_counts_agree() -> None:
    node, ctx = make({"models": ["lstm", "transformer"], "align": {"transformer": "ready_long"}, "warmup": 2})
    sig = signals(1, ["A", "B", "C"], [0.0] * 3, [0.2] * 3, ready=[True, False, True])  # no ready_long
    node.on_join({"lstm": col([0.4, -0.6]), "transformer": col([0.2, 1.0]), "signals": sig}, ctx)
    assert ctx.out["positions"][-1]["position"] == pytest.approx([0.3, 0.2])
    assert node.summary()["unaligned"] == 0


def test_node_leaves_out_a_prediction_it_cannot_align() -> None:
    node, ctx = make({"models": ["lstm", "transformer"], "align": {"transformer": "ready_long"}})
    sig = signals(1, ["A", "B"], [0.0] * 2, [0.2] * 2)  # no ready_long: 1 row cannot be placed among 2 symbols
    node.on_join({"lstm": col([0.5, -0.5]), "transformer": col([1.0]), "signals": sig}, ctx)
    out = ctx.out["positions"][-1]
    assert out["position"] == pytest.approx([0.5, -0.5]) and out["weights"] == {"lstm": 1.0}
    assert node.summary()["unaligned"] == 1
    # an empty prediction (windows not warm yet, emit_empty) is no prediction, not an alignment failure
    node.on_join({"lstm": col([0.5, -0.5]), "transformer": col([]), "signals": sig}, ctx)
    assert ctx.out["positions"][-1]["weights"] == {"lstm": 1.0} and node.summary()["unaligned"] == 1
    # a full cross-section needs no mask
    node.on_join({"lstm": col([0.5, -0.5]), "transformer": col([1.0, 1.0]), "signals": sig}, ctx)
    assert ctx.out["positions"][-1]["position"] == pytest.approx([0.75, 0.25])


def test_node_is_deterministic_and_shifts_weight_to_the_better_model() -> None:
    rets = np.random.default_rng(0).normal(0, 0.01, (60, 3))
    symbols = ["A", "B", "C"]
    runs = []
    for _ in range(2):
        node, ctx = make({"models": ["lstm", "transformer"], "window": 20, "warmup": 5, "temperature": 0.5})
        for t in range(60):
            nxt = rets[t + 1] if t + 1 < 60 else np.zeros(3)
            good = np.sign(nxt)  # knows tomorrow's sign
            noise = np.sign(np.random.default_rng(t).normal(size=3))
            node.on_join({"lstm": col(list(good)), "transformer": col(list(noise)),
                          "signals": signals(t, symbols, list(rets[t]), [0.15] * 3)}, ctx)
        runs.append(ctx.out["positions"])
    assert runs[0] == runs[1]
    assert runs[0][-1]["weights"]["lstm"] > 0.9 and runs[0][-1]["sharpe"]["lstm"] > 5


def test_params_are_checked() -> None:
    with pytest.raises(ValidationError):
        MetaLearner.Params.model_validate({"models": ["lstm", "lstm"]})
    with pytest.raises(ValidationError):
        MetaLearner.Params.model_validate({"models": ["lstm"], "align": {"tfm": "ready_long"}})
    with pytest.raises(ValidationError):
        MetaLearner.Params.model_validate({"wndow": 3})
    ports = MetaLearner.ports(MetaLearner.Params(models=["a", "b"]))
    assert list(ports.inputs) == ["a", "b", "signals"] and list(ports.outputs) == ["positions"]


def test_rows_that_name_their_symbols_in_the_joined_message_are_aligned_by_name() -> None:
    """The runner's output carries attrs["symbols"]: ctx.joined hands them to on_join, so the
    rows are placed by name even when no readiness mask would match."""
    node, ctx = make({"models": ["lstm", "transformer"]})
    ctx.joined = {"lstm": Message(port="lstm", attrs={"symbols": ["C", "A"], "model_version": "v1"}),
                  "transformer": Message(port="transformer", attrs={"symbols": ["A"], "model_version": "v1"})}
    day = signals(1, ["A", "B", "C"], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1], ready=[False, False, False])
    node.on_join({"lstm": col([0.5, -0.25]), "transformer": col([1.0]), "signals": day}, ctx)
    [out] = ctx.out["positions"]
    position = dict(zip(out["symbols"], out["position"], strict=True))
    assert node.counts["unaligned"] == 0
    assert position["C"] == pytest.approx(0.5)  # the LSTM's first row is C's, and only it has a view of C
    assert -0.25 < position["A"] < 1.0  # A: a weighted mean of the LSTM's -0.25 and the Transformer's 1.0
    assert "B" not in position  # no model predicted B


@pytest.mark.parametrize("strategy", ["meta", "long", "tsmom", "macd"])
def test_a_universe_keeps_every_strategy_to_the_same_asset_days(strategy: str) -> None:
    node, ctx = make({"models": ["lstm"], "strategy": strategy, "universe": "ready_long"})
    sig = signals(1, ["A", "B", "C"], [0.0] * 3, [0.2] * 3, ready=[True, True, True],
                  ready_long=[False, True, True], tsmom=[1.0, -1.0, 1.0], macd=[0.3, float("nan"), -0.2])
    node.on_join({"lstm": col([0.4, -0.6, 0.1]), "signals": sig}, ctx)
    out = ctx.out["positions"][-1]
    want = {"meta": (["B", "C"], [-0.6, 0.1]), "long": (["B", "C"], [1.0, 1.0]),
            "tsmom": (["B", "C"], [-1.0, 1.0]), "macd": (["C"], [-0.2])}[strategy]  # B's MACD is not defined yet
    assert out["symbols"] == want[0] and out["position"] == pytest.approx(want[1], abs=1e-7)
    # Signals without the mask: nobody trades (a misconfigured mask must not trade everything), counted
    node.on_join({"lstm": col([0.4, -0.6, 0.1]), "signals": signals(2, ["A", "B", "C"], [0.0] * 3, [0.2] * 3,
                                                                      tsmom=[1.0] * 3, macd=[0.1] * 3)}, ctx)
    assert ctx.out["positions"][-1]["symbols"] == [] and node.summary()["no_universe"] == 1


class _LoopWeighter(SharpeWeighter):
    """The meta-learner as it was written before it went to numpy: a Python loop per model and
    symbol, over dicts. The vectorised one must give the same floats."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prev: dict[str, dict[str, float]] = {m: {} for m in self.models}
        self.prev_sigma: dict[str, float] = {}

    def sharpe(self, model: str) -> float:
        r = np.asarray(self.returns[model], np.float64)
        if r.size < 2:
            return math.nan
        sd = r.std(ddof=1)
        return float(r.mean() / sd * math.sqrt(252)) if sd > 0 else math.nan

    def step(self, signals: dict[str, Any], predictions: dict[str, dict[str, float] | None]
             ) -> tuple[list[str], list[float], dict[str, float]]:
        ret = {s: float(r) for s, r in zip(signals["symbols"], signals["ret"], strict=False)
               if r is not None and math.isfinite(r)}
        for m in self.models:
            parts = [x * self.vol_target / self.prev_sigma[s] * ret[s] for s, x in self.prev[m].items()
                     if s in ret and s in self.prev_sigma and self.prev_sigma[s] > 0 and math.isfinite(x)]
            if parts:
                self.returns[m].append(float(np.mean(parts)))
        present = [m for m in self.models if predictions.get(m)]
        w = self.weights(present)
        symbols, positions = [], []
        for s in signals["symbols"]:
            num = den = 0.0
            for m in present:
                x = predictions[m].get(s)  # type: ignore[union-attr]
                if x is not None and math.isfinite(x):
                    num += w[m] * x
                    den += w[m]
            if den > 0:
                symbols.append(s)
                positions.append(max(-1.0, min(1.0, num / den)))
        for m in self.models:
            self.prev[m] = dict(predictions.get(m) or {})
        self.prev_sigma = {s: float(v) for s, v in zip(signals["symbols"], signals["sigma"], strict=False)
                           if v is not None and math.isfinite(v)}
        return symbols, positions, w


@pytest.mark.parametrize("scheme", ["softmax", "positive"])
def test_the_vectorised_weighter_gives_the_loops_floats(scheme: str) -> None:
    """400 days of three models over 20 symbols that come and go, NaN positions, missing and bad
    sigmas, a model with nothing some days: positions, weights and Sharpe ratios are equal (==)."""
    rng = np.random.default_rng(17)
    universe = [f"S{i:02d}" for i in range(20)]
    models = ["lstm", "transformer", "other"]
    new = SharpeWeighter(models, window=30, warmup=5, scheme=scheme, temperature=0.7, floor=0.1)
    old = _LoopWeighter(models, window=30, warmup=5, scheme=scheme, temperature=0.7, floor=0.1)
    for t in range(400):
        symbols = [s for s in universe if rng.random() > 0.1] if t % 9 else list(universe)
        sigma: list[float | None] = list(rng.uniform(0.05, 0.5, len(symbols)))
        if t % 13 == 0 and symbols:
            sigma[0] = None
            sigma[-1] = -0.1
        day = signals(t, symbols, list(rng.normal(0, 0.02, len(symbols))), sigma)  # type: ignore[arg-type]
        preds: dict[str, dict[str, float] | None] = {}
        for k, m in enumerate(models):
            if (t + k) % 17 == 0:
                preds[m] = None if k % 2 else {}
                continue
            chosen = [s for s in universe if rng.random() > 0.2]  # may name symbols absent today
            x = np.tanh(rng.normal(0.1 * k, 1.0, len(chosen))).astype(np.float32).astype(np.float64)
            if t % 11 == 0 and len(x):
                x[0] = np.nan
            preds[m] = dict(zip(chosen, x.tolist(), strict=True))
        assert new.step(day, preds) == old.step(day, preds)
        assert np.array_equal([new.sharpe(m) for m in models], [old.sharpe(m) for m in models], equal_nan=True)
    assert all(len(new.returns[m]) == 30 for m in models)


def test_the_plain_functions_on_hand_made_numbers() -> None:
    nan = math.nan
    # A: both models, weights 0.25 / 0.75; B: only the second; C: nobody; D: clipped to 1
    has, pos = combine_positions([0.25, 0.75], [np.array([0.4, nan, nan, 2.0]), np.array([-0.4, 0.8, nan, 2.0])])
    assert has.tolist() == [True, True, False, True]
    assert pos[has].tolist() == [0.25 * 0.4 + 0.75 * -0.4, 0.75 * 0.8 / 0.75, 1.0]  # the loop's arithmetic
    # only the assets with a position, a sigma > 0 and a return count
    x, sigma, ret = np.array([1.0, -0.5, 1.0, nan]), np.array([0.3, 0.15, 0.0, 0.2]), np.array([0.01, 0.02, 0.5, 0.1])
    assert realised_return(x, sigma, ret, 0.15) == np.mean([1.0 * 0.15 / 0.3 * 0.01, -0.5 * 0.15 / 0.15 * 0.02])
    assert realised_return(x[2:], sigma[2:], ret[2:], 0.15) is None

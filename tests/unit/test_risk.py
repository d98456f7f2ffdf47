"""RiskManager: the paper's volatility targeting, limits, the kill switch and bad input."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from dmnflow.testing import RecordingContext
from nodes.risk import RiskManager, vol_target_weights

NAN = float("nan")



NO_LIMITS = {"max_weight": None, "max_gross": None, "max_drawdown": None}


def make(params: dict[str, Any] | None = None) -> tuple[RiskManager, RecordingContext]:
    node, ctx = RiskManager(), RecordingContext(RiskManager, params)
    node.setup(ctx)
    return node, ctx


def pair(t: int, symbols: list[str], position: list[float], sigma: list[float], ret: list[float] | None = None,
         close: list[float] | None = None, sig_symbols: list[str] | None = None) -> dict[str, Any]:
    s = sig_symbols or symbols
    return {
        "positions": {"t": t, "symbols": symbols, "position": position, "weights": {"lstm": 1.0}},
        "signals": {"t": t, "symbols": s, "sigma": sigma, "ret": ret or [0.0] * len(s),
                    "close": close or [100.0] * len(s), "tsmom": [1.0] * len(s), "macd": [0.0] * len(s),
                    "features": [[0.0] * 8 for _ in s]},
    }


def test_vol_target_weights_function() -> None:
    w = vol_target_weights(np.array([1.0, -0.5, 0.2, 1.0]), np.array([0.15, 0.3, 0.1, 0.2]),
                           np.array([True, True, True, False]), 0.15)
    assert np.allclose(w, [1 / 3, -0.25 / 3, 0.3 / 3, 0.0], rtol=0, atol=1e-15)


def test_weights_are_the_papers_vol_scaling() -> None:
    node, ctx = make(NO_LIMITS)
    node.on_join(pair(1, ["A", "B", "C"], [1.0, -0.5, 0.2], [0.15, 0.3, 0.1], close=[10.0, 20.0, 30.0]), ctx)
    (tg,) = ctx.out["targets"]
    assert tg["t"] == 1 and tg["symbols"] == ["A", "B", "C"] and tg["killed"] is False
    assert tg["weight"] == pytest.approx([1 / 3, -0.25 / 3, 0.1], abs=1e-15)
    assert tg["close"] == [10.0, 20.0, 30.0]
    assert tg["gross"] == pytest.approx(1 / 3 + 0.25 / 3 + 0.1, abs=1e-15) and tg["scale"] == 1.0


def test_portfolio_return_is_mean_of_scaled_asset_returns() -> None:
    rng = np.random.default_rng(3)
    syms = [f"S{i}" for i in range(6)]
    node, ctx = make(NO_LIMITS)
    equity = 1.0
    prev: tuple[np.ndarray, np.ndarray] | None = None
    for t in range(1, 40):
        x = rng.uniform(-1, 1, 6)
        sig = rng.uniform(0.05, 0.4, 6)
        r = rng.normal(0, 0.01, 6)
        if prev is not None:  # the paper: mean_i X_i (0.15 / sigma_i) r_{t+1}
            equity *= 1 + float(np.mean(prev[0] * 0.15 / prev[1] * r))
        node.on_join(pair(t, syms, x.tolist(), sig.tolist(), r.tolist()), ctx)
        assert ctx.out["targets"][-1]["equity"] == pytest.approx(equity, rel=1e-12)
        prev = (x, sig)


def test_alignment_unknown_and_nan_inputs() -> None:
    node, ctx = make(NO_LIMITS | {"universe": ["A", "B", "C", "D", "E"]})
    # positions in another order than the signals; Z is unknown to the signals, F outside the universe,
    # B has a NaN position, C a NaN sigma, D a zero sigma, A repeats (its second entry gets 0)
    value = pair(1, ["E", "Z", "A", "B", "C", "D", "F", "A"], [0.5, 1.0, 1.0, NAN, 1.0, 1.0, 1.0, 1.0],
                 [0.3, 0.15, NAN, 0.0, 0.2, 0.1], sig_symbols=["A", "B", "C", "D", "E", "F"],
                 close=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    node.on_join(value, ctx)
    tg = ctx.out["targets"][0]
    # two valid assets, E (0.5, sigma 0.2) and A (1.0, sigma 0.3)
    assert tg["weight"] == pytest.approx([0.5 * 0.15 / 0.2 / 2, 0, 1.0 * 0.15 / 0.3 / 2, 0, 0, 0, 0, 0], abs=1e-15)
    assert tg["close"][0] == 5.0 and math.isnan(tg["close"][1]) and tg["close"][2] == 1.0
    s = node.summary()
    assert (s["unknown_symbol"], s["bad_position"], s["bad_sigma"]) == (3, 1, 2)


def test_position_clipped_to_unit_range() -> None:
    node, ctx = make(NO_LIMITS)
    node.on_join(pair(1, ["A"], [3.0], [0.15]), ctx)
    assert ctx.out["targets"][0]["weight"] == [1.0]
    assert node.summary()["clipped_position"] == 1


def test_per_asset_and_gross_limits() -> None:
    node, ctx = make({"max_weight": 0.5, "max_gross": 0.6, "max_drawdown": None})
    # raw weights: A 1.0 * 0.15/0.05/2 = 1.5 -> capped 0.5; B -0.5 * 0.15/0.15/2 = -0.25; gross 0.75 -> x 0.8
    node.on_join(pair(1, ["A", "B"], [1.0, -0.5], [0.05, 0.15]), ctx)
    tg = ctx.out["targets"][0]
    assert tg["weight"] == pytest.approx([0.4, -0.2], abs=1e-15)
    assert tg["gross"] == pytest.approx(0.6) and tg["scale"] == pytest.approx(0.8)
    s = node.summary()
    assert s["capped_weight"] == 1 and s["gross_scaled"] == 1


def test_kill_switch_stays_killed() -> None:
    node, ctx = make({"max_weight": None, "max_gross": None, "max_drawdown": 0.1})
    node.on_join(pair(1, ["A"], [1.0], [0.15]), ctx)  # weight 1.0
    node.on_join(pair(2, ["A"], [1.0], [0.15], ret=[0.05]), ctx)  # equity 1.05, the peak
    node.on_join(pair(3, ["A"], [1.0], [0.15], ret=[-0.1]), ctx)  # 0.945: drawdown 0.1 exactly, not over
    assert not ctx.out["targets"][-1]["killed"]
    node.on_join(pair(4, ["A"], [1.0], [0.15], ret=[-0.01]), ctx)  # 0.93555: drawdown 0.109 > 0.1
    tg = ctx.out["targets"][-1]
    assert tg["killed"] is True and tg["weight"] == [0.0] and tg["gross"] == 0.0
    assert tg["equity"] == pytest.approx(1.05 * 0.9 * 0.99) and tg["drawdown"] == pytest.approx(1 - 0.9 * 0.99)
    for t in range(5, 10):  # flat: the equity no longer moves, and no reset is set
        node.on_join(pair(t, ["A"], [1.0], [0.15], ret=[0.5]), ctx)
        assert ctx.out["targets"][-1]["killed"] and ctx.out["targets"][-1]["weight"] == [0.0]
    s = node.summary()
    assert s["kill_events"] == 1 and s["killed"] == 1 and s["killed_steps"] == 6
    assert s["equity"] == pytest.approx(1.05 * 0.9 * 0.99)
    assert s["max_drawdown"] == pytest.approx(1 - 0.9 * 0.99)


def test_kill_switch_reset_after() -> None:
    node, ctx = make({"max_weight": None, "max_gross": None, "max_drawdown": 0.1, "reset_after": 2})
    node.on_join(pair(1, ["A"], [1.0], [0.15]), ctx)
    node.on_join(pair(2, ["A"], [1.0], [0.15], ret=[-0.2]), ctx)  # killed at t=2
    node.on_join(pair(3, ["A"], [1.0], [0.15]), ctx)
    node.on_join(pair(4, ["A"], [1.0], [0.15]), ctx)  # two event times later: live again, peak restarts
    killed = [tg["killed"] for tg in ctx.out["targets"]]
    assert killed == [False, True, True, False]
    assert ctx.out["targets"][-1]["weight"] == [1.0] and ctx.out["targets"][-1]["drawdown"] == 0.0
    node.on_join(pair(5, ["A"], [1.0], [0.15], ret=[-0.05]), ctx)  # 5% from the new peak: fine
    assert not ctx.out["targets"][-1]["killed"]
    assert node.summary()["kill_events"] == 1


def test_missing_returns_count_and_do_not_move_equity() -> None:
    node, ctx = make(NO_LIMITS)
    node.on_join(pair(1, ["A", "B"], [1.0, 1.0], [0.15, 0.15]), ctx)
    node.on_join(pair(2, ["A", "C"], [1.0, 1.0], [0.15, 0.15], ret=[0.02, NAN], sig_symbols=["A", "C"]), ctx)
    assert ctx.out["targets"][-1]["equity"] == pytest.approx(1 + 0.5 * 0.02)  # B absent today: 0 return
    assert node.summary()["missing_return"] == 1


def test_bad_pairs_never_crash_and_are_counted() -> None:
    node, ctx = make()
    node.on_join(pair(5, ["A"], [1.0], [0.15]), ctx)
    node.on_join(pair(5, ["A"], [1.0], [0.15]), ctx)  # duplicate
    node.on_join(pair(4, ["A"], [1.0], [0.15]), ctx)  # out of order
    node.on_join({"positions": None, "signals": {}}, ctx)
    node.on_join({"positions": {"symbols": ["A"], "position": [1.0]}, "signals": {"symbols": []}}, ctx)  # no t
    node.on_join(pair(6, ["A", "B"], [1.0], [0.15, 0.2]), ctx)  # position list too short
    node.on_join(pair(7, ["A"], ["x"], [0.15]), ctx)  # type: ignore[list-item]
    node.on_join({"positions": {"t": 8, "symbols": 5}, "signals": {"t": 8, "symbols": []}}, ctx)
    node.on_join(pair(9, [], [], []), ctx)  # an empty cross-section is fine
    s = node.summary()
    assert (s["duplicates"], s["out_of_order"], s["bad_messages"], s["empty"]) == (1, 1, 5, 1)
    assert [tg["t"] for tg in ctx.out["targets"]] == [5, 9]
    assert ctx.out["targets"][-1]["weight"] == [] and ctx.out["targets"][-1]["killed"] is False
    assert all(isinstance(v, int | float) for v in s.values())


def test_same_inputs_same_outputs() -> None:
    rng = np.random.default_rng(11)
    syms = [f"S{i}" for i in range(5)]
    pairs = []
    for t in range(1, 60):
        sub = [s for s in syms if rng.random() > 0.2]  # the universe shifts from day to day
        pairs.append(pair(t, sub, rng.uniform(-1, 1, len(sub)).tolist(), rng.uniform(0.1, 0.3, len(syms)).tolist(),
                          rng.normal(0, 0.03, len(syms)).tolist(), sig_symbols=syms))
    runs = []
    for _ in range(2):
        node, ctx = make({"max_drawdown": 0.1, "reset_after": 5, "max_gross": 0.8})
        for p in pairs:
            node.on_join(p, ctx)
        runs.append((ctx.out["targets"], node.summary()))
    assert runs[0] == runs[1]
    assert runs[0][1]["emitted"] == 59


def test_a_delay_emits_the_weights_of_earlier_signals_at_todays_closes() -> None:
    node, ctx = make({**NO_LIMITS, "delay": 1})
    node.on_join(pair(1, ["A", "B"], [1.0, -1.0], [0.15, 0.30], close=[10.0, 20.0]), ctx)
    node.on_join(pair(2, ["A", "B", "C"], [0.5, 0.5, 0.5], [0.15, 0.15, 0.15], close=[11.0, 21.0, 31.0],
                      ret=[0.1, 0.05, 0.0]), ctx)
    first, second = ctx.out["targets"]
    assert first["symbols"] == [] and first["weight"] == [] and first["gross"] == 0.0  # nothing decided before
    assert second["t"] == 2 and second["symbols"] == ["A", "B"]  # day 1's decision ...
    assert second["weight"] == pytest.approx([0.5, -0.25], abs=1e-15)
    assert second["close"] == [11.0, 21.0]  # ... traded at day 2's closes
    node.on_join(pair(3, ["A", "C"], [0.0, 0.0], [0.15, 0.15], close=[12.0, 32.0], ret=[0.1, 0.0],
                      sig_symbols=["A", "C"]), ctx)
    third = ctx.out["targets"][-1]
    assert third["symbols"] == ["A", "B", "C"] and third["weight"] == pytest.approx([1 / 6] * 3)
    assert third["close"][0] == 12.0 and math.isnan(third["close"][1])  # B has no price today: it is kept
    # the kill switch's equity follows what was traded: day 2's targets earn day 3's return of A (B has none)
    assert node.equity == pytest.approx(1.0 + 0.5 * 0.1) and node.counts["missing_return"] == 1

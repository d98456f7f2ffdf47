"""Market data: the synthetic market, the shared guard and helpers, the trendfollowing loader."""

from __future__ import annotations

import importlib.metadata
import logging
import math
from typing import Any

import numpy as np
import pytest

from dmnflow.node import Context
from dmnflow.testing import run_node
from nodes.market import common
from nodes.market.common import (
    DAY_NS,
    MarketGuard,
    Pacer,
    RateLimitedLog,
    day_ns,
    day_of,
    kind_of,
    make_bar,
    make_panel,
    make_tick,
    ns_to_date,
    topic_for,
)
from nodes.market.synthetic import Synthetic, SyntheticMarket, synthetic_arrays


class Recorder:
    """A context that keeps (port, value, topic, event_time) of every emit."""

    def __init__(self, cls: type, params: dict[str, Any] | None = None) -> None:
        self.sent: list[tuple[str, Any, Any, Any]] = []
        self.ctx = Context(cls.__name__, cls.Params.model_validate(params or {}), self._emit)
        self.node = cls()
        self.node.setup(self.ctx)

    def _emit(self, port: str, value: Any, topic: Any, event_time: Any, *rest: Any) -> None:
        self.sent.append((port, value, topic, event_time))


# -- records, times, topics ------------------------------------------------------------------


def test_records_and_times() -> None:
    t = day_ns("2020-03-02")
    assert t == 1583107200 * 10**9 and t % DAY_NS == 0 and ns_to_date(t).isoformat() == "2020-03-02"
    assert day_of(t + 5 * 3600 * 10**9) == t
    assert topic_for("ES1 Index") == "market_data.ES1 Index"
    bar = make_bar("A", t, 1, 2, 0.5, 1.5, 10)
    assert bar == {"symbol": "A", "t": t, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0}
    assert make_tick("A", t + 1, 1.25, 3) == {"symbol": "A", "t": t + 1, "price": 1.25, "size": 3.0}
    panel = make_panel(t, ["A", "B"], np.array([1.0, np.nan]), volume=[5, 6])
    assert panel["symbols"] == ["A", "B"] and panel["volume"] == [5.0, 6.0] and math.isnan(panel["close"][1])
    assert all(type(v) is float for v in panel["close"])  # plain floats: msgpack packs them as is
    assert [kind_of(r) for r in (bar, make_tick("A", t, 1.0), panel, {"x": 1}, None)] == \
        ["bar", "tick", "panel", None, None]


# -- the guard -------------------------------------------------------------------------------


def test_guard_counts_every_kind_of_bad_bar() -> None:
    guard = MarketGuard(universe=["A", "B"])
    t = day_ns("2021-01-04")
    checks = [
        guard.check_bar("A", t, 10.0),  # ok
        guard.check_bar("A", t, 10.0),  # duplicate
        guard.check_bar("A", t - DAY_NS, 9.0),  # out of order
        guard.check_bar("A", t + DAY_NS, float("nan")),  # bad
        guard.check_bar("A", t + DAY_NS, -2.0),  # bad
        guard.check_bar("A", t + DAY_NS, 0.0),  # bad
        guard.check_bar("A", t + DAY_NS, float("inf")),  # bad
        guard.check_bar("A", t + DAY_NS, 10.0, open=-1.0),  # bad open
        guard.check_bar("Z", t, 10.0),  # unknown
        guard.check_bar("B", "2021-01-04", 10.0),  # malformed time
        guard.check_bar("", t, 10.0),  # malformed symbol
        guard.check_bar("A", t + DAY_NS, 11.0, open=float("nan")),  # ok: a missing open is allowed
        guard.check_bar("B", np.int64(t), np.float64(3.0)),  # ok: numpy scalars are numbers
    ]
    assert checks == [True] + [False] * 10 + [True, True]
    assert guard.summary() == {"accepted": 3, "bad_price": 5, "duplicate": 1, "out_of_order": 1,
                               "unknown_symbol": 1, "malformed": 2}


def test_guard_ticks_and_panels() -> None:
    guard = MarketGuard()
    t = day_ns("2021-01-04")
    assert guard.check_tick("A", t + 1, 10.0, 1.0)
    assert guard.check_tick("A", t + 1, 10.5, 1.0)  # same time, another trade: fine
    assert not guard.check_tick("A", t + 1, 10.5, 1.0)  # identical repeat: duplicate
    assert not guard.check_tick("A", t, 10.0, 1.0)  # older
    assert guard.check_record(make_tick("B", t, 5.0)) == "tick"
    assert guard.check_record({"what": 1}) is None
    ok = guard.check_panel(t + DAY_NS, ["A", "B", "C", "D"], np.array([1.0, np.nan, -1.0, 2.0]))
    assert ok.tolist() == [True, False, False, True]  # NaN: no bar that day (not counted)
    ok = guard.check_panel(t + DAY_NS, ["A", "B", "C", "D"], np.array([1.0, 2.0, 3.0, 4.0]))
    assert ok.tolist() == [False, True, True, False]  # A and D already have that day
    assert guard.check_bar("B", t + 2 * DAY_NS, 1.0)  # per-symbol state is shared with panels
    ok = guard.check_panel(t + 2 * DAY_NS, ["A", "B", "C", "D"], np.array([1.0, 2.0, 3.0, 4.0]))
    assert ok.tolist() == [True, False, True, True]
    assert guard.check_panel(t, ["A"], np.array([1.0, 2.0])).tolist() == [False, False]  # lengths differ
    assert guard.summary() == {"accepted": 11, "bad_price": 1, "duplicate": 4, "out_of_order": 1,
                               "unknown_symbol": 0, "malformed": 2}


def test_problems_are_logged_one_line_per_kind_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.market.guard")
    guard = MarketGuard(log=log, interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="test.market.guard"):
        for _ in range(50):
            guard.check_bar("A", day_ns("2021-01-04"), float("nan"))
            guard.check_bar("A", day_ns("2021-01-04"), -1.0)
            guard.check_bar("", 0, 1.0)
    assert len(caplog.records) == 2  # bad_price once, malformed once; the rest are counted
    assert guard.summary()["bad_price"] == 100 and guard.summary()["malformed"] == 50
    quiet = RateLimitedLog(logging.getLogger("test.market.quiet"))
    logging.getLogger("test.market.quiet").setLevel(logging.ERROR)
    quiet("x", "%s", object())  # level off: nothing formatted, nothing logged
    assert len(caplog.records) == 2


def test_pacer_waits_in_turns() -> None:
    assert list(Pacer(0.0).wait()) == []
    pacer = Pacer(0.03, slice_s=0.01)
    turns = list(pacer.wait())
    assert turns and all(turn is None for turn in turns)


# -- the synthetic market ----------------------------------------------------------------------


def test_same_seed_same_market_and_other_seeds_differ() -> None:
    a = run_node(Synthetic, params={"seed": 5, "symbols": 3, "days": 30})["market_data"]
    b = run_node(Synthetic, params={"seed": 5, "symbols": 3, "days": 30})["market_data"]
    c = run_node(Synthetic, params={"seed": 6, "symbols": 3, "days": 30})["market_data"]
    assert a == b and len(a) == 90 and a != c
    t, names, closes, regimes = synthetic_arrays(seed=5, symbols=3, days=30)
    assert names == ["SYN00", "SYN01", "SYN02"]
    assert [bar["close"] for bar in a] == closes.ravel().tolist()
    assert [bar["t"] for bar in a[::3]] == t.tolist()
    assert set(np.unique(regimes)) <= {0, 1}


def test_bars_ticks_and_panels_describe_the_same_market() -> None:
    params = {"seed": 9, "symbols": ["X", "Y"], "days": 12, "ticks_per_day": 5, "start": "2024-02-29"}
    bars = run_node(Synthetic, params={**params, "mode": "bars"})["market_data"]
    panels = run_node(Synthetic, params={**params, "mode": "panel"})["market_data"]
    ticks = run_node(Synthetic, params={**params, "mode": "ticks"})["market_data"]
    assert len(bars) == 24 and len(panels) == 12 and len(ticks) == 12 * 5 * 2
    assert [ns_to_date(p["t"]).weekday() < 5 for p in panels] == [True] * 12  # business days only
    assert ns_to_date(panels[0]["t"]).isoformat() == "2024-02-29" and ns_to_date(panels[1]["t"]).isoformat() == \
        "2024-03-01" and ns_to_date(panels[2]["t"]).isoformat() == "2024-03-04"
    for d, panel in enumerate(panels):
        day_bars = bars[2 * d: 2 * d + 2]
        assert panel["symbols"] == ["X", "Y"] and [b["symbol"] for b in day_bars] == ["X", "Y"]
        for field in ("open", "high", "low", "close", "volume"):
            assert panel[field] == [b[field] for b in day_bars]
        for i, symbol in enumerate(("X", "Y")):
            day_ticks = [k for k in ticks if k["symbol"] == symbol and day_of(k["t"]) == panel["t"]]
            prices = [k["price"] for k in day_ticks]
            assert len(prices) == 5 and [k["t"] for k in day_ticks] == sorted(k["t"] for k in day_ticks)
            assert prices[0] == panel["open"][i] and prices[-1] == panel["close"][i]
            assert max(prices) == panel["high"][i] and min(prices) == panel["low"][i]
            assert panel["low"][i] <= min(panel["open"][i], panel["close"][i]) <= panel["high"][i]


def test_topics_and_event_times_of_each_mode() -> None:
    rec = Recorder(Synthetic, {"symbols": 2, "days": 2, "mode": "bars"})
    list(rec.node.run(rec.ctx))
    assert [(s[2], s[3]) for s in rec.sent] == [(topic_for(b["symbol"]), b["t"]) for _, b, _, _ in rec.sent]
    assert [s[1]["symbol"] for s in rec.sent] == ["SYN00", "SYN01"] * 2
    rec = Recorder(Synthetic, {"symbols": 2, "days": 2, "mode": "panel"})
    list(rec.node.run(rec.ctx))
    assert [(s[2], s[3]) for s in rec.sent] == [("market_data", p["t"]) for _, p, _, _ in rec.sent]
    rec = Recorder(Synthetic, {"symbols": 2, "days": 1, "mode": "ticks", "ticks_per_day": 3})
    list(rec.node.run(rec.ctx))
    assert [s[3] for s in rec.sent] == [k["t"] for _, k, _, _ in rec.sent] and len(rec.sent) == 6
    assert rec.node.summary() == {"days": 1, "bars": 0, "ticks": 6, "panels": 0}


def test_live_runs_past_days_until_stopped() -> None:
    rec = Recorder(Synthetic, {"symbols": 2, "days": 3, "live": True, "mode": "panel"})
    gen = rec.node.run(rec.ctx)
    try:
        for _ in range(40):  # each day: its panel, then a turn for the worker
            next(gen)
    finally:
        gen.close()  # what the worker does on stop
    assert len(rec.sent) == 40 and rec.node.summary()["days"] == 40


def test_params_are_checked() -> None:
    with pytest.raises(ValueError, match="distinct"):
        Synthetic.Params(symbols=["A", "A"])
    with pytest.raises(ValueError):
        Synthetic.Params(start="not a date")
    with pytest.raises(ValueError, match="extra"):
        Synthetic.Params(process={"trend_strenght": 1.0})
    with pytest.raises(ValueError, match="vol_max"):
        SyntheticMarket(2, process={"vol_min": 0.3, "vol_max": 0.2})


def _sharpe(returns: np.ndarray) -> float:
    daily = np.nanmean(returns[np.isfinite(returns).any(axis=1)], axis=1)
    return float(np.nanmean(daily) / np.nanstd(daily) * math.sqrt(252))


def test_the_default_market_rewards_momentum_and_knowing_the_regime() -> None:
    """The default config must be learnable: trend following beats long-only, and a model that
    tells trends from reversions (here: an oracle of the regime) has a lot more to gain."""
    pd = pytest.importorskip("pandas")
    from nodes.features.reference import ewm_vol, tsmom_signal

    t, names, closes, regimes = synthetic_arrays()  # the node's defaults: seed 7, 12 symbols, 2520 days
    frame = pd.DataFrame(closes, columns=names)
    ret = frame.pct_change().to_numpy()
    scale = 0.15 / ewm_vol(frame, annualise=True).to_numpy()  # vol targeting, as in the paper
    nxt = np.roll(ret, -1, axis=0)[:-1]
    scale, tsmom, regimes = scale[:-1], tsmom_signal(frame).to_numpy()[:-1], regimes[1:]
    ok = np.isfinite(tsmom)
    long_only = _sharpe(np.where(ok, scale * nxt, np.nan))
    trend = _sharpe(np.where(ok, tsmom * scale * nxt, np.nan))
    mom63 = np.sign(frame / frame.shift(63) - 1).to_numpy()[:-1]
    oracle = _sharpe(np.where(ok, mom63 * (regimes == 0) * scale * nxt, np.nan))
    assert trend > long_only + 0.4, (long_only, trend)
    assert oracle > trend + 0.5, (trend, oracle)


# -- trendfollowing ----------------------------------------------------------------------------


def _installed() -> bool:
    try:
        importlib.metadata.distribution("trendfollowing")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_tf = pytest.mark.skipif(not _installed(), reason="the trendfollowing package is not installed "
                                                       "(pip install --no-deps trendfollowing)")


@needs_tf
def test_load_trendfollowing() -> None:
    pytest.importorskip("pandas")
    from nodes.market.trendfollowing import load_trendfollowing, trendfollowing_info

    info = trendfollowing_info()
    assert len(info) == 84 and list(info.columns) == ["ticker", "group", "name"]
    df = load_trendfollowing("2010-01-01", "2010-12-31", symbols=["TY1 Comdty", "ES1 Index"])
    assert list(df.columns) == ["TY1 Comdty", "ES1 Index"]
    assert df.index.min().year == 2010 and df.index.max().year == 2010 and (df.index.day_of_week < 5).all()
    assert 250 <= len(df) <= 262 and df.notna().all().all() and (df > 0).all().all()
    bonds = load_trendfollowing("2015-01-01", "2015-01-31", groups=["Bonds"])
    assert set(bonds.columns) == set(info.loc[info["group"] == "Bonds", "ticker"])
    with pytest.raises(ValueError, match="unknown trendfollowing tickers"):
        load_trendfollowing(symbols=["NOPE"])


@needs_tf
def test_trendfollowing_node_panels_and_features_agree_with_the_reference() -> None:
    pytest.importorskip("pandas")
    from nodes.features import DMNFeatures
    from nodes.features.reference import feature_tensor
    from nodes.market.trendfollowing import TrendFollowing, load_trendfollowing

    params = {"start": "2012-01-01", "end": "2014-12-31", "symbols": ["ES1 Index", "TY1 Comdty", "GC1 Comdty"]}
    panels = run_node(TrendFollowing, params={**params, "mode": "panel"})["market_data"]
    df = load_trendfollowing(**params)
    assert len(panels) == len(df) and panels[0]["symbols"] == params["symbols"]
    assert panels[-1]["close"] == df.iloc[-1].tolist()
    out = run_node(DMNFeatures, params={"window": 5, "long_window": 0}, inputs=[("market_data", p) for p in panels])
    last = np.array(out["signals"][-1]["features"])
    np.testing.assert_allclose(last, feature_tensor(df)[-1], rtol=1e-9, atol=1e-9)


def test_a_missing_trendfollowing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from nodes.market import trendfollowing as tf

    def missing(name: str) -> Any:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(tf.importlib.metadata, "distribution", missing)
    tf._read.cache_clear()
    try:
        with pytest.raises(tf.TrendFollowingMissing, match="pip install --no-deps trendfollowing"):
            tf.load_trendfollowing()
        with pytest.raises(tf.TrendFollowingMissing, match="pip install --no-deps trendfollowing"):
            run_node(tf.TrendFollowing)
    finally:
        tf._read.cache_clear()


def test_pandas_is_not_imported_by_the_package() -> None:
    import subprocess
    import sys

    code = "import sys, nodes.market, nodes.features; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
    assert common.TOPIC == "market_data"


def test_a_live_synthetic_market_settles_between_its_history_and_the_session():
    import time

    from dmnflow.testing import RecordingContext
    from nodes.market import Synthetic

    params = {"symbols": 2, "mode": "panel", "live": True, "history": 3, "rate": 1000, "settle": 0.2}
    ctx = RecordingContext(Synthetic, params)
    node = Synthetic()
    node.setup(ctx)
    times = []
    for _ in node.run(ctx):
        if len(ctx.out["market_data"]) > len(times):
            times.append(time.monotonic())
        if len(times) == 5:
            break
    assert times[3] - times[2] >= 0.19  # the history at once, then the settle, then the paced days
    assert times[2] - times[0] < 0.1 and times[4] - times[3] < 0.1


def test_synthetic_history_changes_when_days_go_out_not_what_they_hold():
    from dmnflow.testing import run_node
    from nodes.market import Synthetic

    base = {"symbols": 3, "days": 30, "mode": "panel", "seed": 3}
    plain = run_node(Synthetic, params=base)["market_data"]
    warm = run_node(Synthetic, params={**base, "history": 10, "rate": 1000})["market_data"]
    assert len(warm) == 30 and [p["close"] for p in warm] == [p["close"] for p in plain]

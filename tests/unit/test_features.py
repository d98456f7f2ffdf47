"""DMN features: the streaming engine against the pandas reference (1e-9), and the DMNFeatures node.

Tolerance: |stream - reference| <= 1e-9 * max(1, |reference|), i.e. absolute for values up
to 1 in magnitude and relative above; NaN (undefined) must be NaN in both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from dmnflow.node import Context, Tensor
from dmnflow.testing import run_node
from nodes.features import FEATURE_NAMES, CrossSection, DMNFeatures, DMNFeatureState
from nodes.features.engine import ewm_alpha_halflife, ewm_alpha_span
from nodes.market.common import DAY_NS, day_ns, make_bar, make_panel, make_tick
from nodes.market.synthetic import Synthetic, synthetic_closes

pd = pytest.importorskip("pandas")
ref = pytest.importorskip("nodes.features.reference")

TOL = 1e-9


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, what
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    where = np.argwhere(nan_got != nan_want)
    assert where.size == 0, f"{what}: NaN differs first at {where[0].tolist()}: {got[tuple(where[0])]} vs " \
                            f"{want[tuple(where[0])]}"
    both = ~nan_want
    err = np.abs(got[both] - want[both]) / np.maximum(1.0, np.abs(want[both]))
    assert err.size == 0 or err.max() <= TOL, f"{what}: max error {err.max():.3g}"


def _messy_closes() -> Any:
    """Six synthetic assets with holes, a long gap, a late start and very different price levels."""
    df = synthetic_closes(seed=11, symbols=6, days=1300)
    rng = np.random.default_rng(5)
    df = df.mask(rng.random(df.shape) < 0.04)  # random missing days
    df.iloc[400:460, 1] = np.nan  # a 60-day gap
    df.iloc[:250, 2] = np.nan  # starts trading late
    df.iloc[:, 3] *= 1000.0  # a high price level (equity index futures)
    df.iloc[:, 4] *= 0.01  # a low one (rates, FX)
    return df


def _stream(closes: Any) -> dict[str, np.ndarray]:
    """Feed a wide frame day by day (only the assets with a price that day) into the engine."""
    values = closes.to_numpy()
    shape = values.shape
    out = {"features": np.full((*shape, 8), np.nan), "sigma": np.full(shape, np.nan),
           "tsmom": np.full(shape, np.nan), "macd": np.full(shape, np.nan), "ret": np.full(shape, np.nan)}
    state = DMNFeatureState(shape[1])
    for i in range(shape[0]):
        idx = np.flatnonzero(np.isfinite(values[i]))
        rows = state.update(None if idx.size == shape[1] else idx, values[i, idx])
        for name in ("features", "sigma", "tsmom", "macd", "ret"):
            out[name][i, idx] = getattr(rows, name)
    return out


def test_streaming_matches_the_pandas_reference_to_1e9() -> None:
    closes = _messy_closes()
    got = _stream(closes)
    want = ref.feature_tensor(closes)
    for k, name in enumerate(FEATURE_NAMES):
        _assert_close(got["features"][:, :, k], want[:, :, k], name)
    _assert_close(got["sigma"], ref.ewm_vol(closes, annualise=True).to_numpy(), "sigma")
    _assert_close(got["tsmom"], ref.tsmom_signal(closes).to_numpy(), "tsmom")
    _assert_close(got["macd"], ref.macd_signal(closes).to_numpy(), "macd")
    _assert_close(got["ret"], ref.daily_returns(closes).to_numpy(), "ret")
    assert np.isfinite(want).all(axis=2).sum() > 4000  # the comparison covers plenty of defined rows


def _stream_all(values: np.ndarray) -> dict[str, np.ndarray]:
    """Every asset every day (the node's steady state: the engine's view path, no index arrays)."""
    out = {"features": np.full((*values.shape, 8), np.nan), "sigma": np.full(values.shape, np.nan),
           "macd": np.full(values.shape, np.nan)}
    state = DMNFeatureState(values.shape[1])
    for i in range(values.shape[0]):
        rows = state.update(None, values[i])
        out["features"][i], out["sigma"][i], out["macd"][i] = rows.features, rows.sigma, rows.macd
    return out


def _assert_matches_reference(closes: Any, got: dict[str, np.ndarray]) -> None:
    want = ref.feature_tensor(closes)
    for k, name in enumerate(FEATURE_NAMES):
        _assert_close(got["features"][:, :, k], want[:, :, k], name)
    _assert_close(got["sigma"], ref.ewm_vol(closes, annualise=True).to_numpy(), "sigma")
    _assert_close(got["macd"], ref.macd_signal(closes).to_numpy(), "macd")


def test_a_long_series_every_asset_every_day_matches_the_reference_to_1e9() -> None:
    """12 assets over 4,000 days (16 exact recomputations of every 252-day window, so drift of
    the running sums would show), through the in-place path a full cross-section takes."""
    closes = synthetic_closes(seed=21, symbols=12, days=4000)
    closes.iloc[:, 7] *= 1e-3  # a low price level
    closes.iloc[1500:1600, 3] = closes.iloc[1500, 3]  # a flat stretch: std 0, MACD undefined
    got = _stream_all(closes.to_numpy())
    _assert_matches_reference(closes, got)
    assert np.isfinite(got["features"]).all(axis=2).sum() > 40_000


def _trendfollowing_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("trendfollowing")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _trendfollowing_installed(), reason="the trendfollowing package is not installed "
                                                            "(pip install --no-deps trendfollowing)")
def test_real_futures_match_the_reference_to_1e9() -> None:
    """Nine trendfollowing futures, 1990-2015 (holidays, gaps, levels from FX to indices)."""
    from nodes.market import load_trendfollowing

    closes = load_trendfollowing("1990-01-01", "2015-12-31").iloc[:, ::10]
    _assert_matches_reference(closes, _stream(closes))


def test_warm_up_follows_the_definitions() -> None:
    closes = synthetic_closes(seed=1, symbols=1, days=400)
    got = _stream(closes)
    first = [int(np.flatnonzero(np.isfinite(got["features"][:, 0, k]))[0]) for k in range(8)]
    # ret_k needs p_{t-k} and sigma (60 returns: index 60); MACD needs 63 prices then 252 q values
    assert first == [60, 60, 63, 126, 252, 313, 313, 313]
    assert int(np.flatnonzero(np.isfinite(got["sigma"][:, 0]))[0]) == 60
    assert int(np.flatnonzero(np.isfinite(got["tsmom"][:, 0]))[0]) == 252


def test_conventions() -> None:
    assert ewm_alpha_span(60) == pytest.approx(2 / 61, abs=1e-16)
    for n in (8, 24, 16, 48, 32, 96):
        assert ewm_alpha_halflife(n) == pytest.approx(1 / n, abs=1e-15)
    p = np.linspace(100.0, 120.0, 40)
    state = DMNFeatureState(1)
    for x in p:
        rows = state.update(None, np.array([x]))
    # the EWMA state is the bias-corrected (adjust=True) mean, as pandas
    s = pd.Series(p)
    assert state.ewma.mean[0, 0] == pytest.approx(s.ewm(alpha=1 / 8).mean().iloc[-1], rel=1e-12)
    assert rows.ret[0] == pytest.approx(p[-1] / p[-2] - 1, rel=1e-12)


def test_a_flat_price_window_leaves_macd_undefined_in_both() -> None:
    values = np.concatenate([np.linspace(50, 80, 400), np.full(80, 80.0), np.linspace(80, 70, 120)])
    closes = pd.DataFrame({"A": values})
    got = _stream(closes)
    want = ref.feature_tensor(closes)
    _assert_close(got["features"][:, :, 5:], want[:, :, 5:], "macd over a flat stretch")
    assert np.isnan(want[470:480, 0, 5]).all()  # std_63 of a flat window is 0: undefined


def test_assets_added_while_running_give_the_same_features() -> None:
    closes = synthetic_closes(seed=4, symbols=5, days=500)
    values = closes.to_numpy()
    grown = DMNFeatureState(0, capacity=1)
    fixed = DMNFeatureState(5)
    for i in range(values.shape[0]):
        if i in (0, 10, 200):  # 1, then 3, then 5 assets
            grown.add_assets({0: 1, 10: 2, 200: 2}[i])
        n = grown.n_assets
        a = grown.update(None, values[i, :n])
        b = fixed.update(np.arange(n), values[i, :n])
        np.testing.assert_array_equal(a.features, b.features)
    assert grown.capacity >= 5


# -- the node -----------------------------------------------------------------------------


class Recorder:
    """A context whose emits are kept with their event time and attrs (run_node keeps values only)."""

    def __init__(self, cls: type, params: dict[str, Any] | None = None) -> None:
        self.sent: list[tuple[str, Any, Any, Any]] = []
        model = cls.Params.model_validate(params or {})
        self.ctx = Context(cls.__name__, model, self._emit)
        self.node = cls()
        self.node.setup(self.ctx)

    def _emit(self, port: str, value: Any, topic: Any, event_time: Any, attrs: Any = None, *rest: Any) -> None:
        self.sent.append((port, value, event_time, attrs))

    def feed(self, records: list[Any]) -> None:
        for record in records:
            self.node.on_market_data(record, self.ctx)

    def end(self) -> None:
        self.node.teardown(self.ctx)

    def on(self, port: str) -> list[tuple[Any, Any, Any]]:
        return [(v, t, a) for p, v, t, a in self.sent if p == port]


def test_ports_follow_the_window_params() -> None:
    ports = DMNFeatures.ports(DMNFeatures.Params())
    assert ports.outputs["windows"].type == Tensor("float32", shape=(None, 63, 8))
    assert ports.outputs["long_windows"].type == Tensor("float32", shape=(None, 252, 8))
    assert ports.outputs["signals"].type is dict
    short = DMNFeatures.ports(DMNFeatures.Params(window=21, long_window=0))
    assert set(short.outputs) == {"windows", "signals"}
    assert short.outputs["windows"].type.shape == (None, 21, 8)


def test_node_windows_are_the_reference_features_in_bars_panel_and_ticks_modes() -> None:
    params = {"seed": 3, "symbols": 4, "days": 360, "ticks_per_day": 3}
    closes = synthetic_closes(seed=3, symbols=4, days=360)
    want = ref.feature_tensor(closes).astype(np.float32)  # (days, 4, 8)
    results = {}
    for mode in ("bars", "panel", "ticks"):
        records = run_node(Synthetic, params={**params, "mode": mode})["market_data"]
        rec = Recorder(DMNFeatures, {"window": 10, "long_window": 20})
        rec.feed(records)
        rec.end()
        results[mode] = rec
    base = results["bars"].on("windows")
    assert len(base) == 360 - 313 - 10 + 1  # features defined from day 313, then 10 days of window
    for mode in ("panel", "ticks"):
        other = results[mode].on("windows")
        assert len(other) == len(base)
        for (a, ta, aa), (b, tb, ab) in zip(base, other, strict=True):
            assert ta == tb and aa == ab
            np.testing.assert_array_equal(a, b)
    days = closes.index.to_numpy().astype("datetime64[ns]").astype(np.int64)
    for tensor, t, attrs in base:
        i = int(np.searchsorted(days, t))
        assert attrs == {"symbols": ["SYN00", "SYN01", "SYN02", "SYN03"]}
        assert tensor.dtype == np.float32 and tensor.shape == (4, 10, 8)
        np.testing.assert_allclose(tensor, want[i - 9:i + 1].transpose(1, 0, 2), rtol=1e-6, atol=1e-6)
    longs = results["bars"].on("long_windows")
    assert len(longs) == 360 - 313 - 20 + 1 and longs[-1][0].shape == (4, 20, 8)
    signals = results["bars"].on("signals")
    assert len(signals) == 360 and [s[1] for s in signals] == [s[0]["t"] for s in signals]
    last = signals[-1][0]
    assert last["sigma"] == pytest.approx(ref.ewm_vol(closes, annualise=True).iloc[-1].tolist(), rel=1e-9)
    assert last["tsmom"] == ref.tsmom_signal(closes).iloc[-1].tolist()
    assert last["ready"] == [True] * 4 and len(last["features"]) == 4 and len(last["features"][0]) == 8
    # ready_long marks the long windows' symbols, as ready marks the windows' ones
    assert sum(s[0]["ready_long"] == [True] * 4 for s in signals) == len(longs)
    assert all(not any(s[0]["ready_long"]) for s in signals[:-len(longs)])


def _bar(symbol: str, day: int, close: float) -> dict[str, Any]:
    return make_bar(symbol, day * DAY_NS, close, close, close, close, 1.0)


def test_a_day_goes_out_when_every_known_symbol_is_in_or_a_later_day_starts() -> None:
    cs = CrossSection(window=2)
    assert cs.add(_bar("A", 1, 10.0)) == [] and cs.add(_bar("B", 1, 20.0)) == []  # first day: who knows
    out = cs.add(_bar("A", 2, 11.0))  # a later day: day 1 goes
    assert [(d.t, d.idx.tolist()) for d in out] == [(DAY_NS, [0, 1])]
    out = cs.add(_bar("B", 2, 21.0))  # every known symbol is in: day 2 goes at once
    assert [d.t for d in out] == [2 * DAY_NS]
    assert cs.add(_bar("C", 3, 5.0)) == []  # a new symbol does not complete day 3 ...
    assert cs.add(_bar("A", 3, 12.0)) == []
    out = cs.add(_bar("B", 3, 22.0))  # ... the known ones do
    assert [(d.t, sorted(d.signals()["symbols"])) for d in out] == [(3 * DAY_NS, ["A", "B", "C"])]
    assert cs.add(_bar("A", 5, 12.5)) == []
    out = cs.add(_bar("B", 6, 23.0))  # day 5 completes by a later bar; B never sent day 5
    assert [(d.t, d.signals()["symbols"]) for d in out] == [(5 * DAY_NS, ["A"])]
    assert cs.add(_bar("C", 5, 5.5)) == []  # C's day-5 bar comes after day 5 went out: late
    assert cs.counts["late"] == 1
    assert [d.t for d in cs.finish()] == [6 * DAY_NS]


def test_a_universe_completes_the_first_day_and_counts_strangers() -> None:
    rec = Recorder(DMNFeatures, {"universe": ["A", "B"], "window": 1, "long_window": 0})
    rec.feed([_bar("A", 1, 10.0), _bar("X", 1, 3.0), _bar("B", 1, 20.0)])
    assert [s[1] for s in rec.on("signals")] == [DAY_NS]
    rec.feed([make_panel(2 * DAY_NS, ["X", "B", "A"], [3.0, 21.0, 11.0])])
    assert rec.on("signals")[-1][0]["symbols"] == ["A", "B"]  # universe order; X is not one of them
    rec.feed([_bar("B", 3, 22.0), _bar("A", 3, 12.0)])  # the universe completes day 3
    assert [s[1] for s in rec.on("signals")] == [DAY_NS, 2 * DAY_NS, 3 * DAY_NS]
    assert rec.node.summary()["unknown_symbol"] == 2 and rec.node.summary()["symbols"] == 2


def test_ticks_are_aggregated_into_daily_bars() -> None:
    day = 10 * DAY_NS
    ticks = [make_tick("A", day + 3600 * 10**9 * (k + 1), price, 5.0) for k, price in enumerate([100.0, 102.0, 99.0])]
    ticks.append(make_tick("A", day + 3600 * 10**9 * 5, 101.0, 5.0))
    later = make_tick("A", day + DAY_NS + 1, 50.0, 1.0)
    cs = CrossSection(window=1, universe=["A"])
    assert [cs.add(tick) for tick in ticks] == [[], [], [], []]
    out = cs.add(later)  # the next day's first tick closes day 10, and A is the whole universe
    assert [(d.t, d.prices.tolist()) for d in out] == [(day, [101.0])]
    assert [(d.t, d.prices.tolist()) for d in cs.finish()] == [(day + DAY_NS, [50.0])]
    cs = CrossSection(window=1)  # no universe: the first day waits for a later day (here: the end)
    assert [cs.add(tick) for tick in [*ticks, later]] == [[]] * 5
    assert [(d.t, d.prices.tolist()) for d in cs.finish()] == [(day, [101.0]), (day + DAY_NS, [50.0])]
    ignoring = CrossSection(window=1, aggregate_intraday=False)
    assert ignoring.add(ticks[0]) == [] and ignoring.finish() == [] and ignoring.counts["ignored_intraday"] == 1


def test_bad_market_data_is_skipped_and_counted_never_raised() -> None:
    rec = Recorder(DMNFeatures, {"window": 1, "long_window": 0})
    good = [_bar("A", d, 10.0 + d) for d in range(1, 5)]
    bad = [
        _bar("A", 5, float("nan")), _bar("A", 5, -1.0), _bar("A", 5, 0.0),  # bad prices
        _bar("A", 3, 11.0),  # out of order
        _bar("A", 4, 14.0),  # duplicate
        {"symbol": "A", "t": "yesterday", "close": 1.0},  # malformed time
        "not a record", None, {"t": 1},
        make_panel(5 * DAY_NS, ["A", "B"], [1.0]),  # mismatched lengths
        {"t": 6 * DAY_NS, "symbols": "AB", "close": [1.0, 2.0]},
    ]
    rec.feed(good + bad + [_bar("A", 5, 15.0)])
    rec.end()
    summary = rec.node.summary()
    assert {k: summary[k] for k in ("accepted", "bad_price", "out_of_order", "duplicate", "malformed")} == \
        {"accepted": 5, "bad_price": 3, "out_of_order": 1, "duplicate": 1, "malformed": 6}
    assert [s[0]["close"] for s in rec.on("signals")] == [[11.0], [12.0], [13.0], [14.0], [15.0]]
    assert json_numbers(summary)


def json_numbers(summary: dict[str, Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in summary.values())


def test_panels_with_missing_and_bad_symbols() -> None:
    rec = Recorder(DMNFeatures, {"window": 1, "long_window": 0})
    t = day_ns("2020-01-06")
    rec.feed([make_panel(t, ["A", "B", "C"], [10.0, float("nan"), -3.0]),
              make_panel(t, ["A", "B", "C"], [10.0, 5.0, 3.0]),  # A again: duplicate; B, C fine
              make_panel(t + DAY_NS, ["A", "B", "C"], [11.0, 6.0, 4.0])])
    signals = [s[0] for s in rec.on("signals")]
    assert [s["symbols"] for s in signals] == [["A"], ["A", "B", "C"]]  # a day goes out once
    summary = rec.node.summary()
    assert (summary["bad_price"], summary["duplicate"], summary["late"]) == (1, 1, 2)


def test_the_flush_timer_completes_a_waiting_day_and_empty_windows_are_optional() -> None:
    rec = Recorder(DMNFeatures, {"window": 1, "long_window": 0, "max_wait_s": 5.0, "emit_empty": True})
    rec.feed([_bar("A", 1, 10.0)])
    rec.node.on_flush(rec.ctx)  # has not waited 5 s yet
    assert rec.on("signals") == []
    rec.node.cs.pend_since -= 10.0  # as if 10 s had passed
    rec.node.on_flush(rec.ctx)
    assert [s[1] for s in rec.on("signals")] == [DAY_NS]
    windows = rec.on("windows")  # emit_empty: a (0, 1, 8) tensor while nothing is warmed up
    assert len(windows) == 1 and windows[0][0].shape == (0, 1, 8) and windows[0][2] == {"symbols": []}
    quiet = Recorder(DMNFeatures, {"window": 1, "long_window": 0})
    quiet.feed([_bar("A", 1, 10.0), _bar("B", 1, 10.0), _bar("A", 2, 11.0)])  # day 2 waits for B
    quiet.node.cs.pend_since -= 1e6
    quiet.node.on_flush(quiet.ctx)  # max_wait_s 0: the timer never completes a day
    assert len(quiet.on("signals")) == 1 and quiet.on("windows") == []

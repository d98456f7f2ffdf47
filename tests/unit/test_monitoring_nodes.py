"""Performance, Health and Alerts nodes: figures, latency, the PNG, stale feeds, rules."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from dmnflow.testing import RecordingContext, run_node
from nodes.monitoring import Alerts, Health, Performance
from nodes.monitoring import health as health_module
from nodes.monitoring import metrics as m
from nodes.monitoring import performance as perf_module


def make(cls: type, params: dict[str, Any] | None = None) -> tuple[Any, RecordingContext]:
    node, ctx = cls(), RecordingContext(cls, params)
    node.setup(ctx)
    return node, ctx


def account(t: int, equity: float, traded: float, capital: float = 1000.0) -> dict[str, Any]:
    return {"t": t, "equity": equity, "cash": equity, "positions": {}, "gross": 0.0, "pnl": equity - capital,
            "traded": traded}


DAY = 86_400 * 10**9
T0 = 1_500_000_000 * 10**9


# -- Performance ---------------------------------------------------------------------------------

def test_performance_summary_matches_metrics(tmp_path: Path) -> None:
    equity = [995.0, 1010.0, 990.0, 1030.0, 1020.0]
    traded = [500.0, 700.0, 900.0, 1500.0, 1600.0]  # cumulative
    png = tmp_path / "out" / "equity.png"
    node, ctx = make(Performance, {"equity_png": str(png)})
    for i, (e, tr) in enumerate(zip(equity, traded, strict=True)):
        node.on_account(account(T0 + i * DAY, e, tr), ctx)
    node.teardown(ctx)
    s = node.summary()
    curve = [1000.0, *equity]  # the starting capital comes first
    ref = m.performance(curve, [0.0, 500.0, 200.0, 200.0, 600.0, 100.0])
    for key, value in ref.items():
        assert s[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert s["periods"] == 5 and s["accounts"] == 5
    assert s["pnl"] == pytest.approx(20.0) and s["max_drawdown"] == pytest.approx(20 / 1010)
    json.dumps(s, allow_nan=False)  # strict JSON: undefined figures are None
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the streaming figures agree with the batch ones
    last = ctx.out["metrics"][-1]
    for key in ("sharpe", "sortino", "ann_vol", "max_drawdown", "calmar", "hit_rate", "turnover", "pnl"):
        assert last[key] == pytest.approx(s[key], rel=1e-9), key
    assert last["t"] == T0 + 4 * DAY and len(ctx.out["metrics"]) == 5


def test_performance_draws_its_png_as_it_goes_so_a_kill_keeps_the_curve(tmp_path: Path, monkeypatch) -> None:
    drawn: list[int] = []
    monkeypatch.setattr(perf_module, "write_equity_png", lambda path, t, equity, title: drawn.append(len(equity)))
    clock = [0.0]
    monkeypatch.setattr(perf_module.time, "monotonic", lambda: clock[0])
    node, ctx = make(Performance, {"equity_png": str(tmp_path / "equity.png"), "equity_png_every_s": 10})
    for i in range(5):  # an Account every 4 "seconds": drawn at the first one 10 s after the last drawing
        clock[0] = 4.0 * (i + 1)
        node.on_account(account(T0 + i * DAY, 1000.0 + i, 0.0), ctx)
    assert drawn == [4]  # at t=12 s: the capital and three Accounts (no teardown: as after a kill -9)
    node.teardown(ctx)
    assert drawn == [4, 6]
    off, ctx = make(Performance, {"equity_png": str(tmp_path / "e2.png"), "equity_png_every_s": 0})
    for i in range(3):
        clock[0] = 100.0 * (i + 1)
        off.on_account(account(T0 + i * DAY, 1000.0 + i, 0.0), ctx)
    assert drawn == [4, 6]  # 0: only at the end


def test_performance_writes_its_png_whole(tmp_path: Path) -> None:
    png = tmp_path / "equity.png"
    perf_module.write_equity_png(png, [1, 2, 3], [1.0, 2.0, 1.5], "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["equity.png"]


def test_performance_declares_its_summary_keys() -> None:
    """`summary_keys` is what a tune file's objectives are checked against: exactly the summary's keys."""
    node, ctx = make(Performance)
    for i, e in enumerate([1000.0, 1010.0, 1005.0]):
        node.on_account(account(T0 + i * DAY, e, 0.0), ctx)
    assert list(node.summary()) == list(Performance.summary_keys)


def test_performance_keeps_its_figures_at_exact_steps_the_last_once_the_run_ends() -> None:
    """`steps_every`: each step's figures are those of the run cut at that step (a tuner's
    intermediate values); a step's last day is kept only once final (a later Account for the
    same day still replaces it), the run's last step at teardown."""
    assert Performance.summary_steps == {"periods": "steps_every"}
    equity = [1000.0, 1010.0, 1005.0, 1020.0, 990.0, 1000.0]
    node, ctx = make(Performance, {"steps_every": 2})
    cut, _ = make(Performance)
    for i, e in enumerate(equity):
        node.on_account(account(T0 + i * DAY, e, 0.0), ctx)
        if i < 4:
            cut.on_account(account(T0 + i * DAY, e, 0.0), ctx)
    assert [p for p, _ in node.summary()["steps"]] == [2, 4]  # periods 6 not final yet
    node.on_account(account(T0 + 5 * DAY, 1001.0, 0.0), ctx)  # replaces day 5
    node.teardown(ctx)
    steps = node.summary()["steps"]
    assert [p for p, _ in steps] == [2, 4, 6]
    assert steps[1][1]["sharpe"] == cut.summary()["sharpe"]  # exactly: the run cut at 4 periods
    assert steps[2][1]["equity"] == 1001.0 and "periods" not in steps[0][1]
    assert "steps" not in make(Performance)[0].summary()  # off by default


def test_performance_same_time_replaces_and_bad_input_counts() -> None:
    node, ctx = make(Performance, {"emit_every": 2})
    node.on_account({"t": 1, "equity": 1000.0, "traded": 0.0}, ctx)  # without pnl: no starting-capital point
    node.on_account(account(2, 1100.0, 10.0), ctx)
    node.on_account(account(2, 1050.0, 20.0), ctx)  # a later account for t=2 replaces it
    node.on_account(account(1, 5.0, 0.0), ctx)  # out of order
    node.on_account({"t": 3, "equity": math.nan}, ctx)
    node.on_account({"equity": 1.0}, ctx)
    node.on_account("junk", ctx)  # type: ignore[arg-type]
    node.on_fills({"t": 2, "fills": [{"qty": -2.0, "price": 5.0}, {"qty": "x"}]}, ctx)
    node.on_fills("junk", ctx)  # type: ignore[arg-type]
    s = node.summary()
    assert s["periods"] == 1 and s["total_return"] == pytest.approx(0.05) and s["replaced"] == 1
    assert (s["out_of_order"], s["bad_accounts"], s["fills"], s["bad_fills"]) == (1, 3, 1, 2)
    assert s["turnover"] == pytest.approx(20.0 / 1000.0 * 252)
    (only,) = ctx.out["metrics"]  # every second accepted Account: the second is t=2 before its replacement
    assert only["t"] == 2 and only["equity"] == 1100.0 and only["return"] == pytest.approx(0.1)


def test_performance_turnover_from_fills_without_traded() -> None:
    node, ctx = make(Performance)
    node.on_account({"t": 1, "equity": 1000.0, "pnl": 0.0}, ctx)  # two points: the capital, then t=1
    node.on_fills({"t": 2, "fills": [{"qty": 3.0, "price": 10.0}]}, ctx)
    node.on_account({"t": 2, "equity": 1000.0, "pnl": 0.0}, ctx)
    s = node.summary()
    assert s["periods"] == 2 and s["turnover"] == pytest.approx((0.0 + 30.0 / 1000.0) / 2 * 252)


def test_latency_percentiles(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 10**18
    monkeypatch.setattr(perf_module.time, "time_ns", lambda: now)
    node, ctx = make(Performance, {"latency_in_metrics": True, "latency_window": 3})
    for i, lat_us in enumerate([100, 200, 300, 400]):  # the window keeps the last three
        ctx.message.origin_ns = now - lat_us * 1000
        node.on_fills({"t": i, "fills": []}, ctx)
        node.on_account(account(i, 1000.0, 0.0), ctx)
    s = node.summary()
    assert s["tick_to_trade_p50_us"] == 300.0 and s["tick_to_trade_p99_us"] == pytest.approx(398.0)
    assert s["tick_to_account_p50_us"] == 300.0 and s["latency_samples"] == 3
    assert ctx.out["metrics"][-1]["tick_to_trade_p50_us"] == 300.0
    ctx.message.origin_ns = 0  # no origin: not a sample
    node.on_fills({"t": 9, "fills": []}, ctx)
    assert node.summary()["latency_samples"] == 3


def test_latency_skip_leaves_the_first_days_untimed(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 10**18
    monkeypatch.setattr(perf_module.time, "time_ns", lambda: now)
    node, ctx = make(Performance, {"latency_skip": 2})
    for i, lat_us in enumerate([90_000, 80_000, 300, 500]):  # a warm-up backlog, then the live path
        ctx.message.origin_ns = now - lat_us * 1000
        node.on_fills({"t": i, "fills": []}, ctx)
        node.on_account(account(i, 1000.0, 0.0), ctx)
    s = node.summary()
    assert s["latency_samples"] == 2 and s["tick_to_trade_p50_us"] == 400.0 and s["tick_to_account_p99_us"] < 500.1
    assert s["accounts"] == 4  # the figures count every day; only the clock skips them


def test_performance_with_run_node_and_no_data() -> None:
    out = run_node(Performance, inputs=[])
    assert out["metrics"] == []
    node, ctx = make(Performance)
    s = node.summary()
    assert s["tick_to_trade_p50_us"] is None and s["accounts"] == 0
    node.teardown(ctx)


# -- Health --------------------------------------------------------------------------------------

def test_health_rates_and_stale_feeds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: clock[0])
    node, ctx = make(Health, {"stale_after_s": 2.0, "expected": ["market_data.ES"]})
    for _ in range(4):
        ctx.message.topic, ctx.message.event_time = "market_data.NQ", 7
        node.on_feeds({}, ctx)
    ctx.message.topic, ctx.message.port = "", "feeds"
    node.on_feeds({}, ctx)
    clock[0] += 1.0
    node.on_check(ctx)
    h = ctx.out["health"][-1]
    assert h["ok"] is True and h["stale"] == [] and h["stale_count"] == 0
    assert h["feeds"]["market_data.NQ"] == {"age_s": 1.0, "rate_hz": 4.0, "count": 4, "stale": False,
                                            "event_time": 7}
    assert h["feeds"]["market_data.ES"]["age_s"] is None and h["feeds"]["feeds"]["count"] == 1
    clock[0] += 1.5  # ES never came (2.5 s since start), NQ silent for 2.5 s
    node.on_check(ctx)
    h = ctx.out["health"][-1]
    assert h["ok"] is False and h["stale"] == ["feeds", "market_data.ES", "market_data.NQ"]
    assert h["feeds"]["market_data.NQ"]["rate_hz"] == 0.0
    ctx.message.topic = "market_data.NQ"
    node.on_feeds({}, ctx)
    node.on_check(ctx)
    assert ctx.out["health"][-1]["stale"] == ["feeds", "market_data.ES"]
    s = node.summary()
    assert s == {"checks": 3, "messages": 6, "feeds": 3, "stale_now": 2, "stale_events": 3}


def test_health_emits_only_changes_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: clock[0])
    node, ctx = make(Health, {"emit": "changes", "stale_after_s": 1.0, "expected": ["x"]})
    node.on_check(ctx)  # the first report always goes out
    node.on_check(ctx)
    clock[0] += 5
    node.on_check(ctx)  # x went stale
    node.on_check(ctx)
    assert [h["stale"] for h in ctx.out["health"]] == [[], ["x"]]


# -- Alerts --------------------------------------------------------------------------------------

RULES = [{"metric": "drawdown", "op": ">", "value": 0.2, "severity": "critical"},
         {"metric": "feeds.market.stale", "op": "==", "value": 1, "severity": "warning", "name": "market stale",
          "message": "market data stopped"},
         {"metric": "sharpe", "op": "<", "value": 0.0, "severity": "info"}]


def test_alerts_fire_and_resolve_on_edges() -> None:
    seq = [{"t": 1, "drawdown": 0.1}, {"t": 2, "drawdown": 0.25}, {"t": 3, "drawdown": 0.3},
           {"t": 4, "drawdown": 0.1, "sharpe": None}, {"t": 5, "feeds": {"market": {"stale": True}}},
           {"t": 6, "feeds": {"market": {"stale": False}}, "sharpe": -1}]
    out = run_node(Alerts, params={"rules": RULES}, inputs=[("metrics", x) for x in seq])
    got = [(a["t"], a["rule"], a["state"], a["severity"]) for a in out["alerts"]]
    assert got == [(2, "drawdown > 0.2", "firing", "critical"), (4, "drawdown > 0.2", "resolved", "critical"),
                   (5, "market stale", "firing", "warning"), (6, "market stale", "resolved", "warning"),
                   (6, "sharpe < 0", "firing", "info")]
    first = out["alerts"][0]
    assert first["value"] == 0.25 and first["threshold"] == 0.2 and first["op"] == ">"
    assert out["alerts"][2]["message"] == "market data stopped"


def test_alerts_repeat_counts_and_bad_input() -> None:
    node, ctx = make(Alerts, {"rules": RULES[:1], "repeat_every": 2, "notify_resolved": False})
    for i, dd in enumerate([0.3, 0.3, 0.3, 0.3, 0.0, "x", math.nan]):
        node.on_metrics({"t": i, "drawdown": dd}, ctx)
    node.on_metrics("junk", ctx)  # type: ignore[arg-type]
    assert [a["t"] for a in ctx.out["alerts"]] == [0, 2]  # fired, repeated after 2 more, no resolved message
    s = node.summary()
    assert (s["firing"], s["resolved"], s["critical"], s["non_numeric"], s["bad_messages"]) == (2, 0, 2, 2, 1)
    assert s["firing_now"] == 0 and s["rules"] == 1


def test_alert_defaults_and_rule_validation() -> None:
    p = Alerts.Params()
    assert [(r.metric, r.op, r.value, r.severity) for r in p.rules] == [("drawdown", ">", 0.2, "critical"),
                                                                        ("stale_count", ">", 0.0, "warning")]
    with pytest.raises(ValueError):
        Alerts.Params(rules=[{"metric": "x", "op": "=>", "value": 1}])
    with pytest.raises(ValueError):
        Alerts.Params(rules=[{"metric": "x", "severity": "panic"}])
    with pytest.raises(ValueError):
        Alerts.Params(rules=[{"metric": "x", "treshold": 1}])


def test_journal_writes_every_entry_and_counts_firing_alerts(tmp_path):
    from dmnflow.testing import run_node
    from nodes.monitoring import Journal

    node = Journal()
    alerts = [{"rule": "dd", "state": "firing", "severity": "critical", "message": "drawdown 0.3 > 0.2"},
              {"rule": "dd", "state": "resolved", "severity": "critical", "message": "ok"},
              {"rule": "sharpe", "state": "firing", "severity": "warning", "message": "sharpe < 0"}]
    run_node(Journal, params={"path": str(tmp_path / "j.jsonl")}, node=node,
             inputs=[("entries", a) for a in alerts] + [("entries", {"ok": True, "stale": []})])
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert [line["value"] for line in lines] == [*alerts, {"ok": True, "stale": []}]
    assert node.summary() == {"messages": 4, "alerts_firing": 2, "alerts_critical": 1}


def test_performance_measures_from_start_with_the_day_before_as_the_base():
    from nodes.monitoring import Performance

    day = 86_400 * 10**9
    t0 = 10_957 * day  # 2000-01-01
    accounts = [{"t": t0 + i * day, "equity": e, "pnl": e - 100.0, "traded": 0.0}
                for i, e in enumerate([100.0, 120.0, 90.0, 99.0, 108.9])]
    full, late = Performance(), Performance()
    run_node(Performance, node=full, inputs=[("account", a) for a in accounts[2:]])
    run_node(Performance, node=late, params={"start": "2000-01-04"}, inputs=[("account", a) for a in accounts])
    got, want = late.summary(), full.summary()
    assert late.counts["before_start"] == 3 and got["periods"] == 2
    assert got["total_return"] == pytest.approx(108.9 / 90.0 - 1)  # the base is 2000-01-03's equity
    assert want["total_return"] == pytest.approx(108.9 / 100.0 - 1)  # without start: the starting capital


def test_performance_end_and_named_windows_measure_their_own_days():
    from pydantic import ValidationError

    from nodes.monitoring import Performance

    day = 86_400 * 10**9
    t0 = 10_957 * day  # 2000-01-01
    equity = [100.0, 120.0, 90.0, 99.0, 108.9, 98.01]
    accounts = [{"t": t0 + i * day, "equity": e, "pnl": e - 100.0, "traded": 10.0 * i} for i, e in enumerate(equity)]
    node = Performance()
    windows = {"in_sample": {"end": "2000-01-03"}, "held_out": {"start": "2000-01-04", "end": "2000-01-05"},
               "empty": {"start": "2001-01-01"}}
    run_node(Performance, node=node, params={"start": "2000-01-02", "end": "2000-01-04", "windows": windows},
             inputs=[("account", a) for a in accounts])
    got = node.summary()
    assert node.counts["before_start"] == 1 and node.counts["after_end"] == 2 and got["periods"] == 3
    assert got["total_return"] == pytest.approx(99.0 / 100.0 - 1)  # 2000-01-02 .. 04 on the base of 01-01
    assert got["sharpe"] == pytest.approx(m.sharpe(m.returns_from_equity([100.0, 120.0, 90.0, 99.0])))
    # no Account before it: the starting capital is the base, so the first day (flat) counts
    assert got["in_sample.periods"] == 3 and got["in_sample.total_return"] == pytest.approx(90.0 / 100.0 - 1)
    assert got["held_out.periods"] == 2 and got["held_out.total_return"] == pytest.approx(108.9 / 90.0 - 1)
    assert got["held_out.turnover"] == pytest.approx((10.0 / 90.0 + 10.0 / 99.0) / 2 * 252)
    assert got["empty.periods"] == 0 and got["empty.sharpe"] is None
    json.dumps(got, allow_nan=False)  # strict JSON, windows included
    with pytest.raises(ValidationError, match="identifiers"):
        Performance.Params.model_validate({"windows": {"held.out": {}}})


def test_performance_rejects_a_window_that_ends_before_it_starts():
    from pydantic import ValidationError

    from nodes.monitoring import Performance

    with pytest.raises(ValidationError, match="windows.x.start 2001-01-01 is after windows.x.end 2000-01-01"):
        Performance.Params.model_validate({"windows": {"x": {"start": "2001-01-01", "end": "2000-01-01"}}})
    with pytest.raises(ValidationError, match="not a date"):
        Performance.Params.model_validate({"end": "2015-02-30"})


def test_health_counts_a_feed_never_seen_from_the_graphs_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """setup runs once this process is up; the graph starts when every process is (models loaded):
    a slow start-up is no stale feed."""
    clock = [0.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: clock[0])
    node, ctx = make(Health, {"stale_after_s": 10.0, "expected": ["signals", "account"]})
    clock[0] += 40.0  # the other processes start and load their models
    node.on_check(ctx)  # the first timer tick: the graph runs
    assert ctx.out["health"][-1]["stale"] == []
    clock[0] += 5.0
    ctx.message.topic = "signals"
    node.on_feeds({}, ctx)
    clock[0] += 6.0
    node.on_check(ctx)
    assert ctx.out["health"][-1]["stale"] == ["account"]  # 11 s since the start, never seen
    assert node.summary()["stale_events"] == 1

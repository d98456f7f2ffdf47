"""dmnflow.observe without processes: budgets' windows, live rates, the terminal views."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

import dmnflow
from dmnflow.compiler.budgets import BudgetWatch
from dmnflow.observe.view import live_view, render_report, status_line
from dmnflow.plan import BudgetPlan
from dmnflow.runtime.live import LiveWindow
from dmnflow.runtime.observer import History, TapLeases
from dmnflow.runtime.report import EdgeReport, NodeReport, Report
from dmnflow.transport.stats import Histogram

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _hist(*latencies_us: float) -> Histogram:
    h = Histogram()
    for us in latencies_us:
        h.add(int(us * 1000))
    return h


def _report(latency: dict[int, Histogram], *, received: int = 0, status: str = "running") -> Report:
    nodes = {"market": NodeReport("market", messages_out=received, status=status, cpu_s=received / 1000,
                                  progress={"done": received, "total": 1000, "unit": "days"}),
             "features": NodeReport("features", messages_in=received, status=status,
                                    summary={"equity": 1_000_000.5, "sharpe": 1.25, "positions": {"ES": 3}})}
    edges = [EdgeReport(0, "market.market_data", "features.market_data", sent=received + 5, received=received)]
    return Report("dmn_trading", status, 0, 12.0, 0.5, nodes, edges, latency=latency)


def _plan_with(budget: BudgetPlan) -> dmnflow.Plan:
    plan = dmnflow.compile_graph("graphs/quickstart.yaml")
    return plan.model_copy(update={"budgets": [budget]})


def test_budget_windows_count_misses_and_raise_events_once_then_resolve() -> None:
    plan = _plan_with(BudgetPlan(name="counter.numbers -> scale.value", kind="edge", edges=[0], p50_s=50e-6,
                                 max_s=200e-6))
    watch = BudgetWatch(plan, window_s=1.0)
    cum = Histogram()
    events = []
    # two slow windows (p50 ~ 100us, one message past the max), then four fast ones
    for t, batch in enumerate([[100] * 9 + [300], [120] * 10] + [[20] * 10] * 4):
        cum.merge(_hist(*batch))
        events += watch.update(_report({0: Histogram(list(cum.counts))}), float(t + 1))
    row = watch.table()[0]
    assert row["windows"] == 6
    assert row["missed_windows"] == 2
    assert row["over_max"] == 1
    assert row["status"] == "missed"
    assert [e["state"] for e in events] == ["missed", "met"]  # one alert, resolved after RESOLVE_AFTER windows
    assert events[0]["quantile"] == "p50" and events[0]["limit_us"] == 50.0
    assert row["limits_us"] == {"p50": 50.0, "max": 200.0}


def test_a_budget_that_holds_is_met_and_raises_nothing() -> None:
    plan = _plan_with(BudgetPlan(name="b", kind="edge", edges=[0], p99_s=1e-3))
    watch = BudgetWatch(plan, window_s=1.0)
    cum = Histogram()
    for t in range(3):
        cum.merge(_hist(*[80] * 20))
        assert watch.update(_report({0: Histogram(list(cum.counts))}), float(t + 1)) == []
    assert watch.table()[0]["status"] == "met"


def test_path_budget_reads_the_end_nodes_e2e_histograms() -> None:
    plan = _plan_with(BudgetPlan(name="counter -> sink", kind="path", sources=["counter"], sinks=["sink"],
                                 p99_s=10e-6))
    watch = BudgetWatch(plan, window_s=0.0)
    report = _report({})
    report.e2e_latency = {("counter", "sink"): _hist(500, 600)}
    events = watch.update(report, 1.0)
    assert events and events[0]["budget"] == "counter -> sink"


def test_the_trading_graph_declares_budgets_any_machine_keeps_and_a_profile_with_the_seeds_table() -> None:
    plan = dmnflow.compile_graph("graphs/dmn_trading.yaml", models=False)
    budgets = {b.name: b for b in plan.budgets}
    data = budgets["market.market_data -> features.market_data"]
    assert (data.p50_s, data.max_s) == pytest.approx((25e-3, 1.0))  # a queue building up; a stall
    assert [b.p50_s for b in plan.budgets] == pytest.approx([25e-3] * 5)
    assert budgets["features.windows -> lstm.x"].edges == [e.id for e in plan.edges if e.dst.startswith("lstm[")]
    seed = {b.name: b for b in dmnflow.compile_graph("graphs/dmn_trading.yaml", profile="seed-budgets",
                                                      models=False).budgets}
    data = seed["market.market_data -> features.market_data"]
    assert (data.p50_s, data.max_s) == pytest.approx((50e-6, 200e-6))
    assert seed["features.windows -> lstm.x"].p50_s == pytest.approx(100e-6)
    assert seed["meta.positions -> risk.positions"].p50_s == pytest.approx(200e-6)
    assert seed["portfolio.orders -> execution.orders"].p50_s == pytest.approx(100e-6)
    for replay in ("graphs/dmn_backtest.yaml", "graphs/dmn_futures.yaml"):  # full speed queues: no budget
        assert dmnflow.compile_graph(replay, models=False).budgets == []


def test_live_window_gives_rates_windowed_latency_cpu_and_an_eta() -> None:
    window = LiveWindow(window_s=2.0)
    window.update(_report({0: _hist(100)}, received=0), 0.0)
    live = window.update(_report({0: _hist(100, *[40] * 50)}, received=200), 2.0)
    edge = live["edges"]["0"]
    assert edge["msg_s"] == 100.0
    assert edge["queued"] == 5
    assert edge["p50_us"] == pytest.approx(40, rel=0.1)  # the window's messages, not the first one
    assert live["nodes"]["market"]["out_s"] == 100.0
    assert live["nodes"]["market"]["cpu_pct"] == pytest.approx(10.0)
    progress = live["progress"]
    assert progress["fraction"] == pytest.approx(0.2) and progress["eta_s"] == pytest.approx(8.0)


def _console(width: int = 80) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=False, color_system=None), buf


def test_final_report_is_readable_at_80_columns() -> None:
    report = _report({0: _hist(100, 120)}, received=1000, status="done")
    long = EdgeReport(1, "features.long_windows_of_every_symbol", "transformer[0].x_long_input_port", sent=7,
                      received=7)
    report.edges.append(long)
    report.budgets = [{"name": "market.market_data -> features.market_data", "limits_us": {"p50": 50.0},
                       "measured_us": {"p50": 90.0}, "window_us": {}, "windows": 4, "missed_windows": 3,
                       "over_max": 0, "status": "missed", "firing": True}]
    console, buf = _console()
    render_report(report, console)
    text = buf.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "…" not in text
    flat = "".join(text.split())
    for name in ("market.market_data", "features.market_data", "features.long_windows_of_every_symbol",
                 "transformer[0].x_long_input_port"):
        assert name in flat, f"{name} cut in:\n{text}"
    assert "missed" in text and "3/4" in text
    assert "(1 items" not in text and '{"ES": 3}' in text  # a short dict is shown as it is


def test_live_view_and_status_line_show_rates_progress_and_figures() -> None:
    window = LiveWindow(window_s=1.0)
    window.update(_report({0: _hist(100)}, received=0), 0.0)
    report = _report({0: _hist(100, 90)}, received=500)
    report.live = window.update(report, 1.0)
    console, buf = _console(100)
    console.print(live_view(report))
    text = buf.getvalue()
    assert "500" in text and "ETA" in text and "sharpe 1.25" in text
    line = status_line(report)
    assert "500/1,000 days (50%" in line and "msg/s" in line and "sharpe 1.25" in line


def test_history_keeps_the_whole_run_within_its_points() -> None:
    history = History(points=10)
    for i in range(100):
        history.add(_report({}, received=i).__class__("g", "running", 0, 0, 0, {
            "perf": NodeReport("perf", summary={"t": i, "equity": 100.0 + i})}, []), float(i))
    series = history.to_dict()["perf"]
    assert len(series["equity"]) < 10
    assert series["t"][0] == 0 and series["t"][-1] >= 90


def test_tap_leases_merge_clients_and_lapse() -> None:
    plan = dmnflow.compile_graph("graphs/quickstart.yaml")
    leases = TapLeases(plan)
    told = []
    tell = lambda node, *msg: told.append((node, *msg))  # noqa: E731
    ok, result = leases.request({"output": "counter.numbers", "client": "a", "max_rate": 10}, "/run", tell, 0.0)
    assert ok and result["outputs"][0]["endpoint"].startswith("ipc:///run/tap.")
    leases.request({"output": "counter.numbers", "client": "b", "max_rate": 0}, "/run", tell, 0.5)
    assert told[-1] == ("counter", "tap", "counter", "numbers", {"max_rate": 0, "topic": ""})
    leases.expire(10.0, tell)
    assert told[-1] == ("counter", "tap", "counter", "numbers", {})  # nobody listens: off
    ok, message = leases.request({"output": "counter.nope", "client": "a"}, "/run", tell, 0.0)
    assert not ok and "counter.numbers" in message


def test_echo_hz_bw_top_swap_say_did_you_mean_as_validate_does(monkeypatch) -> None:
    """One did-you-mean (errors.did_you_mean) for a misspelt output, node and run name."""
    from dmnflow.errors import ControlError
    from dmnflow.runtime.admin import client

    plan = dmnflow.compile_graph("graphs/quickstart.yaml")
    ok, message = TapLeases(plan).request({"output": "counter.number", "client": "a"}, "/run", lambda *m: None, 0.0)
    assert not ok and message == ("the run has no output 'counter.number'; did you mean 'counter.numbers'? "
                                  "outputs: counter.numbers, scale.scaled")
    runs = [client.RunInfo("live", 11, "dmn_trading", "/nowhere"), client.RunInfo("quickstart", 12, "q", "/x")]
    monkeypatch.setattr(client, "list_runs", lambda: runs)
    with pytest.raises(ControlError) as exc:
        client.find_run("lvie")
    assert str(exc.value) == ("no run named 'lvie' is running; did you mean 'live'? running now: live (pid 11), "
                              "quickstart (pid 12)")
    with pytest.raises(ControlError, match=r"running now: live") as exc:
        client.find_run("zzz")
    assert "did you mean" not in str(exc.value)


@pytest.mark.parametrize(("seconds", "text"), [
    (2.0803748, "2.08 s"), (0.03132, "31.3 ms"), (0.00085, "850 us"), (5e-5, "50 us"), (1.2e-7, "120 ns"),
    (0.99996, "1 s"), (9.996e-6, "10 us"), (0.0, "0 us"), (None, "-"), (float("nan"), "-"), (-0.0021, "-2.1 ms"),
])
def test_one_formatter_shows_every_latency_in_human_units(seconds, text) -> None:
    from dmnflow.spec import format_duration

    assert format_duration(seconds) == text


def test_the_report_shows_latencies_and_latency_figures_scaled() -> None:
    """``2.08 s``, not ``2,080,374.8`` under "p99 us"; a ``*_us`` figure too, not ``3.132e+04``."""
    report = _report({0: _hist(100, 120)}, received=1000, status="done")
    report.edges[0].p50_us, report.edges[0].p99_us = 850.0, 2_080_374.8
    report.nodes["features"].summary = {"tick_to_trade_p50_us": 31_320.5, "ratio": 31_320.5}
    report.budgets = [{"name": "a.x -> b.y", "limits_us": {"p50": 50.0, "max": 200.0},
                       "measured_us": {"p50": 612.4, "max": 2_228.2}, "window_us": {}, "windows": 4,
                       "missed_windows": 3, "over_max": 0, "status": "missed", "firing": True}]
    console, buf = _console()
    render_report(report, console)
    text = buf.getvalue()
    assert "850 us" in text and "2.08 s" in text and "2,080,374.8" not in text and "p50 us" not in text
    assert "31.3 ms" in text and "31,320" in text and "e+04" not in text
    assert "p50 < 50 us, max < 200 us" in text and "p50 612 us, max 2.23 ms" in "".join(text.split("\n"))


@pytest.mark.parametrize(("value", "text"), [
    (6.762e-05, "0.00006762"), (-6.7e-05, "-0.000067"), (0.001801, "0.001801"), (31_320.5, "31,320"), (1.25, "1.25"),
])
def test_a_small_figure_is_no_exponential_either(value, text) -> None:
    """The status line's ``drawdown 6.762e-05`` (a real first minute of the trading graph)."""
    from dmnflow.observe.view import figures

    assert figures({"drawdown": value}) == [("drawdown", text)]


@pytest.mark.parametrize(("value", "text"), [
    (1_451_865_600_000_000_000, "2016-01-04"),  # a bar's day, epoch ns (the market nodes)
    (1_451_917_800_250_000_000, "2016-01-04 14:30:00.25Z"),  # a tick's
    (1_451_865_600, "2016-01-04"), (1_451_865_600_123, "2016-01-04 00:00:00.123Z"), (20160104, "2016-01-04"),
    ("2016-01-04", "2016-01-04"), (3, "3"), (20161399, "20161399"), (True, "True"),
])
def test_echo_shows_an_event_time_as_a_date(value, text) -> None:
    from dmnflow.observe.listen import format_event_time

    assert format_event_time(value) == text


def test_prometheus_labels_an_edge_by_name_and_a_budget_by_stat_not_quantile() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from dmnflow.observe.prometheus import ReportCollector

    report = _report({0: _hist(100, 120)}, received=1000, status="done")
    report.budgets = [{"name": "market.market_data -> features.market_data", "limits_us": {"p50": 50.0, "max": 200.0},
                       "window_us": {"p50": 612.4}, "windows": 4, "missed_windows": 3, "status": "missed"}]
    registry = CollectorRegistry()
    registry.register(ReportCollector(lambda: report))
    text = generate_latest(registry).decode()
    assert ('dmnflow_edge_messages_sent_total{dst="features.market_data",'
            'edge="market.market_data -> features.market_data",src="market.market_data"} 1005.0') in text
    assert 'edge="0"' not in text and "quantile=" not in text
    assert ('dmnflow_budget_limit_seconds{budget="market.market_data -> features.market_data",stat="max"} 0.0002'
            in text)
    assert 'dmnflow_budget_measured_seconds{budget="market.market_data -> features.market_data",stat="p50"}' in text


def test_info_of_a_recording_shows_its_graph_time_range_and_channels(tmp_path: Path) -> None:
    """``dmnflow info FILE.mcap``: what ros2 bag info shows, read from the file's summary."""
    pytest.importorskip("mcap")
    from mcap.writer import Writer
    from typer.testing import CliRunner

    from dmnflow.cli import app
    from dmnflow.observe.replay import recording_info

    path = tmp_path / "run.mcap"
    with open(path, "wb") as f:
        writer = Writer(f)
        writer.start(profile="", library="dmnflow")
        writer.add_metadata("dmnflow", {"graph": "quickstart", "file": "graphs/quickstart.yaml", "outputs": ""})
        for name, kind, n in (("counter.numbers", "int", 3), ("scale.scaled", "float", 2)):
            cid = writer.register_channel(f"/{name}", "cbor", 0, {"output": name, "codec": "msgpack", "type": kind})
            for i in range(n):
                writer.add_message(cid, log_time=1_451_865_600_000_000_000 + i * 250_000_000, data=b"\x01",
                                   publish_time=0)
        writer.finish()
    info = recording_info(path)
    assert (info["graph"], info["messages"], info["complete"], info["duration_s"]) == ("quickstart", 5, True, 0.5)
    assert [(c["topic"], c["type"], c["encoding"], c["messages"]) for c in info["channels"]] == [
        ("/counter.numbers", "int", "cbor", 3), ("/scale.scaled", "float", "cbor", 2)]
    result = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for line in ("graph:     quickstart (graphs/quickstart.yaml)", "duration:  500 ms",
                 "start:     2016-01-04", "end:       2016-01-04 00:00:00.5Z", "messages:  5"):
        assert line in result.output
    narrow = CliRunner().invoke(app, ["info", str(path)], env={"COLUMNS": "80"}).output
    assert "…" not in narrow and "/counter.numbers │ int " in narrow  # the output is said once, whole
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(path.read_bytes()[:-200])  # a killed run's file: no summary
    assert recording_info(cut)["complete"] is False
    assert CliRunner().invoke(app, ["info", str(tmp_path / "nope.mcap")]).exit_code == 1


def _trading_snapshot() -> Report:
    """A status snapshot of the trading graph running (`dmnflow top`'s report of
    graphs/dmn_trading.yaml on a 2-core VM): 13 nodes, 20 edges, 5 budgets, its figures."""
    import json

    from dmnflow.observe.top import report_from_dict

    return report_from_dict(json.loads((ROOT / "tests/unit/data/trading_snapshot.json").read_text()))


@pytest.mark.parametrize(("width", "height"), [(80, 24), (120, 45), (200, 60)])
def test_the_live_view_fits_the_terminal_with_every_node_and_headline_figure_whole(width: int, height: int) -> None:
    import re

    from dmnflow.observe.view import HEADLINE, figures

    report = _trading_snapshot()
    console = Console(width=width, height=height, record=True, file=io.StringIO(), color_system=None)
    console.print(live_view(report, None, width, height))
    text = console.export_text()
    lines = text.splitlines()
    assert len(lines) <= height, text
    assert all(len(line) <= width for line in lines), text
    assert "…" not in text and "..." not in text
    assert len(report.nodes) == 13
    for name in report.nodes:  # whole, on one line: not folded, not dropped
        assert any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", line) for line in lines), f"{name}:\n{text}"
    perf = dict(figures(report.nodes["performance"].summary))
    shown = [k for k in HEADLINE if k in perf]
    assert shown == list(HEADLINE)  # equity, pnl, sharpe, drawdown, max drawdown, tick-to-trade p50/p99
    for key in shown:
        assert any(f"{key} {perf[key]}" in line for line in lines), f"{key} {perf[key]}:\n{text}"
    head = lines[0]
    assert head.startswith("dmn_trading  running") and "13 running" in head and "budgets missed" in head
    if height < 40:  # the edges and budgets collapsed: the worst first, the rest summed up
        assert re.search(r"\d+ more edges:", text) and re.search(r"\d+ more latency budgets:", text)
    else:
        assert "features.long_windows → transformer.x" in text  # the worst edge (something queued)


def test_the_live_view_says_first_what_needs_a_look() -> None:
    report = _trading_snapshot()
    report.nodes["risk"].status, report.nodes["risk"].restarts = "restarting", 2
    worst = next(e for e in report.edges if e.src == "risk.targets")
    report.live["edges"][str(worst.id)].update(drops=7, queued=40)
    console = Console(width=80, height=24, record=True, file=io.StringIO(), color_system=None)
    console.print(live_view(report, None, 80, 24))
    lines = console.export_text().splitlines()
    assert "12 running" in lines[0] and "1 restarting" in lines[0] and "2 restarts" in lines[0] \
        and "7 dropped" in lines[0]
    edges = lines.index(next(line for line in lines if line.startswith("edges")))
    assert "risk.targets → portfolio.targets" in "\n".join(lines[edges:edges + 4])  # the worst edge first
    assert any("risk restarting" in line for line in lines)


def test_the_final_report_opens_with_its_headline() -> None:
    from dmnflow.observe.view import figures

    report = _trading_snapshot()
    report.status = "stopped"
    for n in report.nodes.values():
        n.status = "done"
    for e in report.edges:  # drained
        e.received = e.sent
    report.edges[3].dropped = 4
    console, buf = _console()
    render_report(report, console)
    lines = buf.getvalue().splitlines()
    head = "\n".join(lines[:lines.index("details")])
    assert len(head.splitlines()) <= 10, head
    assert lines[0].startswith("dmn_trading stopped in 25.")
    assert "13 nodes done" in lines[1] and "4 lost" in lines[1] and "5 of 5 latency budgets missed" in lines[1]
    perf = dict(figures(report.nodes["performance"].summary))
    for key in ("equity", "pnl", "sharpe", "max_drawdown", "tick_to_trade_p50_us"):
        assert f"{key} {perf[key]}" in head, head
    assert all(len(line) <= 80 for line in lines)
    assert "orders_rejected_queue_full 0" in buf.getvalue()  # the details follow: every figure, whole


def test_a_budgets_warm_up_is_shown_not_judged() -> None:
    plan = _plan_with(BudgetPlan(name="b", kind="edge", edges=[0], p50_s=50e-6, max_s=200e-6, warmup_s=5.0))
    watch = BudgetWatch(plan, window_s=1.0)
    cum = Histogram()
    events = []
    # a start-up burst (p50 ~ 10ms) for the first 4 seconds, then the budget holds
    for t, batch in enumerate([[10_000] * 10] * 4 + [[20] * 10] * 4):
        cum.merge(_hist(*batch))
        events += watch.update(_report({0: Histogram(list(cum.counts))}), float(t + 10))
        if t == 1:
            row = watch.table()[0]
            assert row["status"] == "warm-up" and row["window_us"]["p50"] > 5_000 and row["windows"] == 0
    row = watch.table()[0]
    assert events == []  # nothing fired: the burst was the warm-up
    assert (row["warmup_windows"], row["windows"], row["missed_windows"], row["over_max"]) == (5, 3, 0, 0)
    assert row["status"] == "met" and row["measured_us"]["max"] < 200  # the run after the warm-up
    assert row["warmup_messages"] == 50 and row["messages"] == 30
    # the same without a warm-up: every window of the burst is missed, and it fires
    watch = BudgetWatch(_plan_with(BudgetPlan(name="b", kind="edge", edges=[0], p50_s=50e-6)), window_s=1.0)
    cum = Histogram()
    for t, batch in enumerate([[10_000] * 10] * 4 + [[20] * 10] * 4):
        cum.merge(_hist(*batch))
        events += watch.update(_report({0: Histogram(list(cum.counts))}), float(t + 10))
    assert [e["state"] for e in events] == ["missed", "met"] and watch.table()[0]["missed_windows"] == 4


def test_budget_warmup_is_decided_by_the_compiler() -> None:
    plan = dmnflow.compile_graph("graphs/dmn_trading.yaml", models=False)
    assert {b.warmup_s for b in plan.budgets} == {20.0}  # the trading graph's defaults.budget_warmup
    value = "nodes.scale.inputs.value={from: counter.numbers, budget: {p50: 1ms%s}}"
    plan = dmnflow.compile_graph("graphs/quickstart.yaml", [value % ""])
    assert [b.warmup_s for b in plan.budgets] == [10.0]  # the schema's default
    plan = dmnflow.compile_graph("graphs/quickstart.yaml", [value % ", warmup: 0s"])
    assert [b.warmup_s for b in plan.budgets] == [0.0]


def test_a_record_goes_to_json_its_schema_holds_and_it_comes_back_identical() -> None:
    import json
    import math

    import jsonschema
    import numpy as np

    from dmnflow.observe.record import decode_value, encode_record, value_schema
    from dmnflow.transport.wire import ATTRS, EVENT_TIME, ORIGIN_NS, SEND_NS, SEQ

    header: list = [None] * (max(ATTRS, EVENT_TIME, ORIGIN_NS, SEND_NS, SEQ) + 1)
    header[EVENT_TIME], header[ATTRS], header[ORIGIN_NS], header[SEND_NS], header[SEQ] = \
        1_058_140_800_000_000_000, {"day": 3}, 11, 12, 7
    values = [
        ({"equity": 1.5, "pnl": -0.0, "sharpe": math.nan, "var": math.inf, "n": 3, "ok": True, "none": None,
          "positions": {"ES": 3.25}, "path": [1, 2.5, "x"], "raw": b"\x00\xff", "$odd": 1, 7: "int key"}, "dict"),
        (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "tensor[float32, (?, 4)]"),
        (b"\x01\x02", "bytes"),
        (2.5, "float"), (-math.inf, "float"), (41, "int"), ("text", "str"),
    ]
    for value, type_text in values:
        data, kind = encode_record(value, header, 99)
        envelope = json.loads(data)  # plain JSON: no NaN, no Infinity
        jsonschema.validate(envelope, value_schema("node.port", type_text, kind))
        back = decode_value(data, kind)
        assert (back["event_time"], back["attrs"], back["send_ns"], back["recorded_ns"], back["count"]) == \
            (header[EVENT_TIME], {"day": 3}, 12, 99, 7)
        if kind == "tensor":
            assert back["value"].dtype == value.dtype and back["value"].tobytes() == value.tobytes()
            assert envelope["value"]["shape"] == [3, 4]
        else:
            assert repr(back["value"]) == repr(value)  # identical, to the last float, its type and key order


@pytest.mark.parametrize(("event_time", "log_time"), [
    (1_451_865_600_000_000_000, 1_451_865_600_000_000_000),  # a market bar's epoch ns: Foxglove's time line
    (299, 7_000_000_000_000_000_000), (0, 7_000_000_000_000_000_000),  # a counter's index: when recorded
    (1.5e18, 7_000_000_000_000_000_000), (None, 7_000_000_000_000_000_000), ("2016-01-04", 7_000_000_000_000_000_000),
])
def test_a_recordings_time_line_is_the_event_time_only_where_that_is_a_time(event_time, log_time) -> None:
    """The quickstart's recording read 'duration: 299 ns, start: 0' (its counter's 0..299 as ns)."""
    from dmnflow.observe.record import _log_time

    assert _log_time(event_time, 7_000_000_000_000_000_000) == log_time

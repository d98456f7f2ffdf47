"""Risk -> portfolio -> execution -> performance together: in process, compiled, and launched."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import signal
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

import dmnflow
from dmnflow import Message, Node, Output
from nodes.execution import Execution
from nodes.monitoring import Performance
from nodes.portfolio import PortfolioOptimizer
from nodes.risk import RiskManager

DAY = 86_400 * 10**9
T0 = 1_262_304_000 * 10**9  # 2010-01-01


def market(days: int, symbols: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Seeded (positions, signals) pairs: random walks, a NaN here and there."""
    rng = np.random.default_rng(seed)
    syms = [f"S{i:02d}" for i in range(symbols)]
    close = 100.0 * np.ones(symbols)
    out = []
    for d in range(days):
        ret = rng.normal(0.0003, 0.012, symbols)
        close = close * (1 + ret)
        sigma = rng.uniform(0.1, 0.3, symbols)
        pos = np.tanh(rng.normal(0, 1, symbols))
        if d % 17 == 5:
            sigma[d % symbols] = np.nan
        t = T0 + d * DAY
        out.append(({"t": t, "symbols": syms, "position": pos.tolist(), "weights": {"m": 1.0}},
                    {"t": t, "symbols": syms, "close": close.tolist(), "ret": ret.tolist(), "sigma": sigma.tolist(),
                     "tsmom": [1.0] * symbols, "macd": [0.0] * symbols, "features": [[0.0] * 8] * symbols}))
    return out


class FakeCtx:
    def __init__(self, cls: type, params: dict[str, Any] | None, sink: Any) -> None:
        self.name = cls.__name__
        self.params = cls.Params.model_validate(params or {})
        self.log = logging.getLogger(f"test.{cls.__name__}")
        self.message = Message()
        self.sink = sink

    def emit(self, port: str, value: Any, *, topic: str | None = None, event_time: Any = None,
             attrs: Any = None) -> None:
        self.sink(port, value)


def chain(pairs: list[tuple[dict, dict]], risk: dict | None = None, portfolio: dict | None = None,
          execution: dict | None = None) -> dict[str, Any]:
    """The four nodes wired by hand, in process, in the order the graph delivers."""
    out: dict[str, list[Any]] = defaultdict(list)
    nodes: dict[str, Any] = {}

    def build(name: str, cls: type, params: dict | None, sink: Any) -> FakeCtx:
        node, ctx = cls(), FakeCtx(cls, params, sink)
        node.setup(ctx)
        nodes[name] = node
        return ctx

    def to_perf(port: str, value: Any) -> None:
        out[port].append(value)
        getattr(nodes["perf"], f"on_{port}")(value, pctx)

    def to_exec(port: str, value: Any) -> None:
        out[port].append(value)
        nodes["exec"].on_orders(value, ectx)

    def to_port(port: str, value: Any) -> None:
        out[port].append(value)
        nodes["port"].on_targets(value, octx)

    pctx = build("perf", Performance, {}, lambda port, value: out[port].append(value))
    ectx = build("exec", Execution, execution, to_perf)
    octx = build("port", PortfolioOptimizer, portfolio, to_exec)
    rctx = build("risk", RiskManager, risk, to_port)
    for pos, sig in pairs:
        nodes["risk"].on_join({"positions": pos, "signals": sig}, rctx)
    return {"out": out, "summary": {name: node.summary() for name, node in nodes.items()}}


NO_LIMITS = {"max_weight": None, "max_gross": None, "max_drawdown": None}


def test_broker_equity_follows_the_papers_strategy_return() -> None:
    """Costless, fractional, no threshold: the paper broker's equity is the risk layer's equity."""
    run = chain(market(120, 6, seed=1), risk=NO_LIMITS)
    targets, accounts = run["out"]["targets"], run["out"]["account"]
    assert len(targets) == len(accounts) == 120
    for tg, acc in zip(targets, accounts, strict=True):
        assert acc["t"] == tg["t"]
        assert acc["equity"] / 1e6 == pytest.approx(tg["equity"], rel=1e-9)
    s = run["summary"]
    assert s["risk"]["bad_sigma"] == 7 and s["exec"]["broker_rejected"] == 0
    assert s["perf"]["periods"] == 120 and s["perf"]["pnl"] == pytest.approx(accounts[-1]["pnl"], rel=1e-12)


def test_costs_are_exactly_what_the_account_lost() -> None:
    pairs = market(60, 4, seed=2)
    free = chain(pairs, risk=NO_LIMITS)
    paid = chain(pairs, risk=NO_LIMITS, execution={"broker_params": {"commission_bps": 2.0, "slippage_bps": 1.0}})
    a, b = free["out"]["account"][-1], paid["out"]["account"][-1]
    assert b["commission"] > 0 and b["slippage"] > 0
    # the book trades the same quantities (it assumes costless fills at the close either way)
    assert b["positions"].keys() == a["positions"].keys()
    for s in a["positions"]:
        assert b["positions"][s] == pytest.approx(a["positions"][s], rel=1e-12)
    assert a["equity"] - b["equity"] == pytest.approx(b["commission"] + b["slippage"], rel=1e-9)
    assert paid["summary"]["perf"]["sharpe"] < free["summary"]["perf"]["sharpe"]


def test_the_chain_is_deterministic() -> None:
    pairs = market(80, 5, seed=3)
    params = {"risk": {"max_drawdown": 0.05, "reset_after": 10, "max_gross": 1.0},
              "portfolio": {"rebalance_threshold": 0.01, "lot_size": 1.0},
              "execution": {"max_orders_per_event": 3, "broker_params": {"commission_bps": 1.0}}}
    one, two = chain(pairs, **params), chain(pairs, **params)
    assert one["out"] == two["out"]
    # latency aside (none here: no origin times), the summaries agree too
    assert json.dumps(one["summary"], sort_keys=True) == json.dumps(two["summary"], sort_keys=True)
    assert one["summary"]["exec"]["orders_queued"] > 0  # the per-event limit was exercised


def test_empty_and_garbage_cross_sections_flow_through() -> None:
    pairs = market(10, 3, seed=4)
    pairs[3] = ({"t": pairs[3][0]["t"], "symbols": [], "position": [], "weights": {}},
                {"t": pairs[3][0]["t"], "symbols": [], "close": [], "ret": [], "sigma": []})
    pairs[6][1]["close"] = [math.nan, -1.0, 0.0]
    run = chain(pairs, risk=NO_LIMITS)
    assert len(run["out"]["account"]) == 10
    s = run["summary"]
    assert s["risk"]["empty"] == 1 and s["port"]["no_price"] == 3 and s["exec"]["broker_rejected"] == 0


# -- through the framework ---------------------------------------------------------------------

class ToyMarket(Node):
    """Emits the seeded ``market`` pairs as Positions and Signals with their event times."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        days: int = Field(30, ge=1, description="days to emit")
        symbols: int = Field(3, ge=1, description="symbols per day")
        seed: int = Field(0, description="random seed")

    positions = Output(dict)
    signals = Output(dict)

    def run(self, ctx: Any) -> Iterator[tuple[str, Any, int]]:
        for pos, sig in market(ctx.params.days, ctx.params.symbols, ctx.params.seed):
            yield "positions", pos, pos["t"]
            yield "signals", sig, sig["t"]


def graph(tmp_path: Path, days: int) -> Path:
    text = f"""
graph: dmn_tail
defaults: {{transport: ipc, codec: msgpack, policy: block}}
nodes:
  market:
    uses: tests.unit.test_execution_chain:ToyMarket
    params: {{days: {days}, symbols: 4, seed: 5}}
  risk:
    uses: nodes.risk:RiskManager
    inputs: {{positions: market.positions, signals: market.signals}}
    join: {{inputs: [positions, signals], by: event_time}}
    params: {{max_weight: null, max_gross: null, max_drawdown: null}}
  portfolio:
    uses: nodes.portfolio:PortfolioOptimizer
    inputs:
      targets: risk.targets
      account: {{from: execution.account, feedback: true}}
  execution:
    uses: nodes.execution:Execution
    inputs: {{orders: portfolio.orders}}
    params: {{broker: paper, broker_params: {{commission_bps: 1.0}}, max_orders_per_event: 100}}
    timers: {{drain: 100ms}}
  performance:
    uses: nodes.monitoring:Performance
    inputs: {{account: execution.account, fills: execution.fills}}
    params: {{equity_png: "{tmp_path / 'equity.png'}"}}
  alerts:
    uses: nodes.monitoring:Alerts
    inputs: {{metrics: performance.metrics}}
    params: {{rules: [{{metric: drawdown, op: ">", value: 0.0, severity: info}}]}}
  health:
    uses: nodes.monitoring:Health
    inputs: {{feeds: [execution.account, alerts.alerts]}}
    timers: {{check: 1s}}
  accounts:
    uses: nodes.basic:Collect
    inputs: {{values: execution.account}}
    params: {{path: "{tmp_path / 'accounts.jsonl'}"}}
"""
    path = tmp_path / "dmn_tail.yaml"
    path.write_text(text)
    return path


def test_the_nodes_compile_in_a_graph(tmp_path: Path) -> None:
    plan = dmnflow.compile_graph(graph(tmp_path, 10))
    assert {n.name for n in plan.nodes} >= {"risk", "portfolio", "execution", "performance", "alerts", "health"}


def test_bad_params_are_compile_errors(tmp_path: Path) -> None:
    path = graph(tmp_path, 10)
    path.write_text(path.read_text().replace("commission_bps: 1.0", "comission_bps: 1.0"))
    with pytest.raises(dmnflow.CompileError, match="comission_bps"):
        dmnflow.compile_graph(path)


def _workers() -> list[int]:
    """Our dmnflow worker processes (children of this test process)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"dmnflow.runtime.worker" in argv:
                pids.append(int(entry.name))
    return pids


def test_launched_graph_matches_the_in_process_chain(tmp_path: Path) -> None:
    days = 40
    plan = dmnflow.compile_graph(graph(tmp_path, days))
    try:
        report = dmnflow.launch(plan, duration_s=120)
    finally:
        for pid in _workers():  # launch stops its workers; this is for a failing test only
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert report.status == "finished", report.errors
    launched = [json.loads(line) for line in (tmp_path / "accounts.jsonl").read_text().splitlines()]
    pairs = market(days, 4, seed=5)
    local = chain(pairs, risk={"max_weight": None, "max_gross": None, "max_drawdown": None},
                  execution={"broker_params": {"commission_bps": 1.0}, "max_orders_per_event": 100})
    assert launched == json.loads(json.dumps(local["out"]["account"]))
    perf = report.nodes["performance"].summary
    assert perf["periods"] == days and perf["accounts"] == days
    assert perf["sharpe"] == pytest.approx(local["summary"]["perf"]["sharpe"], rel=1e-12)
    assert perf["tick_to_trade_p50_us"] is not None and perf["tick_to_trade_p50_us"] > 0
    assert report.nodes["alerts"].summary["messages"] == days
    assert (tmp_path / "equity.png").read_bytes()[:4] == b"\x89PNG"


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("page", ["risk.md", "execution.md", "monitoring.md"])
def test_the_docs_yaml_uses_real_nodes_and_params(page: str) -> None:
    text = (ROOT / "docs" / "dmn" / page).read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    assert blocks
    checked = 0
    for block in blocks:
        for name, spec in yaml.safe_load(block).items():
            module, cls_name = spec["uses"].split(":")
            cls = getattr(importlib.import_module(module), cls_name)
            cls.Params.model_validate(spec.get("params") or {})  # ${...} strings only where a str is taken
            assert set(spec["inputs"]) <= set(cls.ports(cls.Params()).inputs), name
            for timer in spec.get("timers", {}):
                assert callable(getattr(cls, f"on_{timer}", None)), name
            checked += 1
    assert checked >= 1

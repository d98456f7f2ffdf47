"""Real workers see only the secrets their nodes declare, forked by the zygote or started anew."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import dmnflow
from dmnflow.runtime import launch

from .procs import ROOT

NAMES = ["DMNFLOW_TEST_A_KEY", "DMNFLOW_TEST_B_TOKEN", "DMNFLOW_TEST_PLAIN"]


@pytest.mark.parametrize("zygote", ["1", "0"])
def test_each_worker_sees_only_the_secrets_its_nodes_declare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             zygote: str) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DMNFLOW_ZYGOTE", zygote)
    monkeypatch.setenv("DMNFLOW_TEST_A_KEY", "a-secret")
    monkeypatch.setenv("DMNFLOW_TEST_B_TOKEN", "b-secret")
    monkeypatch.setenv("DMNFLOW_TEST_PLAIN", "plain")
    names = json.dumps(NAMES)
    g = tmp_path / "env.yaml"
    g.write_text(textwrap.dedent(f"""
        graph: env
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 3}}}}
          a:
            uses: tests.integration.nodes:EnvProbe
            params: {{dir: {tmp_path}, names: {names}, declare: [DMNFLOW_TEST_A_KEY]}}
            inputs: {{values: src.numbers}}
          none:
            uses: tests.integration.nodes:EnvProbe
            params: {{dir: {tmp_path}, names: {names}}}
            inputs: {{values: src.numbers}}
          g1:
            uses: tests.integration.nodes:EnvProbe
            params: {{dir: {tmp_path}, names: {names}, declare: ["DMNFLOW_TEST_B_*"]}}
            inputs: {{values: src.numbers}}
            group: pair
          g2:
            uses: tests.integration.nodes:EnvProbe
            params: {{dir: {tmp_path}, names: {names}}}
            inputs: {{values: src.numbers}}
            group: pair
        """), encoding="utf-8")
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished" and report.exit_code == 0, report.errors

    def seen(node: str) -> dict[str, dict[str, object]]:
        return json.loads((tmp_path / f"{node}.json").read_text())

    a, none, g1, g2 = (seen(n) for n in ("a", "none", "g1", "g2"))
    assert a["environ"] == {"DMNFLOW_TEST_A_KEY": "a-secret", "DMNFLOW_TEST_B_TOKEN": None,
                            "DMNFLOW_TEST_PLAIN": "plain"}
    assert none["environ"] == {"DMNFLOW_TEST_A_KEY": None, "DMNFLOW_TEST_B_TOKEN": None,
                               "DMNFLOW_TEST_PLAIN": "plain"}
    both = {"DMNFLOW_TEST_A_KEY": None, "DMNFLOW_TEST_B_TOKEN": "b-secret", "DMNFLOW_TEST_PLAIN": "plain"}
    assert g1["environ"] == both and g2["environ"] == both  # one process: what any of its nodes declares
    # the environment block a process starts with (/proc/PID/environ): a forked worker's is the
    # zygote's, which holds no secret; a new interpreter's is what the supervisor gave it
    assert none["initial"] == {"DMNFLOW_TEST_A_KEY": False, "DMNFLOW_TEST_B_TOKEN": False, "DMNFLOW_TEST_PLAIN": True}
    assert a["initial"]["DMNFLOW_TEST_A_KEY"] is (zygote == "0")
    assert a["initial"]["DMNFLOW_TEST_B_TOKEN"] is False


@pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")
def test_a_live_source_gets_its_keys_and_its_neighbours_do_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.fakes_live import FakeAlpacaStream, alpaca_trade

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("APCA_API_KEY_ID", "test-key-id")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "test-secret")
    t0 = 1_704_205_800_123_456_789
    trades = [[alpaca_trade("AAPL", t0 + i, 100.0 + i)] for i in range(3)]
    with FakeAlpacaStream([[*trades, "hang"]]) as server:
        g = tmp_path / "live.yaml"
        g.write_text(textwrap.dedent(f"""
            graph: live
            defaults: {{policy: block}}
            nodes:
              market:
                uses: nodes.market.alpaca:AlpacaStream
                params: {{url: "{server.url}/v2/iex", insecure: true, symbols: [AAPL], channels: [trades],
                          max_records: 3}}
              sink: {{uses: nodes.basic:Collect, inputs: {{values: market.market_data}},
                      params: {{path: {tmp_path}/out.jsonl}}}}
              probe:
                uses: tests.integration.nodes:EnvProbe
                params: {{dir: {tmp_path}, names: [APCA_API_KEY_ID, APCA_API_SECRET_KEY]}}
                inputs: {{values: market.market_data}}
            """), encoding="utf-8")
        report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished" and report.exit_code == 0, report.errors
    assert server.received[0] == {"action": "auth", "key": "test-key-id", "secret": "test-secret"}
    prices = [json.loads(line)["price"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert prices == [100.0, 101.0, 102.0]
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe["environ"] == {"APCA_API_KEY_ID": None, "APCA_API_SECRET_KEY": None}

"""Which environment variables a worker gets: secrets only where a node declares them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dmnflow
from dmnflow import Node
from dmnflow.plan import Plan
from dmnflow.runtime.env import declared_secrets, is_secret, worker_environ

ROOT = Path(__file__).resolve().parents[2]

ENVIRON = {
    "PATH": "/usr/bin", "HOME": "/home/me", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "HTTPS_PROXY": "http://p:3128",
    "APCA_API_KEY_ID": "id", "APCA_API_SECRET_KEY": "secret", "MASSIVE_API_KEY": "mkey", "GITHUB_TOKEN": "ghp",
    "PGPASSWORD": "pg", "AWS_SECRET_ACCESS_KEY": "aws", "DATABASE_URL": "postgres://u:p@h/db",
}


def plan(tmp_path: Path) -> Plan:
    g = tmp_path / "g.yaml"
    g.write_text(textwrap.dedent("""
        graph: env
        nodes:
          market:
            uses: nodes.market.massive:MassiveStream
          execution:
            uses: nodes.execution.node:Execution
            params: {broker: alpaca, broker_params: {check_on_start: false}}
            inputs: {orders: market.market_data}
          paper:
            uses: nodes.execution.node:Execution
            inputs: {orders: market.market_data}
          a: {uses: nodes.basic:Counter, params: {count: 1}, group: pair}
          b: {uses: nodes.basic:Collect, inputs: {values: a.numbers}, group: pair}
        """), encoding="utf-8")
    return dmnflow.compile_graph(g, machine_cpus=[0])


def test_secret_looking_names() -> None:
    for name in ("APCA_API_KEY_ID", "APCA_API_SECRET_KEY", "MASSIVE_API_KEY", "GITHUB_TOKEN", "PGPASSWORD",
                 "db_password", "AWS_SECRET_ACCESS_KEY", "GPG_PASSPHRASE", "GOOGLE_APPLICATION_CREDENTIALS"):
        assert is_secret(name), name
    for name in ("PATH", "HOME", "KEYBOARD", "PYTHONPATH", "OMP_NUM_THREADS", "HTTPS_PROXY", "SSH_AUTH_SOCK",
                 "DMNFLOW_ZYGOTE", "TOKENIZERS_PARALLELISM"):
        assert not is_secret(name), name


def test_the_plan_carries_what_each_node_declares(tmp_path: Path) -> None:
    p = plan(tmp_path)
    assert p.node("market").env == ["MASSIVE_API_KEY", "POLYGON_API_KEY"]
    assert p.node("execution").env == ["APCA_API_KEY_ID", "APCA_API_SECRET_KEY"]  # from its broker
    assert p.node("paper").env == [] and p.node("a").env == []
    assert Plan.from_json(p.to_json()).node("market").env == p.node("market").env


def test_each_worker_gets_only_the_secrets_its_nodes_declare(tmp_path: Path) -> None:
    p = plan(tmp_path)
    plain = {k: v for k, v in ENVIRON.items() if k in ("PATH", "HOME", "LANG", "OMP_NUM_THREADS", "HTTPS_PROXY",
                                                        "DATABASE_URL")}
    assert worker_environ(p, "market", ENVIRON) == {**plain, "MASSIVE_API_KEY": "mkey"}
    assert worker_environ(p, "execution", ENVIRON) == {**plain, "APCA_API_KEY_ID": "id",
                                                       "APCA_API_SECRET_KEY": "secret"}
    assert worker_environ(p, "paper", ENVIRON) == plain
    assert worker_environ(p, "pair", ENVIRON) == plain  # a group: the union of its nodes' (none)
    assert worker_environ(None, None, ENVIRON) == plain  # the zygote's: no secret at all
    # what a forked worker adds to the zygote's environment
    assert declared_secrets(p, "execution", ENVIRON) == {"APCA_API_KEY_ID": "id", "APCA_API_SECRET_KEY": "secret"}
    assert declared_secrets(p, "paper", ENVIRON) == {}


def test_more_patterns_can_be_named_and_declarations_may_be_patterns(tmp_path: Path) -> None:
    p = plan(tmp_path)
    environ = {**ENVIRON, "DMNFLOW_SECRET_ENV": "DATABASE_URL, *_DSN", "SENTRY_DSN": "https://k@sentry"}
    env = worker_environ(p, "paper", environ)
    assert "DATABASE_URL" not in env and "SENTRY_DSN" not in env and env["HOME"] == "/home/me"
    node = p.node("paper").model_copy(update={"env": ["DATABASE_*"]})
    p2 = p.model_copy(update={"nodes": [node if n.name == "paper" else n for n in p.nodes]})
    assert worker_environ(p2, "paper", environ)["DATABASE_URL"] == "postgres://u:p@h/db"


def test_a_node_declares_its_environment() -> None:
    class Plain(Node):
        pass

    class Keyed(Node):
        env = ("MY_API_KEY", "MY_*_TOKEN")

    class One(Node):
        env = "ONLY_KEY"  # type: ignore[assignment]

    assert Plain.environment(Plain.Params()) == ()
    assert Keyed.environment(Keyed.Params()) == ("MY_API_KEY", "MY_*_TOKEN")
    assert One.environment(One.Params()) == ("ONLY_KEY",)

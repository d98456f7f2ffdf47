"""A killed worker is counted exactly: the report never contradicts itself, and with
``delivery: at-least-once`` a kill -9 of a middle node loses nothing at the sink.

The chain is the one from the issue: Counter -> 3 x Scale -> Collect, ``policy: block``,
20k msg/s, and the middle Scale is killed with SIGKILL at a random moment.
"""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
from pathlib import Path

import pytest

from .procs import alive, launched, wait_until

N = 40_000
RATE = 20_000


def chain(tmp_path: Path, delivery: str = "at-most-once") -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: kill-chain
        defaults: {{policy: block, delivery: {delivery}, restart: {{when: always, backoff: 0.05}}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {N}, rate_hz: {RATE}}}}}
          s1: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          s2: {{uses: nodes.basic:Scale, inputs: {{value: s1.scaled}}}}
          s3: {{uses: nodes.basic:Scale, inputs: {{value: s2.scaled}}}}
          sink:
            uses: tests.integration.nodes:Tap
            params: {{path: {tmp_path}/out.txt}}
            inputs: {{values: s3.scaled}}
        """).lstrip())
    return path


def run_and_kill(tmp_path: Path, delivery: str, seed: int) -> tuple[dict, list[float]]:
    rng = random.Random(seed)
    out = tmp_path / "out.txt"
    with launched(chain(tmp_path, delivery), "--report", str(tmp_path / "r.json")) as run:
        victim = run.wait_for_workers({"src", "s1", "s2", "s3", "sink"})["s2"]
        target = rng.randint(2_000, N // 2)  # a random moment: after this many have reached the sink
        assert wait_until(lambda: out.exists() and len(out.read_text().splitlines()) >= target, 60)
        os.kill(victim, signal.SIGKILL)
        run.proc.wait(timeout=120)
        assert run.proc.returncode == 0, run.proc.stderr.read()
        assert not alive(victim)
    report = json.loads((tmp_path / "r.json").read_text())
    return report, [float(v) for v in out.read_text().splitlines()]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_of_a_middle_node_is_counted_exactly(tmp_path, seed):
    report, got = run_and_kill(tmp_path, "at-most-once", seed)
    assert report["status"] == "finished" and report["nodes"]["s2"]["restarts"] == 1
    edges = {(e["src"], e["dst"]): e for e in report["edges"]}
    for e in edges.values():
        assert e["received"] + e["lost"] == e["sent"], e  # the report never contradicts itself
    missing = N - len(got)
    lost_on_path = sum(e["lost"] for e in edges.values()) + sum(n["lost"] for n in report["nodes"].values())
    assert missing == lost_on_path, (missing, lost_on_path, edges, {n: v["lost"] for n, v in report["nodes"].items()})
    assert len(set(got)) == len(got) and got == sorted(got)  # nothing twice, in order
    assert report["nodes"]["sink"]["messages_in"] == len(got)
    assert edges[("src.numbers", "s1.value")]["sent"] == N


def test_at_least_once_loses_nothing_when_a_middle_node_is_killed(tmp_path):
    report, got = run_and_kill(tmp_path, "at-least-once", 7)
    assert report["status"] == "finished" and report["nodes"]["s2"]["restarts"] == 1
    assert sorted(set(got)) == [float(i) for i in range(N)]  # every record reached the sink
    duplicates = len(got) - len(set(got))
    resent = sum(e["resent"] for e in report["edges"])
    assert resent >= duplicates  # any duplicate is one of the records sent again, and counted
    for e in report["edges"]:
        assert e["lost"] == 0, e

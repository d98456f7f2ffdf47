"""The chain every kill scenario runs: Counter -> Scale -> Collect (its file is what the sink
kept), ``policy: block``, a flat-out source, one node killed -9 once or several times while
records flow; each kill waits until the victim is back and the sink's file has grown."""

from __future__ import annotations

import json
import os
import random
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.integration.procs import alive, launched, wait_until

N = 20_000
QUEUE = 500  # each edge's queue: a block edge's credit window is twice that
BATCH = 64  # defaults.coalesce.records: a coalesced batch may go into the last free place of the window
WINDOW = 2 * QUEUE + BATCH - 1  # the most one kill can cut from the sockets of one block edge
READ_BATCH = 256  # defaults.read_batch: what a node takes from one socket in a turn (it commits after each)
HELD = 2 * READ_BATCH  # the most one kill can cut inside a node: a turn's read (two, killed inside a commit)


def chain(tmp_path: Path, delivery: str) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: kill-chain
        defaults: {{policy: block, queue: {QUEUE}, delivery: {delivery}, restart: {{when: always, backoff: 0.05}}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {N}}}}}
          mid: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          sink:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/out.jsonl}}
            inputs: {{values: mid.scaled}}
        """).lstrip())
    return path


def lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def run_and_kill(tmp_path: Path, delivery: str, victim: str, kills: int) -> tuple[dict[str, Any], list[float]]:
    """Kill ``victim`` ``kills`` times, at evenly spread points of the sink's progress; the
    report and the values in the sink's file, in file order."""
    out = tmp_path / "out.jsonl"
    rng = random.Random(f"{delivery}/{victim}/{kills}")
    with launched(chain(tmp_path, delivery), "--report", str(tmp_path / "r.json")) as run:
        pid = run.wait_for_workers({"src", "mid", "sink"})[victim]
        for k in range(kills):
            target = N * (k + 1) // (kills + 2)  # records at the sink before this kill
            assert wait_until(lambda t=target: lines(out) >= t, 60), f"the sink never reached {target}"
            # the file grows at the sink's commit: half the kills come right on one (a commit written
            # and not yet held is cut back by the restarted sink, docs/runtime.md), half a little later
            time.sleep(rng.choice([0.0, rng.uniform(0.0, 0.02)]))
            os.kill(pid, signal.SIGKILL)
            assert wait_until(lambda p=pid: not alive(p), 10)
            if not wait_until(lambda p=pid: run.workers().get(victim, p) != p or run.proc.poll() is not None, 30):
                raise AssertionError(f"{victim} was not restarted; the launch runs, its workers: {run.workers()}")
            if run.proc.poll() is not None:  # the restarted one finished the stream before we looked: the
                assert k == kills - 1, run.proc.stderr.read()[-3000:]  # last kill only (the report counts restarts)
                break
            pid = run.workers().get(victim, pid)
        run.proc.wait(timeout=120)
        assert run.proc.returncode == 0, run.proc.stderr.read()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "finished" and report["nodes"][victim]["restarts"] == kills
    return report, [json.loads(line) for line in out.read_text().splitlines()]


def edges_of(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(e["src"].split(".")[0], e["dst"].split(".")[0]): e for e in report["edges"]}

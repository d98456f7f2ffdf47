"""Whole graphs in real processes over real sockets: delivery, order, start-up, shutdown, faults.

Every process a test starts is stopped by PID, also when the test fails (procs.launched).
No timing is asserted except the bounds the runtime promises (drain within its grace period).
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import dmnflow
from dmnflow import Input, Node, Output, Tensor
from dmnflow.runtime import launch

from .procs import ROOT, alive, launched, wait_until


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def chain(tmp_path: Path, count: int, *, rate_hz: float = 0, policy: str = "block") -> Path:
    return write(tmp_path / "chain.yaml", f"""
        graph: chain4
        defaults: {{policy: {policy}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {count}, rate_hz: {rate_hz}}}}}
          a: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          b: {{uses: nodes.basic:Scale, inputs: {{value: a.scaled}}, params: {{offset: 0.5}}}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: b.scaled}}, params: {{path: {tmp_path}/out.jsonl}}}}
        """)


def received(tmp_path: Path) -> list[float]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_100k_messages_through_a_4_node_chain_arrive_complete_and_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 100_000
    report = launch(dmnflow.compile_graph(chain(tmp_path, n)))
    assert report.status == "finished" and report.exit_code == 0, report.errors
    values = received(tmp_path)
    assert values == [i + 0.5 for i in range(n)]  # every message, in order, with its value
    for edge in report.edges:
        assert (edge.sent, edge.received, edge.lost, edge.decode_errors) == (n, n, 0, 0)
    assert report.nodes["sink"].messages_in == n
    [path] = report.e2e
    assert (path["source"], path["sink"], path["messages"]) == ("src", "sink", n)


def test_a_late_subscriber_loses_nothing_at_start(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "late.yaml", f"""
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 500, rate_hz: 2000}}}}
          sink:
            uses: tests.integration.nodes:SlowSink
            inputs: {{values: src.numbers}}
            params: {{path: {tmp_path}/out.jsonl, delay_s: 1.5}}
        """)
    report = launch(dmnflow.compile_graph(g))  # pub/sub with the default drop policy
    assert report.status == "finished"
    assert received(tmp_path) == list(range(500))
    assert report.edges[0].lost == 0


def test_a_flooded_drop_edge_counts_every_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 30_000
    report = launch(dmnflow.compile_graph(chain(tmp_path, n, policy="drop")))
    assert report.status == "finished"  # end-of-stream arrives even after the queues overflowed
    first = report.edges[0]
    assert first.sent == n
    assert first.received + first.lost == n  # nothing silent
    values = received(tmp_path)
    assert values == sorted(values) and len(values) == report.edges[-1].received


def test_ctrl_c_drains_and_exits_cleanly(tmp_path):
    graph = chain(tmp_path, 1_000_000, rate_hz=500)
    report_file = tmp_path / "report.json"
    with launched(graph, "--report", str(report_file)) as run:
        pids = run.wait_for_workers({"src", "a", "b", "sink"})
        wait_until(lambda: False, 1.5)  # let some data flow
        run.proc.send_signal(signal.SIGINT)
        run.proc.wait(timeout=10)
        out, err = run.proc.communicate(timeout=5)
        assert run.proc.returncode == 0, err
        assert "stopped" in out
        assert not any(alive(p) for p in pids.values())
    report = json.loads(report_file.read_text())
    assert report["status"] == "stopped", report
    sent = report["edges"][0]["sent"]
    assert sent > 0
    assert all(e["lost"] == 0 and e["received"] == sent for e in report["edges"]), report["edges"]  # drained
    assert len(received(tmp_path)) == sent


def zygotes_of(parent: int) -> list[int]:
    """The zygote processes (runtime/zygote.py) whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"dmnflow.runtime.zygote" in argv:
                found.append(int(entry.name))
    return found


def session_of(pid: int) -> tuple[int, int]:
    """(process group, session) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[2]), int(fields[3])


def test_workers_die_with_a_killed_supervisor(tmp_path):
    with launched(chain(tmp_path, 1_000_000, rate_hz=200)) as run:
        pids = run.wait_for_workers({"src", "a", "b", "sink"})
        zygotes = zygotes_of(run.proc.pid)
        os.kill(run.proc.pid, signal.SIGKILL)
        everyone = [*pids.values(), *zygotes]
        assert wait_until(lambda: not any(alive(p) for p in everyone), 2.0), "orphaned workers"
    from dmnflow.runtime.supervisor import sweep_run_dirs

    sweep_run_dirs()  # the killed supervisor could not remove its run directory; the next launch would


def test_workers_are_forked_children_of_the_supervisor_each_in_its_own_session(tmp_path):
    with launched(chain(tmp_path, 1_000_000, rate_hz=200)) as run:
        pids = run.wait_for_workers({"src", "a", "b", "sink"})
        [zygote] = zygotes_of(run.proc.pid)
        sessions = {name: session_of(pid) for name, pid in pids.items()}
        # each worker leads its own process group and session, apart from the terminal's
        assert all(sessions[name] == (pid, pid) for name, pid in pids.items()), sessions
        assert session_of(run.proc.pid)[1] not in {s for _, s in sessions.values()}
        wait_until(lambda: False, 1.5)  # past start-up (Ctrl-C during it exits 130)
        run.proc.send_signal(signal.SIGINT)
        run.proc.communicate(timeout=20)
        assert run.proc.returncode == 0
        assert not any(alive(p) for p in [zygote, *pids.values()])


def test_without_a_zygote_workers_are_new_interpreters_and_still_restart(tmp_path):
    graph = write(tmp_path / "g.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 3000, rate_hz: 2000}}}}
          sink: {{uses: tests.integration.nodes:Tap, inputs: {{values: src.numbers}}, params: {{path: {tmp_path}/o}}}}
        """)
    out = tmp_path / "o"
    with launched(graph, env={"DMNFLOW_ZYGOTE": "0"}) as run:
        pids = run.wait_for_workers({"src", "sink"})
        assert zygotes_of(run.proc.pid) == []
        assert wait_until(lambda: out.exists() and len(out.read_text().splitlines()) > 100, 30.0)
        os.kill(pids["sink"], signal.SIGKILL)
        assert wait_until(lambda: run.workers().get("sink") not in (None, pids["sink"]), 10.0), "not restarted"
        run.proc.communicate(timeout=60)
        assert run.proc.returncode == 0


def test_a_worker_restarts_even_when_the_zygote_is_gone(tmp_path):
    graph = write(tmp_path / "g.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 3000, rate_hz: 2000}}}}
          sink: {{uses: tests.integration.nodes:Tap, inputs: {{values: src.numbers}}, params: {{path: {tmp_path}/o}}}}
        """)
    out = tmp_path / "o"
    with launched(graph) as run:
        pids = run.wait_for_workers({"src", "sink"})
        [zygote] = zygotes_of(run.proc.pid)
        assert wait_until(lambda: out.exists() and len(out.read_text().splitlines()) > 100, 30.0)
        os.kill(zygote, signal.SIGKILL)
        os.kill(pids["sink"], signal.SIGKILL)
        assert wait_until(lambda: run.workers().get("sink") not in (None, pids["sink"]), 10.0), "not restarted"
        out_text, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 0, err
        assert "zygote failed" in err
    values = [float(v) for v in out.read_text().splitlines()]
    assert values == sorted(values)


def test_an_in_process_launch_leaves_no_child_and_no_subreaper_behind(tmp_path, monkeypatch):
    import ctypes

    monkeypatch.chdir(ROOT)
    report = launch(dmnflow.compile_graph(chain(tmp_path, 200)))
    assert report.status == "finished", report.errors
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid() and b"dmnflow.runtime" in argv:
                children.append(int(entry.name))
    assert children == []  # every worker and the zygote reaped (a zombie would still be listed)
    flag = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    assert flag.value == 0


def test_a_killed_worker_is_restarted_and_its_loss_counted(tmp_path):
    graph = write(tmp_path / "chain.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 6000, rate_hz: 2000}}}}
          a: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          b: {{uses: nodes.basic:Scale, inputs: {{value: a.scaled}}, params: {{offset: 0.5}}}}
          sink:
            uses: tests.integration.nodes:Tap
            inputs: {{values: b.scaled}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    report_file = tmp_path / "report.json"
    out = tmp_path / "out.jsonl"

    def lines() -> int:
        return len(out.read_text().splitlines()) if out.exists() else 0

    with launched(graph, "--report", str(report_file)) as run:
        pids = run.wait_for_workers({"src", "a", "b", "sink"})
        assert wait_until(lambda: lines() >= 500, 30.0), "no data flowed"
        os.kill(pids["a"], signal.SIGKILL)
        assert wait_until(lambda: run.workers().get("a") not in (None, pids["a"]), 10.0), "not restarted"
        run.proc.wait(timeout=60)
        assert run.proc.returncode == 0, run.proc.stderr.read() if run.proc.stderr else ""
    report = json.loads(report_file.read_text())
    assert report["status"] == "finished"
    assert report["nodes"]["a"]["restarts"] == 1
    assert report["edges"][0]["sent"] == 6000
    for edge in report["edges"]:
        assert edge["received"] + edge["lost"] == edge["sent"]  # whatever the crash took is counted
    values = [float(v) for v in out.read_text().splitlines()]
    assert len(values) == report["edges"][-1]["received"] > 500
    assert values == sorted(values)  # a restart loses, never reorders


def test_groups_tcp_and_shared_replicas_deliver_everything_once(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 5000
    g = write(tmp_path / "mixed.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {n}}}, group: front, cpus: 0}}
          a: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}, group: front, cpus: 0}}
          b: {{uses: nodes.basic:Scale, inputs: {{value: a.scaled}}, outputs: {{scaled: {{transport: tcp}}}}}}
          c: {{uses: nodes.basic:Scale, inputs: {{value: b.scaled}}, replicas: 2, params: {{offset: 0.5}}}}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: [c.scaled, a.scaled]}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    plan = dmnflow.compile_graph(g, machine_cpus=[0, 1])
    assert {e.transport for e in plan.edges} == {"inproc", "ipc", "tcp"}
    report = launch(plan)
    assert report.status == "finished", report.errors
    values = received(tmp_path)
    assert sorted(values) == sorted([float(i) for i in range(n)] + [i + 0.5 for i in range(n)])
    shares = [e for e in report.edges if e.src == "b.scaled"]
    assert sum(e.received for e in shares) == n and all(e.received > 0 for e in shares)
    assert all(e.lost == 0 for e in report.edges)


def test_fan_out_fan_in_with_a_join_gives_identical_outputs_run_after_run(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    n = 300
    g = write(tmp_path / "diamond.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {n}}}}}
          j1: {{uses: tests.integration.nodes:Jitter, inputs: {{value: src.numbers}}, params: {{factor: 1}}}}
          j2: {{uses: tests.integration.nodes:Jitter, inputs: {{value: src.numbers}}, params: {{factor: 2}}}}
          j3: {{uses: tests.integration.nodes:Jitter, inputs: {{value: src.numbers}}, params: {{factor: 3}}}}
          join:
            uses: tests.integration.nodes:Combine
            inputs: {{a: j1.out, b: j2.out, c: j3.out}}
            join: {{inputs: [a, b, c]}}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: join.combined}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    plan = dmnflow.compile_graph(g)
    runs = []
    for _ in range(2):
        report = launch(plan)
        assert report.status == "finished", report.errors
        assert report.nodes["join"].join_incomplete == 0
        runs.append((tmp_path / "out.jsonl").read_text())
    assert runs[0] == runs[1]
    assert [json.loads(line) for line in runs[0].splitlines()] == [[i, i, 2 * i, 3 * i] for i in range(n)]


def test_batched_input_hands_over_lists_in_order_and_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "batch.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 2000}}}}
          batcher:
            uses: tests.integration.nodes:BatchSizes
            inputs: {{value: {{from: src.numbers, batch: {{max: 64, wait: 2ms}}}}}}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: batcher.sizes}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished", report.errors
    batches = received(tmp_path)
    assert sum(size for size, _, _ in batches) == 2000
    assert all(1 <= size <= 64 for size, _, _ in batches)
    assert [first for _, first, _ in batches] == sorted(first for _, first, _ in batches)
    assert batches[0][1] == 0 and batches[-1][2] == 1999


def test_latest_policy_skips_to_the_newest_and_counts_what_it_skipped(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "latest.yaml", f"""
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 2000, rate_hz: 4000}}}}
          slow:
            uses: tests.integration.nodes:Slow
            inputs: {{value: {{from: src.numbers, policy: latest}}}}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: slow.out}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    report = launch(dmnflow.compile_graph(g))
    assert report.status == "finished", report.errors
    values = received(tmp_path)
    slow = report.nodes["slow"]
    assert slow.conflated > 0 and slow.messages_in + slow.conflated == report.edges[0].received
    assert values == sorted(values) and len(values) == slow.messages_in


def test_timers_fire_until_the_graph_is_stopped_then_drain(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "timer.yaml", f"""
        nodes:
          ticker: {{uses: tests.integration.nodes:Ticker, timers: {{tick: 10ms}}}}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: ticker.ticks}}
            params: {{path: {tmp_path}/out.jsonl}}
        """)
    report = launch(dmnflow.compile_graph(g), duration_s=0.5)
    assert report.status == "stopped" and report.exit_code == 0, report.errors
    values = received(tmp_path)
    assert len(values) > 3 and values == list(range(len(values)))  # every tick, in order, drained
    assert report.edges[0].lost == 0


def test_a_timer_without_its_handler_is_a_compile_error(tmp_path):
    g = write(tmp_path / "timer.yaml", """
        nodes:
          ticker: {uses: tests.integration.nodes:Ticker, timers: {tock: 10ms}}
          sink: {uses: nodes.basic:Collect, inputs: {values: ticker.ticks}}
        """)
    [issue] = [i for i in dmnflow.validate(g) if i.is_error]
    assert (issue.code, issue.loc.line) == ("missing-handler", 2) and "on_tock" in issue.message


def test_a_node_failing_past_its_restart_policy_fails_the_run_with_its_own_traceback(tmp_path):
    graph = write(tmp_path / "boom.yaml", """
        defaults: {policy: block, restart: {when: on-failure, max_restarts: 1, backoff: 10ms}}
        nodes:
          src: {uses: nodes.basic:Counter, params: {count: 500, rate_hz: 2000}}
          boom: {uses: tests.integration.nodes:Boom, inputs: {value: src.numbers}}
          sink: {uses: nodes.basic:Collect, inputs: {values: boom.out}}
        """)
    report_file = tmp_path / "report.json"
    with launched(graph, "--report", str(report_file)) as run:
        out, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 3, err
    assert "node 'boom', port 'value', seq 49: ValueError: cannot handle 49" in err
    assert 'tests/integration/nodes.py", line' in err and "dmnflow/runtime/worker.py" not in err
    report = json.loads(report_file.read_text())
    assert report["status"] == "failed"
    assert report["nodes"]["boom"]["restarts"] == 1 and report["nodes"]["boom"]["status"] == "failed"
    assert report["nodes"]["boom"]["messages_in"] >= 49  # counts survive the failure
    assert report["nodes"]["src"]["status"] == "stopped"


def test_a_node_missing_its_api_key_fails_start_up_with_one_message_and_no_traceback(tmp_path):
    assert "DMNFLOW_SURELY_UNSET_KEY" not in os.environ
    graph = write(tmp_path / "key.yaml", f"""
        nodes:
          src: {{uses: tests.integration.nodes:NeedsKey, params: {{variable: DMNFLOW_SURELY_UNSET_KEY}}}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: src.out}}, params: {{path: {tmp_path}/out.jsonl}}}}
        """)
    with launched(graph) as run:
        out, err = run.proc.communicate(timeout=60)
        assert run.proc.returncode == 3, err
    assert "Traceback" not in err, err
    assert err.count("DMNFLOW_SURELY_UNSET_KEY") == 1, err  # said once, naming the variable
    assert "during start-up" in err and "set the environment variable DMNFLOW_SURELY_UNSET_KEY" in err


def test_a_second_run_may_not_take_a_live_runs_name(tmp_path):
    graph = write(tmp_path / "ticks.yaml", f"""
        nodes:
          clock: {{uses: tests.integration.nodes:Ticker, timers: {{tick: 50ms}}}}
          sink: {{uses: nodes.basic:Collect, inputs: {{values: clock.ticks}}, params: {{path: {tmp_path}/out.jsonl}}}}
        """)
    from dmnflow.runtime.admin import list_runs

    with launched(graph, "--name", "doc-twins") as first:
        assert wait_until(lambda: any(r.name == "doc-twins" and r.pid == first.proc.pid for r in list_runs()), 60)
        with launched(graph, "--name", "doc-twins") as second:  # asked for by name: refused
            _, err = second.proc.communicate(timeout=60)
            assert second.proc.returncode == 3, err
        assert f"a run named 'doc-twins' is running (pid {first.proc.pid})" in err
        assert "--name" in err and "Traceback" not in err
        # listed from its start on; a Ctrl-C before data flowed would be one during start-up (exit 130)
        assert wait_until(lambda: (tmp_path / "out.jsonl").exists() and (tmp_path / "out.jsonl").stat().st_size, 60)
        first.proc.send_signal(signal.SIGINT)
        first.proc.communicate(timeout=60)
        assert first.proc.returncode == 0


def test_run_dirs_of_dead_supervisors_are_swept(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from dmnflow.runtime.supervisor import sweep_run_dirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = Path(tempfile.mkdtemp(prefix="dmnflow-"))
    (stale / "supervisor.pid").write_text(dead.stdout.strip())
    live = Path(tempfile.mkdtemp(prefix="dmnflow-"))
    (live / "supervisor.pid").write_text(str(os.getpid()))
    compiling = Path(tempfile.mkdtemp(prefix="dmnflow-"))  # a launch killed -9 while it compiled
    (compiling / "launch.pid").write_text(dead.stdout.strip())
    try:
        removed = sweep_run_dirs()
        assert str(stale) in removed and not stale.exists()
        assert str(compiling) in removed and not compiling.exists()
        assert live.exists()
    finally:
        import shutil

        for path in (live, stale, compiling):
            shutil.rmtree(path, ignore_errors=True)


def test_a_plain_loop_source_runs_to_its_end_or_stops_on_request(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)

    def graph(count: int, rate: float) -> Path:
        return write(tmp_path / "loop.yaml", f"""
            defaults: {{policy: block}}
            nodes:
              src: {{uses: tests.integration.nodes:LoopCounter, params: {{count: {count}, rate_hz: {rate}}}}}
              sink:
                uses: nodes.basic:Collect
                inputs: {{values: src.numbers}}
                params: {{path: {tmp_path}/out.jsonl}}
            """)

    report = launch(dmnflow.compile_graph(graph(3000, 0)))
    assert report.status == "finished" and received(tmp_path) == list(range(3000))
    report = launch(dmnflow.compile_graph(graph(1_000_000, 1000)), duration_s=0.5)
    assert report.status == "stopped"  # the stop reached the loop through emit
    values = received(tmp_path)
    assert 0 < len(values) < 1_000_000 and values == list(range(len(values)))


def test_ctrl_c_during_start_up_exits_130_and_leaves_nothing(tmp_path):
    graph = write(tmp_path / "slow.yaml", f"""
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 10}}}}
          sink:
            uses: tests.integration.nodes:SlowSink
            inputs: {{values: src.numbers}}
            params: {{path: {tmp_path}/out.jsonl, delay_s: 20}}
        """)
    with launched(graph) as run:
        pids = run.wait_for_workers({"src", "sink"})
        wait_until(lambda: False, 1.0)  # the sink is in its 20 s setup: start-up is not over
        run.proc.send_signal(signal.SIGINT)
        out, err = run.proc.communicate(timeout=20)
        assert run.proc.returncode == 130, err
        assert "interrupted before the graph started" in err
        assert not any(alive(p) for p in pids.values())


def test_large_tensors_through_shared_memory_stay_intact_while_a_node_keeps_them(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "shm.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: tests.integration.nodes:Frames, params: {{count: 40, size: 1048576}}}}
          keep:
            uses: tests.integration.nodes:Keeper
            inputs: {{frames: src.frames}}
            params: {{path: {tmp_path}/k.json}}
        """)
    plan = dmnflow.compile_graph(g)
    assert plan.node("src").outputs[0].shm_above == 1 << 20
    report = launch(plan)
    assert report.status == "finished", report.errors
    result = json.loads((tmp_path / "k.json").read_text())
    # every frame arrived and none was overwritten although the node kept all 40 (16 slots:
    # the rest went through the socket), and shared memory was really used
    assert result == {"received": 40, "intact": True, "via_shm": result["via_shm"]}
    assert 0 < result["via_shm"] <= 16


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_relayed_slot_is_not_reused_while_the_last_consumer_keeps_it(tmp_path, monkeypatch, policy):
    """src -> relay -> keep, 1 MiB frames: the relay forwards each lease it got (push and pub),
    the keeper keeps all 40; none is overwritten, though src has 16 slots and reuses them."""
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "relay.yaml", f"""
        defaults: {{policy: {policy}}}
        nodes:
          src: {{uses: tests.integration.nodes:Frames, params: {{count: 40, size: 262144}}}}
          relay: {{uses: tests.integration.nodes:Relay, inputs: {{frames: src.frames}}}}
          keep:
            uses: tests.integration.nodes:Keeper
            inputs: {{frames: relay.out}}
            params: {{path: {tmp_path}/k.json}}
        """)
    report = launch(dmnflow.compile_graph(g), duration_s=120)
    assert report.status == "finished", report.errors
    result = json.loads((tmp_path / "k.json").read_text())
    [edge] = [e for e in report.edges if e.dst == "keep.frames"]
    assert result["intact"] and result["received"] + edge.lost == 40 and edge.decode_errors == 0, result
    assert result["via_shm"] > 0


@pytest.mark.parametrize("kind", ["bytes", "tensor"])
def test_large_payloads_reach_several_subscribers_and_replicas_through_shared_memory(tmp_path, monkeypatch, kind):
    """A pub output with two subscribers (drop) and a push output to two replicas (block),
    1 MiB payloads: every one arrives intact although the consumers keep them all."""
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "fan.yaml", f"""
        nodes:
          src: {{uses: tests.integration.nodes:Blobs, params: {{count: 40, kind: {kind}}},
                outputs: {{blobs: {{codec: {"raw" if kind == "bytes" else "tensor"}}}}}}}
          a: {{uses: tests.integration.nodes:Digest, inputs: {{blobs: {{from: src.blobs, policy: drop}}}},
              params: {{path: {tmp_path}/a.json}}}}
          b: {{uses: tests.integration.nodes:Digest, inputs: {{blobs: {{from: src.blobs, policy: drop}}}},
              params: {{path: {tmp_path}/b.json}}}}
          r: {{uses: tests.integration.nodes:Digest, replicas: 2, inputs: {{blobs: {{from: src.blobs, policy: block}}}},
              params: {{path: {tmp_path}/r.json}}}}
        """)
    plan = dmnflow.compile_graph(g)
    binds = {b.pattern: b for b in plan.node("src").outputs[0].binds}
    assert binds["pub"].shm and binds["push"].shm
    report = launch(plan, duration_s=120)
    assert report.status == "finished", report.errors
    got = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b")}
    got.update({f"r{i}": json.loads((tmp_path / f"r.json.{i}").read_text()) for i in (0, 1)})
    fills = sorted(i % 251 for i in range(40))
    for name in ("a", "b"):
        [edge] = [e for e in report.edges if e.dst == f"{name}.blobs"]
        assert got[name]["intact"] and len(got[name]["fills"]) + edge.lost == 40 == edge.sent, (name, got[name])
        assert edge.decode_errors == 0
        assert got[name]["via_shm"] > 0, name
    assert sorted(got["r0"]["fills"] + got["r1"]["fills"]) == fills  # the replicas shared the 40, block: all
    assert got["r0"]["intact"] and got["r1"]["intact"] and got["r0"]["via_shm"] + got["r1"]["via_shm"] > 0


class Looped(Node):
    """Passes numbers on, and takes feedback it ignores (the loop's head)."""

    value = Input(int)
    back = Input(int)
    out = Output(int)

    def on_value(self, value: Any, ctx: Any) -> None:
        ctx.emit("out", value)

    def on_back(self, value: Any, ctx: Any) -> None:
        pass


class SlowToEnd(Node):
    """Echoes back; its teardown takes a while, so its end reaches the loop's head late."""

    value = Input(int)
    back = Output(int)

    def on_value(self, value: Any, ctx: Any) -> None:
        ctx.emit("back", value)

    def teardown(self, ctx: Any) -> None:
        time.sleep(0.5)  # meanwhile the head has ended (a feedback input holds nothing open)


@pytest.mark.parametrize("policy", ["block", "drop"])
def test_a_feedback_end_that_reaches_a_consumer_already_gone_does_not_hang_the_run(tmp_path, monkeypatch, policy):
    monkeypatch.chdir(ROOT)
    g = write(tmp_path / "loop.yaml", f"""
        defaults: {{policy: {policy}}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: 50}}}}
          head:
            uses: tests.integration.test_runtime:Looped
            inputs: {{value: src.numbers, back: {{from: tail.back, feedback: true}}}}
          tail: {{uses: tests.integration.test_runtime:SlowToEnd, inputs: {{value: head.out}}}}
        """)
    report = launch(dmnflow.compile_graph(g), duration_s=30, grace_s=3.0)  # a hang ends as "stopped"
    assert report.status == "finished", (report.status, report.errors)
    assert report.nodes["tail"].messages_in == 50 and report.nodes["head"].status == "done"


class AllocFrames(Node):
    """Writes each frame straight into ``ctx.alloc``'s array (frame i filled with i) and
    counts how many of those arrays lay in shared memory."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        count: int = 40
        size: int = 1 << 20
        path: str

    frames = Output(Tensor("float32", shape=(None,)))

    def run(self, ctx: Any) -> Any:
        import ctypes

        loans = 0
        for i in range(ctx.params.count):
            frame = ctx.alloc("frames", ctx.params.size, "float32")
            loans += isinstance(frame.base.base, ctypes.Array) if frame.base is not None else 0
            frame[:] = i
            yield "frames", frame
        Path(ctx.params.path).write_text(json.dumps({"loans": loans}))


class CheckFrames(Node):
    """Checks each frame on arrival (frame ``seq`` is filled with ``seq``), then drops it."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    frames = Input(Tensor("float32", shape=(None,)))

    def setup(self, ctx: Any) -> None:
        self.seen = self.bad = 0

    def on_frames(self, frame: Any, ctx: Any) -> None:
        self.seen += 1
        self.bad += not bool((frame == ctx.message.seq).all())

    def teardown(self, ctx: Any) -> None:
        Path(ctx.params.path).write_text(json.dumps({"seen": self.seen, "bad": self.bad}))


@pytest.mark.parametrize("keep", [True, False])
def test_tensors_written_into_loaned_slots_arrive_intact_without_a_copy(tmp_path, monkeypatch, keep):
    monkeypatch.chdir(ROOT)
    sink = ("{uses: tests.integration.nodes:Keeper, inputs: {frames: src.frames}, params: {path: %s/k.json}}"
            if keep else "{uses: tests.integration.test_runtime:CheckFrames, inputs: {frames: src.frames}, "
            "params: {path: %s/k.json}}") % tmp_path
    g = write(tmp_path / "alloc.yaml", f"""
        defaults: {{policy: block}}
        nodes:
          src: {{uses: tests.integration.test_runtime:AllocFrames, params: {{count: 40, path: {tmp_path}/s.json}}}}
          sink: {sink}
        """)
    report = launch(dmnflow.compile_graph(g), duration_s=60)
    assert report.status == "finished", report.errors
    loans = json.loads((tmp_path / "s.json").read_text())["loans"]
    result = json.loads((tmp_path / "k.json").read_text())
    if keep:  # the sink keeps every frame: 16 slots, then ordinary arrays through the socket
        assert result == {"received": 40, "intact": True, "via_shm": 16} and loans == 16
    else:  # the sink drops each frame: its slot comes back, and the next frame is written into it
        assert result == {"seen": 40, "bad": 0} and loans >= 16

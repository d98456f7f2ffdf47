"""What safety costs on tcp: CURVE against plain tcp, and at-least-once against the default
delivery, each measured against the other in the same run.

    python bench/network.py [--quick] [--repeat N] [--json out.json] [--only curve|delivery]

- curve: one hop (Ping -> Sink over tcp, ``policy: block``), paced latency (1000 msg/s) and
  flat-out throughput, plain (``security: {insecure: true}``), with the default (CURVE with a
  keypair made at launch) and with ``security: {curve: DIR}``; raw pyzmq PUSH/PULL with and
  without CURVE beside it, so libzmq's own cost of encryption is in the same table.
- delivery: a 5-node ``policy: block`` chain (Counter -> 3 x Scale -> Collect) over ipc,
  ``delivery: at-most-once`` against ``at-least-once``: flat-out msgs/s, paced e2e p50, and
  what a kill -9 of the middle node at 20k msg/s loses at the sink.

Ratios, not absolute figures, are what to compare: the VM's steal time moves absolute figures
by 2x between runs. No asserts: speed is reported, not tested.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
import zmq
from harness import fmt, ratio

SIZES = [64, 64 << 10]


def keys(directory: str) -> str:
    from dmnflow.transport.security import generate_keys

    generate_keys(directory, ["graph"])
    return directory


def dmnflow_hop(size: int, count: int, rate_hz: float, curve: str | None, mode: str) -> harness.Run:
    """``mode``: plain (insecure: no CURVE), run-keys (the default) or curve (the key directory)."""
    nodes = {
        "ping": {"uses": "bench.nodes:Ping", "params": {"count": count, "size": size, "rate_hz": rate_hz,
                                                        "result": "auto"},
                 "outputs": {"out": {"codec": "raw"}}},
        "sink": {"uses": "bench.nodes:Sink", "inputs": {"inp": "ping.out"}, "params": {"result": "auto"}},
    }
    top = {"security": {"curve": curve}} if mode == "curve" else {"security": {"insecure": True}} \
        if mode == "plain" else None
    return harness.run_graph(mode, nodes, {"transport": "tcp", "policy": "block"},
                             timeout_s=60 + (count / rate_hz if rate_hz else 0), top=top)


def raw_pair(size: int, count: int, curve: bool) -> float:
    """Raw pyzmq PUSH -> PULL over tcp, flat out, in this process and a thread: msgs/s."""
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    auth = None
    if curve:
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        pull.curve_secretkey, pull.curve_publickey, pull.curve_server = server_secret, server_public, True
        push.curve_secretkey, push.curve_publickey, push.curve_serverkey = client_secret, client_public, server_public
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    payload = bytes(size)
    done = threading.Event()
    span: list[float] = []

    def receive() -> None:
        pull.recv()
        t0 = time.perf_counter()
        for _ in range(count - 1):
            pull.recv()
        span.append(time.perf_counter() - t0)
        done.set()

    thread = threading.Thread(target=receive)
    thread.start()
    for _ in range(count):
        push.send(payload)
    thread.join(120)
    push.close(0)
    pull.close(0)
    if auth is not None:
        auth.stop()
    ctx.term()
    return (count - 1) / span[0] if span else 0.0


def measure_curve(size: int, quick: bool, directory: str) -> dict[str, Any]:
    lat_n = 500 if quick else 3000
    tp_n = {64: 60_000, 64 << 10: 8_000}[size] // (5 if quick else 1)
    row: dict[str, Any] = {"size": size}
    for mode in ("plain", "run_keys", "curve"):
        lat = dmnflow_hop(size, lat_n, 1000.0, directory, mode.replace("_", "-"))
        row[f"{mode}_p50_us"] = lat.edge("ping", "sink").p50_us
        row[f"{mode}_p99_us"] = lat.edge("ping", "sink").p99_us
        tp = dmnflow_hop(size, tp_n, 0.0, directory, mode.replace("_", "-"))
        row[f"{mode}_msgs_per_s"] = tp.results["sink"]["msgs_per_s"]
        if mode != "run_keys":
            row[f"raw_{mode}_msgs_per_s"] = raw_pair(size, tp_n * 2, mode == "curve")
    row["p50_ratio"] = ratio(row["curve_p50_us"], row["plain_p50_us"])
    row["msgs_ratio"] = ratio(row["curve_msgs_per_s"], row["plain_msgs_per_s"])
    row["run_keys_p50_ratio"] = ratio(row["run_keys_p50_us"], row["plain_p50_us"])
    row["run_keys_msgs_ratio"] = ratio(row["run_keys_msgs_per_s"], row["plain_msgs_per_s"])
    row["raw_msgs_ratio"] = ratio(row["raw_curve_msgs_per_s"], row["raw_plain_msgs_per_s"])
    return row


def chain_nodes(n: int, rate: float, tmp: str, delivery: str) -> str:
    path = Path(tmp, f"chain-{delivery}.yaml")
    path.write_text(harness.graph_yaml("chain", {
        "src": {"uses": "nodes.basic:Counter", "params": {"count": n, "rate_hz": rate}},
        "s1": {"uses": "nodes.basic:Scale", "inputs": {"value": "src.numbers"}},
        "s2": {"uses": "nodes.basic:Scale", "inputs": {"value": "s1.scaled"}},
        "s3": {"uses": "nodes.basic:Scale", "inputs": {"value": "s2.scaled"}},
        "sink": {"uses": "bench.nodes:Sink", "inputs": {"inp": "s3.scaled"}, "params": {"result": f"{tmp}/sink.json"}},
    }, {"policy": "block", "delivery": delivery, "restart": {"policy": "always", "backoff": 0.05}}))
    return str(path)


def run_chain(n: int, rate: float, delivery: str, kill_at: int | None = None) -> dict[str, Any]:
    """The chain as `dmnflow launch`; with ``kill_at``, SIGKILL of s2 once the sink has that many."""
    with tempfile.TemporaryDirectory(prefix="dmnflow-bench-") as tmp:
        report = Path(tmp, "r.json")
        proc = subprocess.Popen([sys.executable, "-m", "dmnflow", "launch", chain_nodes(n, rate, tmp, delivery),
                                 "--report", str(report)], cwd=harness.ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if kill_at is not None:
                victim = _wait_worker(proc.pid, "s2", 60)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    data = json.loads(report.read_text()) if report.exists() else None
                    if data is not None or _sink_seen(proc.pid) >= kill_at:
                        break
                    time.sleep(0.02)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        data = json.loads(report.read_text())
        sink = json.loads(Path(tmp, "sink.json").read_text())
    e2e = next((p for p in data["e2e"] if p["sink"] == "sink"), {})
    return {"received": sink["received"], "msgs_per_s": sink["msgs_per_s"], "e2e_p50_us": e2e.get("p50_us"),
            "lost": n - sink["received"], "resent": sum(e["resent"] for e in data["edges"])}


def _workers(parent: int) -> dict[str, int]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"dmnflow.runtime.worker" in argv:
                found[argv[argv.index(b"dmnflow.runtime.worker") + 2].decode()] = int(entry.name)
    return found


def _wait_worker(parent: int, name: str, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = _workers(parent).get(name)
        if pid:
            return pid
        time.sleep(0.05)
    return None


def _sink_seen(parent: int) -> int:
    """How far the run is: the sink's counters file (the run directory's, read as the supervisor does)."""
    from dmnflow.plan import Plan
    from dmnflow.runtime.files import layout_of
    from dmnflow.transport.stats import N_IN, Counters

    for d in Path(tempfile.gettempdir()).glob("dmnflow-*"):
        try:
            if (d / "supervisor.pid").read_text() != str(parent):
                continue
            plan = Plan.from_json((d / "plan.json").read_text())
        except (OSError, ValueError):
            continue
        layout = layout_of(plan)
        counts = Counters.read(d / "counters" / "sink.0", layout)
        index = [n.name for n in plan.nodes].index("sink")
        return counts[layout.node(index) + N_IN] if counts else 0
    return 0


def measure_delivery(quick: bool) -> dict[str, Any]:
    n_tp = 20_000 if quick else 100_000
    row: dict[str, Any] = {}
    for mode in ("at-most-once", "at-least-once"):
        tp = run_chain(n_tp, 0.0, mode)
        paced = run_chain(2000 if quick else 6000, 2000.0, mode)
        killed = run_chain(40_000, 20_000.0, mode, kill_at=10_000)
        row[mode] = {"msgs_per_s": tp["msgs_per_s"], "paced_e2e_p50_us": paced["e2e_p50_us"],
                     "kill_lost": killed["lost"], "kill_resent": killed["resent"]}
    amo, alo = row["at-most-once"], row["at-least-once"]
    row["msgs_ratio"] = ratio(alo["msgs_per_s"], amo["msgs_per_s"])
    row["p50_ratio"] = ratio(alo["paced_e2e_p50_us"], amo["paced_e2e_p50_us"])
    return row


def spread(values: list[float | None]) -> str:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return "-"
    return f"{statistics.median(vals):.2f} ({vals[0]:.2f}-{vals[-1]:.2f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages: a smoke run")
    ap.add_argument("--repeat", type=int, default=1, help="measure N times; medians and ranges of the ratios")
    ap.add_argument("--only", choices=["curve", "delivery"], default=None)
    ap.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    args = ap.parse_args(argv)
    harness.enter_repo()
    noise = harness.Noise()
    curve_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dmnflow-keys-") as tmp:
        directory = keys(str(Path(tmp, "keys")))
        for _ in range(args.repeat):
            if args.only in (None, "curve"):
                for size in SIZES:
                    curve_rows.append(measure_curve(size, args.quick, directory))
            if args.only in (None, "delivery"):
                delivery_rows.append(measure_delivery(args.quick))
    if curve_rows:
        body = [[harness.human_size(r["size"]),
                 f"{fmt(r['plain_p50_us'])} / {fmt(r['run_keys_p50_us'])} / {fmt(r['curve_p50_us'])}",
                 fmt(r["run_keys_p50_ratio"], ".2f") + "x / " + fmt(r["p50_ratio"], ".2f") + "x",
                 f"{fmt(r['plain_msgs_per_s'], ',.0f')} / {fmt(r['run_keys_msgs_per_s'], ',.0f')} / "
                 f"{fmt(r['curve_msgs_per_s'], ',.0f')}",
                 fmt(r["run_keys_msgs_ratio"], ".2f") + "x / " + fmt(r["msgs_ratio"], ".2f") + "x",
                 fmt(r["raw_msgs_ratio"], ".2f") + "x"] for r in curve_rows]
        print("CURVE against plain tcp (dmnflow hop: plain (insecure) / run keys (the default) / key directory; "
              "raw pyzmq PUSH/PULL beside it)")
        print(harness.table(["size", "p50 us plain / run keys / keys dir", "p50 ratio run keys / keys dir",
                             "msg/s plain / run keys / keys dir", "msg/s ratio run keys / keys dir",
                             "raw pyzmq msg/s ratio curve / plain"], body))
        if args.repeat > 1:
            for size in SIZES:
                group = [r for r in curve_rows if r["size"] == size]
                print(f"  {harness.human_size(size)}: p50 ratio {spread([r['p50_ratio'] for r in group])}, "
                      f"msg/s ratio {spread([r['msgs_ratio'] for r in group])}")
    if delivery_rows:
        body = []
        for r in delivery_rows:
            for mode in ("at-most-once", "at-least-once"):
                m = r[mode]
                body.append([mode, fmt(m["msgs_per_s"], ",.0f"), fmt(m["paced_e2e_p50_us"]), str(m["kill_lost"]),
                             str(m["kill_resent"])])
        print("\ndelivery on a 5-node block chain (ipc): throughput, paced e2e p50, kill -9 of the middle node")
        print(harness.table(["delivery", "msg/s", "e2e p50 us (2000 msg/s)", "lost at the sink", "resent"], body))
        print(f"  at-least-once / at-most-once: msg/s {spread([r['msgs_ratio'] for r in delivery_rows])}, "
              f"e2e p50 {spread([r['p50_ratio'] for r in delivery_rows])}")
    print(f"\nnoise: {noise.summary()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"curve": curve_rows, "delivery": delivery_rows,
                                               "noise": noise.summary()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

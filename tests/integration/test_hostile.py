"""Hostile peers: while a multi-edge tcp graph starts and runs, a fuzzer connects every kind of
socket to every listening endpoint (tcp ports, ipc inputs, the supervisor's control and admin
sockets) and sends random multipart frames, with well-formed-looking hellos, acks, frees,
credits and end-of-stream headers among them. The graph must start, finish, deliver every
message exactly (count and checksum at the sink) and count the junk; nothing may crash.

The fuzzer's loops are bounded in count and time, and it talks only to this run's endpoints
(loopback and the run directory).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import zmq

from .procs import ROOT, run_dir_of, wait_until

SOCKET_TYPES = (zmq.DEALER, zmq.PUSH, zmq.PUB, zmq.SUB, zmq.REQ, zmq.ROUTER, zmq.XSUB)


def _frames(rng: random.Random) -> list[bytes]:
    """One random multipart message, often shaped like something the runtime would send."""
    edge = rng.randint(0, 40)
    token = bytes(rng.choice(b"0123456789abcdef") for _ in range(32))
    now = time.time_ns()
    crafted = [
        [b"\x00hello/%d/%s/0" % (edge, token)],
        [b"\x01\x00hello/%d/%s/0" % (edge, token)],
        [b"\x00ack/%d/%s" % (edge, token)],
        [b"\x02\x00credit/%d/%s/999999999" % (edge, token)],
        [b"\x00free/%d/%s/0/1" % (edge, token)],
        [b"\x00done/%d/%s/12345" % (edge, token)],
        [b"\x00eos", msgpack.packb([1, rng.randint(0, 20), 0, 5, 0, -1, now, None, {b"numbers": 5}, None])],
        [b"\x00eos", msgpack.packb([1, 0, 0, 0])],
        [b"numbers", msgpack.packb([0, rng.randint(0, 20), "x", 0, 0, 0, -2**63, None, None, None]), b"1"],
        [msgpack.packb([2, rng.randint(0, 20), 0, [[0, 0, 0, 0, 0, 0, now, [1], None, None, b"t", b"x"]]])],
        [b"numbers", msgpack.packb([0, 1, 0, 0, 0, 0, now, None, ["shm", "psm_other", 0, 1, 64, None], None])],
        [msgpack.packb(["bound", {"x": 1}])],
        [msgpack.packb(["done", {}])],
        [msgpack.packb(["command", "sink", "swap", {"path": "/etc/passwd"}])],
        [msgpack.packb(["status", 1, 2, 3])],
        [b"\x01"],
        [b"\x01"],
        [b"\x00@%d/" % edge],
    ]
    if rng.random() < 0.6:
        return rng.choice(crafted)
    return [rng.randbytes(rng.choice((0, 1, 3, 17, 200, 3000))) for _ in range(rng.randint(1, 4))]


def fuzz(endpoints: list[str], stop: threading.Event, seed: int, budget: int = 20_000) -> int:
    """Connect every socket type to every endpoint; send until ``stop`` or ``budget`` messages."""
    rng = random.Random(seed)
    ctx = zmq.Context()
    socks = []
    for endpoint in endpoints:
        for kind in SOCKET_TYPES:
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100)
            sock.setsockopt(zmq.SNDTIMEO, 0)
            if kind == zmq.REQ:
                sock.setsockopt(zmq.REQ_RELAXED, 1)
            if kind == zmq.SUB:
                sock.subscribe(b"")
                sock.subscribe(b"\x00hello/3/" + b"0" * 32 + b"/0")
            if kind == zmq.ROUTER:
                sock.setsockopt(zmq.ROUTER_MANDATORY, 0)
            if kind == zmq.DEALER:
                sock.setsockopt(zmq.IDENTITY, rng.randbytes(8))
            sock.connect(endpoint)
            socks.append((kind, sock))
    sent = 0
    deadline = time.monotonic() + 120
    try:
        while not stop.is_set() and sent < budget and time.monotonic() < deadline:
            kind, sock = rng.choice(socks)
            frames = _frames(rng)
            try:
                if kind == zmq.ROUTER:
                    frames = [rng.randbytes(5), *frames]  # to some identity: dropped unless it exists
                if kind != zmq.SUB:
                    sock.send_multipart(frames, zmq.NOBLOCK)
                    sent += 1
                else:
                    with_topic = frames[0][:40]
                    sock.subscribe(with_topic)
                    sock.unsubscribe(with_topic)
                    sent += 1
                if kind in (zmq.SUB, zmq.XSUB, zmq.DEALER):
                    while sock.poll(0):
                        sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            if sent % 200 == 0:
                time.sleep(0.002)
    finally:
        for _, sock in socks:
            sock.close()
        ctx.term()
    return sent


def graph(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "hostile.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: hostile
        defaults: {{transport: tcp, policy: block, queue: 500}}
        nodes:
          src:
            uses: nodes.basic:Counter
            params: {{count: {n}, rate_hz: 1500}}
            outputs: {{numbers: {{port: 0}}}}
          twice: {{uses: nodes.basic:Scale, replicas: 2, params: {{factor: 2.0}}, inputs: {{value: src.numbers}}}}
          local:
            uses: nodes.basic:Scale
            inputs: {{value: twice.scaled}}
            outputs: {{scaled: {{transport: ipc}}}}
          pubbed:
            uses: nodes.basic:Scale
            inputs: {{value: {{from: src.numbers, policy: drop, queue: 100000}}}}
          sink: {{uses: nodes.basic:Collect, params: {{path: {tmp_path}/sink.jsonl}}, inputs: {{values: local.scaled}}}}
          other:
            uses: nodes.basic:Collect
            params: {{path: {tmp_path}/other.jsonl}}
            inputs: {{values: {{from: pubbed.scaled, policy: drop, queue: 100000}}}}
        """).lstrip().replace("port: 0", f"port: {_free_port()}"))
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




def test_a_graph_under_fire_from_hostile_peers_delivers_everything_exactly(tmp_path):
    n = 6000
    proc = subprocess.Popen([sys.executable, "-m", "dmnflow", "launch", str(graph(tmp_path, n)), "--report",
                             str(tmp_path / "r.json")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "NO_COLOR": "1"})
    stop = threading.Event()
    counts: list[int] = []
    threads: list[threading.Thread] = []
    try:
        assert wait_until(lambda: run_dir_of(proc.pid) is not None and (run_dir_of(proc.pid) / "control").exists(), 30)
        run_dir = run_dir_of(proc.pid)
        early = [f"ipc://{run_dir}/control", f"ipc://{run_dir}/admin"]  # from the first moment
        threads.append(threading.Thread(target=lambda: counts.append(fuzz(early, stop, 1)), daemon=True))
        threads[-1].start()
        assert wait_until(lambda: (run_dir / "endpoints.json").exists(), 30)
        endpoints = sorted(set(json.loads((run_dir / "endpoints.json").read_text()).values()))
        assert any(e.startswith("tcp://") for e in endpoints) and any(e.startswith("ipc://") for e in endpoints)
        for seed, chunk in enumerate((endpoints[::2], endpoints[1::2]), start=2):
            threads.append(threading.Thread(target=lambda c=chunk, s=seed: counts.append(fuzz(c, stop, s)),
                                            daemon=True))
            threads[-1].start()
        out, err = proc.communicate(timeout=180)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert sum(counts) > 1000  # the fuzzers did send
    got = [json.loads(line) for line in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert sorted(got) == [2.0 * i for i in range(n)]  # every message once: count and checksum
    assert [json.loads(line) for line in (tmp_path / "other.jsonl").read_text().splitlines()] == \
        [float(i) for i in range(n)]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "finished" and not report["errors"]
    for edge in report["edges"]:
        assert (edge["lost"], edge["decode_errors"]) == (0, 0), edge  # junk never reached an input
    junk = sum(s["junk"] for s in report["sockets"])
    assert junk > 0 and report["control_junk"] > 0  # counted, per socket
    assert all(n["restarts"] == 0 for n in report["nodes"].values())  # nothing crashed
    # every kind of socket was hit, and held: the CURVE ones (tcp on automatic ports, the run's
    # keypair) refused the fuzzers at the handshake, the plain ones (ipc, the fixed port) took junk
    patterns = {s["pattern"] for s in report["sockets"] if s["junk"] or s["refused"]}
    assert patterns == {"stream", "push", "pub"}, report["sockets"]
    curved = {s["bind"] for s in report["sockets"] if s["endpoint"].startswith("tcp://") and s["pattern"] != "stream"}
    assert curved and all(s["refused"] > 0 and s["junk"] == 0 for s in report["sockets"] if s["bind"] in curved)
    # a random frame over a producer socket's 512-byte limit ends the fuzzer's connection: counted
    assert sum(s["disconnects"] for s in report["sockets"] if s["bind"] not in curved) > 0

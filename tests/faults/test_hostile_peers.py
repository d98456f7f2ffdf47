"""Hostile local peers: one that binds the tcp port a killed producer freed and sends data
records in the wire layout, and one that knows the run's shared-memory tag and sends a lease
on a segment of its own. Each gets exactly 0 records accepted, the consumer neither crashes
nor restarts, and the refusal is counted in the report."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.integration.procs import launched, run_dir_of, wait_until

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

FORGED = 1e12  # a value no honest node of these graphs makes
N = 3000




def _chain(tmp_path: Path, security: str) -> Path:
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: squat
        {security}
        defaults: {{transport: tcp}}
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {N}, rate_hz: 1000}}}}
          mid:
            uses: nodes.basic:Scale
            params: {{factor: 2.0}}
            inputs: {{value: src.numbers}}
            restart: {{backoff: 0.5}}
          sink: {{uses: nodes.basic:Collect, params: {{path: {tmp_path}/sink.jsonl}}, inputs: {{values: mid.scaled}}}}
        """).lstrip())
    return path


def _forged(seq: int) -> list[bytes]:
    """A data record in docs/wire.md's long form, for each output number a plan of this size has."""
    now = time.time_ns()
    return [b"", msgpack.packb([0, seq % 3, 0, seq, now, -1, now, None, None, None]), msgpack.packb(FORGED)]


def _squat(endpoint: str, stop: threading.Event, sent: list[int]) -> None:
    """Bind the freed port as soon as it is free (it is an XPUB's: the output's one consumer
    subscribes), and publish forged records to whoever dials it; ``sent`` gets how many."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                sock.bind(endpoint)
                break
            except zmq.ZMQError:
                time.sleep(0.005)
        else:
            return
        seq = 0
        while not stop.is_set():
            try:
                sock.send_multipart(_forged(seq), zmq.NOBLOCK)
                seq += 1
            except zmq.Again:
                pass
            while sock.poll(0):
                sock.recv_multipart()  # a subscription, if anyone got through (none should)
            time.sleep(0.001)
        sent.append(seq)
    finally:
        sock.close()
        ctx.term()


def _security(kind: str, tmp_path: Path) -> str:
    if kind == "insecure":
        return "security: {insecure: true}"
    if kind == "run-keys":
        return ""  # the default: CURVE with a keypair the launch makes
    import zmq.auth

    (tmp_path / "keys").mkdir(mode=0o700)
    zmq.auth.create_certificates(tmp_path / "keys", "graph")
    os.chmod(tmp_path / "keys" / "graph.key_secret", 0o600)
    return "security: {curve: keys}"


@pytest.mark.parametrize("kind", ["run-keys", "user-keys"])
def test_a_squatter_on_a_killed_producers_port_gets_nothing_in(tmp_path, load, kind):
    path = _chain(tmp_path, _security(kind, tmp_path))
    report_file = tmp_path / "r.json"
    stop = threading.Event()
    sent: list[int] = []
    with launched(path, "--report", str(report_file)) as run:
        pids = run.wait_for_workers({"src", "mid", "sink"})
        assert wait_until(lambda: (d := run_dir_of(run.proc.pid)) is not None and (d / "endpoints.json").exists(), 30)
        endpoints = json.loads((run_dir_of(run.proc.pid) / "endpoints.json").read_text())
        [mid_port] = [e for b, e in endpoints.items() if b.startswith("mid.")]
        assert mid_port.startswith("tcp://127.0.0.1:")
        time.sleep(0.5)  # records flow
        squatter = threading.Thread(target=_squat, args=(mid_port, stop, sent), daemon=True)
        os.kill(pids["mid"], signal.SIGKILL)
        squatter.start()
        assert wait_until(lambda: run.workers().get("mid") not in (None, pids["mid"]), 30)
        time.sleep(1.0)  # the squatter keeps sending while the run goes on
        stop.set()
        squatter.join(10)
        _, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 0, err
    assert sent and sent[0] > 100  # it held the port and sent
    values = [json.loads(line) for line in (tmp_path / "sink.jsonl").read_text().splitlines()]
    assert FORGED not in values and all(v == 2.0 * int(v / 2) for v in values)  # 0 forged records
    report = json.loads(report_file.read_text())
    assert report["status"] == "finished" and not report["errors"]
    assert report["nodes"]["sink"]["restarts"] == 0 and report["nodes"]["mid"]["restarts"] == 1
    [into_sink] = [e for e in report["edges"] if e["dst"].startswith("sink.")]
    assert into_sink["refused"] > 0  # the squatter failed the handshake, counted on the edge
    assert into_sink["decode_errors"] == 0
    # every record the sink took is an honest one, and it followed the restarted producer to its new
    # port: the last record came (what the killed incarnation had in flight may be lost: at most once)
    assert into_sink["received"] == len(values) and values[-1] == 2.0 * (N - 1)


_ATTACKER = """
import sys
from multiprocessing import resource_tracker, shared_memory
name = sys.argv[1]
seg = shared_memory.SharedMemory(create=True, size=1 << 20, name=name)  # a name the producer could have made
resource_tracker.unregister(seg._name, "shared_memory")  # the test unlinks it
seg.buf[:] = b"\\x07" * (1 << 20)
seg.close()
"""


def test_a_forged_shared_memory_lease_from_a_peer_that_knows_the_tag_is_refused(tmp_path, load):
    """The peer knows the run's tag (it is in every segment name in /dev/shm), makes a segment
    of a name the producer could have used, and gets leases for it onto the edge (with no MAC,
    a made-up one, and one keyed with another run's token): each is refused before anything is
    mapped and counted on the edge, and the producer's own leases still arrive."""
    import subprocess
    import sys
    from multiprocessing import shared_memory

    import numpy as np

    from dmnflow.node import Tensor
    from dmnflow.transport.shm import lease_key, lease_mac, segment_prefix
    from tests.unit.test_transport import EDGE, SRC, TAG, drain_headers, header, wire

    name = segment_prefix(TAG, SRC) + "5a" * 8
    subprocess.run([sys.executable, "-c", _ATTACKER, name], check=True, timeout=60)
    ctx = zmq.Context()
    try:
        outlet, inlet = wire(ctx, "tensor", Tensor("uint8", (None,)), f"ipc://{tmp_path}/edge", "push",
                             transport="ipc", shm_above=1 << 20, max_bytes=2 << 20, policy="block")
        router = outlet.channels[0]
        size, meta = 1 << 20, ["np", "uint8", [1 << 20]]
        forged = [None, b"\x00" * 16, lease_mac(lease_key(b"another run's token"), name, 0, 1, size)]
        for i, mac in enumerate(forged * 100):
            lease = ["shm", name, 0, 1, size, meta] if mac is None else ["shm", name, 0, 1, size, mac, meta]
            router.sock.send_multipart([router.peers[EDGE], b"out", header(i, lease)])
        for i in range(20):  # the producer's own, through its slots
            outlet.send(np.full(1 << 20, i % 5, dtype=np.uint8), None, 1, 0, None)
        outlet.flush()
        got = drain_headers(inlet, 20)
        assert sorted(int(v[0]) for v, _ in got) == sorted(i % 5 for i in range(20))  # 0 forged values (7s)
        assert inlet.stats[EDGE].decode_errors == 300  # each forged lease refused and counted
        assert all(n != name for n in inlet.shm.maps)  # the peer's segment was never mapped
        del got
        inlet.close()
        outlet.close()
    finally:
        ctx.destroy(linger=0)
        seg = shared_memory.SharedMemory(name=name)
        seg.close()
        seg.unlink()


def test_one_oversize_frame_cuts_its_connection_and_the_report_counts_the_cut(tmp_path, load):
    """libzmq ends the connection of a peer that sends a message over the socket's limit, and
    drops what the peer had queued behind it; junk alone would undercount, so the cut is counted
    on the socket (``disconnects``), exactly once per oversize message."""
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent(f"""
        graph: oversize
        nodes:
          src: {{uses: nodes.basic:Counter, params: {{count: {N}, rate_hz: 1000}}}}
          mid: {{uses: nodes.basic:Scale, inputs: {{value: src.numbers}}}}
          sink: {{uses: nodes.basic:Collect, params: {{path: {tmp_path}/sink.jsonl}}, inputs: {{values: mid.scaled}}}}
        """).lstrip())
    report_file = tmp_path / "r.json"
    with launched(path, "--report", str(report_file)) as run:
        run.wait_for_workers({"src", "mid", "sink"})
        assert wait_until(lambda: (d := run_dir_of(run.proc.pid)) is not None and (d / "endpoints.json").exists(), 30)
        endpoints = json.loads((run_dir_of(run.proc.pid) / "endpoints.json").read_text())
        [mid_bind] = [e for b, e in endpoints.items() if b.startswith("mid.")]
        ctx = zmq.Context()
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 1000)
        peer.connect(mid_bind)
        peer.send(b"\x00" + bytes(4096))  # a producer socket takes control messages of 512 bytes at most
        for _ in range(5):
            peer.send(b"\x00junk")  # queued behind it: may be dropped with the connection
        time.sleep(0.5)
        peer.close()
        ctx.term()
        _, err = run.proc.communicate(timeout=120)
    assert run.proc.returncode == 0, err
    report = json.loads(report_file.read_text())
    [sock] = [s for s in report["sockets"] if s["outputs"] == ["mid.scaled"]]
    assert sock["disconnects"] == 1 and sock["junk"] <= 5
    assert sum(s["disconnects"] for s in report["sockets"]) == 1  # the graph's own connections held
    assert report["nodes"]["sink"]["messages_in"] == N

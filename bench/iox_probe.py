"""Can iceoryx2 carry a busy edge at <= 30 us one-way on this machine? Raw, in one run.

    python bench/iox_probe.py [--count 3000] [--rate 1000] [--size 64] [--repeat 3]

Two processes, each pinned to a core of its own: a source paced at ``--rate`` (absolute
deadlines and ``time.sleep``, as ``bench.nodes.Ping``) stamps ``time.time_ns()`` into a
``--size`` byte message; the sink spins (no sleep, no poll timeout) and subtracts the stamp
from ``time.time_ns()`` on receipt. Three ways, interleaved per repeat:

- ``iox``: iceoryx2 publish-subscribe (``Slice[c_uint8]``, shared memory, ``ServiceType.Ipc``),
  the sink spinning on ``Subscriber.receive()``;
- ``zmq-spin``: pyzmq PUSH/PULL over ipc, the sink spinning on ``recv(NOBLOCK)`` (what a
  ``busy: true`` node does today);
- ``zmq-poll``: the same pair, the sink sleeping in ``poll`` (the default mode).

Prints exact p50/p99 (microseconds) per way and the ratio to ``zmq-poll``. No asserts: it
reports. Needs ``iceoryx2`` (``pip install iceoryx2==0.10.0``, the ``iox`` extra).
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import statistics
import struct
import tempfile
import time
import uuid
from typing import Any

import numpy as np

_MP = mp.get_context("spawn")
STAMP = struct.Struct("<qq")  # send time (ns), sequence number


def _pin(core: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core % len(cores)]})


def _paced(count: int, rate_hz: float) -> Any:
    period = 1.0 / rate_hz
    due = time.perf_counter()
    for i in range(count):
        due += period
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


def _iox_node() -> Any:
    import iceoryx2 as iox

    iox.set_log_level(iox.LogLevel.Error)
    return iox, iox.NodeBuilder.new().create(iox.ServiceType.Ipc)


def _iox_service(iox: Any, node: Any, name: str) -> Any:
    return (node.service_builder(iox.ServiceName.new(name)).publish_subscribe(iox.Slice[ctypes.c_uint8])
            .subscriber_max_buffer_size(64).history_size(0).enable_safe_overflow(False).open_or_create())


def source(way: str, where: str, size: int, count: int, rate: float, q: Any, go: Any) -> None:
    _pin(0)
    body = bytes(size - STAMP.size)
    now, pack = time.time_ns, STAMP.pack
    if way == "iox":
        iox, node = _iox_node()
        svc = _iox_service(iox, node, where)
        pub = svc.publisher_builder().initial_max_slice_len(max(size, 64)).create()
        q.put("ready")
        go.wait()
        while svc.dynamic_config.number_of_subscribers < 1:
            time.sleep(0.01)
        pub.update_connections()
        time.sleep(0.2)
        memmove = ctypes.memmove
        for i in _paced(count, rate):
            msg = pack(now(), i) + body
            sample = pub.loan_slice_uninit(size)
            memmove(sample.payload_ptr, msg, size)
            sample.assume_init().send()
        return
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.bind(where)
    q.put("ready")
    go.wait()
    time.sleep(0.2)
    for i in _paced(count, rate):
        sock.send(pack(now(), i) + body, copy=False)
    time.sleep(0.5)
    sock.close(linger=1000)
    ctx.term()


def sink(way: str, where: str, count: int, rate: float, q: Any, go: Any) -> None:
    _pin(1)
    lat: list[int] = []
    now, unpack = time.time_ns, STAMP.unpack_from
    deadline = time.monotonic() + 10 + 2 * count / rate
    if way == "iox":
        iox, node = _iox_node()
        svc = _iox_service(iox, node, where)
        sub = svc.subscriber_builder().create()
        q.put("ready")
        go.wait()
        receive, string_at = sub.receive, ctypes.string_at
        while len(lat) < count and time.monotonic() < deadline:
            sample = receive()
            if sample is None:
                continue
            t = now()
            sent, _ = unpack(string_at(sample.payload_ptr, STAMP.size))
            sample.delete()
            lat.append(t - sent)
    else:
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.connect(where)
        q.put("ready")
        go.wait()
        spin = way == "zmq-spin"
        while len(lat) < count and time.monotonic() < deadline:
            if not spin and not sock.poll(100):
                continue
            try:
                frame = sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
            t = now()
            sent, _ = unpack(frame.buffer)
            lat.append(t - sent)
        sock.close(linger=0)
        ctx.term()
    q.put(lat)


def one(way: str, size: int, count: int, rate: float, tmp: str) -> dict[str, float]:
    where = f"dmnflow-probe/{uuid.uuid4().hex[:8]}" if way == "iox" else f"ipc://{tmp}/{uuid.uuid4().hex[:8]}"
    q, go = _MP.Queue(), _MP.Event()
    procs = [_MP.Process(target=sink, args=(way, where, count, rate, q, go)),
             _MP.Process(target=source, args=(way, where, size, count, rate, q, go))]
    try:
        for p in procs:
            p.start()
        for _ in procs:
            assert q.get(timeout=30) == "ready"
        go.set()
        lat = np.asarray(q.get(timeout=60 + count / rate), dtype=np.float64) / 1e3
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
            if p.is_alive():
                p.kill()
                p.join()
    warm = lat[min(100, len(lat) // 10):]  # the first messages pay for page faults and connects
    p50, p99 = np.percentile(warm, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "n": float(len(lat))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    ways = ["iox", "zmq-spin", "zmq-poll"]
    got: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    with tempfile.TemporaryDirectory(prefix="iox-probe-") as tmp:
        for r in range(args.repeat):
            for way in ways:
                row = one(way, args.size, args.count, args.rate, tmp)
                got[way].append(row)
                print(f"round {r + 1} {way:9s} p50 {row['p50']:7.1f} us  p99 {row['p99']:7.1f} us  n {row['n']:.0f}",
                      flush=True)
    base = statistics.median(x["p50"] for x in got["zmq-poll"])
    print(f"\n{args.size} B paced at {args.rate:.0f} msg/s, {args.count} msgs, median of {args.repeat} rounds; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'way':9s} {'p50 us':>8s} {'p99 us':>8s} {'p50 / zmq-poll':>15s}")
    for way in ways:
        p50 = statistics.median(x["p50"] for x in got[way])
        p99 = statistics.median(x["p99"] for x in got[way])
        print(f"{way:9s} {p50:8.1f} {p99:8.1f} {p50 / base:15.2f}")


if __name__ == "__main__":
    main()

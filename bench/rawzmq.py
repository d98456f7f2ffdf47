"""The raw pyzmq baselines the benchmarks compare dmnflow with, measured in the same run.

Every baseline runs its stages as separate processes (``multiprocessing``, spawn), paced
and stamped like the dmnflow nodes in ``bench/nodes.py``: a ``time.time_ns()`` stamp is
taken just before the send and subtracted just after the receive; latencies go into the
same log-bucket ``Histogram`` the dmnflow report uses, so both sides are quantised alike.
Each child is stopped in ``finally``: an Event, then join, terminate, kill.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import zmq

from dmnflow.transport import Histogram

_MP = mp.get_context("spawn")
STAMP = struct.Struct("<qq")  # send time (ns), sequence number
IDLE_END_S = 1.0  # a receiver on a lossy pattern ends this long after the source finished and nothing came


def exact_us(latencies_ns: list[int]) -> dict[str, float]:
    """Exact p50/p99 (microseconds) of a list of latencies in nanoseconds (as bench.nodes.Sink)."""
    p50, p99 = np.percentile(np.asarray(latencies_ns, dtype=np.float64), [50, 99]) / 1e3
    return {"exact_p50_us": round(float(p50), 1), "exact_p99_us": round(float(p99), 1)}


def payload_of(size: int, kind: str) -> Any:
    if kind == "tensor":
        return np.arange(size // 4, dtype=np.float32)
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def endpoint_for(transport: str, name: str, tmpdir: str) -> str:
    return f"ipc://{tmpdir}/{name}" if transport == "ipc" else "tcp://127.0.0.1:*"


def _pin(cpus: list[int] | None) -> None:
    if cpus:  # before any zmq.Context exists, so the I/O thread inherits it
        os.sched_setaffinity(0, cpus)


def _pace(count: int, rate_hz: float) -> Iterator[int]:
    """The same pacing as bench.nodes.Ping: absolute deadlines, sleep, catch up when late."""
    period = 1.0 / rate_hz if rate_hz else 0.0
    due = time.perf_counter()
    for i in range(count):
        if period:
            due += period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield i


# ---------------------------------------------------------------- processes

def _source(bind: str, pattern: str, size: int, kind: str, count: int, rate_hz: float, stamped: bool,
            cpus: list[int] | None, q: Any, go: Any, stop: Any, done: Any) -> None:
    _pin(cpus)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB if pattern == "pub" else zmq.PUSH)
    sock.bind(bind)
    q.put(("bound", sock.getsockopt_string(zmq.LAST_ENDPOINT)))
    if pattern == "pub":
        sock.recv()  # the subscriber's subscription: it has joined, nothing is sent into the void
    q.put(("ready", "source"))
    go.wait()
    payload = payload_of(size, kind)
    now = time.time_ns
    pack = STAMP.pack
    t0 = now()
    if stamped:
        for i in _pace(count, rate_hz):
            sock.send_multipart([pack(now(), i), payload], copy=False)
    else:
        for _ in _pace(count, rate_hz):
            sock.send(payload, copy=False)
    q.put(("sent", {"t_first_ns": t0, "t_last_ns": now()}))
    done.set()
    stop.wait()
    sock.close(linger=0)
    ctx.term()


def _relay(bind: str, pattern: str, cpus: list[int] | None, q: Any, conn: Any, stop: Any) -> None:
    _pin(cpus)
    ctx = zmq.Context()
    out = ctx.socket(zmq.XPUB if pattern == "pub" else zmq.PUSH)
    out.bind(bind)
    q.put(("bound", out.getsockopt_string(zmq.LAST_ENDPOINT)))
    upstream = conn.get()
    inp = ctx.socket(zmq.SUB if pattern == "pub" else zmq.PULL)
    if pattern == "pub":
        inp.setsockopt(zmq.SUBSCRIBE, b"")
    inp.connect(upstream)
    if pattern == "pub":
        out.recv()  # our subscriber joined
    q.put(("ready", "relay"))
    while not stop.is_set():
        if inp.poll(100):
            for _ in range(256):
                try:
                    frames = inp.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                out.send_multipart(frames, copy=False)
    inp.close(linger=0)
    out.close(linger=0)
    ctx.term()


def _sink(pattern: str, count: int, stamped: bool, cpus: list[int] | None, q: Any, conn: Any,
          done: Any, stop: Any) -> None:
    _pin(cpus)
    ctx = zmq.Context()
    upstream = conn.get()
    sock = ctx.socket(zmq.SUB if pattern == "pub" else zmq.PULL)
    if pattern == "pub":
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(upstream)
    q.put(("ready", "sink"))
    hist = Histogram()
    lat: list[int] = []
    n = nbytes = 0
    t_first = t_last = 0
    last_seq = -1
    gaps = 0
    now = time.time_ns
    unpack = STAMP.unpack_from
    idle_since = None
    while n < count and not stop.is_set():
        if not sock.poll(50):
            if done.is_set():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since > IDLE_END_S:
                    break
            continue
        idle_since = None
        while n < count:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t = now()
            if not n:
                t_first = t
            t_last = t
            n += 1
            nbytes += len(frames[-1])
            if stamped:
                sent, seq = unpack(frames[0].buffer)
                hist.add(t - sent)
                lat.append(t - sent)
                gaps += seq - last_seq - 1
                last_seq = seq
    span = (t_last - t_first) / 1e9
    exact = exact_us(lat) if lat else {}
    q.put(("result", {**exact, "received": n, "bytes": nbytes, "gaps": gaps, "hist": hist.to_sparse(),
                      "msgs_per_s": (n - 1) / span if span > 0 else None}))
    sock.close(linger=0)
    ctx.term()


# ---------------------------------------------------------------- the parent

@contextmanager
def _children() -> Iterator[tuple[list[Any], Any]]:
    procs: list[Any] = []
    stop = _MP.Event()
    try:
        yield procs, stop
    finally:
        stop.set()
        for p in procs:
            p.join(2.0)
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join()


def _get(q: Any, kind: str, timeout: float = 30.0) -> Any:
    msg = q.get(timeout=timeout)
    if msg[0] != kind:
        raise RuntimeError(f"raw baseline: expected {kind!r}, got {msg!r}")
    return msg[1]


def chain(*, transport: str, pattern: str, stages: int, size: int, kind: str, count: int, rate_hz: float,
          stamped: bool, tmpdir: str, pins: list[list[int] | None] | None = None,
          timeout_s: float = 120.0) -> dict[str, Any]:
    """A source, ``stages - 1`` relays and a sink, each a process; ``stages=1`` is a single hop.

    Returns the sink's result: received, gaps (missing sequence numbers; stamped only),
    msgs_per_s (first to last receive), p50_us/p99_us (stamped only), and the source's
    send span.
    """
    pins = pins or [None] * (stages + 1)
    with _children() as (procs, stop):
        q, go, done = _MP.Queue(), _MP.Event(), _MP.Event()
        src = _MP.Process(target=_source, args=(endpoint_for(transport, "s0", tmpdir), pattern, size, kind, count,
                                                rate_hz, stamped, pins[0], q, go, stop, done), daemon=True)
        src.start()
        procs.append(src)
        readies = 0
        upstream = _get(q, "bound")
        for i in range(1, stages):
            conn = _MP.Queue()
            conn.put(upstream)
            relay = _MP.Process(target=_relay, args=(endpoint_for(transport, f"s{i}", tmpdir), pattern, pins[i], q,
                                                     conn, stop), daemon=True)
            relay.start()
            procs.append(relay)
            msg = q.get(timeout=30)
            while msg[0] != "bound":  # the previous stage's "ready" may come first
                readies += msg[0] == "ready"
                msg = q.get(timeout=30)
            upstream = msg[1]
        conn = _MP.Queue()
        conn.put(upstream)
        sink = _MP.Process(target=_sink, args=(pattern, count, stamped, pins[stages], q, conn, done, stop),
                           daemon=True)
        sink.start()
        procs.append(sink)
        while readies < stages + 1:
            msg = q.get(timeout=30)
            if msg[0] == "ready":
                readies += 1
        time.sleep(0.05)  # let push connections finish their handshakes (pub ones are confirmed above)
        go.set()
        sent = result = None
        deadline = time.monotonic() + timeout_s
        while result is None or sent is None:
            msg = q.get(timeout=max(0.1, deadline - time.monotonic()))
            if msg[0] == "sent":
                sent = msg[1]
            elif msg[0] == "result":
                result = msg[1]
    hist = Histogram.from_sparse(result.pop("hist"))
    p50, p99 = hist.quantile(0.5), hist.quantile(0.99)
    result["p50_us"] = None if p50 is None else round(p50 / 1e3, 1)
    result["p99_us"] = None if p99 is None else round(p99 / 1e3, 1)
    result["lost"] = count - result["received"]
    result["source"] = sent
    return result

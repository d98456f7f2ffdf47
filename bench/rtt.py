"""Back-to-back round trips, ping -> pong -> ping, dmnflow against raw pyzmq in the same run.

    python bench/rtt.py [--quick] [--repeat N] [--transports ipc,tcp] [--sizes 64,4096] [--json out.json]

A paced benchmark (bench/hop.py) hides the framework behind the ~70 us of waking an idle
process; here every message goes out the moment the previous one came back, so what the
framework costs per hop shows. For each transport, size and payload kind:

- raw pyzmq PAIR and DEALER/ROUTER, the pong blocking in ``recv``, the ping polling without
  blocking (``spin``), as dmnflow's ping does, and blocking (``block``), as most code does;
- dmnflow ``policy: drop`` (XPUB/SUB) and ``policy: block`` (ROUTER/DEALER): a source that
  yields a turn while it waits (``bench.nodes:RttPing``) and a node that echoes
  (``bench.nodes:Pong``), each in its own process.

Ratios are against raw PAIR with the same ping mode as dmnflow's (spin); p50 and p99 are
exact. Bytes up to 64 KiB; tensors (float32) from 64 KiB; ``--kinds bytes,buffer,tensor``
adds bytes on ports typed ``Buffer`` (views, not copies, on the way in). No asserts: speed
is reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import harness
import numpy as np
import zmq
from harness import fmt, human_size, ratio

_MP = mp.get_context("spawn")
SIZES = [64, 4096, 64 << 10, 1 << 20, 4 << 20]


def _payload(size: int, kind: str) -> Any:
    return np.arange(size // 4, dtype=np.float32) if kind == "tensor" else bytes(size)


def _pong(endpoint: str, ready: Any, stop: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.connect(endpoint)
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            frames = sock.recv_multipart(copy=False)
            sock.send_multipart(frames, copy=False)
    sock.close(0)
    ctx.term()


def raw_rtt(transport: str, size: int, kind: str, count: int, warmup: int, spin: bool) -> dict[str, Any]:
    """PAIR to PAIR: the pong blocks in poll; the ping polls without blocking (spin) or blocks."""
    with tempfile.TemporaryDirectory(prefix="raw-rtt-") as tmp:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PAIR)
        endpoint = f"ipc://{tmp}/rtt" if transport == "ipc" else "tcp://127.0.0.1:*"
        sock.bind(endpoint)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        ready, stop = _MP.Event(), _MP.Event()
        child = _MP.Process(target=_pong, args=(endpoint, ready, stop), daemon=True)
        child.start()
        try:
            ready.wait(30)
            payload = _payload(size, kind)
            rtts = []
            for _ in range(warmup + count):
                t0 = time.perf_counter_ns()
                sock.send(payload, copy=False)
                if spin:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                            break
                        except zmq.Again:
                            continue
                else:
                    frames = sock.recv_multipart(copy=False)
                rtts.append(time.perf_counter_ns() - t0)
                del frames
            del rtts[:warmup]
        finally:
            stop.set()
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
            sock.close(0)
            ctx.term()
    return _exact(rtts)


def raw_router_rtt(transport: str, size: int, kind: str, count: int, warmup: int, spin: bool) -> dict[str, Any]:
    """DEALER/ROUTER: the pong (DEALER) says hello first, so the ROUTER knows whom to address."""
    with tempfile.TemporaryDirectory(prefix="raw-rtt-") as tmp:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        endpoint = f"ipc://{tmp}/rtt" if transport == "ipc" else "tcp://127.0.0.1:*"
        sock.bind(endpoint)
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        ready, stop = _MP.Event(), _MP.Event()
        child = _MP.Process(target=_dealer_pong, args=(endpoint, ready, stop), daemon=True)
        child.start()
        try:
            ready.wait(30)
            peer, _ = sock.recv_multipart()  # its hello
            payload = _payload(size, kind)
            rtts = []
            for _ in range(warmup + count):
                t0 = time.perf_counter_ns()
                sock.send(peer, zmq.SNDMORE)
                sock.send(payload, copy=False)
                if spin:
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                            break
                        except zmq.Again:
                            continue
                else:
                    frames = sock.recv_multipart(copy=False)
                rtts.append(time.perf_counter_ns() - t0)
                del frames
            del rtts[:warmup]
        finally:
            stop.set()
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
            sock.close(0)
            ctx.term()
    return _exact(rtts)


def _dealer_pong(endpoint: str, ready: Any, stop: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(b"hello")
    ready.set()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if poller.poll(100):
            frames = sock.recv_multipart(copy=False)
            sock.send_multipart(frames, copy=False)
    sock.close(0)
    ctx.term()


def _exact(rtts: list[int]) -> dict[str, Any]:
    p50, p99 = np.percentile(np.asarray(rtts, dtype=np.float64), [50, 99]) / 1e3
    return {"p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1), "n": len(rtts)}


def dmnflow_rtt(transport: str, policy: str, size: int, kind: str, count: int, warmup: int,
                **where: Any) -> dict[str, Any]:
    """RttPing <-> Pong; ``where``: ``place``, ``backend``, ``address`` of ``harness.run_graph``."""
    codec = "tensor" if kind == "tensor" else "raw"
    nodes = {
        "ping": {"uses": "bench.nodes:RttPing",
                 "params": {"count": count, "warmup": warmup, "size": size, "kind": kind, "result": "auto"},
                 "inputs": {"back": {"from": "pong.y", "feedback": True}}, "outputs": {"out": {"codec": codec}}},
        "pong": {"uses": "bench.nodes:Pong", "params": {"kind": kind}, "inputs": {"x": "ping.out"},
                 "outputs": {"y": {"codec": codec}}},
    }
    run = harness.run_graph("rtt", nodes, {"transport": transport, "policy": policy}, timeout_s=120, **where)
    ping = run.results["ping"]
    return {"p50_us": ping["exact_p50_us"], "p99_us": ping["exact_p99_us"], "n": ping["n"]}


def kinds_for(size: int, kinds: list[str] | None = None) -> list[str]:
    """bytes below 64 KiB, bytes and tensors from there (or ``--kinds``: ``buffer`` is bytes on
    ports typed ``Buffer``, which receive views instead of copies)."""
    default = ["bytes"] if size < 64 << 10 else ["bytes", "tensor"]
    return default if kinds is None else [k for k in kinds if k != "tensor" or size >= 64 << 10]


def load(size: int, quick: bool) -> tuple[int, int]:
    """(count, warmup) round trips of one measurement."""
    count = (300 if quick else 2000) if size <= 64 << 10 else (60 if quick else 300)
    return count, max(20, count // 10)


def measure(transport: str, size: int, kind: str, quick: bool) -> dict[str, Any]:
    count, warmup = load(size, quick)
    row: dict[str, Any] = {"transport": transport, "size": size, "kind": kind}
    row["raw_pair_spin"] = raw_rtt(transport, size, kind, count, warmup, spin=True)
    row["raw_pair_block"] = raw_rtt(transport, size, kind, count, warmup, spin=False)
    row["raw_router_spin"] = raw_router_rtt(transport, size, kind, count, warmup, spin=True)
    for policy in ("drop", "block"):
        row[f"df_{policy}"] = dmnflow_rtt(transport, policy, size, kind, count, warmup)
    base = row["raw_pair_spin"]["p50_us"]
    row["ratio_drop"] = ratio(row["df_drop"]["p50_us"], base)
    row["ratio_block"] = ratio(row["df_block"]["p50_us"], base)
    row["ratio_block_router"] = ratio(row["df_block"]["p50_us"], row["raw_router_spin"]["p50_us"])
    return row


def render(rows: list[dict[str, Any]]) -> str:
    header = ["transport", "size", "kind", "raw PAIR spin p50/p99", "raw PAIR block p50", "raw ROUTER spin p50",
              "dmnflow drop p50/p99", "dmnflow block p50/p99", "drop / raw", "block / raw", "block / raw ROUTER"]
    body = []
    for r in rows:
        def pp(d: dict[str, Any]) -> str:
            return f"{fmt(d['p50_us'])} / {fmt(d['p99_us'])}"
        body.append([r["transport"], human_size(r["size"]), r["kind"], pp(r["raw_pair_spin"]),
                     fmt(r["raw_pair_block"]["p50_us"]), fmt(r["raw_router_spin"]["p50_us"]), pp(r["df_drop"]),
                     pp(r["df_block"]), fmt(r["ratio_drop"], ".2f") + "x", fmt(r["ratio_block"], ".2f") + "x",
                     fmt(r["ratio_block_router"], ".2f") + "x"])
    return harness.table(header, body)


def render_spread(rows: list[dict[str, Any]]) -> str:
    def cell(xs: list[float | None]) -> str:
        vals = sorted(x for x in xs if x is not None)
        return f"{statistics.median(vals):.2f} ({vals[0]:.2f}-{vals[-1]:.2f})" if vals else "-"

    body = []
    for key in dict.fromkeys((r["transport"], r["size"], r["kind"]) for r in rows):
        group = [r for r in rows if (r["transport"], r["size"], r["kind"]) == key]
        body.append([key[0], human_size(key[1]), key[2], str(len(group)), cell([r["ratio_drop"] for r in group]),
                     cell([r["ratio_block"] for r in group]),
                     cell([r["raw_pair_spin"]["p50_us"] for r in group])])
    return harness.table(["transport", "size", "kind", "runs", "drop / raw p50", "block / raw p50", "raw p50 us"], body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer round trips, ipc, 64 B and 64 KiB")
    ap.add_argument("--repeat", type=int, default=1, help="measure every row N times, interleaved")
    ap.add_argument("--transports", default=None, help="comma-separated: ipc,tcp")
    ap.add_argument("--sizes", default=None, help="comma-separated byte counts")
    ap.add_argument("--kinds", default=None, help="comma-separated: bytes,buffer,tensor")
    ap.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    args = ap.parse_args(argv)
    harness.enter_repo()
    transports = args.transports.split(",") if args.transports else (["ipc"] if args.quick else ["ipc", "tcp"])
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([64, 64 << 10] if args.quick else SIZES)
    noise = harness.Noise()
    rows = []
    for _ in range(args.repeat):
        for transport in transports:
            for size in sizes:
                for kind in kinds_for(size, args.kinds.split(",") if args.kinds else None):
                    try:
                        rows.append(measure(transport, size, kind, args.quick))
                    except Exception as exc:
                        print(f"  {transport} {human_size(size)} {kind}: FAILED: {exc}", file=sys.stderr, flush=True)
                        continue
                    print(render(rows[-1:]).splitlines()[-1], flush=True)
    print(render(rows))
    if args.repeat > 1:
        print("\nmedian (min-max) over the repeats")
        print(render_spread(rows))
    print(f"\nnoise: {noise.summary()}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "noise": noise.summary()}, f, indent=2)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

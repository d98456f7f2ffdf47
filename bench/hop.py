"""One hop: dmnflow (Ping -> Sink) against raw pyzmq on the same transport, in one run.

    python bench/hop.py [--quick] [--json out.json] [--transports ipc,tcp] [--sizes 64,1024]

For each transport and size:

- latency: a paced source (1000 msg/s up to 64 KiB, 200 msg/s at 1 MiB, 100 msg/s at
  4 MiB), ``policy: block`` so nothing is lost. dmnflow's p50/p99 are the report's edge
  figures (header send stamp -> receipt, before decoding); the raw baseline is a PUSH/PULL
  pair in two processes stamping ``time.time_ns()`` into the message. Both go through the
  same log-bucket histogram (buckets ~9% wide, so the ratio moves in ~9% steps). The
  ``exact`` columns are exact percentiles: raw send stamp -> receipt, against dmnflow's
  source emit -> sink handler (``Sink`` keeps every latency), which adds encode, header,
  decode and dispatch: the whole framework cost of a hop.
- throughput: a flat-out source, ``policy: block`` (nothing lost), against raw PUSH/PULL
  flat out (default HWM); msgs/s from the sink's first to last receive.

Up to 64 KiB the payload is ``bytes`` (codec raw); from 1 MiB a float32 array (codec tensor).
Absolute figures move 2x with the VM's steal time: compare the ratios, measured in the
same run. No asserts: speed is reported, not tested.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Any

import harness
import rawzmq
from harness import fmt, human_size, ratio

SIZES = [64, 1024, 64 << 10, 1 << 20, 4 << 20]


def latency_load(size: int, quick: bool) -> tuple[float, int]:
    """(rate_hz, count) of the paced latency run."""
    rate, seconds = (1000.0, 3.0) if size <= 64 << 10 else (200.0, 2.0) if size <= 1 << 20 else (100.0, 2.0)
    if quick:
        seconds /= 4
    return rate, int(rate * seconds)


def throughput_count(size: int, quick: bool, raw: bool) -> int:
    base = {64: 60_000, 1024: 60_000, 64 << 10: 10_000, 1 << 20: 1_000, 4 << 20: 300}.get(size, 1000)
    if raw:
        base *= 3 if size <= 1024 else 2  # raw is faster: keep each run ~1 s
    return max(50, base // 5) if quick else base


def kind_of(size: int) -> str:
    return "tensor" if size >= 1 << 20 else "bytes"


def dmnflow_hop(transport: str, size: int, count: int, rate_hz: float, alloc: bool = False,
                coalescing: bool = True, busy: bool = False, **where: Any) -> harness.Run:
    """Ping -> Sink; gives up (RuntimeError) 30 s past the run's expected length. ``busy``:
    latency mode, both nodes ``busy: true`` on cores of their own (their loops spin).
    ``where``: ``place``, ``backend``, ``address`` of ``harness.run_graph`` (bench/ray_backend.py)."""
    kind = kind_of(size)
    nodes: dict[str, Any] = {
        "ping": {"uses": "bench.nodes:Ping",
                 "params": {"count": count, "size": size, "rate_hz": rate_hz, "kind": kind, "result": "auto",
                            "alloc": alloc},
                 "outputs": {"out": {"codec": "tensor" if kind == "tensor" else "raw"}}},
        "sink": {"uses": "bench.nodes:Sink", "inputs": {"inp": "ping.out"}, "params": {"result": "auto"}},
    }
    if busy:
        cores = sorted(os.sched_getaffinity(0))
        for i, name in enumerate(("ping", "sink")):
            nodes[name].update(busy=True, cpus=cores[i % len(cores)])
    timeout_s = 30.0 + (count / rate_hz if rate_hz else 0.0)
    defaults: dict[str, Any] = {"transport": transport, "policy": "block"}
    if not coalescing:
        defaults["coalesce"] = False
    return harness.run_graph("hop", nodes, defaults, timeout_s=timeout_s, **where)


def raw_hop(transport: str, size: int, count: int, rate_hz: float, stamped: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="raw-hop-") as tmp:
        return rawzmq.chain(transport=transport, pattern="push", stages=1, size=size, kind=kind_of(size),
                            count=count, rate_hz=rate_hz, stamped=stamped, tmpdir=tmp)


def measure(transport: str, size: int, quick: bool, parts: str = "latency,throughput",
            alloc: bool = False, coalescing: bool = True, busy: bool = False) -> dict[str, Any]:
    rate, count = latency_load(size, quick)
    row: dict[str, Any] = {"transport": transport, "size": size, "codec": "tensor" if kind_of(size) == "tensor"
                           else "raw", "latency_rate_hz": rate, "latency_count": count}
    row.update({k: None for k in ("raw_p50_us", "raw_p99_us", "df_p50_us", "df_p99_us", "raw_exact_p50_us",
                                  "df_e2e_exact_p50_us", "raw_msgs_per_s", "df_msgs_per_s")})
    row.update(df_lat_lost=0, df_tp_lost=0, raw_tp_lost=0)
    row["alloc"], row["coalescing"], row["busy"] = alloc, coalescing, busy
    if "latency" in parts:
        measure_latency(row, transport, size, count, rate, alloc, coalescing, busy)
    if "throughput" in parts:
        measure_throughput(row, transport, size, quick, alloc, coalescing, busy)
    row["ratio_p50"] = ratio(row["df_p50_us"], row["raw_p50_us"])
    row["ratio_e2e_exact_p50"] = ratio(row["df_e2e_exact_p50_us"], row["raw_exact_p50_us"])
    row["ratio_msgs"] = ratio(row["df_msgs_per_s"], row["raw_msgs_per_s"])
    return row


def measure_latency(row: dict[str, Any], transport: str, size: int, count: int, rate: float, alloc: bool,
                    coalescing: bool = True, busy: bool = False) -> None:
    raw = raw_hop(transport, size, count, rate, stamped=True)
    row.update(raw_p50_us=raw["p50_us"], raw_p99_us=raw["p99_us"], raw_lat_lost=raw["lost"],
               raw_exact_p50_us=raw["exact_p50_us"], raw_exact_p99_us=raw["exact_p99_us"])
    run = dmnflow_hop(transport, size, count, rate, alloc, coalescing, busy)
    edge, e2e = run.edge("ping", "sink"), run.e2e("ping", "sink")
    row.update(df_p50_us=edge.p50_us, df_p99_us=edge.p99_us, df_e2e_p50_us=e2e["p50_us"],
               df_e2e_p99_us=e2e["p99_us"], df_lat_lost=count - run.results["sink"]["received"] + edge.lost,
               df_startup_s=run.report.startup_s, df_e2e_exact_p50_us=run.results["sink"]["exact_p50_us"],
               df_e2e_exact_p99_us=run.results["sink"]["exact_p99_us"])


def measure_throughput(row: dict[str, Any], transport: str, size: int, quick: bool, alloc: bool,
                       coalescing: bool = True, busy: bool = False) -> None:
    n_raw, n_df = throughput_count(size, quick, True), throughput_count(size, quick, False)
    raw = raw_hop(transport, size, n_raw, 0.0, stamped=False)
    row.update(raw_msgs_per_s=raw["msgs_per_s"], raw_tp_lost=raw["lost"], raw_tp_count=n_raw)
    run = dmnflow_hop(transport, size, n_df, 0.0, alloc, coalescing, busy)
    sink = run.results["sink"]
    row.update(df_msgs_per_s=sink["msgs_per_s"], df_tp_lost=n_df - sink["received"], df_tp_count=n_df,
               df_tp_edge_p50_us=run.edge("ping", "sink").p50_us,
               df_tp_cpu_us_per_msg={n: round(v.cpu_s / n_df * 1e6, 2) for n, v in run.report.nodes.items()})


def label(row: dict[str, Any]) -> str:
    """The size, and how it was sent when not the default: "64 B", "4 MiB (alloc)", "64 B (single)"."""
    notes = [n for n, on in (("alloc", row.get("alloc")), ("single", not row.get("coalescing", True)),
                             ("busy", row.get("busy"))) if on]
    return human_size(row["size"]) + (f" ({', '.join(notes)})" if notes else "")


def render(rows: list[dict[str, Any]]) -> str:
    header = ["transport", "size", "codec", "raw p50/p99 us", "dmnflow p50/p99 us", "p50 ratio",
              "raw exact p50", "dmnflow e2e exact p50", "e2e ratio", "raw msg/s", "dmnflow msg/s", "msg/s ratio"]
    body = []
    for r in rows:
        lost = "" if not (r["df_lat_lost"] or r["df_tp_lost"] or r["raw_tp_lost"]) else " (LOSS)"
        body.append([r["transport"], label(r), r["codec"],
                     f"{fmt(r['raw_p50_us'])} / {fmt(r['raw_p99_us'])}",
                     f"{fmt(r['df_p50_us'])} / {fmt(r['df_p99_us'])}", fmt(r["ratio_p50"], ".2f") + "x",
                     fmt(r["raw_exact_p50_us"]), fmt(r["df_e2e_exact_p50_us"]),
                     fmt(r["ratio_e2e_exact_p50"], ".2f") + "x", fmt(r["raw_msgs_per_s"], ",.0f"),
                     fmt(r["df_msgs_per_s"], ",.0f") + lost, fmt(r["ratio_msgs"], ".2f") + "x"])
    return harness.table(header, body)


def render_spread(rows: list[dict[str, Any]]) -> str:
    """Per transport and size over the repeats: median ratio (min-max), and the raw figure."""
    def cell(xs: list[float | None], spec: str = ".2f") -> str:
        vals = sorted(x for x in xs if x is not None)
        if not vals:
            return "-"
        return f"{format(statistics.median(vals), spec)} ({format(vals[0], spec)}-{format(vals[-1], spec)})"

    header = ["transport", "size", "runs", "p50 ratio", "e2e exact p50 ratio", "msg/s ratio", "raw msg/s",
              "dmnflow msg/s"]
    body = []
    for key in dict.fromkeys((r["transport"], label(r)) for r in rows):
        group = [r for r in rows if (r["transport"], label(r)) == key]
        body.append([key[0], key[1], str(len(group)),
                     cell([r["ratio_p50"] for r in group]),
                     cell([r["ratio_e2e_exact_p50"] for r in group]), cell([r["ratio_msgs"] for r in group]),
                     cell([r["raw_msgs_per_s"] for r in group], ",.0f"),
                     cell([r["df_msgs_per_s"] for r in group], ",.0f")])
    return harness.table(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 B and 64 KiB on ipc, few messages: a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write every figure (and the machine's noise) as JSON")
    ap.add_argument("--transports", default=None, help="comma-separated: ipc,tcp")
    ap.add_argument("--sizes", default=None, help="comma-separated byte counts")
    ap.add_argument("--only", choices=["latency", "throughput"], default=None, help="measure one of the two")
    ap.add_argument("--coalescing", choices=["on", "off", "both"], default="on",
                    help="dmnflow with push-edge coalescing (the default), without (defaults.coalesce: false), "
                         "or both interleaved")
    ap.add_argument("--busy", choices=["on", "off", "both"], default="off",
                    help="latency mode: both nodes `busy: true`, pinned to cores of their own (their loops spin "
                         "instead of sleeping in poll), or both interleaved")
    ap.add_argument("--alloc", choices=["on", "off", "both"], default="both",
                    help="tensor sizes: the source writes each tensor into ctx.alloc's array (a shared-memory "
                         "slot on ipc) before emitting it, or emits the same array (copied into a slot), or both")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure every row N times (interleaved) and add a table of median ratios (min-max)")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.json) if args.json else None
    harness.enter_repo()
    transports = args.transports.split(",") if args.transports else (["ipc"] if args.quick else ["ipc", "tcp"])
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([64, 64 << 10] if args.quick else SIZES)
    noise = harness.Noise()
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    parts = args.only or "latency,throughput"
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.coalescing]
    for rep in range(args.repeat):
        order = modes if rep % 2 == 0 else modes[::-1]  # alternate which goes first: runs drift
        allocs = {"on": [True], "off": [False], "both": [False, True]}[args.alloc]
        allocs = allocs if rep % 2 == 0 else allocs[::-1]
        busies = {"on": [True], "off": [False], "both": [False, True]}[args.busy]
        busies = busies if rep % 2 == 0 else busies[::-1]
        runs = [(t, z, c, a, b) for t in transports for z in sizes for c in order
                for a in (allocs if kind_of(z) == "tensor" else [False]) for b in busies]
        for transport, size, coalescing, alloc, busy in runs:
            try:
                row = measure(transport, size, args.quick, parts, alloc, coalescing, busy)
                row["repeat"] = rep
            except Exception as exc:  # one broken run must not lose the others: report it in the row
                print(f"  {transport} {human_size(size)}: FAILED: {exc}", file=sys.stderr, flush=True)
                errors.append({"transport": transport, "size": size, "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append(row)
            print(f"  {transport} {label(row)}: p50 {fmt(row['ratio_p50'], '.2f')}x, "
                  f"msg/s {fmt(row['ratio_msgs'], '.2f')}x", file=sys.stderr, flush=True)
    machine = noise.summary()
    print(render(rows))
    if args.repeat > 1:
        print()
        print(render_spread(rows))
    for err in errors:
        print(f"FAILED {err['transport']} {human_size(err['size'])}: {err['error']}")
    print(f"\nmachine: {machine}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"bench": "hop", "quick": args.quick, "machine": machine, "rows": rows,
                       "errors": errors}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

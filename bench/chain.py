"""A 4-stage chain (source -> relay -> relay -> relay -> sink, 64 B): dmnflow against raw
pyzmq doing the same chain, at fixed offered rates, unpinned and pinned, in one run.

    python bench/chain.py [--quick] [--json out.json] [--seconds 2] [--layouts unpinned,core0,split]

Each stage is a process. Rows are offered rates (paced source, ``policy: drop``: PUB/SUB,
as ZeroMQ does by default, so overload shows as loss), then flat out with ``drop``, then
flat out with ``policy: block`` (the lossless rate; raw: PUSH/PULL). Per row: end-to-end
p50/p99 (source emit -> sink; dmnflow: the report's e2e; raw: a stamp in the message), the
rate delivered at the sink (first to last receive) and the messages lost.

Layouts (cores of source, relay 1-3, sink):
- ``unpinned``: the scheduler places them;
- ``core0``: all five on core 0, so every hop stays on one core (no cross-core wake-up);
- ``split``: 0,0,0,1,1: neighbours share a core, one hop crosses.

Pinning dmnflow uses the nodes' ``cpus:`` in the generated YAML *and* a ``pin`` param of the
bench nodes, which pin every thread of their process in ``setup`` if any is not pinned yet
(the runtime pins the main thread only, after the ZeroMQ I/O thread exists). The JSON says
who did it (``pinned_by``).

Last, start-up: a 10-node chain, time from ``launch()`` to the first message at the sink,
and the RSS of each node's process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import harness
import rawzmq
from harness import fmt

LAYOUTS: dict[str, list[int] | None] = {"unpinned": None, "core0": [0, 0, 0, 0, 0], "split": [0, 0, 0, 1, 1]}
RATES = [1000, 5000, 10000, 20000]
NAMES = ["src", "r1", "r2", "r3", "sink"]
SIZE = 64


def dmnflow_chain(count: int, rate_hz: float, policy: str, pins: list[int] | None,
                  names: list[str] = NAMES) -> harness.Run:
    nodes: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        params: dict[str, Any] = {"result": "auto"}
        spec: dict[str, Any] = {}
        if i == 0:
            spec["uses"] = "bench.nodes:Ping"
            params.update(count=count, size=SIZE, rate_hz=rate_hz)
            spec["outputs"] = {"out": {"codec": "raw"}}
        else:
            spec["uses"] = "bench.nodes:Sink" if i == len(names) - 1 else "bench.nodes:Relay"
            spec["inputs"] = {"inp": f"{names[i - 1]}.out"}
            if i < len(names) - 1:
                spec["outputs"] = {"out": {"codec": "raw"}}
        if pins is not None:
            spec["cpus"] = [pins[i]]
            params["pin"] = [pins[i]]
        spec["params"] = params
        nodes[name] = spec
    timeout_s = 30.0 + (count / rate_hz if rate_hz else count / 2000)
    return harness.run_graph("chain", nodes, {"transport": "ipc", "policy": policy}, timeout_s=timeout_s)


def count_for(rate_hz: float, seconds: float, flat: int) -> int:
    return int(rate_hz * seconds) if rate_hz else flat


def measure(layout: str, rate_hz: float, policy: str, seconds: float, flat_count: int) -> dict[str, Any]:
    pins = LAYOUTS[layout]
    count = count_for(rate_hz, seconds, flat_count)
    row: dict[str, Any] = {"layout": layout, "rate_hz": rate_hz, "policy": policy, "count": count}
    with tempfile.TemporaryDirectory(prefix="raw-chain-") as tmp:
        raw = rawzmq.chain(transport="ipc", pattern="pub" if policy == "drop" else "push", stages=4, size=SIZE,
                           kind="bytes", count=count, rate_hz=rate_hz, stamped=True, tmpdir=tmp,
                           pins=[[c] for c in pins] if pins else None)
    row.update(raw_p50_us=raw["p50_us"], raw_p99_us=raw["p99_us"], raw_msgs_per_s=raw["msgs_per_s"],
               raw_lost=raw["lost"], raw_exact_p50_us=raw.get("exact_p50_us"))
    run = dmnflow_chain(count, rate_hz, policy, pins)
    e2e = run.e2e("src", "sink")
    sink = run.results["sink"]
    row.update(df_p50_us=e2e["p50_us"], df_p99_us=e2e["p99_us"], df_msgs_per_s=sink["msgs_per_s"],
               df_lost=count - sink["received"], df_exact_p50_us=sink.get("exact_p50_us"),
               df_edge_lost=sum(e.lost for e in run.report.edges),
               df_edges=[{"edge": f"{e.src}->{e.dst}", "p50_us": e.p50_us, "p99_us": e.p99_us, "lost": e.lost}
                         for e in run.report.edges],
               df_cpu_s={n: round(v.cpu_s, 2) for n, v in run.report.nodes.items()})
    if pins:
        row["pinned_by"] = pinned_by(pins, [run.results[n] for n in NAMES])
        row["affinity"] = {n: run.results[n]["affinity"] for n in NAMES}
    row["ratio_p50"] = harness.ratio(row["df_p50_us"], row["raw_p50_us"])
    return row


def pinned_by(pins: list[int], results: list[dict[str, Any]]) -> str:
    """Who pinned the processes: the runtime (every thread), the runtime for the main thread
    only (the bench node pinned the ZeroMQ threads), or the bench node alone."""
    main = all(next(iter(r["affinity_at_setup"].values())) == [c] for c, r in zip(pins, results, strict=True))
    every = all(all(a == [c] for a in r["affinity_at_setup"].values()) for c, r in zip(pins, results, strict=True))
    return "runtime" if every else "runtime: main thread; bench node: zmq threads" if main else "bench node"


def startup(n_nodes: int = 10) -> dict[str, Any]:
    names = ["src"] + [f"r{i}" for i in range(1, n_nodes - 1)] + ["sink"]
    run = dmnflow_chain(100, 1000.0, "block", None, names)
    first_ns = run.results["sink"]["t_first_ns"]
    rss = {n: r["VmHWM"] / 1024 for n, r in run.results.items()}
    return {"nodes": n_nodes, "launch_to_first_message_s": round((first_ns - run.launched_ns) / 1e9, 3),
            "report_startup_s": run.report.startup_s, "rss_peak_mib": {n: round(v, 1) for n, v in rss.items()},
            "rss_peak_mib_median": round(statistics.median(rss.values()), 1)}


def render(rows: list[dict[str, Any]]) -> str:
    header = ["layout", "offered", "policy", "raw e2e p50/p99 us", "dmnflow e2e p50/p99 us", "p50 ratio",
              "raw msg/s", "dmnflow msg/s", "raw lost", "dmnflow lost"]
    body = []
    for r in rows:
        body.append([r["layout"], fmt(r["rate_hz"], ",.0f") if r["rate_hz"] else "flat out", r["policy"],
                     f"{fmt(r['raw_p50_us'])} / {fmt(r['raw_p99_us'])}",
                     f"{fmt(r['df_p50_us'])} / {fmt(r['df_p99_us'])}", fmt(r["ratio_p50"], ".2f") + "x",
                     fmt(r["raw_msgs_per_s"], ",.0f"), fmt(r["df_msgs_per_s"], ",.0f"),
                     f"{r['raw_lost']}/{r['count']}", f"{r['df_lost']}/{r['count']}"])
    return harness.table(header, body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="two rates, unpinned and core0, 0.5 s each: a smoke run")
    ap.add_argument("--json", metavar="PATH", help="write every figure (and the machine's noise) as JSON")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per paced row (default 2; quick 0.5)")
    ap.add_argument("--layouts", default=None, help=f"comma-separated, of {','.join(LAYOUTS)}")
    ap.add_argument("--no-startup", action="store_true", help="skip the 10-node start-up and RSS measurement")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.json) if args.json else None
    harness.enter_repo()
    if not {0, 1} <= os.sched_getaffinity(0):
        print("chain.py pins to cores 0 and 1; this process may not use both", file=sys.stderr)
        return 2
    seconds = args.seconds or (0.5 if args.quick else 2.0)
    layouts = args.layouts.split(",") if args.layouts else (["unpinned", "core0"] if args.quick else list(LAYOUTS))
    rates = [1000, 10000] if args.quick else RATES
    flat = 20_000 if args.quick else 50_000
    noise = harness.Noise()
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for layout in layouts:
        for rate, policy in [*((r, "drop") for r in rates), (0, "drop"), (0, "block")]:
            try:
                row = measure(layout, rate, policy, seconds, flat)
            except Exception as exc:  # one broken run must not lose the others
                print(f"  {layout} {rate or 'flat'} {policy}: FAILED: {exc}", file=sys.stderr, flush=True)
                errors.append({"layout": layout, "rate_hz": rate, "policy": policy,
                               "error": f"{type(exc).__name__}: {exc}"})
                continue
            rows.append(row)
            print(f"  {layout} {rate or 'flat'} {policy}: e2e p50 {fmt(row['df_p50_us'])} us "
                  f"({fmt(row['ratio_p50'], '.2f')}x raw), lost {row['df_lost']}  [{time.monotonic() - t0:.0f}s]",
                  file=sys.stderr, flush=True)
    start = None
    if not args.no_startup:
        try:
            start = startup()
        except Exception as exc:
            errors.append({"startup": True, "error": f"{type(exc).__name__}: {exc}"})
    machine = noise.summary()
    print(render(rows))
    if start:
        print(f"\nstart-up, {start['nodes']} nodes: launch() to first message at the sink "
              f"{start['launch_to_first_message_s']} s (report.startup_s {start['report_startup_s']} s); "
              f"peak RSS per node median {start['rss_peak_mib_median']} MiB")
    for err in errors:
        print(f"FAILED {err}")
    print(f"\nmachine: {machine}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"bench": "chain", "quick": args.quick, "machine": machine, "rows": rows, "startup": start,
                       "errors": errors},
                      f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

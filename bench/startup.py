"""Start-up: ``launch()`` to the first message at the sink, for a 10-node chain, repeated.

    python bench/startup.py [--runs 7] [--nodes 10] [--compare] [--json out.json]

Each run launches ``source -> 8 relays -> sink`` (``policy: block``, 64 B, 100 messages at
1000 msg/s) and reads the sink's first receive time (``time.time_ns()``) against the time
just before ``launch()``. Reported: the median and min-max of the runs, the report's
``startup_s`` (launch to every worker ready), and the median peak RSS (``VmHWM``) and PSS
(proportional set size: shared pages divided among the processes sharing them) per node.

``--compare`` also launches each run with ``DMNFLOW_ZYGOTE=0`` (every worker a new
interpreter, as before the zygote). For reference, in the same run: the wall time to start
``--nodes`` interpreters at once that each ``import dmnflow.runtime.worker`` and exit: what
a fresh process per node costs on this machine, now. Absolute times move with the VM's
noise; compare with the reference. No asserts: speed is reported, not tested.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import chain
import harness
from harness import fmt


def one_launch(n_nodes: int, zygote: bool = True) -> dict[str, Any]:
    os.environ["DMNFLOW_ZYGOTE"] = "1" if zygote else "0"
    names = ["src"] + [f"r{i}" for i in range(1, n_nodes - 1)] + ["sink"]
    run = chain.dmnflow_chain(100, 1000.0, "block", None, names)
    first_ns = run.results["sink"]["t_first_ns"]
    rss = [r["VmHWM"] / 1024 for r in run.results.values()]
    pss = [r["Pss"] / 1024 for r in run.results.values() if "Pss" in r]
    return {"launch_to_first_s": (first_ns - run.launched_ns) / 1e9, "startup_s": run.report.startup_s,
            "rss_mib": statistics.median(rss), "pss_mib": statistics.median(pss) if pss else None}


def reference(n: int) -> float:
    """Wall seconds for ``n`` interpreters importing the worker module at once."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", ""))
                                                       if p)}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", "import dmnflow.runtime.worker"], env=env) for _ in range(n)]
    for p in procs:
        p.wait()
    return time.perf_counter() - t0


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--compare", action="store_true",
                    help="also launch with DMNFLOW_ZYGOTE=0 (a new interpreter per worker), interleaved")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.json) if args.json else None
    harness.enter_repo()
    noise = harness.Noise()
    runs, refs, fresh = [], [], []
    for i in range(args.runs):  # interleaved, so all see the same noise
        refs.append(reference(args.nodes))
        runs.append(one_launch(args.nodes))
        if args.compare:
            fresh.append(one_launch(args.nodes, zygote=False))
        print(f"  run {i + 1}: launch to first message {runs[-1]['launch_to_first_s']:.3f} s"
              + (f", without the zygote {fresh[-1]['launch_to_first_s']:.3f} s" if fresh else "")
              + f", reference {refs[-1]:.3f} s", file=sys.stderr, flush=True)
    os.environ.pop("DMNFLOW_ZYGOTE", None)
    machine = noise.summary()
    first = [r["launch_to_first_s"] for r in runs]
    rows = [
        ["launch() to first message at the sink, s", spread(first)],
        ["report startup_s (launch to all ready), s", spread([r["startup_s"] for r in runs])],
        [f"reference: {args.nodes} x `python -c 'import dmnflow.runtime.worker'` at once, s", spread(refs)],
        ["ratio first message / reference (median of per-run ratios)",
         fmt(statistics.median(f / r for f, r in zip(first, refs, strict=True)), ".2f")],
        ["peak RSS (VmHWM) per node, MiB (median)", fmt(statistics.median(r["rss_mib"] for r in runs))],
        ["PSS per node at teardown, MiB (median)",
         fmt(harness.median([r["pss_mib"] for r in runs]))],
    ]
    if fresh:
        rows += [
            ["without the zygote (DMNFLOW_ZYGOTE=0): launch() to first message, s",
             spread([r["launch_to_first_s"] for r in fresh])],
            ["without the zygote: peak RSS / PSS per node, MiB (median)",
             f"{fmt(statistics.median(r['rss_mib'] for r in fresh))} / "
             f"{fmt(harness.median([r['pss_mib'] for r in fresh]))}"],
        ]
    print(harness.table([f"{args.nodes} nodes, {args.runs} runs: median (min-max)", "value"], rows))
    print(f"\nmachine: {machine}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"bench": "startup", "nodes": args.nodes, "runs": runs, "without_zygote": fresh,
                       "reference_s": refs,
                       "machine": machine}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

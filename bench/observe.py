"""What watching a running graph costs it: a flat-out hop (Ping -> Relay -> Sink, 64 B,
``policy: block``) with nobody listening, with ``dmnflow echo`` attached to the source's
output (the tap forwards at most 100 records/s, echo's default), with ``hz`` attached (1000/s),
with an echo that takes every record (``--max-rate 0``), and recording the output to MCAP.

    python bench/observe.py [--quick] [--repeat 5] [--count 200000] [--json out.json]

Each configuration runs ``--repeat`` times, interleaved (off, echo, hz, every, record, off, ...),
so drift of the machine hits them alike. The figure is the sink's rate from its first to
its last receive; the table gives each configuration's median against the median with
nobody listening in the same run (and the min-max of the per-repeat ratios). Nothing is
asserted: docs/performance.md quotes the result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import harness
from harness import fmt

from dmnflow import compile_graph
from dmnflow.observe.listen import Listener
from dmnflow.observe.session import watching
from dmnflow.runtime import launch
from dmnflow.runtime.admin import list_runs

CONFIGS = ("off", "echo", "hz", "every", "record")


def _graph(tmp: str, count: int) -> Path:
    nodes = {
        "src": {"uses": "bench.nodes:Ping", "params": {"count": count, "size": 64}},
        "relay": {"uses": "bench.nodes:Relay", "inputs": {"inp": "src.out"}},
        "sink": {"uses": "bench.nodes:Sink", "inputs": {"inp": "relay.out"},
                 "params": {"result": f"{tmp}/sink.json", "latencies": False}},
    }
    path = Path(tmp, "observe.yaml")
    path.write_text(harness.graph_yaml("observe-bench", nodes, {"policy": "block", "codec": "raw"}), encoding="utf-8")
    return path


def _listen(name: str, max_rate: int, stop: threading.Event, got: list[int]) -> None:
    """Attach to the run as `dmnflow echo` would, as soon as it is up, and read until it ends."""
    while not stop.is_set():
        runs = [r for r in list_runs() if r.name == name]
        if runs:
            try:
                listener = Listener(runs[0], "src.out", max_rate=max_rate)
            except Exception:
                time.sleep(0.05)
                continue
            try:
                for _ in listener.records(timeout_s=120):
                    got[0] += 1
                    if stop.is_set():
                        break
            finally:
                listener.close()
            return
        time.sleep(0.02)


def one(config: str, count: int) -> tuple[float | None, int]:
    from rich.console import Console

    with tempfile.TemporaryDirectory(prefix="dmnflow-bench-") as tmp:
        plan = compile_graph(_graph(tmp, count))
        name = f"obs-bench-{config}"
        stop, got = threading.Event(), [0]
        thread = None
        if config in ("echo", "hz", "every"):
            rate = {"echo": 100, "hz": 1000, "every": 0}[config]
            thread = threading.Thread(target=_listen, args=(name, rate, stop, got), daemon=True)
            thread.start()
        record = Path(tmp, "rec.mcap") if config == "record" else None
        with watching(plan, Console(quiet=True), status_every_s=0, record=record,
                      edges=["src.out"] if record else None) as s:
            report = launch(s.plan, name=name, observer=s.observer, duration_s=300)
        stop.set()
        if thread is not None:
            thread.join(10)
        if report.status != "finished":
            raise RuntimeError(f"{config}: {report.status} {report.errors}")
        result = json.loads(Path(tmp, "sink.json").read_text())
        return result.get("msgs_per_s"), got[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repeats of 100k messages")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--count", type=int, default=200_000)
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.count = 3, 100_000
    harness.enter_repo()
    noise = harness.Noise()
    rates: dict[str, list[float | None]] = {c: [] for c in CONFIGS}
    copies: dict[str, list[int]] = {c: [] for c in CONFIGS}
    for _ in range(args.repeat):
        for config in CONFIGS:
            rate, got = one(config, args.count)
            rates[config].append(rate)
            copies[config].append(got)
    base = harness.median(rates["off"])
    rows = []
    for config in CONFIGS:
        per = [harness.ratio(r, b) for r, b in zip(rates[config], rates["off"], strict=True)]
        per = [p for p in per if p is not None]
        rows.append([config, fmt(harness.median(rates[config]), ",.0f"),
                     fmt(harness.ratio(harness.median(rates[config]), base), ".3f"),
                     f"{min(per):.3f}-{max(per):.3f}" if per else "-",
                     fmt(statistics.median(copies[config]) if copies[config] else 0, ",.0f")])
    print(harness.table(["listening", "msg/s (median)", "ratio to off", "per-repeat ratios", "records read"], rows))
    summary = noise.summary()
    print(f"\n{args.repeat} repeats of {args.count:,} messages; machine: {summary}")
    if args.json:
        args.json.write_text(json.dumps({"rates": rates, "copies": copies, "noise": summary}, indent=2))


if __name__ == "__main__":
    main()

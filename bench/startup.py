"""Start-up as a user feels it, on the trading graph; and ``launch()`` of a 10-node chain.

    python bench/startup.py [--runs 3] [--days 20] [--baseline DIR] [--json out.json]
    python bench/startup.py --chain [--runs 7] [--nodes 10] [--compare] [--json out.json]

The default measures, each ``--runs`` times (medians; one run first writes the ``.pyc`` files,
as a user's first command does, and is not counted), the commands as a user types them, in
new processes:

- ``dmnflow --help``;
- ``dmnflow validate graphs/dmn_trading.yaml`` with an empty compile cache (cold: the
  compiler, torch, every node, both models checked) and with the cache of the previous
  validate (warm: nothing changed, dmnflow/cache.py);
- ``dmnflow launch graphs/dmn_backtest.yaml --set vars.days=DAYS`` with a warm cache, to
  its first tick: the time from starting the command to the line ``first message`` on its
  stderr (the start's phases, issue 21), and when each earlier phase line came
  (validated, N/N processes up, ready). The same once with a cold cache.

Each figure is wall time and the CPU time (user + system) of the command and its children.
The compile cache lives in a private ``XDG_CACHE_HOME`` for the run. ``--baseline DIR``
measures a checkout of another commit the same way, interleaved (``git archive COMMIT |
tar -x -C DIR``); one without phase lines gives only the report's "all ready" figure. ``--chain`` is the
older measurement: ``launch()`` to the first message at the sink of ``source -> 8 relays ->
sink`` (see ``chain_main``). Absolute times move with the machine's load (printed with the
figures); no asserts: speed is reported, not tested.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import chain
import harness
from harness import fmt

TRADING = "graphs/dmn_trading.yaml"
BACKTEST = "graphs/dmn_backtest.yaml"
PHASES = ("validated", "processes up", "processes ready", "first message")


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


def chain_main(args: argparse.Namespace) -> int:
    """``launch()`` to the first message at the sink of a 10-node chain (``policy: block``, 64 B,
    100 messages at 1000 msg/s), against the sink's first receive time; the report's
    ``startup_s``; peak RSS and PSS per node. ``--compare`` also launches each run with
    ``DMNFLOW_ZYGOTE=0`` (every worker a new interpreter); for reference, the wall time to start
    ``--nodes`` interpreters at once that each ``import dmnflow.runtime.worker``."""
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


def _command() -> list[str]:
    """``dmnflow`` as a user runs it: the console script beside this interpreter, else ``-m``."""
    script = os.path.join(os.path.dirname(sys.executable), "dmnflow")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "dmnflow"]


def _env(cache: str, repo: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}  # .pyc files, as installed
    env.update(XDG_CACHE_HOME=cache, NO_COLOR="1", COLUMNS="120",
               PYTHONPATH=os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p))
    return env


def _cpu() -> float:
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


class Variant:
    """A checkout to measure (this one, or ``--baseline DIR``), with a compile cache of its own."""

    def __init__(self, name: str, repo: str) -> None:
        self.name, self.repo = name, repo
        self.cache = tempfile.mkdtemp(prefix="dmnflow-bench-cache-")
        self.out_dir = tempfile.mkdtemp(prefix="dmnflow-bench-out-")
        self.env = _env(self.cache, repo)
        self.results: dict[str, list[dict[str, float]]] = {k: [] for k in (
            "help", "validate_cold", "validate_warm", "launch_warm", "launch_cold")}

    def clear_cache(self) -> None:
        shutil.rmtree(os.path.join(self.cache, "dmnflow"), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.cache, ignore_errors=True)
        shutil.rmtree(self.out_dir, ignore_errors=True)

    def timed(self, args: list[str]) -> dict[str, float]:
        """Wall and CPU seconds of one command, which must succeed."""
        cpu, t0 = _cpu(), time.perf_counter()
        done = subprocess.run(_command() + args, env=self.env, cwd=self.repo, capture_output=True, text=True,
                              timeout=600)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: dmnflow {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stderr[-2000:]}")
        return {"wall_s": wall, "cpu_s": _cpu() - cpu}

    def to_first_tick(self, days: int) -> dict[str, float]:
        """``dmnflow launch`` of the backtest: seconds from the command's start to each phase line;
        and, from its report, to the moment every worker was ready (``ready_report_s``: the wall
        time less the run's ``duration_s``, plus its ``startup_s``), which a dmnflow without
        phase lines gives too."""
        report = os.path.join(self.out_dir, "report.json")
        args = ["launch", BACKTEST, "--set", f"vars.days={days}", "--set", f"vars.out={self.out_dir}",
                "--report", report]
        cpu, t0 = _cpu(), time.perf_counter()
        proc = subprocess.Popen(_command() + args, env=self.env, cwd=self.repo, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        seen: dict[str, float] = {}
        tail: list[str] = []
        try:
            assert proc.stderr is not None
            for line in proc.stderr:  # read to the end: a full pipe would stall the run
                now = time.perf_counter() - t0
                tail = (tail + [line])[-20:]
                for phase in PHASES:
                    if phase in seen or f" {phase}" not in line or (phase == "processes up" and not _all_up(line)):
                        continue
                    seen[phase] = now
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{self.name}: dmnflow {' '.join(args)} failed ({proc.returncode}):\n{''.join(tail)}")
        with open(report, encoding="utf-8") as f:
            rep = json.load(f)
        return {**{f"{p}_s": t for p, t in seen.items()}, "wall_s": wall, "cpu_s": _cpu() - cpu,
                "ready_report_s": wall - rep["duration_s"] + rep["startup_s"]}

    def round(self, days: int) -> None:
        """One of each measurement."""
        r = self.results
        r["help"].append(self.timed(["--help"]))
        self.clear_cache()
        r["validate_cold"].append(self.timed(["validate", TRADING]))
        r["validate_warm"].append(self.timed(["validate", TRADING]))
        self.to_first_tick(days)  # the backtest's own compile cached (not counted)
        r["launch_warm"].append(self.to_first_tick(days))
        first = r["launch_warm"][-1].get("first message_s", r["launch_warm"][-1]["ready_report_s"])
        print(f"  {self.name}: --help {r['help'][-1]['wall_s']:.2f} s, validate cold "
              f"{r['validate_cold'][-1]['wall_s']:.2f} s / warm {r['validate_warm'][-1]['wall_s']:.2f} s, "
              f"launch to first tick {first:.2f} s", file=sys.stderr, flush=True)

    def rows(self, label: str) -> list[list[str]]:
        def med(kind: str, key: str) -> str:
            return fmt(harness.median([r.get(key) for r in self.results[kind]]), ".2f")

        rows = [
            [f"{label}`dmnflow --help`", "0.25", med("help", "wall_s"), med("help", "cpu_s")],
            [f"{label}`dmnflow validate {TRADING}`, cache cold", "-", med("validate_cold", "wall_s"),
             med("validate_cold", "cpu_s")],
            [f"{label}`dmnflow validate {TRADING}`, nothing changed", "1", med("validate_warm", "wall_s"),
             med("validate_warm", "cpu_s")],
        ]
        for kind, what, goal in (("launch_warm", "cache warm", "1.5"), ("launch_cold", "cache cold (1 run)", "-")):
            rows.append([f"{label}`dmnflow launch {BACKTEST}` to first tick, {what}", goal,
                         med(kind, "first message_s"), med(kind, "cpu_s") + " (whole run)"])
            rows.append([f"{label}  phase lines: validated / all processes up / ready", "-",
                         " / ".join(med(kind, f"{p}_s") for p in PHASES[:3]), ""])
            rows.append([f"{label}  all ready, from the report", "-", med(kind, "ready_report_s"), ""])
        return rows


def _all_up(line: str) -> bool:
    """``N/N processes up``: every process, not the first few."""
    try:
        up, n = line.split(": ")[-1].split(" ")[0].split("/")
    except ValueError:
        return False
    return up == n


def user_main(args: argparse.Namespace) -> int:
    """The figures of issue 20's item 4: --help, validate cold and warm, launch to first tick."""
    out = os.path.abspath(args.json) if args.json else None
    harness.enter_repo()
    noise = harness.Noise()
    variants = [Variant("this", os.getcwd())]
    if args.baseline:
        variants.append(Variant("baseline", os.path.abspath(args.baseline)))
    try:
        for v in variants:
            v.timed(["--help"])  # writes the .pyc files; not counted
            v.timed(["validate", TRADING])
        for i in range(args.runs):  # interleaved, so all see the same noise
            print(f"run {i + 1}:", file=sys.stderr, flush=True)
            for v in variants if i % 2 == 0 else variants[::-1]:
                v.round(args.days)
        for v in variants:
            v.clear_cache()
            v.results["launch_cold"].append(v.to_first_tick(args.days))
    finally:
        for v in variants:
            v.close()
    machine = noise.summary()
    rows = [row for v in variants for row in v.rows("" if v.name == "this" else "baseline: ")]
    print(harness.table([f"{args.runs} runs, median", "goal s", "wall s", "cpu s"], rows))
    print(f"\nmachine: {machine}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"bench": "startup-user", "days": args.days, "machine": machine,
                       "runs": {v.name: v.results for v in variants}}, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="repeats (default 3; 7 with --chain)")
    ap.add_argument("--days", type=int, default=20, help="the backtest's days (it runs to its end each time)")
    ap.add_argument("--chain", action="store_true", help="the 10-node chain's launch() instead")
    ap.add_argument("--nodes", type=int, default=10, help="--chain: nodes in the chain")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--baseline", metavar="DIR", help="also measure the dmnflow checked out in DIR (another "
                    "commit), interleaved")
    ap.add_argument("--compare", action="store_true",
                    help="--chain: also launch with DMNFLOW_ZYGOTE=0 (a new interpreter per worker), interleaved")
    args = ap.parse_args(argv)
    if args.chain:
        args.runs = args.runs or 7
        return chain_main(args)
    args.runs = args.runs or 3
    return user_main(args)


if __name__ == "__main__":
    sys.exit(main())

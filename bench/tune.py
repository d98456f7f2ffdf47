"""How fast `dmnflow tune` runs trials, and what the tune layer itself costs per trial.

    python bench/tune.py                       # synthetic DMN backtest and the futures, both engines
    python bench/tune.py --graphs synthetic --engines optuna --trials 4
    python bench/tune.py --json out/bench_tune.json

For each graph (``synthetic``: graphs/tune_dmn.yaml, the DMN backtest on the synthetic
market's 1820 in-sample days; ``futures``: graphs/tune_futures.yaml, 84 futures markets
1993-2010) and each engine (the embedded Optuna engine, Ray Tune):

- **trials/hour**: a study of ``--trials`` trials, ``concurrency: 2`` (the two cores), no
  pruner, no holdout, no plots: the wall time of the whole ``dmnflow tune`` command
  (start-up of the engine and the warm host included) per trial.
- **overhead per trial** (embedded engine, one trial at a time): each trial's wall time as the
  engine saw it (ask, start, run, tell), warm (forked from the host) and cold (``warm: false``:
  a new interpreter per trial, as ``dmnflow launch`` starts one), against a bare
  ``dmnflow launch GRAPH --overlay`` of the same trial's overlay file, measured from exec to
  exit, interleaved. The tune layer's own time is the trial's wall minus the run's own
  duration (the report's ``duration_s``, its start-up included), as a share of the bare launch.

Every figure is printed with the runs it comes from; nothing is asserted. The machine's
noise moves absolute times by up to 2x: read the ratios, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = {"synthetic": ("graphs/tune_dmn.yaml", "graphs/dmn_backtest.yaml"),
          "futures": ("graphs/tune_futures.yaml", "graphs/dmn_futures.yaml")}


def tune(tune_file: str, out: Path, *sets: str) -> tuple[float, dict[str, Any]]:
    """One `dmnflow tune` run: its wall time and its summary."""
    args = [sys.executable, "-m", "dmnflow", "tune", tune_file, "--no-plots", "--set", f"out={out}",
            "--set", "pruner=none", "--set", "holdout=null", *[x for s in sets for x in ("--set", s)]]
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        (out / "stderr.txt").parent.mkdir(parents=True, exist_ok=True)
        lines = [line for line in done.stderr.splitlines() if "Traceback" in line or "Error" in line
                 or line.startswith("  File")]
        raise SystemExit(f"dmnflow tune failed ({done.returncode}):\n" + "\n".join(lines[-40:]) +
                         f"\n{done.stderr[-1500:]}")
    return wall, json.loads((out / "summary.json").read_text())


def launch(graph: str, overlay: Path) -> tuple[float, dict[str, Any]]:
    """A bare `dmnflow launch` of a trial's overlay: wall from exec to exit, and its report."""
    report = overlay.parent / "bare_report.json"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dmnflow", "launch", graph, "--overlay", str(overlay), "--report",
                           str(report)], cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"dmnflow launch failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(report.read_text())


def throughput(name: str, engine: str, trials: int, work: Path) -> dict[str, Any]:
    tune_file, _ = GRAPHS[name]
    out = work / f"{name}-{engine}-rate"
    wall, summary = tune(tune_file, out, f"engine={engine}", f"trials={trials}", "concurrency=2")
    done = sum(summary["counts"].get(s, 0) for s in ("complete", "pruned"))
    return {"graph": name, "engine": engine, "trials": trials, "finished": done, "wall_s": round(wall, 1),
            "trials_per_hour": round(trials / wall * 3600, 1),
            "trial_s": [t.get("trial_s") for t in summary["trials"]]}


def overhead(name: str, trials: int, work: Path) -> dict[str, Any]:
    """Warm and cold trials one at a time, each followed by a bare launch of its overlay."""
    tune_file, graph = GRAPHS[name]
    rows: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
    for mode in ("warm", "cold"):
        out = work / f"{name}-{mode}"
        _, summary = tune(tune_file, out, f"trials={trials}", "concurrency=1", "engine=optuna",
                          f"warm={'true' if mode == 'warm' else 'false'}")
        for trial in summary["trials"]:
            if trial["state"] != "complete":
                continue
            bare, report = launch(graph, out / "trials" / str(trial["number"]) / "overlay.yaml")
            figures = trial["figures"]
            same = all(report["nodes"][k.split(".", 1)[0]]["summary"][k.split(".", 1)[1]] == v
                       for k, v in figures.items() if k.endswith(".sharpe"))
            rows[mode].append({"trial_s": trial["trial_s"], "run_s": figures["report.duration_s"],
                               "startup_s": figures["report.startup_s"], "bare_s": bare,
                               "bare_startup_s": report["startup_s"], "same_figures": same})
    result: dict[str, Any] = {"graph": name, "runs": rows}
    for mode, got in rows.items():
        if not got:
            continue
        result[mode] = {
            "trial_s": statistics.median(r["trial_s"] for r in got),
            "bare_launch_s": statistics.median(r["bare_s"] for r in got),
            "ratio": statistics.median(r["trial_s"] / r["bare_s"] for r in got),
            "own_s": statistics.median(r["trial_s"] - r["run_s"] for r in got),
            "own_share": statistics.median((r["trial_s"] - r["run_s"]) / r["bare_s"] for r in got),
            "startup_s": statistics.median(r["startup_s"] for r in got),
            "bare_startup_s": statistics.median(r["bare_startup_s"] for r in got),
            "same_figures": all(r["same_figures"] for r in got)}
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--graphs", default="synthetic,futures")
    ap.add_argument("--engines", default="optuna,ray")
    ap.add_argument("--trials", type=int, default=4, help="trials per study (throughput)")
    ap.add_argument("--overhead-trials", type=int, default=2, help="trials one at a time (overhead)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    os.chdir(ROOT)
    graphs = [g for g in args.graphs.split(",") if g]
    work = Path(tempfile.mkdtemp(prefix="bench-tune-", dir=ROOT / "out" if (ROOT / "out").is_dir() else None))
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                               "throughput": [], "overhead": []}
    try:
        for name in graphs:
            for engine in [e for e in args.engines.split(",") if e]:
                row = throughput(name, engine, args.trials, work)
                results["throughput"].append(row)
                print(f"{name:9} {engine:6} {row['trials']} trials in {row['wall_s']:7.1f}s: "
                      f"{row['trials_per_hour']:7.1f} trials/hour (trial_s {row['trial_s']})", flush=True)
        for name in graphs:
            row = overhead(name, args.overhead_trials, work)
            results["overhead"].append(row)
            for mode in ("warm", "cold"):
                r = row.get(mode)
                if r:
                    print(f"{name:9} {mode:5} trial {r['trial_s']:6.2f}s vs bare launch {r['bare_launch_s']:6.2f}s: "
                          f"ratio {r['ratio']:.3f}; tune's own {r['own_s']:.2f}s = {r['own_share'] * 100:.1f}% of "
                          f"the launch; start-up {r['startup_s']:.2f}s vs {r['bare_startup_s']:.2f}s; "
                          f"same figures: {r['same_figures']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

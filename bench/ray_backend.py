"""dmnflow across two Ray nodes (``--backend ray``) against the same graph on the local backend
and against a Ray actor call of the same payload, in one run; then start-up, Ray vs local.

    python bench/ray_backend.py [--quick] [--sizes 64,65536] [--repeat N] [--startup-runs N]
                        [--graphs graphs/dmn_trading.yaml,graphs/quickstart.yaml] [--json out.json]

The cluster is a ``ray.cluster_utils.Cluster`` on this machine, two raylets on loopback as
tests/integration/test_ray.py makes them: node ``a`` (label ``host=a``, resource ``bench_a``)
and node ``b`` (``host=b``, ``bench_b``). Each process of a graph asks for one of the two
resources, so the two ends of every hop run on different Ray nodes and their edges are tcp
with CURVE (the run's own keys), exactly as between two machines; the local backend runs
the same graph with its default ipc. Per size (``bytes``, codec raw):

- paced hop: bench/hop.py's ``Ping -> Sink`` at its rate (1000 msg/s up to 64 KiB), ``policy:
  block``: the report's edge p50/p99 (send stamp -> receipt) and the sink's exact emit ->
  handler p50/p99. Against it, a Ray actor on node a calls ``stamp.remote(payload, t_ns)``
  on an actor on node b at the same rate without waiting, and the callee keeps
  ``time.time_ns() - t_ns`` at the method's entry: Ray's one-way hop, submit -> handler;
- back to back: bench/rtt.py's ``RttPing <-> Pong`` round trip (``policy: block``) against
  the caller's ``ray.get(echo.remote(payload))``, the payload coming back;
- throughput: hop.py's flat-out ``Ping -> Sink`` against the caller keeping ``--window``
  calls in flight (``ray.wait``), each returning ``None``.

The Ray calls get ``--ray-warmup`` calls first (the first call to an actor opens its
connection; a graph's connections are open before its first message). Start-up: ``dmnflow
launch GRAPH --duration 2s --report r.json`` as a user runs it (a new interpreter each
time), on the cluster (the trading graph's data layer on ``host: a``, its models on ``host:
b``, the quickstart's source on a and the rest on b) and on the local backend,
interleaved: the report's ``startup_s`` (placing the actors, starting every worker, until
every worker is ready) and the time outside the run: the command's wall time minus the
report's ``duration_s`` (the interpreter, compiling and checking the graph, joining the
cluster before; stopping every actor and removing the placement groups after). The cluster is shared by all the
measurements; its raylets, GCS and Ray's workers load the two cores while the local
backend runs too, which is in the machine line.

Every actor, the cluster and each ``dmnflow`` command stop in a ``finally`` (SIGTERM too);
at the end any process still carrying this run's marker variable is named and killed by
pid. No asserts: speed is reported, not tested.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import harness
import hop
import rtt
from harness import fmt, human_size, ratio

from dmnflow.runtime.backends.ray import NAMESPACE, _loopback_ray

MARK = "DMNFLOW_BENCH_RAY"
NODE_A, NODE_B = {"bench_a": 1}, {"bench_b": 1}  # what each end of a hop asks for
PLACE_HOP = {"ping": {"resources": NODE_A}, "sink": {"resources": NODE_B}}
PLACE_RTT = {"ping": {"resources": NODE_A}, "pong": {"resources": NODE_B}}
PLACE_GRAPH = {  # --set keys per graph: where its nodes run on the cluster
    "graphs/dmn_trading.yaml": ["nodes.market.host=a", "nodes.features.host=a", "nodes.lstm.host=b",
                                "nodes.transformer.host=b", "nodes.meta.host=b"],
    "graphs/quickstart.yaml": ["nodes.counter.host=a", "nodes.scale.host=b", "nodes.sink.host=b"],
}
STARTUP_DURATION_S = 2.0


# ---------------------------------------------------------------- the Ray actors of the baseline


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)  # what bench.nodes:Ping sends


class Callee:
    """Node b's end of the Ray baseline."""

    def __init__(self) -> None:
        self.one_way: list[int] = []

    def stamp(self, payload: bytes, t_ns: int) -> None:
        self.one_way.append(time.time_ns() - t_ns)

    def echo(self, payload: bytes) -> bytes:
        return payload

    def drop(self, payload: bytes) -> None:
        return None

    def take(self) -> list[int]:
        out, self.one_way = self.one_way, []
        return out

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


class Caller:
    """Node a's end: runs each measurement in its own process, as a node's loop would."""

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def paced(self, callee: Any, size: int, count: int, rate_hz: float, warmup: int) -> dict[str, Any]:
        import ray

        payload = _payload(size)
        ray.get([callee.stamp.remote(payload, time.time_ns()) for _ in range(warmup)])
        ray.get(callee.take.remote())
        period, due, refs = 1.0 / rate_hz, time.perf_counter(), []
        for _ in range(count):
            due += period
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            refs.append(callee.stamp.remote(payload, time.time_ns()))
        ray.get(refs)
        return ray.get(callee.take.remote())

    def round_trips(self, callee: Any, size: int, count: int, warmup: int) -> dict[str, Any]:
        import ray

        payload = _payload(size)
        rtts = []
        for i in range(warmup + count):
            t0 = time.perf_counter_ns()
            back = ray.get(callee.echo.remote(payload))
            if i >= warmup:
                rtts.append(time.perf_counter_ns() - t0)
            if len(back) != size:
                raise RuntimeError(f"the echo sent back {len(back)} bytes of {size}")
        return rtts

    def throughput(self, callee: Any, size: int, count: int, window: int, warmup: int) -> dict[str, Any]:
        import ray

        payload = _payload(size)
        ray.get([callee.drop.remote(payload) for _ in range(warmup)])
        t0 = time.perf_counter()
        pending, sent = [], 0
        while sent < count or pending:
            while sent < count and len(pending) < window:
                pending.append(callee.drop.remote(payload))
                sent += 1
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return {"calls_per_s": count / (time.perf_counter() - t0), "n": count}


def _exact(ns: list[int]) -> dict[str, Any]:
    """Exact p50/p99 in microseconds, interpolated as the bench nodes' own (``exact_us``)."""
    from bench.nodes import exact_us  # the repository root is the cwd (harness.enter_repo)

    found = exact_us(ns)
    return {"p50_us": found["exact_p50_us"], "p99_us": found["exact_p99_us"], "n": len(ns)}


# ---------------------------------------------------------------- the cluster


class Cluster:
    """Two Ray nodes on loopback and the baseline's two actors; ``close`` stops all of it."""

    def __init__(self) -> None:
        import ray
        from ray.cluster_utils import Cluster as RayCluster

        self.ray = ray
        args = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
        self.cluster = RayCluster(initialize_head=True, head_node_args={
            **args, "num_cpus": 2, "resources": {"bench_a": 64}, "labels": {"host": "a"}})
        self.actors: list[Any] = []
        self.cluster.add_node(**args, num_cpus=2, resources={"bench_b": 64}, labels={"host": "b"})
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, namespace=NAMESPACE, logging_level="WARNING")
        self.address = self.cluster.address
        self.caller = ray.remote(Caller).options(num_cpus=0, resources=NODE_A).remote()
        self.callee = ray.remote(Callee).options(num_cpus=0, resources=NODE_B).remote()
        self.actors += [self.caller, self.callee]
        a, b = ray.get([self.caller.node.remote(), self.callee.node.remote()])
        if a == b:
            raise RuntimeError("the baseline's two actors landed on one Ray node")

    def call(self, method: str, *args: Any) -> Any:
        return self.ray.get(getattr(self.caller, method).remote(self.callee, *args), timeout=600)

    def close(self) -> None:
        ray = self.ray
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        with contextlib.suppress(Exception):
            ray.shutdown()
        self.cluster.shutdown()


def leftovers(mark: str) -> list[tuple[int, str]]:
    """Processes other than this one still running with this run's marker variable."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"{MARK}={mark}".encode() not in (entry / "environ").read_bytes():
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        found.append((int(entry.name), cmd))
    return found


# ---------------------------------------------------------------- measurements


def measure(cl: Cluster, size: int, quick: bool, window: int, ray_warmup: int) -> dict[str, Any]:
    ray_at = {"backend": "ray", "address": cl.address}
    rate, count = hop.latency_load(size, quick)
    row: dict[str, Any] = {"size": size, "rate_hz": rate, "count": count}
    for where, options in (("local", {}), ("ray", {"place": PLACE_HOP, **ray_at})):
        run = hop.dmnflow_hop("ipc", size, count, rate, **options)
        edge, sink = run.edge("ping", "sink"), run.results["sink"]
        row[f"{where}_paced"] = {"p50_us": edge.p50_us, "p99_us": edge.p99_us, "exact_p50_us": sink["exact_p50_us"],
                                 "exact_p99_us": sink["exact_p99_us"], "lost": count - sink["received"] + edge.lost,
                                 "hosts": [run.report.nodes[n].host for n in ("ping", "sink")]}
    row["call_paced"] = _exact(cl.call("paced", size, count, rate, ray_warmup))
    n_rtt, warm_rtt = rtt.load(size, quick)
    for where, options in (("local", {}), ("ray", {"place": PLACE_RTT, **ray_at})):
        row[f"{where}_rtt"] = rtt.dmnflow_rtt("ipc", "block", size, "bytes", n_rtt, warm_rtt, **options)
    row["call_rtt"] = _exact(cl.call("round_trips", size, n_rtt, warm_rtt))
    n_tp = hop.throughput_count(size, quick, raw=False)
    for where, options in (("local", {}), ("ray", {"place": PLACE_HOP, **ray_at})):
        run = hop.dmnflow_hop("ipc", size, n_tp, 0.0, **options)
        sink = run.results["sink"]
        row[f"{where}_tp"] = {"msgs_per_s": sink["msgs_per_s"], "lost": n_tp - sink["received"], "n": n_tp}
    row["call_tp"] = cl.call("throughput", size, n_tp, window, ray_warmup)
    ray_hop, local_hop, call = row["ray_paced"]["exact_p50_us"], row["local_paced"]["exact_p50_us"], \
        row["call_paced"]["p50_us"]
    row["ratios"] = {
        "paced_ray_vs_local": ratio(ray_hop, local_hop), "paced_ray_vs_call": ratio(ray_hop, call),
        "rtt_ray_vs_local": ratio(row["ray_rtt"]["p50_us"], row["local_rtt"]["p50_us"]),
        "rtt_ray_vs_call": ratio(row["ray_rtt"]["p50_us"], row["call_rtt"]["p50_us"]),
        "tp_ray_vs_local": ratio(row["ray_tp"]["msgs_per_s"], row["local_tp"]["msgs_per_s"]),
        "tp_ray_vs_call": ratio(row["ray_tp"]["msgs_per_s"], row["call_tp"]["calls_per_s"]),
    }
    return row


def startup(graph: str, backend: str, address: str) -> dict[str, Any]:
    """One ``dmnflow launch GRAPH --duration 2s`` (subprocess.run kills it past its timeout)."""
    with tempfile.TemporaryDirectory(prefix="dmnflow-bench-ray-") as tmp:
        report = Path(tmp, "r.json")
        argv = [sys.executable, "-m", "dmnflow", "launch", graph, "--duration", f"{STARTUP_DURATION_S:g}s",
                "--report", str(report)]
        if backend == "ray":
            argv += [w for s in PLACE_GRAPH.get(graph, []) for w in ("--set", s)]
            argv += ["--backend", "ray", "--address", address]
        env = {**os.environ, "NO_COLOR": "1", "DMNFLOW_OUT": tmp}
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=harness.ROOT, capture_output=True, text=True, timeout=300, env=env)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{graph} on {backend}: exit {done.returncode}: {done.stderr.strip()[-600:]}")
        data = json.loads(report.read_text())
    return {"startup_s": data["startup_s"], "wall_s": wall, "outside_s": wall - data["duration_s"],
            "nodes": len(data["nodes"]),
            "hosts": sorted({n.get("host", "") for n in data["nodes"].values()})}


# ---------------------------------------------------------------- tables


def pp(d: dict[str, Any], p50: str = "p50_us", p99: str = "p99_us") -> str:
    return f"{fmt(d.get(p50))} / {fmt(d.get(p99))}"


def x(v: float | None) -> str:
    return fmt(v, ".2f") + "x"


def render(rows: list[dict[str, Any]]) -> str:
    lat = harness.table(
        ["size", "local edge p50/p99", "ray edge p50/p99", "local exact p50/p99", "ray exact p50/p99",
         "Ray call one-way p50/p99", "ray / local", "ray / Ray call"],
        [[human_size(r["size"]), pp(r["local_paced"]), pp(r["ray_paced"]),
          pp(r["local_paced"], "exact_p50_us", "exact_p99_us"), pp(r["ray_paced"], "exact_p50_us", "exact_p99_us"),
          pp(r["call_paced"]), x(r["ratios"]["paced_ray_vs_local"]), x(r["ratios"]["paced_ray_vs_call"])]
         for r in rows])
    b2b = harness.table(
        ["size", "local round trip p50/p99", "ray round trip p50/p99", "ray.get(echo.remote(x)) p50/p99",
         "ray / local", "ray / Ray call"],
        [[human_size(r["size"]), pp(r["local_rtt"]), pp(r["ray_rtt"]), pp(r["call_rtt"]),
          x(r["ratios"]["rtt_ray_vs_local"]), x(r["ratios"]["rtt_ray_vs_call"])] for r in rows])
    tp = harness.table(
        ["size", "local msg/s", "ray msg/s", "Ray calls/s (window)", "ray / local", "ray / Ray call"],
        [[human_size(r["size"]), fmt(r["local_tp"]["msgs_per_s"], ",.0f") + _loss(r["local_tp"]),
          fmt(r["ray_tp"]["msgs_per_s"], ",.0f") + _loss(r["ray_tp"]), fmt(r["call_tp"]["calls_per_s"], ",.0f"),
          x(r["ratios"]["tp_ray_vs_local"]), x(r["ratios"]["tp_ray_vs_call"])] for r in rows])
    return (f"paced hop (exact: emit -> handler; Ray call: submit -> method entry)\n{lat}\n\n"
            f"back to back: round trips\n{b2b}\n\nthroughput, flat out\n{tp}")


def _loss(d: dict[str, Any]) -> str:
    return f" (LOST {d['lost']})" if d.get("lost") else ""


def spread(xs: list[float | None], spec: str = ".2f") -> str:
    vals = sorted(v for v in xs if v is not None)
    if not vals:
        return "-"
    return f"{format(statistics.median(vals), spec)} ({format(vals[0], spec)}-{format(vals[-1], spec)})"


def render_spread(rows: list[dict[str, Any]]) -> str:
    keys = ["paced_ray_vs_local", "paced_ray_vs_call", "rtt_ray_vs_local", "rtt_ray_vs_call", "tp_ray_vs_local",
            "tp_ray_vs_call"]
    body = []
    for size in dict.fromkeys(r["size"] for r in rows):
        group = [r for r in rows if r["size"] == size]
        body.append([human_size(size), str(len(group)), *(spread([r["ratios"][k] for r in group]) for k in keys)])
    return harness.table(["size", "runs", *keys], body)


def render_startup(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    body = []
    for graph, by in results.items():
        local, on_ray = by.get("local", []), by.get("ray", [])
        if not local or not on_ray:
            continue
        body.append([graph, str(on_ray[0]["nodes"]), str(len(local)),
                     spread([r["startup_s"] for r in local], ".2f"), spread([r["startup_s"] for r in on_ray], ".2f"),
                     x(ratio(statistics.median(r["startup_s"] for r in on_ray),
                             statistics.median(r["startup_s"] for r in local))),
                     spread([r["outside_s"] for r in local], ".2f"), spread([r["outside_s"] for r in on_ray], ".2f"),
                     x(ratio(statistics.median(r["outside_s"] for r in on_ray),
                             statistics.median(r["outside_s"] for r in local)))])
    return harness.table(["graph", "nodes", "runs", "local startup_s", "ray startup_s", "ray / local",
                          "local outside the run, s", "ray outside the run, s", "ray / local"], body)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer messages (hop.py's and rtt.py's --quick loads)")
    ap.add_argument("--sizes", default="64,65536", help="comma-separated byte counts (bytes, codec raw)")
    ap.add_argument("--repeat", type=int, default=1, help="measure every size N times, then median ratios (min-max)")
    ap.add_argument("--window", type=int, default=64, help="Ray calls in flight in the throughput baseline")
    ap.add_argument("--ray-warmup", type=int, default=100, help="Ray calls made before each Ray measurement")
    ap.add_argument("--startup-runs", type=int, default=3, help="launches per graph and backend (0: none)")
    ap.add_argument("--graphs", default="graphs/dmn_trading.yaml,graphs/quickstart.yaml",
                    help="comma-separated graphs whose start-up is measured")
    ap.add_argument("--json", metavar="PATH", help="write every figure (and the machine's noise) as JSON")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.json) if args.json else None
    harness.enter_repo()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    graphs = [g for g in args.graphs.split(",") if g]
    mark = os.environ[MARK] = uuid.uuid4().hex  # inherited by the raylets, Ray's workers and dmnflow's
    _loopback_ray()  # before Ray starts: every raylet and driver stays on 127.0.0.1

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # the finally below stops everything

    signal.signal(signal.SIGTERM, on_term)
    noise = harness.Noise()
    rows: list[dict[str, Any]] = []
    starts: dict[str, dict[str, list[dict[str, Any]]]] = {g: {"local": [], "ray": []} for g in graphs}
    errors: list[str] = []
    cl: Cluster | None = None
    cluster_s: float | None = None
    try:
        t0 = time.perf_counter()
        cl = Cluster()
        cluster_s = time.perf_counter() - t0
        print(f"  cluster of 2 nodes up in {cluster_s:.1f} s at {cl.address}", file=sys.stderr, flush=True)
        for _ in range(args.repeat):
            for size in sizes:
                try:
                    rows.append(measure(cl, size, args.quick, args.window, args.ray_warmup))
                except Exception as exc:  # one broken row must not lose the others
                    errors.append(f"{human_size(size)}: {type(exc).__name__}: {exc}")
                    print(f"  {human_size(size)}: FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                r = rows[-1]["ratios"]
                print(f"  {human_size(size)}: paced {x(r['paced_ray_vs_local'])} local, "
                      f"{x(r['paced_ray_vs_call'])} Ray call; round trip {x(r['rtt_ray_vs_local'])} local, "
                      f"{x(r['rtt_ray_vs_call'])} Ray call; msg/s {x(r['tp_ray_vs_local'])} local, "
                      f"{x(r['tp_ray_vs_call'])} Ray call", file=sys.stderr, flush=True)
        for i in range(args.startup_runs):
            for graph in graphs:
                for backend in (("local", "ray") if i % 2 == 0 else ("ray", "local")):  # alternate: runs drift
                    try:
                        starts[graph][backend].append(startup(graph, backend, cl.address))
                    except Exception as exc:
                        errors.append(f"start-up {graph} {backend}: {exc}")
                        print(f"  start-up {graph} {backend}: FAILED: {exc}", file=sys.stderr, flush=True)
                        continue
                    s = starts[graph][backend][-1]
                    print(f"  start-up {graph} {backend}: startup_s {s['startup_s']:.2f}, wall {s['wall_s']:.2f}",
                          file=sys.stderr, flush=True)
    finally:
        if cl is not None:
            cl.close()
        left = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (left := leftovers(mark)):
            time.sleep(0.5)
        for pid, cmd in left:
            print(f"  left running, killed: pid {pid}: {cmd}", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    machine = noise.summary()
    if rows:
        print(render(rows))
        if args.repeat > 1:
            print("\nmedian ratio (min-max) over the repeats")
            print(render_spread(rows))
    if any(by["local"] and by["ray"] for by in starts.values()):
        print(f"\nstart-up: `dmnflow launch GRAPH --duration {STARTUP_DURATION_S:g}s`, median (min-max)")
        print(render_startup(starts))
    for e in errors:
        print(f"FAILED {e}")
    print(f"\nmachine: {machine}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"bench": "ray", "quick": args.quick, "machine": machine, "cluster_s": cluster_s,
                       "rows": rows, "startup": starts, "errors": errors}, f, indent=2)
    return 1 if errors and not rows else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

"""The ray backend: each process of the plan a Ray actor on a Ray cluster, ZeroMQ between them.

Ray places; dmnflow runs. Each process of the plan becomes one ``WorkerHost`` actor
(``backends/ray_host.py``) asking Ray for what the process needs:

- ``num_cpus``: how many cores its nodes pin (``cpus:``; none: 0, it is not pinned);
  ``num_gpus``: 1 when a node names a ``gpu:`` (Ray then makes that GPU the only one the
  worker sees, so the plan's GPU index becomes 0); ``resources``: the sum of its nodes'
  ``resources:`` (Ray custom resources);
- ``host:``: the node whose label ``host`` (``ray start --labels host=NAME``), address or
  host name it is. Every process naming one host goes into one ``STRICT_PACK`` placement
  group, a bundle per process, each bundle selecting that host's nodes: they land together
  on one of them, or not at all.

The actor starts the worker next to it on its node; the worker binds, reports and connects
through the supervisor on the driver exactly as a local one (``runtime/supervisor.py``).
Before anything starts, ``open`` checks the plan against the cluster's nodes (a host no
node is, resources no node has, an unreachable cluster, Ray not installed: a
``PlacementError`` naming the node's file:line:col); once the actors are placed, the plan
is *placed* (``place_plan``): edges between processes on different nodes become tcp on
the producer's node address (same-node edges stay ipc, with shared memory), and every
tcp connection, control included, is CURVE with a keypair per process made on its own node
for this run (or the graph's key directory, ``security.curve``; ``security.insecure`` turns
it off).

A worker killed with -9, or its actor killed (``ray.kill``), is restarted by the
supervisor per the node's restart policy; a killed actor is replaced on the same node,
taking over its run directory, so the report stays exact. A lost node fails the run,
naming the graph's nodes that ran on it. At the end every actor is stopped and every
placement group removed, and a Ray this backend started for the run is stopped.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ...codecs import get_codec
from ...errors import LaunchError
from ...plan import RUN_DIR, Plan, SecurityPlan
from ...transport.security import Curve, KeyError_, generate_keys, load_curve
from ..env import declared_secrets
from ..processes import SERVICE_TERM_WAIT_S, ZYGOTE_ENV, ByPid, exists, stop
from . import Handle, PlacementError, RunContext
from .ray_host import THREAD_VARS, NodeWarm, WorkerHost

__all__ = ["HOST_LABEL", "KEY_LABEL", "NAMESPACE", "LocalRay", "RayBackend", "place_plan", "start_local_ray"]

log = logging.getLogger("dmnflow.supervisor")

NAMESPACE = "dmnflow"  # every run's actors are named "<run>.<id>/<process>#<generation>" in it
HOST_LABEL = "host"  # `ray start --labels host=gpu1`: what a node's `host: gpu1` selects
KEY_LABEL = "dmnflow.io/key"  # with security.curve: the keypair (in the key directory) this node's processes use
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 60.0  # one round of calls to every actor (they run a few file operations each)
ZYGOTE_MIN_PROCESSES = 3  # a Ray node with fewer (and under two that run models) gets no zygote (_zygotes)
UNAVAILABLE_S = 60.0  # an actor Ray cannot reach for this long is taken for lost (Ray decides sooner)
INSTALL_HINT = "pip install -e '.[ray]' (or pip install 'dmnflow[ray]')"


# ---------------------------------------------------------------- the cluster and what processes ask of it


@dataclass(frozen=True)
class RayNode:
    """A node of the Ray cluster as placement sees it."""

    id: str
    ip: str
    hostname: str
    labels: dict[str, str]
    resources: dict[str, float]

    def describe(self) -> str:
        """How messages and the report name it: its ``host`` label (else host name), address, id."""
        return f"{self.labels.get(HOST_LABEL) or self.hostname} ({self.ip}, ray node {self.id[:8]})"

    def matches(self, host: str) -> bool:
        return host in (self.labels.get(HOST_LABEL), self.ip, self.hostname, self.id)


@dataclass
class Demand:
    """What one process of the plan asks Ray for."""

    process: str
    nodes: list[str]  # the plan nodes it hosts
    spec_node: str  # the YAML node messages point at (the first one it hosts)
    loc: str  # that node's file:line:col
    num_cpus: float
    num_gpus: int
    resources: dict[str, float]
    host: str | None

    def needs(self) -> dict[str, float]:
        need = {"CPU": self.num_cpus, "GPU": float(self.num_gpus), **self.resources}
        return {k: v for k, v in need.items() if v}

    def bundle(self) -> dict[str, float]:
        """Its bundle in a placement group (Ray refuses an empty one: a process that asks for
        nothing reserves a hundredth of a CPU)."""
        return self.needs() or {"CPU": 0.01}


def demands(plan: Plan) -> dict[str, Demand]:
    """Per process of the plan: the cores it pins, its GPU, resources and host."""
    out = {}
    for proc in plan.processes:
        nodes = [plan.node(n) for n in proc.nodes]
        resources: dict[str, float] = {}
        for node in nodes:
            for name, amount in node.resources.items():
                resources[name] = resources.get(name, 0.0) + amount
        host = next((n.host for n in nodes if n.host), None)
        gpus = {n.gpu for n in nodes if n.gpu is not None}
        first = next((n for n in nodes if n.host), nodes[0])
        out[proc.name] = Demand(proc.name, proc.nodes, first.spec_name, first.loc, float(len(proc.cpus)),
                                1 if gpus else 0, resources, host)
    return out


def _fits(have: dict[str, float], need: dict[str, float]) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _fmt(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.startswith(("node:", "memory",
                                                                                            "object_store"))}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def _split(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


# ---------------------------------------------------------------- the placed plan


def place_plan(plan: Plan, node_of: dict[str, str], ip_of: dict[str, str], security: SecurityPlan) -> Plan:
    """The plan as it runs on the cluster: an edge between processes on different nodes (by
    ``node_of``: process -> Ray node id) goes over tcp on the producer's node address
    (``ip_of``); same-node edges keep their transport; every tcp bind binds its node's
    address; GPU indices become 0 (Ray shows each GPU actor only its own GPU).

    Bind ids do not change: they are how the supervisor and the workers name binds.

    Raises:
        PlacementError: an edge that must cross nodes uses a codec that is not safe on tcp.
    """
    proc_of = {n.name: n.process for n in plan.nodes}
    moved: dict[str, tuple[str, str]] = {}  # bind id -> (transport, endpoint)
    unsafe = []
    for node in plan.nodes:
        ip = ip_of[node.process]
        host = f"[{ip}]" if ":" in ip else ip
        for out in node.outputs:
            for bind in out.binds:
                if bind.transport == "inproc":
                    continue
                crosses = any(node_of[proc_of[plan.edges[e].dst]] != node_of[node.process] for e in bind.edges)
                if bind.transport in ("ipc", "iox") and not crosses:
                    continue
                port = bind.endpoint.rsplit(":", 1)[1] if bind.transport == "tcp" else "*"
                moved[bind.id] = ("tcp", f"tcp://{host}:{port}")
                if bind.transport in ("ipc", "iox") and not get_codec(out.codec).network_safe:
                    unsafe.append(f"{node.loc}: nodes.{node.spec_name}.outputs.{out.port}: codec {out.codec!r} may "
                                  "run code while decoding, and this output's consumers run on other Ray nodes")
    if unsafe:
        raise PlacementError("the graph cannot be placed on the cluster:\n  " + "\n  ".join(unsafe))

    def bind_update(bind: Any) -> Any:
        if bind.id not in moved:
            return bind
        transport, endpoint = moved[bind.id]
        return bind.model_copy(update={"transport": transport, "endpoint": endpoint})

    nodes = []
    for node in plan.nodes:
        outputs = [o.model_copy(update={"binds": [bind_update(b) for b in o.binds]}) for o in node.outputs]
        inputs = [i.model_copy(update={"connects": [
            c.model_copy(update=dict(zip(("transport", "endpoint"), moved[c.bind], strict=True)))
            if c.bind in moved else c for c in i.connects]}) for i in node.inputs]
        update: dict[str, Any] = {"outputs": outputs, "inputs": inputs}
        if node.gpu is not None:
            update["gpu"] = 0
            if node.model is not None and node.model.gpu is not None:
                update["model"] = node.model.model_copy(update={"gpu": 0})
        nodes.append(node.model_copy(update=update))
    edges = [e.model_copy(update=dict(zip(("transport", "endpoint"), moved[e.bind], strict=True)))
             if e.bind in moved else e for e in plan.edges]
    return plan.model_copy(update={"nodes": nodes, "edges": edges, "security": security})


# ---------------------------------------------------------------- handles


class RayHandle:
    """One incarnation of a worker in its actor (``backends.Handle``): its exit is the actor's
    ``wait`` call returning (code and exact counts), or failing (the actor died); a signal is
    the actor's ``signal`` call, which sends it to the worker by PID."""

    def __init__(self, backend: RayBackend, process: str, inc: int, actor: Any, start_ref: Any,
                 wait_ref: Any) -> None:
        self.backend = backend
        self.process, self.inc = process, inc
        self.actor = actor
        self.start_ref, self.wait_ref = start_ref, wait_ref
        self.returncode: int | None = None
        self.reason: str | None = None
        self.fatal = False
        self.node = backend.node_of[process]
        self.host = backend.nodes[self.node].describe() if self.node in backend.nodes else "?"
        self._pid: int | None = None
        self.unavailable_since = 0.0

    @property
    def pid(self) -> int:
        if self._pid is None:
            try:
                self._pid = int(self.backend.ray.get(self.start_ref, timeout=CALL_TIMEOUT_S))
            except Exception:
                self._pid = -1
        return self._pid

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _ = self.backend.ray.wait([self.wait_ref], timeout=0)
            if ready:
                self._ended()
        return self.returncode

    def _ended(self) -> None:
        ray = self.backend.ray
        try:
            code, counts = ray.get(self.wait_ref)
        except ray.exceptions.ActorUnavailableError as exc:  # unreachable for now: back, or declared dead, soon
            self.unavailable_since = self.unavailable_since or time.monotonic()
            if time.monotonic() - self.unavailable_since < UNAVAILABLE_S:
                self.wait_ref = self.actor.wait.remote(self.inc)  # ask again: it answers, or Ray says why not
                return
            self.returncode, self.fatal = -9, True
            self.reason = self.backend.node_lost(self.node, "its node has died") or _first_line(exc)
        except ray.exceptions.RayActorError as exc:  # the actor is gone: killed, crashed, or its node was lost
            self.returncode = -9
            self.backend.actor_died(self.process)
            lost = self.backend.node_lost(self.node, str(exc))
            if lost is not None:
                self.reason, self.fatal = lost, True
            else:
                self.reason = f"its Ray actor on {self.host} died ({_first_line(exc)})"
            return
        except Exception as exc:  # the actor could not start it (its run directory, the host's checks)
            self.returncode = 1
            self.reason = _cause(exc)
            return
        self.returncode = int(code)
        if counts is not None:
            self.backend.exact[(self.process, self.inc)] = counts

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.process} on {self.host}", timeout or 0.0)
            self.backend.ray.wait([self.wait_ref], timeout=0.05 if left is None else min(left, 0.05))
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(Exception):  # a dead actor is noticed by poll()
                self.actor.signal.remote(self.inc, int(sig))


class _Failed:
    """An incarnation that could not even be handed to an actor (its replacement failed): a
    ``backends.Handle`` that has already ended."""

    def __init__(self, host: str, reason: str, fatal: bool) -> None:
        self.pid, self.returncode, self.host, self.reason, self.fatal = -1, 1, host, reason, fatal

    def poll(self) -> int:
        return 1

    def wait(self, timeout: float | None = None) -> int:
        return 1

    def send_signal(self, sig: int) -> None:
        pass  # nothing runs


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for line in lines:  # Ray's own explanation, e.g. "The actor is dead because it was killed by `ray.kill`."
        if line.startswith("The actor") and "unexpectedly" not in line:
            return line.rstrip(".")
    return lines[0].rstrip(".") if lines else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """The message of what a remote call raised (a HostError's text), without Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    if cause is not None and str(cause):
        return str(cause)
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


# ---------------------------------------------------------------- the backend


@dataclass
class _Slot:
    """Where a process's actor goes: a placement group bundle, or (a replacement) a node."""

    group: Any = None
    index: int = 0


@dataclass
class RayBackend:
    """Workers as Ray actors; see the module docstring."""

    address: str | None = None  # None: a Ray started for this run; "auto"; "HOST:PORT"
    placement_timeout_s: float = 120.0

    name: str = field(default="ray", init=False)
    remote: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        self.ray: Any = None
        self.plan: Plan | None = None
        self.placed: Plan | None = None
        self.owns_ray = False  # we called ray.init: we call ray.shutdown (which stops a Ray we started)
        self.local: LocalRay | None = None  # the Ray started for this run: stopped by PID at close
        self.started_ray = False
        self.loopback = False
        self.nodes: dict[str, RayNode] = {}
        self.demands: dict[str, Demand] = {}
        self.run: RunContext | None = None
        self.actors: dict[str, Any] = {}
        self.warm: dict[str, Any] = {}  # Ray node id -> its NodeWarm actor (the node's zygote)
        self.zygote_of: dict[str, Any] = {}  # Ray node id -> the ref to its zygote's socket path (NodeWarm.open)
        self.generation: dict[str, int] = {}
        self.dead: set[str] = set()  # processes whose actor died on a node that lives: replace before spawning
        self.node_of: dict[str, str] = {}
        self.ip_of: dict[str, str] = {}
        self.run_dir_of: dict[str, str] = {}
        self.slots: dict[str, _Slot] = {}
        self.groups: list[Any] = []
        self.exact: dict[tuple[str, int], list[int]] = {}  # counts read after each incarnation exited
        self.fetched: set[str] = set()
        self.lost: dict[str, str] = {}  # node id -> the message that fails the run
        self.curve: Curve | None = None
        self.auth: Any = None
        self.driver_keys = ""  # the directory the supervisor's ZAP handler admits keys from
        self.key_of: dict[str, str] = {}
        self.publics: dict[str, bytes] = {}
        self.control = ""
        self.control_key: str | None = None
        self.prefix = ""

    # ---------------------------------------------------------------- open: connect and check

    def open(self, plan: Plan) -> None:
        try:
            import ray
        except ImportError:
            raise PlacementError(f"the ray backend needs Ray, which is not installed here: {INSTALL_HINT}") from None
        self.ray, self.plan = ray, plan
        self.demands = demands(plan)
        self._connect()
        try:
            self.nodes = self._alive()
            self._check()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        ray = self.ray
        target = None
        if self.address not in (None, "auto"):
            split = _split(str(self.address))
            if split is None:
                raise PlacementError(f"--address {self.address!r} is not HOST:PORT (the address `ray start --head` "
                                     "prints) or auto")
            target = split
        elif self.address == "auto":
            target = self._auto()
        self.loopback = target is None or _loopback(target[0])
        if self.loopback:
            _loopback_ray()
        if ray.is_initialized():  # a driver already (a test, a Ray Tune trial): run on its cluster, leave it be
            return
        quiet = {"logging_level": logging.WARNING, "namespace": NAMESPACE, "log_to_driver": True}
        if target is None:
            cpus = max(os.cpu_count() or 1, int(sum(d.num_cpus for d in self.demands.values()) + 0.999))
            self.local = start_local_ray(cpus, namespace=NAMESPACE, log_to_driver=True)
            self.owns_ray = self.started_ray = True
            return
        host, port = target
        try:
            socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise PlacementError(f"cannot reach the Ray cluster at {host}:{port}: {exc.strerror or exc}; start one "
                                 "with `ray start --head` (it prints its address), or leave out --address to run "
                                 "on a Ray started for this run") from None
        try:
            ray.init(address=f"{host}:{port}", **quiet)
        except Exception as exc:  # a token missing, versions that differ, not a Ray at all
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise PlacementError(f"cannot join the Ray cluster at {host}:{port}: {_first_line(exc)}") from None
        self.owns_ray = True

    def _auto(self) -> tuple[str, int]:
        """The cluster ``ray.init(address="auto")`` would join (RAY_ADDRESS, else the last
        ``ray start`` on this machine), found without hanging on a dead one."""
        found = os.environ.get("RAY_ADDRESS")
        if not found:
            try:
                from ray._private.services import canonicalize_bootstrap_address  # what ray.init("auto") reads

                found = canonicalize_bootstrap_address("auto")
            except Exception:
                found = None
        split = _split(found) if found else None
        if split is None:
            raise PlacementError("--address auto: no Ray cluster found on this machine (RAY_ADDRESS is unset and "
                                 "`ray start` has not run here); start one with `ray start --head`, or give "
                                 "--address HOST:PORT")
        return split

    def _alive(self) -> dict[str, RayNode]:
        return {n["NodeID"]: RayNode(n["NodeID"], n["NodeManagerAddress"], n.get("NodeManagerHostname", ""),
                                     dict(n.get("Labels") or {}), dict(n.get("Resources") or {}))
                for n in self.ray.nodes() if n.get("Alive")}

    def _check(self) -> None:
        """Every process has a node it fits (and every host group one node for all of it)."""
        nodes = list(self.nodes.values())
        listing = "; ".join(f"{n.describe()}: {_fmt(n.resources)}" for n in nodes)
        problems = []
        by_host: dict[str, list[Demand]] = {}
        for d in self.demands.values():
            where = f"{d.loc}: nodes.{d.spec_node}"
            if d.host is not None:
                by_host.setdefault(d.host, []).append(d)
                candidates = [n for n in nodes if n.matches(d.host)]
                if not candidates:
                    problems.append(f"{where}.host: no Ray node is {d.host!r} (its `{HOST_LABEL}` label, address or "
                                    f"host name); the nodes are {', '.join(n.describe() for n in nodes)}; label one "
                                    f"with `ray start ... --labels {HOST_LABEL}={d.host}`")
                    continue
            else:
                candidates = nodes
            if not any(_fits(n.resources, d.needs()) for n in candidates):
                on = f" that is {d.host!r}" if d.host else ""
                problems.append(f"{where}: process {d.process} needs {_fmt(d.needs())} and no Ray node{on} has "
                                f"that much (nodes: {listing}); ask for less, or add a node that has it")
        for host, group in by_host.items():
            if len(group) < 2:
                continue
            total: dict[str, float] = {}
            for d in group:
                for k, v in d.bundle().items():
                    total[k] = total.get(k, 0.0) + v
            candidates = [n for n in nodes if n.matches(host)]
            if candidates and not any(_fits(n.resources, total) for n in candidates) \
                    and all(any(_fits(n.resources, d.needs()) for n in candidates) for d in group):
                problems.append(f"{group[0].loc}: nodes.{group[0].spec_node}.host: the processes on host {host!r} "
                                f"({', '.join(d.process for d in group)}) share one node and need {_fmt(total)} "
                                f"together, which no node that is {host!r} has (nodes: {listing})")
        if problems:
            raise PlacementError("the Ray cluster cannot run this graph as written:\n  " + "\n  ".join(problems))

    # ---------------------------------------------------------------- the control socket

    def prepare(self, run: RunContext) -> None:
        """Nothing to fork here: each worker starts next to its actor (``ray_host.py``)."""

    def bind_control(self, zctx: zmq.Context, sock: zmq.Socket, run_dir: str) -> str:
        """tcp on the driver's address, where every node reaches it; CURVE unless the graph says
        ``security.insecure`` (the run's own keys, or the graph's key directory)."""
        assert self.plan is not None
        security = self.plan.security
        if security.curve is not None:
            try:
                self.curve = load_curve(security.curve, security.key)
            except KeyError_ as exc:
                raise PlacementError(f"CURVE keys: {exc}") from None
            self.driver_keys, self.control_key = security.curve, self.curve.key
        elif not security.insecure:
            keys = Path(run_dir, "keys")
            generate_keys(keys, ["driver"])
            self.curve = load_curve(str(keys), "driver")
            self.driver_keys, self.control_key = str(keys), "driver"
        if self.curve is not None:
            self.auth = self.curve.authenticator(zctx)  # admits the workers' keys (more once they are made)
            self.curve.serve(sock)
        ip = "127.0.0.1" if self.loopback else self.ray.util.get_node_ip_address()
        host = f"[{ip}]" if ":" in ip else ip
        port = sock.bind_to_random_port(f"tcp://{host}")
        self.control = f"tcp://{host}:{port}"
        return self.control

    # ---------------------------------------------------------------- begin: place the actors

    def begin(self, run: RunContext) -> None:
        ray = self.ray
        assert self.plan is not None
        self.run = run
        self.prefix = f"{run.name}.{hmac.new(run.token, b'ray', 'sha256').hexdigest()[:8]}"
        self.host_cls = ray.remote(WorkerHost)
        zygotes = self._zygotes(self._groups())  # a named host's node is known now: its imports start at once
        for process in self.demands:
            self.actors[process] = self._actor(process)
        infos = self._gather({p: a.where.remote() for p, a in self.actors.items()}, "be placed",
                             self.placement_timeout_s)
        self.nodes.update(self._alive())
        for process, info in infos.items():
            self.node_of[process], self.ip_of[process] = info["node_id"], info["ip"]
        on: dict[str, list[str]] = {}
        for process, node in self.node_of.items():
            on.setdefault(node, []).append(process)
        zygotes.update(self._zygotes(on))  # the nodes Ray chose, where it pays
        self.run_dir_of = self._gather({p: a.open_dir.remote() for p, a in self.actors.items()}, "make a run directory")
        security = self._security()
        self.placed = place_plan(self.plan, self.node_of, self.ip_of, security)
        self.zygote_of = zygotes  # not waited for: each actor asks for its node's once it starts its worker
        self._prepare(list(self.actors))
        for process in self.actors:
            log.info("process %s runs on %s", process, self.nodes[self.node_of[process]].describe())

    def _zygotes(self, on: dict[str, list[str]]) -> dict[str, Any]:
        """A ``NodeWarm`` actor starting the zygote of each Ray node in ``on`` (node id -> the
        processes known to run there) where it pays: a node with ``ZYGOTE_MIN_PROCESSES``
        processes or two that run models gets one set of imports (numpy, and torch where a
        process runs a model) instead of one per worker; a node with one or two plain
        processes would pay more for the zygote's actor than it saves. Refs to their sockets'
        paths, which the actors of that node wait for when they start their workers."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        assert self.plan is not None
        if os.environ.get(ZYGOTE_ENV, "1") == "0":
            return {}
        models = {n.process for n in self.plan.nodes if n.model is not None}
        threads = {v: os.environ[v] for v in THREAD_VARS if v in os.environ}
        cls = self.ray.remote(NodeWarm)
        refs = {}
        for node, procs in on.items():
            with_models = sum(p in models for p in procs)
            if node in self.warm or (len(procs) < ZYGOTE_MIN_PROCESSES and with_models < 2):
                continue
            actor = cls.options(num_cpus=0, max_restarts=0, max_concurrency=2, namespace=NAMESPACE,
                                name=f"{self.prefix}/@node{len(self.warm)}",
                                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
            self.warm[node] = actor
            refs[node] = actor.open.remote(with_models > 0, threads, os.getcwd())
        return refs

    def _groups(self) -> dict[str, list[str]]:
        """A STRICT_PACK placement group per host the graph names: its processes land together on
        one node that is that host, or the run does not start. Returns where they will run
        (node id -> processes)."""
        from ray.util.placement_group import placement_group, placement_group_table

        by_host: dict[str, list[str]] = {}
        for d in self.demands.values():
            if d.host is not None:
                by_host.setdefault(d.host, []).append(d.process)
        pending = {}
        for host, procs in by_host.items():
            ids = [n.id for n in self.nodes.values() if n.matches(host)]
            selector = {"ray.io/node-id": ids[0] if len(ids) == 1 else f"in({','.join(ids)})"}
            group = placement_group([self.demands[p].bundle() for p in procs], strategy="STRICT_PACK",
                                    name=f"dmnflow:{self.prefix}:{host}", bundle_label_selector=[selector] * len(procs))
            self.groups.append(group)
            for i, p in enumerate(procs):
                self.slots[p] = _Slot(group, i)
            pending[host] = group.ready()
        self._gather(pending, "reserve their host's resources (placement group)", self.placement_timeout_s)
        on: dict[str, list[str]] = {}
        for procs in by_host.values():
            with contextlib.suppress(Exception):  # only a head start for the zygotes: begin() finds out anyway
                node = placement_group_table(self.slots[procs[0]].group)["bundles_to_node_id"][0]
                on.setdefault(node, []).extend(procs)
        return on

    def _actor(self, process: str, node: str | None = None) -> Any:
        """A new actor for ``process``: in its placement group bundle, else on ``node`` (a
        replacement goes where its predecessor ran), else wherever Ray puts it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

        d = self.demands[process]
        generation = self.generation[process] = self.generation.get(process, -1) + 1
        options: dict[str, Any] = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus, "max_restarts": 0,
                                   "max_concurrency": 8, "namespace": NAMESPACE,
                                   "name": f"{self.prefix}/{process}#{generation}"}
        if d.resources:
            options["resources"] = dict(d.resources)
        slot = self.slots.get(process)
        if slot is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(slot.group, slot.index)
        elif node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return self.host_cls.options(**options).remote(process)

    def _security(self) -> SecurityPlan:
        """CURVE for the placed plan: a keypair per process made on its node (its secret stays
        there), the graph's key directory (a node's ``dmnflow.io/key`` label picks its keypair),
        or nothing when the graph says ``security.insecure``."""
        assert self.plan is not None
        security = self.plan.security
        if security.curve is not None:
            keys = {p: self.nodes[self.node_of[p]].labels.get(KEY_LABEL) or security.key or "" for p in self.actors}
            differ = {p: k for p, k in keys.items() if k and k != security.key}
            return security.model_copy(update={"keys": keys if differ else {}})
        if security.insecure:
            return security
        self.key_of = {p: f"p{i}" for i, p in enumerate(self.actors)}
        self.publics = self._gather({p: a.keypair.remote(self.key_of[p]) for p, a in self.actors.items()},
                                    "make their keys")
        by_name = {self.key_of[p]: public for p, public in self.publics.items()}
        for name, public in by_name.items():  # the supervisor admits every process's key
            Path(self.driver_keys, f"{name}.key").write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
        self.auth.configure_curve(domain="*", location=self.driver_keys)
        return SecurityPlan(curve=f"{RUN_DIR}/keys", key=None, insecure=False, keys=dict(self.key_of))

    def _publics(self) -> dict[str, bytes]:
        """The public keys every run directory gets: each process's and the driver's."""
        if not self.key_of:
            return {}
        assert self.curve is not None
        return {**{self.key_of[p]: k for p, k in self.publics.items()}, "driver": self.curve.public}

    def _prepare(self, processes: list[str]) -> None:
        assert self.placed is not None and self.run is not None
        plan_json = self.placed.to_json(indent=None)
        publics = self._publics()
        project = os.getcwd()
        self._gather({p: self.actors[p].prepare.remote(plan_json, self.run.token, self.control, self.control_key,
                                                       publics, project, self.nodes[self.node_of[p]].describe(),
                                                       self._zygote_for(p))
                      for p in processes}, "get ready")

    def _zygote_for(self, process: str) -> list[Any] | None:
        """The ref to the socket of the zygote on ``process``'s node, in a list so that Ray hands
        it over as a ref (the actor waits for it when it starts the worker, not in ``prepare``)."""
        ref = self.zygote_of.get(self.node_of[process])
        return None if ref is None else [ref]

    def _gather(self, refs: dict[str, Any], what: str, timeout_s: float = CALL_TIMEOUT_S) -> dict[str, Any]:
        """``ray.get`` of one call per process; a failure names the processes and why."""
        ray = self.ray
        keys = list(refs)
        ready, pending = ray.wait([refs[k] for k in keys], num_returns=len(keys), timeout=timeout_s)
        if pending:
            late = [k for k in keys if refs[k] in pending]
            wanted = "; ".join(f"{k} needs {_fmt(self.demands[k].needs()) if k in self.demands else 'its host'}"
                               for k in late)
            raise LaunchError(f"{', '.join(late)} could not {what} within {timeout_s:.0f}s ({wanted}; free on the "
                              f"cluster now: {_fmt(ray.available_resources())}): other work holds those resources")
        out, failed, placement = {}, [], False
        for k in keys:
            try:
                out[k] = ray.get(refs[k])
            except Exception as exc:
                host = "cannot run on" in str(exc)  # a host check (ray_host.HostError): the graph asks too much
                placement = placement or host
                failed.append(_cause(exc) if host else f"{k}: {_first_line(exc)}")
        if failed:
            raise (PlacementError if placement else LaunchError)("; ".join(failed))
        return out

    # ---------------------------------------------------------------- workers

    def spawn(self, process: str, inc: int) -> Handle:
        assert self.run is not None and self.plan is not None
        if process in self.dead:
            failed = self._replace(process)
            if failed is not None:
                return failed  # type: ignore[return-value]
        actor = self.actors[process]
        secrets = declared_secrets(self.plan, process)
        threads = {v: os.environ[v] for v in THREAD_VARS if v in os.environ}
        start = actor.start.remote(inc, secrets, dict(self.run.resolved), threads)
        return RayHandle(self, process, inc, actor, start, actor.wait.remote(inc))

    def actor_died(self, process: str) -> None:
        self.dead.add(process)

    def _replace(self, process: str) -> _Failed | None:
        """A new actor on the node the dead one ran on, taking over its run directory (its
        counters, ipc endpoints and keypair); None when it is ready."""
        node = self.node_of[process]
        host = self.nodes[node].describe() if node in self.nodes else node[:8]
        lost = self.node_lost(node, "")
        if lost is not None:
            return _Failed(host, lost, True)
        try:
            actor = self._actor(process, node)
            self.actors[process] = actor
            ray = self.ray
            info = ray.get(actor.where.remote(), timeout=self.placement_timeout_s)
            if info["node_id"] != node:
                raise LaunchError(f"Ray placed it on node {info['node_id'][:8]}, not on {host}")
            self.run_dir_of[process] = ray.get(actor.open_dir.remote(self.run_dir_of.get(process)),
                                               timeout=CALL_TIMEOUT_S)
            if self.key_of:
                public = ray.get(actor.keypair.remote(self.key_of[process]), timeout=CALL_TIMEOUT_S)
                if public != self.publics[process]:  # the dead actor's directory was gone: its key with it
                    raise LaunchError("its run directory (and so its CURVE key) did not survive")
            self._prepare([process])
        except Exception as exc:
            lost = self.node_lost(node, "")
            return _Failed(host, lost or f"process {process}: its Ray actor could not be replaced on {host}: "
                           f"{_cause(exc)}", lost is not None)
        self.dead.discard(process)
        self.fetched.discard(process)
        return None

    def node_lost(self, node: str, error: str) -> str | None:
        """The message that fails the run if Ray node ``node`` is gone (None while it lives)."""
        if node in self.lost:
            return self.lost[node]
        try:
            alive = any(n["NodeID"] == node and n.get("Alive") for n in self.ray.nodes())
        except Exception:
            alive = False
        if alive and "its node has died" not in error:
            return None
        host = self.nodes[node].describe() if node in self.nodes else f"ray node {node[:8]}"
        on_it = [n for p, d in self.demands.items() if self.node_of.get(p) == node for n in d.nodes]
        self.lost[node] = (f"Ray node {host} was lost; the graph's nodes on it were: {', '.join(on_it)} "
                           "(the run cannot go on without them)")
        return self.lost[node]

    def counts(self, process: str, inc: int) -> list[int] | None:
        """Exact counts: read by the actor after the incarnation exited, or now from its run
        directory (on a live node); None leaves the supervisor the last heartbeat's."""
        found = self.exact.get((process, inc))
        if found is not None or process in self.fetched or process not in self.actors:
            return found
        self.fetched.add(process)
        if process in self.dead or self.node_lost(self.node_of.get(process, ""), "") is not None:
            return None
        with contextlib.suppress(Exception):
            for i, c in self.ray.get(self.actors[process].counts.remote(), timeout=CALL_TIMEOUT_S).items():
                self.exact.setdefault((process, int(i)), c)
        return self.exact.get((process, inc))

    # ---------------------------------------------------------------- the end

    def end(self) -> None:
        """Stop every actor (each stops its worker and removes its run directory), then make
        sure: kill what is left, wait until Ray says it is dead, remove the placement groups."""
        ray = self.ray
        if ray is None or not ray.is_initialized():
            return
        closing = {p: a.close.remote() for p, a in self.actors.items() if p not in self.dead}
        if closing:
            ray.wait(list(closing.values()), num_returns=len(closing), timeout=10.0)
        for actor in self.actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for actor in self.actors.values():  # a call to a killed actor fails once Ray has it dead
            with contextlib.suppress(Exception):
                ray.get(actor.where.remote(), timeout=10.0)
        if self.warm:  # the zygotes, once no worker is left to them
            ray.wait([a.close.remote() for a in self.warm.values()], num_returns=len(self.warm), timeout=10.0)
            for actor in self.warm.values():
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
            for actor in self.warm.values():
                with contextlib.suppress(Exception):
                    ray.get(actor.pid.remote(), timeout=10.0)
        self.warm = {}
        if self.groups:
            from ray.util.placement_group import placement_group_table, remove_placement_group

            for group in self.groups:
                with contextlib.suppress(Exception):
                    remove_placement_group(group)
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline and any(
                    placement_group_table(g).get("state") not in ("REMOVED", None) for g in self.groups):
                time.sleep(0.05)
        self.actors = {}
        self.groups = []
        if self.auth is not None:
            self.auth.stop()  # before the supervisor's zmq context ends: its socket lives there
            self.auth = None

    def close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self.local is not None:
            self.local.stop()  # shutdown, then every process it started, by PID, and its directory
            self.local = None
        elif self.owns_ray and self.ray is not None and self.ray.is_initialized():
            self.ray.shutdown()  # disconnects from a cluster we joined
        self.owns_ray = False


# ---------------------------------------------------------------- a Ray started for one run


START_ATTEMPTS = 2  # Ray waits a fixed 30 s for its raylet; a loaded 2-core machine can miss it once
_TAG = "DMNFLOW_RAY_START"  # in the environment of every process a start made (a Ray process renames itself)


@dataclass
class LocalRay:
    """A Ray started on this machine for one run (``start_local_ray``); ``stop`` ends it all."""

    temp_dir: str
    tag: str

    def stop(self) -> None:
        """``ray.shutdown()``, then every process the start made that is still there (a
        dashboard agent whose raylet died, a worker), TERM then KILL by PID; its directory."""
        import ray

        with contextlib.suppress(Exception):
            ray.shutdown()
        _stop_tagged(self.tag)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_ray(num_cpus: int | None = None, *, namespace: str | None = None, log_to_driver: bool = False,
                    logging_level: int = logging.WARNING) -> LocalRay:
    """Start a Ray on this machine for one run and connect to it: ``ray.init(address="local")``
    (a new Ray even where RAY_ADDRESS names a cluster) in a temporary directory of its own
    (``dmnray-*``), without the dashboard or usage reporting. Every process it starts carries a
    tag in its environment, so a start that fails stops all of them by PID and removes the
    directory; it is tried ``START_ATTEMPTS`` times. The launch backend and ``dmnflow tune``
    both start Ray here.

    Raises:
        LaunchError: Ray did not come up (the message says why, from Ray's own error).
    """
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report thread (nor its network calls)
    _sweep_stale()
    reason = ""
    for attempt in range(1, START_ATTEMPTS + 1):
        local = LocalRay(tempfile.mkdtemp(prefix="dmnray-"), secrets.token_hex(8))
        previous = os.environ.get(_TAG)
        os.environ[_TAG] = local.tag  # inherited by the GCS, raylet, agents and workers it starts
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                     logging_level=logging_level, namespace=namespace, _temp_dir=local.temp_dir)
            return local
        except Exception as exc:  # Ray's own processes did not come up: a busy machine, a full disk, a bad setting
            reason = _first_line(exc)
            local.stop()
            log.warning("the Ray started for this run did not come up (attempt %d of %d): %s", attempt,
                        START_ATTEMPTS, reason)
        finally:
            if previous is None:
                os.environ.pop(_TAG, None)
            else:
                os.environ[_TAG] = previous
    raise LaunchError(f"the Ray started for this run did not come up ({START_ATTEMPTS} tries): {reason}; everything "
                      "it started was stopped. On a busy machine try again, or start one with `ray start --head` "
                      "and pass --address")


def _sweep_stale() -> list[str]:
    """Remove the ``dmnray-*`` directories of earlier starts whose driver is gone (a run killed
    with SIGTERM or -9 could not remove its own): Ray names its session after the driver's pid."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob("dmnray-*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pids = [int(p.name.rsplit("_", 1)[1]) for p in path.glob("session_2*")]
        except (OSError, ValueError, IndexError):
            continue
        if pids and not any(exists(pid) for pid in pids):  # no session yet: a start under way, left alone
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _stop_tagged(tag: str) -> list[int]:
    """Stop every process whose environment carries this start's tag (by PID, the one
    escalation: ``processes.stop``); their PIDs."""
    needle = f"{_TAG}={tag}".encode()
    me = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    stop([ByPid(pid) for pid in pids], signal.SIGTERM, SERVICE_TERM_WAIT_S, "Ray process")
    return pids


def _loopback_ray() -> None:
    """A Ray on this machine's loopback only. Ray replaces a loopback address with the host's
    outward one (to join a cluster from elsewhere), so a Ray started for the run would listen
    beyond this machine, and a cluster whose nodes were started with ``--node-ip-address
    127.0.0.1`` could not be joined at all; Ray's switch for single-machine clusters keeps
    both on loopback."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when Ray is imported (child processes too)
    with contextlib.suppress(Exception):
        import ray._private.ray_constants as constants  # ray imported before this run: the same switch

        constants.ENABLE_RAY_CLUSTER = False

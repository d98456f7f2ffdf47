"""One process of the plan on its Ray node: the Ray actor that runs its worker.

The driver (``backends/ray.py``) makes one ``WorkerHost`` actor per process of the plan.
The actor makes a run directory on its node (mode 0700, as the local backend's), writes
the plan, the run's token, the CURVE keys and where the supervisor's control socket is,
checks that everything the process needs is on this host (the project directory, model
files, key files, free fixed ports, the cores it pins), then starts the worker next to it:
forked from its Ray node's zygote (``NodeWarm``, one per node and run, which imported
numpy, and torch where the node's processes run models, once for all of them), or, where
there is none, the same ``python -m dmnflow.runtime.worker`` the local backend starts, a
child of the actor. Either way it dies with the actor (the zygote kills a worker whose
actor's connection closed; a child by its parent-death signal). The worker talks to the supervisor over
tcp itself; the actor only starts, signals and waits for it, and reads its counters file
once it has exited, so the driver's report is exact even after a kill -9.

A per-run keypair is made here (``keypair``): its secret never leaves this node. An actor
that replaces a killed one on the same node takes over its run directory (``prepare(...,
reuse=)``): the killed incarnations' counters files, its ipc endpoints and its keypair.

This module runs inside Ray's worker processes; it imports Ray only in the methods that
ask it where they run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ...errors import LaunchError
from ...plan import RUN_DIR, Plan
from ...transport.security import KeyError_, generate_keys, load_curve, read_public
from ...transport.stats import Counters
from ...transport.wire import TOKEN_FILE
from ..env import worker_environ
from ..files import counters_path, layout_of, write_control, write_endpoints
from ..processes import RUN_DIR_PREFIX, SPAWN_TIMEOUT_S, stop, sweep_run_dirs
from . import port_problem

__all__ = ["HostError", "NodeWarm", "WorkerHost"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
ZYGOTE_PAD = 256  # the node zygote's argument area holds the longest worker command line it writes there


def _thread_env(env: dict[str, str], thread_vars: dict[str, str]) -> dict[str, str]:
    """``env`` with the driver's thread-count variables instead of Ray's (Ray sets
    OMP_NUM_THREADS=1 in actors; a worker must see what a local one would)."""
    out = {k: v for k, v in env.items() if k not in THREAD_VARS}
    out.update(thread_vars)
    return out


class NodeWarm:
    """One per Ray node and run: starts the node's zygote (``zygote.node_main``), which imports
    numpy (and torch) once and forks the node's workers for their ``WorkerHost`` actors; it
    dies with this actor. Started while the actors get ready, so the imports overlap them."""

    def __init__(self) -> None:
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None
        # started from this long-lived thread: the zygote's parent-death signal fires when the
        # *thread* that forked it exits
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmnflow-zygote")

    def open(self, torch_too: bool, thread_vars: dict[str, str], project: str) -> str:
        """Start the zygote; the path of its socket once it listens (it answers once its imports
        are done)."""
        sweep_run_dirs()
        self.dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)  # mode 0700: only we reach the socket
        Path(self.dir, "supervisor.pid").write_text(str(os.getpid()))  # swept once this actor is gone
        path = str(Path(self.dir, "zygote"))
        env = _thread_env(dict(os.environ), thread_vars)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (project, env.get("PYTHONPATH", "")) if p)
        argv = [sys.executable, "-m", "dmnflow.runtime.zygote", "--node", path, str(os.getpid()),
                "1" if torch_too else "0", "-" * ZYGOTE_PAD]
        self.proc = self.spawner.submit(subprocess.Popen, argv, env=env, cwd=project,
                                        start_new_session=True).result()
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while not Path(path).exists():  # it listens before its imports, which take longer
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise HostError(f"the zygote of this node did not start (exit code {self.proc.poll()})")
            time.sleep(0.02)
        return path

    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1

    def close(self) -> None:
        """Stop the zygote (TERM: it kills what it still has, then exits), remove its directory."""
        if self.proc is not None:
            stop([self.proc], what="zygote")
        self.spawner.shutdown(wait=False)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class Forked:
    """A worker forked by the node zygote, as ``Popen`` waits for and signals it: its exit code
    comes over its connection to the zygote (which reaped it); closing the connection kills it."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock, self.pid = sock, pid
        self.returncode: int | None = None
        self.lock = threading.Lock()
        self.buffer = b""

    def _read(self, timeout: float) -> None:
        with self.lock:
            if self.returncode is not None:
                return
            self.sock.settimeout(max(0.0, timeout))
            try:
                chunk = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return
            except OSError:
                chunk = b""
            if not chunk:  # the zygote is gone, and its workers with it (their parent-death signal)
                self.returncode = -signal.SIGKILL
                return
            self.buffer += chunk
            if b"\n" in self.buffer:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.returncode = int(json.loads(self.buffer.split(b"\n", 1)[0])["exit"])
                if self.returncode is None:
                    self.returncode = 1

    def poll(self) -> int | None:
        self._read(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            self._read(left)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet: the pid is still its
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def fork_from(path: str, request: dict[str, Any], timeout_s: float) -> Forked:
    """Ask the node zygote at ``path`` for a worker.

    Raises:
        OSError: no zygote answers there; RuntimeError: it could not fork.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        buffer = b""
        while b"\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the node zygote exited")
            buffer += chunk
        line, rest = buffer.split(b"\n", 1)
        reply = json.loads(line)
        if "pid" not in reply:
            raise RuntimeError(str(reply.get("error")))
    except BaseException:
        sock.close()
        raise
    forked = Forked(sock, int(reply["pid"]))
    forked.buffer = rest
    return forked


class HostError(LaunchError):
    """What this host lacks for its process; the driver shows the message as it is (a
    `LaunchError`: the graph cannot be started there)."""


class WorkerHost:
    """The actor of one process of the plan (``max_concurrency`` > 1: ``wait`` blocks in one
    thread while the driver signals or asks for counts in others)."""

    def __init__(self, process: str) -> None:
        self.process = process
        self.run_dir = ""
        self.plan: Plan | None = None
        self.project = ""
        self.workers: dict[int, subprocess.Popen[bytes] | Forked] = {}
        self.zygote: list[Any] | None = None  # [ref to the node zygote's socket path] (NodeWarm.open), if any
        self.failed: dict[int, str] = {}  # incarnations that could not start, and why
        # a threaded actor runs its calls in any order: ``wait(inc)`` may come before ``start(inc)``
        self.lock = threading.Condition()
        # workers are started from this one long-lived thread: a parent-death signal fires when the
        # *thread* that forked the child exits, and Ray's method threads are not ours to keep
        self.spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dmnflow-spawn")

    # ---------------------------------------------------------------- where, keys

    def where(self) -> dict[str, Any]:
        """This node as the driver places and names it."""
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0))}

    def open_dir(self, reuse: str | None = None) -> str:
        """This process's run directory: a new one, or the one a killed actor left on this node."""
        if reuse and Path(reuse, "supervisor.pid").is_file() and Path(reuse).stat().st_uid == os.getuid():
            self.run_dir = reuse
        else:
            sweep_run_dirs()  # run directories of actors that were killed, on this host
            self.run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)  # mode 0700
        Path(self.run_dir, "supervisor.pid").write_text(str(os.getpid()))  # swept once this actor is gone
        return self.run_dir

    def keypair(self, name: str) -> bytes:
        """This process's CURVE keypair for the run (kept if the directory is a killed actor's):
        the secret stays on this node; the driver gets the public key."""
        keys = Path(self.run_dir, "keys")
        keys.mkdir(mode=0o700, exist_ok=True)
        if not (keys / f"{name}.key_secret").is_file():
            generate_keys(keys, [name])
        return read_public(keys / f"{name}.key")

    # ---------------------------------------------------------------- prepare

    def prepare(self, plan_json: str, token: bytes, control: str, control_key: str | None,
                publics: dict[str, bytes], project: str, where: str, zygote: list[Any] | None = None) -> int:
        """Write what the worker reads from its run directory and check that this host has what
        the process needs; returns the highest incarnation whose counts are already here.

        Raises:
            HostError: the project directory, a model file, a key, a fixed port or a core is
                missing here; the message says which and how to fix it.
        """
        plan = self.plan = Plan.from_json(plan_json)
        run_dir = Path(self.run_dir)
        (run_dir / "plan.json").write_text(plan_json)
        token_file = run_dir / TOKEN_FILE
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(token)
        keys = run_dir / "keys"
        for name, public in publics.items():  # every process's public key (and the driver's): the allow-list
            if not (keys / f"{name}.key_secret").exists():
                (keys / f"{name}.key").write_text(f'metadata\ncurve\n    public-key = "{public.decode()}"\n')
        write_control(self.run_dir, control, control_key)
        problems = self._check(plan, project)
        if problems:
            raise HostError(f"process {self.process} cannot run on {where}: " + "; ".join(problems))
        self.project = project
        self.zygote = zygote
        folder = run_dir / "counters"
        return max((int(p.suffix[1:]) for p in folder.glob("*.*") if p.suffix[1:].isdigit()), default=-1) \
            if folder.is_dir() else -1

    def _check(self, plan: Plan, project: str) -> list[str]:
        """Everything this host must have for the process; each problem with its fix."""
        problems = []
        if not Path(project).is_dir():
            problems.append(f"the project directory {project} is not on this host: dmnflow runs every node from "
                            "the same path on every host; put the project (and its virtual environment) there")
        mine = [n for n in plan.nodes if n.process == self.process]
        for node in mine:
            if node.model is not None and not Path(node.model.path).is_file():
                problems.append(f"node {node.name}'s model file {node.model.path} is not on this host: copy it to "
                                "the same path here")
        security = plan.security
        if security.curve is not None and RUN_DIR not in security.curve:
            key = security.keys.get(self.process, security.key)
            try:
                load_curve(security.curve, key)
            except KeyError_ as exc:
                problems.append(f"CURVE keys ({security.curve}, key {key!r}): {exc}; the key directory must be at "
                                "the same path on every host, holding this host's secret key")
        have = os.sched_getaffinity(0)
        pins = sorted({c for n in mine for c in n.cpus})
        missing = [c for c in pins if c not in have]
        if missing:
            problems.append(f"cores {missing} that {', '.join(n.name for n in mine)} pin(s) are not here (cores "
                            f"{sorted(have)}): move the pins into a profile for this host")
        for node in mine:
            for out in node.outputs:
                for bind in out.binds:
                    if bind.pattern == "stream":
                        problem = port_problem(bind.endpoint)
                        if problem:
                            problems.append(f"node {node.name}, output {out.port}: {problem}")
        return problems

    # ---------------------------------------------------------------- the worker

    def start(self, inc: int, secrets: dict[str, str], endpoints: dict[str, str],
              thread_vars: dict[str, str]) -> int:
        """Start incarnation ``inc`` of the worker; returns its pid.

        ``secrets``: the variables its nodes declare, from the driver's environment;
        ``endpoints``: where every bind is now (a restarted worker takes its ports back);
        ``thread_vars``: the driver's thread-count variables (Ray sets OMP_NUM_THREADS=1 in
        actors; the worker must see what a local one would, or numeric results could differ).
        """
        try:
            return self._start(inc, secrets, endpoints, thread_vars)
        except BaseException as exc:
            with self.lock:
                self.failed[inc] = f"{type(exc).__name__}: {exc}"
                self.lock.notify_all()
            raise

    def _start(self, inc: int, secrets: dict[str, str], endpoints: dict[str, str],
               thread_vars: dict[str, str]) -> int:
        if self.plan is None:
            raise HostError(f"process {self.process}: start before prepare")
        if endpoints:
            write_endpoints(self.run_dir, endpoints)
        env = _thread_env(worker_environ(self.plan, self.process), thread_vars)  # this host's, no undeclared secret
        env.update(secrets)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (self.project, env.get("PYTHONPATH", "")) if p)
        popen: subprocess.Popen[bytes] | Forked | None = None
        if self.zygote is not None:
            try:
                import ray

                path = ray.get(self.zygote[0], timeout=SPAWN_TIMEOUT_S)  # NodeWarm.open: it listens
                popen = fork_from(path, {"run_dir": self.run_dir, "name": self.process, "inc": inc,
                                                "env": env, "cwd": self.project}, SPAWN_TIMEOUT_S)
            except Exception as exc:  # no zygote on this node (its actor failed), or it could not fork
                sys.stderr.write(f"dmnflow: the node zygote cannot start {self.process} ({_line(exc)}); starting it "
                                 "as a new interpreter\n")
                self.zygote = None
        if popen is None:
            argv = [sys.executable, "-m", "dmnflow.runtime.worker", self.run_dir, self.process, str(inc),
                    str(os.getpid())]
            popen = self.spawner.submit(subprocess.Popen, argv, env=env, cwd=self.project,
                                        start_new_session=True).result()
        with self.lock:
            self.workers[inc] = popen
            self.lock.notify_all()
        return popen.pid

    def wait(self, inc: int) -> tuple[int, list[int] | None]:
        """Block until incarnation ``inc`` exits: its exit code and its counts (exact: read from
        its counters file once it can no longer change)."""
        with self.lock:
            if not self.lock.wait_for(lambda: inc in self.workers or inc in self.failed, timeout=600.0):
                raise HostError(f"process {self.process}: incarnation {inc} was never started")
            popen = self.workers.get(inc)
        if popen is None:
            raise HostError(f"process {self.process} could not start: {self.failed[inc]}")
        code = popen.wait()
        return code, self.read_counts(inc)

    def worker_pid(self) -> int | None:
        """The pid of the newest incarnation still running here (None: none is)."""
        with self.lock:
            live = [p for _, p in sorted(self.workers.items()) if p.poll() is None]
        return live[-1].pid if live else None

    def signal(self, inc: int, sig: int) -> None:
        with self.lock:
            popen = self.workers.get(inc)
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(sig)

    def read_counts(self, inc: int) -> list[int] | None:
        if self.plan is None:
            return None
        return Counters.read(counters_path(self.run_dir, self.process, inc), layout_of(self.plan))

    def counts(self) -> dict[int, list[int]]:
        """Every incarnation's counts in this run directory (those of a killed actor included)."""
        folder = Path(self.run_dir, "counters")
        incs = sorted(int(p.suffix[1:]) for p in folder.glob("*.*") if p.suffix[1:].isdigit()) \
            if folder.is_dir() else []
        found = {inc: self.read_counts(inc) for inc in incs}
        return {inc: c for inc, c in found.items() if c is not None}

    def close(self) -> None:
        """Stop a worker still running (``processes.stop``: TERM, wait, KILL, reap) and remove
        the run directory."""
        with self.lock:
            workers = list(self.workers.values())
        stop(workers, what=f"worker {self.process}")
        self.spawner.shutdown(wait=False)
        if self.run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

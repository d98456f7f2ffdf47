"""The supervisor: starts one worker per process of the plan, brings them up in lock-step,
watches them, restarts them per policy, drains them on Ctrl-C, and reports.

Start-up runs in phases so that nothing is lost: every worker binds its outputs
(``bound``), then connects its inputs (``connect`` → ``connected``), then waits until
every consumer has joined each output (``ready``); only then are sources started
(``start``). Stopping is a drain: sources end, end-of-stream follows the data through
the graph, and every worker exits by itself. Only past ``grace_s`` does the supervisor
escalate: SIGTERM, then SIGKILL, and it always waits for (reaps) every worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import zmq

from ..errors import ExitCode, LaunchError
from ..plan import Plan
from ..transport import Histogram

__all__ = ["EdgeReport", "NodeReport", "Report", "launch"]

log = logging.getLogger("dmnflow.supervisor")


@dataclass
class NodeReport:
    name: str
    messages_in: int = 0
    messages_out: int = 0
    cpu_s: float = 0.0
    restarts: int = 0
    join_incomplete: int = 0  # event times given up on: an input never delivered them
    conflated: int = 0  # messages a `latest` input skipped for a newer one
    status: str = "pending"  # running while it runs; then done, failed or stopped
    summary: dict[str, Any] | None = None  # what the node's own ``summary()`` reported last


@dataclass
class EdgeReport:
    id: int
    src: str
    dst: str
    sent: int = 0
    received: int = 0
    dropped: int = 0
    gaps: int = 0
    decode_errors: int = 0
    restarts_seen: int = 0
    p50_us: float | None = None
    p99_us: float | None = None

    @property
    def lost(self) -> int:
        """Messages that did not arrive: refused at the sender, plus sent but never received
        (gaps, and whatever a crashed worker held). Exact once the run has drained."""
        return self.dropped + max(self.sent - self.received, 0)


@dataclass
class Report:
    """What a run did: per node, per edge, end to end, and how it ended."""

    graph: str
    status: str  # finished, stopped, failed
    exit_code: int
    duration_s: float
    startup_s: float
    nodes: dict[str, NodeReport]
    edges: list[EdgeReport]
    e2e: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        def edge(e: EdgeReport) -> dict[str, Any]:
            return {**e.__dict__, "lost": e.lost}

        return json.dumps({"graph": self.graph, "status": self.status, "exit_code": self.exit_code,
                           "duration_s": self.duration_s, "startup_s": self.startup_s,
                           "nodes": {n: v.__dict__ for n, v in self.nodes.items()},
                           "edges": [edge(e) for e in self.edges], "e2e": self.e2e, "errors": self.errors},
                          indent=2)


RUN_DIR_PREFIX = "dmnflow-"
ZYGOTE_ENV = "DMNFLOW_ZYGOTE"  # "0": start each worker as a new interpreter instead of forking it
SPAWN_TIMEOUT_S = 30.0  # the zygote's first answer waits for its imports
ADMIN_SOCKET = "admin"
COMMAND_TIMEOUT_S = 120.0  # a model swap loads and warms a model: give it time


def sweep_run_dirs() -> list[str]:
    """Remove run directories whose supervisor is gone (killed with -9, it could not clean up)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid = int((path / "supervisor.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or just being created
        try:
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def _subreaper(on: bool) -> bool | None:
    """Mark this process a child subreaper (orphaned descendants become its children), or
    unmark it; returns the previous setting, None when the kernel does not offer it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(before), 0, 0, 0) != 0:
            return None
        if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(before.value)
    except (OSError, AttributeError):
        return None


class _Forked:
    """A worker the zygote forked, handed to us (a subreaper) as our child: waited for and
    signalled by PID, with the part of ``Popen``'s interface the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: gone, status unknown (as Popen)
                self.returncode = 0
            else:
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the PID is still this worker's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Zygote:
    """The supervisor's end of the zygote (``runtime/zygote.py``): forks workers on request."""

    def __init__(self, run_dir: str, names: list[str], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        # its argument area must hold the longest worker command line it will write there
        longest = max((len(os.fsencode(n)) for n in names), default=0)
        pad = "-" * (longest + 24)
        try:
            self.popen: subprocess.Popen[bytes] | _Forked | None = subprocess.Popen(
                [sys.executable, "-m", "dmnflow.runtime.zygote", run_dir, str(os.getpid()), str(theirs.fileno()),
                 pad], env=env, pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as exc:
            log.warning("cannot start the zygote (%s); starting workers one interpreter each", exc)
            self.popen = None
        theirs.close()
        self.sock = ours
        self.buffer = b""

    @classmethod
    def forked(cls, run_dir: str) -> _Zygote:
        """A zygote forked from this process instead of started as a new interpreter
        (``launch(warm=True)``): its workers inherit every module this process has imported
        (torch, the nodes' code), so none of them imports it again. Taken before the run
        has a zmq context; from then on it serves exactly as the exec'd one does."""
        zygote = cls.__new__(cls)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote (and, returning from serve, each worker): never back into our caller
            code = 1
            try:
                ours.close()
                from . import zygote as _zygote

                code = _zygote.main([run_dir, str(os.getppid()), str(theirs.fileno())])
            except BaseException:
                traceback.print_exc()
            finally:
                for stream in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        stream.flush()
                os._exit(code)
        theirs.close()
        zygote.popen = _Forked(pid)
        zygote.sock = ours
        zygote.buffer = b""
        return zygote

    def spawn(self, name: str, inc: int, timeout_s: float) -> _Forked | None:
        """A worker forked from the zygote, or None when the zygote cannot (it then stays unused)."""
        if self.popen is None:
            return None
        try:
            self.sock.settimeout(timeout_s)
            self.sock.sendall(json.dumps({"name": name, "inc": inc}).encode() + b"\n")
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the zygote exited")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = json.loads(line)
            if "pid" in reply:
                return _Forked(int(reply["pid"]))
            log.warning("the zygote cannot fork %s: %s; starting it as a new interpreter", name, reply.get("error"))
            return None
        except (OSError, ValueError) as exc:
            log.warning("the zygote failed (%s); starting workers one interpreter each from now on", exc)
            self.close()
            return None

    def close(self) -> None:
        """Close its socket (it exits at once), wait for it; kill it if it does not."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.popen is not None:
            try:
                self.popen.wait(2.0)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
            self.popen = None


class _Proc:
    """One worker process as the supervisor sees it."""

    def __init__(self, name: str, nodes: list[str]) -> None:
        self.name = name
        self.nodes = nodes
        self.popen: subprocess.Popen[bytes] | _Forked | None = None
        self.state = "new"  # new, bound, connected, ready, running, done, failed
        self.restarts = 0
        self.inc = 0
        self.restart_at: float | None = None
        self.stats: dict[str, Any] = {}
        self.past: list[dict[str, Any]] = []  # last stats of earlier incarnations (before restarts)


def launch(plan: Plan, *, duration_s: float | None = None, grace_s: float = 5.0,
           startup_timeout_s: float = 60.0, on_status: Callable[[Report], None] | None = None,
           name: str | None = None, warm: bool = False) -> Report:
    """Run a compiled graph until it ends by itself, ``duration_s`` passes, or Ctrl-C.

    ``name`` (default: the graph's name) is how ``dmnflow swap`` and ``dmnflow runs`` find
    the run while it runs. ``warm``: fork the workers' zygote from this process, so they
    start with what it has already imported (``dmnflow tune`` runs each trial this way in
    a process that imported torch and the nodes once for the whole study); the caller must
    have no thread that holds a lock the workers need.

    Raises:
        LaunchError: the graph could not be started (a worker failed during start-up).
    """
    return _Supervisor(plan, grace_s, startup_timeout_s, name or plan.graph, warm).run(duration_s, on_status)


@dataclass
class _Request:
    """A command from ``dmnflow swap`` (or another client) waiting for its nodes' answers."""

    client: bytes
    waiting: set[str]
    answers: dict[str, list[Any]] = field(default_factory=dict)
    deadline: float = 0.0


class _Supervisor:
    def __init__(self, plan: Plan, grace_s: float, startup_timeout_s: float, name: str, warm: bool = False) -> None:
        self.plan = plan
        self.warm = warm
        self.name = name
        self.requests: dict[int, _Request] = {}
        self.next_token = 0
        self.grace_s = grace_s
        self.startup_timeout_s = startup_timeout_s
        self.procs = {p.name: _Proc(p.name, p.nodes) for p in plan.processes}
        self.proc_of = {n: p.name for p in plan.processes for n in p.nodes}
        self.restart = {n.name: n.restart for n in plan.nodes}
        self.resolved: dict[str, str] = {}
        self.errors: list[str] = []
        self.stop_requested = False
        self.run_dir = ""
        self.zygote: _Zygote | None = None

    # ---------------------------------------------------------------- lifecycle

    def run(self, duration_s: float | None, on_status: Callable[[Report], None] | None) -> Report:
        sweep_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)  # mode 0700: only we reach the sockets
        Path(self.run_dir, "supervisor.pid").write_text(str(os.getpid()))
        Path(self.run_dir, "plan.json").write_text(self.plan.to_json(indent=None))
        Path(self.run_dir, "name").write_text(self.name)
        use_zygote = os.environ.get(ZYGOTE_ENV, "1") != "0"
        # workers forked by the zygote become our children: we wait for them and signal them by PID
        subreaper = _subreaper(True) if use_zygote else None
        if self.warm and subreaper is not None:
            self.zygote = _Zygote.forked(self.run_dir)  # before the run's zmq context and threads exist
        zctx = zmq.Context()
        self.control = zctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.bind(f"ipc://{self.run_dir}/control")
        self.admin = zctx.socket(zmq.ROUTER)  # dmnflow swap / runs talk to the run here
        self.admin.setsockopt(zmq.LINGER, 0)
        self.admin.bind(f"ipc://{self.run_dir}/{ADMIN_SOCKET}")
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.admin, zmq.POLLIN)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        t0 = time.monotonic()
        status, startup_s = "failed", 0.0
        try:
            if subreaper is not None and self.zygote is None:
                self.zygote = _Zygote(self.run_dir, list(self.procs), self.worker_env())
            for proc in self.procs.values():
                self.spawn(proc)
            self.bring_up(t0)
            startup_s = time.monotonic() - t0
            status = self.supervise(duration_s, on_status, t0)
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            self.stop_all(self.grace_s if status in ("finished", "stopped") else 0.0)
            if self.zygote is not None:
                self.zygote.close()
            if subreaper is not None:
                _subreaper(subreaper)
            for proc in self.procs.values():
                if proc.state not in ("done", "failed"):
                    proc.state = "stopped"
            self.control.close()
            self.admin.close()
            zctx.term()
            shutil.rmtree(self.run_dir, ignore_errors=True)
        code = ExitCode.NODE_FAILED if status == "failed" else ExitCode.OK
        return self.report(status, int(code), time.monotonic() - t0, startup_s)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop waiting for the drain
            raise KeyboardInterrupt
        self.stop_requested = True

    @staticmethod
    def worker_env() -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        return env

    def spawn(self, proc: _Proc) -> None:
        """Fork the worker from the zygote; without one, start a new interpreter for it."""
        forked = self.zygote.spawn(proc.name, proc.inc, SPAWN_TIMEOUT_S) if self.zygote is not None else None
        if forked is not None:
            proc.popen = forked
        else:
            proc.popen = subprocess.Popen(
                [sys.executable, "-m", "dmnflow.runtime.worker", self.run_dir, proc.name, str(proc.inc),
                 str(os.getpid())],
                env=self.worker_env(), start_new_session=True)  # Ctrl-C in the terminal reaches only the supervisor
        proc.state = "new"

    def tell(self, proc: _Proc, *msg: Any) -> None:
        self.control.send_multipart([proc.name.encode(), msgpack.packb(list(msg), use_bin_type=True)])

    def hear(self, timeout_ms: int) -> tuple[_Proc, list[Any]] | None:
        """The next message from a worker; requests from clients are served meanwhile."""
        events = dict(self.poller.poll(timeout_ms))
        if self.admin in events:
            self.serve_admin()
        if self.requests:
            self.expire_requests()
        if self.control not in events:
            return None
        identity, body = self.control.recv_multipart()
        proc = self.procs.get(identity.decode())
        if proc is None:
            return None
        return proc, msgpack.unpackb(body, raw=False, strict_map_key=False)

    # ---------------------------------------------------------------- start-up in phases

    def bring_up(self, t0: float) -> None:
        phase_next = {"bound": "connected", "connected": "ready"}
        while True:
            states = {p.state for p in self.procs.values()}
            if states == {"ready"}:
                break
            if states == {"bound"}:
                for proc in self.procs.values():
                    self.tell(proc, "connect", self.resolved)
                    proc.state = "connecting"
            if self.stop_requested:  # nothing ran yet: nothing to drain
                raise KeyboardInterrupt
            if time.monotonic() - t0 > self.startup_timeout_s:
                late = sorted(p.name for p in self.procs.values() if p.state != "ready")
                raise LaunchError(f"start-up timed out after {self.startup_timeout_s:.0f}s waiting for "
                                  f"{', '.join(late)}")
            for proc in self.procs.values():
                if proc.popen is not None and proc.popen.poll() is not None:
                    detail = f"; {self.errors[-1]}" if self.errors else ""
                    raise LaunchError(f"worker {proc.name} (pid {proc.popen.pid}) exited with code "
                                      f"{proc.popen.returncode} during start-up{detail}")
            got = self.hear(50)
            if got is None:
                continue
            proc, msg = got
            if msg[0] == "bound":
                self.resolved.update(msg[1])
                proc.state = "bound"
            elif msg[0] in phase_next.values():
                proc.state = msg[0]
            elif msg[0] == "error":
                self.errors.append(f"{proc.name}: {msg[1]}")
                sys.stderr.write(msg[2])
        for proc in self.procs.values():
            self.tell(proc, "start")
            proc.state = "running"

    # ---------------------------------------------------------------- running

    def supervise(self, duration_s: float | None, on_status: Callable[[Report], None] | None,
                  t0: float) -> str:
        start = time.monotonic()
        stop_sent_at: float | None = None
        next_status = start + 0.5
        failed = False
        while True:
            now = time.monotonic()
            if (self.stop_requested or (duration_s is not None and now - start >= duration_s)) \
                    and stop_sent_at is None:
                stop_sent_at = now
                for proc in self.procs.values():
                    if proc.state in ("running", "ready"):
                        self.tell(proc, "stop")
            if stop_sent_at is not None and now - stop_sent_at > self.grace_s:
                log.warning("the graph did not drain within %.1fs; terminating workers", self.grace_s)
                return "stopped"
            got = self.hear(50)
            if got is not None:
                proc, msg = got
                self.on_message(proc, msg)
            for proc in self.procs.values():
                failed |= self.check(proc, stop_sent_at is not None)
            if failed:
                self.collect_stats()
                return "failed"
            if all(p.state == "done" for p in self.procs.values()):
                return "stopped" if stop_sent_at is not None else "finished"
            if on_status is not None and now >= next_status:
                on_status(self.report("running", 0, now - t0, 0.0))
                next_status = now + 0.5

    def on_message(self, proc: _Proc, msg: list[Any]) -> None:
        kind = msg[0]
        if kind in ("hb", "done"):
            proc.stats = msg[1]
            if kind == "done":
                proc.state = "done"
        elif kind == "bound":  # a restarted worker
            self.resolved.update(msg[1])
            self.tell(proc, "connect", self.resolved)
        elif kind == "connected":
            proc.state = "connected"
            self.rehello(proc)
        elif kind == "ready":
            self.tell(proc, "start")
            proc.state = "running"
        elif kind == "error":
            self.errors.append(f"{proc.name}: {msg[1]}")
        elif kind == "reply":
            self.on_reply(*msg[1:])

    # ---------------------------------------------------------------- clients (dmnflow swap, runs)

    def serve_admin(self) -> None:
        while True:
            try:
                client, body = self.admin.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:
                continue
            try:
                request = msgpack.unpackb(body, raw=False)
                kind = request[0]
            except Exception:
                continue
            if kind == "status":
                self.answer(client, True, {"graph": self.plan.graph, "name": self.name, "pid": os.getpid(),
                                           "nodes": {p: self.procs[self.proc_of[p]].state for p in self.proc_of}})
            elif kind == "command" and len(request) == 4:
                self.start_command(client, *request[1:])
            else:
                self.answer(client, False, f"unknown request {kind!r}")

    def expire_requests(self) -> None:
        """A node that never answers (its worker died meanwhile) does not leave a client waiting."""
        now = time.monotonic()
        for token, req in list(self.requests.items()):
            if now > req.deadline:
                del self.requests[token]
                self.answer(req.client, False, f"no answer from {', '.join(sorted(req.waiting))} in "
                            f"{COMMAND_TIMEOUT_S:.0f}s", req.answers)

    def start_command(self, client: bytes, node: str, name: str, args: dict[str, Any]) -> None:
        """Send ``name`` to every instance of ``node`` (a YAML node's replicas, or one instance)."""
        targets = [n.name for n in self.plan.nodes if node in (n.name, n.spec_name)]
        if not targets:
            known = ", ".join(sorted({n.spec_name for n in self.plan.nodes}))
            self.answer(client, False, f"the run has no node {node!r}; nodes: {known}")
            return
        down = [t for t in targets if self.procs[self.proc_of[t]].state != "running"]
        if down:
            self.answer(client, False, f"{', '.join(down)} not running now ({self.procs[self.proc_of[down[0]]].state})")
            return
        token = self.next_token = self.next_token + 1
        self.requests[token] = _Request(client, set(targets), deadline=time.monotonic() + COMMAND_TIMEOUT_S)
        for target in targets:
            self.tell(self.procs[self.proc_of[target]], "command", target, name, args, token)

    def on_reply(self, token: int, node: str, ok: bool, result: Any) -> None:
        req = self.requests.get(token)
        if req is None:
            return
        req.answers[node] = [ok, result]
        req.waiting.discard(node)
        if not req.waiting:
            del self.requests[token]
            self.answer(req.client, all(a[0] for a in req.answers.values()), None, req.answers)

    def answer(self, client: bytes, ok: bool, result: Any, per_node: dict[str, Any] | None = None) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.admin.send_multipart([client, msgpack.packb([ok, result, per_node or {}], use_bin_type=True)],
                                      zmq.NOBLOCK)

    def collect_stats(self, wait_s: float = 0.5) -> None:
        """Ask the live workers for their counts, so a failed run still reports what happened."""
        live = [p for p in self.procs.values() if p.popen is not None and p.popen.poll() is None
                and p.state == "running"]
        for proc in live:
            self.tell(proc, "report")
        deadline = time.monotonic() + wait_s
        waiting = {p.name for p in live}
        while waiting and time.monotonic() < deadline:
            got = self.hear(20)
            if got is not None:
                self.on_message(*got)
                waiting.discard(got[0].name)

    def rehello(self, proc: _Proc) -> None:
        """A restarted worker's push outputs must hear from their consumers again."""
        mine = set(proc.nodes)
        consumers = {self.proc_of[e.dst] for e in self.plan.edges if e.src in mine and e.pattern == "push"}
        for name in consumers:
            if self.procs[name].state == "running":
                self.tell(self.procs[name], "rehello")

    def check(self, proc: _Proc, stopping: bool) -> bool:
        """Notice a dead worker; restart it per policy. True when the run has failed."""
        if proc.popen is None:
            if proc.restart_at is not None and time.monotonic() >= proc.restart_at:
                proc.restart_at = None
                proc.inc += 1
                self.spawn(proc)
            return False
        code = proc.popen.poll()
        if code is None or proc.state == "done":
            return False
        pid = proc.popen.pid
        proc.past.append(proc.stats)
        proc.stats = {}
        proc.popen = None
        policy = self.restart[proc.nodes[0]]
        wants = policy.policy == "always" or (policy.policy == "on-failure" and code != 0)
        if stopping or not wants or proc.restarts >= policy.max_restarts:
            self.errors.append(f"worker {proc.name} (pid {pid}) exited with code {code}; "
                               f"restart policy {policy.policy}, {proc.restarts} restart(s) used")
            proc.state = "failed"
            return True
        backoff = min(policy.backoff_s * (2 ** proc.restarts), policy.backoff_max_s)
        proc.restarts += 1
        proc.restart_at = time.monotonic() + backoff
        proc.state = "restarting"
        log.warning("worker %s (pid %d) exited with code %s; restarting in %.2fs (%d/%d)", proc.name, pid,
                    code, backoff, proc.restarts, policy.max_restarts)
        return False

    # ---------------------------------------------------------------- shutdown

    def stop_all(self, grace_s: float) -> None:
        """Wait ``grace_s`` for workers to exit by themselves, then TERM, wait, KILL, reap:
        no worker outlives the supervisor's return."""
        live = [p.popen for p in self.procs.values() if p.popen is not None]
        deadline = time.monotonic() + grace_s
        for popen in live:  # workers that finished exit by themselves; give them the grace period
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(max(0.0, deadline - time.monotonic()))
        for popen in live:
            if popen.poll() is None:
                popen.terminate()
        for popen in live:
            try:
                popen.wait(2.0)
            except subprocess.TimeoutExpired:
                log.warning("worker pid %d ignored SIGTERM for 2s; sending SIGKILL", popen.pid)
                popen.kill()
                popen.wait()

    # ---------------------------------------------------------------- the report

    def report(self, status: str, code: int, duration_s: float, startup_s: float) -> Report:
        nodes = {n.name: NodeReport(n.name) for n in self.plan.nodes}
        edges = [EdgeReport(e.id, f"{e.src}.{e.src_port}", f"{e.dst}.{e.dst_port}") for e in self.plan.edges]
        hist = {e.id: Histogram() for e in self.plan.edges}
        sent: dict[int, dict[int, int]] = {e.id: {} for e in self.plan.edges}
        seen: dict[int, dict[int, int]] = {e.id: {} for e in self.plan.edges}
        e2e: dict[tuple[int, str], Histogram] = {}
        for proc in self.procs.values():
            share = len(proc.nodes)
            for name in proc.nodes:
                nodes[name].restarts = proc.restarts
                nodes[name].status = proc.state
            for stats in [*proc.past, proc.stats]:  # every incarnation's counts add up
                for name in proc.nodes:
                    node = nodes[name]
                    node.cpu_s += float(stats.get("cpu_s", 0.0)) / share
                    ns = stats.get("nodes", {}).get(name, {})
                    node.messages_in += ns.get("in", 0)
                    node.messages_out += ns.get("out", 0)
                    node.join_incomplete += ns.get("join_incomplete", 0)
                    node.conflated += ns.get("conflated", 0)
                    if ns.get("summary") is not None:
                        node.summary = ns["summary"]
                    for origin, sparse in ns.get("e2e", {}).items():
                        e2e.setdefault((int(origin), name), Histogram()).merge(Histogram.from_sparse(sparse))
                for e, st in stats.get("edges", {}).items():
                    edge = edges[int(e)]
                    for key in ("received", "dropped", "gaps", "decode_errors", "restarts_seen"):
                        setattr(edge, key, getattr(edge, key) + st.get(key, 0))
                    if "sent" in st:
                        by_inc = sent[int(e)]
                        by_inc[st["inc"]] = max(by_inc.get(st["inc"], 0), st["sent"])
                    for inc, n in st.get("seen", {}).items():
                        by_inc = seen[int(e)]
                        by_inc[int(inc)] = max(by_inc.get(int(inc), 0), n)
                    if "latency" in st:
                        hist[int(e)].merge(Histogram.from_sparse(st["latency"]))
        for edge in edges:  # a producer that died had sent at least what its consumers saw
            incs = set(sent[edge.id]) | set(seen[edge.id])
            edge.sent = sum(max(sent[edge.id].get(i, 0), seen[edge.id].get(i, 0)) for i in incs)
        for edge in edges:
            p50, p99 = hist[edge.id].quantile(0.5), hist[edge.id].quantile(0.99)
            edge.p50_us = None if p50 is None else round(p50 / 1e3, 1)
            edge.p99_us = None if p99 is None else round(p99 / 1e3, 1)
        names = [n.name for n in self.plan.nodes]
        paths = []
        for (origin, sink), h in sorted(e2e.items()):
            p50, p99 = h.quantile(0.5), h.quantile(0.99)
            paths.append({"source": names[origin], "sink": sink, "messages": h.n,
                          "p50_us": round((p50 or 0) / 1e3, 1), "p99_us": round((p99 or 0) / 1e3, 1)})
        return Report(self.plan.graph, status, code, round(duration_s, 3), round(startup_s, 3), nodes, edges,
                      paths, list(self.errors))

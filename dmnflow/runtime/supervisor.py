"""The supervisor: starts one worker per process of the plan, brings them up in lock-step,
watches them, restarts them per policy, drains them on Ctrl-C, and reports.

Start-up runs in phases so that nothing is lost: every worker binds its outputs
(``bound``, with the address each bind actually took), then connects its inputs
(``connect`` → ``connected``), then waits until every consumer has joined each output
(``ready``); only then are sources started (``start``). Stopping is a drain: sources
end, end-of-stream follows the data through the graph, and every worker exits by itself.
The drain is given as long as records still move (the workers' counters change), up to the
plan's ``drain.max_s``; it is cut once nothing has moved for ``drain.idle_s``, or at a second
Ctrl-C. A cut drain escalates (``processes.stop``, the one escalation): SIGTERM (each worker
runs its nodes' teardown), then SIGKILL after ``TERM_WAIT_S`` (2s), and the supervisor always
waits for (reaps) every worker. The report says what was
cut and what it lost; a cut that lost records, a failed teardown or a node that raised fail
the run (``ExitCode.NODE_FAILED``).

Where a worker runs is its backend's business (``runtime/backends``: ``local`` processes,
or ``ray`` actors on a cluster); the supervisor sees each worker as a ``backends.Handle`` it
polls, waits for and signals like a ``Popen``, so every backend gets the same guarantees.

The control socket trusts nothing: a worker is known by an identity only the run's token
makes (``protocol.worker_identity``), every message is checked against the protocol, and
anything else is counted as junk and dropped. Clients outside the run (``dmnflow runs``,
``swap``, ``top``, ``echo``) talk to the run's ``AdminServer`` (``runtime/admin/server.py``),
which the supervisor owns and serves between the workers' messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from ..errors import ExitCode, LaunchError
from ..plan import Plan
from ..transport.wire import write_token
from . import logs, protocol
from .admin.client import claim_run_name
from .admin.server import AdminServer
from .backends import Backend, Handle, PlacementError, make_backend
from .env import worker_environ
from .files import check_socket_paths, layout_of, write_endpoints
from .observer import Observer
from .processes import RUN_DIR_PREFIX, stop, sweep_run_dirs, wait_exit
from .report import EdgeReport, Incarnation, NodeReport, Report, SocketReport, build_report

__all__ = ["EdgeReport", "NodeReport", "Report", "SocketReport", "launch"]

log = logging.getLogger("dmnflow.supervisor")
start_log = logging.getLogger("dmnflow.start")  # the start's phases, as they happen (INFO)


class _Proc:
    """One worker process as the supervisor sees it."""

    def __init__(self, name: str, nodes: list[str]) -> None:
        self.name = name
        self.nodes = nodes
        self.popen: Handle | None = None  # the current incarnation, as its backend started it
        self.state = "new"  # new, bound, connected, ready, running, done, failed
        self.restarts = 0
        self.inc = 0
        self.restart_at: float | None = None
        self.stats: dict[str, Any] = {}  # the current incarnation's last heartbeat
        self.past: list[dict[str, Any]] = []  # last heartbeats of earlier incarnations (before restarts)
        self.killed: list[bool] = []  # per earlier incarnation: whether it died (rather than ended)
        self.host = socket.gethostname()  # the backend's handle says where it runs
        self.incarnations: list[Incarnation] = []  # filled when the report is made
        self.terminated = False  # the current incarnation was stopped by signal (a cut drain, a failed run)


def launch(plan: Plan, *, duration_s: float | None = None, grace_s: float | None = None,
           startup_timeout_s: float = 60.0, on_status: Callable[[Report], None] | None = None,
           name: str | None = None, warm: bool = False, observer: Observer | None = None,
           backend: str | Backend = "local", address: str | None = None) -> Report:
    """Run a compiled graph until it ends by itself, ``duration_s`` passes, or Ctrl-C.

    ``name`` (default: the graph's name) is how ``dmnflow swap`` and ``dmnflow runs`` find
    the run while it runs: a ``name`` that another live run has is refused, a default name
    another run has gets a suffix (``-2``, with a warning). ``warm``: fork the workers' zygote from
    this process, so they start with what it has already imported (``dmnflow tune`` runs each
    trial this way in a process that imported torch and the nodes once for the whole study);
    the caller must have no thread that holds a lock the workers need. ``on_status`` gets a
    report with the live figures every 0.5 s; ``observer`` (default: a plain one) is what makes
    them, watches the latency budgets and holds a recording (``dmnflow.observe``).

    ``backend``: ``"local"`` (processes on this machine) or ``"ray"`` (Ray actors on the
    cluster at ``address``: ``"auto"``, ``"HOST:PORT"``, or None for a Ray started for this
    run and stopped after it); or a backend object (``runtime.backends``).

    A stop (``duration_s``, Ctrl-C) drains the graph as the plan's ``drain`` says; ``grace_s``
    replaces its ``idle_s`` for this run (a caller that knows its graph's pace).

    Raises:
        LaunchError: the graph could not be started (a worker failed during start-up, ``name``
            is taken); the backend cannot place it: ``PlacementError``, exit code 1 (a fixed
            tcp port in use: ``backends.PortInUse``).
    """
    chosen = make_backend(backend, address=address, warm=warm) if isinstance(backend, str) else backend
    return _Supervisor(plan, grace_s, startup_timeout_s, name, chosen, observer).run(duration_s, on_status)


class _Supervisor:
    def __init__(self, plan: Plan, grace_s: float, startup_timeout_s: float, name: str | None,
                 backend: Backend, observer: Observer | None = None) -> None:
        self.plan = plan
        self.backend = backend
        self.observer = observer if observer is not None else Observer(plan)
        self.t0 = time.monotonic()
        self.name = name or plan.graph
        self.name_given = name is not None  # a taken --name is refused; a taken default is suffixed
        self.admin = AdminServer(plan, self.observer, self)
        self.drain = plan.drain if grace_s is None else plan.drain.model_copy(update={"idle_s": grace_s})
        self.grace_s = self.drain.idle_s  # how long finished workers get to exit by themselves
        self.cut: dict[str, Any] | None = None  # the drain was cut: why, after how long, which workers
        self.cut_now = False  # a second Ctrl-C
        self.supervising = False  # the graph has started: a second Ctrl-C cuts the drain
        self.raised: set[str] = set()  # processes whose node code raised (a restart does not undo it)
        self.startup_timeout_s = startup_timeout_s
        self.procs = {p.name: _Proc(p.name, p.nodes) for p in plan.processes}
        self.proc_of = {n: p.name for p in plan.processes for n in p.nodes}
        self.restart = {n.name: n.restart for n in plan.nodes}
        self.resolved: dict[str, str] = {}
        self.errors: list[str] = []
        self.stop_requested = False
        self.run_dir = ""
        self.token = b""
        self.layout = layout_of(plan)
        self.junk = 0
        self.by_identity: dict[bytes, _Proc] = {}
        # which processes consume each bind: told when a restarted producer's address moves
        self.consumers_of: dict[str, set[str]] = {}
        for e in plan.edges:
            self.consumers_of.setdefault(e.bind, set()).add(self.proc_of[e.dst])
        self.phase = "starting"  # what `dmnflow runs` shows: starting until the first message, then running
        self.phase_detail = ""
        self.phase_shown = (0, 0.0)  # the processes-up count last logged, and when

    # ---------------------------------------------------------------- lifecycle

    def run(self, duration_s: float | None, on_status: Callable[[Report], None] | None) -> Report:
        if self.backend.remote and self.observer.recorder is not None:
            raise PlacementError("--record reads the recorded outputs from the workers' run directories, which "
                                 f"are on the {self.backend.name} nodes: record with the local backend "
                                 "(the recording replays into any subgraph, on either backend)")
        self.backend.open(self.plan)  # raises before anything starts (and leaves nothing) if it cannot place it
        try:
            return self._run(duration_s, on_status)
        finally:
            self.backend.close()

    def _run(self, duration_s: float | None, on_status: Callable[[Report], None] | None) -> Report:
        sweep_run_dirs()
        self.run_dir = tempfile.mkdtemp(prefix=RUN_DIR_PREFIX)  # mode 0700: only we reach the sockets
        try:
            check_socket_paths(self.plan, self.run_dir)
        except LaunchError:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        self.logs: Path | None = None  # the run's log folder (runtime/logs.py), once it has its name
        self.log_handler: logging.Handler | None = None
        self.token = write_token(self.run_dir)
        self.by_identity = {protocol.worker_identity(self.token, p): proc for p, proc in self.procs.items()}
        Path(self.run_dir, "supervisor.pid").write_text(str(os.getpid()))
        Path(self.run_dir, "plan.json").write_text(self.plan.to_json(indent=None))
        try:
            self.name = claim_run_name(self.run_dir, self.name, exact=self.name_given)
        except LaunchError:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        with contextlib.suppress(OSError):  # logs are a help: a full disk does not stop the run
            self.logs = logs.prepare(self.run_dir, self.name, self.plan)
            self.log_handler = logs.supervisor_log(self.logs)
        self.backend.prepare(self)  # before the run's zmq context and threads exist (a warm zygote forks here)
        zctx = zmq.Context()
        self.control = zctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.LINGER, 0)
        self.control.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE)
        self.control.setsockopt(zmq.RCVHWM, self.plan.limits.supervisor_hwm)
        self.control_endpoint = self.backend.bind_control(zctx, self.control, self.run_dir)
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.admin.open(zctx, self.run_dir), zmq.POLLIN)  # dmnflow runs / swap / top
        self.observer.open(self.run_dir, self.tell_node, self.broadcast, remote=self.backend.remote)
        old_int = signal.signal(signal.SIGINT, self._on_signal)
        old_term = signal.signal(signal.SIGTERM, self._on_signal)
        t0 = self.t0 = time.monotonic()
        status, startup_s = "failed", 0.0
        try:
            self.phase_starting()
            self.backend.begin(self)  # the zygote; Ray actors placed on their nodes
            for proc in self.spawn_order():
                self.spawn(proc)
            self.bring_up(time.monotonic())
            startup_s = time.monotonic() - t0
            status = self.supervise(duration_s, on_status, t0)
            self.phase_first_message()  # a graph that ended between two looks
        finally:
            self.supervising = True  # a Ctrl-C while the workers are stopped changes nothing: they are bounded
            try:
                self.stop_all(self.grace_s if status in ("finished", "stopped") and self.cut is None else 0.0)
            finally:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
            for proc in self.procs.values():
                if proc.state not in ("done", "failed"):
                    proc.state = "stopped"
            try:
                report = self.report(status, 0, time.monotonic() - t0, startup_s)  # the counters files are still there
                self.observer.finish(report)
            finally:
                self.backend.end()  # every worker has exited: the zygote; Ray actors and placement groups
                self.control.close()
                self.admin.close()
                zctx.term()
                self.observer.close()  # the workers are gone: a recording gets what is left
                shutil.rmtree(self.run_dir, ignore_errors=True)
                logs.close_log(self.log_handler)
        return self.conclude(report)

    def conclude(self, report: Report) -> Report:
        """How the run ended, from what it did: a node that raised (even one its restart policy
        brought back), a failed teardown or a cut drain that lost records fail it, whatever the
        workers' exits said; the exit code follows the status."""
        failed_nodes = sorted({n for p in self.procs.values() for n in p.stats.get("failed", ()) or ()
                               if isinstance(n, str)})
        if self.cut is not None:
            lost = sum(e.lost - e.dropped for e in report.edges) + sum(
                report.nodes[n].lost for p in self.procs.values() if p.terminated for n in p.nodes)
            self.cut["lost"] = lost
            report.cut = dict(self.cut)
            if lost and report.status != "failed":
                report.status = "failed"
        if failed_nodes or self.raised:
            report.status = "failed"
            for name in failed_nodes:
                report.nodes[name].status = "failed"
        report.exit_code = int(ExitCode.NODE_FAILED if report.status == "failed" else ExitCode.OK)
        return report

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop waiting (for the drain: cut it; for start-up: give up)
            if not self.supervising:
                raise KeyboardInterrupt
            self.cut_now = True
        self.stop_requested = True

    def worker_env(self, process: str | None = None) -> dict[str, str]:
        """A worker's environment (runtime/env.py: secrets only where declared); no process: the zygote's."""
        env = worker_environ(self.plan, process)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), env.get("PYTHONPATH", "")) if p)
        return env

    def spawn(self, proc: _Proc) -> None:
        """Start the worker's next incarnation where the backend runs it."""
        proc.popen = self.backend.spawn(proc.name, proc.inc)
        proc.host = proc.popen.host or proc.host
        proc.state = "new"
        self.serve_clients()  # a start of many processes keeps answering `dmnflow runs`

    def request_stop(self) -> None:
        """``dmnflow stop``, through the admin socket: the drain a Ctrl-C starts."""
        self.stop_requested = True

    def state_of(self, node: str) -> str:
        """The state of node instance ``node``'s worker (``_Proc.state``)."""
        return self.procs[self.proc_of[node]].state

    def tell_node(self, node: str, *msg: Any) -> None:
        """A control message to the worker of node instance ``node`` (the observer's taps, commands)."""
        proc = self.procs.get(self.proc_of.get(node, ""))
        if proc is not None and proc.state == "running":
            self.tell(proc, *msg)

    def broadcast(self, *msg: Any) -> None:
        """A control message to every running worker (a latency budget's event)."""
        for proc in self.procs.values():
            if proc.state == "running":
                self.tell(proc, *msg)

    def tell(self, proc: _Proc, *msg: Any) -> None:
        with contextlib.suppress(zmq.ZMQError):  # a worker that died meanwhile is noticed by check()
            self.control.send_multipart([protocol.worker_identity(self.token, proc.name), protocol.encode(*msg)],
                                        zmq.NOBLOCK)

    def hear(self, timeout_ms: int) -> tuple[_Proc, list[Any]] | None:
        """The next message from a worker; requests from clients are served meanwhile."""
        events = dict(self.poller.poll(timeout_ms))
        if self.admin.socket in events:
            self.admin.serve()
        self.admin.expire(time.monotonic())
        if self.control not in events:
            return None
        try:
            frames = self.control.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return None
        proc = self.by_identity.get(frames[0]) if len(frames) == 2 else None
        msg = protocol.decode(frames[1], protocol.WORKER) if proc is not None else None
        if msg is None:
            self.junk += 1  # not one of our workers, or not the protocol: never obeyed
            return None
        return proc, msg

    # ---------------------------------------------------------------- start-up in phases

    def bring_up(self, t0: float) -> None:
        phase_next = {protocol.BOUND: protocol.CONNECTED, protocol.CONNECTED: protocol.READY}
        while True:
            self.phase_progress()
            states = {p.state for p in self.procs.values()}
            if states == {"ready"}:
                break
            if states == {"bound"}:
                write_endpoints(self.run_dir, self.resolved)
                for proc in self.procs.values():
                    self.tell(proc, protocol.CONNECT, self.resolved)
                    proc.state = "connecting"
            if self.stop_requested:  # nothing ran yet: nothing to drain
                raise KeyboardInterrupt
            if time.monotonic() - t0 > self.startup_timeout_s:
                late = sorted(p.name for p in self.procs.values() if p.state != "ready")
                raise LaunchError(f"start-up timed out after {self.startup_timeout_s:.0f}s waiting for "
                                  f"{', '.join(late)}")
            for proc in self.procs.values():
                if proc.popen is not None and proc.popen.poll() is not None:
                    reason = proc.popen.reason  # what the backend knows: a lost Ray node
                    detail = f"; {reason}" if reason else f"; {self.errors[-1]}" if self.errors else ""
                    raise LaunchError(f"worker {proc.name} (pid {proc.popen.pid}) exited with code "
                                      f"{proc.popen.returncode} during start-up{detail}")
            got = self.hear(50)
            if got is None:
                continue
            proc, msg = got
            if msg[0] == protocol.BOUND:
                if protocol.endpoints_ok(msg[1]):
                    self.resolved.update(msg[1])
                proc.state = "bound"
            elif msg[0] in phase_next.values():
                proc.state = msg[0]
            elif msg[0] == protocol.ERROR:  # the worker printed its traceback itself
                self.errors.append(f"{proc.name}: {msg[1]}")
            elif msg[0] == protocol.HB:
                proc.stats = msg[1]
        for proc in self.procs.values():
            self.tell(proc, protocol.START)
            proc.state = "running"
        self.phase_ready()

    # ---------------------------------------------------------------- the start's phases, shown as they happen

    def set_phase(self, phase: str, detail: str, line: str | None = None) -> None:
        """Where the start is (``dmnflow runs`` shows it), and a line for ``dmnflow.start`` if any."""
        self.phase, self.phase_detail = phase, detail
        if line is not None:
            start_log.info("%s: %s", self.plan.graph, line)

    def serve_clients(self) -> None:
        """Answer ``dmnflow runs`` (and other clients) now, between the steps of the start."""
        sock = self.admin.socket
        if sock is not None and sock.poll(0):
            self.admin.serve()

    def spawn_order(self) -> list[_Proc]:
        """Workers without a model first: they start while the zygote loads torch for the rest."""
        with_model = {n.process for n in self.plan.nodes if n.model is not None}
        return sorted(self.procs.values(), key=lambda p: p.name in with_model)

    def phase_starting(self) -> None:
        n = len(self.procs)
        self.phase_shown = (0, time.monotonic())
        self.set_phase("starting", f"0/{n} processes up",
                       f"starting {n} process{'es' * (n != 1)} (run {self.name}; `dmnflow runs` lists it)")

    def phase_progress(self) -> None:
        """N/M processes up (each has imported its nodes and bound its outputs): a line when the
        count grows, at most every 0.25 s, and always the last."""
        up = sum(p.state != "new" for p in self.procs.values())
        n = len(self.procs)
        last, at = self.phase_shown
        if up == last:
            return
        now = time.monotonic()
        line = f"{up}/{n} processes up" if up == n or now - at >= 0.25 else None
        if line is not None:
            self.phase_shown = (up, now)
        self.set_phase("starting", f"{up}/{n} processes up", line)

    def phase_ready(self) -> None:
        n = len(self.procs)
        self.set_phase("starting", "waiting for the first message",
                       f"{n}/{n} processes ready (nodes set up, models loaded) "
                       f"{time.monotonic() - self.t0:.2f}s after the start")

    def phase_first_message(self) -> None:
        """Once: the first record any node emitted (from the counters files, else heartbeats)."""
        if self.phase != "starting":
            return
        lay = self.layout
        first, end = lay.output(0), lay.output(0) + lay.outputs
        for proc in self.procs.values():  # a remote backend's counts cost a call: its heartbeats say it
            counts = None if self.backend.remote else self.backend.counts(proc.name, proc.inc)
            counts = counts or proc.stats.get("counts")
            if not lay.outputs or isinstance(counts, list) and any(counts[first:end]):
                self.set_phase("running", "", f"first message {time.monotonic() - self.t0:.2f}s after the start"
                               if lay.outputs else None)
                return

    # ---------------------------------------------------------------- running

    def supervise(self, duration_s: float | None, on_status: Callable[[Report], None] | None,
                  t0: float) -> str:
        self.supervising = True
        start = time.monotonic()
        stop_sent_at: float | None = None
        next_status = start + 0.5
        failed = False
        moved_at, last_seen, next_look = 0.0, None, 0.0  # the drain's progress
        while True:
            now = time.monotonic()
            if (self.stop_requested or (duration_s is not None and now - start >= duration_s)) \
                    and stop_sent_at is None:
                stop_sent_at = moved_at = now
                for proc in self.procs.values():
                    if proc.state in ("running", "ready"):
                        self.tell(proc, protocol.STOP)
            if stop_sent_at is not None and now >= next_look:  # the drain lasts while records move
                next_look = now + 0.1
                seen = self.progress()
                if seen != last_seen:
                    last_seen, moved_at = seen, now
                why = ("a second Ctrl-C" if self.cut_now else
                       f"no record moved for {self.drain.idle_s:g}s (drain.idle)" if now - moved_at > self.drain.idle_s
                       else f"it took {self.drain.max_s:g}s (drain.max)"
                       if self.drain.max_s is not None and now - stop_sent_at > self.drain.max_s else None)
                if why is not None:
                    late = sorted(p.name for p in self.procs.values() if p.state != "done")
                    self.cut = {"reason": why, "after_s": round(now - stop_sent_at, 3), "workers": late}
                    log.warning("the drain was cut after %.1fs: %s; terminating workers %s", now - stop_sent_at,
                                why, ", ".join(late))
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
            self.observer.poll(now)
            self.phase_first_message()
            if now >= next_status:  # the live figures, budgets, what `dmnflow top` and `on_status` see
                report = self.report("running", 0, now - t0, 0.0)
                self.observer.update(report, now)
                if on_status is not None:
                    on_status(report)
                next_status = now + 0.5

    def progress(self) -> tuple[Any, ...]:
        """What the workers have counted, and their states: while it changes, the graph is draining."""
        seen: list[Any] = []
        for proc in self.procs.values():
            counts = self.backend.counts(proc.name, proc.inc) if proc.popen is not None else None
            seen += [proc.state, tuple(counts) if counts is not None else repr(proc.stats.get("counts"))]
        return tuple(seen)

    def on_message(self, proc: _Proc, msg: list[Any]) -> None:
        kind = msg[0]
        if kind in (protocol.HB, protocol.DONE):
            proc.stats = msg[1]
            if kind == protocol.DONE:
                proc.state = "done"
        elif kind == protocol.BOUND:  # a restarted worker
            if protocol.endpoints_ok(msg[1]):
                moved = {b: a for b, a in msg[1].items() if self.resolved.get(b) not in (None, a)}
                self.resolved.update(msg[1])
                write_endpoints(self.run_dir, self.resolved)
                if moved:  # its old port was taken meanwhile: its consumers must follow it
                    log.warning("worker %s bound new addresses after its restart: %s", proc.name, moved)
                    for name in {c for b in moved for c in self.consumers_of.get(b, ())}:
                        if self.procs[name].state == "running":
                            self.tell(self.procs[name], protocol.RECONNECT, moved)
            self.tell(proc, protocol.CONNECT, self.resolved)
        elif kind == protocol.CONNECTED:
            proc.state = "connected"
            self.rehello(proc)
        elif kind == protocol.READY:
            self.tell(proc, protocol.START)
            proc.state = "running"
        elif kind == protocol.ERROR:  # a node raised (or its teardown did): the run fails, restarted or not
            self.errors.append(f"{proc.name}: {msg[1]}")
            self.raised.add(proc.name)
        elif kind == protocol.REPLY:
            self.admin.on_reply(*msg[1:])

    def collect_stats(self, wait_s: float = 0.5) -> None:
        """Ask the live workers for their heartbeats, so a failed run still reports what happened."""
        live = [p for p in self.procs.values() if p.popen is not None and p.popen.poll() is None
                and p.state == "running"]
        for proc in live:
            self.tell(proc, protocol.REPORT)
        deadline = time.monotonic() + wait_s
        waiting = {p.name for p in live}
        while waiting and time.monotonic() < deadline:
            got = self.hear(20)
            if got is not None:
                self.on_message(*got)
                waiting.discard(got[0].name)

    def rehello(self, proc: _Proc) -> None:
        """A restarted worker's push and stream outputs must hear from their consumers again."""
        mine = set(proc.nodes)
        consumers = {self.proc_of[e.dst] for e in self.plan.edges if e.src in mine and e.pattern != "pub"}
        for name in consumers:
            if self.procs[name].state == "running":
                self.tell(self.procs[name], protocol.REHELLO)

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
        if code == 0:  # a clean exit: its `done` may still be queued behind other workers' messages
            while (got := self.hear(0)) is not None:
                self.on_message(*got)
            if proc.state == "done":
                return False
        pid = proc.popen.pid
        reason, fatal = proc.popen.reason, proc.popen.fatal
        proc.past.append(proc.stats)
        proc.killed.append(True)
        proc.stats = {}
        proc.popen = None
        if fatal:  # where it ran is gone (a lost Ray node): no restart can help
            self.errors.append(reason or f"worker {proc.name} (pid {pid}) was lost")
            proc.state = "failed"
            return True
        policy = self.restart[proc.nodes[0]]
        wants = policy.when == "always" or (policy.when == "on-failure" and code != 0)
        why = f" ({reason})" if reason else ""
        if stopping or not wants or proc.restarts >= policy.max_restarts:
            self.errors.append(f"worker {proc.name} (pid {pid}) exited with code {code}{why}; "
                               f"restart policy {policy.when}, {proc.restarts} restart(s) used")
            proc.state = "failed"
            return True
        backoff = min(policy.backoff_s * (2 ** proc.restarts), policy.backoff_max_s)
        proc.restarts += 1
        proc.restart_at = time.monotonic() + backoff
        proc.state = "restarting"
        log.warning("worker %s (pid %d) exited with code %s%s; restarting in %.2fs (%d/%d)", proc.name, pid,
                    code, why, backoff, proc.restarts, policy.max_restarts)
        return False

    # ---------------------------------------------------------------- shutdown

    def stop_all(self, grace_s: float) -> None:
        """Wait ``grace_s`` for workers to exit by themselves, then the one escalation
        (``processes.stop``: SIGTERM, each runs its nodes' teardown; SIGKILL after
        ``TERM_WAIT_S``; reap): no worker outlives the supervisor's return."""
        procs = [p for p in self.procs.values() if p.popen is not None]
        left = wait_exit([p.popen for p in procs if p.popen is not None], grace_s)
        for proc in procs:
            if proc.popen in left:
                proc.terminated = proc.state != "done"  # what it still held is lost, as if killed
        stop(left, what="worker")

    # ---------------------------------------------------------------- the report

    def report(self, status: str, code: int, duration_s: float, startup_s: float) -> Report:
        for proc in self.procs.values():
            beats = proc.past + ([proc.stats] if len(proc.past) <= proc.inc else [])
            killed = proc.killed + [proc.terminated] * (proc.inc + 1 - len(proc.killed))
            proc.incarnations = [Incarnation(self.counts(proc, inc, beats[inc] if inc < len(beats) else {}),
                                             beats[inc] if inc < len(beats) else {},
                                             killed[inc] if inc < len(killed) else False)
                                 for inc in range(proc.inc + 1)]
        return build_report(self.plan, self.layout, self.procs, status, code, duration_s, startup_s, self.errors,
                            self.junk + self.admin.junk, placed=getattr(self.backend, "placed", None),
                            endpoints=self.resolved)

    def counts(self, proc: _Proc, inc: int, beat: dict[str, Any]) -> list[int] | None:
        """An incarnation's counts: from its counters file, through the backend (exact, even
        after a kill), else from its last heartbeat (a host the run lost)."""
        found = self.backend.counts(proc.name, inc)
        if found is not None:
            return found
        counts = beat.get("counts")
        return counts if isinstance(counts, list) and all(type(c) is int for c in counts) else None

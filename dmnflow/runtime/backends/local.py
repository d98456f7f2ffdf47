"""The local backend: every worker a process on this machine, forked by the zygote (or started
as a new interpreter), a child of the supervisor, which waits for it and signals it by PID
(``LocalHandle``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import zmq

from ...plan import Plan
from ...transport.security import write_run_keys
from ...transport.stats import Counters, Layout
from ..env import declared_secrets
from ..files import counters_path, layout_of
from ..processes import SPAWN_TIMEOUT_S, ZYGOTE_ENV, ByPid, Zygote, subreaper
from . import Handle, PortInUse, RunContext, port_problem

__all__ = ["LocalBackend", "LocalHandle", "check_fixed_ports"]


class LocalHandle:
    """One incarnation on this machine (``backends.Handle``): a child of the supervisor, forked
    by the zygote (``ByPid``) or started as a new interpreter (``Popen``), waited for and
    signalled by PID. Nothing is known of its end beyond the exit code: ``reason`` is None,
    and it is never ``fatal`` (this machine is still here)."""

    reason: str | None = None
    fatal = False

    def __init__(self, proc: ByPid | subprocess.Popen[bytes], host: str) -> None:
        self.proc = proc  # a Popen is kept: dropped while the child runs, it would reap it behind our back
        self.pid = proc.pid
        self.host = host

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self.proc.send_signal(sig)  # both check that it has not been reaped: the PID is still its


def check_fixed_ports(plan: Plan) -> None:
    """Fail before anything starts when a fixed tcp port of ``plan`` is taken on this machine,
    naming node, output and port.

    Raises:
        PortInUse: a port is taken, or cannot be bound here.
    """
    for node in plan.nodes:
        for out in node.outputs:
            for bind in out.binds:
                if bind.pattern == "stream" and (problem := port_problem(bind.endpoint)):
                    raise PortInUse(f"node {node.name}, output {out.port}: {problem}")


class LocalBackend:
    """Workers on this machine; the control socket is ipc in the run directory."""

    name = "local"
    remote = False

    def __init__(self, warm: bool = False) -> None:
        self.warm = warm
        self.run: RunContext | None = None
        self.zygote: Zygote | None = None
        self.reaper: bool | None = None
        self.layout: Layout | None = None
        self.host = socket.gethostname()

    def open(self, plan: Plan) -> None:
        check_fixed_ports(plan)
        self.layout = layout_of(plan)

    def bind_control(self, zctx: zmq.Context, sock: zmq.Socket, run_dir: str) -> str:
        endpoint = f"ipc://{run_dir}/control"  # the run directory is 0700: only we reach it
        sock.bind(endpoint)
        return endpoint

    def prepare(self, run: RunContext) -> None:
        """A warm zygote is forked from this process, so before it has a zmq context or threads."""
        self.run = run
        if run.plan.security.run_keys:  # CURVE on tcp edges with the run's own keypair (0700 run directory)
            write_run_keys(run.run_dir)
        # workers forked by the zygote become our children: we wait for them and signal them by PID
        self.reaper = subreaper(True) if os.environ.get(ZYGOTE_ENV, "1") != "0" else None
        if self.warm and self.reaper is not None:
            self.zygote = Zygote.forked(run.run_dir, run.worker_env())

    def begin(self, run: RunContext) -> None:
        self.run = run
        if self.reaper is not None and self.zygote is None:
            self.zygote = Zygote(run.run_dir, [p.name for p in run.plan.processes], run.worker_env())

    def spawn(self, process: str, inc: int) -> Handle:
        """Fork the worker from the zygote; without one, start a new interpreter for it."""
        run = self.run
        assert run is not None, "begin() first"
        forked = (self.zygote.spawn(process, inc, SPAWN_TIMEOUT_S, declared_secrets(run.plan, process))
                  if self.zygote is not None else None)
        proc = forked if forked is not None else subprocess.Popen(
            [sys.executable, "-m", "dmnflow.runtime.worker", run.run_dir, process, str(inc), str(os.getpid())],
            env=run.worker_env(process),
            start_new_session=True)  # Ctrl-C in the terminal reaches only the supervisor
        return LocalHandle(proc, self.host)

    def counts(self, process: str, inc: int) -> list[int] | None:
        """From the incarnation's counters file: exact, even after a kill -9."""
        if self.run is None or self.layout is None or not self.run.run_dir:
            return None
        return Counters.read(counters_path(self.run.run_dir, process, inc), self.layout)

    def end(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None
        if self.reaper is not None:
            subreaper(self.reaper)
            self.reaper = None

    def close(self) -> None:
        pass

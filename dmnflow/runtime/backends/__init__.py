"""Where a run's workers run: the seam between the supervisor and the thing that starts them.

The supervisor owns the lifecycle (phased start-up, heartbeats, restarts per policy, the
drain, the report); a backend only starts a worker process for a process of the plan, and
hands back a ``Handle`` the supervisor waits for and signals like a ``Popen``, and stops
with the one escalation of ``runtime/processes.py``:

- ``local`` (the default): processes on this machine, forked by the zygote
  (``runtime/processes.py``);
- ``ray``: each process of the plan a Ray actor on a Ray cluster, which starts the worker
  next to it on its node (``backends/ray.py``, ``backends/ray_host.py``).

A backend's life in a run::

    open(plan)          before anything starts: connect, check that the plan can be placed
    prepare(run)        the run directory exists, no zmq context or thread yet (a warm zygote forks)
    bind_control(...)   the supervisor's control socket, where the workers can reach it
    begin(run)          the run directory and token exist: get ready to start workers
    spawn(name, inc)    start one incarnation of a process's worker -> Handle
    counts(name, inc)   its exact counts, where the backend can read them
    end()               every worker has exited: release what begin() took
    close()             undo open()

``open`` raises ``PlacementError`` (exit code 1) for a plan the backend cannot run as
written, and leaves nothing behind. This package never imports Ray at module level.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Protocol

import zmq

from ...errors import ExitCode, LaunchError
from ...plan import Plan
from ..processes import Signalled

__all__ = ["BACKENDS", "Backend", "Handle", "PlacementError", "PortInUse", "RunContext", "make_backend",
           "port_problem"]

BACKENDS = ("local", "ray")


class PlacementError(LaunchError):
    """The backend cannot run the plan as written (an unreachable cluster, resources no node
    has, a host nobody is, a missing package): found before any worker starts."""

    exit_code = ExitCode.INVALID


class PortInUse(PlacementError):
    """A fixed tcp port of the graph is taken (by another program, or another run)."""


def port_problem(endpoint: str) -> str | None:
    """Why the fixed tcp port of ``endpoint`` cannot be bound on this host, or None when it
    can: probed before any worker starts (a worker's bind would fail the same way, later and
    less clearly). The local backend probes in ``open``, a Ray host where it is placed."""
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    host = host.strip("[]")
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as libzmq binds
        probe.bind((host, int(port)))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return (f"tcp port {port} on {host} is already in use (by another program, or another run of this "
                    "graph: `dmnflow runs` lists them)")
        return f"cannot bind tcp {host}:{port}: {exc.strerror}"
    finally:
        probe.close()
    return None


class Handle(Signalled, Protocol):
    """One incarnation of a worker, as the supervisor waits for and signals it (and stops it
    with ``processes.stop``, the one escalation).

    ``Popen``'s waiting and signalling, plus where it runs and, once it has ended, what the
    backend knows beyond the exit code: ``reason`` (it was killed by ``ray.kill``, its node
    was lost) and ``fatal`` (where it ran is gone: no restart can help, the run fails).
    Every backend returns one (``local.LocalHandle``, ``ray.RayHandle``)."""

    returncode: int | None
    host: str
    reason: str | None
    fatal: bool


class RunContext(Protocol):
    """What a backend may read of the run it serves (the supervisor)."""

    plan: Plan
    name: str
    run_dir: str
    token: bytes
    resolved: dict[str, str]  # bind id -> the address it bound, so far

    def worker_env(self, process: str | None = None) -> dict[str, str]: ...


class Backend(Protocol):
    """Starts the workers of one run; see the module docstring for the order of calls."""

    name: str
    remote: bool  # workers may run on other hosts: the supervisor cannot probe ports or read files for them

    def open(self, plan: Plan) -> None: ...
    def prepare(self, run: RunContext) -> None: ...
    def bind_control(self, zctx: zmq.Context, sock: zmq.Socket, run_dir: str) -> str: ...
    def begin(self, run: RunContext) -> None: ...
    def spawn(self, process: str, inc: int) -> Handle: ...
    def counts(self, process: str, inc: int) -> list[int] | None: ...
    def end(self) -> None: ...
    def close(self) -> None: ...


def make_backend(name: str = "local", *, warm: bool = False, **options: Any) -> Backend:
    """The backend called ``name``; ``options`` are its own (the ray backend's ``address``).
    ``warm`` (local): fork the workers' zygote from this process (``launch(warm=True)``); the
    ray backend starts each worker next to its actor whatever it is.

    Raises:
        PlacementError: an unknown name, or an option the backend does not take.
    """
    if name == "local":
        if any(v is not None for v in options.values()):
            given = ", ".join(k for k, v in options.items() if v is not None)
            raise PlacementError(f"the local backend takes no {given}; it runs the graph on this machine "
                                 "(--backend ray runs it on a Ray cluster)")
        from .local import LocalBackend

        return LocalBackend(warm=warm)
    if name == "ray":
        from .ray import RayBackend

        return RayBackend(**options)
    raise PlacementError(f"no backend {name!r}; backends are {', '.join(BACKENDS)}")

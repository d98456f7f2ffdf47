"""The zygote: one Python that has imported the worker and read the plan, and forks a
worker per request of the supervisor, so ten workers do not each start an interpreter
and import pydantic, zmq and msgpack (most of a worker's start-up).

Started only by the supervisor (``python -m dmnflow.runtime.zygote RUN_DIR PID FD PAD``),
which talks to it over the socket ``FD`` in JSON lines: ``{"name": process, "inc": n}``
(plus ``"env": {...}``, the secret variables that worker's nodes declared, which it adds
after the fork: the zygote's own environment holds none, see ``runtime/env.py``)
-> ``{"pid": pid}`` or ``{"error": text}`` (the supervisor then starts that worker the
usual way, ``python -m dmnflow.runtime.worker``).

A worker made here is the same as one started with ``python -m dmnflow.runtime.worker``:

- a child of the supervisor: the zygote forks an intermediate process, which forks the
  worker and exits, and the kernel hands the orphan to the supervisor, which marked itself
  a child subreaper (``PR_SET_CHILD_SUBREAPER``) for the run. So the supervisor waits for
  (reaps) and signals every worker by PID, as it would its own ``Popen``;
- the parent-death signal is armed only once the worker's parent *is* the supervisor (it
  is cleared by fork and would fire when the intermediate exits), then checked against
  the supervisor's PID as before: a supervisor killed with -9 takes every worker with it;
- its own session and process group (``setsid``), so Ctrl-C in the terminal reaches only
  the supervisor; SIGINT ignored;
- its command line reads ``python -m dmnflow.runtime.worker RUN_DIR PROCESS INC PID``
  (written over the zygote's argument area, which ``PAD`` makes long enough), so ``ps``
  and tools that look for workers see what they saw before.

The zygote never creates a zmq context (workers create theirs after fork, and pin their
cores before that) and forks only while it has a single thread. It imports no node code,
but it imports numpy, and torch when a node runs a model (``warm``): each worker would
import them itself, torch alone about a second of CPU. OpenBLAS starts its threads when
numpy loads, so it loads here with one thread, and each worker then gives it the threads
it would have had (``worker.restore_blas_threads``: its pins, ``OPENBLAS_NUM_THREADS``, or
its cores). It dies with the supervisor, and exits when the supervisor closes the socket.

``launch(warm=True)`` forks the zygote from the supervisor instead (``processes.Zygote.forked``,
before the run's zmq context exists): it then runs ``main`` with the caller's imports
(torch, the nodes) already in place, and its workers inherit them.

The ray backend runs one zygote per Ray node and run (``node_main``: ``python -m
dmnflow.runtime.zygote --node SOCKET OWNER TORCH PAD``, started by that node's
``ray_host.NodeWarm`` actor), so the node's workers share its imports instead of each
starting an interpreter and importing numpy and torch. There a worker is the zygote's own
child (no subreaper: the process's actor is not its parent): each ``WorkerHost`` actor asks
for it over a connection to the zygote's unix socket (``{"run_dir", "name", "inc", "env",
"cwd"}``, the worker's whole environment and directory), gets ``{"pid": n}``, and later
``{"exit": code}`` once the zygote has reaped it. A connection that closes (its actor was
killed) takes its worker with it (SIGKILL), as the actor's own child would die with it;
every worker dies with the zygote (parent-death signal), and the zygote with its owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..plan import Plan
from . import worker

REPARENT_WAIT_S = 5.0


def set_cmdline(args: list[str]) -> bool:
    """Write ``args`` over this process's argument area (what /proc/PID/cmdline and ps show),
    padded with NULs; False when it does not fit or the area cannot be found."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (fields 48, 49 of stat)
    except (OSError, IndexError, ValueError):
        return False
    data = b"\0".join(os.fsencode(a) for a in args) + b"\0"
    if not start or len(data) > end - start:
        return False
    ctypes.memmove(start, data.ljust(end - start, b"\0"), end - start)
    return True


def _reply(sock: socket.socket, **msg: object) -> None:
    sock.sendall(json.dumps(msg).encode() + b"\n")


def _fork_worker() -> tuple[int, int] | None:
    """Fork an intermediate that forks the worker and exits. Returns ``(worker pid, 0)`` in
    the zygote (None if the intermediate died first), ``(0, intermediate pid)`` in the worker."""
    r, w = os.pipe()
    mid = os.fork()
    if mid == 0:  # the intermediate: fork, say the worker's pid, exit (the worker is orphaned)
        try:
            os.close(r)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                os.close(w)
                return 0, me
            os.write(w, b"%d" % pid)
        except BaseException:
            pass
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(mid, 0)
    return (int(data), 0) if data else None


def serve(sock: socket.socket, plan: Plan | None = None) -> tuple[str, int, int] | None:
    """Answer spawn requests until the supervisor closes the socket (None). In a forked
    worker it returns ``(process, inc, intermediate pid)``. ``plan``: warm up for each worker
    first (``warm``)."""
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = sock.recv(4096)
            if not chunk:
                return None
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        try:
            req = json.loads(line)
            name, inc = str(req["name"]), int(req["inc"])
            env = {str(k): str(v) for k, v in req.get("env", {}).items()}  # the worker's secrets (runtime/env.py)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            _reply(sock, error=f"bad request: {exc}")
            continue
        if plan is not None:
            warm(plan, name)
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # forking a process with threads copies only the caller: refuse
            _reply(sock, error=f"the zygote has {threads} threads")
            continue
        try:
            got = _fork_worker()
        except OSError as exc:
            _reply(sock, error=f"fork failed: {exc}")
            continue
        if got is None:
            _reply(sock, error="the intermediate process died")
        elif got[0] == 0:  # we are the worker
            sock.close()
            os.environ.update(env)
            return name, inc, got[1]
        else:
            _reply(sock, pid=got[0])


def _become_worker(run_dir: str, name: str, inc: int, supervisor: int, intermediate: int) -> None:
    os.setsid()  # a session and process group of its own, as Popen(start_new_session=True)
    set_cmdline([sys.executable, "-m", "dmnflow.runtime.worker", run_dir, name, str(inc), str(supervisor)])
    deadline = time.monotonic() + REPARENT_WAIT_S
    while os.getppid() == intermediate:  # the intermediate exits at once; then we are the supervisor's
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.0002)


def warm(plan: Plan, process: str | None = None) -> None:
    """Import numpy (no process named), or torch when a node of ``process`` has a model, once
    for every worker forked from here after; OpenBLAS with one thread (a process with threads
    cannot fork). The supervisor asks for the workers without a model first, so they start
    while torch loads. Nothing that cannot be imported here is an error: the worker that
    needs it says so."""
    if process is None and "numpy" in sys.modules:  # a zygote forked from a warm caller has its imports
        return
    if process is not None and ("torch" in sys.modules or not worker.BLAS_AT_ONE_THREAD or not any(
            n.model is not None for n in plan.nodes if n.process == process)):
        return
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        if process is None:
            import numpy  # noqa: F401

            worker.BLAS_AT_ONE_THREAD = True
        else:
            import torch  # noqa: F401
    except ImportError:
        pass
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def _warm_node(torch_too: bool) -> None:
    """numpy (and torch, for a node whose processes run models) with one BLAS thread, once for
    every worker of this Ray node (``warm``'s imports, decided by the driver's plan)."""
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        with contextlib.suppress(ImportError):
            import numpy  # noqa: F401

            worker.BLAS_AT_ONE_THREAD = True
        if torch_too:
            with contextlib.suppress(ImportError):
                import torch  # noqa: F401
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def serve_node(listener: socket.socket) -> dict[str, Any] | None:
    """The node zygote's loop (module docstring): accept a connection per worker, fork it,
    say its pid, reap it and say its exit code; SIGKILL a worker whose connection closed.
    Returns the request in a forked worker; None when the zygote is told to stop (SIGTERM)."""
    conns: dict[socket.socket, bytes] = {}  # a connection -> what it sent so far
    child_of: dict[socket.socket, int] = {}
    conn_of: dict[int, socket.socket] = {}
    stopping = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    while not stopping:
        with contextlib.suppress(ChildProcessError):
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = conn_of.pop(pid, None)
                if conn is not None:
                    child_of.pop(conn, None)
                    with contextlib.suppress(OSError):
                        _reply(conn, exit=os.waitstatus_to_exitcode(status))
        try:
            ready, _, _ = select.select([listener, *conns], [], [], 0.05)
        except InterruptedError:
            continue
        for sock in ready:
            if sock is listener:
                with contextlib.suppress(OSError):
                    conns[listener.accept()[0]] = b""
                continue
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:  # the actor closed it (or died): its worker goes too
                del conns[sock]
                pid = child_of.pop(sock, None)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                sock.close()
                continue
            conns[sock] += chunk
            if b"\n" not in conns[sock] or sock in child_of:
                continue
            line = conns[sock].split(b"\n", 1)[0]
            try:
                req = json.loads(line)
                job = {"run_dir": str(req["run_dir"]), "name": str(req["name"]), "inc": int(req["inc"]),
                       "env": {str(k): str(v) for k, v in req["env"].items()}, "cwd": str(req["cwd"])}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                with contextlib.suppress(OSError):
                    _reply(sock, error=f"bad request: {exc}")
                continue
            threads = len(os.listdir("/proc/self/task"))
            if threads != 1:
                with contextlib.suppress(OSError):
                    _reply(sock, error=f"the zygote has {threads} threads")
                continue
            gc.freeze()  # what the zygote imported is never collected in a worker: no copy-on-write of it
            try:
                pid = os.fork()
            except OSError as exc:
                with contextlib.suppress(OSError):
                    _reply(sock, error=f"fork failed: {exc}")
                continue
            if pid == 0:  # the worker
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for other in (listener, *conns):
                    other.close()
                return job
            child_of[sock], conn_of[pid] = pid, sock
            try:
                _reply(sock, pid=pid)
            except OSError:  # the actor went while we forked
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    for pid in conn_of:  # stopped: the workers die with us (their parent-death signal), say so first
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return None


def node_main(args: list[str]) -> int:
    """``--node SOCKET OWNER TORCH [PAD]``: the ray backend's zygote of one Ray node."""
    path, owner, torch_too = args[0], int(args[1]), args[2] == "1"
    worker._die_with_parent(owner)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_cmdline([sys.executable, "-m", "dmnflow.runtime.zygote", "--node", path, str(owner)])
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.rename(path + ".tmp", path)  # connections wait in the backlog while the imports run
    _warm_node(torch_too)
    job = serve_node(listener)
    if job is None:
        return 0
    os.setsid()  # a session and process group of its own, as Popen(start_new_session=True)
    os.chdir(job["cwd"])
    os.environ.clear()
    os.environ.update(job["env"])
    extra = [p for p in job["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [p for p in extra if p not in sys.path]  # what a new interpreter would put first
    run_dir, name, inc, zygote = job["run_dir"], job["name"], str(job["inc"]), str(os.getppid())
    set_cmdline([sys.executable, "-m", "dmnflow.runtime.worker", run_dir, name, inc, zygote])
    return worker.main([run_dir, name, inc, zygote])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--node":
        return node_main(args[1:])
    run_dir, supervisor, fd = args[0], int(args[1]), int(args[2])
    worker._die_with_parent(supervisor)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    set_cmdline([sys.executable, "-m", "dmnflow.runtime.zygote", run_dir, str(supervisor)])
    plan = Plan.from_json(Path(run_dir, "plan.json").read_bytes())  # parsed once, inherited by every worker
    warm(plan)
    sock = socket.socket(fileno=fd)
    job = serve(sock, plan)
    if job is None:
        with contextlib.suppress(OSError):
            sock.close()
        return 0
    name, inc, intermediate = job
    _become_worker(run_dir, name, inc, supervisor, intermediate)
    return worker.main([run_dir, name, str(inc), str(supervisor)], plan=plan)


if __name__ == "__main__":
    sys.exit(main())

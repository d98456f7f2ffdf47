"""The warm host: one process per study that imports the graph's node modules (and torch)
once, then forks a process per trial, so no trial pays the interpreter, torch and the nodes'
imports again: each trial's supervisor forks its workers' zygote from itself
(``launch(warm=True)``), and its workers start with everything already imported.

Started by an engine as ``python -m dmnflow.tune.host SOCKET PARENT_PID PAD MODULE...``.
It listens on a Unix socket (in a directory only this user can enter); each connection
is one trial: the client sends the trial's request line, the host forks, and the forked
child runs the trial on that very connection (``trial.run_child``), so the client talks to
its trial directly and sees the connection close when the trial ends.

Lifetime: the host dies with the engine (parent-death signal) and ends on SIGTERM; each
trial child dies with the host, and each trial's workers die with their trial. The host
ignores Ctrl-C (the engine stops the trials), reaps its children, and never creates a zmq
context (trials create theirs after the fork). Its command line is padded (``PAD``) so a
trial can write ``python -m dmnflow.tune.trial ...`` over it for ``ps``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from ..runtime.processes import ByPid, exit_forked, stop
from .trial import TrialProcess, TrialRequest, read_request

__all__ = ["Host", "connect", "main", "start_host", "warm_modules"]

READY_TIMEOUT_S = 120.0  # the host imports torch and the nodes before it answers


def _die_with(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def _warm_imports(modules: Iterable[str]) -> list[str]:
    """Import what the trials' workers will need; the ones that failed (their trials say why)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a trial importing it will report the error properly
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
    return failed


def _fork_trial(conn: socket.socket, listener: socket.socket, request: TrialRequest, host_pid: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the trial: never back into the host's loop
        listener.close()
        os.setsid()
        _die_with(host_pid)
        log = Path(request.workdir) / "log.txt"
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        from ..runtime.zygote import set_cmdline

        set_cmdline([sys.executable, "-m", "dmnflow.tune.trial", str(request.number), request.name])
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from .trial import run_child

        code = run_child(conn, request)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        exit_forked(code)


def serve(listener: socket.socket) -> None:
    """Fork a trial per connection; reap them; return on SIGTERM."""
    me = os.getpid()
    children: set[ByPid] = set()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    while not stopping:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([listener], [], [], 0.2)
            if ready:
                conn, _ = listener.accept()
                try:
                    request = read_request(conn, 10.0)
                except (OSError, ValueError, TypeError) as exc:
                    with contextlib.suppress(OSError):
                        conn.sendall(json.dumps({"event": "done", "state": "fail", "values": None, "figures": {},
                                                 "reason": f"bad trial request: {exc}"}).encode() + b"\n")
                    conn.close()
                    continue
                children.add(ByPid(_fork_trial(conn, listener, request, me)))
                conn.close()
        for child in list(children):
            if child.poll() is not None:  # reaped
                children.discard(child)
    stop(children, signal.SIGKILL)  # the engine stops its trials first; any left go now (by PID, reaped)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path, parent, modules = args[0], int(args[1]), args[3:]
    _die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    failed = _warm_imports(modules)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write(json.dumps({"ready": True, "failed": failed}) + "\n")
    sys.stdout.flush()
    try:
        serve(listener)
    finally:
        listener.close()
    return 0


def start_host(modules: list[str], cwd: str, log: Path) -> Host | None:
    """A warm host, or None (trials then start cold) when it cannot start; the log says why."""
    try:
        return Host(modules, cwd, log)
    except (OSError, RuntimeError) as exc:
        logging.getLogger("dmnflow.tune").warning("the warm trial host did not start (%s, see %s); trials start "
                                                  "cold", exc, log)
        return None


class Host:
    """The engine's handle on a warm host: start it, ask it for trials, stop it."""

    def __init__(self, modules: list[str], cwd: str, log: Path) -> None:
        self.dir = tempfile.mkdtemp(prefix="dmnflow-tune-")  # mode 0700: only we reach the socket
        self.path = os.path.join(self.dir, "host.sock")
        self.cwd = cwd
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH", "")) if p)
        pad = "-" * 160  # room for the trial's command line
        with open(log, "ab") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "dmnflow.tune.host", self.path, str(os.getpid()),
                                           pad, *modules], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err,
                                          start_new_session=True)
        self.failed: list[str] = []
        self._ready()

    def _ready(self) -> None:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if select.select([self.popen.stdout], [], [], 0.5)[0]:
                line = self.popen.stdout.readline()
                if line:
                    self.failed = json.loads(line).get("failed", [])
                    return
            if self.popen.poll() is not None:
                break
        self.close()
        raise RuntimeError("the warm trial host did not start (see its log)")

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def trial(self, request: TrialRequest) -> TrialProcess:
        """A trial forked by the host; the connection is the trial's own."""
        return connect(self.path, request)

    def close(self) -> None:
        """Stop it (``processes.stop``: SIGTERM, and it kills any trial left; SIGKILL if it
        must; reaped); remove its socket."""
        stop([self.popen], what="the warm trial host")
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


def connect(path: str, request: TrialRequest) -> TrialProcess:
    """A trial forked by the host listening at ``path`` (the Ray engine's trials on this machine)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.sendall(request.to_json().encode() + b"\n")
    return TrialProcess(sock, request.number)  # type: ignore[arg-type]


def warm_modules(plan: object) -> list[str]:
    """What a plan's workers import: each node's module, and torch where a model runs."""
    nodes = getattr(plan, "nodes", [])
    modules = sorted({n.uses.split(":")[0] for n in nodes})
    if any(n.model is not None for n in nodes):
        modules.insert(0, "torch")
    return ["dmnflow.runtime.worker", "dmnflow.runtime.zygote", "dmnflow.compiler", *modules]


if __name__ == "__main__":
    sys.exit(main())

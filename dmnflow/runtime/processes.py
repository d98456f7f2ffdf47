"""The one process lifecycle: start, stop, reap. Every process dmnflow starts (a run's
workers and zygote, the tune host and its trials, a Ray actor's worker, the daemons of a Ray
started for a run) is stopped here, by PID, with one escalation:

    ask       SIGTERM (or SIGINT; or nothing when it was asked another way: its socket
              closed, a stop message), so it can run its teardown
    wait      up to ``TERM_WAIT_S`` (all of them together, not one after the other)
    SIGKILL   the ones left, with a warning naming each
    reap      wait for every one, so none outlives its owner's return

``stop`` is that escalation, ``wait_exit`` its first half (a drain: exit by yourselves, no
signal yet). The timeouts are named here and nowhere else. Also here: workers forked by the
zygote (``Zygote``, waited for and signalled by PID as ``ByPid``), the subreaper switch, and
the sweep of run directories whose supervisor is gone. Nothing is ever stopped by name.
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["ASKED_STOP_S", "CLOSED_WAIT_S", "LAUNCH_PID", "RUN_DIR_PREFIX", "SERVICE_TERM_WAIT_S", "SPAWN_TIMEOUT_S",
           "TERM_WAIT_S", "ZYGOTE_ENV", "ByPid", "Signalled", "Zygote", "alive", "exists", "exit_forked", "stop",
           "subreaper", "sweep_run_dirs", "wait_exit"]

log = logging.getLogger("dmnflow.supervisor")

RUN_DIR_PREFIX = "dmnflow-"
LAUNCH_PID = "launch.pid"  # in the run directory of a launch that compiles (admin/client.py's `starting`)
ZYGOTE_ENV = "DMNFLOW_ZYGOTE"  # "0": start each worker as a new interpreter instead of forking it
SPAWN_TIMEOUT_S = 30.0  # the zygote's first answer waits for its imports

# the escalation's timeouts (``stop``), each named once
TERM_WAIT_S = 2.0  # signalled (SIGTERM, SIGINT): its teardown, then exit; SIGKILL after this
CLOSED_WAIT_S = 5.0  # its socket closed (the zygote, a trial): it exits by itself; SIGKILL after this
ASKED_STOP_S = 10.0  # a trial told to stop drains its graph (and the runtime's own grace); killed after this
SERVICE_TERM_WAIT_S = 5.0  # a Ray started for a run: its daemons stop their own children first


class Signalled(Protocol):
    """What the lifecycle needs of a process: ``Popen``'s waiting and signalling by PID
    (``ByPid``, a ``Popen``, every backend's ``Handle``)."""

    pid: int

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...


def wait_exit(procs: Iterable[Signalled], timeout_s: float) -> list[Signalled]:
    """Give ``procs`` ``timeout_s`` (together) to exit by themselves; the ones still running."""
    deadline = time.monotonic() + timeout_s
    left = []
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            left.append(proc)
    return left


def stop(procs: Iterable[Signalled], sig: int | None = signal.SIGTERM, wait_s: float = TERM_WAIT_S,
         what: str = "process") -> list[Signalled]:
    """The escalation (module docstring): ``sig`` to each one still running (None: it was
    asked another way), ``wait_s`` for all of them, SIGKILL the rest, reap every one.
    Returns the ones that had to be killed."""
    live = [p for p in procs if p.poll() is None]
    if sig is not None:
        for proc in live:
            proc.send_signal(sig)
    if sig == signal.SIGKILL:
        killed = live
    else:
        killed = wait_exit(live, wait_s)
        asked = signal.Signals(sig).name if sig is not None else "its stop"
        for proc in killed:
            log.warning("%s pid %d ignored %s for %gs; sending SIGKILL", what, proc.pid, asked, wait_s)
            proc.send_signal(signal.SIGKILL)
    for proc in killed:
        proc.wait()
    return killed


def exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie too; another user's too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def alive(pid: int) -> bool:
    """Running, not a zombie (a child of ours is reaped here)."""
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def sweep_run_dirs() -> list[str]:
    """Remove run directories whose supervisor (or launch, still compiling) is gone (killed with
    -9, it could not clean up)."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        try:
            if path.stat().st_uid != os.getuid():
                continue
            pid_file = path / "supervisor.pid"
            pid = int((pid_file if pid_file.exists() else path / LAUNCH_PID).read_text())  # a run, or a launch
        except (OSError, ValueError):
            continue  # not ours, or just being created
        if exists(pid):
            continue  # still running
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    return removed


PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37


def exit_forked(code: int) -> None:
    """End a forked child: its output flushed, none of the parent's atexit handlers or
    buffered state run (``os._exit``)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def subreaper(on: bool) -> bool | None:
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


class ByPid:
    """A process known by its PID only, with ``Popen``'s waiting and signalling: a worker the
    zygote forked (handed to us, a subreaper, as our child), the tune host's trial, a daemon
    of a Ray started for the run. A child of ours is reaped with its exit code; another's
    has ended when its PID is gone or a zombie (exit code unknown: 0, as ``Popen`` says)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # not (or no longer) our child
                if not alive(self.pid):
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
        if self.poll() is None:  # not reaped yet, so the PID is still this process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The supervisor's end of the zygote (``runtime/zygote.py``): forks workers on request."""

    def __init__(self, run_dir: str, names: list[str], env: dict[str, str]) -> None:
        ours, theirs = socket.socketpair()
        # its argument area must hold the longest worker command line it will write there
        longest = max((len(os.fsencode(n)) for n in names), default=0)
        pad = "-" * (longest + 24)
        try:
            self.popen: subprocess.Popen[bytes] | ByPid | None = subprocess.Popen(
                [sys.executable, "-m", "dmnflow.runtime.zygote", run_dir, str(os.getpid()), str(theirs.fileno()),
                 pad], env=env, pass_fds=[theirs.fileno()], start_new_session=True)
        except OSError as exc:
            log.warning("cannot start the zygote (%s); starting workers one interpreter each", exc)
            self.popen = None
        theirs.close()
        self.sock = ours
        self.buffer = b""

    @classmethod
    def forked(cls, run_dir: str, env: dict[str, str]) -> Zygote:
        """A zygote forked from this process instead of started as a new interpreter
        (``launch(warm=True)``): its workers inherit every module this process has imported
        (torch, the nodes' code), so none of them imports it again. Taken before the run
        has a zmq context; from then on it serves exactly as the exec'd one does. Its
        environment is ``env`` (the zygote's: no secret a node did not declare)."""
        zygote = cls.__new__(cls)
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote (and, returning from serve, each worker): never back into our caller
            code = 1
            try:
                ours.close()
                os.environ.clear()
                os.environ.update(env)
                from . import zygote as _zygote

                code = _zygote.main([run_dir, str(os.getppid()), str(theirs.fileno())])
            except BaseException:
                traceback.print_exc()
            finally:
                exit_forked(code)
        theirs.close()
        zygote.popen = ByPid(pid)
        zygote.sock = ours
        zygote.buffer = b""
        return zygote

    def spawn(self, name: str, inc: int, timeout_s: float, env: dict[str, str] | None = None) -> ByPid | None:
        """A worker forked from the zygote, or None when the zygote cannot (it then stays unused).

        ``env``: variables the worker adds to the zygote's environment after the fork (its secrets).
        """
        if self.popen is None:
            return None
        try:
            self.sock.settimeout(timeout_s)
            request: dict[str, Any] = {"name": name, "inc": inc, **({"env": env} if env else {})}
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(4096)
                if not chunk:
                    raise ConnectionError("the zygote exited")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            reply = json.loads(line)
            if "pid" in reply:
                return ByPid(int(reply["pid"]))
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
            stop([self.popen], None, CLOSED_WAIT_S, "the zygote")
            self.popen = None

"""The admin channel's server: the supervisor's ROUTER at ``ipc://RUN_DIR/admin``.

The supervisor owns one ``AdminServer`` and calls it each turn: ``serve`` when the socket
has requests, ``expire`` to answer for nodes that never will, ``on_reply`` with a node's
answer to a command. What the server needs of the supervisor is small (``Run``): the run's
name, the state of a node instance, and a way to tell one a control message. ``snapshot``
and ``tap`` are the observer's to answer (``runtime/observer.py``).

Every request is answered with one ``protocol.Answer``. A request that is not one of
``protocol.ADMIN`` is answered ``ok=False`` and counted as junk (``Report.control_junk``);
nothing a client sends, and no answer the run cannot encode, stops the run. The run
directory's mode (0700) is the access control.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from ...errors import did_you_mean
from ...plan import Plan
from .. import protocol
from ..observer import Observer
from ..protocol import ADMIN_SOCKET, Answer

__all__ = ["COMMAND_TIMEOUT_S", "AdminServer", "Run"]

log = logging.getLogger("dmnflow.supervisor")

COMMAND_TIMEOUT_S = 120.0  # a model swap loads and warms a model: give it time


class Run(Protocol):
    """What the admin server reads of the run it serves, and does to it (the supervisor)."""

    name: str
    phase: str  # starting (until the first message), running
    phase_detail: str  # where the start is: "5/13 processes up"

    def state_of(self, instance: str) -> str: ...  # new, bound, ..., running, done, failed, restarting
    def tell_node(self, instance: str, *msg: Any) -> None: ...  # a control message to its worker
    def request_stop(self) -> None: ...  # drain, as Ctrl-C does


@dataclass
class _Pending:
    """A command from ``dmnflow swap`` (or another client) waiting for its nodes' answers."""

    client: bytes
    waiting: set[str]
    answers: dict[str, list[Any]] = field(default_factory=dict)
    deadline: float = 0.0


class AdminServer:
    """Answers the clients of one run (``runtime/admin/client.py``)."""

    def __init__(self, plan: Plan, observer: Observer, run: Run, *,
                 command_timeout_s: float = COMMAND_TIMEOUT_S) -> None:
        self.plan, self.observer, self.run = plan, observer, run
        self.command_timeout_s = command_timeout_s
        self.socket: zmq.Socket | None = None
        self.pending: dict[int, _Pending] = {}
        self.next_token = 0
        self.junk = 0  # requests that were not one of protocol.ADMIN

    def open(self, zctx: zmq.Context, run_dir: str) -> zmq.Socket:
        """Bind the admin socket in ``run_dir``; the socket, for the supervisor's poller."""
        sock = zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_REQUEST)
        sock.setsockopt(zmq.RCVHWM, self.plan.limits.admin_hwm)
        sock.bind(f"ipc://{run_dir}/{ADMIN_SOCKET}")
        self.socket = sock
        return sock

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def serve(self) -> None:
        """Answer (or start answering) every request waiting on the socket."""
        assert self.socket is not None
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            request = protocol.decode(frames[1], protocol.ADMIN) if len(frames) == 2 else None
            if request is None:
                self.junk += 1
                if len(frames) == 2:  # a client's DEALER: it waits for an answer
                    self.answer(frames[0], False, "not a request dmnflow knows (a dmnflow of another version?)")
                continue
            self.request(frames[0], request[0], request[1:])

    def request(self, client: bytes, verb: str, args: list[Any]) -> None:
        if verb == protocol.STATUS:
            self.answer(client, True, {"graph": self.plan.graph, "name": self.run.name, "pid": os.getpid(),
                                       "phase": getattr(self.run, "phase", "running"),
                                       "phase_detail": getattr(self.run, "phase_detail", ""),
                                       "nodes": {n.name: self.run.state_of(n.name) for n in self.plan.nodes}})
        elif verb == protocol.COMMAND:
            self.start_command(client, *args)
        elif verb == protocol.STOP:  # dmnflow stop: the drain Ctrl-C starts
            self.run.request_stop()
            self.answer(client, True, {"name": self.run.name, "pid": os.getpid()})
        elif verb in (protocol.SNAPSHOT, protocol.TAP):  # dmnflow top / echo / hz / dashboard
            try:
                ok, result = self.observer.admin(verb, args[0], time.monotonic())
            except Exception as exc:  # a client's request must never stop the run
                log.exception("the %s request of a client failed", verb)
                ok, result = False, f"the run could not answer ({type(exc).__name__}: {exc})"
            self.answer(client, ok, result)
        else:  # in protocol.ADMIN, but not served here: a bug, answered rather than raised over the run
            self.answer(client, False, f"the run does not serve {verb!r}")

    def start_command(self, client: bytes, node: str, name: str, args: dict[str, Any]) -> None:
        """Send ``name`` to every instance of ``node`` (a YAML node's replicas, or one instance)."""
        targets = [n.name for n in self.plan.nodes if node in (n.name, n.spec_name)]
        if not targets:
            names = {n.spec_name for n in self.plan.nodes}
            near = did_you_mean(node, names)
            self.answer(client, False, f"the run has no node {node!r}; " + (f"{near} " if near else "")
                        + f"nodes: {', '.join(sorted(names))}")
            return
        down = [t for t in targets if self.run.state_of(t) != "running"]
        if down:
            self.answer(client, False, f"{', '.join(down)} not running now ({self.run.state_of(down[0])})")
            return
        token = self.next_token = self.next_token + 1
        self.pending[token] = _Pending(client, set(targets), deadline=time.monotonic() + self.command_timeout_s)
        for target in targets:
            self.run.tell_node(target, protocol.COMMAND, target, name, args, token)

    def on_reply(self, token: int, node: str, ok: bool, result: Any) -> None:
        """A node instance's answer to a command (the worker's ``reply``)."""
        req = self.pending.get(token)
        if req is None or node not in req.waiting:
            return
        req.answers[node] = [ok, result]
        req.waiting.discard(node)
        if not req.waiting:
            del self.pending[token]
            self.answer(req.client, all(a[0] for a in req.answers.values()), None, req.answers)

    def expire(self, now: float) -> None:
        """A node that never answers (its worker died meanwhile) does not leave a client waiting."""
        for token, req in list(self.pending.items()):
            if now > req.deadline:
                del self.pending[token]
                self.answer(req.client, False, f"no answer from {', '.join(sorted(req.waiting))} in "
                            f"{self.command_timeout_s:g}s", req.answers)

    def answer(self, client: bytes, ok: bool, result: Any, per_node: dict[str, list[Any]] | None = None) -> None:
        try:
            body = protocol.encode_answer(Answer(ok, result, per_node or {}))
        except (TypeError, ValueError, OverflowError) as exc:  # msgpack cannot carry what a node answered
            log.warning("an answer to a client could not be encoded: %s", exc)
            body = protocol.encode_answer(Answer(False, f"the run could not encode its answer ({exc})"))
        if self.socket is not None:
            with contextlib.suppress(zmq.ZMQError):  # the client went away
                self.socket.send_multipart([client, body], zmq.NOBLOCK)

"""The control channel between the supervisor and its workers, and the admin channel of
``dmnflow runs / swap / top / echo``: every verb named once, with the shape of its
arguments, the shape of the admin answer, and the functions that decide whether a message
is one of them.

A control message is a msgpack array ``[verb, *args]``. Workers talk on a DEALER whose
identity is ``worker_identity(token, process)``, unguessable without the run's token, so a
message from any other peer of the socket is junk: counted, never obeyed. Nothing a peer
sends can make the supervisor or a worker fail: a message that does not decode, names no
verb, or has arguments of the wrong shape is dropped and counted.

The admin channel (``ADMIN_SOCKET`` in the run directory, served by ``runtime/admin/server.py``)
carries one request ``[verb, *args]`` of ``ADMIN`` from a client and one ``Answer`` back,
``[ok, result, per_node]`` (``encode_answer``, ``decode_answer``); a request that is not one
of ``ADMIN`` is answered ``ok=False`` and counted as junk.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = ["ADMIN", "ADMIN_SOCKET", "SUPERVISOR", "WORKER", "Answer", "decode", "decode_answer", "encode",
           "encode_answer", "worker_identity"]

# worker -> supervisor
BOUND = "bound"  # {bind id: address actually bound}
CONNECTED = "connected"
READY = "ready"
HB = "hb"  # what the worker counted (histograms, summaries, cpu)
DONE = "done"  # the same, last: every node of the worker has ended
ERROR = "error"  # summary, the user's part of the traceback
REPLY = "reply"  # token, node, ok, result: a node's answer to a command

# supervisor -> worker
CONNECT = "connect"  # {bind id: address}: where every producer is
RECONNECT = "reconnect"  # {bind id: address}: a restarted producer bound a new address
START = "start"
STOP = "stop"  # drain: sources end, end-of-stream follows the data
REHELLO = "rehello"  # a restarted producer must hear from its consumers again
REPORT = "report"  # the run is failing: send what you counted
COMMAND = "command"  # node, name, args, token
TAP = "tap"  # node, port, {max_rate, topic}: mirror that output to its tap socket; {} stops it (runtime/taps.py)
BUDGET = "budget"  # {budget, state, ...}: a latency budget was missed or is met again (nodes' on_budget)

# client -> supervisor (admin socket), each answered with one Answer
ADMIN_SOCKET = "admin"  # the ipc socket's name in the run directory (mode 0700: only the run's user)
STATUS = "status"  # -> {graph, name, pid, nodes: {instance: state}}
# COMMAND node, name, args -> sent to every instance of node; per_node {instance: [ok, result]}
SNAPSHOT = "snapshot"  # {history: bool} -> the live report (runtime/observer.py)
# TAP {output, client, max_rate, topic, on} -> a client's lease on a tap, renewed while it listens
# STOP -> {name, pid}: drain the run as Ctrl-C does (``dmnflow stop``)

_MAP, _STR, _ANY, _INT, _BOOL = dict, str, object, int, bool

WORKER: dict[str, tuple[type, ...]] = {  # what a worker may send
    BOUND: (_MAP,), CONNECTED: (), READY: (), HB: (_MAP,), DONE: (_MAP,), ERROR: (_STR, _STR),
    REPLY: (_INT, _STR, _BOOL, _ANY),
}
SUPERVISOR: dict[str, tuple[type, ...]] = {  # what the supervisor may send a worker
    CONNECT: (_MAP,), RECONNECT: (_MAP,), START: (), STOP: (), REHELLO: (), REPORT: (),
    COMMAND: (_STR, _STR, _MAP, _INT), TAP: (_STR, _STR, _MAP), BUDGET: (_MAP,),
}
ADMIN: dict[str, tuple[type, ...]] = {STATUS: (), COMMAND: (_STR, _STR, _MAP), SNAPSHOT: (_MAP,), TAP: (_MAP,),
                                      STOP: ()}

MAX_MESSAGE = 16 << 20  # a heartbeat of a large graph is well under this
MAX_REQUEST = 1 << 20  # an admin request: a command's args (a model's path), a tap lease


def encode(*msg: Any) -> bytes:
    return msgpack.packb(list(msg), use_bin_type=True)


def decode(body: Any, verbs: dict[str, tuple[type, ...]]) -> list[Any] | None:
    """``[verb, *args]`` when ``body`` is a message of ``verbs`` with arguments of their
    types; None for anything else."""
    if type(body) is not bytes or len(body) > MAX_MESSAGE:
        return None
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        return None
    if type(msg) is not list or not msg or type(msg[0]) is not str:
        return None
    shape = verbs.get(msg[0])
    if shape is None or len(msg) != len(shape) + 1:
        return None
    for value, kind in zip(msg[1:], shape, strict=True):
        if kind is _ANY:
            continue
        if kind is _INT and (type(value) is not int):
            return None
        if kind is not _INT and not isinstance(value, kind):
            return None
        if kind is _MAP and not all(type(k) is str for k in value):
            return None
    return msg


@dataclass(frozen=True)
class Answer:
    """The supervisor's answer to an admin request: ``ok``; the result, or why not; and for a
    command, per node instance ``[ok, result-or-reason]``."""

    ok: bool
    message: Any
    nodes: dict[str, list[Any]] = field(default_factory=dict)


def encode_answer(answer: Answer) -> bytes:
    """``[ok, result, per_node]``.

    Raises:
        TypeError: the result holds something msgpack cannot carry.
    """
    return msgpack.packb([answer.ok, answer.message, answer.nodes], use_bin_type=True)


def decode_answer(body: Any) -> Answer | None:
    """The ``Answer`` in ``body``; None when it is not ``[ok, result, per_node]`` with a bool
    and a map of instance to ``[ok, result]``."""
    if type(body) is not bytes:  # no size bound: a snapshot with its history may be large
        return None
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:
        return None
    if type(msg) is not list or len(msg) != 3 or type(msg[0]) is not bool or type(msg[2]) is not dict:
        return None
    nodes = msg[2]
    if not all(type(k) is str and type(v) is list and len(v) == 2 and type(v[0]) is bool for k, v in nodes.items()):
        return None
    return Answer(msg[0], msg[1], nodes)


def worker_identity(token: bytes, process: str) -> bytes:
    """The control identity of a worker: its process name behind an unguessable tag."""
    return hmac.new(token, b"worker/" + process.encode(), "sha256").hexdigest()[:16].encode() + b":" \
        + process.encode()


def endpoints_ok(value: dict[str, Any]) -> bool:
    """A ``{bind id: address}`` map of text."""
    return all(type(v) is str and len(v) < 512 for v in value.values())

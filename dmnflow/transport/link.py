"""What every socket of one worker shares (``Link``), binding a socket where the plan says,
and turning zmq errors into dmnflow's: the pieces both sides of an edge use.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import SendTimeout, TransportError
from ..plan import RUN_DIR, BindPlan, SecurityPlan
from .security import Curve
from .stats import B_JUNK, Counters
from .wire import control

if TYPE_CHECKING:
    from .stream import StreamPort

__all__ = ["Link", "Part", "bind_socket", "hello_msg", "junk", "send_parts", "zmq_errors"]

_MORE = int(zmq.SNDMORE)  # a plain int: zmq's flag enums cost an enum operation per frame


@contextlib.contextmanager
def zmq_errors(what: str) -> Iterator[None]:
    """Turn a zmq error into a TransportError that says which socket operation failed."""
    try:
        yield
    except zmq.Again as exc:
        raise SendTimeout(f"{what}: the receiver is not reading") from exc
    except zmq.ZMQError as exc:
        raise TransportError(f"{what}: {exc}") from exc


@dataclass
class Link:
    """What every socket of one worker shares: the run's secret token and shared-memory tag,
    the actual address of each bind (by the plan's bind id), the counters, CURVE."""

    zctx: zmq.Context
    run_dir: str
    token: bytes
    tag: str
    counters: Counters
    resolved: dict[str, str] = field(default_factory=dict)
    curve: Curve | None = None
    streams: dict[str, StreamPort] = field(default_factory=dict)  # fixed ports shared by outputs
    pipes: dict[str, Any] = field(default_factory=dict)  # memory edges (transport/memory.py): both ends here
    server_keys: dict[str, str] = field(default_factory=dict)  # bind id -> its host's key name (a key per host)
    security: SecurityPlan = field(default_factory=SecurityPlan)

    def curved(self, transport: str, pattern: str) -> bool:
        """Whether a socket of this transport and pattern is CURVE (the plan says which)."""
        return self.curve is not None and self.security.curved(transport, pattern)

    def endpoint(self, template: str) -> str:
        return template.replace(RUN_DIR, self.run_dir)


def bind_socket(link: Link, sock: zmq.Socket, bind: BindPlan, what: str, previous: str | None = None) -> str:
    """Bind ``sock`` where the plan says (CURVE first on tcp); a restarted worker takes the
    automatic port it had before, so its consumers, still dialling it, find it again.
    Returns the address actually bound."""
    template = link.endpoint(bind.endpoint)
    if link.curved(bind.transport, bind.pattern):
        link.curve.serve(sock)  # type: ignore[union-attr]  # curved: there is one
    if previous and previous != template:
        try:
            sock.bind(previous)
            return previous
        except zmq.ZMQError:
            pass  # taken meanwhile: a new port, and the supervisor tells the consumers
    try:
        sock.bind(template)
    except zmq.ZMQError as exc:
        if exc.errno == errno.EADDRINUSE and bind.transport == "tcp":
            port = template.rsplit(":", 1)[1]
            raise TransportError(f"{what}: tcp port {port} is already in use (another program, or another "
                                 "run of this graph?)") from exc
        raise TransportError(f"{what}: cannot bind {template}: {exc}") from exc
    return sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind.transport != "inproc" else template


def send_parts(sock: zmq.Socket, parts: list[Any], flags: int) -> None:
    """One message, frame by frame (send_multipart costs several Python checks per frame);
    the topic and header are copied, payload frames go without copying."""
    send = sock.send
    last = len(parts) - 1
    if not last:
        send(parts[0], flags)
        return
    send(parts[0], flags | _MORE)
    send(parts[1], flags if last == 1 else flags | _MORE)
    for i in range(2, last + 1):
        send(parts[i], flags if i == last else flags | _MORE, copy=False)


def hello_msg(link: Link, edge: int, inc: int) -> bytes:
    """A consumer's ``hello`` on ``edge``: here I am, in incarnation ``inc``."""
    return control(b"hello", edge, link.token, inc)


def junk(link: Link, bind: BindPlan) -> None:
    """Count a message a bind refused (a peer the plan does not know, a malformed control)."""
    if bind.counter >= 0:
        link.counters.mv[link.counters.layout.bind(bind.counter) + B_JUNK] += 1


class Part:
    """A payload part, as the ``Inlet`` reads a zmq Frame: what the socket doubles of the polled
    edges (iox, memory) hand it for ``recv(copy=False)``."""

    __slots__ = ("buffer", "more")

    def __init__(self, data: bytes, more: bool) -> None:
        self.buffer, self.more = data, more

    @property
    def bytes(self) -> bytes:
        return self.buffer

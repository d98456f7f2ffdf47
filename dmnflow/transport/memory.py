"""The in-memory side of the runner's interface: what ``dmnflow.testing.run_node`` gives a
``NodeRunner`` instead of sockets.

``MemoryOutlet`` stands for an ``Outlet`` (the runner's ``Sender``: ``send``, ``alloc``,
``send_eos``) and keeps what was sent; ``MemoryInlet`` stands for an ``Inlet`` (its
``Receiver``) and yields the ``(value, header)`` pairs a socket inlet yields, header in the
wire's layout, so the runner reads the same fields, on the same schedule, in a test as in a
graph. Nothing is encoded: values arrive as sent.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

from ..errors import SendTimeout, TransportError
from .channel import SocketlessChannel
from .link import Part, junk
from .stats import DROPPED, SENT
from .wire import DATA, EOS_TOPIC, SEP, parse_control

__all__ = ["MemoryChannel", "MemoryInlet", "MemoryOutlet", "MemorySocket", "Sent"]


@dataclass(frozen=True, slots=True)
class Sent:
    """One record an output sent: its value and what travels with it."""

    value: Any
    topic: str
    event_time: Any
    attrs: Any
    origin_ns: int


@dataclass
class MemoryOutlet:
    """An output port whose records stay in a list."""

    port: str
    sent: list[Sent] = field(default_factory=list)
    ended: bool = False

    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any) -> None:
        if self.ended:
            raise RuntimeError(f"output {self.port!r} sent a record after its end-of-stream")
        self.sent.append(Sent(value, topic.decode() if topic is not None else self.port, event_time, attrs, origin_ns))

    def alloc(self, shape: Any, dtype: Any) -> Any:
        return np.empty(shape, dtype)

    def send_eos(self) -> None:
        self.ended = True


class MemoryInlet:
    """One input port fed from a list: what a socket ``Inlet`` is to the runner (its
    ``Receiver``), without a socket. Each value queued with ``put`` gets the header a producer
    would have sent, in the wire's layout, so the runner reads the same fields in a test as in
    a graph; ``end`` is its producer's end-of-stream."""

    delivery = "at-most-once"
    read_batch = 256

    def __init__(self, port: str, src: int = 0, origin: int = 0, *, latest: bool = False,
                 counters: Any = None, conflated: int = -1) -> None:
        """``latest``: a read hands over only the newest of what waits, the rest counted in
        ``counters.mv[conflated]`` (as a socket ``Inlet`` does)."""
        self.port = port
        self.latest, self.counters, self.conflated = latest, counters, conflated
        self.src = src  # the producer's output id: a join tells producers apart by it
        self.sources = (src,)
        self.origin = origin  # the source node the values stand for (end-to-end latency at sinks)
        self.seq = 0
        self.waiting: deque[tuple[Any, list[Any]]] = deque()
        self.closed = False
        self.done_pending: dict[int, int] = {}

    def put(self, value: Any, event_time: Any = None, *, topic: str | None = None, attrs: Any = None) -> None:
        """Queue a value as its producer would have sent it."""
        if self.closed:
            raise RuntimeError(f"input {self.port!r} got a record after its end-of-stream")
        self.seq += 1
        now = time.time_ns()
        self.waiting.append((value, [DATA, self.src, 0, self.seq, now, self.origin, now, event_time, None, attrs,
                                     (topic if topic is not None else self.port).encode()]))

    def end(self) -> None:
        self.closed = True

    @property
    def ended(self) -> bool:
        return self.closed and not self.waiting

    def receive(self, sock: Any, limit: int) -> Iterator[tuple[Any, list[Any]]]:
        """What is queued, up to ``limit`` (``sock``: there is none)."""
        waiting = self.waiting
        n = min(limit, len(waiting))
        if self.latest and n:
            for _ in range(n - 1):
                waiting.popleft()
            if n > 1 and self.counters is not None and self.conflated >= 0:
                self.counters.mv[self.conflated] += n - 1
            n = 1
        for _ in range(n):
            yield waiting.popleft()

    def handled(self, header: list[Any]) -> None:
        """Nothing to acknowledge: no producer keeps the record."""

    def after_turn(self) -> None:
        """No shared memory to give back."""

    def send_done(self) -> None:
        self.done_pending = {}


# -- the in-memory channel: the Channel seam's test double (transport "memory")

class _Pipe:
    """One memory edge: its records (the bytes a one-frame zmq message holds, or a list of
    parts) and its control messages back, both ends in this process."""

    __slots__ = ("ctl", "data", "readers", "size")

    def __init__(self, size: int) -> None:
        self.data: deque[Any] = deque()
        self.ctl: deque[bytes] = deque()
        self.size = size  # records it holds before the producer's policy applies (the plan's hwm)
        self.readers = 0


def _pipe(link: Any, endpoint: str, size: int) -> _Pipe:
    pipes = link.pipes
    pipe = pipes.get(endpoint)
    if pipe is None:
        pipe = pipes[endpoint] = _Pipe(size)
    return pipe


class MemorySocket:
    """The consumer's end of a memory edge: what the ``Inlet`` uses of a zmq socket (``recv``,
    ``get(EVENTS)``, ``rcvmore``, ``send``), so the real ``Inlet`` checks, counts and decodes
    what the channel sent."""

    def __init__(self, link: Any, connect: Any) -> None:
        self.pipe = _pipe(link, connect.endpoint, connect.hwm)
        self.pipe.readers += 1
        self.parts: list[Any] = []
        self.rcvmore = False
        self.closed = False

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        if self.parts:
            part = self.parts.pop(0)
            self.rcvmore = bool(self.parts)
        elif not self.pipe.data:
            raise zmq.Again()
        else:
            item = self.pipe.data.popleft()
            if type(item) is bytes:
                part, self.rcvmore = item, False
            else:
                part, self.parts, self.rcvmore = item[0], list(item[1:]), True
        return part if copy else Part(part, self.rcvmore)

    def get(self, option: int) -> int:
        return zmq.POLLIN if self.parts or self.pipe.data else 0

    def send(self, msg: bytes, flags: int = 0) -> None:
        self.pipe.ctl.append(msg)

    def close(self) -> None:
        if not self.closed:  # (once: an inlet may be closed again)
            self.closed = True
            self.pipe.readers -= 1


class MemoryChannel(SocketlessChannel):
    """The producer's end of a memory edge (one consumer): a queue of ``queue`` records in this
    process, with the push edges' rules (``drop`` counts at the sender, ``block`` waits for the
    consumer, up to ``block_timeout``), their hello, ack and end-of-stream. What a channel is
    asked to do, without a socket: the conformance suite runs it beside the others."""

    def __init__(self, link: Any, bind: Any, edges: list[Any], src: int, inc: int, what: str) -> None:
        if len(edges) != 1:
            raise TransportError(f"{what}: a memory bind carries one edge, not {len(edges)}")
        edge = edges[0]
        self.link, self.bind, self.src, self.inc, self.what = link, bind, src, inc, what
        self.edge, self.edges = edge.id, [edge.id]
        self.sock: Any = None
        self.address = bind.endpoint
        self.pool = None
        self.held: dict[int, Any] = {}
        self.pipe = _pipe(link, bind.endpoint, bind.hwm)
        self.pipe.size = edge.queue  # records, whichever end came first
        self.block = edge.policy == "block"
        self.block_timeout = edge.block_timeout_s if self.block else None
        self.topics = tuple(t.encode() for t in edge.topics)
        self.mv = link.counters.mv
        base = link.counters.layout.edge(edge.id)
        self.sent_at, self.dropped_at = base + SENT, base + DROPPED
        self.packer = msgpack.Packer(use_bin_type=True)
        self.seq: dict[bytes, int] = {}
        self.inc_of: int | None = None
        self.acked = False
        self.eos = b""
        self.timed_out = (f"{what}: no consumer took a record for {edge.block_timeout_s or 0:g}s (block_timeout of "
                          f"input {edge.dst}.{edge.dst_port}); the record is counted as dropped")

    def service(self) -> None:
        ctl = self.pipe.ctl
        while ctl:
            msg = parse_control(ctl.popleft(), self.link.token, self.edges)
            # (credit reports, `took`, are not junk: a memory edge waits on its queue, not on credit)
            if msg is None or not (self.heard(msg.verb, msg.args) or msg.verb == b"took"):
                junk(self.link, self.bind)

    def here(self) -> bool:
        return self.inc_of is not None and self.pipe.readers > 0

    def waiting_for(self) -> set[int]:
        self.service()
        return set() if self.inc_of is not None else {self.edge}

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        if self.topics and not topic.startswith(self.topics):
            return
        seq = self.seq.get(topic, 0)
        fields = (DATA, self.src, self.inc, seq, origin_ns, origin, now, event_time, meta, attrs)
        if len(frames) <= 1:
            payload = (frames[0] if type(frames[0]) is bytes else memoryview(frames[0]).tobytes()) if frames else None
            item: Any = topic + SEP + self.packer.pack((*fields, payload))
        else:  # kept as bytes: the node may change its array once emit returns
            item = (topic, self.packer.pack(fields), *(f if type(f) is bytes else memoryview(f).tobytes()
                                                       for f in frames))
        mv, pipe = self.mv, self.pipe
        since = 0.0
        while len(pipe.data) >= pipe.size or not self.here():
            if not self.block or not self.here():
                mv[self.dropped_at] += 1
                return
            self.service()
            now_s = time.monotonic()
            since = since or now_s
            if self.block_timeout is not None and now_s - since >= self.block_timeout:
                mv[self.dropped_at] += 1  # the record is lost: counted, then the error goes to emit
                raise SendTimeout(self.timed_out)
            time.sleep(0.0001)  # (the consumer reads in another thread)
        mv[self.sent_at] += 1
        pipe.data.append(item)
        self.seq[topic] = seq + 1

    def resend_eos(self) -> None:
        if self.here() and not any(type(i) is tuple and i[0] == EOS_TOPIC for i in self.pipe.data):
            self.pipe.data.append((EOS_TOPIC, self.eos))  # (one copy waiting is enough: a queue loses nothing)

    def close(self) -> None:
        """Nothing to let go: the pipe goes with the link."""

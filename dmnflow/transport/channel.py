"""One bind of an output, as the output sends on it: the ``Channel`` seam.

An output port (``Outlet``) encodes a record once and hands it to each of its channels, one
per bind the plan gives it. A channel owns everything its edges' YAML asked for: when a
queue is full (``drop`` counts, ``block`` waits for room or credit, a stream's outside
subscriber never holds the graph back), the delivery (``at-least-once`` keeps what it sent
until the consumer has handled it, and sends it again to a restarted consumer), which
consumers joined, shared-memory leases for large payloads, coalescing, and end-of-stream
until every consumer has acknowledged it. ``channel_for`` is the one place a bind's
pattern becomes one of these behaviours:

- ``pub`` (``transport/pub.py``): an XPUB the output binds, a SUB per consumer; a full
  subscriber queue loses messages in libzmq, which its consumer counts from the sequence;
- ``push`` (``transport/push.py``): a ROUTER that addresses each consumer, spreads over a
  shared input's replicas, counts ``drop``\\ s and waits for credit on ``block``;
- ``stream`` (``transport/stream.py``): a fixed tcp port every consumer reaches, with credit
  for block edges and plain topics for subscribers outside the graph;
- ``iox`` (``transport/iox.py``, the bind's transport): iceoryx2 shared memory for one
  same-host edge between spinning (``busy: true``) processes, ``drop`` or ``block`` learnt
  from each send;
- ``memory`` (``transport/memory.py``, the bind's transport): the seam's test double, a
  queue in this process with push's rules, which ``tests/unit/test_channels.py`` runs
  through the same checks as every other kind.

The worker polls each channel's ``sockets()`` and calls ``service()`` when one has input
(an iox channel has none: ``Outlet.spin`` services it from the spinning loop);
``dmnflow.testing``'s in-memory outlets stand in for a whole ``Outlet``
(``transport/memory.py``).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import zmq

from ..plan import BindPlan, EdgePlan
from .link import Link
from .pub import PubChannel
from .push import PushChannel
from .shm import ShmPool, lease_key, segment_prefix
from .stream import StreamChannel, StreamPort
from .wire import eos_header

__all__ = ["Channel", "SocketlessChannel", "channel_for"]


class Channel(Protocol):
    """The edges of one bind, as an output sends on them."""

    bind: BindPlan
    edges: list[int]
    sock: zmq.Socket  # the socket the bind's consumers reach (a stream port's is shared by its outputs; iox: None)
    address: str  # where it is bound
    pool: ShmPool | None  # shared-memory slots for its large payloads, or None
    held: dict[int, Any]  # at-least-once edges: what each one's consumer has not handled yet

    def sockets(self) -> list[zmq.Socket]:
        """The sockets the worker polls for this channel (a shared port's, once)."""
        ...

    def service(self) -> None:
        """Read what consumers sent: hellos, credit, acks, frees, ``done``; junk is counted."""
        ...

    def waiting_for(self) -> set[int]:
        """Edges whose consumer has not joined yet."""
        ...

    def consumer(self, edge: int) -> int | None:
        """The incarnation of ``edge``'s consumer that is joined now, or None."""
        ...

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        """One encoded record to the edges that take it, as their queue rules say."""
        ...

    def flush(self) -> None:
        """Send what waits to be coalesced (the end of each turn, the end of the stream)."""
        ...

    def end(self) -> None:
        """The stream ends after what was sent: start telling every consumer so."""
        ...

    def flush_eos(self, feedback: set[int]) -> bool:
        """End-of-stream again where it is not acknowledged; True once every consumer has it."""
        ...

    def close(self) -> None:
        ...


def channel_for(link: Link, bind: BindPlan, edges: list[EdgePlan], *, src: int, inc: int, what: str,
                shm_above: int | None, shm_slots: int, room_ms: int, flusher: Any) -> Channel:
    """The channel for one bind of an output: its pattern and its edges' rules become behaviour here."""
    if bind.transport == "memory":  # the test double: a queue in this process
        from .memory import MemoryChannel

        return MemoryChannel(link, bind, edges, src, inc, what)
    if bind.transport == "iox":
        from .iox import IoxChannel  # (iceoryx2 is an extra: imported where a plan has iox edges)

        return IoxChannel(link, bind, edges, src, inc, what)
    if bind.pattern == "stream":
        port = link.streams.get(bind.id)
        if port is None:  # the outputs of one process may share a port: the first binds it
            port = link.streams[bind.id] = StreamPort(link, bind, what, room_ms)
        port.edges.update(bind.edges)
        return StreamChannel(port, link, edges, src, inc)
    # the compiler marks the binds whose large payloads go through shared memory (never tcp)
    shm = bind.shm and shm_above is not None and bind.transport != "tcp"
    pool = ShmPool(shm_above, shm_slots, segment_prefix(link.tag, src), lease_key(link.token)) if shm else None
    if bind.pattern == "pub":
        return PubChannel(link, bind, edges, src, inc, what, pool)
    return PushChannel(link, bind, edges, src, inc, what, pool, flusher, room_ms)


class SocketlessChannel:
    """What the channels to one consumer without a socket to poll share (iox, memory): the
    worker's loop services them every turn (``Outlet.spin``); their consumer's hello and ack,
    and the end-of-stream, said again until acknowledged. A subclass sets ``edge``, ``src``,
    ``inc``, ``link``, ``packer``, ``seq``, ``inc_of``, ``acked`` and ``eos``, and gives
    ``here``, ``resend_eos`` and ``service``."""

    edge: int
    src: int
    inc: int
    link: Link
    packer: Any
    seq: dict[bytes, int]
    inc_of: int | None
    acked: bool
    eos: bytes

    def sockets(self) -> list[zmq.Socket]:
        return []

    def service(self) -> None:
        raise NotImplementedError

    def here(self) -> bool:
        """Whether the consumer is there: joined, and its end not gone."""
        raise NotImplementedError

    def resend_eos(self) -> None:
        """The end-of-stream once more (never waiting)."""
        raise NotImplementedError

    def restarted(self) -> None:
        """A new incarnation of the consumer said hello."""

    def heard(self, verb: bytes, args: list[int]) -> bool:
        """A consumer's ``hello`` or ``ack``; False for any other verb (junk here)."""
        if verb == b"hello":
            if args[0] != self.inc_of:
                if self.inc_of is not None:
                    self.restarted()
                self.acked = False
            self.inc_of = args[0]
        elif verb == b"ack":
            self.acked = True
        else:
            return False
        return True

    def consumer(self, edge: int) -> int | None:
        return self.inc_of if edge == self.edge and self.here() else None

    def flush(self) -> None:
        """Nothing waits: every record goes as it is sent."""

    def end(self) -> None:
        self.eos = eos_header(self.packer, self.src, self.inc, self.seq, time.time_ns(), self.link.token)

    def flush_eos(self, feedback: set[int]) -> bool:
        self.service()
        if self.acked or (self.edge in feedback and self.inc_of is not None and not self.here()):
            return True  # (a feedback consumer may have ended and gone before our end reached it)
        self.resend_eos()
        return False

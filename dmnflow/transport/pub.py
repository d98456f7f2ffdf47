"""``pub`` edges: an XPUB socket the output binds, SUB sockets the inputs connect.

Each input subscribes to a hello topic of its own (with the run's token), so the publisher
sees every subscriber join before sources start (no slow-joiner loss). A subscriber whose
queue is full loses messages inside libzmq, whatever the edge's policy; its consumer counts
them from the sequence numbers (``lost``). Large payloads go through one shared-memory slot
that every subscriber the lease names maps; the last of them to free it gives it back.

End-of-stream is acknowledged. A PUB queue that overflowed once is skipped by libzmq even
for XPUB_NODROP sends, so a single end-of-stream frame can vanish with the data: the channel
re-sends it (never blocking) until each consumer acknowledges it. Each copy queues behind
all the data sent before it, so the consumer sees the end only after everything that
arrived; it counts what never did from the totals the frame carries.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgpack
import zmq

from ..plan import BindPlan, EdgePlan
from .link import Link, bind_socket, junk, send_parts
from .shm import ShmPool
from .stats import SENT
from .wire import CONTROL_MAX, DATA, EOS_TOPIC, eos_header, large, message, parse_control

__all__ = ["PubChannel"]

_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class _AnyEdge:
    """Every edge number: for telling another edge's control message from junk."""

    def __contains__(self, edge: object) -> bool:
        return True


_ANY_EDGE = _AnyEdge()


class PubChannel:
    """The ``pub`` edges of one bind: which consumers joined, which acknowledged the end."""

    def __init__(self, link: Link, bind: BindPlan, edges: list[EdgePlan], src: int, inc: int, what: str,
                 pool: ShmPool | None = None) -> None:
        sock = self.sock = link.zctx.socket(zmq.XPUB)
        # a finished producer stays until its queue (end-of-stream last) is delivered; if a
        # consumer never reads it, the supervisor's TERM/KILL ends the wait
        sock.setsockopt(zmq.LINGER, -1)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX)  # consumers send only short control messages
        sock.setsockopt(zmq.SNDHWM, bind.hwm)
        self.address = bind_socket(link, sock, bind, what, link.resolved.get(bind.id))
        self.bind = bind
        self.src, self.inc = src, inc
        self.mv = link.counters.mv
        self.packer = msgpack.Packer(use_bin_type=True)
        self.seq: dict[bytes, int] = {}  # per topic: a subscriber counts what it missed of its topics
        self.eos = b""  # the end-of-stream frame, once the stream ended
        self.held: dict[int, Any] = {}
        self.link = link
        self.pool = pool  # large payloads in shared memory: every subscriber maps the slot
        self.edges = [e.id for e in edges]
        self.all_topics = [e.id for e in edges if not e.topics]
        self.some_topics = [(e.id, tuple(t.encode() for t in e.topics)) for e in edges if e.topics]
        self.inc_of: dict[int, int] = {}  # each consumer's incarnation, from its hello
        layout = link.counters.layout
        self.unfiltered = [layout.edge(e.id) + SENT for e in edges if not e.topics]
        self.filtered = [(layout.edge(e.id) + SENT, tuple(t.encode() for t in e.topics)) for e in edges if e.topics]
        self.joined: set[int] = set()
        self.acked: set[int] = set()
        self.left: set[int] = set()  # consumers that unsubscribed their hello topic: gone

    def service(self) -> None:
        token, edges = self.link.token, self.edges
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[1:2] != b"\x00":
                continue  # a subscription to data topics: an in-graph consumer's, or a tap's
            ctl = parse_control(msg[1:], token, edges)
            if ctl is None:
                # an input's one SUB tells every producer it dials what it tells one of them: with
                # the run's token, another edge's hello, ack or free is not junk, only not ours
                if parse_control(msg[1:], token, _ANY_EDGE) is None:
                    junk(self.link, self.bind)
            elif msg[:1] != b"\x01":  # an unsubscription: of a hello topic when its consumer left
                if ctl.verb == b"hello" and self.inc_of.get(ctl.edge) == ctl.args[0]:
                    self.left.add(ctl.edge)
                    if self.pool is not None:  # its mappings went with it
                        self.pool.gone(ctl.edge)
            elif ctl.verb == b"hello":
                self.joined.add(ctl.edge)
                self.inc_of[ctl.edge] = ctl.args[0]
                self.left.discard(ctl.edge)  # a restarted consumer is back
            elif ctl.verb == b"ack":
                self.acked.add(ctl.edge)
            elif ctl.verb == b"free" and self.pool is not None:  # subscribed, then unsubscribed, by a SUB
                self.pool.free(ctl.args[0], ctl.args[1], ctl.edge)

    def readers(self, topic: bytes) -> list[int]:
        """The subscribers that will receive ``topic`` and free its slot: joined, not gone."""
        joined, left = self.joined, self.left
        found = [e for e in self.all_topics if e in joined and e not in left]
        found += [e for e, prefixes in self.some_topics if topic.startswith(prefixes) and e in joined
                  and e not in left]
        return found


    def loan(self, nbytes: int) -> Any:
        """A free shared-memory slot of ``nbytes`` for ``ctx.alloc``, or None (no thread but
        the worker's touches a pub channel: no lock)."""
        if self.pool is None:
            return None
        self.service()  # frees waiting on the socket: the slot just given back is warm
        return self.pool.loan(nbytes)

    def sockets(self) -> list[zmq.Socket]:
        return [self.sock]

    def waiting_for(self) -> set[int]:
        return {e for e in self.edges if e not in self.joined}

    def consumer(self, edge: int) -> int | None:
        return self.inc_of.get(edge) if edge in self.joined and edge not in self.left else None

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        mv = self.mv
        seq = self.seq.get(topic, 0)
        self.seq[topic] = seq + 1
        for base in self.unfiltered:  # counted before it goes: a kill in between is a loss the report shows
            mv[base] += 1
        for base, prefixes in self.filtered:  # count what that subscriber asked for
            if topic.startswith(prefixes):
                mv[base] += 1
        pool = self.pool
        if pool is not None and len(frames) == 1 and large(frames[0], pool.threshold):
            if self.sock.get(_EVENTS) & _POLLIN:  # asking is cheaper than a failed recv
                self.service()  # frees waiting on the socket
            readers = self.readers(topic)
            lease = pool.put(frames, readers) if readers else None
            if lease is not None:  # every subscriber maps the one slot; those it names free it
                send_parts(self.sock, message(topic, self.packer, (
                    DATA, self.src, self.inc, seq, origin_ns, origin, now, event_time,
                    [*lease, readers, meta], attrs), []), 0)
                return
        send_parts(self.sock, message(topic, self.packer, (DATA, self.src, self.inc, seq, origin_ns, origin, now,
                                                           event_time, meta, attrs), frames), 0)

    def flush(self) -> None:
        """Nothing waits: every record goes as it is sent."""

    def end(self) -> None:
        self.eos = eos_header(self.packer, self.src, self.inc, self.seq, time.time_ns(), self.link.token)

    def flush_eos(self, feedback: set[int]) -> bool:
        # a feedback consumer may have ended before our end reached it: once it has left, done
        if (self.acked | (self.left & feedback)).issuperset(self.edges):
            return True
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart([EOS_TOPIC, self.eos], zmq.NOBLOCK)
        return False

    def close(self) -> None:
        self.sock.close()
        if self.pool is not None:
            self.pool.close()

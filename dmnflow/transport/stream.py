"""``stream`` edges: an output's fixed tcp port (``port: 5555``), the seed's layout.

One XPUB per port (``StreamPort``; the outputs of one process may share it) that every
in-graph consumer reaches with an XSUB, whatever its policy. Each consumer subscribes to a
topic prefix of its own (``route_prefix``), so the output addresses it like a push edge;
block edges wait for credit (the consumer says how much it has consumed), so nothing is lost
without a ROUTER. The same socket serves subscribers outside the graph (a plain SUB on the
port): each message also goes out once on its own topic while any such subscriber is there.
They never hold the graph back: a slow one loses what its queue cannot hold, and counts it
from the sequence numbers (``docs/wire.md``).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgpack
import zmq

from ..errors import SendTimeout
from ..plan import BindPlan, EdgePlan
from .link import Link, bind_socket, junk, send_parts
from .stats import B_REFUSED, DROPPED, SENT
from .wire import CONTROL_MAX, DATA, EOS_TOPIC, RAW, ROUTE, eos_header, message, parse_control, route_prefix

__all__ = ["StreamChannel", "StreamPort"]

# what a tap that subscribes to everything gets: every topic but the runtime's (\x00...), and the end
TAP_ALL = tuple(bytes([b]) for b in range(1, 256)) + (EOS_TOPIC,)


class StreamPort:
    """A fixed tcp port: one XPUB that every output bound to it shares (the outputs of one
    process may share a port). Tracks which in-graph consumers joined, their credit and their
    acknowledgements, and whether any subscriber outside the graph wants plain topics."""

    def __init__(self, link: Link, bind: BindPlan, what: str, room_ms: int = 10) -> None:
        self.link = link
        self.bind = bind
        self.room_ms = room_ms
        self.owner: StreamChannel | None = None  # the channel whose worker polls the socket
        sock = self.sock = link.zctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.LINGER, -1)
        sock.setsockopt(zmq.XPUB_VERBOSER, 1)  # every (un)subscription: taps come and go
        # we decide what each subscription means (service): a tap that asks for everything must not
        # get the records addressed to in-graph consumers
        sock.setsockopt(zmq.XPUB_MANUAL, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX)
        sock.setsockopt(zmq.SNDHWM, bind.hwm)
        sock.setsockopt(zmq.RCVHWM, bind.control_hwm)
        self.address = bind_socket(link, sock, bind, what, link.resolved.get(bind.id))
        self.edges = set(bind.edges)
        self.joined: set[int] = set()
        self.acked: set[int] = set()
        # credit per in-graph consumer: what it says it consumed since it (this incarnation of
        # it) said hello, against what was sent it since then
        self.consumed: dict[int, int] = {}
        self.sent: dict[int, int] = {}
        self.sent_at_hello: dict[int, int] = {}
        self.consumer_inc: dict[int, int] = {}
        self.taps: dict[bytes, int] = {}  # plain-topic subscriptions (outside the graph): prefix -> count
        self.tapped = False

    def service(self) -> None:
        token, edges = self.link.token, self.edges
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            first = msg[:1]
            option = zmq.SUBSCRIBE if first == b"\x01" else zmq.UNSUBSCRIBE
            if first in (b"\x00", b"\x01") and msg[1:2] != b"\x00":  # a plain (un)subscription: a tap
                prefix = msg[1:]
                for applied in (TAP_ALL if not prefix else (prefix,)):  # everything but our routes
                    self.sock.setsockopt(option, applied)
                count = self.taps.get(prefix, 0) + (1 if first == b"\x01" else -1)
                if count > 0:
                    self.taps[prefix] = count
                else:
                    self.taps.pop(prefix, None)
                self.tapped = bool(self.taps)
                continue
            if first in (b"\x00", b"\x01"):
                if msg[1:3] == ROUTE:
                    self.sock.setsockopt(option, msg[1:])  # a consumer's own route (joining is by its hello)
                    continue
                # a hello travels as a subscription: XSUB sends those again on every reconnect
                ctl = parse_control(msg[1:], token, edges)
                if ctl is None or ctl.verb != b"hello":
                    junk(self.link, self.bind)
                elif first == b"\x01":
                    self.joined.add(ctl.edge)
                    inc = ctl.args[0]
                    if self.consumer_inc.get(ctl.edge) != inc:  # a new consumer: its credit counts from now
                        self.consumer_inc[ctl.edge] = inc
                        self.consumed[ctl.edge] = 0
                        self.sent_at_hello[ctl.edge] = self.sent.get(ctl.edge, 0)
                continue
            # anything else an XSUB sends: our consumers' credit and acks, behind RAW (never 0 or 1)
            ctl = parse_control(msg[1:], token, edges) if first == RAW else None
            if ctl is None:
                junk(self.link, self.bind)
            elif ctl.verb == b"credit":
                inc, consumed = ctl.args
                if inc == self.consumer_inc.get(ctl.edge):  # (a late one from a dead consumer counts nothing)
                    self.consumed[ctl.edge] = max(self.consumed.get(ctl.edge, 0), consumed)
            elif ctl.verb == b"ack":
                self.acked.add(ctl.edge)

    def room(self, edge: int, window: int) -> bool:
        """Whether a block edge's consumer has credit for one more record."""
        outstanding = self.sent.get(edge, 0) - self.sent_at_hello.get(edge, 0) - self.consumed.get(edge, 0)
        return outstanding < window

    def refused(self) -> None:
        if self.bind.counter >= 0:
            self.link.counters.mv[self.link.counters.layout.bind(self.bind.counter) + B_REFUSED] += 1

    def close(self) -> None:
        if not self.sock.closed:
            self.sock.close()


class StreamChannel:
    """One output's edges on a stream port: each in-graph consumer addressed by its route,
    block edges held to their credit, share groups spread over replicas with room."""

    def __init__(self, shared: StreamPort, link: Link, edges: list[EdgePlan], src: int, inc: int) -> None:
        self.shared = shared
        if shared.owner is None:
            shared.owner = self  # registers the socket with the worker's poller once
        self.bind, self.sock, self.address = shared.bind, shared.sock, shared.address
        self.link, self.src, self.inc = link, src, inc
        self.mv = link.counters.mv
        self.pool = None  # tcp: no shared memory
        self.held: dict[int, Any] = {}
        self.tap_end = b""
        self.edges = [e.id for e in edges]
        self.routes = {e.id: route_prefix(e.id) for e in edges}
        self.window = {e.id: e.credit for e in edges if e.credit}  # block edges' credit (the plan's)
        self.block = set(self.window)
        self.names = {e.id: f"{e.dst}.{e.dst_port}" for e in edges}
        self.timeout = {e.id: e.block_timeout_s for e in edges if e.block_timeout_s is not None and e.id in self.block}
        self.filters = {e.id: tuple(t.encode() for t in e.topics) for e in edges}
        self.seq: dict[int, dict[bytes, int]] = {e.id: {} for e in edges}
        self.tap_seq: dict[bytes, int] = {}
        groups: dict[str, list[int]] = {}
        for e in edges:  # replicas sharing one input form a group; every other edge is its own
            groups.setdefault(e.group or f"#{e.id}", []).append(e.id)
        self.groups = list(groups.values())
        self.next = {i: 0 for i in range(len(self.groups))}
        self.base = {e.id: link.counters.layout.edge(e.id) for e in edges}
        self.packer = msgpack.Packer(use_bin_type=True)

    def room(self, edge: int) -> bool:
        return edge not in self.block or self.shared.room(edge, self.window[edge])

    def sockets(self) -> list[zmq.Socket]:
        return [self.sock] if self.shared.owner is self else []

    def service(self) -> None:
        self.shared.service()

    def waiting_for(self) -> set[int]:
        return {e for e in self.edges if e not in self.shared.joined}

    def consumer(self, edge: int) -> int | None:
        return self.shared.consumer_inc.get(edge) if edge in self.shared.joined else None

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        shared, mv, base = self.shared, self.mv, self.base
        sock, src, inc, packer = shared.sock, self.src, self.inc, self.packer
        rest = (origin_ns, origin, now, event_time, meta, attrs)
        for g, group in enumerate(self.groups):
            candidates = [e for e in group if not self.filters[e] or topic.startswith(self.filters[e])]
            if not candidates:
                continue
            edge = self.pick(g, candidates)
            if edge is None:  # no replica joined: nobody to send it to
                mv[base[candidates[0]] + DROPPED] += 1
                continue
            seqs = self.seq[edge]
            seq = seqs.get(topic, 0)
            seqs[topic] = seq + 1
            shared.sent[edge] = shared.sent.get(edge, 0) + 1
            mv[base[edge] + SENT] += 1
            send_parts(sock, message(self.routes[edge] + topic, packer, (DATA, src, inc, seq, *rest), frames), 0)
        if shared.tapped:  # subscribers outside the graph: the stream on its own topics
            seq = self.tap_seq.get(topic, 0)
            self.tap_seq[topic] = seq + 1
            with contextlib.suppress(zmq.Again):
                send_parts(sock, [topic, packer.pack((DATA, src, inc, seq, *rest)), *frames], 0)

    def pick(self, g: int, candidates: list[int]) -> int | None:
        """The edge that takes the next record: with room (waiting for credit when a block edge
        has none), round robin over a group's replicas."""
        shared = self.shared
        since = 0.0
        while True:
            joined = [e for e in candidates if e in shared.joined]
            if not joined:
                return None
            n = len(joined)
            for i in range(n):
                edge = joined[(self.next[g] + i) % n]
                if self.room(edge):
                    self.next[g] = (self.next[g] + i + 1) % n
                    return edge
            if not any(e in self.block for e in joined):
                edge = joined[self.next[g] % n]
                self.next[g] = (self.next[g] + 1) % n
                return edge
            timeout = min((self.timeout[e] for e in joined if e in self.timeout), default=None)
            now = time.monotonic()
            if not since:
                since = now
            elif timeout is not None and now - since >= timeout:
                mv = self.mv
                mv[self.base[joined[0]] + DROPPED] += 1  # the record is lost: counted, then the error goes to emit
                raise SendTimeout(
                    f"output on port {self.address}: no consumer took a record for {timeout:g}s (block_timeout of "
                    f"input {self.names[joined[0]]}); the record is counted as dropped. The consumer is stuck or "
                    "slower than its producer: give it more time (block_timeout), or policy: drop")
            shared.sock.poll(shared.room_ms, zmq.POLLIN)  # back-pressure: wait for a credit
            shared.service()

    def flush(self) -> None:
        """Nothing waits: every record goes as it is sent."""

    def end(self) -> None:
        """Subscribers outside the graph get one end, with the totals of their own topics."""
        if self.shared.tapped:
            header = eos_header(self.packer, self.src, self.inc, self.tap_seq, time.time_ns(), self.link.token)
            with contextlib.suppress(zmq.Again):
                self.shared.sock.send_multipart([EOS_TOPIC, header], zmq.NOBLOCK)

    def flush_eos(self, feedback: set[int]) -> bool:
        done = True
        shared = self.shared
        for edge in self.edges:
            if edge in shared.acked or edge not in shared.joined:
                continue
            done = False
            header = eos_header(self.packer, self.src, self.inc, self.seq[edge], time.time_ns(), self.link.token)
            with contextlib.suppress(zmq.Again):
                shared.sock.send_multipart([self.routes[edge] + EOS_TOPIC, header], zmq.NOBLOCK)
        return done


    def close(self) -> None:
        self.shared.close()

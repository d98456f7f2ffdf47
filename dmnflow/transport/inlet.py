"""The receiving side: one ``Inlet`` per input port, with a socket to every producer.

It checks every frame before anything trusts it (``wire.check_header``: the whole header,
its types and ranges), counts what is malformed or missing, decodes within the edge's
limits, and hands each record over as ``(value, header)``, the topic appended to the
header. Sequence numbers tell it what it missed; end-of-stream (with the run's token)
tells it the tail. On a stream port (a fixed tcp port) it strips its route from the topic
and gives its producer credit as it consumes; on an at-least-once edge it drops duplicates
by sequence and says ``done`` once the worker has handled a record. An iox edge
(``transport/iox.py``, iceoryx2 shared memory between spinning processes) brings the same
bytes through an ``IoxSocket`` in ``polled``, which the worker's loop reads instead of polling.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq
from msgpack import unpackb

from ..codecs import Decoder
from ..errors import DecodeError
from ..plan import ConnectPlan
from .link import Link, hello_msg, zmq_errors
from .shm import ShmMaps, hold_copy, lease_key, release_copy, run_prefix
from .stats import (
    DECODE_ERRORS,
    GAPS,
    POS_DONE,
    POS_DONE_PREV,
    POS_RECEIVED,
    RECEIVED,
    REDELIVERED,
    RESTARTS_SEEN,
    EdgeStats,
)
from .wire import (
    BATCH,
    CONTROL_PREFIX,
    EOS,
    EVENT_TIME,
    INC,
    KIND,
    META,
    RAW,
    SEND_NS,
    SEP,
    SEQ,
    SHM_LEASE,
    SRC,
    UNPACK,
    check_header,
    control,
    eos_trusted,
    identity,
    route_prefix,
)

__all__ = ["Inlet"]

_NOWAIT = int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
SOCKET_SLACK = 128 << 10  # header, topic and a coalesced batch on top of the largest payload
SHM_MAPS_PER_SOURCE = 32


@dataclass
class _Source:
    """What an input knows about one producer output: for gap counting."""

    edge: int
    inc: int = -1
    next_seq: dict[bytes, int] = field(default_factory=dict)
    ended: bool = False
    # at-least-once: the highest sequence handed over (to this incarnation, or handled by an
    # earlier one: a restarted consumer starts at its predecessor's last `done`). An edge's
    # sequence is stable across both ends' restarts and arrives in order (a producer sends to a
    # consumer incarnation only after its hello, what it holds first), so anything at or below
    # it is a duplicate, dropped
    last: int = -1


class Inlet:
    """One input port: sockets to every producer, decoding, sequence and end-of-stream checks."""

    def __init__(self, link: Link, port: str, consumer: str, connects: list[ConnectPlan],
                 src_of_edge: dict[int, int], topics: list[str], queue: int, decoders: dict[int, Decoder], *,
                 feedback: bool, max_bytes: int, inc: int = 0, delivery: str = "at-most-once",
                 zero_copy: bool = True, read_batch: int = 256, latest: bool = False, conflated: int = -1) -> None:
        """``latest`` (``policy: latest``): each read hands over only the newest of what is
        waiting, the others counted at ``conflated`` (the node's count; -1: nowhere)."""
        self.link = link
        if latest:
            self.receive = self._newest  # type: ignore[method-assign]
        self.conflated = conflated
        self.port = port
        self.read_batch = read_batch  # messages the worker reads from one socket before the others
        self.consumer = consumer
        self.inc = inc
        # zmq Frames cost an object per part; worth it only where payloads are used in place
        self.zero_copy = zero_copy
        # a restarted worker starts counting where the stream is now: what its predecessor
        # received is not a gap (the report compares sent and received across both)
        self.baseline = inc > 0
        self.decoders = decoders  # per edge: producers of one input may use different codecs
        self.feedback = feedback
        self.max_bytes = max_bytes
        self.delivery = delivery
        self.alo = delivery == "at-least-once"
        mv = self.mv = link.counters.mv
        layout = link.counters.layout
        self.base = {c.edge: layout.edge(c.edge) for c in connects}
        self.stats: dict[int, EdgeStats] = {c.edge: EdgeStats(mv, self.base[c.edge]) for c in connects}
        self.sources: dict[int, _Source] = {src_of_edge[c.edge]: _Source(c.edge) for c in connects}
        if self.alo:
            for source in self.sources.values():
                source.last = mv[self.base[source.edge] + POS_DONE] - 1
        self.src_of_edge = src_of_edge
        self.tcp_edges = {c.edge for c in connects if c.transport == "tcp"}  # a lease there is refused
        self.shm_prefix = run_prefix(link.tag)  # a lease may name any output's segment (a forward)
        # edges whose decoder hands the handler a bytes copy of the frame: while its handler runs,
        # emitting that copy forwards the slot it came from (shm.hold_copy)
        self.copies = {edge for edge, decode in decoders.items() if getattr(decode, "copies_frame", False)}
        self.open: set[int] = {c.edge for c in connects}
        self.topics = tuple(t.encode() for t in topics)
        self.shm = ShmMaps(SHM_MAPS_PER_SOURCE, lease_key(link.token))
        self.time_kind: type | None = None  # event times are numbers or text, never both
        self.socks: list[zmq.Socket] = []
        self.dealers: list[tuple[zmq.Socket, int]] = []
        self.streams: dict[zmq.Socket, list[Any]] = {}  # XSUB -> [edge, route length, consumed, reported, window]
        # push edges: DEALER -> [edge, records taken from the producer's incarnation, reported, step]
        # (a block producer sends only while what it sent us, less what we report taken, fits `queue`)
        self.took: dict[zmq.Socket, list[int]] = {}
        self.edge_of_sock: dict[zmq.Socket, int] = {}
        self.connects = connects
        self.queue = queue
        self.sub: zmq.Socket | None = None
        self.done_pending: dict[int, int] = {}  # at-least-once: edge -> highest seq handled, to say
        self._dialled: dict[str, tuple[zmq.Socket, str]] = {}  # bind#edge -> (socket, address dialled)
        cap = max_bytes + SOCKET_SLACK
        # iox edges (transport/iox.py): read by the worker's spinning loop, not polled
        self.polled: list[Any] = []
        subs = [c for c in connects if c.pattern == "pub" and c.transport not in ("iox", "memory")]
        if subs:
            sub = self.sub = link.zctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)  # an input has nothing to flush; its (un)subscriptions may be undeliverable
            sub.setsockopt(zmq.RCVHWM, max(c.hwm for c in subs))  # the plan's, per connection (one socket)
            sub.setsockopt(zmq.MAXMSGSIZE, cap)
            for prefix in (topics or [""]):
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            if topics:
                sub.setsockopt(zmq.SUBSCRIBE, CONTROL_PREFIX + b"eos")
            for c in subs:
                # never sent: the XPUB only sees the subscription, with the token, as the edge's hello
                sub.setsockopt(zmq.SUBSCRIBE, hello_msg(link, c.edge, inc))
                self._dial(sub, c)
            self.socks.append(sub)
        for c in connects:
            if c.transport in ("iox", "memory"):
                if c.transport == "iox":
                    from .iox import IoxSocket as Polled  # (iceoryx2 is an extra: imported where a plan has iox edges)
                else:
                    from .memory import MemorySocket as Polled  # the test double: a queue in this process
                isock = Polled(link, c)
                self.polled.append(isock)
                self.dealers.append((isock, c.edge))  # its hello and ack go back as a push consumer's do
                self.edge_of_sock[isock] = c.edge
            elif c.pattern == "push":
                dealer = link.zctx.socket(zmq.DEALER)
                # at-least-once: the last `done` must reach the producer, which waits for it to end
                dealer.setsockopt(zmq.LINGER, 1000 if self.alo else 0)
                dealer.setsockopt(zmq.RCVHWM, c.hwm)
                dealer.setsockopt(zmq.MAXMSGSIZE, cap)
                dealer.setsockopt(zmq.IDENTITY, identity(link.token, consumer, c.edge, inc))
                self._dial(dealer, c)
                self.took[dealer] = [c.edge, 0, 0, c.credit_every]
                self.socks.append(dealer)
                self.dealers.append((dealer, c.edge))
                self.edge_of_sock[dealer] = c.edge
            elif c.pattern == "stream":
                xsub = link.zctx.socket(zmq.XSUB)
                xsub.setsockopt(zmq.LINGER, 0)
                xsub.setsockopt(zmq.RCVHWM, c.hwm)
                xsub.setsockopt(zmq.MAXMSGSIZE, cap)
                self._dial(xsub, c)
                route = route_prefix(c.edge)
                xsub.send(b"\x01" + route)
                # the hello as a subscription: XSUB sends it again whenever the connection is made anew
                xsub.send(b"\x01" + hello_msg(link, c.edge, inc))
                self.streams[xsub] = [c.edge, len(route), 0, 0, c.credit_every]
                self.socks.append(xsub)
                self.edge_of_sock[xsub] = c.edge
        self.hello()

    def _dial(self, sock: zmq.Socket, c: ConnectPlan) -> None:
        link = self.link
        endpoint = link.resolved.get(c.bind) or link.endpoint(c.endpoint)
        if link.curved(c.transport, c.pattern):
            link.curve.dial(sock, link.server_keys.get(c.bind))  # type: ignore[union-attr]
        with zmq_errors(f"input {self.consumer}.{self.port}: connect {endpoint}"):
            sock.connect(endpoint)
        self._dialled[c.bind + f"#{c.edge}"] = (sock, endpoint)

    def redial(self, bind: str, endpoint: str) -> None:
        """A restarted producer could not take its old port: follow it to the new one."""
        for c in self.connects:
            key = c.bind + f"#{c.edge}"
            if c.bind != bind or key not in self._dialled:
                continue
            sock, old = self._dialled[key]
            if old == endpoint:
                continue
            with contextlib.suppress(zmq.ZMQError):
                sock.disconnect(old)
            with zmq_errors(f"input {self.consumer}.{self.port}: connect {endpoint}"):
                sock.connect(endpoint)
            self._dialled[key] = (sock, endpoint)
        self.hello()

    def hello(self) -> None:
        """Tell push and stream producers this consumer is here (again, after either side restarted)."""
        for dealer, edge in self.dealers:
            with contextlib.suppress(zmq.ZMQError):
                dealer.send(hello_msg(self.link, edge, self.inc), zmq.NOBLOCK)
        for xsub, state in self.streams.items():  # again: unsubscribe, subscribe, so the producer hears it
            hello = hello_msg(self.link, state[0], self.inc)
            with contextlib.suppress(zmq.ZMQError):
                xsub.send(b"\x00" + hello, zmq.NOBLOCK)
                xsub.send(b"\x01" + hello, zmq.NOBLOCK)

    @property
    def ended(self) -> bool:
        """Every producer has sent end-of-stream (a feedback input never holds a node open)."""
        return self.feedback or not self.open

    def _junk(self, sock: zmq.Socket, src: Any = None) -> None:
        """A frame we cannot trust: counted on its edge (or the input's first, when unknown)."""
        edge = self.edge_of_sock.get(sock)
        if edge is None:
            source = self.sources.get(src) if type(src) is int else None
            edge = source.edge if source is not None else next(iter(self.base), None)
        if edge is not None:
            self.mv[self.base[edge] + DECODE_ERRORS] += 1

    def receive(self, sock: zmq.Socket, limit: int) -> Iterator[tuple[Any, list[Any]]]:
        """Up to about ``limit`` decoded records waiting on ``sock``: ``(value, header)`` pairs."""
        recv = sock.recv
        stream = self.streams.get(sock)
        took = self.took.get(sock)
        strip = stream[1] if stream is not None else 0
        expected_edge = self.edge_of_sock.get(sock)
        count = 0
        mv, base_of = self.mv, self.base
        copied = None  # the bytes copy of a slot the handler has now (hold_copy), until it returns
        try:
            while count < limit:
                # one message came alone (back to back, paced): asking is cheaper than a failed recv
                if count == 1 and not sock.get(_EVENTS) & _POLLIN:
                    return
                try:
                    first = recv(_NOWAIT)  # bytes: a copy is cheaper than a Frame for the small first frame
                except zmq.Again:
                    return
                now = time.time_ns()
                count += 1
                if stream is not None:
                    stream[2] += 1  # consumed, whatever it turns out to be: credit never leaks
                cut = first.find(SEP)
                if cut >= 0:  # one frame: `topic SEP [*header, payload]`, or a batch (no topic)
                    try:
                        header = unpackb(memoryview(first)[cut + 1:], **UNPACK)
                    except Exception:
                        self._junk(sock)
                        continue
                    if type(header) is list and len(header) == 4 and header[KIND] == BATCH:
                        count += yield from self._batch(sock, header, now)
                        continue
                    if type(header) is not list or len(header) != 11:
                        self._junk(sock)
                        continue
                    inline = header.pop()
                    payload = [] if inline is None else [inline]
                    topic = first[strip:cut]
                else:  # the long form: [topic, header, *payload], payload frames used in place
                    if not sock.rcvmore:
                        self._junk(sock)
                        continue
                    parts = [recv(0, copy=False)]
                    while parts[-1].more:  # Frame.more, not a getsockopt(RCVMORE) per frame
                        parts.append(recv(0, copy=False))
                    topic = first[strip:]
                    try:
                        header = unpackb(parts[0].buffer, **UNPACK)
                    except Exception:
                        header = None
                    payload = [f.buffer for f in parts[1:]] if self.zero_copy else [f.bytes for f in parts[1:]]
                if not check_header(header):
                    self._junk(sock)
                    continue
                src = header[SRC]
                source = self.sources.get(src)
                if source is None or (expected_edge is not None and source.edge != expected_edge):
                    self._junk(sock, src)  # a producer this input does not have
                    continue
                base = base_of[source.edge]
                if header[INC] != source.inc:
                    self._incarnation(source, header[INC], base)
                    if stream is not None and source.inc >= 0:  # a restarted producer counts our credit anew
                        stream[2], stream[3] = 1, 0
                    if took is not None:
                        took[1] = took[2] = 0
                if header[KIND] == EOS:
                    if not eos_trusted(header, self.link.token):
                        mv[base + DECODE_ERRORS] += 1  # an end from a peer the plan does not know ends nothing
                        continue
                    if not source.ended:
                        self._end(source, header[META], topic_filter=self.topics)
                    self._ack(source.edge, sock)
                    continue
                if took is not None:
                    took[1] += 1
                seq = header[SEQ]
                if self.alo:
                    last = source.last
                    if seq <= last:  # resent to us, or emitted again by a restarted producer: handled once
                        mv[base + REDELIVERED] += 1
                        done = mv[base + POS_DONE] - 1
                        if seq <= done and source.edge not in self.done_pending:
                            self.done_pending[source.edge] = done  # so its producer lets go of it
                        continue
                    if seq < mv[base + POS_RECEIVED]:  # a killed incarnation of ours had it, not handled
                        mv[base + REDELIVERED] += 1
                    else:
                        mv[base + RECEIVED] += 1
                        mv[base + POS_RECEIVED] = seq + 1
                    if seq > last + 1:
                        mv[base + GAPS] += seq - last - 1
                    source.last = seq
                    source.next_seq[b""] = seq + 1
                else:
                    expected = source.next_seq.get(topic)
                    if expected is None:
                        expected = seq if self.baseline else 0
                    if seq > expected:
                        mv[base + GAPS] += seq - expected
                    source.next_seq[topic] = seq + 1
                    mv[base + RECEIVED] += 1
                self.stats[source.edge].latency.add(now - header[SEND_NS])
                if header[EVENT_TIME] is not None and not self._time_ok(header[EVENT_TIME]):
                    mv[base + DECODE_ERRORS] += 1
                    continue
                meta = header[META]
                leased = False
                try:
                    if type(meta) is list and 7 <= len(meta) <= 8 and meta[0] == SHM_LEASE:
                        if source.edge in self.tcp_edges:
                            raise ValueError("shared memory over tcp")
                        payload = [self.shm.attach(source.edge, meta[:6], self.shm_prefix, self.max_bytes)]
                        leased = True
                        if len(meta) == 8:  # a pub lease: the subscribers the producer counted free it
                            readers = meta[6]
                            if type(readers) is not list:
                                raise ValueError("malformed lease")
                            if source.edge not in readers:  # joined meanwhile: the slot may be reused, copy
                                payload = [memoryview(payload[0].tobytes())]
                                leased = False
                        meta = meta[-1]
                    value = self.decoders[source.edge](meta, payload)
                except (DecodeError, ValueError, OSError):  # OSError: a segment that is not there
                    mv[base + DECODE_ERRORS] += 1
                    continue
                header.append(topic)  # header[TOPIC]: what the handler sees as ctx.message.topic
                if leased and type(value) is bytes and source.edge in self.copies:
                    copied = value
                    hold_copy(value, payload[0])
                    yield value, header
                    release_copy(value)  # the handler has returned: a later emit copies
                    copied = None
                else:
                    yield value, header
        finally:
            if copied is not None:  # the generator was closed while a handler had a copy
                release_copy(copied)
            if stream is not None and stream[2] - stream[3] >= stream[4]:
                self._credit(sock, stream)
            if took is not None and took[1] - took[2] >= took[3]:
                self._took(sock, took)

    def _newest(self, sock: zmq.Socket, limit: int) -> Iterator[tuple[Any, list[Any]]]:
        """``policy: latest``: of what waits, only the newest; the rest counted as conflated."""
        newest, n = None, 0
        for record in Inlet.receive(self, sock, limit):
            newest, n = record, n + 1
        if n:
            if n > 1 and self.conflated >= 0:
                self.mv[self.conflated] += n - 1
            yield newest  # type: ignore[misc]

    def _time_ok(self, event_time: Any) -> bool:
        kind = str if type(event_time) is str else float
        if self.time_kind is None:
            self.time_kind = kind
        return kind is self.time_kind

    def socket_of(self, connect: ConnectPlan) -> zmq.Socket:
        """The socket that dials ``connect`` (its CURVE handshakes are watched)."""
        return self._dialled[connect.bind + f"#{connect.edge}"][0]

    def _credit(self, sock: zmq.Socket, stream: list[Any]) -> None:
        stream[3] = stream[2]
        with contextlib.suppress(zmq.ZMQError):
            sock.send(RAW + control(b"credit", stream[0], self.link.token, self.inc, stream[2]), zmq.NOBLOCK)

    def _took(self, sock: zmq.Socket, took: list[int]) -> None:
        """Tell a push producer how many of its records reached us (its credit on a block edge)."""
        took[2] = took[1]
        source = self.sources.get(self.src_of_edge[took[0]])
        if source is None or source.inc < 0:
            return
        with contextlib.suppress(zmq.ZMQError):
            sock.send(control(b"took", took[0], self.link.token, source.inc, took[1]), zmq.NOBLOCK)

    def _batch(self, sock: zmq.Socket, batch: list[Any], now: int) -> Iterator[tuple[Any, list[Any]]]:
        """The records of one coalesced message, each handed over as if it came alone: the
        same header (topic appended), the same sequence, gap and latency accounting.
        Returns how many records it held."""
        try:
            kind, src, inc, records = batch
            source = self.sources[src]
            if kind != BATCH or type(records) is not list or type(inc) is not int or not 0 <= inc < 2**31:
                raise ValueError("not a batch")
            expected_edge = self.edge_of_sock.get(sock)
            if expected_edge is not None and source.edge != expected_edge:
                raise ValueError("not this edge's producer")
        except Exception:
            self._junk(sock)
            return 0
        mv = self.mv
        base = self.base[source.edge]
        if inc != source.inc:
            self._incarnation(source, inc, base)
            took = self.took.get(sock)
            if took is not None:
                took[1] = took[2] = 0
        took = self.took.get(sock)
        if took is not None:
            took[1] += len(records)
        next_seq = source.next_seq
        decoder = self.decoders[source.edge]
        latency = self.stats[source.edge].latency
        for record in records:
            try:
                payload = record.pop()  # the header as a single message has it, then the topic
                topic = record.pop()
                if type(topic) is not bytes or type(payload) is not bytes or not check_header(record) \
                        or record[KIND] == EOS or record[SRC] != src or record[INC] != inc:
                    raise ValueError("malformed record")
            except Exception:
                mv[base + DECODE_ERRORS] += 1
                continue
            seq = record[SEQ]
            expected = next_seq.get(topic)
            if expected is None:
                expected = seq if self.baseline else 0
            if seq > expected:
                mv[base + GAPS] += seq - expected
            next_seq[topic] = seq + 1
            mv[base + RECEIVED] += 1
            latency.add(now - record[SEND_NS])
            if record[EVENT_TIME] is not None and not self._time_ok(record[EVENT_TIME]):
                mv[base + DECODE_ERRORS] += 1
                continue
            try:
                value = decoder(record[META], [payload])
            except (DecodeError, ValueError, OSError):
                mv[base + DECODE_ERRORS] += 1
                continue
            record.append(topic)
            yield value, record
        return len(records)

    def _incarnation(self, source: _Source, inc: int, base: int) -> None:
        """The producer came back (a restart): it counts from zero again (at-least-once: it
        goes on with the edge's one sequence)."""
        if source.inc >= 0:
            self.mv[base + RESTARTS_SEEN] += 1
        source.inc = inc
        if not self.alo:
            source.next_seq = {}

    def _end(self, source: _Source, totals: dict[bytes, int], topic_filter: tuple[bytes, ...]) -> None:
        base = self.base[source.edge]
        for topic, total in totals.items():
            if self.alo:
                topic = b""
            elif topic_filter and not topic.startswith(topic_filter):
                continue
            seen = source.next_seq.get(topic, 0)
            if total > seen and not self.baseline:
                self.mv[base + GAPS] += total - seen  # lost at the tail, after the last one we saw
            source.next_seq[topic] = max(seen, total)
        source.ended = True
        self.open.discard(source.edge)

    def handled(self, header: list[Any]) -> None:
        """At-least-once: the worker has handled this record (its own at-least-once outputs
        included); ``send_done`` tells the producer."""
        source = self.sources.get(header[SRC])
        if source is not None:  # (the sequence is the edge's, whichever incarnation of the producer sent it)
            self.done_pending[source.edge] = header[SEQ]

    def keep_prev(self) -> None:
        """A commit begins: where each edge's `done` stands is what a kill inside it goes back to."""
        mv, base = self.mv, self.base
        for edge in self.base:
            mv[base[edge] + POS_DONE_PREV] = mv[base[edge] + POS_DONE]

    def keep_done(self, upto: dict[int, int] | None = None) -> None:
        """Keep (in the counters file) the `done` about to be said: a restarted consumer starts here."""
        mv, base = self.mv, self.base
        for edge, seq in (self.done_pending if upto is None else upto).items():
            if seq >= mv[base[edge] + POS_DONE]:
                mv[base[edge] + POS_DONE] = seq + 1

    def send_done(self, upto: dict[int, int] | None = None) -> None:
        pending = self.done_pending if upto is None else upto
        if not pending:
            return
        self.keep_done(pending)  # kept before it is said (a commit kept it already)
        dealer_of = {e: d for d, e in self.dealers}
        for edge, seq in pending.items():
            dealer = dealer_of.get(edge)
            if dealer is not None:
                with contextlib.suppress(zmq.ZMQError):
                    dealer.send(control(b"done", edge, self.link.token, seq), zmq.NOBLOCK)
        if upto is None:
            self.done_pending = {}

    def after_turn(self) -> None:
        """Arrays over shared memory the node dropped this turn: their slots go back."""
        if self.shm.frees:
            self.send_frees()

    def send_frees(self) -> None:
        """Tell producers which shared-memory slots this input's arrays no longer use."""
        frees, self.shm.frees = self.shm.frees, []
        dealer_of = {e: d for d, e in self.dealers}
        for edge, slot, gen in frees:
            msg = control(b"free", edge, self.link.token, slot, gen)
            dealer = dealer_of.get(edge)
            if dealer is not None:
                with contextlib.suppress(zmq.ZMQError):
                    dealer.send(msg, zmq.NOBLOCK)
            elif self.sub is not None:  # a pub edge: the producer reads the subscription, which goes again
                self.sub.setsockopt(zmq.SUBSCRIBE, msg)
                self.sub.setsockopt(zmq.UNSUBSCRIBE, msg)

    def _ack(self, edge: int, sock: zmq.Socket) -> None:
        if sock in self.streams:
            stream = self.streams[sock]
            self._credit(sock, stream)
            with contextlib.suppress(zmq.ZMQError):
                sock.send(RAW + control(b"ack", edge, self.link.token), zmq.NOBLOCK)
            return
        for dealer, e in self.dealers:
            if e == edge:
                with contextlib.suppress(zmq.ZMQError):
                    dealer.send(control(b"ack", edge, self.link.token), zmq.NOBLOCK)
                return
        if self.sub is not None:
            self.sub.setsockopt(zmq.SUBSCRIBE, control(b"ack", edge, self.link.token))

    def close(self) -> None:
        for sock in self.socks + self.polled:
            sock.close()
        self.shm.close()


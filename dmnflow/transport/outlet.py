"""The sending side: one ``Outlet`` per output port, over the sockets its plan binds.

Three patterns carry edges:

- ``pub``: an XPUB socket the output binds, SUB sockets the inputs connect. Each input
  subscribes to a hello topic of its own (with the run's token), so the publisher sees
  every subscriber join before sources start (no slow-joiner loss).
- ``push``: a ROUTER the output binds, DEALER sockets the inputs connect. The output
  addresses each consumer itself: it spreads messages over the replicas that have room
  (``share``), waits when none has (``block``) or drops and counts (``drop``).
- ``stream``: the output's fixed tcp port (``port: 5555``), an XPUB every in-graph
  consumer reaches with an XSUB, whatever its policy. Each consumer subscribes to a topic
  prefix of its own (``route_prefix``), so the output addresses it like a push edge;
  block edges wait for credit (the consumer says how much it has consumed), so nothing is
  lost without a ROUTER. The same socket serves subscribers outside the graph (a plain
  SUB on the port, the seed's layout): each message also goes out once on its own topic
  while any such subscriber is there. They never hold the graph back: a slow one loses
  what its queue cannot hold, and counts it from the sequence numbers (``docs/wire.md``).

End-of-stream is acknowledged. A PUB queue that overflowed once is skipped by libzmq even
for XPUB_NODROP sends, so a single end-of-stream frame can vanish with the data. The
output therefore re-sends it (never blocking) until each consumer acknowledges it. Each
copy queues behind all the data sent before it, so the consumer sees the end only after
everything that arrived; it counts what never did from the total the frame carries.

Bursts on push edges are coalesced: several records go as one single-frame message
``[BATCH, src, inc, records]``, each record the header of a single message followed by
its topic and its one payload frame, so the consumer hands every record over exactly as if
it had come alone. Sequence numbers are given when the batch goes (per edge: a batch is one
consumer's). A push edge's high-water mark counts messages, so it is ``queue /
coalesce.records`` (``plan.push_hwm``, shown by ``dmnflow plan``). Only push edges
coalesce; records over ``coalesce.record_max`` or of several frames go alone.

``delivery: at-least-once`` (push edges) keeps every record until its consumer has
handled it (a ``done`` control message, sent once the consumer's own at-least-once outputs
are handled downstream too), and sends what it still holds again to a restarted consumer.

Nothing a peer sends is trusted: control messages must carry the run's token and name an
edge of the socket they arrive on, and on push edges come from the consumer's own
(unguessable) identity. Anything else is junk, counted per socket and ignored.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from typing import Any

import msgpack
import zmq

from ..codecs import Encoder
from ..plan import BindPlan, EdgePlan
from .link import Link, bind_socket, send_parts
from .shm import ShmPool, lease_key, segment_prefix
from .stats import ACKED, B_JUNK, B_REFUSED, DROPPED, POS_OUT, POS_SENT, RESENT, SENT, EdgeStats
from .wire import (
    BATCH,
    CONTROL_MAX,
    DATA,
    EOS_TOPIC,
    RAW,
    ROUTE,
    SEP,
    SEQ,
    TOPIC,
    eos_header,
    identity,
    identity_base,
    parse_control,
    route_prefix,
)

__all__ = ["Flusher", "Outlet"]

# Coalescing on push edges (each bind's ``coalesce``, from the plan): a record that follows
# the previous one of its output within ``gap_ns`` (a burst: past ~50k msg/s), or finds
# every consumer full, waits to go with the next ones in one ZeroMQ message, until
# ``records`` or ``bytes`` are pending, the oldest is ``max_age_ns`` old at the next emit,
# the worker's turn ends, or (the node's code is busy: a source sleeping after a burst) the
# flusher thread sends them, the plan's ``limits.flush_delay_s`` later (``flush_delay_max_s``
# while a long burst keeps the worker sending by itself). A record after a quiet gap goes at
# once, alone: an isolated message never waits.
INLINE_MAX = 8 << 10  # payloads up to this ride in the header's frame (one frame a message)
# plain ints: zmq's flag enums cost a Python enum operation per frame on the hot path
_MORE, _NOWAIT = int(zmq.SNDMORE), int(zmq.NOBLOCK)


class Outlet:
    """One output port: encodes once, then sends on every socket the port binds."""

    def __init__(self, link: Link, src: int, inc: int, node: str, port: str, binds: list[BindPlan],
                 edges: dict[int, EdgePlan], encoder: Encoder, *, accepted: int = -1,
                 shm_above: int | None = None, shm_slots: int = 16, room_poll_s: float = 0.01,
                 flusher: Flusher, own_flusher: bool = False, loans: bool = False) -> None:
        self.link = link
        self.src, self.inc, self.port = src, inc, port
        self.name = f"{node}.{port}"
        self.own_flusher = own_flusher  # closed with this output (else the worker's, closed by the worker)
        self.flusher = flusher
        self.topic_default = port.encode()
        self.encoder = encoder
        self.binds = binds
        self.edge_plans = edges
        mv = link.counters.mv
        self.mv = mv
        self.accepted = accepted  # index of this output's "records handed to the outlet" count
        layout = link.counters.layout
        self.base = {e: layout.edge(e) for e in edges}
        self.stats: dict[int, EdgeStats] = {e: EdgeStats(mv, self.base[e]) for e in edges}
        self.seq: dict[bytes, int] = {}
        self.packer = msgpack.Packer(use_bin_type=True)
        self.pubs: list[_Pub] = []
        self.routers: list[_Router] = []
        self.streams: list[_Stream] = []
        self.bound: dict[str, str] = {}  # bind id -> actual address
        self.eos_header = b""
        self.feedback = {e for e, p in edges.items() if p.feedback}
        self.loans = loans  # the codec sends an array's own buffer: ``alloc`` may lend shared-memory slots
        self.tap: Any = None  # a TapPoint while the output is mirrored (runtime/taps.py)
        room_ms = max(1, round(room_poll_s * 1000))  # a blocked send looks at its consumers this often
        for bind in binds:
            what = f"output {self.name}"
            if bind.pattern == "stream":
                shared = link.streams.get(bind.id)
                if shared is None:
                    shared = link.streams[bind.id] = _StreamSocket(link, bind, what, room_ms)
                    self.bound[bind.id] = shared.address
                shared.edges.update(bind.edges)  # outputs sharing the port: each one's consumers
                self.streams.append(_Stream(shared, self, [edges[e] for e in bind.edges]))
                continue
            sock = link.zctx.socket(zmq.XPUB if bind.pattern == "pub" else zmq.ROUTER)
            # a finished producer stays until its queue (end-of-stream last) is delivered; if a
            # consumer never reads it, the supervisor's TERM/KILL ends the wait
            sock.setsockopt(zmq.LINGER, -1)
            sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX)  # consumers send only short control messages
            if bind.pattern == "push":
                sock.setsockopt(zmq.SNDHWM, bind.hwm)  # in messages: the compiler counted coalescing in
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone consumer is an error, not a drop
                sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a consumer that reconnects (same incarnation) keeps its name
                sock.setsockopt(zmq.RCVHWM, bind.control_hwm)
            else:
                sock.setsockopt(zmq.SNDHWM, bind.hwm)
            actual = bind_socket(link, sock, bind, what, link.resolved.get(bind.id))
            self.bound[bind.id] = actual
            # the compiler marks the binds whose large payloads go through shared memory (never tcp)
            shm = bind.shm and shm_above is not None and bind.transport != "tcp"
            pool = ShmPool(shm_above, shm_slots, segment_prefix(link.tag, src), lease_key(link.token)) if shm else None
            if bind.pattern == "pub":
                self.pubs.append(_Pub(sock, bind, [edges[e] for e in bind.edges], link, pool))
            else:
                router = _Router(sock, bind, [edges[e] for e in bind.edges], link, src, inc, pool,
                                 self.flusher if bind.coalesce is not None else None, room_ms)
                self.routers.append(router)
                if router.flusher is not None:
                    self.flusher.routers.append(router)

    def sockets(self) -> list[zmq.Socket]:
        socks = [p.sock for p in self.pubs] + [r.sock for r in self.routers]
        return socks + [s.shared.sock for s in self.streams if s.shared.owner is self]

    def alloc(self, shape: Any, dtype: Any) -> Any:
        """A writable numpy array for the node to fill and emit on this output. On an output
        whose one bind is a same-host push edge with shared memory, and large enough for it,
        the array lies in a free slot, so emitting it sends only the slot's name; otherwise
        (or with every slot taken) it is ordinary memory and emit copies as usual."""
        import numpy as np  # only nodes that allocate tensors load numpy

        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        count = 1
        for n in shape:
            count *= n
        alone = self.loans and len(self.routers) == 1 and not self.pubs and not self.streams
        pool = self.routers[0].pool if alone else None
        if pool is None or count * dtype.itemsize < pool.threshold:
            return np.empty(shape, dtype)
        with self.flusher.lock:  # a consumer's free, read by the flusher thread, changes the slots
            self.routers[0].service()  # frees waiting on the socket: the slot just given back is warm
            holder = pool.loan(count * dtype.itemsize)
        if holder is None:
            return np.empty(shape, dtype)
        return np.frombuffer(holder, dtype=dtype, count=count).reshape(shape)

    # -- readiness: every consumer edge said hello
    def waiting_for(self) -> set[int]:
        """Edges of this output whose consumer has not joined yet."""
        missing: set[int] = set()
        for pub in self.pubs:
            missing.update(e for e in pub.edges if e not in pub.joined)
        for router in self.routers:
            missing.update(e for e in router.edges if e not in router.peers)
        for stream in self.streams:
            missing.update(e for e in stream.edges if e not in stream.shared.joined)
        return missing

    def service(self, sock: zmq.Socket) -> None:
        """Read what consumers send to a bind: subscriptions and control messages."""
        for pub in self.pubs:
            if pub.sock is sock:
                pub.service()
        for router in self.routers:
            if router.sock is sock:
                with self.flusher.lock:
                    router.service()
        for stream in self.streams:
            if stream.shared.sock is sock:
                stream.shared.service()

    # -- the hot path
    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any = None) -> None:
        meta, frames = self.encoder(value)
        topic = topic if topic is not None else self.topic_default
        now = time.time_ns()
        mv = self.mv
        if self.accepted >= 0:
            mv[self.accepted] += 1
        tap = self.tap  # someone listens (dmnflow echo, a recording): runtime/taps.py
        if tap is not None and now >= tap.due:
            tap.send(topic, meta, frames, origin_ns, origin, now, event_time, attrs)
        if self.pubs:
            seq = self.seq.get(topic, 0)
            self.seq[topic] = seq + 1
            parts = None
            for pub in self.pubs:  # counted before it goes: a kill in between is a loss the report shows
                for base in pub.unfiltered:
                    mv[base] += 1
                for base, prefixes in pub.filtered:  # count what that subscriber asked for
                    if topic.startswith(prefixes):
                        mv[base] += 1
                if pub.pool is not None and len(frames) == 1 and large(frames[0], pub.pool.threshold):
                    pub.service()  # frees waiting on the socket
                    readers = pub.readers(topic)
                    lease = pub.pool.put(frames, readers) if readers else None
                    if lease is not None:  # every subscriber maps the one slot; those it names free it
                        send_parts(pub.sock, message(topic, self.packer, (
                            DATA, self.src, self.inc, seq, origin_ns, origin, now, event_time,
                            [*lease, readers, meta], attrs), []), 0)
                        continue
                if parts is None:
                    parts = message(topic, self.packer, (DATA, self.src, self.inc, seq, origin_ns, origin, now,
                                                         event_time, meta, attrs), frames)
                send_parts(pub.sock, parts, 0)
        for router in self.routers:
            router.send(topic, frames, origin_ns, origin, now, event_time, meta, attrs)
        for stream in self.streams:
            stream.send(topic, frames, (origin_ns, origin, now, event_time, meta, attrs))

    def flush(self) -> None:
        """Send the records waiting to be coalesced (the worker calls it at the end of each turn)."""
        for router in self.routers:
            if router.pending:
                with self.flusher.lock:
                    while router.pending:
                        router.flush()

    def send_eos(self) -> None:
        """Start ending the stream: ``flush_eos`` repeats the end until every consumer has it."""
        self.flush()  # the end follows every record
        # the total per topic, so each consumer can count what it missed of what it subscribed to
        self.eos_header = eos_header(self.packer, self.src, self.inc, self.seq, time.time_ns(), self.link.token)
        for stream in self.streams:
            stream.tap_eos()
        if self.tap is not None:
            self.tap.eos()
        self.flush_eos()

    def flush_eos(self) -> bool:
        """Send end-of-stream again to consumers that have not acknowledged it; True when all have."""
        done = True
        for pub in self.pubs:
            # a feedback consumer may have ended before our end reached it: once it has left, done
            if not (pub.acked | (pub.left & self.feedback)).issuperset(pub.edges):
                done = False
                with contextlib.suppress(zmq.Again):
                    pub.sock.send_multipart([EOS_TOPIC, self.eos_header], zmq.NOBLOCK)
        with self.flusher.lock:
            for router in self.routers:
                done &= router.flush_eos(self.feedback)
        for stream in self.streams:
            done &= stream.flush_eos(self.feedback)
        return done

    def close(self) -> None:
        if self.own_flusher:
            self.flusher.close()
        with self.flusher.lock:
            for sock in [p.sock for p in self.pubs] + [r.sock for r in self.routers]:
                sock.close()
            for stream in self.streams:
                stream.shared.close()
            for router in self.routers:
                router.pending.clear()
            for holder in [*self.pubs, *self.routers]:
                if holder.pool is not None:
                    holder.pool.close()


def large(frame: Any, threshold: int) -> bool:
    """Whether a payload frame is big enough for shared memory (cheap for the common bytes)."""
    return (len(frame) if type(frame) is bytes else memoryview(frame).nbytes) >= threshold


def message(topic: bytes, packer: msgpack.Packer, fields: tuple[Any, ...], frames: list[Any]) -> list[Any]:
    """The frames of one message. A payload of one small frame (or none) rides in the header's
    frame: ``topic SEP msgpack([*fields, payload])``, one ZeroMQ frame (each frame costs pyzmq
    microseconds); a large or many-framed one follows it as ``[topic, msgpack(fields), *frames]``,
    its frames sent without copying."""
    if not frames:
        return [topic + SEP + packer.pack((*fields, None))]
    if len(frames) == 1:
        frame = frames[0]
        if type(frame) is bytes:
            if len(frame) <= INLINE_MAX:
                return [topic + SEP + packer.pack((*fields, frame))]
        else:
            view = memoryview(frame)
            if view.nbytes <= INLINE_MAX:
                return [topic + SEP + packer.pack((*fields, view.tobytes()))]
    return [topic, packer.pack(fields), *frames]


def _send(sock: zmq.Socket, topic: bytes, header: bytes, frames: list[Any], flags: int) -> None:
    """A message in the long form, ``[topic, header, *frames]``: what subscribers outside the
    graph read (docs/wire.md) and end-of-stream."""
    send_parts(sock, [topic, header, *frames], flags)


def _junk(link: Link, bind: BindPlan) -> None:
    if bind.counter >= 0:
        link.counters.mv[link.counters.layout.bind(bind.counter) + B_JUNK] += 1


class _AnyEdge:
    """Every edge number: for telling another edge's control message from junk."""

    def __contains__(self, edge: object) -> bool:
        return True


_ANY_EDGE = _AnyEdge()


class _Pub:
    """The sending side of ``pub`` edges: which consumers joined, which acknowledged the end."""

    def __init__(self, sock: zmq.Socket, bind: BindPlan, edges: list[EdgePlan], link: Link,
                 pool: ShmPool | None = None) -> None:
        self.sock = sock
        self.bind = bind
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
                    _junk(self.link, self.bind)
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


class _Held:
    """At-least-once: what one edge's producer keeps until its consumer has handled it."""

    __slots__ = ("records", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.records: deque[tuple[int, list[Any]]] = deque()  # (seq, the message's frames as bytes)


class _Router:
    """The sending side of ``push`` edges: one peer per consumer, addressed by name.

    With a flusher, records of a burst are coalesced: several go as one ZeroMQ message
    ``[BATCH, src, inc, records]``, each record ``[*header, topic, payload]`` (the header of
    a single message, its topic and its one payload frame inline). Sequence numbers are
    given when a batch goes, per edge, so a batch is one consumer's, gap-free.
    """

    def __init__(self, sock: zmq.Socket, bind: BindPlan, edges: list[EdgePlan], link: Link, src: int, inc: int,
                 pool: ShmPool | None, flusher: Flusher | None, room_ms: int = 10) -> None:
        self.sock = sock
        self.bind = bind
        self.link = link
        self.edges = [e.id for e in edges]
        self.pool = pool
        self.src, self.inc = src, inc
        self.mv = link.counters.mv
        self.base = {e.id: link.counters.layout.edge(e.id) for e in edges}
        self.packer = msgpack.Packer(use_bin_type=True)
        self.block = any(e.policy == "block" for e in edges)
        # at-least-once edges keep what they sent (and never coalesce: each record is resent alone)
        self.held = {e.id: _Held(e.queue) for e in edges if e.delivery == "at-least-once"}
        co = bind.coalesce
        self.flusher = None if self.held or co is None else flusher  # None: no coalescing
        self.room_ms = room_ms
        self.max_records = co.records if co else 1
        self.max_bytes = co.bytes if co else 0
        self.gap_ns = co.gap_ns if co else 0
        self.max_age_ns = co.max_age_ns if co else 0
        # payloads up to this size join batches (not those bound for shared memory)
        record_max = co.record_max if co else 0
        self.inline_max = record_max if pool is None else min(record_max, pool.threshold - 1)
        # appended to by the worker's thread only (without the lock: a deque's append is atomic);
        # taken from, under the lock, by it or by the flusher thread
        self.pending: deque[list[Any]] = deque()
        self.pending_bytes = 0
        self.pending_since = 0
        self.last_ns = 0
        # a consumer's identity names its incarnation: the name without it says which edge it is
        self.expected = {identity_base(identity(link.token, e.dst, e.id))[0]: e.id for e in edges}  # type: ignore[index]
        self.peers: dict[int, bytes] = {}  # edge -> the consumer's DEALER identity, once it said hello
        self.peer_inc: dict[int, int] = {}
        # block edges run on credit: fewer than the plan's `credit` records (2 x `queue`: a queue's
        # worth in each end's socket) sent to one consumer incarnation and not yet reported taken
        # (``took``), so a kill of it loses at most that many (and one coalesced batch) in the sockets.
        # None inside one process: there the consumer runs in our own loop, and a bound could only deadlock
        self.window = {e.id: e.credit for e in edges if e.credit}
        self.out: dict[int, int] = dict.fromkeys(self.window, 0)  # sent to the current incarnation
        self.took: dict[int, int] = dict.fromkeys(self.window, 0)  # what it says reached it
        self.acked: set[int] = set()
        self.order: list[int] = []
        self.next = 0
        self.seq: dict[int, dict[bytes, int]] = {e: {} for e in self.edges}
        # at-least-once: one sequence per edge, stable across this node's restarts. A restarted
        # incarnation numbers from where the predecessor stood when it handled the last input it
        # said `done` for (the records after it come again, and are emitted again under the same
        # numbers); below the predecessor's highest, a send is a resend, not a new record
        self.done_top: dict[int, int] = {}  # per held edge: every sequence below it is handled downstream
        for e in self.held:
            start = self.mv[self.base[e] + POS_OUT]
            self.seq[e][b""] = self.done_top[e] = start

    def service(self) -> None:
        expected, token, edges = self.expected, self.link.token, self.edges
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            named = identity_base(frames[0]) if len(frames) == 2 else None
            edge = expected.get(named[0]) if named is not None else None
            ctl = parse_control(frames[1], token, edges) if edge is not None else None
            if ctl is None or ctl.edge != edge:  # a peer the plan does not know, or not its edge
                _junk(self.link, self.bind)
                continue
            verb = ctl.verb
            peer_inc = named[1]  # type: ignore[index]
            current = self.peer_inc.get(edge, -1)
            if verb == b"hello":
                inc = ctl.args[0]
                if inc != peer_inc:  # a hello names the incarnation its identity names
                    _junk(self.link, self.bind)
                elif inc > current:  # (an older one's late hello changes nothing)
                    self.peers[edge], self.peer_inc[edge] = frames[0], inc
                    self.order = sorted(self.peers)
                    self.acked.discard(edge)  # a new incarnation has not seen our end
                    if edge in self.window:
                        self.out[edge] = self.took[edge] = 0  # its credit starts afresh
                    if current >= 0 and edge in self.held:  # a restarted consumer: what it had not handled, again
                        self.resend(edge)
            elif verb == b"took":
                if peer_inc == current and ctl.args[0] == self.inc and edge in self.window:
                    self.took[edge] = max(self.took[edge], ctl.args[1])
            elif verb == b"ack":
                if peer_inc == current:
                    self.acked.add(edge)
            elif verb == b"free":
                if self.pool is not None:
                    self.pool.free(*ctl.args)
            elif verb == b"done" and edge in self.held:
                records, upto = self.held[edge].records, ctl.args[0]
                n = 0
                while records and records[0][0] <= upto:
                    records.popleft()
                    n += 1
                self.mv[self.base[edge] + ACKED] += n
                if upto >= self.done_top[edge]:
                    self.done_top[edge] = upto + 1

    def resend(self, edge: int) -> None:
        """Every record the consumer had not handled, in order, to its new incarnation."""
        held = self.held[edge]
        peer = self.peers[edge]
        for _seq, parts in held.records:
            while True:
                try:
                    self.sock.send(peer, _MORE | _NOWAIT)
                    break
                except zmq.ZMQError:
                    self.sock.poll(self.room_ms, zmq.POLLOUT)
            send_parts(self.sock, parts, 0)
            self.mv[self.base[edge] + RESENT] += 1
            if edge in self.window:
                self.out[edge] += 1

    def send(self, topic: bytes, frames: list[Any], origin_ns: int, origin: int, now: int, event_time: Any,
             meta: Any, attrs: Any) -> None:
        """Send to one consumer with room, or keep the record for the next batch: in a burst,
        or when every consumer is full (it then waits coalesced, not alone). The socket is
        used under the flusher's lock; a record joining a batch needs no lock."""
        flusher = self.flusher
        if flusher is None:  # no flusher thread touches this socket
            self.send_one(topic, frames, (origin_ns, origin, now, event_time, meta, attrs))
            return
        payload = frames[0] if len(frames) == 1 else None
        if type(payload) is bytes:
            if len(payload) > self.inline_max:
                payload = None
        elif payload is not None:
            payload = self.coalescable(payload)
        pending = self.pending
        if payload is None:
            self.last_ns = now
            with flusher.lock:
                while pending:
                    self.flush()  # what waited goes first: order is kept
                self.send_one(topic, frames, (origin_ns, origin, now, event_time, meta, attrs))
            return
        if not pending:
            burst = now - self.last_ns < self.gap_ns
            self.last_ns = now
            if not burst:  # after a quiet gap: alone, at once (unless every consumer is full)
                rest = (origin_ns, origin, now, event_time, meta, attrs)
                if flusher.thread is None:  # no other thread yet (we start it): no lock needed
                    if self.send_one(topic, frames, rest, defer=True):
                        return
                else:
                    with flusher.lock:
                        if self.send_one(topic, frames, rest, defer=True):
                            return
            self.pending_since = now
        else:
            self.last_ns = now
        pending.append([DATA, self.src, self.inc, 0, origin_ns, origin, now, event_time, meta, attrs, topic, payload])
        if not flusher.wake.is_set():  # after the append: the flusher clears it before it takes records
            flusher.notify()
        self.pending_bytes += len(payload)
        if len(pending) >= self.max_records or self.pending_bytes >= self.max_bytes \
                or now - self.pending_since >= self.max_age_ns:
            with flusher.lock:
                self.flush()

    def coalescable(self, payload: Any) -> bytes | None:
        """A one-frame payload that is not bytes, as bytes when it may join a batch, else None."""
        view = memoryview(payload)
        if view.nbytes > self.inline_max:
            return None
        return view.tobytes()  # a copy: the node may change its array once emit returns

    def flush(self) -> None:
        """Send the pending records as one message to one consumer with room (or wait, or
        drop). Called under the flusher's lock; records the worker's thread appends meanwhile
        (when the flusher thread calls it) stay for the next batch."""
        pending = self.pending
        popleft = pending.popleft
        records = [popleft() for _ in range(min(len(pending), self.max_records))]
        self.pending_bytes = 0
        if not records:
            return
        mv, base = self.mv, self.base
        if not self.order:
            for e in self.edges:
                mv[base[e] + DROPPED] += len(records)
            return
        n = len(self.order)
        while True:
            for i in range(n):
                edge = self.order[(self.next + i) % n]
                if edge in self.window and not self.room(edge):
                    continue  # no credit: what it has not taken fills its window
                try:
                    self.sock.send(self.peers[edge], _MORE | _NOWAIT)
                except zmq.ZMQError:  # full (EAGAIN) or gone (EHOSTUNREACH): try the next consumer
                    continue
                if edge in self.window:
                    self.out[edge] += len(records)
                seqs = self.seq[edge]
                for record in records:
                    topic = record[TOPIC]
                    seq = seqs.get(topic, 0)
                    record[SEQ] = seq
                    seqs[topic] = seq + 1
                mv[base[edge] + SENT] += len(records)  # counted before it goes (the rest cannot fail)
                self.sock.send(SEP + self.packer.pack((BATCH, self.src, self.inc, records)), 0)
                self.next = (self.next + i + 1) % n
                return
            if not self.block:
                mv[base[self.order[self.next % n]] + DROPPED] += len(records)
                return
            self.wait_for_room()
            n = len(self.order)
            if not n:
                for e in self.edges:
                    mv[base[e] + DROPPED] += len(records)
                return

    def room(self, edge: int) -> bool:
        """Whether a block edge's consumer has credit: fewer than ``2 x queue`` records sent to
        it and not reported taken (a coalesced batch may then go past that by the batch less
        one). The consumer reports every ``queue / 8``, so a full window always brings a
        report: no deadlock."""
        return self.out[edge] - self.took[edge] < self.window[edge]

    def wait_for_room(self) -> None:
        """Every consumer is full (or gone): back-pressure. Wait until one has room (a
        mandatory ROUTER polls writable then) or says something (a restarted consumer's
        hello, its credit, a free, an ack, a done), then read what it said. While every
        consumer is only out of credit, only what it says can help: wait for that alone."""
        starved = bool(self.window) and all(e in self.window and not self.room(e) for e in self.order)
        self.sock.poll(self.room_ms, zmq.POLLIN if starved else zmq.POLLIN | zmq.POLLOUT)
        self.service()

    def send_one(self, topic: bytes, frames: list[Any], rest: tuple[Any, ...], defer: bool = False) -> bool:
        """Send one message to one consumer with room. Sequence numbers count per edge, so each
        replica of a shared input sees a gap-free sequence of its own share. With ``defer``,
        a blocking edge whose consumers are all full returns False instead of waiting."""
        mv, base = self.mv, self.base
        if not self.order:
            for e in self.edges:
                mv[base[e] + DROPPED] += 1
            return True
        src, inc, packer = self.src, self.inc, self.packer
        lease = None
        if self.pool is not None and len(frames) == 1 and large(frames[0], self.pool.threshold):
            self.service()  # frees waiting on the socket: a source may not return to the loop for a while
            lease = self.pool.put(frames)
        if lease is not None:  # the payload now lives in a shared-memory slot; the message names it
            rest = (*rest[:-2], [*lease, rest[-2]], rest[-1])  # the codec's meta rides in the lease
            frames = []
        held = self.held
        if not held and len(self.order) == 1 and len(frames) == 1 and type(frames[0]) is bytes \
                and len(frames[0]) <= INLINE_MAX:  # the common case, one consumer, a small payload: short
            edge = self.order[0]
            seqs = self.seq[edge]
            seq = seqs.get(topic, 0)
            body = topic + SEP + packer.pack((DATA, src, inc, seq, *rest, frames[0]))
            sock, peer = self.sock, self.peers[edge]
            credit = edge in self.window
            while True:
                try:
                    if credit and not self.room(edge):
                        raise zmq.Again()
                    sock.send(peer, _MORE | _NOWAIT)
                except zmq.ZMQError:  # full (EAGAIN), out of credit, or gone (EHOSTUNREACH)
                    if not self.block:
                        mv[base[edge] + DROPPED] += 1
                        return True
                    if defer:
                        return False
                    self.wait_for_room()
                    if self.order != [edge] or edge not in self.peers:  # a restart changed the consumers
                        return self.send_one(topic, frames, rest, defer)
                    peer = self.peers[edge]
                    continue
                mv[base[edge] + SENT] += 1  # counted before it goes: the rest of a message cannot fail
                sock.send(body, 0)
                seqs[topic] = seq + 1
                if credit:
                    self.out[edge] += 1
                return True
        n = len(self.order)
        while True:
            for i in range(n):
                edge = self.order[(self.next + i) % n]
                hold = held.get(edge) if held else None
                if hold is not None and len(hold.records) >= hold.window:
                    continue  # it has not handled what it holds: no room
                credit = edge in self.window
                if credit and not self.room(edge):
                    continue  # no credit: what it has not taken fills its window
                seqs = self.seq[edge]
                key = b"" if hold is not None else topic  # at-least-once: one sequence per edge, for `done`
                seq = seqs.get(key, 0)
                try:
                    self.sock.send(self.peers[edge], _MORE | _NOWAIT)
                except zmq.ZMQError:  # full (EAGAIN) or gone (EHOSTUNREACH): try the next consumer
                    continue
                parts = message(topic, packer, (DATA, src, inc, seq, *rest), frames)
                if hold is None:
                    mv[base[edge] + SENT] += 1  # counted before it goes: the rest of a message cannot fail
                elif seq < mv[base[edge] + POS_SENT]:
                    mv[base[edge] + RESENT] += 1  # a restarted producer emits again what it had sent
                else:
                    mv[base[edge] + SENT] += 1
                    mv[base[edge] + POS_SENT] = seq + 1
                send_parts(self.sock, parts, 0)
                seqs[key] = seq + 1
                if credit:
                    self.out[edge] += 1
                self.next = (self.next + i + 1) % n
                if hold is not None:  # kept as bytes: the node may change its array once emit returns
                    hold.records.append((seq, [p if type(p) is bytes else memoryview(p).tobytes() for p in parts]))
                return True
            if not self.block:
                mv[base[self.order[self.next % n]] + DROPPED] += 1
                if lease is not None:
                    self.pool.free(lease[2], lease[3])  # type: ignore[union-attr]
                return True
            if defer and lease is None:
                return False
            self.wait_for_room()
            n = len(self.order)

    def flush_eos(self, feedback: set[int]) -> bool:
        """Send end-of-stream again where it is not acknowledged; True once every consumer has it
        (and, at-least-once, has handled everything it was sent)."""
        done = all(not held.records for held in self.held.values())
        for edge, peer in self.peers.items():
            if edge in self.acked:
                continue
            done = False
            seqs = self.seq[edge]
            header = eos_header(self.packer, self.src, self.inc, seqs, time.time_ns(), self.link.token)
            try:
                self.sock.send_multipart([peer, EOS_TOPIC, header], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno == zmq.EHOSTUNREACH and edge in feedback:
                    self.acked.add(edge)  # the feedback consumer has ended and gone
        return done


# what a tap that subscribes to everything gets: every topic but the runtime's (\x00...), and the end
TAP_ALL = tuple(bytes([b]) for b in range(1, 256)) + (EOS_TOPIC,)


class _StreamSocket:
    """A fixed tcp port: one XPUB that every output bound to it shares (the outputs of one
    process may share a port). Tracks which in-graph consumers joined, their credit and their
    acknowledgements, and whether any subscriber outside the graph wants plain topics."""

    def __init__(self, link: Link, bind: BindPlan, what: str, room_ms: int = 10) -> None:
        self.link = link
        self.bind = bind
        self.room_ms = room_ms
        self.owner: Outlet | None = None
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
                    _junk(self.link, self.bind)
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
                _junk(self.link, self.bind)
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


class _Stream:
    """One output's edges on a stream port: each in-graph consumer addressed by its route,
    block edges held to their credit, share groups spread over replicas with room."""

    def __init__(self, shared: _StreamSocket, outlet: Outlet, edges: list[EdgePlan]) -> None:
        self.shared = shared
        if shared.owner is None:
            shared.owner = outlet  # registers the socket with the worker's poller once
        self.outlet = outlet
        self.edges = [e.id for e in edges]
        self.routes = {e.id: route_prefix(e.id) for e in edges}
        self.window = {e.id: e.credit for e in edges if e.credit}  # block edges' credit (the plan's)
        self.block = set(self.window)
        self.filters = {e.id: tuple(t.encode() for t in e.topics) for e in edges}
        self.seq: dict[int, dict[bytes, int]] = {e.id: {} for e in edges}
        self.tap_seq: dict[bytes, int] = {}
        groups: dict[str, list[int]] = {}
        for e in edges:  # replicas sharing one input form a group; every other edge is its own
            groups.setdefault(e.group or f"#{e.id}", []).append(e.id)
        self.groups = list(groups.values())
        self.next = {i: 0 for i in range(len(self.groups))}
        self.base = outlet.base
        self.packer = msgpack.Packer(use_bin_type=True)

    def room(self, edge: int) -> bool:
        return edge not in self.block or self.shared.room(edge, self.window[edge])

    def send(self, topic: bytes, frames: list[Any], rest: tuple[Any, ...]) -> None:
        shared, mv, base = self.shared, self.outlet.mv, self.base
        sock, src, inc, packer = shared.sock, self.outlet.src, self.outlet.inc, self.packer
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
                _send(sock, topic, packer.pack((DATA, src, inc, seq, *rest)), frames, 0)

    def pick(self, g: int, candidates: list[int]) -> int | None:
        """The edge that takes the next record: with room (waiting for credit when a block edge
        has none), round robin over a group's replicas."""
        shared = self.shared
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
            shared.sock.poll(shared.room_ms, zmq.POLLIN)  # back-pressure: wait for a credit
            shared.service()

    def tap_eos(self) -> None:
        if self.shared.tapped:
            with contextlib.suppress(zmq.Again):
                self.shared.sock.send_multipart([EOS_TOPIC, self.outlet.eos_header], zmq.NOBLOCK)

    def flush_eos(self, feedback: set[int]) -> bool:
        done = True
        shared = self.shared
        for edge in self.edges:
            if edge in shared.acked or edge not in shared.joined:
                continue
            done = False
            header = eos_header(self.packer, self.outlet.src, self.outlet.inc, self.seq[edge], time.time_ns(),
                                self.outlet.link.token)
            with contextlib.suppress(zmq.Again):
                shared.sock.send_multipart([self.routes[edge] + EOS_TOPIC, header], zmq.NOBLOCK)
        return done


class Flusher:
    """The lock a worker's coalescing push outputs use their sockets under, and a thread
    that sends coalesced records while the worker's own thread is busy elsewhere (a source
    sleeping after a burst, a slow handler): no record waits much more than
    ``delay_s`` (``delay_max_s`` during a long burst; the plan's ``limits``) for it.

    The worker's thread takes ``lock`` to send, to flush and to poll those sockets; a
    record joining a batch is appended without it. The thread only ever tries the lock
    without waiting, and starts with the first coalesced record, so a worker that never
    sees a burst never runs it.
    """

    def __init__(self, delay_s: float, delay_max_s: float) -> None:
        self.delay_s, self.delay_max_s = delay_s, delay_max_s
        self.lock = threading.RLock()
        self.routers: list[_Router] = []
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.closed = False

    def notify(self) -> None:
        """A record is pending and ``wake`` is clear (called by the worker's thread)."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="dmnflow-flush", daemon=True)
            self.thread.start()
        if not self.wake.is_set():
            self.wake.set()

    def _run(self) -> None:
        """Look every ``delay``: a batch older than its ``max_age_ns`` means the worker's thread has
        not been back (its next emit or the end of its turn would have sent it): send it. A
        young one means it is busy sending by itself: look less often, up to ``delay_max_s``,
        so a long burst costs few wake-ups. Nothing pending: sleep until the next batch."""
        wake, lock, routers = self.wake, self.lock, self.routers
        delay = first = self.delay_s
        while True:
            wake.wait()
            if self.closed:
                return
            time.sleep(delay)
            now = time.time_ns()
            due = [r.pending_since + r.max_age_ns for r in routers if r.pending]
            if due and now < min(due):
                delay = min(delay * 2, self.delay_max_s)
                continue
            if not lock.acquire(blocking=False):
                continue  # it holds the lock: it is in the runtime, which flushes before it waits
            try:
                if self.closed:
                    return
                wake.clear()  # before taking records: an append after this sets it again
                for router in routers:
                    while router.pending:
                        router.flush()
                delay = first
            finally:
                lock.release()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(1.0)

"""``push`` edges: a ROUTER the output binds, DEALER sockets the inputs connect.

The output addresses each consumer itself: it spreads messages over the replicas of a
shared input that have room (``share``), waits when none has (``block``: on the consumer's
credit, so a killed consumer loses at most its window) or drops and counts (``drop``).

Bursts are coalesced: several records go as one single-frame message ``[BATCH, src, inc,
records]``, each record the header of a single message followed by its topic and its one
payload frame, so the consumer hands every record over exactly as if it had come alone.
Sequence numbers are given when the batch goes (per edge: a batch is one consumer's). A
push edge's high-water mark counts messages, so it is ``queue / coalesce.records``
(``compiler/limits.py``, shown by ``dmnflow plan``). Records over ``coalesce.record_max`` or
of several frames go alone.

A record that follows the previous one of its output within ``gap_ns`` (a burst: past
~50k msg/s), or finds every consumer full, waits to go with the next ones, until
``records`` or ``bytes`` are pending, the oldest is ``max_age_ns`` old at the next emit, the
worker's turn ends, or (the node's code is busy: a source sleeping after a burst) the
``Flusher`` thread sends them, the plan's ``limits.flush_delay_s`` later
(``flush_delay_max_s`` while a long burst keeps the worker sending by itself). A record after
a quiet gap goes at once, alone: an isolated message never waits.

``delivery: at-least-once`` keeps every record until its consumer has handled it (a ``done``
control message, sent once the consumer's own at-least-once outputs are handled downstream
too), and sends what it still holds again to a restarted consumer; it never coalesces.

Control messages must carry the run's token, name an edge of this bind and come from the
consumer's own (unguessable) identity; anything else is junk, counted and ignored.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

import msgpack
import zmq

from ..errors import SendTimeout
from ..plan import BindPlan, EdgePlan
from .link import Link, bind_socket, junk, send_parts
from .shm import ShmPool
from .stats import ACKED, DROPPED, POS_OUT, POS_SENT, RESENT, SENT
from .wire import (
    BATCH,
    CONTROL_MAX,
    DATA,
    EOS_TOPIC,
    INLINE_MAX,
    SEP,
    SEQ,
    TOPIC,
    eos_header,
    identity,
    identity_base,
    large,
    message,
    parse_control,
)

__all__ = ["Flusher", "PushChannel"]

# plain ints: zmq's flag enums cost a Python enum operation per frame on the hot path
_MORE, _NOWAIT = int(zmq.SNDMORE), int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


class _Held:
    """At-least-once: what one edge's producer keeps until its consumer has handled it."""

    __slots__ = ("records", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.records: deque[tuple[int, list[Any]]] = deque()  # (seq, the message's frames as bytes)


class PushChannel:
    """The ``push`` edges of one bind: one peer per consumer, addressed by name.

    With a flusher, records of a burst are coalesced: several go as one ZeroMQ message
    ``[BATCH, src, inc, records]``, each record ``[*header, topic, payload]`` (the header of
    a single message, its topic and its one payload frame inline). Sequence numbers are
    given when a batch goes, per edge, so a batch is one consumer's, gap-free.
    """

    def __init__(self, link: Link, bind: BindPlan, edges: list[EdgePlan], src: int, inc: int, what: str,
                 pool: ShmPool | None, flusher: Flusher, room_ms: int = 10) -> None:
        sock = self.sock = link.zctx.socket(zmq.ROUTER)
        # a finished producer stays until its queue (end-of-stream last) is delivered; if a
        # consumer never reads it, the supervisor's TERM/KILL ends the wait
        sock.setsockopt(zmq.LINGER, -1)
        sock.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX)  # consumers send only short control messages
        sock.setsockopt(zmq.SNDHWM, bind.hwm)  # in messages: the compiler counted coalescing in
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone consumer is an error, not a drop
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a consumer that reconnects (same incarnation) keeps its name
        sock.setsockopt(zmq.RCVHWM, bind.control_hwm)
        self.address = bind_socket(link, sock, bind, what, link.resolved.get(bind.id))
        self.lock = flusher.lock  # the socket is used under it: the flusher thread sends coalesced records
        self.owner = threading.get_ident()  # the worker's thread: the one whose emit may raise SendTimeout
        timed = sorted((e for e in edges if e.block_timeout_s is not None and e.policy == "block"),
                       key=lambda e: e.block_timeout_s)  # type: ignore[arg-type, return-value]
        self.block_timeout = timed[0].block_timeout_s if timed else None
        self.timed_out = "" if not timed else (
            f"{what}: no consumer took a record for {timed[0].block_timeout_s:g}s (block_timeout of input "
            f"{timed[0].dst}.{timed[0].dst_port}); the record is counted as dropped. The consumer is stuck "
            "or slower than its producer: give it more time (block_timeout), more replicas, or policy: drop")
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
        if self.flusher is not None:
            flusher.channels.append(self)
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

    def sockets(self) -> list[zmq.Socket]:
        return [self.sock]

    def waiting_for(self) -> set[int]:
        return {e for e in self.edges if e not in self.peers}

    def consumer(self, edge: int) -> int | None:
        return self.peer_inc.get(edge)

    def service(self) -> None:
        with self.lock:
            self._read()

    def _read(self) -> None:
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
                junk(self.link, self.bind)
                continue
            verb = ctl.verb
            peer_inc = named[1]  # type: ignore[index]
            current = self.peer_inc.get(edge, -1)
            if verb == b"hello":
                inc = ctl.args[0]
                if inc != peer_inc:  # a hello names the incarnation its identity names
                    junk(self.link, self.bind)
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

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
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
                    self.send_batch()  # what waited goes first: order is kept
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
                self.send_batch()

    def coalescable(self, payload: Any) -> bytes | None:
        """A one-frame payload that is not bytes, as bytes when it may join a batch, else None."""
        view = memoryview(payload)
        if view.nbytes > self.inline_max:
            return None
        return view.tobytes()  # a copy: the node may change its array once emit returns

    def flush(self) -> None:
        if self.pending:
            with self.lock:
                while self.pending:
                    self.send_batch()

    def send_batch(self, wait: bool = True) -> bool:
        """Send the pending records as one message to one consumer with room (or wait, or
        drop). Called under the flusher's lock; records the worker's thread appends meanwhile
        (when the flusher thread calls it) stay for the next batch. Without ``wait`` (the
        flusher thread), a block edge whose consumers are all full keeps the records pending
        and returns False: the worker's thread waits for room, where its ``block_timeout``
        can raise."""
        pending = self.pending
        popleft = pending.popleft
        records = [popleft() for _ in range(min(len(pending), self.max_records))]
        self.pending_bytes = 0
        if not records:
            return True
        mv, base = self.mv, self.base
        if not self.order:
            for e in self.edges:
                mv[base[e] + DROPPED] += len(records)
            return True
        n = len(self.order)
        since = 0.0
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
                return True
            if not self.block:
                mv[base[self.order[self.next % n]] + DROPPED] += len(records)
                return True
            if not wait:  # back where they were, first in line
                pending.extendleft(reversed(records))
                self.pending_bytes += sum(len(r[-1]) for r in records)
                return False
            try:
                since = self.wait_for_room(since)
            except SendTimeout:  # the records are lost: counted, then the error goes to emit
                mv[base[self.order[self.next % n]] + DROPPED] += len(records)
                raise
            n = len(self.order)
            if not n:
                for e in self.edges:
                    mv[base[e] + DROPPED] += len(records)
                return True

    def room(self, edge: int) -> bool:
        """Whether a block edge's consumer has credit: fewer than ``2 x queue`` records sent to
        it and not reported taken (a coalesced batch may then go past that by the batch less
        one). The consumer reports every ``queue / 8``, so a full window always brings a
        report: no deadlock."""
        return self.out[edge] - self.took[edge] < self.window[edge]

    def wait_for_room(self, since: float = 0.0) -> float:
        """Every consumer is full (or gone): back-pressure. Wait until one has room (a
        mandatory ROUTER polls writable then) or says something (a restarted consumer's
        hello, its credit, a free, an ack, a done), then read what it said. While every
        consumer is only out of credit, only what it says can help: wait for that alone.

        ``since``: when this send began to wait (0: now); past the edges' ``block_timeout``
        the node's emit raises ``SendTimeout`` (never the flusher thread's send: the worker's
        next one does). Returns ``since``."""
        now = time.monotonic()
        if not since:
            since = now
        elif self.block_timeout is not None and now - since >= self.block_timeout \
                and threading.get_ident() == self.owner:
            raise SendTimeout(self.timed_out)
        starved = bool(self.window) and all(e in self.window and not self.room(e) for e in self.order)
        self.sock.poll(self.room_ms, zmq.POLLIN if starved else zmq.POLLIN | zmq.POLLOUT)
        self._read()
        return since

    def send_one(self, topic: bytes, frames: list[Any], rest: tuple[Any, ...], defer: bool = False,
                 since: float = 0.0) -> bool:
        """Send one message to one consumer with room. Sequence numbers count per edge, so each
        replica of a shared input sees a gap-free sequence of its own share. With ``defer``,
        a blocking edge whose consumers are all full returns False instead of waiting;
        ``since``: when this record began to wait (``wait_for_room``)."""
        mv, base = self.mv, self.base
        if not self.order:
            for e in self.edges:
                mv[base[e] + DROPPED] += 1
            return True
        src, inc, packer = self.src, self.inc, self.packer
        lease = None
        if self.pool is not None and len(frames) == 1 and large(frames[0], self.pool.threshold):
            if self.sock.get(_EVENTS) & _POLLIN:  # asking is cheaper than a failed recv
                self._read()  # frees waiting on the socket: a source may not return to the loop for a while
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
                    try:
                        since = self.wait_for_room(since)
                    except SendTimeout:
                        mv[base[edge] + DROPPED] += 1  # the record is lost: counted, then the error goes to emit
                        raise
                    if self.order != [edge] or edge not in self.peers:  # a restart changed the consumers
                        return self.send_one(topic, frames, rest, defer, since)
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
            try:
                since = self.wait_for_room(since)
            except SendTimeout:  # the record is lost: counted, its slot given back, then the error goes to emit
                mv[base[self.order[self.next % n]] + DROPPED] += 1
                if lease is not None:
                    self.pool.free(lease[2], lease[3])  # type: ignore[union-attr]
                raise
            n = len(self.order)

    def end(self) -> None:
        """Each edge's end carries its own totals (``flush_eos``)."""

    def flush_eos(self, feedback: set[int]) -> bool:
        """Send end-of-stream again where it is not acknowledged; True once every consumer has it
        (and, at-least-once, has handled everything it was sent)."""
        with self.lock:
            return self._flush_eos(feedback)

    def _flush_eos(self, feedback: set[int]) -> bool:
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


    def loan(self, nbytes: int) -> Any:
        """A free shared-memory slot of ``nbytes`` for ``ctx.alloc``, or None."""
        with self.lock:  # a consumer's free, read by the flusher thread, changes the slots
            self._read()  # frees waiting on the socket: the slot just given back is warm
            return self.pool.loan(nbytes) if self.pool is not None else None

    def close(self) -> None:
        with self.lock:
            self.sock.close()
            self.pending.clear()
            if self.pool is not None:
                self.pool.close()


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
        self.channels: list[PushChannel] = []  # the coalescing ones
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
        wake, lock, routers = self.wake, self.lock, self.channels
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
                kept = False
                for router in routers:  # never waiting for room: the worker's own thread does that
                    while router.pending:
                        if not router.send_batch(wait=False):
                            kept = True
                            break
                if kept:  # every consumer is full: look again, less and less often
                    wake.set()
                    delay = min(delay * 2, self.delay_max_s)
                else:
                    delay = first
            finally:
                lock.release()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(1.0)

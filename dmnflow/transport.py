"""ZeroMQ sockets built from the Plan, the wire format, and per-edge accounting.

A message is a ZeroMQ multipart: ``[topic, header, *payload]``. The header is a small
msgpack array ``[kind, src, inc, seq, origin_ns, origin, send_ns, event_time, meta, attrs]``:
``src`` numbers the output it came from, ``inc`` the incarnation of that output's worker
(it grows with every restart), ``seq`` counts that output's messages per topic, so every
input counts what it lost. ``meta`` is the codec's (a tensor's dtype and shape); ``attrs``
the node's small annotations of the message (a model version, the symbols of a batch), or
None. Topics starting with ``\\x00`` are reserved for the runtime.

Two patterns carry edges:

- ``pub``: an XPUB socket the output binds, SUB sockets the inputs connect. Each input
  subscribes to a hello topic of its own, so the publisher sees every subscriber join
  before sources start (no slow-joiner loss).
- ``push``: a ROUTER the output binds, DEALER sockets the inputs connect. The output
  addresses each consumer itself: it spreads messages over the replicas that have room
  (``share``), waits when none has (``block``) or drops and counts (``drop``).

End-of-stream is acknowledged. A PUB queue that overflowed once is skipped by libzmq
even for XPUB_NODROP sends, so a single end-of-stream frame can vanish with the data.
The output therefore re-sends it (never blocking) until each consumer acknowledges it,
by subscribing to its ack topic (pub) or sending it (push). Each copy queues behind all
the data sent before it, so the consumer sees the end only after everything that
arrived; it counts what never did from the total the frame carries.

Bursts on push edges are coalesced: several records go as one single-frame message
``[BATCH, src, inc, records]``, each record ``[kind, src, inc, seq, origin_ns, origin,
send_ns, event_time, meta, attrs, topic, payload]`` (the header of a single message, then
its topic and its one payload frame inline), so the consumer hands every record over
exactly as if it had come alone: the same header with the topic appended, the same
sequence, gap, latency and end-of-stream accounting. ``send_ns`` is when the node emitted
the record, so the edge latency includes any wait for the batch. Sequence numbers are given
when the batch goes (per edge: a batch is one consumer's). A push edge's high-water mark
counts messages, so it is set to ``queue / COALESCE_RECORDS`` (``push_hwm``; at least
PUSH_HWM_MIN): the queue still holds about ``queue`` small records. A producer waiting for
room (``block``) polls the socket, which a mandatory ROUTER makes writable when a consumer
has room again. Only push edges coalesce (a SUB filters by the
topic of a whole message); records with more than one frame or over 8 KiB go alone.

Large tensors on same-host push edges go through shared memory: the output copies the
payload into a slot of its pool and sends the slot's name; the consumer maps it and hands
the node an array over it, without copying. A node may instead write its tensor straight
into a slot (``Outlet.alloc``, ``ctx.alloc``): emitting that array sends the slot as it
is, so nothing is copied on either side. The slot is freed (a ``free`` message back
to the output) only when that array and every view of it are gone, so a node may keep
what it received. When every slot is in use, payloads go through the socket.

No zmq or msgpack error leaves this module untranslated.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import msgpack
import zmq

from .codecs import Decoder, Encoder
from .errors import DecodeError, SendTimeout, TransportError
from .plan import BindPlan, ConnectPlan

__all__ = ["EdgeStats", "Flusher", "Histogram", "Inlet", "Outlet", "ack_topic", "hello_topic"]

DATA, EOS, BATCH = 0, 1, 2
# Coalescing on push edges: a record that follows the previous one of its output within
# BURST_GAP_NS (a burst: past ~50k msg/s), or finds every consumer full, waits to go with
# the next ones in one ZeroMQ message, until COALESCE_RECORDS or COALESCE_BYTES are
# pending, the oldest is MAX_AGE_NS old at the next emit, the worker's turn ends, or (the
# node's code is busy: a source sleeping after a burst) the flusher thread sends them,
# FLUSH_DELAY_S later (FLUSH_DELAY_MAX_S while a long burst keeps the worker sending by
# itself). A record after a quiet gap goes at once, alone: an isolated message never waits.
COALESCE_RECORDS = 64
COALESCE_BYTES = 64 << 10
COALESCE_RECORD_MAX = 8 << 10  # larger payloads travel alone, as they are
BURST_GAP_NS = 20_000
MAX_AGE_NS = 200_000
FLUSH_DELAY_S = 200e-6
FLUSH_DELAY_MAX_S = 1e-3
PUSH_HWM_MIN = 64
ROOM_POLL_MS = 10  # back-pressure: look at the consumers again at least this often
COALESCE_ENV = "DMNFLOW_COALESCE"  # "0": every record is its own message
# plain ints: zmq's flag enums cost a Python enum operation per frame on the hot path
_MORE, _NOWAIT = int(zmq.SNDMORE), int(zmq.NOBLOCK)
CONTROL_PREFIX = b"\x00"
EOS_TOPIC = b"\x00eos"


def push_hwm(queue: int) -> int:
    """The high-water mark, in ZeroMQ messages, of a coalescing push edge whose queue holds
    ``queue`` records: a message carries up to COALESCE_RECORDS of them. At least
    PUSH_HWM_MIN, so large records (which travel alone) still have a pipeline to fill."""
    return min(queue, max(PUSH_HWM_MIN, -(-queue // COALESCE_RECORDS)))


def hello_topic(edge: int) -> bytes:
    """The topic an input subscribes to so the publisher sees that edge join."""
    return b"\x00hello/%d" % edge


def ack_topic(edge: int) -> bytes:
    """The topic an input subscribes to (or sends, on push edges) once it has end-of-stream."""
    return b"\x00ack/%d" % edge


def _tagged(body: bytes, tag: bytes) -> int | None:
    """The edge number in ``\x00<tag>/<edge>``, or None."""
    prefix = b"\x00" + tag + b"/"
    if body.startswith(prefix):
        with contextlib.suppress(ValueError):
            return int(body[len(prefix):])
    return None


@contextlib.contextmanager
def zmq_errors(what: str) -> Iterator[None]:
    """Turn a zmq error into a TransportError that says which socket operation failed."""
    try:
        yield
    except zmq.Again as exc:
        raise SendTimeout(f"{what}: the receiver is not reading") from exc
    except zmq.ZMQError as exc:
        raise TransportError(f"{what}: {exc}") from exc


class Histogram:
    """Latencies in log-spaced buckets (8 per power of two, within ~9%); cheap to add to."""

    __slots__ = ("counts", "n")
    SUB = 3  # 2**SUB buckets per octave

    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = counts if counts is not None else [0] * (64 << self.SUB)
        self.n = sum(self.counts)

    def add(self, ns: int) -> None:
        if ns < 16:
            index = max(ns, 0)
        else:
            bits = ns.bit_length()
            index = (bits << self.SUB) | ((ns >> (bits - 1 - self.SUB)) & ((1 << self.SUB) - 1))
        self.counts[index] += 1
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """The q-quantile in nanoseconds (the bucket's midpoint), None when empty."""
        if not self.n:
            return None
        rank = q * (self.n - 1)
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen > rank:
                return self._value(index)
        return None  # pragma: no cover - unreachable while n counts the buckets

    def _value(self, index: int) -> float:
        if index < 16:
            return float(index)
        bits, sub = index >> self.SUB, index & ((1 << self.SUB) - 1)
        low = (1 << (bits - 1)) + (sub << (bits - 1 - self.SUB))
        return low + (1 << (bits - 1 - self.SUB)) / 2

    def merge(self, other: Histogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.n += other.n

    def to_sparse(self) -> dict[int, int]:
        return {i: c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_sparse(cls, sparse: dict[int, int]) -> Histogram:
        hist = cls()
        for i, c in sparse.items():
            hist.counts[int(i)] = c
        hist.n = sum(hist.counts)
        return hist


@dataclass
class EdgeStats:
    """What one edge saw: the sender counts sent and dropped, the receiver the rest."""

    sent: int = 0
    dropped: int = 0  # refused at the sender (drop policy, full queue)
    received: int = 0
    gaps: int = 0  # messages missing in the sequence, as seen by the receiver
    decode_errors: int = 0
    restarts_seen: int = 0  # the sender came back with a new incarnation
    latency: Histogram = field(default_factory=Histogram)


def _endpoint(template: str, run_dir: str, resolved: dict[str, str]) -> str:
    return resolved.get(template) or template.replace("{run_dir}", run_dir)


class Outlet:
    """One output port: encodes once, then sends on every socket the port binds."""

    def __init__(self, ctx: zmq.Context, src: int, inc: int, port: str, binds: list[BindPlan],
                 encoder: Encoder, run_dir: str, resolved: dict[str, str],
                 topics: dict[int, list[str]] | None = None, shm_above: int | None = None,
                 flusher: Flusher | None = None) -> None:
        self.src, self.inc, self.port = src, inc, port
        self.own_flusher = flusher is None
        self.flusher = flusher if flusher is not None else Flusher()
        coalesce = os.environ.get(COALESCE_ENV, "1") != "0"
        self.topic_default = port.encode()
        self.encoder = encoder
        self.binds = binds
        self.stats: dict[int, EdgeStats] = {e: EdgeStats() for b in binds for e in b.edges}
        self.seq: dict[bytes, int] = {}
        self.packer = msgpack.Packer(use_bin_type=True)
        self.pubs: list[_Pub] = []
        self.routers: list[_Router] = []
        self.bound: dict[str, str] = {}  # plan endpoint -> actual (tcp ports chosen at bind)
        self.eos_header = b""
        self.feedback: set[int] = set()  # edges into a feedback input (set by the worker)
        self.tensor = False  # the output's codec is ``tensor`` (set by the worker): ``alloc`` may loan slots
        for bind in binds:
            endpoint = _endpoint(bind.endpoint, run_dir, resolved)
            sock = ctx.socket(zmq.XPUB if bind.pattern == "pub" else zmq.ROUTER)
            # a finished producer stays until its queue (end-of-stream last) is delivered; if a
            # consumer never reads it, the supervisor's TERM/KILL ends the wait
            sock.setsockopt(zmq.LINGER, -1)
            sock.setsockopt(zmq.SNDHWM, push_hwm(bind.hwm) if bind.pattern == "push" and coalesce else bind.hwm)
            if bind.pattern == "push":
                sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full or gone consumer is an error, not a drop
                sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted consumer takes its name back
                sock.setsockopt(zmq.RCVHWM, 0)
            with zmq_errors(f"output {port}: bind {endpoint}"):
                sock.bind(endpoint)
            actual = sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind.transport != "inproc" else endpoint
            if bind.transport == "tcp":
                self.bound[bind.endpoint] = actual
            if bind.pattern == "pub":
                self.pubs.append(_Pub(sock, bind.edges, topics or {}))
            else:
                same_host = shm_above is not None and bind.transport != "tcp"
                router = _Router(sock, bind.edges, _ShmPool(shm_above) if same_host else None, src, inc,
                                 self.stats, self.flusher if coalesce else None)
                self.routers.append(router)
                if coalesce:
                    self.flusher.routers.append(router)

    def sockets(self) -> list[zmq.Socket]:
        return [p.sock for p in self.pubs] + [r.sock for r in self.routers]

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
        pool = self.routers[0].pool if self.tensor and len(self.routers) == 1 and not self.pubs else None
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
        return missing

    def service(self, sock: zmq.Socket) -> None:
        """Read what consumers send to the bind: subscriptions (XPUB) or hellos (ROUTER)."""
        for pub in self.pubs:
            if pub.sock is sock:
                pub.service()
        for router in self.routers:
            if router.sock is sock:
                with self.flusher.lock:
                    router.service()

    # -- the hot path
    def send(self, value: Any, topic: bytes | None, origin_ns: int, origin: int, event_time: Any,
             attrs: Any = None) -> None:
        meta, frames = self.encoder(value)
        topic = topic if topic is not None else self.topic_default
        now = time.time_ns()
        if self.pubs:
            seq = self.seq.get(topic, 0)
            self.seq[topic] = seq + 1
            header = self.packer.pack((DATA, self.src, self.inc, seq, origin_ns, origin, now, event_time, meta,
                                       attrs))
            for pub in self.pubs:
                _send(pub.sock, topic, header, frames, 0)
                for e in pub.unfiltered:
                    self.stats[e].sent += 1
                for e, prefixes in pub.filtered:  # count what that subscriber asked for
                    if topic.startswith(prefixes):
                        self.stats[e].sent += 1
        for router in self.routers:
            router.send(topic, frames, origin_ns, origin, now, event_time, meta, attrs)

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
        self.eos_header = self.packer.pack((EOS, self.src, self.inc, sum(self.seq.values()), 0, -1,
                                            time.time_ns(), None, self.seq))
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
                for edge, peer in router.peers.items():
                    if edge not in router.acked:
                        done = False
                        header = self.packer.pack((EOS, self.src, self.inc, sum(router.seq[edge].values()), 0,
                                                   -1, time.time_ns(), None, router.seq[edge]))
                        try:
                            router.sock.send_multipart([peer, EOS_TOPIC, header], zmq.NOBLOCK)
                        except zmq.ZMQError as exc:
                            if exc.errno == zmq.EHOSTUNREACH and edge in self.feedback:
                                router.acked.add(edge)  # the feedback consumer has ended and gone
        return done

    def close(self) -> None:
        if self.own_flusher:
            self.flusher.close()
        with self.flusher.lock:
            for sock in self.sockets():
                sock.close()
            for router in self.routers:
                router.pending = []
                if router.pool is not None:
                    router.pool.close()


def _send(sock: zmq.Socket, topic: bytes, header: bytes, frames: list[Any], flags: int) -> None:
    """One message, frame by frame (send_multipart costs several Python checks per frame);
    small frames are copied, payload frames go without copying when large."""
    send = sock.send
    send(topic, flags | _MORE)
    if not frames:
        send(header, flags)
        return
    send(header, flags | _MORE)
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, flags if i == last else flags | _MORE, copy=False)


class _Pub:
    """The sending side of ``pub`` edges: which consumers joined, which acknowledged the end."""

    def __init__(self, sock: zmq.Socket, edges: list[int], topics: dict[int, list[str]]) -> None:
        self.sock = sock
        self.edges = edges
        self.unfiltered = [e for e in edges if not topics.get(e)]
        self.filtered = [(e, tuple(t.encode() for t in topics[e])) for e in edges if topics.get(e)]
        self.joined: set[int] = set()
        self.acked: set[int] = set()
        self.left: set[int] = set()  # consumers that unsubscribed their hello topic: gone

    def service(self) -> None:
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] != b"\x01":  # an unsubscription: of a hello topic when its consumer left
                if (edge := _tagged(msg[1:], b"hello")) is not None:
                    self.left.add(edge)
                continue
            if (edge := _tagged(msg[1:], b"hello")) is not None:
                self.joined.add(edge)
            elif (edge := _tagged(msg[1:], b"ack")) is not None:
                self.acked.add(edge)


class _Router:
    """The sending side of ``push`` edges: one peer per consumer, addressed by name.

    With a flusher, records of a burst are coalesced: several go as one ZeroMQ message
    ``[BATCH, src, inc, records]``, each record ``[*header, topic, payload]`` (the header of
    a single message, its topic and its one payload frame inline). Sequence numbers are
    given when a batch goes, per edge, so a batch is one consumer's, gap-free.
    """

    def __init__(self, sock: zmq.Socket, edges: list[int], pool: _ShmPool | None = None, src: int = 0,
                 inc: int = 0, stats: dict[int, EdgeStats] | None = None, flusher: Flusher | None = None) -> None:
        self.sock = sock
        self.edges = edges
        self.pool = pool
        self.src, self.inc = src, inc
        self.stats: dict[int, EdgeStats] = stats if stats is not None else {e: EdgeStats() for e in edges}
        self.packer = msgpack.Packer(use_bin_type=True)
        self.flusher = flusher  # None: no coalescing
        # payloads up to this size join batches (not those bound for shared memory)
        self.inline_max = COALESCE_RECORD_MAX if pool is None else min(COALESCE_RECORD_MAX, pool.threshold - 1)
        # appended to by the worker's thread only (without the lock: a deque's append is atomic);
        # taken from, under the lock, by it or by the flusher thread
        self.pending: deque[list[Any]] = deque()
        self.pending_bytes = 0
        self.pending_since = 0
        self.last_ns = 0
        self.peers: dict[int, bytes] = {}  # edge -> the consumer's DEALER identity
        self.acked: set[int] = set()
        self.order: list[int] = []
        self.next = 0
        self.block = False  # set by the worker from the edges' policy
        self.seq: dict[int, dict[bytes, int]] = {e: {} for e in edges}

    def service(self) -> None:
        while True:
            try:
                identity, body = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # not a hello; ignore
            if (edge := _tagged(body, b"hello")) is not None and edge in self.edges:
                self.peers[edge] = identity
                self.order = sorted(self.peers)
            elif (edge := _tagged(body, b"ack")) is not None:
                self.acked.add(edge)
            elif body.startswith(b"\x00free/") and self.pool is not None:
                with contextlib.suppress(ValueError):
                    slot, gen = body[len(b"\x00free/"):].split(b"/")
                    self.pool.free(int(slot), int(gen))

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
            burst = now - self.last_ns < BURST_GAP_NS
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
        if len(pending) >= COALESCE_RECORDS or self.pending_bytes >= COALESCE_BYTES \
                or now - self.pending_since >= MAX_AGE_NS:
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
        records = [popleft() for _ in range(min(len(pending), COALESCE_RECORDS))]
        self.pending_bytes = 0
        if not records:
            return
        stats = self.stats
        if not self.order:
            for e in self.edges:
                stats[e].dropped += len(records)
            return
        n = len(self.order)
        while True:
            for i in range(n):
                edge = self.order[(self.next + i) % n]
                try:
                    self.sock.send(self.peers[edge], _MORE | _NOWAIT)
                except zmq.ZMQError:  # full (EAGAIN) or gone (EHOSTUNREACH): try the next consumer
                    continue
                seqs = self.seq[edge]
                for record in records:
                    topic = record[10]
                    seq = seqs.get(topic, 0)
                    record[3] = seq
                    seqs[topic] = seq + 1
                self.sock.send(self.packer.pack((BATCH, self.src, self.inc, records)), 0)
                self.next = (self.next + i + 1) % n
                stats[edge].sent += len(records)
                return
            if not self.block:
                stats[self.order[self.next % n]].dropped += len(records)
                return
            self.wait_for_room()
            n = len(self.order)
            if not n:
                for e in self.edges:
                    stats[e].dropped += len(records)
                return

    def wait_for_room(self) -> None:
        """Every consumer is full (or gone): back-pressure. Wait until one has room (a
        mandatory ROUTER polls writable then) or says something (a restarted consumer's
        hello, a free, an ack), then read what it said."""
        self.sock.poll(ROOM_POLL_MS, zmq.POLLIN | zmq.POLLOUT)
        self.service()

    def send_one(self, topic: bytes, frames: list[Any], rest: tuple[Any, ...], defer: bool = False) -> bool:
        """Send one message to one consumer with room. Sequence numbers count per edge, so each
        replica of a shared input sees a gap-free sequence of its own share. With ``defer``,
        a blocking edge whose consumers are all full returns False instead of waiting."""
        stats = self.stats
        if not self.order:
            for e in self.edges:
                stats[e].dropped += 1
            return True
        src, inc, packer = self.src, self.inc, self.packer
        lease = None
        if self.pool is not None:
            self.service()  # frees waiting on the socket: a source may not return to the loop for a while
            lease = self.pool.put(frames)
        if lease is not None:  # the payload now lives in a shared-memory slot; the message names it
            rest = (*rest[:-2], [*lease, rest[-2]], rest[-1])  # the codec's meta rides in the lease
            frames = []
        n = len(self.order)
        while True:
            for i in range(n):
                edge = self.order[(self.next + i) % n]
                seqs = self.seq[edge]
                seq = seqs.get(topic, 0)
                header = packer.pack((DATA, src, inc, seq, *rest))
                try:
                    self.sock.send(self.peers[edge], _MORE | _NOWAIT)
                except zmq.ZMQError:  # full (EAGAIN) or gone (EHOSTUNREACH): try the next consumer
                    continue
                _send(self.sock, topic, header, frames, 0)  # the rest of a message cannot fail
                seqs[topic] = seq + 1
                self.next = (self.next + i + 1) % n
                stats[edge].sent += 1
                return True
            if not self.block:
                stats[self.order[self.next % n]].dropped += 1
                if lease is not None:
                    self.pool.free(lease[2], lease[3])  # type: ignore[union-attr]
                return True
            if defer and lease is None:
                return False
            self.wait_for_room()
            n = len(self.order)


class Flusher:
    """The lock a worker's coalescing push outputs use their sockets under, and a thread
    that sends coalesced records while the worker's own thread is busy elsewhere (a source
    sleeping after a burst, a slow handler): no record waits much more than
    ``FLUSH_DELAY_S`` (``FLUSH_DELAY_MAX_S`` during a long burst) for it.

    The worker's thread takes ``lock`` to send, to flush and to poll those sockets; a
    record joining a batch is appended without it. The thread only ever tries the lock
    without waiting, and starts with the first coalesced record, so a worker that never
    sees a burst never runs it.
    """

    def __init__(self) -> None:
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
        """Look every ``delay``: a batch older than MAX_AGE_NS means the worker's thread has
        not been back (its next emit or the end of its turn would have sent it): send it. A
        young one means it is busy sending by itself: look less often, up to FLUSH_DELAY_MAX_S,
        so a long burst costs few wake-ups. Nothing pending: sleep until the next batch."""
        wake, lock, routers = self.wake, self.lock, self.routers
        delay = FLUSH_DELAY_S
        while True:
            wake.wait()
            if self.closed:
                return
            time.sleep(delay)
            now = time.time_ns()
            waiting = [r.pending_since for r in routers if r.pending]
            if waiting and now - min(waiting) < MAX_AGE_NS:
                delay = min(delay * 2, FLUSH_DELAY_MAX_S)
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
                delay = FLUSH_DELAY_S
            finally:
                lock.release()

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(1.0)


SHM_SLOTS = 16  # slots per output; when all are in use (or held by consumers) payloads take the socket
_CREATED: set[str] = set()  # segments this process made (a group may hold producer and consumer)


def _segment(size: int) -> shared_memory.SharedMemory:
    segment = shared_memory.SharedMemory(create=True, size=size)
    _CREATED.add(segment.name)
    return segment


class _ShmPool:
    """Shared-memory slots of one output's push edges. A slot is taken while its consumer has
    not freed it (``sent``) or while the node holds arrays over it (``held``: a loan from
    ``loan``, for the node to write its tensor into, not yet gone)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.slots: list[list[Any]] = []  # [segment, sent, generation, held: loan id or 0]
        self.loans: dict[int, tuple[int, int]] = {}  # address of a loaned slot -> (slot, loan id)
        self.next_loan = 1

    def put(self, frames: list[Any]) -> list[Any] | None:
        """A lease ``["shm", name, slot, gen, size]`` for a large single-frame payload: the
        slot it was written in (a loan, emitted: nothing to copy), else a free slot it is
        copied into; None when it is small or every slot is taken."""
        if len(frames) != 1:
            return None
        payload = memoryview(frames[0]).cast("B")
        size = payload.nbytes
        if size < self.threshold:
            return None
        if self.loans:
            address = _address(payload)
            loan = self.loans.pop(address, None) if address is not None else None
            if loan is not None:
                slot = self.slots[loan[0]]
                if slot[3] == loan[1] and not slot[1] and size <= slot[0].size:
                    slot[1], slot[2] = True, slot[2] + 1
                    return ["shm", slot[0].name, loan[0], slot[2], size]
        index = self._take(size)
        if index is None:
            return None
        slot = self.slots[index]
        slot[1], slot[2] = True, slot[2] + 1
        slot[0].buf[:size] = payload
        return ["shm", slot[0].name, index, slot[2], size]

    def loan(self, size: int) -> Any:
        """A writable buffer of ``size`` bytes over a free slot, held until every array over
        it is gone; emitting an array that starts at it sends the slot without copying. None
        when the payload is small or every slot is taken."""
        if size < self.threshold:
            return None
        index = self._take(size)
        if index is None:
            return None
        slot = self.slots[index]
        loan_id = self.next_loan
        self.next_loan += 1
        holder = (ctypes.c_char * size).from_buffer(slot[0].buf)
        slot[3] = loan_id
        self.loans[ctypes.addressof(holder)] = (index, loan_id)
        weakref.finalize(holder, self._release, index, loan_id, ctypes.addressof(holder))
        return holder

    def _release(self, index: int, loan_id: int, address: int) -> None:
        """The node's last array over a loaned slot is gone."""
        if self.loans.get(address, (None, None))[1] == loan_id:
            del self.loans[address]
        if index < len(self.slots) and self.slots[index][3] == loan_id:
            self.slots[index][3] = 0

    def _take(self, size: int) -> int | None:
        """A free slot of at least ``size`` bytes (made or grown if need be), or None."""
        index = next((i for i, s in enumerate(self.slots) if not s[1] and not s[3] and s[0].size >= size), None)
        return index if index is not None else self._grow(size)

    def _grow(self, size: int) -> int | None:
        """A new slot, or a free one that was too small made bigger; None when all are in use."""
        segment = _segment(size) if len(self.slots) < SHM_SLOTS else None
        if segment is not None:
            self.slots.append([segment, False, 0, 0])
            return len(self.slots) - 1
        small = next((i for i, s in enumerate(self.slots) if not s[1] and not s[3]), None)
        if small is None:
            return None
        _drop_segment(self.slots[small][0])
        self.slots[small] = [_segment(size), False, self.slots[small][2], 0]
        return small

    def free(self, index: int, gen: int) -> None:
        if 0 <= index < len(self.slots) and self.slots[index][2] == gen:
            self.slots[index][1] = False

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s[1] or s[3])

    def close(self) -> None:
        for slot in self.slots:
            _drop_segment(slot[0])
        self.slots = []
        self.loans = {}


def _address(view: memoryview) -> int | None:
    """Where a writable buffer's memory starts (None for a read-only one)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


def _drop_segment(segment: shared_memory.SharedMemory) -> None:
    """Unlink a segment we made and unmap it; a mapping an array still uses stays until the
    array is gone."""
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
    try:
        segment.close()
    except BufferError:
        segment._buf = segment._mmap = None  # type: ignore[attr-defined]  # see _ShmMaps.close


class _ShmMaps:
    """The consumer's side: maps named segments once, and hands out leases on slots."""

    def __init__(self) -> None:
        self.maps: dict[str, shared_memory.SharedMemory] = {}
        self.frees: list[tuple[int, int, int]] = []  # (edge, slot, gen) whose arrays are gone

    def attach(self, edge: int, lease: list[Any]) -> Any:
        """A buffer over the slot that stays valid while any array over it lives; when the
        last one is gone, the slot is queued to be freed."""
        _, name, slot, gen, size = lease
        segment = self.maps.get(name)
        if segment is None:
            segment = shared_memory.SharedMemory(name=name)
            if name not in _CREATED:  # the producer owns it: Python's tracker must not unlink it at our exit
                resource_tracker.unregister(segment._name, "shared_memory")  # type: ignore[attr-defined]
            self.maps[name] = segment
        if size > segment.size:
            raise ValueError("the slot is smaller than the lease says")
        holder = (ctypes.c_char * size).from_buffer(segment.buf)
        weakref.finalize(holder, self._gone, edge, slot, gen)
        return holder

    def _gone(self, edge: int, slot: int, gen: int) -> None:
        # look the list up now: send_frees swaps in a new one, and a bound append would miss it
        self.frees.append((edge, slot, gen))

    def close(self) -> None:
        for segment in self.maps.values():
            try:
                segment.close()
            except BufferError:
                # a node still holds arrays over it: the mapping goes with the process. Forget it,
                # so SharedMemory.__del__ does not fail the same way (noisily) at exit.
                segment._buf = segment._mmap = None  # type: ignore[attr-defined]


@dataclass
class _Source:
    """What an input knows about one producer output: for gap counting."""

    edge: int
    inc: int = -1
    next_seq: dict[bytes, int] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)  # per producer incarnation: how many it sent
    ended: bool = False

    def sent_so_far(self) -> dict[int, int]:
        """Per incarnation, how many messages (on our topics) the producer had sent by the last
        one we saw: the seq numbers tell, even when the producer died before reporting."""
        return {**self.seen, self.inc: sum(self.next_seq.values())} if self.inc >= 0 else dict(self.seen)


class Inlet:
    """One input port: sockets to every producer, decoding, sequence and end-of-stream checks."""

    def __init__(self, ctx: zmq.Context, port: str, connects: list[ConnectPlan], src_of_edge: dict[int, int],
                 topics: list[str], queue: int, decoders: dict[int, Decoder], run_dir: str,
                 resolved: dict[str, str], identity: bytes, feedback: bool, restarted: bool = False,
                 zero_copy: bool = True) -> None:
        self.port = port
        # zmq Frames cost an object per part; worth it only where payloads are used in place
        self.zero_copy = zero_copy
        # a restarted worker starts counting where the stream is now: what its predecessor
        # received is not a gap (the supervisor compares sent and received across both)
        self.baseline = restarted
        self.decoders = decoders  # per edge: producers of one input may use different codecs
        self.feedback = feedback
        self.stats: dict[int, EdgeStats] = {c.edge: EdgeStats() for c in connects}
        self.sources: dict[int, _Source] = {src_of_edge[c.edge]: _Source(c.edge) for c in connects}
        self.open: set[int] = {c.edge for c in connects}
        self.topics = tuple(t.encode() for t in topics)
        self.shm = _ShmMaps()
        self.unpacker_opts = {"raw": False, "strict_map_key": False, "use_list": True}
        self.socks: list[zmq.Socket] = []
        self.dealers: list[tuple[zmq.Socket, int]] = []
        subs = [c for c in connects if c.pattern == "pub"]
        if subs:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)  # an input has nothing to flush; its (un)subscriptions may be undeliverable
            sub.setsockopt(zmq.RCVHWM, queue)
            for prefix in (topics or [""]):
                sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
            if topics:
                sub.setsockopt(zmq.SUBSCRIBE, CONTROL_PREFIX + b"eos")
            for c in subs:
                sub.setsockopt(zmq.SUBSCRIBE, hello_topic(c.edge))  # never sent: XPUB only sees it
                with zmq_errors(f"input {port}: connect {c.endpoint}"):
                    sub.connect(_endpoint(c.endpoint, run_dir, resolved))
            self.socks.append(sub)
        for c in connects:
            if c.pattern != "push":
                continue
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.RCVHWM, push_hwm(queue) if os.environ.get(COALESCE_ENV, "1") != "0" else queue)
            dealer.setsockopt(zmq.IDENTITY, identity + b"/%d" % c.edge)
            with zmq_errors(f"input {port}: connect {c.endpoint}"):
                dealer.connect(_endpoint(c.endpoint, run_dir, resolved))
            self.socks.append(dealer)
            self.dealers.append((dealer, c.edge))
        self.hello()

    def hello(self) -> None:
        """Tell push producers this consumer is here (again, after either side restarted)."""
        for dealer, edge in self.dealers:
            dealer.send(hello_topic(edge), zmq.NOBLOCK)

    @property
    def ended(self) -> bool:
        """Every producer has sent end-of-stream (a feedback input never holds a node open)."""
        return self.feedback or not self.open

    def receive(self, sock: zmq.Socket, limit: int) -> Iterator[tuple[Any, list[Any]]]:
        """Up to about ``limit`` decoded records waiting on ``sock``: ``(value, header)`` pairs."""
        recv = sock.recv
        count = 0
        while count < limit:
            try:
                first = recv(_NOWAIT, copy=False)
            except zmq.Again:
                return
            now = time.time_ns()
            count += 1
            if not first.more:  # one frame: records coalesced by a push output
                count += yield from self._batch(first.buffer, now)
                continue
            parts = [first]
            while parts[-1].more:  # Frame.more, not a getsockopt(RCVMORE) per frame
                parts.append(recv(0, copy=False))
            frames = [first.bytes, *(f.buffer for f in parts[1:])] if self.zero_copy else [f.bytes for f in parts]
            topic = frames[0]
            try:
                header = msgpack.unpackb(frames[1], **self.unpacker_opts)
                kind, src, inc, seq = header[0], header[1], header[2], header[3]
                source = self.sources[src]
                if kind == DATA and (len(header) != 10 or type(seq) is not int or type(header[6]) is not int):
                    raise ValueError("malformed header")
            except Exception:
                self._bad_frame()
                continue
            stats = self.stats[source.edge]
            if inc != source.inc:
                self._incarnation(source, inc, stats)
            if kind == EOS:
                if not source.ended:
                    self._end(source, header[8], topic_filter=self.topics)
                self._ack(source.edge)
                continue
            expected = source.next_seq.get(topic)
            if expected is None:
                expected = seq if self.baseline else 0
            if seq > expected:
                stats.gaps += seq - expected
            source.next_seq[topic] = seq + 1
            stats.received += 1
            stats.latency.add(now - header[6])
            meta, payload = header[8], frames[2:]
            try:
                if type(meta) is list and len(meta) == 6 and meta[0] == "shm":
                    payload, meta = [self.shm.attach(source.edge, meta[:5])], meta[5]
                value = self.decoders[source.edge](meta, payload)
            except (DecodeError, ValueError, OSError):  # OSError: a segment that is not there
                stats.decode_errors += 1
                continue
            header.append(topic)  # header[10]: what the handler sees as ctx.message.topic
            yield value, header

    def _batch(self, body: Any, now: int) -> Iterator[tuple[Any, list[Any]]]:
        """The records of one coalesced message, each handed over as if it came alone: the
        same header (topic appended), the same sequence, gap and latency accounting.
        Returns how many records it held."""
        try:
            kind, src, inc, records = msgpack.unpackb(body, **self.unpacker_opts)
            source = self.sources[src]
            if kind != BATCH or type(records) is not list:
                raise ValueError("not a batch")
        except Exception:
            self._bad_frame()
            return 0
        stats = self.stats[source.edge]
        if inc != source.inc:
            self._incarnation(source, inc, stats)
        next_seq = source.next_seq
        decoder = self.decoders[source.edge]
        latency = stats.latency
        counts, sub, mask = latency.counts, Histogram.SUB, (1 << Histogram.SUB) - 1
        for header in records:
            try:
                payload = header.pop()  # the header as a single message has it, then the topic
                topic, seq = header[10], header[3]
                if len(header) != 11 or type(seq) is not int or type(topic) is not bytes \
                        or type(header[6]) is not int:
                    raise ValueError("malformed record")
            except Exception:
                stats.decode_errors += 1
                continue
            expected = next_seq.get(topic)
            if expected is None:
                expected = seq if self.baseline else 0
            if seq > expected:
                stats.gaps += seq - expected
            next_seq[topic] = seq + 1
            stats.received += 1
            ns = now - header[6]  # Histogram.add, inlined
            if ns < 16:
                counts[max(ns, 0)] += 1
            else:
                bits = ns.bit_length()
                counts[(bits << sub) | ((ns >> (bits - 1 - sub)) & mask)] += 1
            latency.n += 1
            try:
                value = decoder(header[8], [payload])
            except (DecodeError, ValueError, OSError):
                stats.decode_errors += 1
                continue
            yield value, header
        return len(records)

    def _incarnation(self, source: _Source, inc: int, stats: EdgeStats) -> None:
        """The producer came back (a restart): what its last incarnation sent is remembered."""
        if source.inc >= 0:
            stats.restarts_seen += 1
            source.seen[source.inc] = sum(source.next_seq.values())
        source.inc, source.next_seq = inc, {}

    def _end(self, source: _Source, totals: Any, topic_filter: tuple[bytes, ...]) -> None:
        stats = self.stats[source.edge]
        if isinstance(totals, dict):
            for topic, total in totals.items():
                if not topic_filter or topic.startswith(topic_filter):
                    seen = source.next_seq.get(topic, 0)
                    if isinstance(total, int) and total > seen and not self.baseline:
                        stats.gaps += total - seen  # lost at the tail, after the last one we saw
                    source.next_seq[topic] = max(seen, total if isinstance(total, int) else 0)
        source.ended = True
        self.open.discard(source.edge)

    def send_frees(self) -> None:
        """Tell producers which shared-memory slots this input's arrays no longer use."""
        frees, self.shm.frees = self.shm.frees, []
        dealer_of = {e: d for d, e in self.dealers}
        for edge, slot, gen in frees:
            dealer = dealer_of.get(edge)
            if dealer is not None:
                with contextlib.suppress(zmq.ZMQError):
                    dealer.send(b"\x00free/%d/%d" % (slot, gen), zmq.NOBLOCK)

    def _ack(self, edge: int) -> None:
        for dealer, e in self.dealers:
            if e == edge:
                with contextlib.suppress(zmq.ZMQError):
                    dealer.send(ack_topic(edge), zmq.NOBLOCK)
                return
        self.socks[0].setsockopt(zmq.SUBSCRIBE, ack_topic(edge))  # the SUB socket comes first

    def _bad_frame(self) -> None:
        # a frame we cannot even attribute to an edge: count it on the first edge of this input
        first = next(iter(self.stats.values()), None)
        if first is not None:
            first.decode_errors += 1

    def close(self) -> None:
        for sock in self.socks:
            sock.close()
        self.shm.close()


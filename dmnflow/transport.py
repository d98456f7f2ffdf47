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

Large tensors on same-host push edges go through shared memory: the output copies the
payload into a slot of its pool and sends the slot's name; the consumer maps it and hands
the node an array over it, without copying. The slot is freed (a ``free`` message back
to the output) only when that array and every view of it are gone, so a node may keep
what it received. When every slot is in use, payloads go through the socket.

No zmq or msgpack error leaves this module untranslated.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import msgpack
import zmq

from .codecs import Decoder, Encoder
from .errors import DecodeError, SendTimeout, TransportError
from .plan import BindPlan, ConnectPlan

__all__ = ["EdgeStats", "Histogram", "Inlet", "Outlet", "ack_topic", "hello_topic"]

DATA, EOS = 0, 1
# plain ints: zmq's flag enums cost a Python enum operation per frame on the hot path
_MORE, _NOWAIT = int(zmq.SNDMORE), int(zmq.NOBLOCK)
CONTROL_PREFIX = b"\x00"
EOS_TOPIC = b"\x00eos"


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
                 topics: dict[int, list[str]] | None = None, shm_above: int | None = None) -> None:
        self.src, self.inc, self.port = src, inc, port
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
        for bind in binds:
            endpoint = _endpoint(bind.endpoint, run_dir, resolved)
            sock = ctx.socket(zmq.XPUB if bind.pattern == "pub" else zmq.ROUTER)
            # a finished producer stays until its queue (end-of-stream last) is delivered; if a
            # consumer never reads it, the supervisor's TERM/KILL ends the wait
            sock.setsockopt(zmq.LINGER, -1)
            sock.setsockopt(zmq.SNDHWM, bind.hwm)
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
                self.routers.append(_Router(sock, bind.edges, _ShmPool(shm_above) if same_host else None))

    def sockets(self) -> list[zmq.Socket]:
        return [p.sock for p in self.pubs] + [r.sock for r in self.routers]

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
            router.send(topic, frames, (self.src, self.inc, origin_ns, origin, now, event_time, meta, attrs),
                        self.packer, self.stats)

    def send_eos(self) -> None:
        """Start ending the stream: ``flush_eos`` repeats the end until every consumer has it."""
        # the total per topic, so each consumer can count what it missed of what it subscribed to
        self.eos_header = self.packer.pack((EOS, self.src, self.inc, sum(self.seq.values()), 0, -1,
                                            time.time_ns(), None, self.seq))
        self.flush_eos()

    def flush_eos(self) -> bool:
        """Send end-of-stream again to consumers that have not acknowledged it; True when all have."""
        done = True
        for pub in self.pubs:
            if not pub.acked.issuperset(pub.edges):
                done = False
                with contextlib.suppress(zmq.Again):
                    pub.sock.send_multipart([EOS_TOPIC, self.eos_header], zmq.NOBLOCK)
        for router in self.routers:
            for edge, peer in router.peers.items():
                if edge not in router.acked:
                    done = False
                    header = self.packer.pack((EOS, self.src, self.inc, sum(router.seq[edge].values()), 0, -1,
                                               time.time_ns(), None, router.seq[edge]))
                    with contextlib.suppress(zmq.ZMQError):
                        router.sock.send_multipart([peer, EOS_TOPIC, header], zmq.NOBLOCK)
        return done

    def close(self) -> None:
        for sock in self.sockets():
            sock.close()
        for router in self.routers:
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

    def service(self) -> None:
        while True:
            try:
                msg = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] != b"\x01":
                continue  # an unsubscription
            if (edge := _tagged(msg[1:], b"hello")) is not None:
                self.joined.add(edge)
            elif (edge := _tagged(msg[1:], b"ack")) is not None:
                self.acked.add(edge)


class _Router:
    """The sending side of ``push`` edges: one peer per consumer, addressed by name."""

    def __init__(self, sock: zmq.Socket, edges: list[int], pool: _ShmPool | None = None) -> None:
        self.sock = sock
        self.edges = edges
        self.pool = pool
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

    def send(self, topic: bytes, frames: list[Any], fields: tuple[Any, ...], packer: msgpack.Packer,
             stats: dict[int, EdgeStats]) -> None:
        """Send to one consumer with room. Sequence numbers count per edge, so each replica
        of a shared input sees a gap-free sequence of its own share."""
        if not self.order:
            for e in self.edges:
                stats[e].dropped += 1
            return
        src, inc, rest = fields[0], fields[1], fields[2:]
        lease = None
        if self.pool is not None:
            self.service()  # frees waiting on the socket: a source may not return to the loop for a while
            lease = self.pool.put(frames)
        if lease is not None:  # the payload now lives in a shared-memory slot; the message names it
            rest = (*rest[:-2], [*lease, rest[-2]], rest[-1])  # the codec's meta rides in the lease
            frames = []
        n = len(self.order)
        wait = 20e-6
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
                return
            if not self.block:
                stats[self.order[self.next % n]].dropped += 1
                if lease is not None:
                    self.pool.free(lease[2], lease[3])  # type: ignore[union-attr]
                return
            time.sleep(wait)  # every consumer is full (or gone): back-pressure
            wait = min(wait * 2, 1e-3)
            self.service()  # a restarted consumer says hello while we wait
            n = len(self.order)


SHM_SLOTS = 16  # slots per output; when all are in use (or held by consumers) payloads take the socket
_CREATED: set[str] = set()  # segments this process made (a group may hold producer and consumer)


def _segment(size: int) -> shared_memory.SharedMemory:
    segment = shared_memory.SharedMemory(create=True, size=size)
    _CREATED.add(segment.name)
    return segment


class _ShmPool:
    """Shared-memory slots of one output's push edges, each in use until its consumer frees it."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.slots: list[list[Any]] = []  # [segment, in use, generation]

    def put(self, frames: list[Any]) -> list[Any] | None:
        """Copy a large single-frame payload into a free slot: ``["shm", name, slot, gen, size]``."""
        if len(frames) != 1:
            return None
        payload = memoryview(frames[0]).cast("B")
        size = payload.nbytes
        if size < self.threshold:
            return None
        index = next((i for i, s in enumerate(self.slots) if not s[1] and s[0].size >= size), None)
        if index is None:
            index = self._grow(size)
            if index is None:
                return None
        slot = self.slots[index]
        slot[1], slot[2] = True, slot[2] + 1
        slot[0].buf[:size] = payload
        return ["shm", slot[0].name, index, slot[2], size]

    def _grow(self, size: int) -> int | None:
        """A new slot, or a free one that was too small made bigger; None when all are in use."""
        segment = _segment(size) if len(self.slots) < SHM_SLOTS else None
        if segment is not None:
            self.slots.append([segment, False, 0])
            return len(self.slots) - 1
        small = next((i for i, s in enumerate(self.slots) if not s[1]), None)
        if small is None:
            return None
        old = self.slots[small][0]
        old.close()
        old.unlink()
        self.slots[small] = [_segment(size), False, self.slots[small][2]]
        return small

    def free(self, index: int, gen: int) -> None:
        if 0 <= index < len(self.slots) and self.slots[index][2] == gen:
            self.slots[index][1] = False

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s[1])

    def close(self) -> None:
        for segment, _, _ in self.slots:
            with contextlib.suppress(BufferError, FileNotFoundError):
                segment.close()
                segment.unlink()
        self.slots = []


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
            dealer.setsockopt(zmq.RCVHWM, queue)
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
        """Up to ``limit`` decoded messages waiting on ``sock``: ``(value, header)`` pairs."""
        recv = sock.recv
        for _ in range(limit):
            try:
                first = recv(_NOWAIT, copy=False)
            except zmq.Again:
                return
            now = time.time_ns()
            parts = [first]
            while parts[-1].more:  # Frame.more, not a getsockopt(RCVMORE) per frame
                parts.append(recv(0, copy=False))
            frames = [first.bytes, *(f.buffer for f in parts[1:])] if self.zero_copy else [f.bytes for f in parts]
            topic = frames[0]
            try:
                header = msgpack.unpackb(frames[1], **self.unpacker_opts)
                kind, src, inc, seq = header[0], header[1], header[2], header[3]
                source = self.sources[src]
                if kind == DATA and len(header) != 10:
                    raise ValueError("short header")
            except Exception:
                self._bad_frame()
                continue
            stats = self.stats[source.edge]
            if inc != source.inc:
                if source.inc >= 0:
                    stats.restarts_seen += 1
                    source.seen[source.inc] = sum(source.next_seq.values())
                source.inc, source.next_seq = inc, {}
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


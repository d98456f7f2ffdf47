"""``iox`` edges: same-host edges between spinning (``busy: true``) processes, on iceoryx2.

In the latency mode both ends of an edge spin on a core of their own. Over ZeroMQ that
buys nothing on a small machine: the bytes still go through each process's I/O thread,
which must wait for a time slice on a core the spinning loop already holds. iceoryx2
(``pip install 'dmnflow[iox]'``) is shared memory and nothing else: a publisher writes a
sample into its segment and the subscriber, polled by the consumer's loop, finds it there,
no thread and no system call on the way (``bench/iox_probe.py``: ~17 µs one-way paced on
2 vCPUs, against ~70 µs for pyzmq spinning). The compiler gives an edge this transport
when both its processes spin and iceoryx2 can be imported (``compiler/lowering.py``).

An edge is a pair of iceoryx2 publish-subscribe services, named from the run's shared
memory tag and the edge's endpoint: ``data`` (producer -> consumer, a subscriber buffer
of the input's ``queue`` up to ``limits.IOX_QUEUE_MAX``, never overwriting) and ``ctl``
(consumer -> producer: the same control messages the zmq edges carry, ``hello``, ``ack``,
with the run's token). A record
is the same bytes a one-frame zmq message holds (``topic SEP msgpack([*header, payload])``),
so the ``Inlet`` checks, counts and decodes it as any other (``IoxSocket`` is the part of a
zmq socket it reads); several payload frames, and the end-of-stream, go as a msgpack list
of parts. The producer learns from each send whether the record reached the consumer's
buffer: a full buffer is a ``drop`` (counted at the sender, like push) or, on ``block``,
a wait, spinning, until the consumer has read (up to the edge's ``block_timeout``, then
``SendTimeout``, as push); with no consumer there (killed, not yet
restarted) both count a drop. A killed consumer's port lingers in the service until some
process sees it is dead, so the producer looks every ``CLEANUP_IDLE_S``. Received payloads
are copied out of the sample (a small message costs less so than keeping the sample alive
behind a view).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import time
from typing import Any

import msgpack
import zmq

from ..errors import SendTimeout, TransportError
from ..plan import BindPlan, ConnectPlan, EdgePlan
from .channel import SocketlessChannel
from .link import Link, Part, junk
from .stats import DROPPED, SENT
from .wire import CONTROL_PREFIX, DATA, EOS_TOPIC, SEP, parse_control

__all__ = ["IoxChannel", "IoxSocket", "available", "service_names"]

HELLO = CONTROL_PREFIX + b"hello/"
ONE, PARTS = 1, 2  # a sample's first byte: one frame (the zmq one-frame form), or a msgpack list of parts
CLEANUP_S = 0.01  # a blocked send looks this often whether its consumer died ...
CLEANUP_IDLE_S = 0.05  # ... the spinning loop this often (~0.2 ms each: 0.4% of its core)
SLICE = 1024  # bytes a sample starts with; larger records grow the segment (powers of two)

_node: Any = None


def available() -> bool:
    """Whether iceoryx2 can be imported (the ``iox`` extra): the compiler asks before choosing it."""
    try:
        return importlib.util.find_spec("iceoryx2") is not None
    except (ImportError, ValueError):
        return False


def _iox() -> tuple[Any, Any]:
    """The iceoryx2 module and this process's one iceoryx2 node (signals stay the worker's)."""
    global _node
    try:
        import iceoryx2 as iox
    except ImportError as exc:
        raise TransportError("this plan has iox edges but iceoryx2 is not installed here: "
                             "pip install 'dmnflow[iox]' (or compile the plan where it is not)") from exc
    if _node is None:
        iox.set_log_level_from_env_or(iox.LogLevel.Error)
        _node = (iox.NodeBuilder.new().signal_handling_mode(iox.SignalHandlingMode.Disabled)
                 .create(iox.ServiceType.Ipc))
        _node.try_cleanup_dead_nodes()  # what killed processes (of any run) left in /dev/shm and /tmp/iceoryx2
    return iox, _node


def service_names(link: Link, endpoint: str) -> tuple[str, str]:
    """The data and control services of the edge at ``endpoint`` in this run (the tag is the run's)."""
    key = hashlib.sha1(endpoint.encode()).hexdigest()[:16]
    return f"dmnflow/{link.tag}/{key}/data", f"dmnflow/{link.tag}/{key}/ctl"


def _service(name: str, buffer: int, overflow: bool) -> Any:
    iox, node = _iox()
    try:
        return (node.service_builder(iox.ServiceName.new(name)).publish_subscribe(iox.Slice[ctypes.c_uint8])
                .subscriber_max_buffer_size(buffer).history_size(0).enable_safe_overflow(overflow)
                # a dead incarnation's port may linger until it is cleaned up: room for its successor
                .max_subscribers(2).max_publishers(2).max_nodes(4).open_or_create())
    except Exception as exc:  # iceoryx2's errors are its own classes, one per failure
        raise TransportError(f"iceoryx2 service {name}: {exc}") from exc


def _publisher(service: Any) -> Any:
    iox, _ = _iox()
    return (service.publisher_builder().initial_max_slice_len(SLICE)
            .allocation_strategy(iox.AllocationStrategy.PowerOfTwo)
            .backpressure_strategy(iox.BackpressureStrategy.DiscardData).create())


def _publish(pub: Any, kind: int, body: bytes) -> int:
    """One sample ``kind + body``; how many subscribers it reached (0: none there, or its buffer is full)."""
    sample = pub.loan_slice_uninit(len(body) + 1)
    ptr = sample.payload_ptr
    ctypes.memset(ptr, kind, 1)
    ctypes.memmove(ptr + 1, body, len(body))
    return sample.assume_init().send()


class IoxSocket:
    """The consumer's end of one iox edge: what the ``Inlet`` uses of a zmq socket (``recv``,
    ``get(EVENTS)``, ``rcvmore``, ``send`` for its control messages). Nothing to poll: the
    worker's spinning loop reads it (``Inlet.polled``)."""

    def __init__(self, link: Link, connect: ConnectPlan) -> None:
        data, ctl = service_names(link, connect.endpoint)
        # the buffer is the plan's (compiler/limits.py: the input's queue, at most IOX_QUEUE_MAX)
        self.data = _service(data, connect.hwm, False)
        self.ctl = _service(ctl, connect.control_hwm, True)  # the plan's, as the producer's bind says
        self.sub = self.data.subscriber_builder().buffer_size(connect.hwm).create()
        self.pub = _publisher(self.ctl)
        self.parts: list[Any] = []  # the rest of a message of several parts
        self.rcvmore = False
        self.hello: bytes | None = None  # a hello no producer heard yet: said again while the loop reads
        self.hello_due = 0.0

    def recv(self, flags: int = 0, copy: bool = True) -> Any:
        parts = self.parts
        if parts:
            part = parts.pop(0)
            self.rcvmore = bool(parts)
            return part if copy else Part(part, self.rcvmore)
        sample = self.sub.receive()
        if sample is None:
            if self.hello is not None:
                self._hello_again()
            raise zmq.Again()
        data = ctypes.string_at(sample.payload_ptr, sample.header.number_of_elements)
        sample.delete()  # its slot goes back to the producer now
        if data[:1] == b"\x01":
            self.rcvmore = False
            return data[1:]
        try:
            got = msgpack.unpackb(memoryview(data)[1:])
            ok = data[:1] == b"\x02" and type(got) is list and len(got) >= 2 and all(type(p) is bytes for p in got)
        except Exception:
            ok = False
        if not ok:  # the Inlet counts a lone frame without a separator as junk
            self.rcvmore = False
            return b""
        self.parts = got[1:]
        self.rcvmore = True
        return got[0]

    def get(self, option: int) -> int:
        """``EVENTS``: whether a record waits (the loop asks every turn: a hello nobody heard goes again)."""
        if self.hello is not None:
            self._hello_again()
        return zmq.POLLIN if self.parts or self.sub.has_samples() else 0

    def _hello_again(self) -> None:
        now = time.monotonic()
        if now >= self.hello_due:  # (at most every millisecond: nobody may be there for a while)
            self.hello_due = now + 0.001
            if _publish(self.pub, ONE, self.hello):  # type: ignore[arg-type]  # (the callers checked)
                self.hello = None

    def send(self, msg: bytes, flags: int = 0) -> None:
        """A control message to the producer (``hello``, ``ack``); lost if its queue is full, as a
        NOBLOCK send. A sample reaches only the subscribers there now: a hello sent before the
        producer's (a consumer that started first) is kept and said again (``get``)."""
        delivered = _publish(self.pub, ONE, msg)
        if msg.startswith(HELLO):
            self.hello = None if delivered else msg

    def close(self) -> None:
        if self.sub is not None:  # (once: an inlet may be closed again)
            self.sub.delete()
            self.pub.delete()
            self.sub = self.pub = None


class IoxChannel(SocketlessChannel):
    """The producer's end of one iox edge (one consumer): the ``Channel`` seam over iceoryx2."""

    def __init__(self, link: Link, bind: BindPlan, edges: list[EdgePlan], src: int, inc: int, what: str) -> None:
        if len(edges) != 1:
            raise TransportError(f"{what}: an iox bind carries one edge, not {len(edges)}")
        edge = edges[0]
        self.link, self.bind, self.src, self.inc, self.what = link, bind, src, inc, what
        self.edges = [edge.id]
        self.edge = edge.id
        self.sock: Any = None  # nothing to poll: the worker's spinning loop calls ``service``
        self.address = bind.endpoint
        self.pool = None
        self.held: dict[int, Any] = {}
        data, ctl = service_names(link, bind.endpoint)
        self.data = _service(data, bind.hwm, False)  # the consumer's buffer: the plan's, as its connect says
        self.ctl = _service(ctl, bind.control_hwm, True)  # the plan's (compiler/limits.py), as the connect's
        self.pub = _publisher(self.data)
        self.sub = self.ctl.subscriber_builder().buffer_size(bind.control_hwm).create()
        self.block = edge.policy == "block"
        self.block_timeout = edge.block_timeout_s if self.block else None
        self.timed_out = f"{what}: no consumer took a record for {edge.block_timeout_s or 0:g}s (block_timeout of " \
            f"input {edge.dst}.{edge.dst_port}); the record is counted as dropped. The consumer is stuck or slower " \
            "than its producer: give it more time (block_timeout), or policy: drop"
        self.topics = tuple(t.encode() for t in edge.topics)
        self.mv = link.counters.mv
        base = link.counters.layout.edge(edge.id)
        self.sent_at, self.dropped_at = base + SENT, base + DROPPED
        self.packer = msgpack.Packer(use_bin_type=True)
        self.seq: dict[bytes, int] = {}
        self.inc_of: int | None = None  # the consumer's incarnation, from its hello
        self.acked = False
        self.eos = b""
        self.next_cleanup = 0.0

    def sockets(self) -> list[zmq.Socket]:
        return []

    def service(self) -> None:
        now = time.monotonic()
        if now >= self.next_cleanup:  # a killed consumer's buffer would take records until someone looks
            self.next_cleanup = now + CLEANUP_IDLE_S
            self.data.try_cleanup_dead_nodes()
        token, edges = self.link.token, self.edges
        receive = self.sub.receive
        while (sample := receive()) is not None:
            body = ctypes.string_at(sample.payload_ptr, sample.header.number_of_elements)
            sample.delete()
            ctl = parse_control(body[1:], token, edges) if body[:1] == b"\x01" else None
            if ctl is None or not self.heard(ctl.verb, ctl.args):
                junk(self.link, self.bind)

    def restarted(self) -> None:
        self.data.try_cleanup_dead_nodes()  # its predecessor's port may linger

    def here(self) -> bool:
        """Whether the consumer is there: joined, and its subscriber not gone."""
        return self.inc_of is not None and self.data.dynamic_config.number_of_subscribers > 0

    def waiting_for(self) -> set[int]:
        """Joined once its hello came, or its subscriber is there: a consumer that started first
        said hello to nobody, and says it again only once its loop runs (after the start,
        which waits for this)."""
        self.service()
        here = self.inc_of is not None or self.data.dynamic_config.number_of_subscribers > 0
        return set() if here else {self.edge}

    def send(self, topic: bytes, meta: Any, frames: list[Any], origin_ns: int, origin: int, now: int,
             event_time: Any, attrs: Any) -> None:
        if self.topics and not topic.startswith(self.topics):
            return  # not a topic its consumer asked for (a pub edge filters at the subscriber)
        seq = self.seq.get(topic, 0)
        fields = (DATA, self.src, self.inc, seq, origin_ns, origin, now, event_time, meta, attrs)
        if len(frames) <= 1:
            payload = (frames[0] if type(frames[0]) is bytes else memoryview(frames[0])) if frames else None
            kind, body = ONE, topic + SEP + self.packer.pack((*fields, payload))
        else:
            parts = [f if type(f) is bytes else memoryview(f) for f in frames]
            kind, body = PARTS, self.packer.pack([topic, self.packer.pack(fields), *parts])
        mv = self.mv
        mv[self.sent_at] += 1  # counted before it goes: a kill in between is a loss the report shows
        pub = self.pub
        look = since = 0.0
        while not _publish(pub, kind, body):
            # a full buffer (or no consumer): drop, or spin until the consumer has read
            if not self.block or not self.here():
                mv[self.sent_at] -= 1
                mv[self.dropped_at] += 1
                return
            self.service()
            now_s = time.monotonic()
            if now_s >= look:  # a killed consumer's port stays until someone sees its process is gone
                if look:
                    self.data.try_cleanup_dead_nodes()
                else:
                    since = now_s
                look = now_s + CLEANUP_S
            if self.block_timeout is not None and now_s - since >= self.block_timeout:
                mv[self.sent_at] -= 1
                mv[self.dropped_at] += 1  # the record is lost: counted, then the error goes to emit
                raise SendTimeout(self.timed_out)
        self.seq[topic] = seq + 1

    def resend_eos(self) -> None:
        _publish(self.pub, PARTS, self.packer.pack([EOS_TOPIC, self.eos]))  # again next time, if full

    def close(self) -> None:
        if self.pub is not None:  # (once: an outlet may be closed again)
            self.pub.delete()
            self.sub.delete()
            self.pub = self.sub = None

"""Every ZeroMQ number of a plan, derived in one place.

A user writes ``queue:`` (records) and ``coalesce:``; the sockets need high-water marks in
ZeroMQ messages, credit windows and how often a consumer reports what it took. The
functions here turn one into the other, and ``LIMITS`` holds the bounds no YAML key sets
(control queues, the flusher's pace, the taps'). The compiler writes all of them into the
plan, ``dmnflow plan`` shows them, and the runtime reads them from the plan only: no
module constant or environment variable changes a bound behind the plan.
"""

from __future__ import annotations

from ..plan import CoalescePlan, LimitsPlan

__all__ = ["IOX_CONTROL_HWM", "IOX_QUEUE_MAX", "LIMITS", "PUSH_HWM_MIN", "STREAM_SLACK", "connect_control_hwm",
           "control_hwm", "credit", "credit_every", "push_hwm", "receive_hwm", "send_hwm"]

PUSH_HWM_MIN = 64  # a coalescing push pipe holds at least this many messages (large records go alone)
STREAM_SLACK = 64  # a stream's pipes hold its control traffic (hellos, credit, acks) beside the records

LIMITS = LimitsPlan(
    control_hwm=1000,  # control messages queued per peer at a producer socket (a flooding peer fills only its own)
    admin_hwm=1000,  # requests queued at a run's admin socket (runs, swap, top, echo)
    supervisor_hwm=10_000,  # control messages queued at the supervisor (heartbeats, phases, of every worker)
    flush_delay_s=200e-6,  # a held coalesced burst is sent this long after its last record ...
    flush_delay_max_s=1e-3,  # ... up to this long while a long burst keeps the sender busy
    tap_live_hwm=1000,  # records a slow `echo`/`hz` reader may be behind before the tap drops for it
    tap_record_hwm=10_000,  # records queued for the recorder before the worker waits for it
    viewer_hwm=10_000,  # records a viewer (echo/hz/bw, the recorder) holds before it drops
)


def push_hwm(queue: int, coalesce: CoalescePlan | None) -> int:
    """The high-water mark, in ZeroMQ messages, of a push pipe whose queue holds ``queue``
    records: coalescing, a message carries up to ``coalesce.records`` of them."""
    if coalesce is None:
        return queue
    return min(queue, max(PUSH_HWM_MIN, -(-queue // coalesce.records)))


IOX_QUEUE_MAX = 1024  # records in an iox consumer's buffer at most: each is a slot of the producer's segment
IOX_CONTROL_HWM = 64  # an iox edge's control messages (hello, ack) waiting at either end: read every turn


def credit(transport: str, pattern: str, policy: str, queue: int) -> int:
    """Records a block edge's producer may have in flight to one consumer incarnation (0: no
    credit, the edge drops or keeps the latest). A push edge holds ``queue`` in each end's
    pipe; a stream holds ``queue`` (its pipe is sized for twice that, ``send_hwm``). An iox
    producer learns from each send whether the consumer's buffer had room: no credit."""
    if policy != "block" or transport in ("inproc", "iox", "memory"):
        return 0
    return queue if pattern == "stream" else 2 * queue


def credit_every(pattern: str, queue: int) -> int:
    """How many records a consumer takes before it tells a producer (its credit and acks):
    often enough that a block producer never waits on a stale count."""
    if pattern == "stream":
        return max(1, queue // 4)
    return max(1, queue // 8) if pattern == "push" else 0


def control_hwm(transport: str, pattern: str) -> int:
    """Control messages a producer's socket queues per peer: push and stream binds read their
    consumers' hellos, credit and acks (a flooding peer fills only its own queue); a PUB reads
    only subscriptions (0: libzmq's own bound); an iox edge's control service holds
    ``IOX_CONTROL_HWM`` (both ends: ``connect_control_hwm``)."""
    if transport == "iox":
        return IOX_CONTROL_HWM
    return 0 if pattern == "pub" or transport == "memory" else LIMITS.control_hwm


def connect_control_hwm(transport: str) -> int:
    """What a consumer's end queues of its control messages to the producer: an iox edge's
    control service is one both ends open, alike; a zmq socket's is libzmq's own (0)."""
    return IOX_CONTROL_HWM if transport == "iox" else 0


def send_hwm(transport: str, pattern: str, queue: int, coalesce: CoalescePlan | None, window: int) -> int:
    """A bind's send high-water mark, in ZeroMQ messages. Inside one process the consumer runs
    in the producer's own loop: a bound there could only deadlock (0, unbounded). A stream's
    block credit (``window``) never fills its pipe: libzmq learns what the reader took only
    every half pipe, so the pipe holds twice the credit and the control traffic."""
    if transport == "inproc":
        return 0
    if transport == "iox":  # the consumer's buffer, in records
        return max(1, min(queue, IOX_QUEUE_MAX))
    if transport == "memory":  # the test double's queue, in records (transport/memory.py)
        return queue
    if pattern == "push":
        return push_hwm(queue, coalesce)
    if pattern == "stream":
        return max(queue, 2 * window + STREAM_SLACK)
    return queue


def receive_hwm(transport: str, pattern: str, queue: int, coalesce: CoalescePlan | None) -> int:
    """The consumer socket's high-water mark, in ZeroMQ messages, for ``queue`` records: a
    pipe inside one process is unbounded; a stream's reader holds its credit window and the
    control traffic on top."""
    if transport == "inproc":
        return 0
    if transport == "iox":
        return max(1, min(queue, IOX_QUEUE_MAX))
    if transport == "memory":
        return queue
    if pattern == "push":
        return push_hwm(queue, coalesce)
    return queue + STREAM_SLACK if pattern == "stream" else queue

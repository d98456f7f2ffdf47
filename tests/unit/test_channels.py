"""One conformance suite for every channel kind (``transport/channel.py``): pub, push and stream,
over every transport each runs on, between a real ``Outlet`` and a real ``Inlet``.

Each kind must keep order, count what it could not deliver (at the sender or, from the
sequence numbers, at the receiver: ``received + dropped + gaps == sent`` on every kind), hold
a block edge to its consumer's pace without losing a record, end the stream after everything
it sent, serve a restarted consumer, and (push) keep at-least-once records until they are
handled. Inside one process (inproc) an edge is unbounded, so nothing there can be full.
The iox kinds (iceoryx2 shared memory, ``transport/iox.py``) run where iceoryx2 is installed
(the ``iox`` extra); they have no socket to poll, so the helpers also spin the outlet and read
the inlet's ``polled`` ends, as the worker's spinning loop does. The memory kinds are the
seam's test double (``transport/memory.py``: a queue in this process, push's rules) and pass
the same checks.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from dmnflow.errors import SendTimeout
from dmnflow.transport import Channel, Inlet, Outlet
from dmnflow.transport.iox import available
from dmnflow.transport.stats import DROPPED, GAPS, N_CONFLATED, RECEIVED, SENT

from .test_transport import EDGE, make_inlet, make_link, wire

_NO_IOX = pytest.mark.skipif(not available(), reason="iceoryx2 is not installed (the iox extra)")


def _kinds(*kinds: tuple[str, str]) -> list:
    return [pytest.param(p, t, id=f"{p}-{t}", marks=_NO_IOX if t == "iox" else ()) for p, t in kinds]


KINDS = _kinds(("pub", "inproc"), ("pub", "ipc"), ("pub", "tcp"), ("push", "inproc"), ("push", "ipc"),
               ("push", "tcp"), ("stream", "tcp"), ("pub", "iox"), ("push", "iox"), ("pub", "memory"),
               ("push", "memory"))
BOUNDED = [k for k in KINDS if k.values[1] != "inproc"]
# `policy: block` compiles to push, or stays on a stream port (an iox edge of either pattern waits alike)
BLOCKING = [k for k in BOUNDED if k.values[0] != "pub"]


def endpoint(transport: str, tmp_path) -> str:
    if transport == "inproc":
        return f"inproc://conformance-{uuid.uuid4().hex[:8]}"
    if transport == "ipc":
        return f"ipc://{tmp_path}/edge"
    if transport in ("iox", "memory"):  # names the edge's iceoryx2 services, or its queue: one per test
        return f"{transport}://conformance-{uuid.uuid4().hex[:8]}"
    return "tcp://127.0.0.1:*"


def edge_counts(outlet: Outlet) -> tuple[int, int, int, int]:
    """(sent, dropped, received, gaps) of the edge, from the counters both ends write."""
    mv, base = outlet.link.counters.mv, outlet.link.counters.layout.edge(EDGE)
    return mv[base + SENT], mv[base + DROPPED], mv[base + RECEIVED], mv[base + GAPS]


def read(inlet: Inlet, limit: int = 100) -> list[bytes]:
    got = []
    for sock in inlet.socks + inlet.polled:
        got.extend(bytes(v) for v, _ in inlet.receive(sock, limit))
    return got


def serve(outlet: Outlet) -> None:
    """Read what the consumers sent, as the worker does (polled sockets, spun channels)."""
    for sock in outlet.sockets():
        outlet.service(sock)
    outlet.spin()


def to_the_end(outlet: Outlet, inlet: Inlet, got: list[bytes]) -> None:
    """End the stream and read until the consumer has the end and the producer its ack."""
    outlet.send_eos()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        acked = outlet.flush_eos()  # again, until acknowledged: a full queue may have lost a copy
        if inlet.ended and acked:
            break
        got.extend(read(inlet))
        serve(outlet)
        time.sleep(0.001)
    assert inlet.ended, "the consumer never saw the end"
    assert outlet.flush_eos(), "the producer never heard the consumer's ack"


def rejoined(outlet: Outlet, inc: int) -> Channel:
    channel = outlet.channels[0]
    deadline = time.monotonic() + 5
    while channel.consumer(EDGE) != inc and time.monotonic() < deadline:
        serve(outlet)
        time.sleep(0.005)
    assert channel.consumer(EDGE) == inc
    return channel


@pytest.mark.parametrize(("pattern", "transport"), KINDS)
def test_records_arrive_in_order_and_the_books_add_up(ctx, tmp_path, pattern, transport):
    outlet, inlet = wire(ctx, "raw", bytes, endpoint(transport, tmp_path), pattern, transport=transport)
    assert outlet.channels[0].consumer(EDGE) == 0 and not outlet.waiting_for()
    got: list[bytes] = []
    for i in range(500):
        outlet.send(b"%d" % i, None, 1, 0, i)
        if i % 50 == 49:
            outlet.flush()
            got.extend(read(inlet))
    to_the_end(outlet, inlet, got)
    assert got == [b"%d" % i for i in range(500)]
    assert edge_counts(outlet) == (500, 0, 500, 0)


@pytest.mark.parametrize(("pattern", "transport"), BOUNDED)
def test_a_full_drop_edge_counts_every_record_it_could_not_deliver(ctx, tmp_path, pattern, transport):
    outlet, inlet = wire(ctx, "raw", bytes, endpoint(transport, tmp_path), pattern, transport=transport, hwm=8)
    n = 3000
    for i in range(n):  # the consumer does not read: its queue fills
        outlet.send(b"%d" % i, None, 1, 0, i)
    got: list[bytes] = []
    to_the_end(outlet, inlet, got)
    sent, dropped, received, gaps = edge_counts(outlet)
    assert received == len(got) < n  # something was lost ...
    assert received + dropped + gaps == n  # ... and every lost record is counted, once
    assert [int(v) for v in got] == sorted(int(v) for v in got)  # what came, came in order


@pytest.mark.parametrize(("pattern", "transport"), BLOCKING)
def test_a_block_edge_waits_for_a_slow_consumer_and_loses_nothing(ctx, tmp_path, pattern, transport):
    outlet, inlet = wire(ctx, "raw", bytes, endpoint(transport, tmp_path), pattern, transport=transport, hwm=8,
                         policy="block")
    assert outlet.channels[0].bind.pattern == pattern
    n = 2000
    got: list[bytes] = []
    stop = threading.Event()

    def consume() -> None:  # the consumer's own thread (its sockets are used by it alone)
        deadline = time.monotonic() + 60
        while len(got) < n and not stop.is_set() and time.monotonic() < deadline:
            for sock in inlet.socks:
                if sock.poll(5):
                    got.extend(bytes(v) for v, _ in inlet.receive(sock, 16))
            for sock in inlet.polled:  # nothing to poll: read what is there
                got.extend(bytes(v) for v, _ in inlet.receive(sock, 16))
            time.sleep(0.0005)  # slower than the producer

    reader = threading.Thread(target=consume)
    reader.start()
    try:
        for i in range(n):
            outlet.send(b"%d" % i, None, 1, 0, i)
        outlet.flush()
    finally:
        reader.join(70)
        stop.set()
    assert got == [b"%d" % i for i in range(n)]
    assert edge_counts(outlet) == (n, 0, n, 0)


@pytest.mark.parametrize(("pattern", "transport"), KINDS)
def test_a_restarted_consumer_gets_the_rest_of_the_stream(ctx, tmp_path, pattern, transport):
    link = make_link(ctx)
    where = endpoint(transport, tmp_path)
    outlet, first = wire(ctx, "raw", bytes, where, pattern, transport=transport, link=link)
    got: list[bytes] = []
    for i in range(100):
        outlet.send(b"%d" % i, None, 1, 0, i)
    outlet.flush()
    deadline = time.monotonic() + 5
    while len(got) < 100 and time.monotonic() < deadline:
        got.extend(read(first))
    assert got == [b"%d" % i for i in range(100)]
    first.close()  # killed; its successor is a new incarnation
    second = make_inlet(link, "raw", bytes, where, pattern, transport=transport, inc=1)
    rejoined(outlet, 1)
    later: list[bytes] = []
    for i in range(100, 200):
        outlet.send(b"%d" % i, None, 1, 0, i)
    to_the_end(outlet, second, later)
    assert later == [b"%d" % i for i in range(100, 200)]
    second.close()


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_at_least_once_keeps_what_was_not_handled_for_the_next_incarnation(ctx, tmp_path, transport):
    link = make_link(ctx)
    where = endpoint(transport, tmp_path)
    outlet, first = wire(ctx, "raw", bytes, where, "push", transport=transport, link=link, policy="block",
                         delivery="at-least-once")
    channel = outlet.channels[0]
    for i in range(50):
        outlet.send(b"%d" % i, None, 1, 0, i)
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < 50 and time.monotonic() < deadline:
        for sock in first.socks:
            got.extend(first.receive(sock, 100))
    assert len(got) == 50
    for _, header in got[:20]:  # it handled 20, then died before the rest
        first.handled(header)
    first.send_done()
    deadline = time.monotonic() + 5
    while len(channel.held[EDGE].records) > 30 and time.monotonic() < deadline:
        outlet.service(channel.sock)
    assert len(channel.held[EDGE].records) == 30  # let go of what was handled, kept the rest
    first.close()
    second = make_inlet(link, "raw", bytes, where, "push", transport=transport, delivery="at-least-once", inc=1)
    rejoined(outlet, 1)  # its hello: the 30 go again
    again: list = []
    deadline = time.monotonic() + 5
    while len(again) < 30 and time.monotonic() < deadline:
        for sock in second.socks:
            again.extend(second.receive(sock, 100))
    assert [bytes(v) for v, _ in again] == [b"%d" % i for i in range(20, 50)]
    for _, header in again:
        second.handled(header)
    second.send_done()
    tail: list[bytes] = []
    to_the_end(outlet, second, tail)  # the end waits until nothing is held
    assert tail == [] and not channel.held[EDGE].records
    second.close()



@pytest.mark.parametrize(("pattern", "transport"), BLOCKING)
@pytest.mark.parametrize("coalesce", [True, False], ids=["coalesced", "alone"])
def test_a_block_timeout_raises_the_error_it_names_and_counts_the_record(ctx, tmp_path, pattern, transport, coalesce):
    """A consumer that stops reading: the producer waits up to the edge's block_timeout, then its
    emit raises SendTimeout naming the input; the record is counted as dropped, so the books
    still add up, and the channel keeps working once the consumer reads again."""
    outlet, inlet = wire(ctx, "raw", bytes, endpoint(transport, tmp_path), pattern, transport=transport, hwm=8,
                         policy="block", block_timeout=0.2, coalesce=coalesce)
    sent = 0
    with pytest.raises(SendTimeout, match=r"block_timeout of input c\.in.*counted as dropped"):
        for i in range(10_000):  # the window fills; then the wait runs out
            outlet.send(b"%d" % i, None, 1, 0, i)
            sent += 1
        outlet.flush()
    got: list[bytes] = []
    to_the_end(outlet, inlet, got)
    _, dropped, received, gaps = edge_counts(outlet)
    assert 0 < received == len(got) and received + dropped + gaps == sent + 1  # the one that timed out: dropped
    assert dropped >= 1 and gaps == 0
    assert [int(v) for v in got] == sorted(int(v) for v in got)


@pytest.mark.parametrize(("pattern", "transport"), [k for k in KINDS if k.values[0] != "push"])
def test_a_latest_input_hands_over_the_newest_and_counts_the_rest_as_conflated(ctx, tmp_path, pattern, transport):
    outlet, inlet = wire(ctx, "raw", bytes, endpoint(transport, tmp_path), pattern, transport=transport, latest=True)
    for i in range(100):
        outlet.send(b"%d" % i, None, 1, 0, i)
    got: list[bytes] = []
    deadline = time.monotonic() + 5
    while (not got or got[-1] != b"99") and time.monotonic() < deadline:
        time.sleep(0.01)  # everything lands, then one read takes it
        got.extend(read(inlet, 1000))
    conflated = outlet.link.counters.mv[outlet.link.counters.layout.node(0) + N_CONFLATED]
    assert got[-1] == b"99" and len(got) < 100
    assert len(got) + conflated == 100  # what was skipped is counted, once
    assert edge_counts(outlet) == (100, 0, 100, 0)  # conflation is the node's, not a loss on the edge

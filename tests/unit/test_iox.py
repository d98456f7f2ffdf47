"""The iox edge (``transport/iox.py``) beyond the conformance suite: the header a handler sees,
payloads larger than a sample starts with and of several frames, a consumer that starts before
its producer, control junk, and a consumer gone on a block edge. Skipped without iceoryx2."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from dmnflow import Tensor
from dmnflow.codecs import get_codec
from dmnflow.compiler import limits
from dmnflow.plan import BindPlan
from dmnflow.transport import Outlet
from dmnflow.transport.iox import available
from dmnflow.transport.stats import B_JUNK, DROPPED, RECEIVED, SENT
from dmnflow.transport.wire import TOPIC, control

from .test_channels import edge_counts, read, serve
from .test_transport import EDGE, SRC, TOKEN, edge_plan, flusher, make_inlet, make_link, wire

pytestmark = pytest.mark.skipif(not available(), reason="iceoryx2 is not installed (the iox extra)")


def where() -> str:
    return f"iox://test-{uuid.uuid4().hex[:8]}"


def records(inlet, n: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < n and time.monotonic() < deadline:
        for sock in inlet.polled:
            got.extend(inlet.receive(sock, 100))
    return got


def test_the_handler_sees_the_header_an_ipc_edge_gives_topic_included(ctx):
    outlet, inlet = wire(ctx, "raw", bytes, where(), "push", transport="iox")
    outlet.send(b"x" * 64, b"AAPL", 123, 7, 1.5, {"k": 1})
    [(value, header)] = records(inlet, 1)
    assert bytes(value) == b"x" * 64
    assert len(header) == 11 and header[TOPIC] == b"AAPL"
    assert header[1:6] == [SRC, 0, 0, 123, 7] and header[7] == 1.5 and header[9] == {"k": 1}
    outlet.close()
    inlet.close()


def test_payloads_larger_than_a_first_sample_and_tensors_arrive_whole(ctx):
    outlet, inlet = wire(ctx, "raw", bytes, where(), "push", transport="iox")
    big = bytes(range(256)) * 4096  # 1 MiB: the producer's segment grows
    outlet.send(big, None, 1, 0, None)
    [(value, _)] = records(inlet, 1)
    assert bytes(value) == big
    tensors, tin = wire(ctx, "tensor", Tensor("float32", (None,)), where(), "pub", transport="iox")
    array = np.arange(10_000, dtype=np.float32)
    tensors.send(array, None, 1, 0, None)
    [(got, _)] = records(tin, 1)
    assert np.array_equal(got, array)
    for end in (outlet, inlet, tensors, tin):
        end.close()


def test_a_consumer_that_starts_first_is_heard_once_its_producer_is_there(ctx):
    link = make_link(ctx)
    endpoint = where()
    inlet = make_inlet(link, "raw", bytes, endpoint, "push", transport="iox")  # its hello reaches nobody
    plan = edge_plan("push", transport="iox")
    bind = BindPlan(id="b", counter=0, endpoint=endpoint, transport="iox", pattern="push",
                    hwm=limits.send_hwm("iox", "push", 1000, None, 0), control_hwm=0, edges=[EDGE])
    outlet = Outlet(link, SRC, 0, "p", "out", [bind], {EDGE: plan}, get_codec("raw").encoder(bytes),
                    flusher=flusher(), own_flusher=True)
    assert not outlet.waiting_for()  # its subscriber is there: the producer may start
    assert outlet.channels[0].consumer(EDGE) is None  # ... but has not heard who it is
    deadline = time.monotonic() + 5
    while outlet.channels[0].consumer(EDGE) is None and time.monotonic() < deadline:
        read(inlet)  # the spinning loop's turn: the hello goes again
        serve(outlet)
    assert outlet.channels[0].consumer(EDGE) == 0
    outlet.close()
    inlet.close()


def test_control_messages_without_the_token_are_junk(ctx):
    outlet, inlet = wire(ctx, "raw", bytes, where(), "push", transport="iox")
    [isock] = inlet.polled
    isock.send(control(b"ack", EDGE, b"not-the-token"))
    isock.send(b"\x00nonsense")
    serve(outlet)
    mv, layout = outlet.link.counters.mv, outlet.link.counters.layout
    assert mv[layout.bind(0) + B_JUNK] == 2
    assert not outlet.channels[0].acked  # the ack without the token ended nothing
    isock.send(control(b"ack", EDGE, TOKEN))
    serve(outlet)
    assert outlet.channels[0].acked
    outlet.close()
    inlet.close()


def test_a_block_edge_whose_consumer_is_gone_drops_and_counts(ctx):
    outlet, inlet = wire(ctx, "raw", bytes, where(), "push", transport="iox", hwm=4, policy="block")
    for i in range(4):
        outlet.send(b"%d" % i, None, 1, 0, None)
    inlet.close()  # gone with four records in its buffer: a block send must not wait forever
    outlet.send(b"4", None, 1, 0, None)
    sent, dropped, received, _ = edge_counts(outlet)
    assert (sent, dropped, received) == (4, 1, 0)
    mv, layout = outlet.link.counters.mv, outlet.link.counters.layout
    assert mv[layout.edge(EDGE) + SENT] + mv[layout.edge(EDGE) + DROPPED] == 5
    assert mv[layout.edge(EDGE) + RECEIVED] == 0
    outlet.close()


def test_a_restarted_producer_is_heard_anew_and_its_restart_counted(ctx):
    from dmnflow.transport.stats import RESTARTS_SEEN

    endpoint = where()
    link = make_link(ctx)
    first, inlet = wire(ctx, "raw", bytes, endpoint, "push", transport="iox", link=link)
    for i in range(3):
        first.send(b"%d" % i, None, 1, 0, None)
    assert [bytes(v) for v, _ in records(inlet, 3)] == [b"0", b"1", b"2"]
    first.close()  # the producer's worker died; its successor binds the same edge
    [bind] = first.binds
    second = Outlet(link, SRC, 1, "p", "out", [bind], first.edge_plans, get_codec("raw").encoder(bytes),
                    flusher=flusher(), own_flusher=True)
    inlet.hello()  # what the worker does when the supervisor says the producer is back
    deadline = time.monotonic() + 5
    while second.channels[0].consumer(EDGE) != 0 and time.monotonic() < deadline:
        read(inlet)
        serve(second)
    assert second.channels[0].consumer(EDGE) == 0
    second.send(b"again", None, 1, 0, None)
    [(value, header)] = records(inlet, 1)
    assert bytes(value) == b"again" and header[2] == 1  # the new incarnation, counting from 0
    mv, layout = link.counters.mv, link.counters.layout
    assert mv[layout.edge(EDGE) + RESTARTS_SEEN] == 1
    second.close()
    inlet.close()

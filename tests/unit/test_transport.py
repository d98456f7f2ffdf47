"""The wire: real ZeroMQ sockets between an Outlet and an Inlet, including hostile frames."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from dmnflow.codecs import Limits, get_codec
from dmnflow.node import Tensor
from dmnflow.plan import BindPlan, ConnectPlan
from dmnflow.transport import DATA, Histogram, Inlet, Outlet

EDGE, SRC = 7, 3


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def pair(ctx, codec: str, tp, endpoint: str):
    """An Outlet bound to ``endpoint`` and an Inlet subscribed to it, joined and ready."""
    outlet = Outlet(ctx, SRC, 0, "out", [BindPlan(endpoint=endpoint, transport="inproc", pattern="pub",
                                                  hwm=1000, edges=[EDGE])],
                    get_codec(codec).encoder(tp), "/nonexistent", {})
    inlet = Inlet(ctx, "in", [ConnectPlan(edge=EDGE, node="p", port="out", endpoint=endpoint,
                                          transport="inproc", pattern="pub")],
                  {EDGE: SRC}, [], 1000, {EDGE: get_codec(codec).decoder(tp, Limits(max_bytes=1 << 20))},
                  "/nonexistent", {}, b"c", feedback=False)
    deadline = time.monotonic() + 5
    while outlet.waiting_for() and time.monotonic() < deadline:
        outlet.service(outlet.pubs[0].sock)
        time.sleep(0.001)
    assert not outlet.waiting_for()
    return outlet, inlet


def drain(inlet: Inlet, expect: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < expect and time.monotonic() < deadline:
        for sock in inlet.socks:
            got.extend(v for v, _ in inlet.receive(sock, 100))
        time.sleep(0.001)
    return got


def header(seq: int, meta) -> bytes:
    return msgpack.packb([DATA, SRC, 0, seq, time.time_ns(), 0, time.time_ns(), None, meta])


def test_values_arrive_in_order_with_their_metadata(ctx):
    outlet, inlet = pair(ctx, "msgpack", dict, "inproc://order")
    for i in range(100):
        outlet.send({"i": i}, None, 123, 0, 20240101 + i)
    got = drain(inlet, 100)
    assert got == [{"i": i} for i in range(100)]
    stats = inlet.stats[EDGE]
    assert (stats.received, stats.gaps, stats.decode_errors) == (100, 0, 0)
    assert stats.latency.n == 100


def test_hostile_frames_are_counted_and_dropped_and_the_input_keeps_working(ctx):
    outlet, inlet = pair(ctx, "tensor", Tensor("float32", (None,)), "inproc://hostile")
    raw = outlet.pubs[0].sock
    bomb_meta = ["np", "float32", [1 << 40]]
    hostile = [
        [b"out", b"\xff\xfe garbage"],  # a header that is not msgpack
        [b"out"],  # no header at all
        [b"out", header(0, ["np", "float32", [4]]), b"\x00" * 3],  # shape says 16 bytes, frame has 3
        [b"out", header(1, ["np", "complex256", [1]]), b"\x00" * 32],  # a dtype not allowed
        [b"out", header(2, bomb_meta), b"\x00" * 8],  # a shape that would be a terabyte
        [b"out", header(3, "not a tensor meta"), b"\x00" * 4],
        [b"out", msgpack.packb([DATA, 999, 0, 0, 0, 0, 0, None, None]), b""],  # from an unknown producer
    ]
    for parts in hostile:
        raw.send_multipart(parts)
    outlet.seq[b"out"] = 4  # the valid message continues the sequence the forged ones used
    outlet.send(np.arange(5, dtype=np.float32), None, 1, 0, None)
    [value] = drain(inlet, 1)
    assert value.tolist() == [0, 1, 2, 3, 4]
    assert inlet.stats[EDGE].decode_errors == len(hostile)  # every forged frame counted once
    assert inlet.open == {EDGE}  # the stream is still open


def test_lz4_bombs_are_refused_before_decompressing(ctx):
    outlet, inlet = pair(ctx, "msgpack+lz4", dict, "inproc://bomb")
    raw = outlet.pubs[0].sock
    raw.send_multipart([b"out", header(0, 1 << 34), b"\x1f\x00\x01\x00" * 4])  # claims 16 GiB
    outlet.seq[b"out"] = 1
    outlet.send({"ok": True}, None, 1, 0, None)
    assert drain(inlet, 1) == [{"ok": True}]
    assert inlet.stats[EDGE].decode_errors == 1


def test_end_of_stream_closes_the_edge_and_counts_the_tail(ctx):
    outlet, inlet = pair(ctx, "msgpack", int, "inproc://eos")
    outlet.send(1, None, 1, 0, None)
    outlet.seq[b"out"] = 10  # as if 9 more had been sent and lost
    outlet.send_eos()
    drain(inlet, 1)
    deadline = time.monotonic() + 5
    while inlet.open and time.monotonic() < deadline:
        for sock in inlet.socks:
            list(inlet.receive(sock, 10))
    assert not inlet.open and inlet.ended
    assert inlet.stats[EDGE].gaps == 9
    # the consumer's acknowledgement reaches the producer, which then stops re-sending
    deadline = time.monotonic() + 5
    while not outlet.flush_eos() and time.monotonic() < deadline:
        outlet.service(outlet.pubs[0].sock)
        time.sleep(0.001)
    assert outlet.flush_eos()


def test_histogram_quantiles_are_within_their_bucket():
    hist = Histogram()
    for ns in range(1_000, 101_000, 1_000):  # 1 us .. 100 us
        hist.add(ns)
    assert hist.n == 100
    assert hist.quantile(0.5) == pytest.approx(50_500, rel=0.1)
    assert hist.quantile(0.99) == pytest.approx(99_000, rel=0.1)
    assert Histogram.from_sparse(hist.to_sparse()).quantile(0.5) == hist.quantile(0.5)
    assert Histogram().quantile(0.5) is None



def test_a_shared_memory_slot_is_reused_only_after_every_view_of_it_is_gone():
    from dmnflow.transport import SHM_SLOTS, _ShmMaps, _ShmPool

    pool, maps = _ShmPool(1024), _ShmMaps()
    encode = get_codec("tensor").encoder(Tensor("float32", (None,)))
    decode = get_codec("tensor").decoder(Tensor("float32", (None,)), Limits())
    try:
        meta, frames = encode(np.full(1024, 1, dtype=np.float32))
        lease = pool.put(frames)
        first = decode(meta, [maps.attach(0, lease)])
        view = first[10:20]  # a node keeps only a view
        del first
        assert maps.frees == [] and pool.in_use() == 1  # the view still holds the slot
        meta2, frames2 = encode(np.full(1024, 2, dtype=np.float32))
        second = decode(meta2, [maps.attach(0, pool.put(frames2))])
        assert (view == 1).all() and (second == 2).all() and len(pool.slots) == 2  # no overwrite
        del view
        [(edge, slot, gen)] = maps.frees
        pool.free(slot, gen)
        pool.free(slot, gen - 1)  # a stale free (an older generation) changes nothing
        assert pool.in_use() == 1
        assert pool.put(encode(np.zeros(8, dtype=np.float32))[1]) is None  # small: through the socket
        held = [pool.put(encode(np.full(1024, i, dtype=np.float32))[1]) for i in range(SHM_SLOTS)]
        assert held.count(None) == 1  # all slots busy: the last one goes through the socket
    finally:
        maps.close()
        pool.close()

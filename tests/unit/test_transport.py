"""The wire: real ZeroMQ sockets between an Outlet and an Inlet, including hostile frames."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from dmnflow.codecs import Limits, get_codec
from dmnflow.compiler import limits
from dmnflow.node import Tensor
from dmnflow.plan import BindPlan, CoalescePlan, ConnectPlan, EdgePlan
from dmnflow.transport import BATCH, DATA, Counters, Histogram, Inlet, Layout, Link, Outlet
from dmnflow.transport.outlet import Flusher
from dmnflow.transport.shm import ShmMaps, ShmPool, lease_key, lease_mac, run_prefix, segment_prefix
from dmnflow.transport.stats import N_CONFLATED, POS_DONE, POS_RECEIVED
from dmnflow.transport.wire import EOS, SEP, control, eos_header, identity

from .conftest import WIRED

EDGE, SRC = 7, 3
TOKEN = b"0123456789abcdef0123456789abcdef"
TAG = "tag000000000"
KEY = lease_key(TOKEN)
RUN = run_prefix(TAG)  # what an inlet checks a lease's segment name against




COALESCE = CoalescePlan(records=64, bytes=64 << 10, record_max=8 << 10, gap_ns=20_000, max_age_ns=200_000)


def make_link(ctx) -> Link:
    return Link(ctx, "/nonexistent", TOKEN, TAG, Counters(Layout(edges=EDGE + 1, nodes=1, outputs=SRC + 1, binds=1)))


def edge_plan(pattern: str, *, policy: str = "drop", queue: int = 1000, delivery: str = "at-most-once",
              topics: list[str] | None = None, group: str | None = None, edge: int = EDGE,
              transport: str = "inproc", block_timeout: float | None = None) -> EdgePlan:
    return EdgePlan(id=edge, src="p", src_port="out", dst="c", dst_port="in", type="any", codec="raw",
                    transport=transport, endpoint="", bind="b", pattern=pattern, policy=policy, queue=queue,
                    topics=topics or [], feedback=False, delivery=delivery, group=group,
                    credit=limits.credit(transport, pattern, policy, queue), block_timeout_s=block_timeout)


def flusher() -> Flusher:
    """A coalescing output's flusher, at the pace the compiler gives every plan."""
    return Flusher(limits.LIMITS.flush_delay_s, limits.LIMITS.flush_delay_max_s)


def connect_plan(edge: int, endpoint: str, transport: str, pattern: str, hwm: int, queue: int = 1000) -> ConnectPlan:
    return ConnectPlan(edge=edge, bind="b", node="p", port="out", endpoint=endpoint, transport=transport,
                       pattern=pattern, hwm=hwm, credit_every=limits.credit_every(pattern, queue),
                       control_hwm=limits.connect_control_hwm(transport))


def wire(ctx, codec: str, tp, endpoint: str, pattern: str, *, hwm: int = 1000, policy: str = "drop",
         delivery: str = "at-most-once", link: Link | None = None, shm_above: int | None = None,
         max_bytes: int = 1 << 20, transport: str = "inproc", coalesce: bool = True, inc: int = 0,
         block_timeout: float | None = None, latest: bool = False):
    """An Outlet bound to ``endpoint`` and an Inlet connected to it, the consumer joined; the
    sockets' high-water marks and coalescing as the compiler sets them."""
    link = link or make_link(ctx)
    plan = edge_plan(pattern, policy=policy, queue=hwm, delivery=delivery, transport=transport,
                     block_timeout=block_timeout)
    co = COALESCE if coalesce and pattern == "push" and delivery != "at-least-once" else None
    send_hwm = limits.send_hwm(transport, pattern, hwm, co, plan.credit or hwm)
    bind = BindPlan(id="b", counter=0, endpoint=endpoint, transport=transport, pattern=pattern,
                    hwm=send_hwm, control_hwm=limits.control_hwm(transport, pattern), edges=[EDGE], coalesce=co,
                    shm=shm_above is not None)
    outlet = Outlet(link, SRC, 0, "p", "out", [bind], {EDGE: plan}, get_codec(codec).encoder(tp),
                    shm_above=shm_above, flusher=flusher(), own_flusher=True)
    link.resolved.update(outlet.bound)
    WIRED.append(outlet)
    inlet = make_inlet(link, codec, tp, endpoint, pattern, hwm=hwm, delivery=delivery, max_bytes=max_bytes,
                       transport=transport, coalesce=co, inc=inc, latest=latest)
    joined(outlet)
    return outlet, inlet


def make_inlet(link: Link, codec: str, tp, endpoint: str, pattern: str, *, hwm: int = 1000,
               delivery: str = "at-most-once", max_bytes: int = 1 << 20, transport: str = "inproc",
               coalesce: CoalescePlan | None = None, inc: int = 0, latest: bool = False) -> Inlet:
    """The consumer of ``wire``'s edge (incarnation ``inc``: a restarted one is a new inlet)."""
    receive_hwm = limits.receive_hwm(transport, pattern, hwm, coalesce)
    return Inlet(link, "in", "c", [connect_plan(EDGE, endpoint, transport, pattern, receive_hwm, hwm)],
                 {EDGE: SRC}, [], hwm, {EDGE: get_codec(codec).decoder(tp, Limits(max_bytes=max_bytes))},
                 feedback=False, max_bytes=max_bytes, delivery=delivery, inc=inc, latest=latest,
                 conflated=link.counters.layout.node(0) + N_CONFLATED)


def joined(outlet: Outlet) -> None:
    """Wait until every consumer of ``outlet`` has said hello."""
    deadline = time.monotonic() + 5
    while outlet.waiting_for() and time.monotonic() < deadline:
        for sock in outlet.sockets():
            outlet.service(sock)
        outlet.spin()  # the channels with nothing to poll (iox)
        time.sleep(0.001)
    assert not outlet.waiting_for()


def pair(ctx, codec: str, tp, endpoint: str):
    return wire(ctx, codec, tp, endpoint, "pub")


def drain(inlet: Inlet, expect: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < expect and time.monotonic() < deadline:
        for sock in inlet.socks:
            got.extend(v for v, _ in inlet.receive(sock, 100))
        time.sleep(0.001)
    return got


def header(seq: int, meta, **change) -> bytes:
    fields = [DATA, SRC, 0, seq, time.time_ns(), 0, time.time_ns(), None, meta, None]
    names = ["kind", "src", "inc", "seq", "origin_ns", "origin", "send_ns", "event_time", "meta", "attrs"]
    for key, value in change.items():
        fields[names.index(key)] = value
    return msgpack.packb(fields)


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
    raw = outlet.channels[0].sock
    bomb_meta = ["np", "float32", [1 << 40]]
    hostile = [
        [b"out", b"\xff\xfe garbage"],  # a header that is not msgpack
        [b"out"],  # no header at all
        [b"out", header(0, ["np", "float32", [4]]), b"\x00" * 3],  # shape says 16 bytes, frame has 3
        [b"out", header(1, ["np", "complex256", [1]]), b"\x00" * 32],  # a dtype not allowed
        [b"out", header(2, bomb_meta), b"\x00" * 8],  # a shape that would be a terabyte
        [b"out", header(3, "not a tensor meta"), b"\x00" * 4],
        [b"out", msgpack.packb([DATA, 999, 0, 0, 0, 0, 0, None, None, None]), b""],  # an unknown producer
    ]
    for parts in hostile:
        raw.send_multipart(parts)
    outlet.channels[0].seq[b"out"] = 4  # the valid message continues the sequence the forged ones used
    outlet.send(np.arange(5, dtype=np.float32), None, 1, 0, None)
    [value] = drain(inlet, 1)
    assert value.tolist() == [0, 1, 2, 3, 4]
    assert inlet.stats[EDGE].decode_errors == len(hostile)  # every forged frame counted once
    assert inlet.open == {EDGE}  # the stream is still open


def test_lz4_bombs_are_refused_before_decompressing(ctx):
    outlet, inlet = pair(ctx, "msgpack+lz4", dict, "inproc://bomb")
    raw = outlet.channels[0].sock
    raw.send_multipart([b"out", header(0, 1 << 34), b"\x1f\x00\x01\x00" * 4])  # claims 16 GiB
    outlet.channels[0].seq[b"out"] = 1
    outlet.send({"ok": True}, None, 1, 0, None)
    assert drain(inlet, 1) == [{"ok": True}]
    assert inlet.stats[EDGE].decode_errors == 1


def test_end_of_stream_closes_the_edge_and_counts_the_tail(ctx):
    outlet, inlet = pair(ctx, "msgpack", int, "inproc://eos")
    outlet.send(1, None, 1, 0, None)
    outlet.channels[0].seq[b"out"] = 10  # as if 9 more had been sent and lost
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
        outlet.service(outlet.channels[0].sock)
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
    slots = 16
    prefix = segment_prefix(TAG, SRC)
    pool, maps = ShmPool(1024, slots, prefix, KEY), ShmMaps(32, KEY)
    encode = get_codec("tensor").encoder(Tensor("float32", (None,)))
    decode = get_codec("tensor").decoder(Tensor("float32", (None,)), Limits())
    try:
        meta, frames = encode(np.full(1024, 1, dtype=np.float32))
        lease = pool.put(frames)
        first = decode(meta, [maps.attach(0, lease, RUN, 1 << 20)])
        view = first[10:20]  # a node keeps only a view
        del first
        assert maps.frees == [] and pool.in_use() == 1  # the view still holds the slot
        meta2, frames2 = encode(np.full(1024, 2, dtype=np.float32))
        second = decode(meta2, [maps.attach(0, pool.put(frames2), RUN, 1 << 20)])
        assert (view == 1).all() and (second == 2).all() and len(pool.slots) == 2  # no overwrite
        del view
        [(edge, slot, gen)] = maps.frees
        pool.free(slot, gen)
        pool.free(slot, gen - 1)  # a stale free (an older generation) changes nothing
        assert pool.in_use() == 1
        assert pool.put(encode(np.zeros(8, dtype=np.float32))[1]) is None  # small: through the socket
        held = [pool.put(encode(np.full(1024, i, dtype=np.float32))[1]) for i in range(slots)]
        assert held.count(None) == 1  # all slots busy: the last one goes through the socket
    finally:
        maps.close()
        pool.close()


# ------------------------------------------------------------------ push edges: coalesced bursts

def push_pair(ctx, endpoint: str, codec: str = "raw", tp=bytes, hwm: int = 64_000, block: bool = True,
              coalesce: bool = True):
    """An Outlet binding a push edge and an Inlet connected to it, the consumer joined (a tcp
    endpoint for a bounded queue: inside one process the runtime never bounds an edge)."""
    return wire(ctx, codec, tp, endpoint, "push", hwm=hwm, policy="block" if block else "drop",
                transport="tcp" if endpoint.startswith("tcp") else "inproc", coalesce=coalesce)


def drain_headers(inlet: Inlet, expect: int) -> list:
    got: list = []
    deadline = time.monotonic() + 5
    while len(got) < expect and time.monotonic() < deadline:
        for sock in inlet.socks:
            got.extend(inlet.receive(sock, 1000))
        time.sleep(0.001)
    return got


def zmq_messages(inlet: Inlet) -> int:
    """How many ZeroMQ messages are waiting on the inlet's DEALER (read and put nowhere)."""
    sock = inlet.socks[0]
    n = 0
    while sock.poll(50):
        parts = sock.recv_multipart()
        n += 1
        assert len(parts) in (1, 3)  # a batch is one frame; a single record is topic, header, payload
    return n


def test_a_burst_on_a_push_edge_goes_in_few_messages_and_every_record_keeps_its_header(ctx):
    outlet, inlet = push_pair(ctx, "inproc://burst")
    n = 1000
    for i in range(n):
        topic = b"t.%d" % (i % 3)
        outlet.send(b"%d" % i, topic, 1000 + i, 0, 20240101 + i, {"i": i} if i % 7 == 0 else None)
    outlet.flush()
    got = drain_headers(inlet, n)
    assert [bytes(v) for v, _ in got] == [b"%d" % i for i in range(n)]  # every record, in order
    for i, (_, header) in enumerate(got):
        assert len(header) == 11  # the worker's view: the 10 header fields, then the topic
        assert header[10] == b"t.%d" % (i % 3)
        assert (header[4], header[5], header[7], header[9]) == (1000 + i, 0, 20240101 + i,
                                                                {"i": i} if i % 7 == 0 else None)
    seqs: dict[bytes, list[int]] = {}
    for _, header in got:
        seqs.setdefault(header[10], []).append(header[3])
    assert all(s == list(range(len(s))) for s in seqs.values())  # per-topic sequence, gap-free
    stats = inlet.stats[EDGE]
    assert (stats.received, stats.gaps, stats.decode_errors) == (n, 0, 0)
    assert outlet.stats[EDGE].sent == n and stats.latency.n == n


def test_a_burst_is_coalesced_and_a_record_after_a_quiet_gap_goes_at_once(ctx):
    outlet, inlet = push_pair(ctx, "inproc://coalesce")
    for _ in range(200):
        outlet.send(b"x", None, 1, 0, None)
    outlet.flush()
    assert 4 <= zmq_messages(inlet) <= 40  # the first alone, then batches of up to 64 (or what the flusher took)
    time.sleep(0.01)
    outlet.send(b"alone", None, 1, 0, None)  # a quiet gap before it: no waiting
    assert not outlet.channels[0].pending
    assert zmq_messages(inlet) == 1


def test_end_of_stream_follows_every_coalesced_record(ctx):
    outlet, inlet = push_pair(ctx, "inproc://eos-burst")
    for i in range(100):
        outlet.send(b"%d" % i, None, 1, 0, None)
    outlet.send_eos()  # the tail of the burst, still waiting to be coalesced, goes before the end
    got = []
    deadline = time.monotonic() + 5
    while inlet.open and time.monotonic() < deadline:
        for sock in inlet.socks:
            got.extend(v for v, _ in inlet.receive(sock, 1000))
    assert not inlet.open
    assert [bytes(v) for v in got] == [b"%d" % i for i in range(100)]
    assert (inlet.stats[EDGE].received, inlet.stats[EDGE].gaps) == (100, 0)


def test_the_flusher_sends_a_burst_tail_while_the_producer_is_busy_elsewhere(ctx):
    outlet, inlet = push_pair(ctx, "inproc://tail")
    for i in range(10):
        outlet.send(b"%d" % i, None, 1, 0, None)
    got = drain_headers(inlet, 10)  # nobody calls flush: the flusher thread sends the tail
    assert [bytes(v) for v, _ in got] == [b"%d" % i for i in range(10)]
    outlet.close()


def test_a_full_consumer_on_a_drop_edge_counts_every_coalesced_record(ctx):
    outlet, inlet = push_pair(ctx, "tcp://127.0.0.1:*", hwm=2, block=False)
    n = 5000
    for i in range(n):
        outlet.send(b"%d" % i, None, 1, 0, None)
    outlet.flush()
    sent, dropped = outlet.stats[EDGE].sent, outlet.stats[EDGE].dropped
    got = drain_headers(inlet, sent)
    assert dropped > 0 and sent + dropped == n
    assert len(got) == inlet.stats[EDGE].received == sent
    values = [int(bytes(v)) for v, _ in got]
    assert values == sorted(values)


def test_hostile_batches_are_counted_and_the_input_keeps_working(ctx):
    outlet, inlet = push_pair(ctx, "inproc://hostile-batch")
    peer = outlet.channels[0].peers[EDGE]
    raw = outlet.channels[0].sock
    good = [DATA, SRC, 0, 0, 1, 0, time.time_ns(), None, None, None, b"out", b"ok"]
    hostile = [
        SEP + b"\xc1 not msgpack",
        b"no separator and nothing more",
        SEP + msgpack.packb([BATCH, 999, 0, [good]]),  # an unknown producer
        SEP + msgpack.packb([BATCH, SRC, 0, "not a list"]),
        SEP + msgpack.packb([BATCH, SRC, 0, [[1, 2, 3], "x", [*good[:3], "seq", *good[4:]]]]),  # three bad records
    ]
    for body in hostile:
        raw.send_multipart([peer, body])
    raw.send_multipart([peer, SEP + msgpack.packb([BATCH, SRC, 0, [good]])])
    got = drain_headers(inlet, 1)
    assert [bytes(v) for v, _ in got] == [b"ok"]
    assert inlet.stats[EDGE].decode_errors == 4 + 3
    assert inlet.open == {EDGE}


def test_with_coalescing_off_every_record_is_its_own_message(ctx):
    outlet, inlet = push_pair(ctx, "inproc://single", coalesce=False)
    for _ in range(50):
        outlet.send(b"x", None, 1, 0, None)
    assert zmq_messages(inlet) == 50


# ------------------------------------------------------------------ loaned shared-memory slots (ctx.alloc)

def test_an_emitted_loan_goes_without_a_copy_and_its_slot_waits_for_both_sides():
    import gc

    prefix = segment_prefix(TAG, SRC)
    pool, maps = ShmPool(1024, 16, prefix, KEY), ShmMaps(32, KEY)
    decode = get_codec("tensor").decoder(Tensor("float32", (None,)), Limits())
    try:
        holder = pool.loan(4096)
        assert pool.loan(512) is None  # under the threshold: an ordinary array instead
        array = np.frombuffer(holder, dtype=np.float32)
        array[:] = 7
        lease = pool.put([memoryview(array).cast("B")])
        assert lease is not None and len(pool.slots) == 1  # the loaned slot itself, no second one
        received = decode(["np", "float32", [1024]], [maps.attach(0, lease, RUN, 1 << 20)])
        array[0] = 9  # (never do this after emit) the consumer sees it: one memory, nothing copied
        assert received[0] == 9 and (received[1:] == 7).all()
        del received
        [(_, slot, gen)] = maps.frees
        pool.free(slot, gen)
        assert pool.in_use() == 1  # the consumer is done, but the node still holds its array
        again = pool.put([memoryview(array).cast("B")])  # emitting it twice: the second is a copy
        assert again is not None and again[2] != lease[2]
        pool.free(again[2], again[3])
        del array, holder
        gc.collect()
        assert pool.in_use() == 0 and not pool.loans
        unused = pool.loan(4096)  # a loan never emitted is given back when its arrays are gone
        assert pool.in_use() == 1
        del unused
        gc.collect()
        assert pool.in_use() == 0
    finally:
        maps.close()
        pool.close()


def test_outlet_alloc_loans_only_on_a_lone_shared_memory_edge(ctx):
    tp = Tensor("float32", (None,))
    link = make_link(ctx)

    def outlet(pattern: str, endpoint: str) -> Outlet:
        bind = BindPlan(id=endpoint, counter=0, endpoint=endpoint, transport="inproc", pattern=pattern, hwm=100,
                        control_hwm=limits.control_hwm("inproc", pattern), edges=[EDGE],
                        coalesce=COALESCE if pattern == "push" else None, shm=True)
        return Outlet(link, SRC, 0, "p", "out", [bind], {EDGE: edge_plan(pattern)}, get_codec("tensor").encoder(tp),
                      shm_above=1024, loans=True, flusher=flusher(), own_flusher=True)

    push, pub = outlet("push", "inproc://alloc-push"), outlet("pub", "inproc://alloc-pub")
    loaned = None
    try:
        loaned = push.alloc((16, 64), "float32")
        assert loaned.shape == (16, 64) and loaned.dtype == np.float32 and loaned.flags.writeable
        assert push.channels[0].pool.in_use() == 1
        on_pub = pub.alloc(1024, np.float32)  # a pub edge lends a slot too
        assert on_pub.base is not None and pub.channels[0].pool.in_use() == 1
        del on_pub
        assert push.alloc(8, "float32").base is None  # small: ordinary memory
    finally:
        del loaned
        push.close()
        pub.close()


def _pub_to_two(ctx, endpoint: str, shm_above: int = 1024):
    """One pub outlet with shared memory, two subscribers (edges 7 and 8), both joined."""
    link = Link(ctx, "/nonexistent", TOKEN, TAG, Counters(Layout(edges=9, nodes=1, outputs=SRC + 1, binds=1)))
    plans = {e: edge_plan("pub", edge=e) for e in (7, 8)}
    bind = BindPlan(id="b", counter=0, endpoint=endpoint, transport="ipc", pattern="pub", hwm=1000, control_hwm=0,
                    edges=[7, 8], shm=True)
    outlet = Outlet(link, SRC, 0, "p", "out", [bind], plans, get_codec("raw").encoder(bytes), shm_above=shm_above,
                    flusher=flusher(), own_flusher=True)
    link.resolved.update(outlet.bound)
    inlets = {e: Inlet(link, "in", f"c{e}", [connect_plan(e, endpoint, "ipc", "pub", 1000)],
                       {e: SRC}, [], 1000, {e: get_codec("raw").decoder(memoryview, Limits())}, feedback=False,
                       max_bytes=1 << 20) for e in (7, 8)}
    joined(outlet)
    return outlet, inlets


def _frees_reach(outlet, inlets, until) -> None:
    deadline = time.monotonic() + 5
    while not until() and time.monotonic() < deadline:
        for inlet in inlets:
            inlet.send_frees()
        time.sleep(0.002)
        outlet.channels[0].service()


def test_a_pub_edge_hands_every_subscriber_the_same_shared_memory_slot(ctx, tmp_path):
    import gc

    outlet, inlets = _pub_to_two(ctx, f"ipc://{tmp_path}/pub-shm")
    pool = outlet.channels[0].pool
    try:
        payloads = [bytes([i]) * 4096 for i in range(20)]
        for p in payloads:
            outlet.send(p, None, 1, 0, None)
        got = {e: drain(inlet, 20) for e, inlet in inlets.items()}
        for e in (7, 8):
            assert [bytes(v) for v in got[e]] == payloads, e
            assert inlets[e].stats[e].decode_errors == 0
        assert len(pool.slots) == 16 and pool.in_use() == 16  # 4 went by the socket: every slot was taken
        del got[7]
        gc.collect()
        _frees_reach(outlet, [inlets[7]], lambda: False)
        assert pool.in_use() == 16  # edge 8 still holds its arrays
        del got
        gc.collect()
        _frees_reach(outlet, inlets.values(), lambda: pool.in_use() == 0)
        assert pool.in_use() == 0
        assert outlet.link.counters.mv[outlet.link.counters.layout.bind(0)] == 0  # no frees counted as junk
    finally:
        outlet.close()
        for inlet in inlets.values():
            inlet.close()


def test_a_subscriber_the_lease_does_not_name_copies_and_frees_nothing(ctx, tmp_path):
    import gc

    outlet, inlets = _pub_to_two(ctx, f"ipc://{tmp_path}/pub-late")
    pool = outlet.channels[0].pool
    try:
        outlet.channels[0].joined.discard(8)  # as if it had joined after the lease went
        outlet.send(b"a" * 4096, None, 1, 0, None)
        [first7], [first8] = drain(inlets[7], 1), drain(inlets[8], 1)
        del first7
        gc.collect()
        _frees_reach(outlet, inlets.values(), lambda: pool.in_use() == 0)
        assert pool.in_use() == 0  # edge 7 freed it; edge 8 was never counted
        outlet.channels[0].joined.add(8)
        outlet.send(b"b" * 4096, None, 1, 0, None)  # the same slot, written again
        assert bytes(drain(inlets[7], 1)[0]) == b"b" * 4096
        assert bytes(first8) == b"a" * 4096  # its own copy: untouched
    finally:
        outlet.close()
        for inlet in inlets.values():
            inlet.close()


def test_a_slot_its_readers_have_passed_without_freeing_it_is_replaced_and_the_old_mapping_stays_intact():
    prefix = segment_prefix(TAG, SRC)
    pool, maps = ShmPool(1024, 3, prefix, KEY), ShmMaps(32, KEY)
    try:
        # edges 7 and 8 get three leases; 7 keeps the first (mapped), 8 never got it (the pub socket dropped it)
        leases = [pool.put([bytes([i]) * 2048], readers=[7, 8]) for i in (1, 2, 3)]
        held = maps.attach(7, leases[0], RUN, 1 << 20)
        pool.free(leases[2][2], leases[2][3], 8)  # 8 is past the first (it freed the third)...
        assert pool.put([b"x" * 2048], readers=[7, 8]) is None  # ...7 is not (it might not have read it): wait
        pool.free(leases[1][2], leases[1][3], 7)  # 7 frees the second: so it maps the first already
        lease = pool.put([b"z" * 2048], readers=[7, 8])  # the oldest slot both are past is replaced
        assert lease is not None and pool.reclaimed == 1 and lease[2] == 0 and lease[1] != leases[0][1]
        assert bytes(held) == bytes([1]) * 2048  # the old segment, still mapped by 7, unchanged
        import os

        old = f"/dev/shm/{leases[0][1]}"
        assert pool.retired and os.path.exists(old)  # still linked: a forward of its lease may be on its way
        pool.free(leases[0][2], leases[0][3], 7)  # a late free of the replaced lease: only the old one's
        assert pool.slots[0][1] == {7, 8} and os.path.exists(old)  # 8 has not freed it
        pool.gone(8)  # a consumer that left frees nothing more, and holds nothing any longer
        assert all(8 not in slot[1] for slot in pool.slots)
        assert not pool.retired and not os.path.exists(old)  # nobody reads the old segment: unlinked
    finally:
        del held
        maps.close()
        pool.close()


def test_ctx_alloc_without_a_runtime_is_an_ordinary_array():
    from dmnflow.node import Context, NoParams

    array = Context("n", NoParams(), lambda *a: None).alloc("out", (2, 3), "int16")
    assert array.shape == (2, 3) and array.dtype == np.int16 and array.base is None


# ------------------------------------------------------------------ nothing a peer sends is trusted

def _good(outlet, inlet, n: int = 1) -> list:
    """``n`` real messages after the junk: they arrive, so the input still works."""
    for _ in range(n):
        outlet.send(b"ok", None, 1, 0, None)
    outlet.flush()
    return drain_headers(inlet, n)


HOSTILE_HEADERS = {
    "another kind, short": msgpack.packb([5, SRC, 0]),
    "end-of-stream, short": msgpack.packb([EOS, SRC, 0]),
    "totals keyed by ints": msgpack.packb([EOS, SRC, 0, 0, 0, -1, 1, None, {1: 2}, {"token": TOKEN}]),
    "totals of text": msgpack.packb([EOS, SRC, 0, 0, 0, -1, 1, None, {b"out": "x"}, {"token": TOKEN}]),
    "incarnation not an int": header(0, None, inc="x"),
    "send_ns -2**63": header(0, None, send_ns=-2**63),
    "send_ns past int64": header(0, None, send_ns=2**64 - 1),
    "origin not an int": header(0, None, origin="a"),
    "origin_ns negative": header(0, None, origin_ns=-5),
    "event time a list": header(0, None, event_time=[1, 2]),
    "event time NaN": header(0, None, event_time=float("nan")),
    "attrs a list": header(0, None, attrs=[1]),
    "seq negative": header(-1, None),
    "eleven fields": msgpack.packb([DATA, SRC, 0, 0, 1, 0, 1, None, None, None, None]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_a_malformed_header_is_counted_and_the_input_keeps_working(ctx, case):
    outlet, inlet = push_pair(ctx, f"inproc://bad-{abs(hash(case))}")
    router = outlet.channels[0]
    router.sock.send_multipart([router.peers[EDGE], b"out", HOSTILE_HEADERS[case], b"payload"])
    got = _good(outlet, inlet)
    assert [bytes(v) for v, _ in got] == [b"ok"]
    assert inlet.stats[EDGE].decode_errors == 1 and inlet.open == {EDGE}


def test_malformed_records_inside_a_batch_are_counted_one_by_one(ctx):
    outlet, inlet = push_pair(ctx, "inproc://bad-batch")
    router = outlet.channels[0]
    now = time.time_ns()
    good = [DATA, SRC, 0, 0, 1, 0, now, None, None, None, b"out", b"ok"]
    bad = [[DATA, SRC, "x", 1, 1, 0, now, None, None, None, b"out", b"a"],  # incarnation
           [DATA, SRC, 0, 2, 1, 0, -2**63, None, None, None, b"out", b"b"],  # send_ns
           [DATA, SRC, 0, 3, 1, 0, now, None, ["shm", 5, 0, 0, 10, None], None, b"out", b"c"],  # a lease
           [EOS, SRC, 0, 4, 0, -1, now, None, {}, None, b"out", b""],  # an end inside a batch
           [DATA, SRC, 0, 5, 1, 0, now, [1], None, None, b"out", b"e"]]  # an event time of a list
    router.sock.send_multipart([router.peers[EDGE], SEP + msgpack.packb([BATCH, SRC, 0, [good, *bad]])])
    got = drain_headers(inlet, 1)
    assert [bytes(v) for v, _ in got] == [b"ok"]
    assert inlet.stats[EDGE].decode_errors == len(bad) and inlet.open == {EDGE}


def test_an_end_of_stream_without_the_runs_token_ends_nothing(ctx):
    outlet, inlet = pair(ctx, "msgpack", int, "inproc://forged-eos")
    raw = outlet.channels[0].sock
    forged = eos_header(msgpack.Packer(use_bin_type=True), SRC, 0, {b"out": 0}, time.time_ns(), b"guessed")
    raw.send_multipart([b"\x00eos", forged])
    raw.send_multipart([b"\x00eos", msgpack.packb([EOS, SRC, 0, 0, 0, -1, 1, None, {}, None])])
    outlet.send(5, None, 1, 0, None)
    assert drain(inlet, 1) == [5]
    assert inlet.open == {EDGE} and inlet.stats[EDGE].decode_errors == 2


def test_event_times_of_numbers_and_text_never_mix_on_one_input(ctx):
    outlet, inlet = pair(ctx, "msgpack", int, "inproc://mixed-times")
    outlet.send(1, None, 1, 0, 20240101)
    outlet.send(2, None, 1, 0, "2024-01-02")  # a join's heap would fail comparing it with the first
    outlet.send(3, None, 1, 0, 20240103.5)
    assert drain(inlet, 2) == [1, 3]
    assert inlet.stats[EDGE].decode_errors == 1


def test_control_messages_without_the_token_or_from_a_stranger_are_junk(ctx):
    link = make_link(ctx)
    outlet, inlet = wire(ctx, "raw", bytes, "inproc://strangers", "push", policy="block", link=link)
    router = outlet.channels[0]
    stranger = ctx.socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.connect("inproc://strangers")
    stranger.send(control(b"hello", EDGE, TOKEN, 0))  # the right token, but not the consumer's identity
    peer = router.peers[EDGE]
    for body in (b"\x00hello/7/guess/0", b"\x00ack/7/guess", b"\x00free/7/guess/0/1", b"\x00done/7/guess/99",
                 b"garbage", b"\x00ack/999/" + TOKEN):
        stranger.send(body)
    time.sleep(0.1)
    outlet.service(router.sock)
    assert router.peers[EDGE] == peer and not router.acked  # nobody took the consumer's place, nothing ended
    junk = link.counters.mv[link.counters.layout.bind(0)]
    assert junk == 7
    assert [bytes(v) for v, _ in _good(outlet, inlet)] == [b"ok"]
    stranger.close()


def test_a_lease_on_a_segment_the_producer_does_not_own_is_refused_and_never_mapped(ctx):
    from multiprocessing import shared_memory

    victim = shared_memory.SharedMemory(create=True, size=4096)  # another program's segment
    try:
        victim.buf[:5] = b"12345"
        outlet, inlet = push_pair(ctx, "inproc://bad-lease", codec="tensor", tp=Tensor("uint8", (None,)))
        router = outlet.channels[0]
        mac = lease_mac(KEY, victim.name, 0, 1, 5)  # even a right MAC does not make another's name ours
        for lease in (["shm", victim.name, 0, 1, 5, mac, ["np", "uint8", [5]]],
                      ["shm", segment_prefix(TAG, SRC) + "../" + victim.name, 0, 1, 5, mac, ["np", "uint8", [5]]],
                      ["shm", 12, 0, 1, 5, mac, ["np", "uint8", [5]]],
                      ["shm", segment_prefix(TAG, SRC) + "0" * 16, 0, 1, "5", mac, ["np", "uint8", [5]]]):
            router.sock.send_multipart([router.peers[EDGE], b"out", header(0, lease)])
        outlet.send(np.arange(3, dtype=np.uint8), None, 1, 0, None)
        outlet.flush()
        got = drain_headers(inlet, 1)
        assert [v.tolist() for v, _ in got] == [[0, 1, 2]]
        assert inlet.stats[EDGE].decode_errors == 4 and not inlet.shm.maps
    finally:
        victim.close()
        victim.unlink()


def test_a_lease_on_a_segment_made_by_a_peer_that_knows_the_tag_is_refused_before_it_is_mapped(ctx):
    from multiprocessing import shared_memory

    # the tag is public (/dev/shm lists it): the peer makes a segment of a name the producer could have
    forged = shared_memory.SharedMemory(create=True, size=4096, name=segment_prefix(TAG, SRC) + "ab" * 8)
    try:
        forged.buf[:5] = b"\x07" * 5
        outlet, inlet = push_pair(ctx, "inproc://forged-lease", codec="tensor", tp=Tensor("uint8", (None,)))
        router = outlet.channels[0]
        for mac in (b"\x00" * 16, lease_mac(lease_key(b"another run's token"), forged.name, 0, 1, 5), None):
            router.sock.send_multipart([router.peers[EDGE], b"out",
                                        header(0, ["shm", forged.name, 0, 1, 5, mac, ["np", "uint8", [5]]])])
        router.sock.send_multipart([router.peers[EDGE], b"out", header(0, ["shm", forged.name, 0, 1, 5,
                                                                            ["np", "uint8", [5]]])])  # no MAC
        outlet.send(np.arange(3, dtype=np.uint8), None, 1, 0, None)
        outlet.flush()
        got = drain_headers(inlet, 1)
        assert [v.tolist() for v, _ in got] == [[0, 1, 2]]  # 0 forged values
        assert inlet.stats[EDGE].decode_errors == 4 and not inlet.shm.maps  # counted, nothing mapped
    finally:
        forged.close()
        forged.unlink()


def test_a_lease_whose_fields_were_changed_fails_its_mac():
    prefix = segment_prefix(TAG, SRC)
    pool, maps = ShmPool(1024, 2, prefix, KEY), ShmMaps(8, KEY)
    try:
        lease = pool.put([np.ones(1024, np.uint8).tobytes()])
        assert lease is not None and len(lease) == 6 and len(lease[5]) == 16
        assert lease[1].startswith(prefix) and lease[1] != pool.put([bytes(2048)])[1]  # names are not predictable
        for index, value in ((2, 1), (3, lease[3] + 1), (4, 512)):  # another slot, generation, size
            changed = list(lease)
            changed[index] = value
            with pytest.raises(ValueError, match="did not make"):
                maps.attach(0, changed, RUN, 1 << 20)
        assert not maps.maps
        assert bytes(maps.attach(0, lease, RUN, 1 << 20))[:3] == b"\x01\x01\x01"  # the real one maps
    finally:
        maps.close()
        pool.close()


def test_a_received_shared_memory_array_is_read_only(ctx):
    prefix = segment_prefix(TAG, SRC)
    pool, maps = ShmPool(1024, 4, prefix, KEY), ShmMaps(8, KEY)
    decode = get_codec("tensor").decoder(Tensor("float32", (None,)), Limits())
    try:
        meta, frames = get_codec("tensor").encoder(Tensor("float32", (None,)))(np.ones(1024, np.float32))
        array = decode(meta, [maps.attach(0, pool.put(frames), RUN, 1 << 20)])
        assert not array.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 5
        del array
    finally:
        maps.close()
        pool.close()


# ------------------------------------------------------------------ stream ports: a fixed port for everyone

def test_a_stream_port_holds_a_block_edge_to_its_credit_and_serves_an_outside_subscriber(ctx):
    link = make_link(ctx)
    port = "tcp://127.0.0.1:*"
    outlet, inlet = wire(ctx, "raw", bytes, port, "stream", hwm=8, policy="block", link=link, transport="tcp")
    address = outlet.bound["b"]
    tap = ctx.socket(zmq.SUB)
    tap.setsockopt(zmq.LINGER, 0)
    tap.connect(address)
    tap.subscribe(b"out")
    deadline = time.monotonic() + 5
    shared = outlet.channels[0].shared
    while not shared.tapped and time.monotonic() < deadline:
        shared.service()
        time.sleep(0.01)
    assert shared.tapped  # the outside subscriber is seen
    for i in range(8):
        outlet.send(b"%d" % i, None, 1, 0, None)
    assert outlet.channels[0].room(EDGE) is False  # the consumer has not read: no credit left
    got = drain_headers(inlet, 8)
    assert [bytes(v) for v, _ in got] == [b"%d" % i for i in range(8)] and got[0][1][10] == b"out"
    for i in range(8, 20):  # credit comes back as the consumer reads: nothing is lost, nothing waits forever
        deadline = time.monotonic() + 10
        # one thread: the consumer reads (and reports its credit) before the producer would wait for it
        while not outlet.channels[0].room(EDGE) and time.monotonic() < deadline:
            for sock in inlet.socks:
                list(inlet.receive(sock, 100))
            outlet.channels[0].shared.service()
        assert outlet.channels[0].room(EDGE), f"no credit came back for record {i}"
        outlet.send(b"%d" % i, None, 1, 0, None)
        for sock in inlet.socks:
            list(inlet.receive(sock, 100))
    seen = []
    while tap.poll(200):
        seen.append(tap.recv_multipart())
    assert [m[2] for m in seen] == [b"%d" % i for i in range(20)]  # the tap gets the stream on its own topic
    assert msgpack.unpackb(seen[0][1])[3] == 0
    tap.close()


def test_a_restarted_consumer_on_a_stream_port_gets_credit_afresh(ctx):
    link = make_link(ctx)
    outlet, first = wire(ctx, "raw", bytes, "tcp://127.0.0.1:*", "stream", hwm=8, policy="block", link=link,
                         transport="tcp")
    for i in range(40):  # five windows' worth, read as they come: the first consumer's credit is large
        while not outlet.channels[0].room(EDGE):  # (one thread: read before the producer would wait)
            for sock in first.socks:
                list(first.receive(sock, 100))
            outlet.channels[0].shared.service()
        outlet.send(b"%d" % i, None, 1, 0, None)
    first.close()  # killed; its successor comes with a new incarnation and counts from zero
    connect = connect_plan(EDGE, "tcp://127.0.0.1:*", "tcp", "stream", 8 + 64, queue=8)
    second = Inlet(link, "in", "c", [connect], {EDGE: SRC}, [], 8, {EDGE: get_codec("raw").decoder(bytes)},
                   feedback=False, max_bytes=1 << 20, inc=1)
    shared = outlet.channels[0].shared
    deadline = time.monotonic() + 5
    while shared.consumer_inc.get(EDGE) != 1 and time.monotonic() < deadline:
        shared.service()
        time.sleep(0.01)
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    for i in range(40, 80):
        while not outlet.channels[0].room(EDGE) and time.monotonic() < deadline:  # no credit if the old one counted
            for sock in second.socks:
                got.extend(bytes(v) for v, _ in second.receive(sock, 100))
            shared.service()
        assert outlet.channels[0].room(EDGE), f"no credit for record {i}"
        outlet.send(b"%d" % i, None, 1, 0, None)
    got += [bytes(v) for v, _ in drain_headers(second, 80 - 40 - len(got))]
    assert got == [b"%d" % i for i in range(40, 80)]
    second.close()


def test_at_least_once_sequences_belong_to_the_edge_across_both_ends_restarts(ctx):
    """At-least-once: a restarted consumer starts where its predecessor had handled (its
    positions, carried in the counters file), a restarted producer emits again under the same
    sequence numbers; what was had is dropped (handled once), what a killed incarnation had
    received but not handled is handed over again, and each sequence number counts once as
    received, whichever incarnation of either end it came from."""
    link = make_link(ctx)
    base = link.counters.layout.edge(EDGE)
    link.counters.mv[base + POS_DONE] = 9  # the killed predecessor had handled up to 8 ...
    link.counters.mv[base + POS_RECEIVED] = 10  # ... and received up to 9
    outlet, inlet = wire(ctx, "raw", bytes, "inproc://alo-restart", "push", policy="block",
                         delivery="at-least-once", inc=1, link=link)
    peer, raw = outlet.channels[0].peers[EDGE], outlet.channels[0].sock

    def record(seq: int, inc: int = 0) -> bytes:
        return b"out" + SEP + msgpack.packb([DATA, SRC, inc, seq, 1, 0, time.time_ns(), None, None, None,
                                             b"%d" % seq])

    for seq in (7, 8, 9, 10):  # what the producer held, resent to the new incarnation
        raw.send_multipart([peer, record(seq)])
    got = drain_headers(inlet, 2)
    assert [bytes(v) for v, _ in got] == [b"9", b"10"]
    assert inlet.done_pending == {EDGE: 8}  # the dropped ones are said done again: the producer lets go
    for seq in (9, 10, 11):  # the producer restarted: it emits 9 and 10 again, then 11
        raw.send_multipart([peer, record(seq, inc=1)])
    got += drain_headers(inlet, 1)
    assert [bytes(v) for v, _ in got] == [b"9", b"10", b"11"]
    stats = inlet.stats[EDGE]
    # 7, 8 (handled before), 9 (received before, handed over again), the producer's 9 and 10
    assert (stats.received, stats.redelivered, stats.gaps) == (2, 5, 0)
    for _, header in got:
        inlet.handled(header)
    assert inlet.done_pending == {EDGE: 11}
    inlet.send_done()
    assert link.counters.mv[base + POS_DONE] == 12  # kept before it is said


def test_a_failed_curve_handshake_and_a_cut_connection_are_reported_by_the_watch_not_raised(ctx):
    """What the worker counts: a CURVE client that meets a plain server (a squatter on its
    producer's port) fails the handshake; a bind that gets a message over its limit drops
    the connection. Both come out of ``Watch.read`` as calls, never as an exception."""
    from dmnflow.transport.security import Watch

    watch = Watch()
    refused: list[int] = []
    cut: list[int] = []
    squatter = ctx.socket(zmq.ROUTER)
    port = squatter.bind_to_random_port("tcp://127.0.0.1")
    client = ctx.socket(zmq.DEALER)
    public, secret = zmq.curve_keypair()
    server_public, _ = zmq.curve_keypair()
    client.curve_secretkey, client.curve_publickey, client.curve_serverkey = secret, public, server_public
    mon = watch.add(client, "input c.in", lambda e: refused.append(e["event"]))
    client.connect(f"tcp://127.0.0.1:{port}")
    bind = ctx.socket(zmq.ROUTER)
    bind.setsockopt(zmq.MAXMSGSIZE, 512)
    bind_mon = watch.add(bind, "output p.out", lambda e: None, lambda e: cut.append(e["event"]))
    bind_port = bind.bind_to_random_port("tcp://127.0.0.1")
    peer = ctx.socket(zmq.DEALER)
    peer.connect(f"tcp://127.0.0.1:{bind_port}")
    peer.send(bytes(4096))
    deadline = time.monotonic() + 5
    while (not refused or not cut) and time.monotonic() < deadline:
        for m in (mon, bind_mon):
            if m.poll(10):
                watch.read(m)
    assert refused and all(e & zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL for e in refused)
    assert cut == [zmq.EVENT_DISCONNECTED]
    watch.close()
    for sock in (squatter, client, bind, peer):
        sock.close(0)


def test_a_block_push_edge_runs_on_its_consumers_credit(ctx, tmp_path):
    """A block producer sends one consumer incarnation records only while fewer than 2 x `queue`
    are not reported taken: a kill of the consumer can cut at most that many from the sockets.
    A hello from a new incarnation starts its credit afresh; a late one from an old incarnation
    changes nothing. (Inside one process an edge has no credit: the consumer runs in the
    producer's loop.)"""
    inproc, _ = wire(ctx, "raw", bytes, "inproc://no-credit", "push", policy="block", hwm=8, coalesce=False)
    assert not inproc.channels[0].window
    endpoint = f"ipc://{tmp_path}/credit"
    outlet, inlet = wire(ctx, "raw", bytes, endpoint, "push", policy="block", hwm=8, coalesce=False, transport="ipc")
    router = outlet.channels[0]
    for i in range(16):
        outlet.send(b"%d" % i, None, 0, -1, None)
    assert router.out[EDGE] == 16 and not router.room(EDGE)  # the window is full: a send would wait
    assert [bytes(v) for v in drain(inlet, 16)] == [b"%d" % i for i in range(16)]  # reported every queue / 8
    deadline = time.monotonic() + 5
    while router.took[EDGE] < 16 and time.monotonic() < deadline:
        outlet.service(router.sock)
    assert router.took[EDGE] == 16 and router.room(EDGE)
    new = identity(TOKEN, "c", EDGE, 1)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.IDENTITY, new)
    dealer.connect(endpoint)
    dealer.send(control(b"hello", EDGE, TOKEN, 1))
    deadline = time.monotonic() + 5
    while router.peers[EDGE] != new and time.monotonic() < deadline:
        outlet.service(router.sock)
    assert router.peer_inc[EDGE] == 1 and router.out[EDGE] == router.took[EDGE] == 0
    inlet.hello()  # incarnation 0 again: late, ignored
    time.sleep(0.05)
    outlet.service(router.sock)
    assert router.peers[EDGE] == new
    dealer.close(linger=0)


# ------------------------------------------------------------------ forwarded leases: an echo sends no copy

FWD_SRC, FWD_EDGE = 4, 8  # the forwarder's output and the edge to its consumer (A -> B on EDGE/SRC)


def _chain(ctx, tp, *, consumers: int = 1, pattern: str = "push"):
    """A (output SRC) -> B (input on EDGE) and B (output FWD_SRC) -> C (input on FWD_EDGE, or
    several subscribers FWD_EDGE.. on a pub bind): tensor or raw by ``tp``, shared memory
    above 1 KiB, in one process."""
    codec = "tensor" if isinstance(tp, Tensor) else "raw"
    edges = [FWD_EDGE + i for i in range(consumers)]
    link = Link(ctx, "/nonexistent", TOKEN, TAG,
                Counters(Layout(edges=max(edges) + 1, nodes=1, outputs=FWD_SRC + 1, binds=1)))

    def outlet(src: int, endpoint: str, out_edges: list[int], kind: str) -> Outlet:
        plans = {e: edge_plan(kind, edge=e) for e in out_edges}
        bind = BindPlan(id=endpoint, counter=0, endpoint=endpoint, transport="inproc", pattern=kind, hwm=1000,
                        control_hwm=limits.control_hwm("inproc", kind), edges=out_edges,
                        coalesce=COALESCE if kind == "push" else None, shm=True)
        made = Outlet(link, src, 0, "p", "out", [bind], plans, get_codec(codec).encoder(tp), shm_above=1024,
                      flusher=flusher(), own_flusher=True, loans=True)
        link.resolved.update(made.bound)
        return made

    def inlet(edge: int, src: int, endpoint: str, kind: str) -> Inlet:
        c = ConnectPlan(edge=edge, bind=endpoint, node="p", port="out", endpoint=endpoint, transport="inproc",
                        pattern=kind, hwm=1000, credit_every=limits.credit_every(kind, 1000), control_hwm=0)
        return Inlet(link, "in", "c", [c], {edge: src}, [], 1000,
                     {edge: get_codec(codec).decoder(tp, Limits())}, feedback=False, max_bytes=1 << 20)

    a = outlet(SRC, "inproc://fwd-a", [EDGE], "push")
    b_in = inlet(EDGE, SRC, "inproc://fwd-a", "push")
    b_out = outlet(FWD_SRC, "inproc://fwd-b", edges, pattern)
    c_ins = [inlet(e, FWD_SRC, "inproc://fwd-b", pattern) for e in edges]
    joined(a)
    joined(b_out)
    return a, b_in, b_out, c_ins


def _one(inlet: Inlet):
    """Wait for one record: the generator, suspended inside it as a handler would be."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for sock in inlet.socks:
            records = inlet.receive(sock, 1)
            for value, _ in records:
                return value, records
        time.sleep(0.001)
    raise AssertionError("nothing arrived")


def _settle(outlets, inlets, until=None) -> None:
    """Frees travel (each inlet sends, each outlet reads) until ``until()`` (None: a while)."""
    import gc

    gc.collect()
    deadline = time.monotonic() + (5 if until else 0.2)
    while not (until and until()) and time.monotonic() < deadline:
        for inlet in inlets:
            inlet.send_frees()
        time.sleep(0.002)
        for outlet in outlets:
            for ch in outlet.channels:
                ch.service()
    assert until is None or until()


def _close(*things) -> None:
    for thing in things:
        for one in (thing if isinstance(thing, list) else [thing]):
            one.close()


def test_an_echoed_array_forwards_its_lease_and_the_first_slot_waits_for_the_forwards_reader(ctx):
    tp = Tensor("float32", (None,))
    a, b_in, b_out, [c_in] = _chain(ctx, tp)
    pool_a, pool_b = a.channels[0].pool, b_out.channels[0].pool
    try:
        a.send(np.full(1024, 5, np.float32), None, 1, 0, None)
        got, records = _one(b_in)
        assert not got.flags.writeable
        b_out.send(got, None, 1, 0, None)  # the echo: what it received, as it is
        b_out.flush()
        del got, records
        assert pool_b.slots == [] and pool_b.forwarded() == 1  # nothing copied into a slot of B's
        far, far_records = _one(c_in)
        assert (far == 5).all() and not far.flags.writeable
        name = pool_a.slots[0][0].name
        assert c_in.shm.maps.keys() == {name}  # C maps A's segment: the one the payload was written in
        _settle([a, b_out], [b_in, c_in], )
        assert pool_a.in_use() == 1 and pool_b.forwarded() == 1  # C still holds its array: A's slot waits
        del far, far_records
        _settle([a, b_out], [b_in, c_in], lambda: pool_a.in_use() == 0)
        assert pool_b.forwarded() == 0
        a.send(np.full(1024, 6, np.float32), None, 1, 0, None)  # the slot is reused, not made again
        again, records = _one(b_in)
        assert (again == 6).all() and len(pool_a.slots) == 1 and pool_a.slots[0][0].name == name
        del again, records
    finally:
        _close(a, b_in, b_out, c_in)


def test_a_view_kept_after_its_handler_returned_stays_intact_and_holds_its_slot(ctx):
    from typing_extensions import Buffer

    a, b_in, b_out, [c_in] = _chain(ctx, Buffer)
    pool_a = a.channels[0].pool
    try:
        a.send(b"k" * 4096, None, 1, 0, None)
        kept, records = _one(b_in)
        assert type(kept) is memoryview and kept.readonly  # a Buffer port: the slot itself, read-only
        list(records)  # the handler returned: the generator went on and ended
        del records
        a.send(b"m" * 4096, None, 1, 0, None)
        later, records = _one(b_in)
        del records
        assert bytes(kept) == b"k" * 4096 and bytes(later) == b"m" * 4096 and pool_a.in_use() == 2
        del later
        _settle([a], [b_in], lambda: pool_a.in_use() == 1)  # the one still kept holds its slot
        assert bytes(kept) == b"k" * 4096
        del kept
        _settle([a], [b_in], lambda: pool_a.in_use() == 0)
    finally:
        _close(a, b_in, b_out, c_in)


def test_a_bytes_ports_copy_forwards_its_slot_only_while_its_handler_runs(ctx):
    a, b_in, b_out, [c_in] = _chain(ctx, bytes)
    pool_b = b_out.channels[0].pool
    try:
        a.send(b"p" * 4096, None, 1, 0, None)
        got, records = _one(b_in)
        assert type(got) is bytes  # a bytes port gets bytes: a copy (bytes cannot be a view)
        b_out.send(got, None, 1, 0, None)  # inside the handler: forwarded
        assert pool_b.slots == [] and pool_b.forwarded() == 1
        list(records)  # the handler returned
        b_out.send(got, None, 1, 0, None)  # after it: an ordinary copy into B's own slot
        assert len(pool_b.slots) == 1
        b_out.send(b"p" * 4096, None, 1, 0, None)  # equal bytes, another object: copied too
        assert len(pool_b.slots) == 2 and pool_b.forwarded() == 1
        b_out.flush()
        values = [bytes(_one(c_in)[0]) for _ in range(3)]
        assert values == [b"p" * 4096] * 3
    finally:
        _close(a, b_in, b_out, c_in)


def test_a_forward_to_several_subscribers_frees_the_first_slot_only_after_each_of_them(ctx):
    tp = Tensor("uint8", (None,))
    a, b_in, b_out, c_ins = _chain(ctx, tp, consumers=2, pattern="pub")
    pool_a, pool_b = a.channels[0].pool, b_out.channels[0].pool
    try:
        a.send(np.full(4096, 3, np.uint8), None, 1, 0, None)
        got, records = _one(b_in)
        b_out.send(got, None, 1, 0, None)
        del got, records
        first, first_records = _one(c_ins[0])
        second, second_records = _one(c_ins[1])
        assert (first == 3).all() and (second == 3).all() and pool_b.slots == []
        del first, first_records
        _settle([a, b_out], [b_in, *c_ins], )
        assert pool_a.in_use() == 1 and pool_b.forwarded() == 1  # the second subscriber still reads it
        del second, second_records
        _settle([a, b_out], [b_in, *c_ins], lambda: pool_a.in_use() == 0)
        assert pool_b.forwarded() == 0
    finally:
        _close(a, b_in, b_out, c_ins)


def test_pub_slots_are_reused_round_after_round_with_several_subscribers(ctx, tmp_path):
    outlet, inlets = _pub_to_two(ctx, f"ipc://{tmp_path}/pub-reuse")
    pool = outlet.channels[0].pool
    names = None
    try:
        for round_ in range(6):
            payloads = [bytes([round_ * 4 + i]) * 4096 for i in range(4)]
            for p in payloads:
                outlet.send(p, None, 1, 0, None)
            got = {e: drain(inlet, 4) for e, inlet in inlets.items()}
            assert all([bytes(v) for v in got[e]] == payloads for e in got)
            del got
            _frees_reach(outlet, inlets.values(), lambda: pool.in_use() == 0)
            now = [slot[0].name for slot in pool.slots]
            names = names or now
            assert now == names and len(now) == 4 and pool.reclaimed == 0  # the same four segments
    finally:
        outlet.close()
        for inlet in inlets.values():
            inlet.close()


def test_a_forged_forward_naming_another_outputs_real_segment_is_refused(ctx):
    from multiprocessing import shared_memory

    tp = Tensor("uint8", (None,))
    a, b_in, b_out, [c_in] = _chain(ctx, tp)
    other = shared_memory.SharedMemory(create=True, size=4096, name=f"dmn_othertag000_{SRC}_" + "cd" * 8)
    try:
        a.send(np.full(4096, 9, np.uint8), None, 1, 0, None)
        got, records = _one(b_in)  # A's segment exists now; its name is in /dev/shm for all to see
        name = a.channels[0].pool.slots[0][0].name
        router = b_out.channels[0]
        meta = ["np", "uint8", [5]]
        forged = [["shm", name, 0, 1, 5, b"\x00" * 16, meta],  # a real segment of the run, no MAC
                  ["shm", name, 0, 1, 5, lease_mac(lease_key(b"another run's token"), name, 0, 1, 5), meta],
                  ["shm", other.name, 0, 1, 5, lease_mac(KEY, other.name, 0, 1, 5), meta],  # not this run's
                  ["shm", segment_prefix(TAG, FWD_SRC) + "x" * 16, 0, 1, 5, KEY[:16], meta]]
        for seq, lease in enumerate(forged):
            router.sock.send_multipart([router.peers[FWD_EDGE], b"out",
                                        header(seq, lease, src=FWD_SRC)])
        router.seq[FWD_EDGE][b"out"] = len(forged)
        b_out.send(got, None, 1, 0, None)  # the real forward of the same segment
        b_out.flush()
        del got, records
        far, _ = _one(c_in)
        assert far.tolist() == [9] * 4096  # only the real one, and only once
        assert c_in.stats[FWD_EDGE].decode_errors == len(forged)
        assert set(c_in.shm.maps) == {name}  # nothing else was mapped
        del far
    finally:
        other.close()
        other.unlink()
        _close(a, b_in, b_out, c_in)


def test_ctx_alloc_works_for_bytes_on_a_buffer_port_and_sends_the_slot_itself(ctx):
    """uint8 from alloc on a raw port typed Buffer: the subscribers get the loaned slot, read-only."""
    from typing_extensions import Buffer

    link = Link(ctx, "/nonexistent", TOKEN, TAG, Counters(Layout(edges=9, nodes=1, outputs=SRC + 1, binds=1)))
    plans = {e: edge_plan("pub", edge=e) for e in (7, 8)}
    bind = BindPlan(id="b", counter=0, endpoint="inproc://alloc-bytes", transport="inproc", pattern="pub",
                    hwm=1000, control_hwm=0, edges=[7, 8], shm=True)
    outlet = Outlet(link, SRC, 0, "p", "out", [bind], plans, get_codec("raw").encoder(Buffer), shm_above=1024,
                    flusher=flusher(), own_flusher=True, loans=True)
    link.resolved.update(outlet.bound)
    inlets = [Inlet(link, "in", f"c{e}", [connect_plan(e, "inproc://alloc-bytes", "inproc", "pub", 1000)],
                    {e: SRC}, [], 1000, {e: get_codec("raw").decoder(Buffer, Limits())}, feedback=False,
                    max_bytes=1 << 20) for e in (7, 8)]
    joined(outlet)
    pool = outlet.channels[0].pool
    try:
        buf = outlet.alloc(4096, "uint8")
        buf[:] = 42
        outlet.send(buf, None, 1, 0, None)
        got = [drain(inlet, 1)[0] for inlet in inlets]
        assert len(pool.slots) == 1 and all(type(v) is memoryview and v.readonly for v in got)
        assert all(bytes(v) == b"*" * 4096 for v in got)
        assert got[0].obj is not buf.base  # the consumers' own read-only mappings of the one slot
        del buf, got
        _frees_reach(outlet, inlets, lambda: pool.in_use() == 0)
    finally:
        outlet.close()
        for inlet in inlets:
            inlet.close()

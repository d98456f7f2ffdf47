"""Shared memory for large payloads on same-host edges (push and pub, ipc).

The producer copies a large payload into a slot of its pool (or the node wrote it there
itself, ``Outlet.alloc``) and sends only a lease ``["shm", name, slot, gen, size]``; the
consumer maps the segment and hands the node a read-only array over it, without copying.
The slot is freed (a ``free`` control message back to the producer) only when that array
and every view of it are gone, so a node may keep what it received. On a pub bind every
subscriber gets the lease: the slot is free once each one the producer counted (the
``readers`` the lease names) has freed it; a subscriber the lease does not name (one that
joined meanwhile) copies the payload out at once. A pub socket may drop a lease at a slow
subscriber, which then never frees it. A subscriber reads in order, so once it has freed a
lease sent later, it either maps this slot already or will never see the lease: when all
slots are taken, a slot every pending reader has passed so is replaced by a new segment
(whoever still maps the old one keeps reading it intact; the old name stays linked until
its readers free it, or ``shm_slots`` later replacements, for a forward of its lease that
is still on its way: ``_retire``). Nothing a consumer may still map is unlinked before
then.

Nothing in a lease is trusted: a consumer maps a segment only when the lease's MAC (over
name, slot, generation and size, keyed with a key derived from the run's token: ``lease_mac``)
is right, so only this run's producers can have written it, and only for a name that carries
this run's tag and an output number (``segment_prefix``) and ends in a random part nobody
can predict (``secrets.token_hex``); only on same-host edges, at most ``max_maps`` segments
per producer output, and read-only. The tag is public (anyone sees the names in /dev/shm):
a peer that knows it, creates a segment of that name and sends a lease for it is refused,
since it cannot make the MAC. A consumer takes a lease for a segment of any output of the
run, not only of the producer that sent it, so that forwarded leases work: the MAC is what
proves a process of the run made the lease, and a process of the run could send any payload
inline anyway (docs/wire.md, "Forwarded leases").
"""

from __future__ import annotations

import contextlib
import ctypes
import hmac
import mmap
import os
import re
import secrets
import weakref
from multiprocessing import shared_memory
from typing import Any

from .wire import INT64_MAX, SHM_LEASE

__all__ = ["ANY", "FORWARD", "ShmMaps", "ShmPool", "hold_copy", "lease_key", "lease_mac", "release_copy",
           "run_prefix", "segment_prefix"]

_CREATED: set[str] = set()  # segments this process made (a group may hold producer and consumer)
_RANDOM = 16  # hex characters of a segment name's random part
MAC_BYTES = 16
FORWARD = 1 << 40  # slot numbers from here on name a forwarded lease (its forwarder's bookkeeping)
_NAME_TAIL = re.compile(rf"(0|[1-9][0-9]{{0,9}})_[0-9a-f]{{{_RANDOM}}}")  # after run_prefix: output, random

# What this process received through shared memory and may emit again without a copy:
# the address where a mapped slot's buffer starts -> [segment name, live buffers over it] ...
_RECEIVED: dict[int, list[Any]] = {}
# ... and the bytes a ``bytes`` port's handler got (a copy of a slot), while the handler runs:
# id(copy) -> (the copy, the buffer over the slot it was copied from)
_COPIES: dict[int, tuple[bytes, memoryview]] = {}


def run_prefix(tag: str) -> str:
    """The name every segment of this run starts with."""
    return f"dmn_{tag}_"


def segment_prefix(tag: str, src: int) -> str:
    """The name every segment of output ``src`` starts with in this run."""
    return f"{run_prefix(tag)}{src}_"


def hold_copy(copy: bytes, view: memoryview) -> None:
    """``copy`` was made from ``view`` (a slot) for a ``bytes`` port: emitting it while this
    holds forwards the slot instead of copying it again (``release_copy`` ends that)."""
    _COPIES[id(copy)] = (copy, view)


def release_copy(copy: bytes) -> None:
    _COPIES.pop(id(copy), None)


def lease_key(token: bytes) -> bytes:
    """The key of the run's lease MACs: derived from the token, never the token itself."""
    return hmac.digest(token, b"shm-lease", "sha256")


def lease_mac(key: bytes, name: str, slot: int, gen: int, size: int) -> bytes:
    """What proves a lease was made by a producer of this run (about a microsecond)."""
    return hmac.digest(key, b"%s/%d/%d/%d" % (name.encode(), slot, gen, size), "sha256")[:MAC_BYTES]


def _segment(prefix: str, size: int) -> shared_memory.SharedMemory:
    segment = shared_memory.SharedMemory(create=True, size=size, name=prefix + secrets.token_hex(_RANDOM // 2))
    _CREATED.add(segment.name)
    return segment


def _drop_segment(segment: shared_memory.SharedMemory) -> None:
    """Unlink a segment we made and unmap it; a mapping an array still uses stays until the
    array is gone."""
    with contextlib.suppress(FileNotFoundError):
        segment.unlink()
    try:
        segment.close()
    except BufferError:
        segment._buf = segment._mmap = None  # type: ignore[attr-defined]  # see ShmMaps.close


def _address(view: memoryview) -> int | None:
    """Where a writable buffer's memory starts (None for a read-only one)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return None


ANY = -1  # a push lease: whichever consumer received it frees it


class ShmPool:
    """Shared-memory slots of one bind of an output. A slot is taken while consumers have not
    freed it (``pending``, the edges the lease went to) or while the node holds arrays over
    it (``held``: a loan from ``loan``, for the node to write its tensor into, not yet gone)."""

    def __init__(self, threshold: int, slots: int, prefix: str, key: bytes) -> None:
        self.key = key  # lease_key(token): every lease carries its MAC
        self.threshold = threshold
        self.max_slots = slots
        self.prefix = prefix
        self.reclaimed = 0
        self.sent = 0  # leases given out: their order
        self.passed: dict[int, int] = {}  # edge -> the order of the latest lease it freed
        self.slots: list[list[Any]] = []  # [segment, pending: set of edges, generation, held: loan id or 0, order]
        self.loans: dict[int, tuple[int, int]] = {}  # address of a loaned slot -> (slot, loan id)
        self.next_loan = 1
        # forwarded leases: FORWARD + n -> [what keeps the received slot mapped, pending edges, order]
        self.forwards: dict[int, list[Any]] = {}
        self.next_forward = 0
        self.retired: list[list[Any]] = []  # [slot, gen, segment, pending edges] of replaced slots

    def put(self, frames: list[Any], readers: Any = (ANY,)) -> list[Any] | None:
        """A lease ``["shm", name, slot, gen, size, mac]`` for a large single-frame payload: the
        slot it was written in (a loan, emitted: nothing to copy), else a free slot it is
        copied into; None when it is small or every slot is taken. ``readers``: the edges
        that must free it (a pub bind's subscribers), else whichever one receives it."""
        if len(frames) != 1:
            return None
        payload = memoryview(frames[0]).cast("B")
        size = payload.nbytes
        if size < self.threshold:
            return None
        if _RECEIVED:  # this process maps others' slots: the payload may be one of them
            lease = self._forward(frames[0], payload, readers)
            if lease is not None:
                return lease
        if self.loans:
            address = _address(payload)
            loan = self.loans.pop(address, None) if address is not None else None
            if loan is not None:
                slot = self.slots[loan[0]]
                if slot[3] == loan[1] and not slot[1] and size <= slot[0].size:
                    self.sent += 1
                    slot[1], slot[2], slot[4] = set(readers), slot[2] + 1, self.sent
                    name = slot[0].name
                    return [SHM_LEASE, name, loan[0], slot[2], size, lease_mac(self.key, name, loan[0], slot[2], size)]
        index = self._take(size)
        if index is None:
            return None
        slot = self.slots[index]
        self.sent += 1
        slot[1], slot[2], slot[4] = set(readers), slot[2] + 1, self.sent
        slot[0].buf[:size] = payload
        name = slot[0].name
        return [SHM_LEASE, name, index, slot[2], size, lease_mac(self.key, name, index, slot[2], size)]

    def _forward(self, frame: Any, payload: memoryview, readers: Any) -> list[Any] | None:
        """A lease on the slot ``frame`` was received in (it is that buffer, or the bytes a
        handler got copied from it), kept mapped here until every reader of the forward has
        freed it; None when it is not such a payload, or too many forwards are out."""
        if type(frame) is bytes:
            held = _COPIES.get(id(frame))
            if held is None or held[0] is not frame:
                return None
            keep = held[1]
        else:
            keep = payload  # it holds the received buffer, and so the slot
        import numpy as np  # a process that maps slots has numpy loaded (``_read_only_address``)

        received = _RECEIVED.get(np.frombuffer(keep, dtype=np.uint8).__array_interface__["data"][0])
        if received is None:
            return None  # a part of a slot, or memory of our own
        if len(self.forwards) >= self.max_slots:
            stale = self._stale_forward()
            if stale is None:
                return None  # copied: the readers of every forward we hold are behind
            self.reclaimed += 1
            del self.forwards[stale]
        index = FORWARD + self.next_forward
        self.next_forward += 1
        self.sent += 1
        self.forwards[index] = [keep, set(readers), self.sent]
        name, size = received[0], payload.nbytes
        return [SHM_LEASE, name, index, 1, size, lease_mac(self.key, name, index, 1, size)]

    def _stale_forward(self) -> int | None:
        """The oldest forward whose readers have all freed a later lease (a pub subscriber
        lost it): let go of it."""
        passed = self.passed
        stale = [(f[2], i) for i, f in self.forwards.items()
                 if ANY not in f[1] and all(passed.get(e, 0) > f[2] for e in f[1])]
        return min(stale)[1] if stale else None

    def forwarded(self) -> int:
        """Forwarded leases whose readers have not all freed them."""
        return len(self.forwards)

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
        """A new slot, or a free one that was too small made bigger, or one its readers never
        freed, replaced; None when all are in use."""
        if len(self.slots) < self.max_slots:
            self.slots.append([_segment(self.prefix, size), set(), 0, 0, 0])
            return len(self.slots) - 1
        small = next((i for i, s in enumerate(self.slots) if not s[1] and not s[3]), None)
        if small is None:
            small = self._stale()
            if small is None:
                return None
            self.reclaimed += 1
            self._retire(small)
        else:
            _drop_segment(self.slots[small][0])  # nobody maps it any longer
        self.slots[small] = [_segment(self.prefix, size), set(), self.slots[small][2], 0, 0]
        return small

    def _retire(self, index: int) -> None:
        """A slot its readers have passed leaves the pool, but its segment stays linked until
        they free it (or leave), so that a consumer of a forward of its lease, not read yet,
        can still open it; at most ``max_slots`` wait so (the oldest then goes: a consumer
        still mapping it keeps its pages)."""
        old = self.slots[index]
        self.retired.append([index, old[2], old[0], old[1]])
        if len(self.retired) > self.max_slots:
            _drop_segment(self.retired.pop(0)[2])

    def _stale(self) -> int | None:
        """The oldest slot each of whose pending readers has freed a lease sent after it (so
        maps it already, or lost the lease): safe to replace; None when there is none."""
        passed = self.passed
        stale = [(s[4], i) for i, s in enumerate(self.slots)
                 if s[1] and not s[3] and ANY not in s[1] and all(passed.get(e, 0) > s[4] for e in s[1])]
        return min(stale)[1] if stale else None

    def free(self, index: int, gen: int, edge: int = ANY) -> None:
        """Edge ``edge``'s consumer no longer uses the slot (a stale generation is ignored)."""
        if index >= FORWARD:  # a forward: once all its readers are done, our view of their slot goes
            forward = self.forwards.get(index)
            if forward is not None and gen == 1:
                forward[1].discard(edge)
                if forward[2] > self.passed.get(edge, 0):
                    self.passed[edge] = forward[2]
                if not forward[1]:
                    del self.forwards[index]
            return
        if 0 <= index < len(self.slots) and self.slots[index][2] == gen:
            slot = self.slots[index]
            slot[1].discard(edge)
            if slot[4] > self.passed.get(edge, 0):
                self.passed[edge] = slot[4]
        elif self.retired:
            self._free_retired(lambda r: r[0] == index and r[1] == gen, edge)

    def _free_retired(self, which: Any, edge: int) -> None:
        """``edge`` no longer reads the retired segments ``which`` picks: those nobody reads go."""
        for entry in [r for r in self.retired if which(r)]:
            entry[3].discard(edge)
            if not entry[3]:
                self.retired.remove(entry)
                _drop_segment(entry[2])

    def gone(self, edge: int) -> None:
        """Edge ``edge``'s consumer is gone: it frees nothing any more."""
        for slot in self.slots:
            slot[1].discard(edge)
        if self.retired:
            self._free_retired(lambda r: True, edge)
        for index, forward in list(self.forwards.items()):
            forward[1].discard(edge)
            if not forward[1]:
                del self.forwards[index]
        self.passed.pop(edge, None)

    def in_use(self) -> int:
        return sum(1 for s in self.slots if s[1] or s[3])

    def close(self) -> None:
        for slot in self.slots:
            _drop_segment(slot[0])
        for entry in self.retired:
            _drop_segment(entry[2])
        self.slots = []
        self.retired = []
        self.loans = {}
        self.forwards = {}


class _Mapping:
    """One producer segment mapped read-only, and how many leases over it are alive."""

    __slots__ = ("address", "live", "map", "size")

    def __init__(self, name: str) -> None:
        from _posixshmem import shm_open  # the module multiprocessing.shared_memory uses

        fd = shm_open("/" + name, os.O_RDONLY, mode=0)
        try:
            self.size = os.fstat(fd).st_size
            self.map = mmap.mmap(fd, self.size, prot=mmap.PROT_READ) if self.size else None
        finally:
            os.close(fd)
        self.live = 0
        self.address = _read_only_address(self.map) if self.map is not None else 0

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()


def _read_only_address(buffer: Any) -> int:
    import numpy as np  # only consumers of large tensors map segments; they have numpy

    return int(np.frombuffer(buffer, dtype=np.uint8).ctypes.data)


class ShmMaps:
    """The consumer's side: maps producers' segments once, read-only, and hands out leases."""

    def __init__(self, max_maps: int, key: bytes) -> None:
        self.key = key  # lease_key(token): a lease without its MAC names no segment we map
        self.max_maps = max_maps  # per producer output
        self.maps: dict[str, _Mapping] = {}
        self.frees: list[tuple[int, int, int]] = []  # (edge, slot, gen) whose arrays are gone
        self.live: dict[int, tuple[Any, ...]] = {}  # id(weakref to a lease's buffer) -> (it, edge, slot, gen, mapping)

    def attach(self, edge: int, lease: list[Any], prefix: str, max_bytes: int) -> memoryview:
        """A read-only buffer over the slot the lease names, valid while any array over it
        lives; when the last one is gone, the slot is queued to be freed. ``prefix``: the
        run's (``run_prefix``): the segment may be any output's of the run (a forwarded
        lease names the segment it was first sent in). ValueError for a lease no producer of
        this run could have sent."""
        if len(lease) != 6:
            raise ValueError("malformed lease")
        _, name, slot, gen, size, mac = lease
        if type(name) is not str or not name.startswith(prefix) or _NAME_TAIL.fullmatch(name, len(prefix)) is None:
            raise ValueError("a lease on a segment no output of this run made")
        if type(slot) is not int or type(gen) is not int or type(size) is not int or not 0 < size <= max_bytes \
                or not 0 <= slot <= INT64_MAX or not 0 <= gen <= INT64_MAX or type(mac) is not bytes:
            raise ValueError("malformed lease")
        if not hmac.compare_digest(mac, lease_mac(self.key, name, slot, gen, size)):
            raise ValueError("a lease this run's producer did not make")  # before anything is opened
        mapping = self.maps.get(name)
        if mapping is None:
            owner = name[:-_RANDOM]  # the output that made it: at most max_maps of its segments
            mine = [n for n in self.maps if n.startswith(owner)]
            if len(mine) >= self.max_maps:
                for old in [n for n in mine if self.maps[n].live == 0]:
                    self.maps.pop(old).close()
                if sum(1 for n in self.maps if n.startswith(owner)) >= self.max_maps:
                    raise ValueError("too many shared-memory segments mapped for this producer")
            mapping = self.maps[name] = _Mapping(name)
        if size > mapping.size:
            raise ValueError("the slot is smaller than the lease says")
        holder = (ctypes.c_char * size).from_address(mapping.address)
        mapping.live += 1
        received = _RECEIVED.get(mapping.address)
        if received is None:
            _RECEIVED[mapping.address] = [name, 1]
        else:
            received[1] += 1
        # a plain weakref with a callback: a third of what weakref.finalize costs per message
        ref = weakref.ref(holder, self._gone)
        self.live[id(ref)] = (ref, edge, slot, gen, mapping)
        return memoryview(holder).toreadonly()

    def _gone(self, ref: Any) -> None:
        """The last array over a lease is gone: its slot is queued to be freed."""
        _, edge, slot, gen, mapping = self.live.pop(id(ref))
        mapping.live -= 1
        received = _RECEIVED.get(mapping.address)
        if received is not None:
            received[1] -= 1
            if received[1] <= 0:
                del _RECEIVED[mapping.address]
        # look the list up now: send_frees swaps in a new one, and a bound append would miss it
        self.frees.append((edge, slot, gen))

    def close(self) -> None:
        for mapping in self.maps.values():
            if mapping.live == 0:
                mapping.close()
            # else: a node still holds arrays over it; the mapping goes with the process
        self.maps = {}

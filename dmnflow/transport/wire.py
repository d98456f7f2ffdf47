"""The wire format, named once: message kinds, header fields, the runtime's own topics and
the control messages a consumer sends its producer, and the checks every frame passes
before anything trusts it.

A data message is a ZeroMQ multipart ``[topic, header, *payload]``, the header a msgpack
array of ten fields (``HEADER_FIELDS``); inside the graph a message whose payload is one
small frame travels as one frame, ``topic SEP msgpack([*header, payload])``, since every
frame costs pyzmq microseconds. The inlet appends the topic to the header, as an eleventh
field, for the handler. Topics starting with ``\\x00`` are the runtime's. A consumer talks back to its
producer with short control messages ``\\x00<verb>/<edge>/<token>[/<args>]``: ``hello``
(here I am), ``ack`` (I have your end-of-stream), ``free`` (a shared-memory slot is
unused again), ``credit`` (on a stream port: I have consumed this many: room for more),
``took`` (the same on a push edge: this many of your incarnation's records reached me) and
``done`` (at-least-once: I have handled up to this sequence number). ``hello`` and
``credit`` carry the consumer's incarnation (a push consumer's is in its identity too), so a
restarted consumer's credit starts afresh. The token is the run's secret
(``run_token``): a message without it comes from a peer the plan does not know, and is
counted as junk, never obeyed.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
from pathlib import Path
from typing import Any

import msgpack

__all__ = [
    "BATCH", "DATA", "EOS", "HEADER_FIELDS", "INLINE_MAX", "INT64_MAX", "Control", "check_header", "control",
    "eos_header", "large", "message", "parse_control", "read_token", "route_prefix", "write_token",
]

DATA, EOS, BATCH = 0, 1, 2

# header fields, by index
KIND, SRC, INC, SEQ, ORIGIN_NS, ORIGIN, SEND_NS, EVENT_TIME, META, ATTRS = range(10)
TOPIC = 10  # appended by the inlet: what the handler sees as ctx.message.topic
HEADER_FIELDS = ("kind", "src", "inc", "seq", "origin_ns", "origin", "send_ns", "event_time", "meta", "attrs")

# meta[0] of a payload in a shared-memory slot: [SHM_LEASE, name, slot, gen, size, mac, meta] on a push
# edge, [SHM_LEASE, name, slot, gen, size, mac, readers, meta] on a pub edge (readers: the edges that
# free it; mac: shm.lease_mac, keyed with the run's token)
SHM_LEASE = "shm"

INT64_MAX = 2**63 - 1
INC_MAX = 2**31 - 1
EVENT_TEXT_MAX = 256  # an event time written as text (a date) is short
CONTROL_MAX = 512  # bytes: the largest control message a producer socket accepts
CONTROL_PREFIX = b"\x00"
EOS_TOPIC = b"\x00eos"
ROUTE = b"\x00@"  # stream ports: the topic prefix that addresses one in-graph consumer
# stream ports: what an XSUB sends that is not a (un)subscription starts with this, since an
# XPUB reads a first byte 0 or 1 as one
RAW = b"\x02"
# a message of one frame: ``topic SEP msgpack([*header, payload])``; SEP never occurs in UTF-8
# text, so it ends any topic. A coalesced batch is ``SEP msgpack([BATCH, src, inc, records])``.
SEP = b"\xff"
INLINE_MAX = 8 << 10  # payloads up to this ride in the header's frame (one frame a message)
UNPACK = {"raw": False, "strict_map_key": False, "use_list": True}

_EVENT_KINDS = (int, float, str)


def route_prefix(edge: int) -> bytes:
    """On a stream port, the topic prefix only edge ``edge``'s consumer subscribes to."""
    return ROUTE + b"%d/" % edge


def check_header(h: Any) -> bool:
    """Whether a decoded header is one this runtime could have written: ten fields, each of
    its type and within int64, so nothing downstream (gap counts, latency histograms, the
    join's heap) can be made to fail by what a peer sends."""
    if type(h) is not list or len(h) != 10:
        return False
    kind, src, inc, seq, origin_ns, origin, send_ns, event_time, _, attrs = h
    if type(kind) is not int or type(src) is not int or type(inc) is not int or type(seq) is not int:
        return False
    if type(origin_ns) is not int or type(origin) is not int or type(send_ns) is not int:
        return False
    if not (0 <= inc <= INC_MAX and 0 <= seq <= INT64_MAX and 0 <= send_ns <= INT64_MAX
            and 0 <= origin_ns <= INT64_MAX and -1 <= origin <= INC_MAX and 0 <= src <= INC_MAX):
        return False
    if event_time is not None:
        kind_of = type(event_time)
        if kind_of is int:
            if not -INT64_MAX <= event_time <= INT64_MAX:
                return False
        elif kind_of is float:
            if not math.isfinite(event_time):
                return False
        elif kind_of is not str or len(event_time) > EVENT_TEXT_MAX:
            return False
    if attrs is not None and type(attrs) is not dict:
        return False
    if kind == EOS:
        totals = h[META]
        return type(totals) is dict and all(type(k) is bytes and type(v) is int and 0 <= v <= INT64_MAX
                                            for k, v in totals.items())
    return kind == DATA


def large(frame: Any, threshold: int) -> bool:
    """Whether a payload frame is big enough for shared memory (cheap for the common bytes)."""
    return (len(frame) if type(frame) is bytes else memoryview(frame).nbytes) >= threshold


def message(topic: bytes, packer: msgpack.Packer, fields: tuple[Any, ...], frames: list[Any]) -> list[Any]:
    """The frames of one message. A payload of one small frame (or none) rides in the header's
    frame: ``topic SEP msgpack([*fields, payload])``, one ZeroMQ frame (each frame costs pyzmq
    microseconds); a large or many-framed one follows it as ``[topic, msgpack(fields), *frames]``,
    its frames sent without copying."""
    if not frames:
        return [topic + SEP + packer.pack((*fields, None))]
    if len(frames) == 1:
        frame = frames[0]
        if type(frame) is bytes:
            if len(frame) <= INLINE_MAX:
                return [topic + SEP + packer.pack((*fields, frame))]
        else:
            view = memoryview(frame)
            if view.nbytes <= INLINE_MAX:
                return [topic + SEP + packer.pack((*fields, view.tobytes()))]
    return [topic, packer.pack(fields), *frames]


def event_kind(event_time: Any) -> type | None:
    """Numbers and text never compare: a join keeps to one of them per input."""
    if event_time is None:
        return None
    return str if type(event_time) is str else float


def eos_header(packer: msgpack.Packer, src: int, inc: int, totals: dict[bytes, int], send_ns: int,
               token: bytes) -> bytes:
    """End-of-stream: the total per topic (what a consumer missed at the tail) and the run's
    token in the attrs field, so an end from a peer the plan does not know ends nothing."""
    return packer.pack((EOS, src, inc, sum(totals.values()), 0, -1, send_ns, None, totals, {"token": token}))


def eos_trusted(header: list[Any], token: bytes) -> bool:
    attrs = header[ATTRS]
    return type(attrs) is dict and type(attrs.get("token")) is bytes and hmac.compare_digest(attrs["token"], token)


# ---------------------------------------------------------------- control messages, consumer -> producer

VERBS = (b"hello", b"ack", b"free", b"credit", b"done", b"took")


def control(verb: bytes, edge: int, token: bytes, *args: int) -> bytes:
    return b"/".join([CONTROL_PREFIX + verb, b"%d" % edge, token, *(b"%d" % a for a in args)])


class Control:
    """A parsed, trusted control message."""

    __slots__ = ("args", "edge", "verb")

    def __init__(self, verb: bytes, edge: int, args: tuple[int, ...]) -> None:
        self.verb, self.edge, self.args = verb, edge, args


_ARITY = {b"hello": 1, b"ack": 0, b"free": 2, b"credit": 2, b"done": 1, b"took": 2}


def parse_control(body: bytes, token: bytes, edges: Any) -> Control | None:
    """The control message in ``body`` if it is well formed, names one of ``edges`` and
    carries the run's token; None for anything else (junk, or a peer without the token)."""
    if len(body) > CONTROL_MAX or not body.startswith(CONTROL_PREFIX):
        return None
    parts = body[1:].split(b"/")
    if len(parts) < 3:
        return None
    verb, edge, given = parts[0], parts[1], parts[2]
    arity = _ARITY.get(verb)
    if arity is None or len(parts) != 3 + arity or not hmac.compare_digest(given, token):
        return None
    try:
        number = int(edge)
        args = tuple(int(a) for a in parts[3:])
    except ValueError:
        return None
    if number not in edges or any(not 0 <= a <= INT64_MAX for a in args):
        return None
    return Control(verb, number, args)


# ---------------------------------------------------------------- the run's token

TOKEN_FILE = "token"


def write_token(run_dir: str) -> bytes:
    """A fresh secret for the run, in a file only this user can read (the run directory is 0700)."""
    token = secrets.token_hex(16).encode()
    path = Path(run_dir, TOKEN_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token)
    return token


def read_token(run_dir: str) -> bytes:
    return Path(run_dir, TOKEN_FILE).read_bytes().strip()


def shm_tag(token: bytes) -> str:
    """The public per-run prefix of shared-memory segment names (not the token itself)."""
    return hmac.new(token, b"shm", "sha256").hexdigest()[:12]


def identity(token: bytes, name: str, edge: int, inc: int = 0) -> bytes:
    """A consumer's DEALER identity on ``edge`` in its incarnation ``inc``: unguessable without
    the token, so no peer can take a consumer's place on a push edge. Each incarnation has a
    name of its own, so a producer never sends to a restarted consumer before it has said
    hello (what went to the dead one is counted against the dead one, never handed over)."""
    return hmac.new(token, name.encode(), "sha256").hexdigest()[:16].encode() + b"/%d/%d" % (edge, inc)


def identity_base(peer: bytes) -> tuple[bytes, int] | None:
    """``identity``'s name without its incarnation, and the incarnation; None when malformed."""
    base, sep, inc = peer.rpartition(b"/")
    if not sep or not inc.isdigit() or len(inc) > 10:
        return None
    return base, int(inc)

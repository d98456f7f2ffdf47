"""codecs.py: every codec round-trips real values, shares memory where it promises to, and
turns any malformed input into DecodeError (never another exception, never a big allocation)."""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import re
import subprocess
import sys
import textwrap
import tracemalloc
from typing import Any

import lz4.block
import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dmnflow.codecs import Codec, Limits, codec_names, get_codec
from dmnflow.errors import CodecError, DecodeError, EncodeError
from dmnflow.node import DTYPES, Tensor
from dmnflow.testing import check_codec


class Tick(BaseModel):
    symbol: str
    ts_ns: int
    bid: float
    ask: float
    size: int


@dataclasses.dataclass
class Fill:
    symbol: str
    qty: int
    price: float


TICK = {"symbol": "ESZ4", "ts_ns": 1718000000123456789, "bid": 5321.25, "ask": 5321.5, "bid_size": 12,
        "ask_size": 7, "last": 5321.25, "volume": 1234567, "exchange": "CME", "seq": 123456}
PLAIN = [TICK, {"a": [1, 2.5, None, True, "é"]}, [TICK] * 3, 0, -(2**63), 2**64 - 1, 1.5, float("nan"), "", "日本",
         None, True, [], {}, {1: "int keys"}]
ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.arange(5, dtype=np.int64),
    np.array([True, False, True]),
    np.array(2.5),  # 0-d
    np.zeros((0, 3), np.float32),
    np.zeros((2, 0, 4), np.int16),
    np.arange(24.0).reshape(4, 6)[:, ::2],  # not contiguous
    np.arange(12.0).reshape(3, 4).T,  # Fortran order
    np.arange(6, dtype=">f4"),  # big-endian: arrives native
    np.array([1 + 2j, 3 - 4j], np.complex64),
    np.arange(2**20, dtype=np.float32),  # 4 MiB
]


def wire(meta: Any, frames: list[Any]) -> tuple[Any, list[memoryview]]:
    """What the runtime hands a decoder: meta through msgpack, frames as read-only memoryviews."""
    return msgpack.unpackb(msgpack.packb(meta), raw=False), [memoryview(bytes(f)) for f in frames]


def roundtrip(codec: str, value: Any, tp: Any = Any, **kw: Any) -> Any:
    return get_codec(codec).decoder(tp)(*wire(*get_codec(codec).encoder(tp, **kw)(value)))


# ------------------------------------------------------------------ registry (the compiler relies on it)

def test_registry_names_and_network_safety():
    assert codec_names() == ["json", "msgpack", "msgpack+lz4", "pickle", "raw", "tensor"]
    assert [n for n in codec_names() if not get_codec(n).network_safe] == ["pickle"]
    assert get_codec("tensor").carries(Tensor("float32")) and not get_codec("msgpack").carries(Tensor())
    assert get_codec("msgpack").carries(bytes) and not get_codec("json").carries(bytes)


def test_a_codec_without_factories_or_for_the_wrong_type_cannot_be_built():
    bare = Codec("bare", "registry only", lambda t: True)
    with pytest.raises(CodecError, match="no encoder"):
        bare.encoder(Any)
    with pytest.raises(CodecError, match="cannot carry"):
        get_codec("tensor").decoder(int)


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("codec", ["json", "msgpack", "msgpack+lz4", "pickle"])
def test_plain_data_and_records_round_trip(codec):
    samples = [s for s in PLAIN if codec != "json" or not (isinstance(s, dict) and 1 in s)]  # json keys are str
    check_codec(codec, [*samples, Tick(symbol="ES", ts_ns=1, bid=1.0, ask=1.25, size=3)])
    check_codec(codec, [Tick(symbol="ES", ts_ns=1, bid=1.0, ask=1.25, size=3)], Tick)
    check_codec(codec, [Fill("ES", 2, 5321.5)], Fill)


@pytest.mark.parametrize("codec", ["json", "msgpack", "msgpack+lz4"])
def test_records_are_rebuilt_for_their_port_type(codec):
    tick = Tick(symbol="ES", ts_ns=1, bid=1.0, ask=1.25, size=3)
    assert roundtrip(codec, tick, Tick) == tick
    assert roundtrip(codec, Fill("ES", 2, 1.5), Fill) == Fill("ES", 2, 1.5)
    assert roundtrip(codec, [tick, tick], list[Tick]) == [tick, tick]
    assert roundtrip(codec, None, Tick | None) is None
    assert roundtrip(codec, tick, Any) == tick.model_dump(mode="json")  # no type, no rebuild
    assert roundtrip(codec, (1, 2), tuple) == (1, 2)


def test_msgpack_carries_bytes_and_int_keys():
    assert roundtrip("msgpack", {1: b"\x00\xff", "k": bytearray(b"x")}) == {1: b"\x00\xff", "k": b"x"}
    got = roundtrip("msgpack", bytearray(b"ab"), bytearray)
    assert type(got) is bytearray and got == b"ab"


def test_raw_round_trips_and_hands_over_the_frame():
    check_codec("raw", [b"", b"\x00" * 1000, bytearray(b"abc"), memoryview(b"xyz")])
    frame = memoryview(b"payload")
    got = get_codec("raw").decoder(Any)(None, [frame])
    assert got is frame  # Any and memoryview ports get the received frame itself
    assert type(get_codec("raw").decoder(bytes)(None, [frame])) is bytes
    meta, frames = get_codec("raw").encoder(bytes)(b"abc")
    assert meta is None and frames[0] == b"abc"


def test_arrays_round_trip_through_tensor_and_pickle():
    check_codec("tensor", ARRAYS)
    check_codec("pickle", ARRAYS)
    check_codec("tensor", [np.ones((4, 8), np.float32)], Tensor("float32", shape=(None, 8)))


def test_big_endian_arrives_native():
    got = roundtrip("tensor", np.arange(6, dtype=">f4"))
    assert got.dtype == np.float32 and got.dtype.isnative and got.tolist() == list(range(6))


def test_torch_tensors_round_trip():
    torch = pytest.importorskip("torch")
    tensors = [torch.randn(3, 4), torch.randn(5).to(torch.bfloat16), torch.zeros(0, 2), torch.randn(4, 4).T,
               torch.arange(6, dtype=torch.int64), torch.tensor(3.5), torch.randn(2, requires_grad=True).detach()]
    check_codec("tensor", tensors)
    check_codec("pickle", tensors)
    got = roundtrip("tensor", torch.randn(3, requires_grad=True) * 1)
    assert isinstance(got, torch.Tensor) and not got.requires_grad
    bf = torch.randn(7).to(torch.bfloat16)
    meta, _ = get_codec("tensor").encoder(Any)(bf)
    assert meta == ("torch", "bfloat16", (7,))


# ------------------------------------------------------------------ zero copy

def test_tensor_frames_share_memory_both_ways():
    src = np.arange(2**20, dtype=np.float32)
    meta, frames = get_codec("tensor").encoder(Any)(src)
    assert meta == ("np", "float32", (2**20,)) and len(frames) == 1
    assert np.shares_memory(np.frombuffer(frames[0], np.uint8), src)
    assert len(frames[0]) == src.nbytes  # a byte view: len() is the size the transport sees
    received = memoryview(bytes(frames[0]))
    got = get_codec("tensor").decoder(Any)(list(meta), [received])
    assert np.shares_memory(got, np.frombuffer(received, np.uint8))
    assert not got.flags.writeable


def test_non_contiguous_arrays_are_copied_once_to_send():
    src = np.arange(24.0).reshape(4, 6)[:, ::2]
    _, frames = get_codec("tensor").encoder(Any)(src)
    assert not np.shares_memory(np.frombuffer(frames[0], np.uint8), src)
    assert bytes(frames[0]) == np.ascontiguousarray(src).tobytes()


def test_torch_frames_share_memory_both_ways():
    torch = pytest.importorskip("torch")
    for src in (torch.randn(256, 64), torch.randn(256).to(torch.bfloat16)):
        meta, frames = get_codec("tensor").encoder(Any)(src)
        assert np.frombuffer(frames[0], np.uint8).ctypes.data == src.data_ptr()
        received = memoryview(bytes(frames[0]))
        got = get_codec("tensor").decoder(Any)(list(meta), [received])
        assert got.data_ptr() == np.frombuffer(received, np.uint8).ctypes.data
        assert torch.equal(got, src)


def test_pickle_sends_array_buffers_out_of_band():
    src = {"weights": np.arange(2**20, dtype=np.float32), "step": 3}
    meta, frames = get_codec("pickle").encoder(Any)(src)
    assert meta == 1 and len(frames) == 2 and len(frames[0]) < 1024
    assert np.shares_memory(np.frombuffer(frames[1], np.uint8), src["weights"])
    got = get_codec("pickle").decoder(Any)(*wire(meta, frames))
    assert np.array_equal(got["weights"], src["weights"]) and got["step"] == 3


# ------------------------------------------------------------------ lz4

def test_lz4_compresses_only_above_the_threshold():
    encode = get_codec("msgpack+lz4").encoder(Any, compress_above=1024)
    small, big = TICK, [TICK] * 300
    meta, frames = encode(small)
    assert meta is None and bytes(frames[0]) == msgpack.packb(small)
    meta, frames = encode(big)
    assert meta == len(msgpack.packb(big)) and len(frames[0]) < meta / 2
    assert roundtrip("msgpack+lz4", big, compress_above=1024) == big
    never = get_codec("msgpack+lz4").encoder(Any)  # compress_above=None: never
    assert never(big)[0] is None


def test_lz4_sends_incompressible_data_as_it_is():
    noise = np.random.default_rng(0).bytes(4096)
    meta, frames = get_codec("msgpack+lz4").encoder(Any, compress_above=0)(noise)
    assert meta is None and bytes(frames[0]) == msgpack.packb(noise)


def test_lz4_bomb_is_refused_before_decompressing():
    decode = get_codec("msgpack+lz4").decoder(Any)
    tiny = lz4.block.compress(msgpack.packb(TICK), store_size=False)
    tracemalloc.start()
    try:
        for claimed in (2**40, 200 * 2**20, -1, True, "120", [120], 1.5):
            with pytest.raises(DecodeError):
                decode(claimed, [memoryview(tiny)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


def test_lz4_sizes_that_lie_or_break_the_limit():
    packed = msgpack.packb([TICK] * 300)
    block = memoryview(lz4.block.compress(packed, store_size=False))
    for claimed in (len(packed) - 1, len(packed) + 1):
        with pytest.raises(DecodeError):
            get_codec("msgpack+lz4").decoder(Any)(claimed, [block])
    with pytest.raises(DecodeError, match="not an int in 0..4096"):
        get_codec("msgpack+lz4").decoder(Any, Limits(max_bytes=4096))(len(packed), [block])


# ------------------------------------------------------------------ malformed input

def _tensor_meta(dtype: str = "float32", shape: Any = (2, 2), lib: str = "np") -> list[Any]:
    return [lib, dtype, list(shape) if isinstance(shape, tuple) else shape]


MALFORMED = {
    "msgpack random bytes": ("msgpack", Any, None, [b"\xc1\xc1\xc1"]),
    "msgpack truncated": ("msgpack", Any, None, [msgpack.packb(TICK)[:-3]]),
    "msgpack extra data": ("msgpack", Any, None, [msgpack.packb(1) + b"\x01"]),
    "msgpack no frames": ("msgpack", Any, None, []),
    "msgpack two frames": ("msgpack", Any, None, [b"\x01", b"\x01"]),
    "msgpack meta given": ("msgpack", Any, "x", [b"\x01"]),
    "msgpack deep nesting": ("msgpack", Any, None, [b"\x91" * 100_000 + b"\x01"]),
    "msgpack wrong type": ("msgpack", int, None, [msgpack.packb("x")]),
    "msgpack invalid record": ("msgpack", Tick, None, [msgpack.packb({"symbol": "ES"})]),
    "msgpack unhashable key": ("msgpack", Any, None, [b"\x81\x91\x01\x01"]),
    "lz4 garbage": ("msgpack+lz4", Any, 100, [b"\xff" * 20]),
    "lz4 meta list": ("msgpack+lz4", Any, [1, 100], [b"\xff" * 20]),
    "json invalid utf-8": ("json", Any, None, [b'"\xff\xfe"']),
    "json syntax": ("json", Any, None, [b"{'a': 1}"]),
    "json huge int": ("json", Any, None, [b"9" * 5000]),
    "json invalid record": ("json", Tick, None, [b'{"symbol": 1}']),
    "json not a tuple": ("json", tuple, None, [b'"abc"']),
    "raw two frames": ("raw", Any, None, [b"a", b"b"]),
    "raw meta given": ("raw", Any, 1, [b"a"]),
    "tensor meta None": ("tensor", Any, None, [bytes(16)]),
    "tensor meta short": ("tensor", Any, ["np", "float32"], [bytes(16)]),
    "tensor meta dict": ("tensor", Any, {"lib": "np"}, [bytes(16)]),
    "tensor lib unknown": ("tensor", Any, _tensor_meta(lib="jax"), [bytes(16)]),
    "tensor lib unhashable": ("tensor", Any, [[1], "float32", [2, 2]], [bytes(16)]),
    "tensor dtype unknown": ("tensor", Any, _tensor_meta("object"), [bytes(16)]),
    "tensor dtype not a str": ("tensor", Any, _tensor_meta(4), [bytes(16)]),
    "tensor numpy bfloat16": ("tensor", Any, _tensor_meta("bfloat16", (8,)), [bytes(16)]),
    "tensor shape lies": ("tensor", Any, _tensor_meta(shape=(3, 4)), [bytes(16)]),
    "tensor shape huge": ("tensor", Any, _tensor_meta(shape=(2**40, 2**40)), [bytes(16)]),
    "tensor shape negative": ("tensor", Any, _tensor_meta(shape=(-2, -2)), [bytes(16)]),
    "tensor shape bool": ("tensor", Any, _tensor_meta(shape=(True, 4)), [bytes(16)]),
    "tensor shape float": ("tensor", Any, _tensor_meta(shape=(2.0, 2)), [bytes(16)]),
    "tensor shape str": ("tensor", Any, _tensor_meta(shape="2,2"), [bytes(16)]),
    "tensor too many dims": ("tensor", Any, _tensor_meta(shape=(1,) * 65), [bytes(4)]),
    "tensor no frame": ("tensor", Any, _tensor_meta(), []),
    "tensor two frames": ("tensor", Any, _tensor_meta(), [bytes(16), b""]),
    "tensor not the declared dtype": ("tensor", Tensor("int32"), _tensor_meta(), [bytes(16)]),
    "tensor not the declared shape": ("tensor", Tensor(shape=(None, 3)), _tensor_meta(), [bytes(16)]),
    "pickle garbage": ("pickle", Any, 0, [b"\x80\x05garbage"]),
    "pickle not protocol 5": ("pickle", Any, 0, [pickle.dumps(1, protocol=2)]),
    "pickle truncated": ("pickle", Any, 0, [pickle.dumps(TICK, protocol=5)[:-5]]),
    "pickle buffer count lies": ("pickle", Any, 2, [pickle.dumps(1, protocol=5)]),
    "pickle meta not an int": ("pickle", Any, "0", [pickle.dumps(1, protocol=5)]),
    "pickle no frames": ("pickle", Any, -1, []),
    "pickle missing buffer": ("pickle", Any, 0, [pickle.dumps(pickle.PickleBuffer(b"x"), protocol=5,
                                                              buffer_callback=lambda b: False)]),
    "pickle wrong type": ("pickle", int, 0, [pickle.dumps("x", protocol=5)]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_input_raises_decode_error(case):
    codec, tp, meta, frames = MALFORMED[case]
    with pytest.raises(DecodeError):
        get_codec(codec).decoder(tp)(meta, [memoryview(f) for f in frames])


def test_foreign_errors_are_chained():
    with pytest.raises(DecodeError) as info:
        get_codec("json").decoder(Any)(None, [memoryview(b'"\xff"')])
    assert isinstance(info.value.__cause__, UnicodeDecodeError)


@pytest.mark.parametrize("codec", ["raw", "json", "msgpack", "msgpack+lz4", "pickle", "tensor"])
def test_every_codec_enforces_max_bytes(codec):
    value = np.zeros(1000, np.float32) if codec in ("tensor", "pickle") else b"x" * 4000
    if codec == "json":
        value = "x" * 4000
    meta, frames = wire(*get_codec(codec).encoder(Any)(value))
    assert get_codec(codec).decoder(Any, Limits(max_bytes=8192))(meta, frames) is not None
    with pytest.raises(DecodeError):
        get_codec(codec).decoder(Any, Limits(max_bytes=1000))(meta, frames)


def test_tensor_enforces_allowed_dtypes():
    meta, frames = wire(*get_codec("tensor").encoder(Any)(np.zeros(4, np.float64)))
    with pytest.raises(DecodeError, match="float64"):
        get_codec("tensor").decoder(Any, Limits(dtypes=frozenset({"float32"})))(meta, frames)


@pytest.mark.parametrize("codec", codec_names())
def test_decoders_never_crash_on_broken_messages(codec):
    sample = np.arange(10.0) if codec in ("tensor", "pickle") else b"abc" if codec == "raw" else TICK
    check_codec(codec, [sample])  # includes truncated, garbled, missing and extra frames, wrong meta


_LEAF = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) \
    | st.binary(max_size=8)
_META = st.one_of(
    st.recursive(_LEAF, lambda kids: st.lists(kids, max_size=4), max_leaves=8),
    st.tuples(st.sampled_from(["np", "torch", "jax"]), st.sampled_from([*DTYPES, "object", "<f4"]),
              st.lists(st.integers(-1, 2**33), max_size=4)).map(list),
    st.integers(-1, 2**30),
)
_FRAME = st.binary(max_size=64) | _LEAF.map(lambda v: lz4.block.compress(msgpack.packb(v), store_size=False)) \
    | st.binary(max_size=30).map(lambda b: b"\x80\x05" + b)
_DECODERS = {(name, tp): get_codec(name).decoder(tp)
             for name in ("raw", "json", "msgpack", "msgpack+lz4", "tensor", "pickle")
             for tp in (Any, Tick, Tensor("float32", (2, None)), int)
             if get_codec(name).carries(tp)}


@settings(max_examples=300, deadline=None, derandomize=True)
@given(meta=_META, frames=st.lists(_FRAME, max_size=3))
def test_random_messages_raise_only_decode_error(meta, frames):
    for decode in _DECODERS.values():
        with contextlib.suppress(DecodeError):
            decode(meta, [memoryview(f) for f in frames])


# ------------------------------------------------------------------ encoding errors

ENCODE_ERRORS = {
    "msgpack object": ("msgpack", Any, object()),
    "msgpack int too big": ("msgpack", Any, 2**70),
    "msgpack ndarray": ("msgpack", Any, np.zeros(3)),
    "msgpack lone surrogate": ("msgpack", Any, "\ud800"),
    "msgpack not the port type": ("msgpack", Tick, dict(TICK)),
    "lz4 set": ("msgpack+lz4", Any, {1, 2}),
    "json bytes": ("json", Any, b"x"),
    "json circular": ("json", Any, (lambda a: (a.append(a), a)[1])([])),
    "json not the port type": ("json", int, "3"),
    "raw str": ("raw", Any, "text"),
    "raw bytearray on a bytes port": ("raw", bytes, bytearray(b"x")),
    "raw strided memoryview": ("raw", Any, memoryview(b"abcdef")[::2]),
    "tensor list": ("tensor", Any, [1.0, 2.0]),
    "tensor object dtype": ("tensor", Any, np.array([object()])),
    "tensor datetime": ("tensor", Any, np.array(["2024-01-01"], "datetime64[ns]")),
    "tensor masked": ("tensor", Any, np.ma.masked_array([1.0, 2.0], mask=[0, 1])),
    "tensor wrong dtype": ("tensor", Tensor("float32"), np.zeros(3)),
    "tensor wrong shape": ("tensor", Tensor("float64", (None, 8)), np.zeros((2, 7))),
    "pickle lambda": ("pickle", Any, lambda: 0),
    "pickle not the port type": ("pickle", int, "x"),
}


@pytest.mark.parametrize("case", ENCODE_ERRORS)
def test_values_a_codec_cannot_carry_raise_encode_error(case):
    codec, tp, value = ENCODE_ERRORS[case]
    with pytest.raises(EncodeError, match=re.escape(f"codec '{codec}' cannot encode")):
        get_codec(codec).encoder(tp)(value)


def test_torch_tensors_the_codec_refuses():
    torch = pytest.importorskip("torch")
    encode = get_codec("tensor").encoder(Any)
    for bad in (torch.zeros(2, dtype=torch.uint32), torch.zeros(3).to_sparse(), torch.zeros(2, device="meta")):
        with pytest.raises(EncodeError, match="codec 'tensor'"):
            encode(bad)


# ------------------------------------------------------------------ torch stays lazy and quiet

def test_numpy_nodes_never_import_torch_and_torch_decoding_never_warns():
    script = textwrap.dedent("""
        import sys, warnings
        warnings.simplefilter("error")  # a warning would surface as DecodeError below
        from typing import Any
        import numpy as np
        from dmnflow.codecs import get_codec
        meta, frames = get_codec("tensor").encoder(Any)(np.ones(4, "float32"))
        decode = get_codec("tensor").decoder(Any)
        assert decode(list(meta), [memoryview(bytes(frames[0]))]).sum() == 4
        assert "torch" not in sys.modules, "decoding numpy imported torch"
        for _ in range(2):
            t = decode(["torch", "float32", [4]], [memoryview(bytes(frames[0]))])
        assert "torch" in sys.modules and float(t.sum()) == 4
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok" and "Warning" not in done.stderr


# ------------------------------------------------------------------ check_codec on other codecs

def _upper_codec(*, broken: bool) -> Codec:
    def make_encoder(tp, compress_above):
        return lambda value: (len(value), [value.upper().encode()])

    def make_decoder(tp, limits):
        def decode(meta, frames):
            text = bytes(frames[0]).decode()  # broken: lets UnicodeDecodeError/IndexError out
            if broken:
                return text.lower()
            try:
                if meta != len(text):
                    raise ValueError("length")
                return text.lower()
            except Exception as exc:
                raise DecodeError("upper") from exc
        if broken:
            return decode

        def guarded(meta, frames):
            try:
                return decode(meta, frames)
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError("upper") from exc
        return guarded

    return Codec("upper", "test codec", lambda t: t in (Any, str), make_encoder=make_encoder,
                 make_decoder=make_decoder)


def test_check_codec_passes_a_conforming_user_codec(monkeypatch):
    monkeypatch.setitem(sys.modules["dmnflow.codecs"]._REGISTRY, "upper", _upper_codec(broken=False))
    check_codec("upper", ["abc", ""], str)


def test_check_codec_catches_a_decoder_that_leaks_other_errors(monkeypatch):
    monkeypatch.setitem(sys.modules["dmnflow.codecs"]._REGISTRY, "upper", _upper_codec(broken=True))
    with pytest.raises(AssertionError, match="not DecodeError"):
        check_codec("upper", ["abc"], str)


def test_check_codec_catches_a_lossy_codec(monkeypatch):
    monkeypatch.setitem(sys.modules["dmnflow.codecs"]._REGISTRY, "upper", _upper_codec(broken=False))
    with pytest.raises(AssertionError, match="decoded 'abc', expected 'ABC'"):
        check_codec("upper", ["ABC"], str)

"""The codecs: which wire formats exist, which port types each can carry, and how each one
turns a value into ``(meta, frames)`` and back.

The compiler checks every edge against this registry, so a graph that names an unknown
codec, or a codec that cannot carry its port's type, is refused before any process
starts. Codec names are what the YAML writes (``codec: msgpack+lz4``).

The runtime builds one encoder per output port and one decoder per input edge
(``Codec.encoder(tp)``, ``Codec.decoder(tp, limits)``) and calls them per message:

    encode(value) -> (meta, frames)     meta: small msgpack-able value for the header
    decode(meta, frames) -> value       frames: read-only memoryviews of zmq frames

An encoder raises ``EncodeError`` for a value it cannot carry; a decoder raises
``DecodeError`` (and nothing else) for any malformed or over-limit input, before
allocating what the input claims. Decoded arrays and ``raw`` payloads are read-only views
of the received frames, not copies. An encoder closure reuses its msgpack packer: call it
from one thread at a time. This module imports ``torch`` only when a torch tensor arrives,
and never imports ``runtime/`` or ``nodes/``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import math
import pickle
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lz4.block
import msgpack
from pydantic import BaseModel, TypeAdapter
from typing_extensions import Buffer

from .errors import CodecError, DecodeError, EncodeError

if TYPE_CHECKING:
    import numpy as np
from .node import DTYPES, Tensor, describe_type

__all__ = ["Codec", "Decoder", "Encoder", "Limits", "codec_names", "get_codec", "register_codec"]

Encoder = Callable[[Any], tuple[Any, list[Buffer]]]
"""``value -> (meta, frames)``; meta goes in the message header, frames are sent as they are."""
Decoder = Callable[[Any, list[memoryview]], Any]
"""``(meta, frames) -> value``; meta has been through msgpack (tuples arrive as lists)."""
_F = typing.TypeVar("_F")


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces; a frame that breaks one raises DecodeError (the runtime drops and counts it)."""

    max_bytes: int = 256 * 2**20  # total payload bytes of one message, compressed or not
    dtypes: frozenset[str] = frozenset(DTYPES)  # tensor dtypes accepted


@dataclass(frozen=True)
class Codec:
    """A named wire format.

    ``network_safe`` is False for codecs that must never read data from another host
    (pickle executes code while loading). ``zero_copy``, ``compressible`` and ``shm`` are
    what the runtime may do with the codec's frames: hand them over in place, compress
    them above the output's ``compress_above``, move large ones through shared memory.
    ``make_encoder(tp, compress_above)`` and
    ``make_decoder(tp, limits)`` build the per-edge closures; a codec registered without
    them can be named in a graph (the compiler checks it) but not run.

        register_codec(Codec("csv", "one row of floats", lambda t: t is Any,
                             make_encoder=my_encoder, make_decoder=my_decoder))
    """

    name: str
    summary: str
    can_carry: Callable[[Any], bool]
    network_safe: bool = True
    zero_copy: bool = False  # decoded values are views of the frames
    compressible: bool = False  # the output's compress_above applies
    shm: bool = False  # large payloads may travel through shared memory on same-host edges
    make_encoder: Callable[[Any, int | None], Encoder] | None = field(default=None, repr=False, compare=False)
    make_decoder: Callable[[Any, Limits], Decoder] | None = field(default=None, repr=False, compare=False)

    def carries(self, tp: Any) -> bool:
        return self.can_carry(tp)

    def encoder(self, tp: Any, *, compress_above: int | None = None) -> Encoder:
        """The encode function for one edge whose port type is ``tp``; build it once per edge.

        ``compress_above``: payloads larger than this many bytes are compressed (codecs
        that compress; None never). Raises CodecError when this codec cannot carry ``tp``.
        """
        return self._factory(tp, self.make_encoder, "encoder")(tp, compress_above)

    def decoder(self, tp: Any, limits: Limits = Limits()) -> Decoder:  # noqa: B008 - frozen, so safe to share
        """The decode function for one edge whose port type is ``tp``, enforcing ``limits``."""
        return self._factory(tp, self.make_decoder, "decoder")(tp, limits)

    def _factory(self, tp: Any, factory: _F | None, what: str) -> _F:
        if factory is None:
            raise CodecError(f"codec {self.name!r} has no {what}; register it with make_encoder= and make_decoder=")
        if not self.carries(tp):
            raise CodecError(f"codec {self.name!r} cannot carry {describe_type(tp)}")
        return factory


_REGISTRY: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    """Add a codec (or replace one of the same name), so graphs may name it."""
    _REGISTRY[codec.name] = codec
    return codec


def get_codec(name: str) -> Codec:
    """The codec called ``name``. KeyError when there is none (see ``codec_names``)."""
    return _REGISTRY[name]


def codec_names() -> list[str]:
    return sorted(_REGISTRY)


# ------------------------------------------------------------------ what a type can carry

_PLAIN = (bool, int, float, str, list, tuple, dict, type(None))
_BYTES = (bytes, bytearray, memoryview)
# the "any object with a buffer" port type: typing_extensions.Buffer, collections.abc.Buffer (3.12+)
_BUFFER_TYPES = tuple(dict.fromkeys(t for t in (Buffer, getattr(collections.abc, "Buffer", None)) if t is not None))
_UNIONS = (typing.Union, types.UnionType)


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def _has_record(tp: Any) -> bool:
    return _is_record(tp) or any(_has_record(arg) for arg in typing.get_args(tp))


def _plain(tp: Any, *, with_bytes: bool) -> bool:
    """Whether a value of this type is data msgpack/json can write (records as dicts)."""
    if tp is Any:
        return True
    if isinstance(tp, Tensor):
        return False
    origin = typing.get_origin(tp) or tp
    if origin in _UNIONS:  # Optional[X] and X | None alike
        return all(_plain(arg, with_bytes=with_bytes) for arg in typing.get_args(tp))
    if not isinstance(origin, type):
        return False
    if with_bytes and issubclass(origin, bytes | bytearray | memoryview):
        return True
    return issubclass(origin, _PLAIN) or _is_record(origin)


def _bytes_like(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return tp is Any or tp in _BUFFER_TYPES or \
        (isinstance(origin, type) and issubclass(origin, bytes | bytearray | memoryview))


def _classes(tp: Any) -> tuple[type, ...] | None:
    """The classes a value of port type ``tp`` is an instance of; None when not checkable."""
    if tp is Any or isinstance(tp, Tensor):
        return None
    origin = typing.get_origin(tp) or tp
    if origin in _UNIONS:
        found: list[type] = []
        for arg in typing.get_args(tp):
            classes = _classes(arg)
            if classes is None:
                return None
            found += classes
        return tuple(dict.fromkeys(found))
    if not isinstance(origin, type):
        return None  # Literal, TypeVar, ...: nothing cheap to check
    try:
        isinstance(None, origin)  # a Protocol that is not runtime_checkable raises here, not per message
    except TypeError:
        return None
    return (float, int) if origin is float else (origin,)


def _type_name(value: Any) -> str:
    return describe_type(type(value))


# ------------------------------------------------------------------ shared decoder pieces

def _one_frame(codec: str, meta: Any, frames: list[memoryview], limits: Limits) -> memoryview:
    """The single frame of a one-frame message with no meta, after the size limit."""
    if meta is not None:
        raise DecodeError(f"codec {codec!r}: expected no meta, got {_type_name(meta)}")
    if len(frames) != 1:
        raise DecodeError(f"codec {codec!r}: expected 1 frame, got {len(frames)}")
    frame = frames[0]
    if type(frame) is not memoryview:
        frame = memoryview(frame)
    if frame.nbytes > limits.max_bytes:
        raise DecodeError(f"codec {codec!r}: {frame.nbytes} bytes is over the limit of {limits.max_bytes}")
    return frame


def _decode_failed(codec: str, exc: BaseException) -> DecodeError:
    return DecodeError(f"codec {codec!r}: malformed payload ({type(exc).__name__}: {str(exc)[:200]})")


def _encode_failed(codec: str, value: Any, exc: BaseException | str) -> EncodeError:
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    return EncodeError(f"codec {codec!r} cannot encode {_type_name(value)}: {why}")


def _wrong_type(codec: str, tp: Any, value: Any) -> EncodeError:
    return _encode_failed(codec, value, f"the port's type is {describe_type(tp)}")


def _finisher(codec: str, tp: Any) -> Callable[[Any], Any] | None:
    """What a decoder does to a decoded plain value: rebuild records, check the type.

    Records (also nested ones, ``list[Tick]``) are rebuilt and validated by pydantic;
    a ``tuple`` port gets its list back as a tuple; other classes are checked with one
    isinstance, so a handler never sees a value of a type its port does not declare.
    """
    if tp is Any:
        return None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_validate
    if _has_record(tp):
        try:
            return TypeAdapter(tp).validate_python
        except Exception:  # a type pydantic cannot build a validator for: rebuild the top level only
            if dataclasses.is_dataclass(tp):
                return lambda value: tp(**value)
            return None
    classes = _classes(tp)
    if classes is None:
        return None
    origin = typing.get_origin(tp) or tp
    if origin in (tuple, bytearray, memoryview):  # the wire has no such type: list or bytes arrive
        wire = (list, tuple) if origin is tuple else (bytes, bytearray, memoryview)

        def convert(value: Any) -> Any:
            if not isinstance(value, wire):
                raise DecodeError(f"codec {codec!r}: expected {describe_type(tp)}, got {_type_name(value)}")
            return origin(value)

        return convert
    wire_classes = classes + ((list,) if tuple in classes else ()) + \
        ((bytes,) if bytearray in classes or memoryview in classes else ())

    def check(value: Any) -> Any:
        if not isinstance(value, wire_classes):
            raise DecodeError(f"codec {codec!r}: expected {describe_type(tp)}, got {_type_name(value)}")
        return value

    return check


def _to_plain(obj: Any) -> Any:
    """The ``default`` hook of json and msgpack: records become dicts, numpy scalars numbers."""
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if type(obj).__module__ == "numpy" and hasattr(obj, "item"):  # a numpy scalar
        return obj.item()
    raise TypeError(f"cannot serialize {_type_name(obj)}")


# ------------------------------------------------------------------ raw

def _raw_encoder(tp: Any, compress_above: int | None) -> Encoder:
    """The value itself as the one frame. A ``Buffer`` port takes any C-contiguous buffer
    (a numpy array, ``ctx.alloc``'s included), the others their classes."""
    if tp in _BUFFER_TYPES:
        def encode_buffer(value: Any) -> tuple[Any, list[Buffer]]:
            try:
                view = value if type(value) is memoryview else memoryview(value)
            except TypeError:
                raise _wrong_type("raw", tp, value) from None
            if not view.c_contiguous:
                raise _encode_failed("raw", value, "the buffer is not contiguous")
            return None, [value]

        return encode_buffer
    allowed = tuple(c for c in _classes(tp) or _BYTES if issubclass(c, _BYTES))

    def encode(value: Any) -> tuple[Any, list[Buffer]]:
        if not isinstance(value, allowed):
            raise _wrong_type("raw", tp, value)
        if type(value) is memoryview and not value.c_contiguous:
            raise _encode_failed("raw", value, "the memoryview is not contiguous")
        return None, [value]

    return encode


def _raw_decoder(tp: Any, limits: Limits) -> Decoder:
    """bytes/bytearray ports get their own copy; memoryview, Buffer and Any ports the frame
    itself, read-only (a view of the received ZeroMQ frame or shared-memory slot).

    A ``bytes`` value cannot be a view: CPython keeps a bytes object's data inside the
    object itself, so the only way to honour a port typed ``bytes`` is to copy. A node that
    wants large payloads without the copy types its input ``memoryview`` or ``Buffer``
    (docs/performance.md). The decoder is marked ``copies_frame`` so that the inlet can let
    an echo of that copy, while its handler runs, forward the slot instead of copying again."""
    origin = typing.get_origin(tp) or tp
    convert = origin if origin in (bytes, bytearray) else None

    def decode(meta: Any, frames: list[memoryview]) -> Any:
        try:
            frame = _one_frame("raw", meta, frames, limits)
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failed("raw", exc) from exc
        return frame if convert is None else convert(frame)

    decode.copies_frame = convert is bytes  # type: ignore[attr-defined]  # an immutable copy: see Inlet.copies
    return decode


# ------------------------------------------------------------------ json

_JSON = json.JSONEncoder(default=_to_plain, separators=(",", ":"))


def _json_encoder(tp: Any, compress_above: int | None) -> Encoder:
    classes = _classes(tp)
    dumps = _JSON.encode

    def encode(value: Any) -> tuple[Any, list[Buffer]]:
        if classes is not None and not isinstance(value, classes):
            raise _wrong_type("json", tp, value)
        try:
            return None, [dumps(value).encode()]
        except (TypeError, ValueError, RecursionError) as exc:
            raise _encode_failed("json", value, exc) from exc

    return encode


def _json_decoder(tp: Any, limits: Limits) -> Decoder:
    finish = _finisher("json", tp)
    loads = json.loads

    def decode(meta: Any, frames: list[memoryview]) -> Any:
        try:
            value = loads(str(_one_frame("json", meta, frames, limits), "utf-8"))
            return value if finish is None else finish(value)
        except DecodeError:
            raise
        except Exception as exc:  # UnicodeDecodeError, JSONDecodeError, RecursionError, ValidationError, ...
            raise _decode_failed("json", exc) from exc

    return decode


# ------------------------------------------------------------------ msgpack, msgpack+lz4

def _msgpack_encoder(tp: Any, compress_above: int | None, *, lz4_: bool = False) -> Encoder:
    name = "msgpack+lz4" if lz4_ else "msgpack"
    classes = _classes(tp)
    pack = msgpack.Packer(default=_to_plain, use_bin_type=True).pack
    compress = lz4.block.compress
    threshold = compress_above if lz4_ and compress_above is not None else math.inf

    def encode(value: Any) -> tuple[Any, list[Buffer]]:
        if classes is not None and not isinstance(value, classes):
            raise _wrong_type(name, tp, value)
        try:
            data = pack(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise _encode_failed(name, value, exc) from exc
        if len(data) > threshold:
            packed = compress(data, store_size=False)
            if len(packed) < len(data):  # incompressible data goes as it is
                return len(data), [packed]
        return None, [data]

    return encode


# lz4 writes at most 255 output bytes per input byte; a larger claim is a bomb, refused unread
_LZ4_MAX_RATIO = 256


def _msgpack_decoder(tp: Any, limits: Limits, *, lz4_: bool = False) -> Decoder:
    """meta is None for a plain msgpack frame; msgpack+lz4 sets it to the unpacked size when compressed."""
    name = "msgpack+lz4" if lz4_ else "msgpack"
    finish = _finisher(name, tp)
    unpackb = msgpack.unpackb
    decompress = lz4.block.decompress
    max_bytes = limits.max_bytes

    def decode(meta: Any, frames: list[memoryview]) -> Any:
        try:
            if meta is None or not lz4_:
                data: Any = _one_frame(name, meta, frames, limits)
            else:
                frame = _one_frame(name, None, frames, limits)
                if type(meta) is not int or not 0 <= meta <= max_bytes:
                    raise DecodeError(f"codec {name!r}: unpacked size {meta!r} is not an int in 0..{max_bytes}")
                if meta > _LZ4_MAX_RATIO * frame.nbytes + 64:
                    raise DecodeError(f"codec {name!r}: {frame.nbytes} compressed bytes cannot unpack to {meta}")
                data = decompress(frame, uncompressed_size=meta)
                if len(data) != meta:
                    raise DecodeError(f"codec {name!r}: unpacked {len(data)} bytes, the header said {meta}")
            value = unpackb(data, raw=False, strict_map_key=False)
            return value if finish is None else finish(value)
        except DecodeError:
            raise
        except Exception as exc:  # msgpack's ExtraData/FormatError/StackError, LZ4BlockError, ValidationError, ...
            raise _decode_failed(name, exc) from exc

    return decode


def _lz4_encoder(tp: Any, compress_above: int | None) -> Encoder:
    return _msgpack_encoder(tp, compress_above, lz4_=True)


def _lz4_decoder(tp: Any, limits: Limits) -> Decoder:
    return _msgpack_decoder(tp, limits, lz4_=True)


# ------------------------------------------------------------------ tensor

_MAX_NDIM = 64  # numpy's own limit


@functools.cache
def _numpy() -> tuple[Any, dict[str, Any], dict[Any, str]]:
    """numpy and its dtype tables, imported when a tensor codec is first built: a node that
    never sees a tensor does not pay numpy's import time and memory."""
    import numpy

    dtypes = {name: numpy.dtype(name) for name in DTYPES if name != "bfloat16"}
    return numpy, dtypes, {dtype: name for name, dtype in dtypes.items()}
_TORCH_WARNING = "The given NumPy array is not writable"


def _torch_dtypes(torch: Any) -> dict[Any, str]:
    return {getattr(torch, name): name for name in DTYPES}


def _shape_fits(shape: tuple[int, ...], declared: tuple[int | None, ...]) -> bool:
    return len(shape) == len(declared) and all(d is None or d == s for s, d in zip(shape, declared, strict=True))


def _tensor_encoder(tp: Any, compress_above: int | None) -> Encoder:
    """meta = (lib, dtype, shape); one frame, the array's own memory (copied only to make it contiguous)."""
    np, _, _NP_NAMES = _numpy()
    want_dtype = tp.dtype if isinstance(tp, Tensor) else None
    want_shape = tp.shape if isinstance(tp, Tensor) else None
    torch_names: dict[Any, str] = {}

    def check(value: Any, name: str, shape: tuple[int, ...]) -> None:
        if want_dtype is not None and name != want_dtype:
            raise _encode_failed("tensor", value, f"dtype {name} on a port of {describe_type(tp)}")
        if want_shape is not None and not _shape_fits(shape, want_shape):
            raise _encode_failed("tensor", value, f"shape {shape} on a port of {describe_type(tp)}")

    def numpy_frame(array: np.ndarray) -> tuple[str, np.ndarray, Buffer]:
        name = _NP_NAMES.get(array.dtype)
        if name is None:
            if array.dtype.isnative or array.dtype.newbyteorder("=") not in _NP_NAMES:
                raise _encode_failed("tensor", array, f"dtype {array.dtype} is not one of {DTYPES}")
            array = array.astype(array.dtype.newbyteorder("="))
            name = _NP_NAMES[array.dtype]
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        return name, array, (memoryview(array).cast("B") if array.size else b"")

    def encode_torch(value: Any, torch: Any) -> tuple[Any, list[Buffer]]:
        if not torch_names:
            torch_names.update(_torch_dtypes(torch))
        name = torch_names.get(value.dtype)
        if name is None:
            raise _encode_failed("tensor", value, f"dtype {value.dtype} is not one of {DTYPES}")
        if value.device.type != "cpu" or value.layout != torch.strided:
            raise _encode_failed("tensor", value, f"only dense CPU tensors travel, not {value.device}/{value.layout}")
        shape = tuple(value.shape)
        check(value, name, shape)
        flat = value.detach().resolve_conj().resolve_neg().contiguous()
        if name == "bfloat16":  # numpy has no bfloat16: send its bits
            flat = flat.view(torch.int16)
        _, _, frame = numpy_frame(flat.numpy())
        return ("torch", name, shape), [frame]

    def encode(value: Any) -> tuple[Any, list[Buffer]]:
        if type(value) is np.ndarray:
            name, array, frame = numpy_frame(value)
            check(value, name, array.shape)
            return ("np", name, array.shape), [frame]
        torch = sys.modules.get("torch")  # a torch tensor can only exist once torch is imported
        if torch is not None and isinstance(value, torch.Tensor):
            return encode_torch(value, torch)
        if isinstance(value, np.ndarray) and not isinstance(value, np.ma.MaskedArray):
            return encode(np.asarray(value))  # memmap, matrix: sent as the plain array
        raise _encode_failed("tensor", value, "it carries numpy arrays and CPU torch tensors")

    return encode


def _tensor_decoder(tp: Any, limits: Limits) -> Decoder:
    """A read-only array (or tensor) over the received frame; nothing is copied."""
    np, _NP_DTYPES, _ = _numpy()
    want_dtype = tp.dtype if isinstance(tp, Tensor) else None
    want_shape = tp.shape if isinstance(tp, Tensor) else None
    allowed = limits.dtypes if want_dtype is None else limits.dtypes & {want_dtype}
    max_bytes = limits.max_bytes
    torch_dtypes: dict[str, Any] = {}

    def fail(why: str) -> DecodeError:
        return DecodeError(f"codec 'tensor': {why}")

    def to_torch(array: np.ndarray, name: str) -> Any:
        if not torch_dtypes:
            import torch  # only nodes that receive torch tensors pay for importing torch

            torch_dtypes.update({name: getattr(torch, name) for name in DTYPES})
            torch_dtypes["_module"] = torch
            # the array is read-only; the tensor shares it and must not be written (documented above)
            warnings.filterwarnings("ignore", _TORCH_WARNING, UserWarning, re.escape(__name__))
        torch = torch_dtypes["_module"]
        if array.size == 0:
            return torch.empty(array.shape, dtype=torch_dtypes[name])
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if name == "bfloat16" else tensor

    def decode(meta: Any, frames: list[memoryview]) -> Any:
        try:
            if type(meta) not in (list, tuple) or len(meta) != 3:
                raise fail(f"meta must be [lib, dtype, shape], got {meta!r:.80}")
            lib, name, shape = meta
            if type(lib) is not str or lib not in ("np", "torch"):
                raise fail(f"unknown array library {lib!r:.40}")
            if type(name) is not str or name not in allowed:
                raise fail(f"dtype {name!r:.40} is not allowed here (allowed: {sorted(allowed)})")
            if lib == "np" and name == "bfloat16":
                raise fail("numpy arrays have no bfloat16")
            if type(shape) not in (list, tuple) or len(shape) > _MAX_NDIM:
                raise fail(f"shape must be a list of at most {_MAX_NDIM} sizes, got {shape!r:.80}")
            for size in shape:
                if type(size) is not int or size < 0:
                    raise fail(f"shape {shape!r:.80} has a size that is not a non-negative int")
            shape = tuple(shape)
            if want_shape is not None and not _shape_fits(shape, want_shape):
                raise fail(f"shape {shape} on a port of {describe_type(tp)}")
            if len(frames) != 1:
                raise fail(f"expected 1 frame, got {len(frames)}")
            frame = memoryview(frames[0])
            dtype = _NP_DTYPES["int16" if name == "bfloat16" else name]
            size = math.prod(shape) * dtype.itemsize
            if size != frame.nbytes or size > max_bytes:
                raise fail(f"shape {shape} of {name} is {size} bytes; the frame has {frame.nbytes} "
                           f"(limit {max_bytes})")
            array = np.frombuffer(frame, dtype=dtype).reshape(shape)
            return array if lib == "np" else to_torch(array, name)
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failed("tensor", exc) from exc

    return decode


# ------------------------------------------------------------------ pickle

_PICKLE_HEADER = b"\x80\x05"  # PROTO 5: what every frame pickle.dumps(protocol=5) writes starts with


def _pickle_encoder(tp: Any, compress_above: int | None) -> Encoder:
    """meta = the number of out-of-band buffers; frames = the pickle, then each buffer, uncopied."""
    classes = _classes(tp)
    dumps = pickle.dumps

    def encode(value: Any) -> tuple[Any, list[Buffer]]:
        if classes is not None and not isinstance(value, classes):
            raise _wrong_type("pickle", tp, value)
        buffers: list[pickle.PickleBuffer] = []
        try:
            data = dumps(value, protocol=5, buffer_callback=buffers.append)
            frames: list[Buffer] = [data]
            frames += [buffer.raw() for buffer in buffers]
        except Exception as exc:  # PicklingError, TypeError, AttributeError (local classes), BufferError, ...
            raise _encode_failed("pickle", value, exc) from exc
        return len(buffers), frames

    return encode


def _pickle_decoder(tp: Any, limits: Limits) -> Decoder:
    """Loads with the out-of-band frames as buffers. Crafted input can run code or ask for
    huge memory (pickle's memo); that is why pickle is not network_safe."""
    classes = _classes(tp)
    loads = pickle.loads
    max_bytes = limits.max_bytes

    def decode(meta: Any, frames: list[memoryview]) -> Any:
        try:
            if type(meta) is not int or not 0 <= meta == len(frames) - 1:
                raise DecodeError(f"codec 'pickle': meta {meta!r:.40} does not count the {len(frames) - 1} buffers")
            views = [memoryview(frame) for frame in frames]
            total = sum(view.nbytes for view in views)
            if total > max_bytes:
                raise DecodeError(f"codec 'pickle': {total} bytes is over the limit of {max_bytes}")
            if views[0][:2] != _PICKLE_HEADER:
                raise DecodeError("codec 'pickle': the first frame is not a protocol 5 pickle")
            value = loads(views[0], buffers=views[1:])
        except DecodeError:
            raise
        except Exception as exc:
            raise _decode_failed("pickle", exc) from exc
        if classes is not None and not isinstance(value, classes):
            raise DecodeError(f"codec 'pickle': expected {describe_type(tp)}, got {_type_name(value)}")
        return value

    return decode


for _codec in (
    Codec("raw", "bytes as they are, one frame", _bytes_like, zero_copy=True, shm=True,
          make_encoder=_raw_encoder, make_decoder=_raw_decoder),
    Codec("json", "UTF-8 JSON of plain data and records", lambda t: _plain(t, with_bytes=False), shm=True,
          make_encoder=_json_encoder, make_decoder=_json_decoder),
    Codec("msgpack", "msgpack of plain data, bytes and records", lambda t: _plain(t, with_bytes=True), shm=True,
          make_encoder=_msgpack_encoder, make_decoder=_msgpack_decoder),
    Codec("msgpack+lz4", "msgpack, lz4-compressed above compress_above bytes",
          lambda t: _plain(t, with_bytes=True), compressible=True, shm=True,
          make_encoder=_lz4_encoder, make_decoder=_lz4_decoder),
    Codec("tensor", "n-d arrays as a raw buffer frame; dtype and shape in the header",
          lambda t: t is Any or isinstance(t, Tensor), zero_copy=True, shm=True,
          make_encoder=_tensor_encoder, make_decoder=_tensor_decoder),
    Codec("pickle", "any Python object; opt-in, refused on tcp edges", lambda t: True,
          network_safe=False, zero_copy=True, shm=True, make_encoder=_pickle_encoder, make_decoder=_pickle_decoder),
):
    register_codec(_codec)
del _codec

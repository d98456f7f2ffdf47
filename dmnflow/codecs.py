"""The codec registry: which codecs exist, which port types each can carry, which are safe
on a network link.

The compiler checks every edge against this registry, so a graph that names an unknown
codec, or a codec that cannot carry its port's type, is refused before any process
starts. Codec names are what the YAML writes (``codec: msgpack+lz4``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from .node import Tensor

__all__ = ["Codec", "codec_names", "get_codec", "register_codec"]

_PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or dataclasses.is_dataclass(tp))


def _plain(tp: Any, *, with_bytes: bool) -> bool:
    """Whether a value of this type is data msgpack/json can write (records as dicts)."""
    if tp is Any:
        return True
    if isinstance(tp, Tensor):
        return False
    origin = typing.get_origin(tp) or tp
    if origin is typing.Union or str(origin) == "types.UnionType":
        return all(_plain(arg, with_bytes=with_bytes) for arg in typing.get_args(tp))
    if not isinstance(origin, type):
        return False
    if with_bytes and issubclass(origin, bytes | bytearray | memoryview):
        return True
    return issubclass(origin, _PLAIN) or _is_record(origin)


def _bytes_like(tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return tp is Any or (isinstance(origin, type) and issubclass(origin, bytes | bytearray | memoryview))


@dataclass(frozen=True)
class Codec:
    """A named wire format.

    ``network_safe`` is False for codecs that must never read data from another host
    (pickle executes code while loading).
    """

    name: str
    summary: str
    can_carry: Callable[[Any], bool]
    network_safe: bool = True

    def carries(self, tp: Any) -> bool:
        return self.can_carry(tp)


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


for _codec in (
    Codec("raw", "bytes as they are, one frame", _bytes_like),
    Codec("json", "UTF-8 JSON of plain data and records", lambda t: _plain(t, with_bytes=False)),
    Codec("msgpack", "msgpack of plain data, bytes and records", lambda t: _plain(t, with_bytes=True)),
    Codec("msgpack+lz4", "msgpack, lz4-compressed above compress_above bytes",
          lambda t: _plain(t, with_bytes=True)),
    Codec("tensor", "n-d arrays as a raw buffer frame; dtype and shape in the header",
          lambda t: t is Any or isinstance(t, Tensor)),
    Codec("pickle", "any Python object; opt-in, refused on tcp edges", lambda t: True,
          network_safe=False),
):
    register_codec(_codec)
del _codec

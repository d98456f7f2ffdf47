"""Values with units, as graph files write them: durations, sizes and sets of cores."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BeforeValidator

__all__ = ["CpuSet", "Duration", "Size", "format_cpus", "format_duration", "parse_cpus", "parse_duration", "parse_size"]

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {"B": 1, "KB": 10**3, "KiB": 2**10, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_duration(value: Any) -> float:
    """Seconds from ``"200us"``, ``"1.5ms"``, ``"5s"``, ``"2m"`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '200us', '5ms' or '2s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a duration; write e.g. '200us', '5ms', '2s', '1m'")
        seconds = float(match[1]) * _DURATION_UNITS[match[2] or "s"]
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``"64KiB"``, ``"1MB"`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '64KiB' or 4096")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; write e.g. 4096, '64KiB', '1MB'")
        size = int(float(match[1]) * _SIZE_UNITS[match[2] or "B"])
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def parse_cpus(value: Any) -> list[int]:
    """Core numbers from ``3``, ``"0-3"``, ``"0,2,4-5"`` or ``[0, "2-3"]``, sorted, unique."""
    items: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
    cores: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError("cpus are core numbers such as 0, '0-3' or [0, 2]")
        parts = [str(item)] if isinstance(item, int) else [p.strip() for p in str(item).split(",") if p.strip()]
        for part in parts:
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not match:
                raise ValueError(f"{part!r} is not a core or a range of cores (e.g. 2 or '0-3')")
            lo, hi = int(match[1]), int(match[2] if match[2] is not None else match[1])
            if hi < lo:
                raise ValueError(f"range {part!r} runs backwards; write '{hi}-{lo}'")
            cores.update(range(lo, hi + 1))
    if not cores:
        raise ValueError("cpus is empty; leave it out to let the OS place the node")
    return sorted(cores)


_SCALES = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))


def format_duration(seconds: float | None) -> str:
    """A latency or duration as a person reads it: three significant digits, trailing zeros
    dropped, in the largest unit under it (``2.08 s``, ``31.3 ms``, ``850 us``, ``50 us``; never
    ``2,080,374.8 us`` or ``3.132e+04``), ``-`` for none. The one formatter of every latency
    dmnflow shows (terminal, report, budgets; the dashboard's ``us()`` follows it)."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds == 0:
        return "0 us"
    sign = "-" if seconds < 0 else ""
    for scale, unit in _SCALES:
        value = abs(seconds) / scale
        if value >= 1 or unit == "ns":
            text = f"{value:,.{0 if value >= 99.95 else 1 if value >= 9.995 else 2}f}"
            if unit != "s" and float(text.replace(",", "")) >= 1000:  # 999.96 ms rounds to 1 s
                return format_duration(float(sign + "1") * 1000 * scale)
            text = text.rstrip("0").rstrip(".") if "." in text else text
            return f"{sign if text != '0' else ''}{text} {unit}"
    raise AssertionError("unreachable: ns takes every value")


def format_cpus(cores: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``: cores the way the YAML writes them (``""`` for none)."""
    parts: list[list[int]] = []
    for core in sorted(set(cores)):
        if parts and core == parts[-1][-1] + 1:
            parts[-1].append(core)
        else:
            parts.append([core])
    return ",".join(str(p[0]) if len(p) == 1 else f"{p[0]}-{p[-1]}" for p in parts)


Duration = Annotated[float, BeforeValidator(parse_duration, json_schema_input_type=str | float)]
Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=str | int)]
CpuSet = Annotated[list[int], BeforeValidator(parse_cpus, json_schema_input_type=int | str | list[int | str])]

"""Encode + decode time per message for each codec, on this machine, now.

    python bench/codecs.py [--quick]

Times one encode and one decode of the same value (frames wrapped in memoryviews, as the
runtime hands them over; no socket, no header). Each row is the median over batches of
the time per message, with the batches' spread (p10-p90), and its ratio to bare
``msgpack.unpackb(msgpack.packb(tick))`` timed in the same run. Absolute figures move 2x
with a VM's steal time; compare ratios, not runs. No asserts: speed is reported, not tested.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from dmnflow.codecs import get_codec

TICK = {"symbol": "ESZ4", "ts_ns": 1718000000123456789, "bid": 5321.25, "ask": 5321.5, "bid_size": 12,
        "ask_size": 7, "last": 5321.25, "volume": 1234567, "exchange": "CME", "seq": 123456}


def codec_us(codec: str, value: Any, *, compress_above: int | None = None, budget_s: float = 0.5) -> list[float]:
    encode = get_codec(codec).encoder(Any, compress_above=compress_above)
    decode = get_codec(codec).decoder(Any)

    def once() -> None:
        meta, frames = encode(value)
        decode(meta, [memoryview(f) for f in frames])

    return per_call_us(once, budget_s)


def per_call_us(once: Callable[[], None], budget_s: float) -> list[float]:
    start = time.perf_counter_ns()
    once()
    single_ns = max(time.perf_counter_ns() - start, 1)
    batch = max(1, int(2_000_000 / single_ns))  # ~2 ms per batch keeps timer overhead out
    batches = max(15, min(200, int(budget_s * 1e9 / (single_ns * batch))))
    deadline = time.perf_counter() + 0.05
    while time.perf_counter() < deadline:  # warm up caches and the core's clock
        once()
    times = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(batch):
            once()
        times.append((time.perf_counter_ns() - start) / batch / 1000)
    return times


def main() -> None:
    budget_s = 0.1 if "--quick" in sys.argv else 0.5
    ticks = [dict(TICK, seq=i, bid=TICK["bid"] + i * 0.25) for i in range(500)]  # ~64 KiB packed
    small, big = np.arange(16384, dtype=np.float32), np.arange(2**20, dtype=np.float32)
    rows = [
        ("tick dict", "msgpack", TICK, None),
        ("tick dict", "msgpack+lz4", TICK, 1024),  # under the threshold: not compressed
        ("tick dict", "json", TICK, None),
        ("tick tuple", "msgpack", tuple(TICK.values()), None),
        ("500 ticks, 64 KiB", "msgpack", ticks, None),
        ("500 ticks, 64 KiB", "msgpack+lz4", ticks, 1024),
        ("float32, 64 KiB", "tensor", small, None),
        ("float32, 64 KiB", "pickle", small, None),
        ("float32, 4 MiB", "tensor", big, None),
        ("float32, 4 MiB", "pickle", big, None),
    ]
    reference = statistics.median(per_call_us(lambda: msgpack.unpackb(msgpack.packb(TICK)), budget_s))
    print(f"reference: bare msgpack packb+unpackb of the tick dict, {reference:.2f} us\n")
    print(f"{'value':<18} {'codec':<12} {'bytes':>8} {'median us':>10} {'p10-p90 us':>16} {'x ref':>8}")
    for label, codec, value, compress_above in rows:
        meta, frames = get_codec(codec).encoder(Any, compress_above=compress_above)(value)
        size = sum(memoryview(f).nbytes for f in frames) + len(msgpack.packb(meta))
        times = sorted(codec_us(codec, value, compress_above=compress_above, budget_s=budget_s))
        p10, p90, median = times[len(times) // 10], times[(len(times) * 9) // 10], statistics.median(times)
        print(f"{label:<18} {codec:<12} {size:>8} {median:>10.2f} {p10:>7.2f}-{p90:<8.2f} {median / reference:>8.2f}")


if __name__ == "__main__":
    main()

"""Market data for the DMN graph: sources that publish Bars, Ticks or Panels (docs/dmn/market.md).

- ``Synthetic``: a seeded regime-switching market, the embedded default;
- ``Replay``: CSV or Parquet files, long or wide;
- ``TrendFollowing``: the daily futures of the PyPI package ``trendfollowing``;
- ``common``: records, event times, topics, and the ``MarketGuard`` every source and
  consumer uses to skip and count bad data.

pandas (the ``dmn`` extra) is imported only by the functions that read files.
"""

from .common import DAY_NS, TOPIC, MarketGuard, day_ns, kind_of, make_bar, make_panel, make_tick, topic_for
from .replay import MarketFrame, Replay, read_market_file
from .synthetic import Synthetic, SyntheticMarket, SyntheticProcess, synthetic_arrays, synthetic_closes
from .trendfollowing import INSTALL, TrendFollowing, TrendFollowingMissing, load_trendfollowing, trendfollowing_info

__all__ = [
    "DAY_NS", "INSTALL", "TOPIC", "MarketFrame", "MarketGuard", "Replay", "Synthetic", "SyntheticMarket",
    "SyntheticProcess", "TrendFollowing", "TrendFollowingMissing", "day_ns", "kind_of", "load_trendfollowing",
    "make_bar", "make_panel", "make_tick", "read_market_file", "synthetic_arrays", "synthetic_closes", "topic_for",
    "trendfollowing_info",
]

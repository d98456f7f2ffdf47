"""What the trading nodes share: rate-limited warnings, the event time of a record, URL checks.

A node that receives a NaN price every bar must not write a line per bar: it counts every
skip (its ``summary()``) and logs one line per reason at most every ``interval_s``
seconds, with how many were suppressed in between. Nothing is formatted when the level is
off. Wall-clock time decides only whether a line is written, never what a node emits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from numbers import Integral
from typing import Any
from urllib.parse import urlsplit

__all__ = ["RateLimitedLog", "check_url", "event_time_of", "package_version"]


def package_version(package: str) -> str:
    """The installed version of ``package``, for messages that ask for a newer one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(unknown version)"


def check_url(url: str | None, insecure: bool, secure: str, clear: str, flag: str = "insecure: true") -> str | None:
    """``url`` when it is safe to send API keys to: ``secure`` scheme (``wss``, ``https``), or
    ``clear`` (``ws``, ``http``) only when ``insecure`` says so (a local test server).

    Why: a URL override is how a proxy or a test server is named, and a plain-text one sends
    the keys (and the orders) readable by anyone on the path. ``flag`` is the setting the
    message names as the way out.

    Raises:
        ValueError: another scheme, no host, or a clear-text scheme without ``insecure``.
    """
    if url is None:
        return None
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in (secure, clear) or not parts.hostname:
        raise ValueError(f"url {url!r} is not a {secure}:// URL with a host (e.g. {secure}://proxy.example:443/...)")
    if scheme == clear and not insecure:
        raise ValueError(f"url {url!r} would send the API keys in clear text ({clear}://): use {secure}://, or set "
                         f"`{flag}` if this is a local test server")
    return url


def event_time_of(record: Any, ctx: Any) -> int | None:
    """A record's ``t`` (an int), else the message's event time, else None."""
    t = record.get("t") if isinstance(record, Mapping) else None
    if isinstance(t, Integral) and not isinstance(t, bool):
        return int(t)
    t = getattr(ctx.message, "event_time", None)
    if isinstance(t, Integral) and not isinstance(t, bool):
        return int(t)
    return None


class RateLimitedLog:
    """At most one log line per ``key`` every ``interval_s`` seconds."""

    __slots__ = ("log", "interval_s", "_next", "_suppressed")

    def __init__(self, log: logging.Logger, interval_s: float = 10.0) -> None:
        self.log = log
        self.interval_s = interval_s
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, key: str, msg: str, *args: Any) -> None:
        """A warning about ``key``, prefixed with it (``"duplicate: AAPL at ..."``)."""
        self._emit(logging.WARNING, key, f"{key}: {msg}", args)

    def warning(self, key: str, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at WARNING unless ``key`` was logged less than ``interval_s`` ago."""
        self._emit(logging.WARNING, key, msg, args)

    def info(self, key: str, msg: str, *args: Any) -> None:
        """Log ``msg % args`` at INFO, rate-limited like ``warning``."""
        self._emit(logging.INFO, key, msg, args)

    def _emit(self, level: int, key: str, msg: str, args: tuple[Any, ...]) -> None:
        if not self.log.isEnabledFor(level):
            return
        now = time.monotonic()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._next[key] = now + self.interval_s
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            self.log.log(level, msg + " (%d more like this since the last line)", *args, skipped)
        else:
            self.log.log(level, msg, *args)

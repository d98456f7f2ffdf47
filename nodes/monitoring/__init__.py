"""Monitoring: ``Performance`` (strategy metrics, latency, equity PNG), ``Health`` (stale feeds)
and ``Alerts`` (threshold rules); the metric math is in ``metrics``."""

from .alerts import Alerts
from .health import Health
from .performance import Performance

__all__ = ["Alerts", "Health", "Performance"]

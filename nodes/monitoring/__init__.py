"""Monitoring: ``Performance`` (strategy metrics, latency, equity PNG), ``Health`` (stale feeds)
``Alerts`` (threshold rules) and ``Journal`` (where alerts and health reports end up); the
metric math is in ``metrics``."""

from .alerts import Alerts
from .health import Health
from .journal import Journal
from .performance import Performance

__all__ = ["Alerts", "Health", "Journal", "Performance"]

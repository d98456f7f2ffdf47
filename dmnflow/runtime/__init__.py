"""Running a compiled plan: the supervisor (``launch``) and the worker processes it starts.

Only this package starts processes, and it always stops and reaps what it started.

The names below load on first use (as ``dmnflow``'s do): a worker imports
``dmnflow.runtime.worker``, and with it this package, but never the supervisor, its
backends or the observer.
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

_LOCATIONS: dict[str, str] = {
    "EdgeReport": "report",
    "NodeReport": "report",
    "Report": "report",
    "launch": "supervisor",
}

if _TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .report import EdgeReport as EdgeReport
    from .report import NodeReport as NodeReport
    from .report import Report as Report
    from .supervisor import launch as launch

__all__ = ["EdgeReport", "NodeReport", "Report", "launch"]


def __getattr__(name: str) -> _Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""Running a compiled plan: the supervisor (``launch``) and the worker processes it starts.

Only this package starts processes, and it always stops and reaps what it started.
"""

from .supervisor import EdgeReport, NodeReport, Report, launch

__all__ = ["EdgeReport", "NodeReport", "Report", "launch"]

"""The admin channel: how programs outside a run talk to it (``dmnflow runs``, ``swap``,
``top``, ``echo``/``hz``/``bw``, the dashboard).

``client.py`` finds runs and asks them; ``server.py`` is the supervisor's end, which
answers. Both speak ``runtime/protocol.py``: the verbs of ``protocol.ADMIN``, one
``protocol.Answer`` per request. The server is imported by the supervisor only
(``from dmnflow.runtime.admin.server import AdminServer``); the names below are the client's.
"""

from .client import (
    Answer,
    RunInfo,
    StartingRun,
    ask,
    claim_run_name,
    find_run,
    list_runs,
    run_status,
    send_command,
    starting,
    starting_message,
    starting_runs,
    stop_run,
    wait_ended,
)

__all__ = ["Answer", "RunInfo", "StartingRun", "ask", "claim_run_name", "find_run", "list_runs", "run_status",
           "send_command", "starting", "starting_message", "starting_runs", "stop_run", "wait_ended"]

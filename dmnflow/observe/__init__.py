"""Seeing a running graph: the live view, ``dmnflow top / echo / hz / bw``, Prometheus,
the web dashboard, recording to MCAP and replaying into a subgraph, latency budgets.

Everything here reads what the supervisor already gathers (the workers' counters files
and heartbeats, turned into a ``Report`` every status tick), never the data plane; a tap
mirrors one output only while someone listens (``runtime/taps.py``). Modules:

- ``observer``, ``live``, ``taps``: aliases of ``dmnflow.runtime.{observer,live,taps}``
  (the supervisor's and the workers' side, which ``runtime`` owns);
- ``budgets``: an alias of ``dmnflow.compiler.budgets`` (latency budgets);
- ``view``: the terminal: live view, status lines for logs, the final report at 80 columns;
- ``top``: attaching to a running graph through its admin socket;
- ``prometheus``: ``/metrics`` from the supervisor's process;
- ``dashboard``: the live web page;
- ``record`` / ``replay``: MCAP files of chosen outputs, and replaying them into a subgraph.

Nothing is imported here. What the supervisor and the workers need (the observer, taps,
budgets) lives in ``runtime/`` and ``compiler/``, so ``observe`` sits above both.
"""

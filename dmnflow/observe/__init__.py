"""Seeing a running graph: the live view, ``dmnflow top / echo / hz / bw``, Prometheus,
the web dashboard, recording to MCAP and replaying into a subgraph, latency budgets.

Everything here reads what the supervisor already gathers (the workers' counters files
and heartbeats, turned into a ``Report`` every status tick), never the data plane; a tap
mirrors one output only while someone listens (``taps``). Modules:

- ``observer``: the supervisor's side: live figures, budgets, history, taps' leases, recording;
- ``live``: windowed figures (msg/s, latency, queue depth, cpu, progress and ETA);
- ``budgets``: latency budgets, checked by the compiler and watched at run time;
- ``view``: the terminal: live view, status lines for logs, the final report at 80 columns;
- ``top``: attaching to a running graph through its admin socket;
- ``taps``: mirroring an output (worker side) and reading it (``echo``, ``hz``, ``bw``);
- ``prometheus``: ``/metrics`` from the supervisor's process;
- ``dashboard``: the live web page;
- ``record`` / ``replay``: MCAP files of chosen outputs, and replaying them into a subgraph.

Nothing is imported here: the supervisor, and so every worker, imports ``observer`` and
``budgets`` alone, which load nothing heavy.
"""

"""The ``dmnflow`` command: parse flags, call one library function, render with Rich, and map
errors to exit codes (``ExitCode``: 0 ok, 1 invalid graph, 2 usage, 3 node failed).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

try:  # the command's own start-up (typer and rich take a few hundred ms): Ctrl-C may land here
    import typer
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    from rich.tree import Tree

    from . import __version__
    from .errors import ControlError, DmnflowError, ExitCode, GraphError, Issue, IssueList, LaunchError, format_issues
except KeyboardInterrupt:  # as a command's Ctrl-C later: ExitCode.INTERRUPTED, a word, no traceback
    sys.stderr.write("interrupted while dmnflow started\n")
    raise SystemExit(130) from None

if TYPE_CHECKING:
    from .cache import Compiled
    from .plan import Plan
    from .spec import Override

# Each command imports what it runs (the compiler, torch through the nodes, zmq, pydantic's
# schemas) in its body, so `dmnflow --help` and a cached `validate` start in a blink:
# tests/unit/test_cli.py::test_cli_imports_lightly checks what importing this module loads.

# set by main(): the process ends with the command, so what it ignores at its end (a late
# Ctrl-C while a launch prints its report) need not be restored
_PROCESS_ENDS_WITH_COMMAND = False

# `--format`'s choices, as dmnflow.viz.FORMATS has them (a test checks they agree)
_VIZ_FORMATS = ("mermaid", "dot", "svg", "png", "html", "json")

app = typer.Typer(
    name="dmnflow",
    help="Declarative dataflow for low-latency ML pipelines: validate, plan and draw YAML graphs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _flags_take_no_value() -> None:
    """A flag (``--version``, ``--json``, ``--help``) is shown as a flag: typer's rich help writes
    ``<bool>`` after it, as if it took a value (its plain help does not)."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_dmnflow", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._dmnflow = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

GraphArg = Annotated[Path, typer.Argument(help="the graph YAML file", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="override a value before validation: KEY=VALUE, KEY dotted and existing "
    "(e.g. vars.count=10, nodes.counter.params.rate_hz=0); VALUE is read as YAML; repeatable")]
OverlayOpt = Annotated[list[Path] | None, typer.Option(
    "--overlay", metavar="FILE", help="apply an overlay file (a YAML mapping of dotted keys to values, each "
    "applied like --set; e.g. the best.yaml `dmnflow tune` writes) before the --set options; repeatable")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="apply the graph's profile NAME")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
NoModelsOpt = Annotated[bool, typer.Option("--no-models", help="do not load model files to check them "
                                           "against their ports")]
MetricsOpt = Annotated[str | None, typer.Option("--metrics", help="serve Prometheus /metrics at HOST:PORT "
                                                "(e.g. 127.0.0.1:9464) while the graph runs")]
DashboardOpt = Annotated[str | None, typer.Option("--dashboard", help="serve the live web dashboard at HOST:PORT "
                                                  "(e.g. 127.0.0.1:8050); the URL, with its token, is printed")]
RecordOpt = Annotated[Path | None, typer.Option("--record", help="record outputs to this MCAP file "
                                                "(all of them, or those of --edges)")]
EdgesOpt = Annotated[str | None, typer.Option("--edges", help="the outputs --record writes: node.port,node.port")]
StatusEveryOpt = Annotated[str, typer.Option("--status-every", help="without a terminal, log a status line "
                                             "this often (0: never)")]
RunArg = Annotated[str | None, typer.Argument(help="the run: its --name (default the graph's name) or its "
                                              "pid; default: the only one running", show_default=False)]


def _print_issues(issues: list[Issue]) -> None:
    """Errors and warnings as compilers print them, coloured when stderr is a terminal."""
    for line in format_issues(issues).splitlines():
        text = Text(line)
        text.highlight_regex(r"error\[[\w-]+\]", "bold red")
        text.highlight_regex(r"warning\[[\w-]+\]", "bold yellow")
        text.highlight_regex(r"^\S+:\d+:\d+:", "bold")
        text.highlight_regex(r"help:", "cyan")
        err.print(text, soft_wrap=True)


def _fail(exc: DmnflowError) -> NoReturn:
    if isinstance(exc, GraphError):
        _print_issues(exc.issues)
    else:
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
    raise typer.Exit(ExitCode.INVALID)


def _overrides(overlays: list[Path] | None, sets: list[str] | None) -> list[Override]:
    """Overlay files' settings, then the --set options (which win), as the loader takes them.
    A --set that is not KEY=VALUE is a wrong command line (exit 2), before any file is read."""
    from .spec import load_overlay

    settings = _sets(sets)
    found: list[Override] = []
    issues: list[Issue] = []
    for file in overlays or []:
        read, problems = load_overlay(file)
        found += read
        issues += problems
    if any(i.is_error for i in issues):
        _print_issues(issues)
        raise typer.Exit(ExitCode.INVALID)
    return [*found, *settings]


def _sets(sets: list[str] | None) -> list[Override]:
    """The --set options read; one that is not KEY=VALUE is a wrong command line (exit 2)."""
    from .spec import Override

    typed = IssueList()
    settings = [o for o in (Override.parse(text, typed) for text in sets or []) if o is not None]
    if typed.issues:
        _print_issues(typed.issues)
        raise typer.Exit(ExitCode.USAGE if any(i.code == "bad-override" for i in typed.issues) else
                         ExitCode.INVALID)
    return settings


def _plan(graph: Path, sets: list[str] | None, profile: str | None, models: bool = True,
          overlays: list[Path] | None = None) -> Plan:
    result = _compiled(graph, sets, profile, models, overlays)
    if result.plan_json is None:
        _fail(GraphError(result.issues))
    return result.plan()


def _compiled(graph: Path, sets: list[str] | None, profile: str | None, models: bool,
              overlays: list[Path] | None) -> Compiled:
    """The graph compiled, or the same answer from the compile cache (dmnflow/cache.py) when
    nothing it depends on has changed since."""
    from .cache import compiled

    def compute() -> tuple[Plan | None, list[Issue]]:
        from .compiler import check

        return check(graph, _overrides(overlays, sets), profile=profile, models=models)

    try:
        return compiled(graph, sets or [], overlays or [], profile, models, compute)
    except DmnflowError as exc:
        _fail(exc)


@app.command("validate")
def validate_cmd(graph: GraphArg, sets: SetOpt = None, profile: ProfileOpt = None,
                 as_json: JsonOpt = False, no_models: NoModelsOpt = False, overlays: OverlayOpt = None) -> None:
    """Check a graph and report every problem with file:line:col; exit 1 if any is an error."""
    issues = _compiled(graph, sets, profile, not no_models, overlays).issues
    errors = sum(i.is_error for i in issues)
    if as_json:
        out.print_json(json.dumps({"file": str(graph), "valid": errors == 0, "errors": errors,
                                   "warnings": len(issues) - errors,
                                   "issues": [i.to_dict() for i in issues]}))
    elif issues:
        _print_issues(issues)
    if errors:
        raise typer.Exit(ExitCode.INVALID)
    if not as_json:
        out.print(f"[green]ok[/green] {graph}")


@app.command("plan")
def plan_cmd(graph: GraphArg, sets: SetOpt = None, profile: ProfileOpt = None,
             as_json: JsonOpt = False, overlays: OverlayOpt = None) -> None:
    """Show the compiled plan: processes, pins, sockets, codecs and queue bounds."""
    # the plan does not depend on the model files' contents
    plan = _plan(graph, sets, profile, models=False, overlays=overlays)
    if as_json:
        sys.stdout.write(plan.to_json() + "\n")
        return
    _render_plan(plan)


@app.command("viz")
def viz_cmd(
    graph: GraphArg,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help=f"one of {', '.join(_VIZ_FORMATS)} "
                                            "(default: from -o's extension, else mermaid)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    sets: SetOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Draw the graph as mermaid, dot, svg, png, html or json; works offline."""
    if fmt is None:
        ext = output.suffix.lstrip(".").lower() if output else ""
        fmt = {"mmd": "mermaid", "gv": "dot"}.get(ext, ext) if ext else "mermaid"
    if fmt not in _VIZ_FORMATS:
        err.print(f"error: unknown format {fmt!r}; use one of {', '.join(_VIZ_FORMATS)}")
        raise typer.Exit(ExitCode.USAGE)
    from .viz import render

    data = render(_plan(graph, sets, profile, models=False), fmt)  # a picture needs no model loaded
    if output is None:
        if isinstance(data, bytes):
            if sys.stdout.isatty():
                err.print(f"error: {fmt} is binary; write it to a file with -o FILE")
                raise typer.Exit(ExitCode.USAGE)
            sys.stdout.buffer.write(data)
        else:
            sys.stdout.write(data if data.endswith("\n") else data + "\n")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        output.write_bytes(data)
    else:
        output.write_text(data, encoding="utf-8")
    err.print(f"wrote {output} ({fmt})")


@app.command("launch")
def launch_cmd(
    graph: GraphArg,
    sets: SetOpt = None,
    profile: ProfileOpt = None,
    duration: Annotated[str | None, typer.Option("--duration", "-d", help="stop (drain) after this long, "
                                                 "e.g. 30s; default: run until the graph ends or Ctrl-C")] = None,
    report: Annotated[Path | None, typer.Option("--report", "-r", help="write the report as JSON here")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="the run's name for `dmnflow swap` and "
                                             "`dmnflow runs`; default: the graph's name")] = None,
    no_models: NoModelsOpt = False,
    overlays: OverlayOpt = None,
    metrics: MetricsOpt = None,
    dashboard: DashboardOpt = None,
    record: RecordOpt = None,
    edges: EdgesOpt = None,
    status_every: StatusEveryOpt = "5s",
    backend: Annotated[str, typer.Option("--backend", "-b", help="where the processes run: local (this "
                                         "machine) or ray (Ray actors on a Ray cluster)")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="--backend ray: the cluster, auto or HOST:PORT "
                                                "(what `ray start --head` prints); default: a Ray started for "
                                                "this run and stopped after it")] = None,
    detach: Annotated[bool, typer.Option("--detach", help="run in the background: print the run's name once "
                                         "it is listed by `dmnflow runs`, and return; `dmnflow logs NAME -f` "
                                         "follows it, `dmnflow stop NAME` stops it")] = False,
) -> None:
    """Run the graph: one supervised process per node (or group), ZeroMQ between them."""
    from .observe.session import StartView
    from .runtime.admin import starting
    from .spec.load import graph_name

    duration_s, every_s = _durations(duration, status_every)
    _backend(backend, address)
    if detach:
        _detach()
    # listed in `dmnflow runs` from now on (a cold compile takes seconds); once the supervisor is
    # up its own entry is the one listed, and this one goes with the launch (a compile error,
    # a Ctrl-C, the run's end)
    named = graph_name(graph)
    checks = "validating" + (", checking the models" if not no_models else "")
    with (starting(name or named, named, "compiling", checks) as entry,
          StartView(err, f"compiling {graph} ...")):  # the start's phases, as they happen
        try:  # compiling imports the nodes and loads the models: Ctrl-C may land there
            plan = _launch_plan(graph, sets, profile, not no_models, overlays)
        except KeyboardInterrupt:
            err.print("interrupted while the graph compiled; no worker was started")
            raise typer.Exit(ExitCode.INTERRUPTED) from None
        entry.set("starting", f"validated; starting the {backend} backend", name=name or plan.graph,
                  graph=plan.graph)
        _run(plan, duration_s, report, name, metrics, dashboard, record, edges, every_s, backend=backend,
             address=address)


def _detach() -> NoReturn:
    """``launch --detach``: the same command again, without ``--detach``, in a session of its
    own (no terminal: its output goes to the run's ``launch.log``); return once the run is
    listed, or say why it did not start, with the exit code it ended with."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    from .runtime.admin import list_runs, starting_runs
    from .runtime.logs import LAUNCH_LOG, logs_root, run_logs

    argv = [a for a in sys.argv[1:] if a != "--detach"]
    if len(argv) == len(sys.argv) - 1:  # not our own command line (called from Python): nothing to start again
        err.print("error: --detach is for the `dmnflow launch` command line")
        raise typer.Exit(ExitCode.USAGE)
    root = logs_root()
    root.mkdir(mode=0o700, exist_ok=True)
    fd, pending = tempfile.mkstemp(prefix=".launch-", suffix=".log", dir=root)
    child = subprocess.Popen([sys.executable, "-m", "dmnflow", *argv], stdin=subprocess.DEVNULL, stdout=fd,
                             stderr=fd, start_new_session=True, env={**os.environ, "NO_COLOR": "1"})
    os.close(fd)
    try:
        with err.status("starting in the background ...") as shown:
            while (run := next((r for r in list_runs() if r.pid == child.pid), None)) is None:
                phase = next((f"{r.phase}: {r.phase_detail}" for r in starting_runs() if r.pid == child.pid), "")
                shown.update(f"starting in the background ... ({phase})" if phase else
                             "starting in the background ...")
                if child.poll() is not None:
                    err.print(Path(pending).read_text(encoding="utf-8", errors="replace"), end="", markup=False,
                              highlight=False)
                    Path(pending).unlink(missing_ok=True)
                    err.print(Text(f"error: the detached run ended before it started (exit code {child.returncode})",
                                   style="red"))
                    raise typer.Exit(child.returncode or ExitCode.NODE_FAILED)
                time.sleep(0.1)
    except KeyboardInterrupt:
        child.send_signal(2)  # (SIGINT) the run stops as Ctrl-C in its own terminal would stop it
        err.print(f"interrupted: the detached run (pid {child.pid}) stops; its output is in {pending}")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    log = run_logs(run.name) / LAUNCH_LOG
    try:
        shutil.move(pending, log)  # (the run goes on writing to it: the same file)
    except OSError:
        log = Path(pending)
    child.returncode = 0  # not ours to wait for: it runs on after we return
    out.print(f"{run.name} is running in the background (pid {run.pid}); its output: {log}")
    out.print(f"  dmnflow logs {run.name} -f    dmnflow top {run.name}    dmnflow stop {run.name}")
    raise typer.Exit(0)


def _launch_plan(graph: Path, sets: list[str] | None, profile: str | None, models: bool,
                 overlays: list[Path] | None) -> Plan:
    """The plan to launch, logged as the start's first phase (``dmnflow.start``)."""
    import logging
    import time

    t0 = time.monotonic()
    result = _compiled(graph, sets, profile, models, overlays)
    if result.plan_json is None:
        _fail(GraphError(result.issues))
    plan = result.plan()
    how = "from the compile cache" if result.cached else "models checked" if models else "models not checked"
    logging.getLogger("dmnflow.start").info("%s: validated %s: %d nodes in %d processes, %s (%.2fs)", plan.graph,
                                            graph, len(plan.nodes), len(plan.processes), how, time.monotonic() - t0)
    return plan


def _durations(duration: str | None, every: str, option: str = "--status-every") -> tuple[float | None, float]:
    """--duration and the command's other duration (``option``: --status-every, --interval, --window)."""
    from .spec import parse_duration

    try:
        duration_s = parse_duration(duration) if duration is not None else None
    except ValueError as exc:
        err.print(f"error: --duration: {exc}")
        raise typer.Exit(ExitCode.USAGE) from None
    try:
        return duration_s, parse_duration(every)
    except ValueError as exc:
        err.print(f"error: {option}: {exc}")
        raise typer.Exit(ExitCode.USAGE) from None


def _backend(backend: str, address: str | None) -> None:
    """--backend and --address: a usage error before anything is compiled."""
    from .runtime.backends import BACKENDS

    if backend not in BACKENDS or (address is not None and backend != "ray"):
        err.print(f"error: --backend {backend!r}: use {' or '.join(BACKENDS)}" if backend not in BACKENDS else
                  "error: --address is for --backend ray (the local backend runs on this machine)")
        raise typer.Exit(ExitCode.USAGE)


def _run(plan: Plan, duration_s: float | None, report: Path | None, name: str | None, metrics: str | None,
         dashboard: str | None, record: Path | None, edges: str | None, every_s: float,
         title: str | None = None, backend: str = "local", address: str | None = None) -> NoReturn:
    """Launch ``plan`` with what watches it (observe/session.py), print the report, exit with its code."""
    import signal

    from .observe.session import watching
    from .observe.view import render_report
    from .runtime import launch

    chosen = [e for e in edges.split(",") if e.strip()] if edges else None
    try:
        with watching(plan, err, status_every_s=every_s, metrics=metrics, dashboard=dashboard, record=record,
                      edges=chosen, title=title) as session:
            result = launch(session.plan, duration_s=duration_s, on_status=session.on_status, name=name,
                            observer=session.observer, backend=backend, address=address)
            # the run is over: what is left is its report (and --report's file), which a late
            # Ctrl-C (one meant for the drain `dmnflow stop` already did) must not cut short
            before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except LaunchError as exc:
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        raise typer.Exit(getattr(exc, "exit_code", ExitCode.NODE_FAILED)) from None
    except KeyboardInterrupt:
        err.print("interrupted before the graph started; every worker was stopped")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    try:
        render_report(result, out, err)
        if record is not None:
            err.print(f"wrote {record}")
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            report.write_text(result.to_json(), encoding="utf-8")
            err.print(f"wrote {report}")
    finally:
        if not _PROCESS_ENDS_WITH_COMMAND:  # called in a process that goes on (a test's CliRunner)
            signal.signal(signal.SIGINT, before)
    raise typer.Exit(result.exit_code)


@app.command("runs")
def runs_cmd(as_json: JsonOpt = False) -> None:
    """List the graphs running now (yours): name, supervisor pid, graph, phase, node states."""
    from .runtime.admin import list_runs, run_status, starting_runs

    rows = []
    for run in list_runs():
        try:
            status = run_status(run).message
        except ControlError:
            continue  # it ended while we looked
        rows.append({"name": run.name, "pid": run.pid, "graph": run.graph, "phase": status.get("phase", "running"),
                     "phase_detail": status.get("phase_detail", ""), "nodes": status.get("nodes", {})})
    for start in starting_runs():  # still compiling: no supervisor to ask yet
        rows.append({"name": start.name, "pid": start.pid, "graph": start.graph, "phase": start.phase,
                     "phase_detail": start.phase_detail, "nodes": {}})
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no graph is running")
        return
    table = Table(title="runs", title_justify="left")
    for col in ("name", "pid", "graph", "phase", "nodes"):
        table.add_column(col)
    for row in rows:
        states: dict[str, int] = {}
        for state in row["nodes"].values():
            states[state] = states.get(state, 0) + 1
        table.add_row(row["name"], str(row["pid"]), row["graph"],
                      row["phase"] + (f" ({row['phase_detail']})" if row["phase_detail"] else ""),
                      ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    out.print(table)


@app.command("stop")
def stop_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name (default the graph's name) or its pid",
                                       show_default=False)],
    wait: Annotated[str, typer.Option("--wait", help="wait this long for it to drain and end (0: do not wait)")
                    ] = "60s",
) -> None:
    """Stop a running graph as Ctrl-C in its terminal would: sources end, the graph drains, it reports."""
    from .runtime.admin import find_run, stop_run, wait_ended

    _, wait_s = _durations(None, wait, "--wait")
    try:
        target = find_run(run)
        stop_run(target)
    except ControlError as exc:
        _fail(exc)
    if wait_s <= 0:
        err.print(f"stopping {target.name} (pid {target.pid}): it drains and reports in its own terminal")
        return
    with err.status(f"stopping {target.name} (pid {target.pid}): draining..."):
        ended = wait_ended(target, wait_s)
    if not ended:
        err.print(Text(f"error: {target.name} (pid {target.pid}) is still draining after {wait}", style="red"))
        raise typer.Exit(ExitCode.INVALID)
    out.print(f"stopped {target.name} (pid {target.pid})")


@app.command("logs")
def logs_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name (default the graph's name), or the pid of one "
                                       "running now", show_default=False)],
    node: Annotated[str | None, typer.Argument(help="only the log of the process that runs this node (or of "
                                               "this process)", show_default=False)] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines until the run ends")
                      ] = False,
) -> None:
    """Print a run's logs (as `dora logs`): its launch, its supervisor, each process; kept after it ends."""
    from .runtime.admin import list_runs
    from .runtime.logs import find_logs, log_files
    from .runtime.logs import follow as follow_logs

    try:
        folder = find_logs(run)
        files = log_files(folder, node)
    except ControlError as exc:
        _fail(exc)
    if not files:
        err.print(f"run {folder.name!r} has written no log yet")
    name = folder.name

    def running() -> bool:
        return follow and any(r.name == name for r in list_runs())

    try:
        follow_logs(folder, node, lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True),
                    running)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


@app.command("outputs")
def outputs_cmd(run: RunArg = None, as_json: JsonOpt = False) -> None:
    """List a running graph's outputs (as `ros2 topic list -t`): type, codec, consumers, rate."""
    from .observe.listen import outputs
    from .observe.top import pick_run

    try:
        rows = outputs(pick_run(run))
    except ControlError as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title="outputs", title_justify="left")
    for col, justify in (("output", "left"), ("type", "left"), ("codec", "left"), ("to", "left"),
                         ("msg/s", "right"), ("sent", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["output"], row["type"], row["codec"], ", ".join(row["to"]) or "-",
                      "-" if row["msg_s"] is None else f"{row['msg_s']:,.1f}",
                      "-" if row["sent"] is None else f"{row['sent']:,}")
    out.print(table)


@app.command("swap")
def swap_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name (default the graph's name) or its pid",
                                       show_default=False)],
    node: Annotated[str, typer.Argument(help="the model node (every replica of it is swapped)", show_default=False)],
    model_file: Annotated[Path, typer.Argument(help="the new TorchScript (.pt) or torch.export (.pt2) file",
                                               show_default=False)],
    device: Annotated[str | None, typer.Option("--device", help="run it there instead: cpu, cuda, cuda:N")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="run it in float32, float16 or bfloat16")] = None,
    version: Annotated[str | None, typer.Option("--version", help="the model_version its outputs carry; "
                                                "default: file name and SHA-256 prefix")] = None,
) -> None:
    """Swap a running model node's model without losing a message: load, warm up, switch."""
    from .runtime.admin import find_run, send_command

    if not model_file.is_file():
        err.print(Text(f"error: {model_file}: no such file", style="red"))
        raise typer.Exit(ExitCode.INVALID)
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        err.print(Text(f"error: --dtype {dtype!r}: use float32, float16 or bfloat16", style="red"))
        raise typer.Exit(ExitCode.USAGE)
    args = {k: v for k, v in {"path": str(model_file.resolve()), "device": device, "dtype": dtype,
                              "version": version}.items() if v is not None}
    try:
        target = find_run(run)
        with err.status(f"loading {model_file.name} into {node} of {target.name}..."):
            answer = send_command(target, node, "swap", args)
    except ControlError as exc:
        _fail(exc)
    if answer.message:
        err.print(Text(f"error: {answer.message}", style="red"), soft_wrap=True)
    for inst, (ok, result) in sorted(answer.nodes.items()):
        if ok:
            out.print(f"[green]swapped[/green] {inst}: {result['previous']} -> {result['version']}")
        else:
            err.print(Text(f"refused {inst}: {result}", style="red"), soft_wrap=True)
    if not answer.ok:  # the model did not load or run: the old one still serves
        raise typer.Exit(ExitCode.INVALID)


@app.command("top")
def top_cmd(
    run: RunArg = None,
    interval: Annotated[str, typer.Option("--interval", help="how often to look")] = "1s",
    once: Annotated[bool, typer.Option("--once", help="print the live view once and exit")] = False,
    duration: Annotated[str | None, typer.Option("--duration", "-d", help="stop looking after this long")] = None,
) -> None:
    """Show a running graph's live view from another terminal (rates, latencies, cpu, figures)."""
    from .observe.top import top

    duration_s, interval_s = _durations(duration, interval, "--interval")
    try:
        top(run, err if err.is_terminal else out, interval_s=interval_s, once=once, duration_s=duration_s)
    except ControlError as exc:
        _fail(exc)


TopicOpt = Annotated[str, typer.Option("--topic", help="only records whose topic starts with this")]
OutputArg = Annotated[str, typer.Argument(help="the output: node.port (every replica of a replicated node)",
                                          show_default=False)]
ForOpt = Annotated[str | None, typer.Option("--duration", "-d", help="stop after this long")]


@app.command("echo")
def echo_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name or its pid", show_default=False)],
    output: OutputArg,
    topic: TopicOpt = "",
    count: Annotated[int | None, typer.Option("--count", "-c", help="exit after this many records")] = None,
    max_rate: Annotated[int, typer.Option("--max-rate", help="records per second the tap forwards at most "
                                          "(0: every one; the rest are counted as not shown)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    duration: ForOpt = None,
) -> None:
    """Print an output's records, decoded, as the graph runs."""
    from .observe.listen import echo

    duration_s, _ = _durations(duration, "0")
    _listen(echo, run, output, count=count, topic=topic, max_rate=max_rate, as_json=as_json, duration_s=duration_s)


def _listen(client: Callable[..., None], run: str, output: str, **options: Any) -> None:
    """``echo``, ``hz`` or ``bw`` on the run's tap of ``output``, until done or Ctrl-C."""
    from .runtime.admin import find_run

    try:
        client(find_run(run), output, sys.stdout, **options)
    except ControlError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command("hz")
def hz_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name or its pid", show_default=False)],
    output: OutputArg,
    topic: TopicOpt = "",
    window: Annotated[str, typer.Option("--window", help="measure over this long")] = "10s",
    duration: ForOpt = None,
) -> None:
    """Print an output's rate every second: exact msg/s, and the spread of the periods."""
    from .observe.listen import hz

    duration_s, window_s = _durations(duration, window, "--window")
    _listen(hz, run, output, window_s=window_s, topic=topic, duration_s=duration_s)


@app.command("bw")
def bw_cmd(
    run: Annotated[str, typer.Argument(help="the run: its --name or its pid", show_default=False)],
    output: OutputArg,
    topic: TopicOpt = "",
    window: Annotated[str, typer.Option("--window", help="measure over this long")] = "10s",
    duration: ForOpt = None,
) -> None:
    """Print an output's bandwidth every second (payload bytes/s)."""
    from .observe.listen import bw

    duration_s, window_s = _durations(duration, window, "--window")
    _listen(bw, run, output, window_s=window_s, topic=topic, duration_s=duration_s)


@app.command("dashboard")
def dashboard_cmd(
    run: RunArg = None,
    address: Annotated[str, typer.Option("--address", "-a", help="HOST:PORT to serve at (port 0: any)")] =
    "127.0.0.1:8050",
    duration: ForOpt = None,
) -> None:
    """Serve the live web dashboard of a running graph (the URL, with its token, is printed)."""
    from .observe.dashboard import serve_run_dashboard

    duration_s, _ = _durations(duration, "0")
    try:
        serve_run_dashboard(run, address, err, duration_s=duration_s)
    except (ControlError, LaunchError) as exc:
        _fail(exc)


@app.command("replay")
def replay_cmd(
    recording: Annotated[Path, typer.Argument(help="the MCAP file `launch --record` wrote", show_default=False)],
    graph: GraphArg,
    into: Annotated[str, typer.Option("--into", help="the node(s) the recorded streams feed, node,node: they "
                                      "and everything downstream of them run; their producers do not")],
    sets: SetOpt = None,
    profile: ProfileOpt = None,
    report: Annotated[Path | None, typer.Option("--report", "-r", help="write the report as JSON here")] = None,
    record: RecordOpt = None,
    edges: EdgesOpt = None,
    speed: Annotated[float, typer.Option("--speed", help="0: as fast as the graph takes it; 1: at the recorded "
                                         "pace; 2: twice as fast")] = 0.0,
    no_models: NoModelsOpt = False,
) -> None:
    """Feed a recording into a subgraph in event-time order, replacing the streams' producers."""
    from .observe.replay import replay_plan

    try:
        plan = replay_plan(recording, graph, [n.strip() for n in into.split(",") if n.strip()], _overrides(None, sets),
                           profile=profile, speed=speed, models=not no_models)
    except DmnflowError as exc:
        _fail(exc)
    _run(plan, None, report, None, None, None, record, edges, 5.0)


@app.command("info")
def info_cmd(
    recording: Annotated[Path, typer.Argument(help="an MCAP file `launch --record` wrote", show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Show what a recording holds (as `ros2 bag info`): graph, time range, messages per channel."""
    from .observe.listen import format_event_time
    from .observe.replay import recording_info
    from .spec import format_duration

    try:
        info = recording_info(recording)
    except DmnflowError as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps(info))
        return
    size = info["bytes"]
    lines = [("file", info["file"] + ("" if info["complete"] else "  (cut short: read up to the cut)")),
             ("size", f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"),
             ("graph", f"{info['graph']} ({info['graph_file']})" if info["graph"] else "-"),
             ("duration", format_duration(info["duration_s"])),
             ("start", format_event_time(info["start_ns"]) if info["start_ns"] is not None else "-"),
             ("end", format_event_time(info["end_ns"]) if info["end_ns"] is not None else "-"),
             ("messages", f"{info['messages']:,}")]
    for key, value in lines:
        out.print(f"{key + ':':<10} {value}", soft_wrap=True, highlight=False)
    # never cut a name (at 80 columns "/counter.num…"): the output and a schema named after it
    # are said once, in the topic (the recorder's "/" + output); where they differ, in full
    chans = info["channels"]
    show_output = any(ch["topic"] != "/" + ch["output"] for ch in chans)
    table = Table(title=f"channels: {len(chans)}", title_justify="left")
    for col in ("topic", "output", "type", "encoding", "schema", "messages"):
        if col != "output" or show_output:
            table.add_column(col, justify="right" if col == "messages" else "left",
                             no_wrap=col in ("topic", "output"))
    for ch in chans:
        schema = ch["schema_encoding"] if ch["schema_name"] and ch["schema_name"] == ch["output"] else ch["schema"]
        cells = [ch["topic"], ch["output"], ch["type"] or "-", ch["encoding"], schema, f"{ch['messages']:,}"]
        table.add_row(*(c for i, c in enumerate(cells) if i != 1 or show_output))
    out.print(table)


keys_app = typer.Typer(help="CURVE keys for tcp edges (security: {curve: DIR} in a graph).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate_cmd(
    directory: Annotated[Path, typer.Argument(help="the key directory (made 0700 if new)", show_default=False)],
    names: Annotated[list[str] | None, typer.Option("--name", help="a keypair per name: one for the graph "
                                                    "(default 'graph'), or one per host; repeatable")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace keypairs that exist (their holders are "
                                        "then refused)")] = False,
) -> None:
    """Write CURVE keypairs: NAME.key (public, to share) and NAME.key_secret (mode 0600, never shared)."""
    from .transport.security import KeyError_, check_key_name, generate_keys

    for bad in filter(None, map(check_key_name, names or [])):
        err.print(Text(f"error: --name {bad}", style="red"), soft_wrap=True)
        raise typer.Exit(ExitCode.USAGE)
    try:
        written = generate_keys(directory, names or ["graph"], force=force)
    except (KeyError_, OSError) as exc:
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        raise typer.Exit(ExitCode.INVALID) from None
    for path in written:
        out.print(f"wrote {path}" + ("  (secret: keep it on this host)" if path.name.endswith("_secret") else ""))
    out.print(f"use it with `security: {{curve: {directory}}}` in the graph (a path relative to the graph file); "
              "every host's public key (.key) goes into every host's directory")


@app.command("schema")
def schema_cmd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    tune: Annotated[bool, typer.Option("--tune", help="the schema of tune files instead of graph files")] = False,
) -> None:
    """Print the JSON Schema of graph files (or tune files), for editors (yaml-language-server, VS Code)."""
    if tune:
        from .tune.schema import tune_json_schema

        text = json.dumps(tune_json_schema(), indent=2) + "\n"
    else:
        from .spec import json_schema

        text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


@app.command("tune")
def tune_cmd(
    tune_file: Annotated[Path, typer.Argument(help="the tune file (e.g. graphs/tune_dmn.yaml)", show_default=False)],
    trials: Annotated[int | None, typer.Option("--trials", "-t", help="trials in the study (default: the file's)")
                      ] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-j", help="trials at once")] = None,
    engine: Annotated[str | None, typer.Option("--engine", "-e", help="optuna (embedded, the default) or ray")
                      ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the study in its storage (after Ctrl-C or "
                                         "a crash: interrupted trials run again)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the space and the first trials; run nothing")
                       ] = False,
    timeout: Annotated[str | None, typer.Option("--timeout", help="per trial, e.g. 10m")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="journal file or RDB URL")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="the sampler's seed")] = None,
    address: Annotated[str | None, typer.Option("--address", help="--engine ray: an existing Ray cluster")] = None,
    publish: Annotated[bool, typer.Option("--publish", help="publish trials and results on the seed's ZeroMQ "
                                          "ports (127.0.0.1:5559-5563)")] = False,
    no_plots: Annotated[bool, typer.Option("--no-plots", help="do not draw the PNG plots")] = False,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="override a key of the tune file: KEY=VALUE, KEY dotted (e.g. pbt.population=2, "
        "set.vars.days=600: a graph key every trial sets); repeatable")] = None,
) -> None:
    """Search a graph's parameters: every trial a real run of the graph; the best one written as an overlay."""
    from .tune import dry_run as draw
    from .tune import load_tune, run_study

    settings = {"trials": trials, "concurrency": concurrency, "engine": engine, "timeout": timeout,
                "storage": storage, "seed": seed, "publish": "seed" if publish else None}
    if address is not None:
        settings["ray"] = {"address": address}
    _sets(sets)  # KEY=VALUE, or a usage error before the tune file is read
    try:
        tune = load_tune(tune_file, settings, sets or [])
        if tune.issues:  # warnings: the file still runs
            _print_issues(tune.issues)
        if dry_run:
            _render_dry_run(tune, draw(tune, min(tune.spec.trials, 5)))
            return
        with _TuneView(tune) as view:
            result = run_study(tune, resume=resume, watchers=[view], plots=not no_plots)
    except DmnflowError as exc:
        _fail(exc)
    _render_study(tune, result)
    if result.interrupted:
        raise typer.Exit(ExitCode.INTERRUPTED)


class _TuneView:
    """A progress bar with the best value so far while a study runs (on a terminal), and a
    line per finished trial otherwise."""

    def __init__(self, tune: Any) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.tune = tune
        self.best: list[float] | None = None
        self.best_number: int | None = None
        self.states: dict[str, int] = {}
        self.running = 0
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                                 TextColumn("{task.fields[status]}"), console=err, transient=False,
                                 disable=not err.is_terminal)
        self.task = self.progress.add_task(tune.study, total=tune.spec.trials, status="starting",
                                           count=f"0/{tune.spec.trials}")
        self.trials: dict[int, Any] = {}  # a running trial's own bar: its graph's progress and ETA

    def __enter__(self) -> _TuneView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Any) -> None:
        if event.kind == "running":
            self._trial_progress(event)
            return
        if event.kind == "started":
            self.running += 1
        elif event.kind == "finished":
            self.running -= 1
            if event.number in self.trials:
                self.progress.remove_task(self.trials.pop(event.number))
            self.states[event.state] = self.states.get(event.state, 0) + 1
            if event.state == "complete" and event.values and self._better(event.values):
                self.best, self.best_number = list(event.values), event.number
            self.progress.advance(self.task)
            done_n = int(self.progress.tasks[0].completed) if self.progress.tasks else 0
            self.progress.update(self.task, count=f"{done_n}/{self.tune.spec.trials}")
            if not err.is_terminal:
                err.print(f"trial {event.number} {event.state}"
                          + (f" {', '.join(f'{v:.4g}' for v in event.values)}" if event.values else "")
                          + (f": {event.reason.splitlines()[0]}" if event.reason and event.state != "complete"
                             else ""), soft_wrap=True)
        names = [o.name for o in self.tune.objectives]
        best = ("best " + ", ".join(f"{n} {v:.4g}" for n, v in zip(names, self.best, strict=False))
                + f" (trial {self.best_number})") if self.best else "no complete trial yet"
        done = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
        self.progress.update(self.task, status=f"{best}; running {self.running}" + (f"; {done}" if done else ""))

    def _trial_progress(self, event: Any) -> None:
        """A running trial's graph: how far its slowest finite source is (days of days), and the ETA."""
        f = event.figures
        if f.get("fraction") is None:
            return
        unit = f" {f['unit']}" if f.get("unit") else ""
        count = f"{f['done']:g}/{f['total']:g}{unit}" if f.get("done") is not None and f.get("total") else ""
        eta = f"ETA {f['eta_s']:.0f}s" if f.get("eta_s") is not None else ""
        if event.number not in self.trials:
            self.trials[event.number] = self.progress.add_task(f"  trial {event.number}", total=1.0, status="",
                                                               count="")
        self.progress.update(self.trials[event.number], completed=float(f["fraction"]), count=count, status=eta)

    def _better(self, values: list[float]) -> bool:
        if self.best is None:
            return True
        sign = 1.0 if self.tune.directions[0] == "maximize" else -1.0
        return sign * values[0] > sign * self.best[0]


def _render_dry_run(tune: Any, drawn: list[dict[str, Any]]) -> None:
    from .observe.view import format_value

    out.print(f"[bold]{tune.study}[/bold]: {tune.spec.trials} trials of {tune.file} over "
              f"{os.path.relpath(tune.graph)}, {tune.spec.concurrency} at once, engine {tune.engine}, "
              f"sampler {tune.spec.sampler}, pruner {tune.spec.pruner}; storage {tune.storage}")
    space = Table(title="space", title_justify="left")
    for col in ("key", "range"):
        space.add_column(col)
    for param in tune.space:
        space.add_row(param.key, param.describe())
    out.print(space)
    out.print("objectives: " + ", ".join(f"{o.name} ({o.direction})" for o in tune.objectives))
    if tune.base:
        out.print("every trial: " + " ".join(f"--set {o.text}" for o in tune.base), soft_wrap=True)
    table = Table(title=f"the first {len(drawn)} trials", title_justify="left")
    table.add_column("trial", justify="right")
    keys = [p.key for p in tune.space]
    for name in _short_names(keys):
        table.add_column(name, justify="right")
    for i, values in enumerate(drawn):
        table.add_row(str(i), *[format_value(values[k]) if k in values else "-" for k in keys])
    out.print(table)


def _render_study(tune: Any, result: Any) -> None:
    from .observe.view import format_value

    names = result.objectives
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items()))
    out.print(f"[bold]{result.study}[/bold]: {len(result.rows)} trials ({counts})"
              + (" [yellow]interrupted: --resume continues[/yellow]" if result.interrupted else ""))
    keys = [p.key for p in tune.space]
    if not result.best:  # interrupted before any trial completed, or every one failed
        table: Table | Text = Text("no complete trial")
    elif len(names) == 1:  # one best trial: a key per line reads better than a wide row
        (row,) = result.best
        table = Table(title=f"best trial: {row.number}", title_justify="left")
        table.add_column("")
        table.add_column("value", justify="right")
        for name, value in zip(names, row.values or [], strict=False):
            table.add_row(f"[bold]{name}[/bold]", format_value(value))
        for key in keys:
            table.add_row(key, format_value(row.params[key]) if key in row.params else "- (not searched)")
    else:
        table = Table(title=f"Pareto front ({len(result.best)} trials)", title_justify="left")
        table.add_column("trial", justify="right")
        short = _short_names(keys)
        for name in [*names, *short]:
            table.add_column(name, justify="right")
        for row in result.best[:20]:
            table.add_row(str(row.number), *[format_value(v) for v in row.values or []],
                          *[format_value(row.params[k]) if k in row.params else "-" for k in keys])
    out.print(table)
    failed = [r for r in result.rows if r.state == "fail"]
    for row in failed[:5]:
        err.print(Text(f"trial {row.number} failed: {row.reason.splitlines()[0] if row.reason else '?'}",
                       style="red"), soft_wrap=True)
    if len(failed) > 5:
        err.print(f"... and {len(failed) - 5} more failed trials (see {result.summary})")
    if result.holdout and result.best:
        hold = result.holdout
        table = Table(title=f"trial {hold['trial']}: in sample and held out", title_justify="left")
        for col in ("figure", "in sample", "held out"):
            table.add_column(col, justify="left" if col == "figure" else "right")
        inside, outside = result.best[0].figures, hold.get("figures") or {}
        for key in _shown_figures(tune, inside, outside):
            table.add_row(key, format_value(inside.get(key, "-")), format_value(outside.get(key, "-")))
        out.print(table)
        if hold.get("state") != "complete":
            err.print(Text(f"the held-out run {hold.get('state')}: {hold.get('reason', '')}", style="red"),
                      soft_wrap=True)
    if result.overlay is not None:
        out.print(f"best trial: {result.overlay}  (run it: {result.launch_command})")
    if result.model is not None:
        out.print(f"its model: {result.model} (swap it into a running graph: dmnflow swap RUN NODE {result.model})")
    from .tune.results import importance_caveat

    caveat = importance_caveat(result.counts.get("complete", 0))
    for path in result.plots:
        out.print(f"plot: {path}" + (f"  ({caveat})" if path.name == "importances.png" and caveat else ""),
                  soft_wrap=True)


def _short_names(keys: list[str]) -> list[str]:
    """Each dotted key by its last part where that is unique among them (columns stay readable)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return [tail if last.count(tail) == 1 else key for key, tail in zip(keys, last, strict=True)]


def _shown_figures(tune: Any, *figures: dict[str, Any]) -> list[str]:
    """The objectives' figures, then up to 16 each node of the report declares (Sharpe, drawdown, ...)."""
    have = set().union(*figures)
    keys = [f"{o.node}.{o.figure}" for o in tune.objectives]
    for node in tune.figure_nodes:
        keys += [f"{node}.{k}" for k in tune.declared(node)[:16]]
    return [k for k in dict.fromkeys(keys) if k in have]


def _version(value: bool) -> None:
    if value:
        out.print(f"dmnflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    """dmnflow: declarative dataflow for low-latency ML pipelines."""


def _render_plan(plan: Plan) -> None:
    """Processes, then their nodes, then each node's inputs and outputs, as a tree."""
    from .spec import format_cpus

    profile = f", profile {plan.profile}" if plan.profile else ""
    root = Tree(f"[bold]{plan.graph}[/bold] ({plan.file}{profile}): {len(plan.processes)} processes, "
                f"{len(plan.nodes)} nodes, {len(plan.edges)} edges; machine cores "
                f"{format_cpus(plan.machine_cpus)}")
    for proc in plan.processes:
        branch = root.add(f"[bold]process {proc.name}[/bold]  cpus {format_cpus(proc.cpus) or 'any'}")
        for name in proc.nodes:
            n = plan.node(name)
            placed = (f"  host {n.host}" if n.host else "") + ("  resources " + ", ".join(
                f"{k} {v:g}" for k, v in sorted(n.resources.items())) if n.resources else "")  # --backend ray
            node = branch.add(f"[cyan]{n.name}[/cyan]  {n.uses}  restart {n.restart.when} "
                              f"(max {n.restart.max_restarts})" + (f"  layer {n.layer}" if n.layer else "") + placed
                              + ("  busy" + (" (spins: every node of its process is busy)" if all(
                                  plan.node(m).busy for m in proc.nodes) else "") if n.busy else ""))
            for i in n.inputs:
                batch = f"  batch {i.batch.max} / {i.batch.wait_s * 1e6:.0f}us" if i.batch else ""
                delivery = "  at-least-once" if i.delivery == "at-least-once" else ""
                for c in i.connects:
                    hwm = "unbounded" if c.hwm == 0 else f"{c.hwm} msgs"
                    edge = plan.edges[c.edge]
                    told = f", credit {edge.credit} told every {c.credit_every}" if edge.credit else ""
                    patience = f" (raises after {edge.block_timeout_s:g}s)" if edge.block_timeout_s else ""
                    node.add(f"in  {i.port} <- {c.node}.{c.port}  {c.transport} {c.pattern}  "
                             f"queue {i.queue} ({hwm}{told}) {i.policy}{patience}{delivery}  max {_size(i.max_bytes)}  "
                             f"reads {i.read_batch}/turn"
                             + (f"  topics {', '.join(i.topics)}" if i.topics else "")
                             + ("  feedback" if i.feedback else "") + batch)
            if n.join is not None:
                wait = f", gives up after {n.join.timeout_s * 1e3:g}ms" if n.join.timeout_s is not None else ""
                node.add(f"join {', '.join(n.join.inputs)} by event time{wait}")
            for timer, period in n.timers.items():
                node.add(f"timer {timer} every {period * 1e3:g}ms")
            if n.env:  # the secret variables its worker gets (runtime/env.py)
                node.add(f"env {', '.join(n.env)}")
            for o in n.outputs:
                for b in o.binds:
                    shm = f"  shm >= {_size(o.shm_above)} ({o.shm_slots} slots)" if b.shm and o.shm_above else ""
                    hwm = "unbounded (same process)" if b.hwm == 0 else f"{b.hwm} msgs"
                    if b.transport == "iox":
                        hwm = f"{b.hwm} records (iceoryx2 shared memory, the consumer's buffer)"
                    co = b.coalesce
                    coalesce = (f"  coalesce {co.records} records/{_size(co.bytes)}, <= {_size(co.record_max)} each, "
                                f"gap {co.gap_ns / 1e3:g}us, max age {co.max_age_ns / 1e3:g}us") if co else ""
                    control = f", control {b.control_hwm}/peer" if b.control_hwm else ""
                    node.add(f"out {o.port} \\[{o.codec}] -> {b.pattern} {b.endpoint}  hwm {hwm}{control}  "
                             f"({len(b.edges)} edge{'s' * (len(b.edges) != 1)}){coalesce}{shm}")
    if plan.budgets:
        budgets = root.add("[bold]latency budgets[/bold]")
        for b in plan.budgets:
            limits = "  ".join(f"{k} < {_seconds(getattr(b, f'{k}_s'))}" for k in ("p50", "p90", "p99", "max")
                               if getattr(b, f"{k}_s") is not None)
            budgets.add(f"{b.name}  {limits}  warm-up {_seconds(b.warmup_s)}")
    out.print(root)
    drain = plan.drain  # defaults.drain: how long a stop waits (runtime/supervisor.py)
    out.print(f"drain  idle {drain.idle_s:g}s, max " + (f"{drain.max_s:g}s" if drain.max_s is not None else "none")
              + "  (a stop waits while records move)")
    lim = plan.limits  # the bounds no YAML key sets (compiler/limits.py)
    out.print(f"limits  control {lim.control_hwm}/peer, supervisor {lim.supervisor_hwm}, admin {lim.admin_hwm}, flush "
              f"{_seconds(lim.flush_delay_s)}..{_seconds(lim.flush_delay_max_s)}, taps {lim.tap_live_hwm}/"
              f"{lim.tap_record_hwm}, viewers {lim.viewer_hwm}")
    _render_ports(plan)
    for note in plan.notes:
        out.print(f"note: {note}", soft_wrap=True, markup=False)
    for w in plan.warnings:
        err.print(f"[yellow]warning[{w['code']}][/yellow] {w['path']}: {w['message']}", soft_wrap=True)


def _seconds(s: float) -> str:
    """A bound from the YAML as it was written there: 50us, 25ms, 30s."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale or unit == "us":
            return f"{round(s / scale, 6):g}{unit}"
    return f"{s:g}s"


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def _render_ports(plan: Plan) -> None:
    """Which socket is on each tcp port: what an outside client can reach, and how."""
    rows = []
    for n in plan.nodes:
        for o in n.outputs:
            for b in o.binds:
                if b.transport == "tcp":
                    rows.append((b, f"{n.name}.{o.port}", n.process))
    if not rows:
        return
    security = plan.security
    mode = f"CURVE (keys {security.curve})" if security.curve else (
        "CURVE with a keypair made for this run at launch; fixed ports plain" if security.run_keys else
        "plain, beyond loopback allowed (insecure)" if security.insecure else "plain (loopback only)")
    table = Table(title=f"tcp ports: {mode}", title_justify="left", caption_justify="left",
                  caption="XPUB stream: a fixed port, every in-graph consumer (XSUB) and any outside SUB; "
                  "XPUB: SUB consumers; ROUTER: DEALER consumers (docs/wire.md)")
    for col in ("address", "socket", "process", "output", "in-graph edges"):
        table.add_column(col)
    seen: dict[str, int] = {}
    for b, output, process in rows:
        kind = {"stream": "XPUB stream", "pub": "XPUB", "push": "ROUTER"}[b.pattern]
        if security.curved(b.transport, b.pattern):
            kind += ", CURVE"
        edges = ", ".join(f"{plan.edges[e].dst}.{plan.edges[e].dst_port} ({plan.edges[e].policy})" for e in b.edges)
        address = b.endpoint.removeprefix("tcp://")
        if address.endswith(":*"):
            address = address[:-1] + "(chosen at start)"
        repeat = seen.get(b.id)
        seen[b.id] = 1
        table.add_row("" if repeat else address, "" if repeat else kind, process, output, edges or "-")
    out.print(table)



def main() -> None:
    """Console-script entry point."""
    global _PROCESS_ENDS_WITH_COMMAND
    _PROCESS_ENDS_WITH_COMMAND = True
    app()


if __name__ == "__main__":
    main()

"""The ``dmnflow`` command: parse flags, call one library function, render with Rich, and map
errors to exit codes (``ExitCode``: 0 ok, 1 invalid graph, 2 usage, 3 node failed).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from . import __version__
from .compiler import compile_graph, validate
from .errors import ControlError, DmnflowError, ExitCode, GraphError, Issue, LaunchError, format_issues
from .plan import Plan
from .runtime import Report, launch
from .runtime.admin import find_run, list_runs, run_status, send_command
from .runtime.backends import BACKENDS
from .spec import format_cpus, json_schema, parse_duration
from .transport.security import KeyError_, generate_keys
from .viz import FORMATS, render

app = typer.Typer(
    name="dmnflow",
    help="Declarative dataflow for low-latency ML pipelines: validate, plan and draw YAML graphs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

GraphArg = Annotated[Path, typer.Argument(help="the graph YAML file", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="override a value before validation: KEY=VALUE, KEY dotted and existing "
    "(e.g. vars.count=10, nodes.counter.params.rate_hz=0); VALUE is read as YAML; repeatable")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="apply the graph's profile NAME")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of text")]
NoModelsOpt = Annotated[bool, typer.Option("--no-models", help="do not load model files to check them "
                                           "against their ports")]


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


def _plan(graph: Path, sets: list[str] | None, profile: str | None, models: bool = True) -> Plan:
    try:
        return compile_graph(graph, sets or [], profile=profile, models=models)
    except DmnflowError as exc:
        _fail(exc)


@app.command("validate")
def validate_cmd(graph: GraphArg, sets: SetOpt = None, profile: ProfileOpt = None,
                 as_json: JsonOpt = False, no_models: NoModelsOpt = False) -> None:
    """Check a graph and report every problem with file:line:col; exit 1 if any is an error."""
    issues = validate(graph, sets or [], profile=profile, models=not no_models)
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
             as_json: JsonOpt = False) -> None:
    """Show the compiled plan: processes, pins, sockets, codecs and queue bounds."""
    plan = _plan(graph, sets, profile, models=False)  # the plan does not depend on the model files' contents
    if as_json:
        sys.stdout.write(plan.to_json() + "\n")
        return
    _render_plan(plan)


@app.command("viz")
def viz_cmd(
    graph: GraphArg,
    fmt: Annotated[str | None, typer.Option("--format", "-f", help=f"one of {', '.join(FORMATS)} "
                                            "(default: from -o's extension, else mermaid)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write here instead of stdout")] = None,
    sets: SetOpt = None,
    profile: ProfileOpt = None,
) -> None:
    """Draw the graph as mermaid, dot, svg, png, html or json; works offline."""
    if fmt is None:
        ext = output.suffix.lstrip(".").lower() if output else ""
        fmt = {"mmd": "mermaid", "gv": "dot"}.get(ext, ext) if ext else "mermaid"
    if fmt not in FORMATS:
        err.print(f"error: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
        raise typer.Exit(ExitCode.USAGE)
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
    backend: Annotated[str, typer.Option("--backend", "-b", help="where the processes run: local (this "
                                         "machine) or ray (Ray actors on a Ray cluster)")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="--backend ray: the cluster, auto or HOST:PORT "
                                                "(what `ray start --head` prints); default: a Ray started for "
                                                "this run and stopped after it")] = None,
) -> None:
    """Run the graph: one supervised process per node (or group), ZeroMQ between them."""
    try:
        duration_s = parse_duration(duration) if duration is not None else None
    except ValueError as exc:
        err.print(f"error: --duration: {exc}")
        raise typer.Exit(ExitCode.USAGE) from None
    if backend not in BACKENDS or (address is not None and backend != "ray"):
        err.print(f"error: --backend {backend!r}: use {' or '.join(BACKENDS)}" if backend not in BACKENDS else
                  "error: --address is for --backend ray (the local backend runs on this machine)")
        raise typer.Exit(ExitCode.USAGE)
    plan = _plan(graph, sets, profile, models=not no_models)
    try:
        with _live_status(plan) as show:
            result = launch(plan, duration_s=duration_s, on_status=show, name=name, backend=backend, address=address)
    except LaunchError as exc:
        err.print(Text(f"error: {exc}", style="red"), soft_wrap=True)
        raise typer.Exit(getattr(exc, "exit_code", ExitCode.NODE_FAILED)) from None
    except KeyboardInterrupt:
        err.print("interrupted before the graph started; every worker was stopped")
        raise typer.Exit(ExitCode.INTERRUPTED) from None
    _render_report(result)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(result.to_json(), encoding="utf-8")
        err.print(f"wrote {report}")
    raise typer.Exit(result.exit_code)


@app.command("runs")
def runs_cmd(as_json: JsonOpt = False) -> None:
    """List the graphs running now (yours): name, supervisor pid, graph, node states."""
    rows = []
    for run in list_runs():
        try:
            nodes = run_status(run).message.get("nodes", {})
        except ControlError:
            continue  # it ended while we looked
        rows.append({"name": run.name, "pid": run.pid, "graph": run.graph, "nodes": nodes})
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print("no graph is running")
        return
    table = Table(title="runs", title_justify="left")
    for col in ("name", "pid", "graph", "nodes"):
        table.add_column(col)
    for row in rows:
        states: dict[str, int] = {}
        for state in row["nodes"].values():
            states[state] = states.get(state, 0) + 1
        table.add_row(row["name"], str(row["pid"]), row["graph"],
                      ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
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
) -> None:
    """Print the JSON Schema of graph files, for editors (yaml-language-server, VS Code)."""
    text = json.dumps(json_schema(), indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


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
            node = branch.add(f"[cyan]{n.name}[/cyan]  {n.uses}  restart {n.restart.policy} "
                              f"(max {n.restart.max_restarts})" + (f"  layer {n.layer}" if n.layer else "") + placed)
            for i in n.inputs:
                batch = f"  batch {i.batch.max} / {i.batch.wait_s * 1e6:.0f}us" if i.batch else ""
                delivery = "  at-least-once" if i.delivery == "at-least-once" else ""
                for c in i.connects:
                    node.add(f"in  {i.port} <- {c.node}.{c.port}  {c.transport} {c.pattern}  "
                             f"queue {i.queue} {i.policy}{delivery}  max {_size(i.max_bytes)}"
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
                    hwm = "unbounded (same process)" if b.hwm == 0 else b.hwm
                    node.add(f"out {o.port} \\[{o.codec}] -> {b.pattern} {b.endpoint}  hwm {hwm}  "
                             f"({len(b.edges)} edge{'s' * (len(b.edges) != 1)})")
    out.print(root)
    _render_ports(plan)
    for w in plan.warnings:
        err.print(f"[yellow]warning[{w['code']}][/yellow] {w['path']}: {w['message']}", soft_wrap=True)


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
        "plain, beyond loopback allowed (insecure)" if security.insecure else "plain (loopback only)")
    table = Table(title=f"tcp ports: {mode}", title_justify="left", caption_justify="left",
                  caption="XPUB stream: a fixed port, every in-graph consumer (XSUB) and any outside SUB; "
                  "XPUB: SUB consumers; ROUTER: DEALER consumers (docs/wire.md)")
    for col in ("address", "socket", "process", "output", "in-graph edges"):
        table.add_column(col)
    seen: dict[str, int] = {}
    for b, output, process in rows:
        kind = {"stream": "XPUB stream", "pub": "XPUB", "push": "ROUTER"}[b.pattern]
        edges = ", ".join(f"{plan.edges[e].dst}.{plan.edges[e].dst_port} ({plan.edges[e].policy})" for e in b.edges)
        address = b.endpoint.removeprefix("tcp://")
        if address.endswith(":*"):
            address = address[:-1] + "(chosen at start)"
        repeat = seen.get(b.id)
        seen[b.id] = 1
        table.add_row("" if repeat else address, "" if repeat else kind, process, output, edges or "-")
    out.print(table)


@contextlib.contextmanager
def _live_status(plan: Plan) -> Iterator[Callable[[Report], None] | None]:
    """A live table of per-node counts while the graph runs (only on a terminal)."""
    if not err.is_terminal:
        yield None
        return
    with Live(console=err, refresh_per_second=4, transient=True) as live:
        def show(report: Report) -> None:
            table = Table(title=f"{plan.graph}: running {report.duration_s:.1f}s", title_justify="left")
            hosts = len({n.host for n in report.nodes.values()}) > 1
            for col in ("node", "in", "out", "restarts") + (("host",) if hosts else ()):
                table.add_column(col, justify="left" if col in ("node", "host") else "right")
            for n in report.nodes.values():
                table.add_row(n.name, str(n.messages_in), str(n.messages_out), str(n.restarts),
                              *((n.host,) if hosts else ()))
            live.update(table)
        yield show


def _render_report(report: Report) -> None:
    colour = {"finished": "green", "stopped": "yellow", "failed": "red"}[report.status]
    out.print(f"[bold]{report.graph}[/bold] [{colour}]{report.status}[/{colour}] in {report.duration_s:.2f}s "
              f"(start-up {report.startup_s:.2f}s)")
    nodes = Table(title="nodes", title_justify="left")
    hosts = len({n.host for n in report.nodes.values()}) > 1  # several hosts (the ray backend): say where
    for col in ("node", "in", "out", "cpu s", "restarts", "status") + (("host",) if hosts else ()):
        nodes.add_column(col, justify="left" if col in ("node", "status", "host") else "right")
    for n in report.nodes.values():
        nodes.add_row(n.name, str(n.messages_in), str(n.messages_out), f"{n.cpu_s:.2f}", str(n.restarts), n.status,
                      *((n.host,) if hosts else ()))
    out.print(nodes)
    edges = Table(title="edges", title_justify="left")
    for col in ("edge", "sent", "received", "lost", "decode errors", "p50 us", "p99 us"):
        edges.add_column(col, justify="left" if col == "edge" else "right")
    for e in report.edges:
        lost = f"[red]{e.lost}[/red]" if e.lost else "0"
        edges.add_row(f"{e.src} -> {e.dst}", str(e.sent), str(e.received), lost, str(e.decode_errors),
                      _us(e.p50_us), _us(e.p99_us))
    out.print(edges)
    if report.e2e:
        e2e = Table(title="end to end", title_justify="left")
        for col in ("source", "sink", "messages", "p50 us", "p99 us"):
            e2e.add_column(col, justify="left" if col in ("source", "sink") else "right")
        for row in report.e2e:
            e2e.add_row(row["source"], row["sink"], str(row["messages"]), _us(row["p50_us"]), _us(row["p99_us"]))
        out.print(e2e)
    summaries = [(n.name, n.summary) for n in report.nodes.values() if n.summary]
    if summaries:
        table = Table(title="node summaries", title_justify="left")
        table.add_column("node")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, summary in summaries:
            for i, (key, value) in enumerate(summary.items()):
                table.add_row(name if i == 0 else "", str(key), _value(value))
        out.print(table)
    for line in report.errors:
        err.print(Text(f"error: {line}", style="red"), soft_wrap=True)


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    text = json.dumps(value) if isinstance(value, dict | list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

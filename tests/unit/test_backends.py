"""The backend seam without a cluster: what each process asks Ray for, the cluster checks that
refuse a plan before anything starts, the placed plan, and the command line's errors.

Runs without Ray installed except where a test says so; the cluster tests are in
tests/integration/test_ray.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dmnflow
from dmnflow.errors import ExitCode
from dmnflow.runtime.backends import PlacementError, make_backend
from dmnflow.runtime.backends.ray import Demand, RayBackend, RayNode, demands, place_plan

ROOT = Path(__file__).resolve().parents[2]


def graph(tmp_path: Path, body: str, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body).lstrip(), encoding="utf-8")
    return path


def three(tmp_path: Path, extra: str = "") -> Path:
    return graph(tmp_path, f"""
        graph: three
        defaults: {{policy: block}}
        nodes:
          counter:
            uses: nodes.basic:Counter
            params: {{count: 10}}
            host: data
          scale:
            uses: nodes.basic:Scale
            inputs: {{value: counter.numbers}}
            cpus: [0]
            resources: {{gpu_box: 1}}
            {extra}
          sink:
            uses: nodes.basic:Collect
            inputs: {{values: scale.scaled}}
            params: {{path: {tmp_path}/out.jsonl}}
            host: data
        """)


def node(name: str, resources: dict[str, float], host: str | None = None, ip: str = "127.0.0.1") -> RayNode:
    labels = {"host": host} if host else {}
    return RayNode(name * 7, ip, "vm", labels, {"CPU": 1.0, **resources})


def backend_for(plan: dmnflow.Plan, nodes: list[RayNode]) -> RayBackend:
    backend = RayBackend()
    backend.plan, backend.demands = plan, demands(plan)
    backend.nodes = {n.id: n for n in nodes}
    return backend


def test_each_process_asks_for_its_pins_gpu_resources_and_host(tmp_path: Path) -> None:
    plan = dmnflow.compile_graph(three(tmp_path, "gpu: 0"), machine_cpus=[0, 1])
    asked = demands(plan)
    assert asked["counter"].needs() == {} and asked["counter"].host == "data"
    assert asked["scale"].needs() == {"CPU": 1.0, "GPU": 1.0, "gpu_box": 1.0} and asked["scale"].host is None
    assert asked["counter"].bundle() == {"CPU": 0.01}  # Ray refuses an empty placement group bundle
    assert asked["scale"].loc.startswith(str(tmp_path.name)) or "g.yaml" in asked["scale"].loc


def test_a_groups_resources_add_up_and_its_host_is_the_one_it_names(tmp_path: Path) -> None:
    path = graph(tmp_path, """
        graph: grouped
        nodes:
          counter: {uses: nodes.basic:Counter, params: {count: 3}, group: g, resources: {tape: 1}}
          scale: {uses: nodes.basic:Scale, inputs: {value: counter.numbers}, group: g, host: box, resources: {tape: 2}}
          sink: {uses: nodes.basic:Collect, inputs: {values: scale.scaled}}
        """)
    asked = demands(dmnflow.compile_graph(path))
    assert asked["g"].resources == {"tape": 3.0} and asked["g"].host == "box" and asked["g"].spec_node == "scale"


def test_the_cluster_check_names_an_unknown_host_and_resources_nobody_has(tmp_path: Path) -> None:
    plan = dmnflow.compile_graph(three(tmp_path), machine_cpus=[0, 1])
    backend = backend_for(plan, [node("a", {}, "head"), node("b", {}, "data")])
    with pytest.raises(PlacementError) as caught:
        backend._check()
    text = str(caught.value)
    assert "nodes.scale: process scale needs {CPU: 1, gpu_box: 1} and no Ray node has that much" in text
    assert caught.value.exit_code == ExitCode.INVALID
    backend = backend_for(plan, [node("a", {"gpu_box": 1}, "head")])
    with pytest.raises(PlacementError, match=r"nodes\.counter\.host: no Ray node is 'data'.*--labels host=data"):
        backend._check()
    ok = backend_for(plan, [node("a", {"gpu_box": 1}, "head"), node("b", {}, "data")])
    ok._check()  # nothing raised: every process has a node
    assert ok.nodes["b" * 7].matches("data") and ok.nodes["a" * 7].matches("127.0.0.1")


def test_processes_sharing_a_host_must_fit_one_node_together(tmp_path: Path) -> None:
    path = graph(tmp_path, """
        graph: crowded
        nodes:
          counter: {uses: nodes.basic:Counter, params: {count: 3}, host: box, resources: {slot: 1}}
          sink: {uses: nodes.basic:Collect, inputs: {values: counter.numbers}, host: box, resources: {slot: 1}}
        """)
    backend = backend_for(dmnflow.compile_graph(path), [node("a", {"slot": 1}, "box"), node("b", {"slot": 1}, "box")])
    with pytest.raises(PlacementError, match=r"processes on host 'box' \(counter, sink\) share one node"):
        backend._check()


def test_the_placed_plan_goes_over_tcp_between_nodes_and_keeps_ipc_within_one(tmp_path: Path) -> None:
    plan = dmnflow.compile_graph(three(tmp_path, "gpu: 0"), machine_cpus=[0, 1])
    node_of = {"counter": "A", "scale": "B", "sink": "A"}
    ip_of = {"counter": "10.0.0.1", "scale": "10.0.0.2", "sink": "10.0.0.1"}
    placed = place_plan(plan, node_of, ip_of, plan.security)
    assert [b.id for b in placed.binds().values()] == [b.id for b in plan.binds().values()]  # ids never change
    by_src = {(e.src, e.dst): e for e in placed.edges}
    assert by_src[("counter", "scale")].transport == "tcp" and by_src[("counter", "scale")].endpoint == \
        "tcp://10.0.0.1:*"
    assert by_src[("scale", "sink")].endpoint == "tcp://10.0.0.2:*"
    connect = placed.node("sink").inputs[0].connects[0]
    assert (connect.transport, connect.endpoint) == ("tcp", "tcp://10.0.0.2:*")
    assert placed.node("scale").gpu == 0  # Ray shows a GPU actor only its own GPU
    together = place_plan(plan, {"counter": "A", "scale": "A", "sink": "A"}, ip_of, plan.security)
    assert {e.transport for e in together.edges} == {"ipc"}  # one node: ipc, and shared memory for large tensors
    assert dmnflow.Plan.from_json(placed.to_json()) == placed


def test_a_pickle_edge_that_must_cross_nodes_is_refused(tmp_path: Path) -> None:
    path = three(tmp_path)
    text = path.read_text().replace("inputs: {value: counter.numbers}", "inputs: {value: counter.numbers}\n"
                                    "    outputs: {scaled: {codec: pickle}}")
    path.write_text(text)
    plan = dmnflow.compile_graph(path, machine_cpus=[0, 1])
    with pytest.raises(PlacementError, match="codec 'pickle' may run code while decoding"):
        place_plan(plan, {"counter": "A", "scale": "A", "sink": "B"}, {p: "10.0.0.1" for p in ("counter", "scale",
                                                                                                "sink")},
                   plan.security)


def test_backend_names_and_options_are_checked() -> None:
    with pytest.raises(PlacementError, match="no backend 'slurm'; backends are local, ray"):
        make_backend("slurm")
    with pytest.raises(PlacementError, match="the local backend takes no address"):
        make_backend("local", address="127.0.0.1:6379")


def _cli(*args: str, code: str = "") -> subprocess.CompletedProcess[str]:
    prelude = "import sys\n" + code + "from dmnflow.cli import main\nsys.argv = ['dmnflow', *sys.argv[1:]]\nmain()\n"
    return subprocess.run([sys.executable, "-c", prelude, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})


def test_without_ray_installed_the_ray_backend_says_how_to_install_it() -> None:
    result = _cli("launch", "graphs/quickstart.yaml", "--backend", "ray", code="sys.modules['ray'] = None\n")
    assert result.returncode == ExitCode.INVALID, result.stderr
    assert "the ray backend needs Ray, which is not installed here: pip install -e '.[ray]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_of_backend_and_address() -> None:
    result = _cli("launch", "graphs/quickstart.yaml", "--address", "127.0.0.1:6379")
    assert result.returncode == ExitCode.USAGE and "--address is for --backend ray" in result.stderr
    result = _cli("launch", "graphs/quickstart.yaml", "--backend", "slurm")
    assert result.returncode == ExitCode.USAGE and "--backend 'slurm': use local or ray" in result.stderr


def test_resources_name_custom_resources_only(tmp_path: Path) -> None:
    path = three(tmp_path).read_text().replace("resources: {gpu_box: 1}", "resources: {GPU: 1}")
    issues = dmnflow.validate(graph(tmp_path, path, "bad.yaml"))
    assert [(i.code, i.path) for i in issues if i.is_error] == [("invalid-value", "nodes.scale.resources")]
    assert "'GPU' is Ray's own resource" in issues[0].message


def test_a_ray_cluster_that_cannot_be_reached_is_an_error_before_anything_starts() -> None:
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _cli("launch", "graphs/quickstart.yaml", "--backend", "ray", "--address", f"127.0.0.1:{port}")
    assert result.returncode == ExitCode.INVALID, result.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}: Connection refused" in result.stderr
    result = _cli("launch", "graphs/quickstart.yaml", "--backend", "ray", "--address", "nowhere")
    assert result.returncode == ExitCode.INVALID and "is not HOST:PORT" in result.stderr


def test_demand_of_an_empty_process_fits_anywhere() -> None:
    empty = Demand("p", ["p"], "p", "g.yaml:1:1", 0.0, 0, {}, None)
    assert empty.needs() == {} and empty.bundle() == {"CPU": 0.01}


def test_a_ray_directory_whose_driver_is_gone_is_swept_at_the_next_start(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed by SIGTERM or -9 cannot remove its `dmnray-*` directory: the next start of a
    Ray for a run does, by the driver's pid in Ray's session name; a live driver's, or one not
    started yet, stays."""
    import tempfile

    from dmnflow.runtime.backends.ray import _sweep_stale

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone, live, new = tmp_path / "dmnray-gone", tmp_path / "dmnray-live", tmp_path / "dmnray-new"
    (gone / f"session_2026-12-07_15-34-13_983222_{int(dead.stdout)}").mkdir(parents=True)
    (live / f"session_2026-12-07_15-34-13_983222_{os.getpid()}").mkdir(parents=True)
    new.mkdir()
    assert _sweep_stale() == [str(gone)]
    assert live.is_dir() and new.is_dir() and not gone.exists()

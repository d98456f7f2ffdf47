"""The zygote imports numpy (and torch for model nodes) once for every worker (issue 20, a
graph that starts in a second): each worker still gets the OpenBLAS threads it would have
had importing numpy itself, one per pinned core, else one per core it may use. The ray
backend's zygote of a Ray node (``zygote.node_main``) forks a worker per connection, says
its exit code on it, and kills it when the connection closes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from dmnflow.compiler import compile_graph
from dmnflow.runtime.backends.ray_host import ZYGOTE_PAD, Forked, fork_from
from dmnflow.runtime.files import write_control
from dmnflow.transport.wire import write_token

from .procs import ROOT, alive, kill_all, launched, wait_until


@pytest.mark.parametrize("zygote", ["1", "0"])
def test_every_worker_gets_the_blas_threads_it_would_have_had(tmp_path: Path, zygote: str) -> None:
    graph = tmp_path / "blas.yaml"
    graph.write_text(textwrap.dedent(f"""\
        graph: blas
        nodes:
          counter: {{uses: nodes.basic:Counter, params: {{count: 3}}}}
          pinned: {{uses: tests.integration.nodes:BlasProbe, inputs: {{values: counter.numbers}},
                    params: {{path: "{tmp_path}/pinned"}}, cpus: [0]}}
          free: {{uses: tests.integration.nodes:BlasProbe, inputs: {{values: counter.numbers}},
                  params: {{path: "{tmp_path}/free"}}}}
        """))
    with launched(graph, env={"XDG_CACHE_HOME": str(tmp_path / "cache"), "DMNFLOW_ZYGOTE": zygote,
                              "OPENBLAS_NUM_THREADS": ""}) as run:
        _, stderr = run.proc.communicate(timeout=120)
        assert run.proc.returncode == 0, stderr
    pinned = json.loads((tmp_path / "pinned.blas").read_text())
    free = json.loads((tmp_path / "free.blas").read_text())
    assert pinned == {"threads": 1, "cores": 1}
    assert free == {"threads": len(os.sched_getaffinity(0)), "cores": len(os.sched_getaffinity(0))}


def test_a_node_zygote_forks_a_worker_per_connection_and_kills_it_when_that_closes() -> None:
    run_dir = tempfile.mkdtemp(prefix="dmnflow-")  # short: the workers bind ipc sockets in it
    plan = compile_graph(ROOT / "graphs/quickstart.yaml")
    Path(run_dir, "plan.json").write_text(plan.to_json(indent=None))
    write_token(run_dir)
    write_control(run_dir, f"ipc://{run_dir}/nobody")  # no supervisor: each worker waits for it
    path = f"{run_dir}/zygote"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    zygote = subprocess.Popen([sys.executable, "-m", "dmnflow.runtime.zygote", "--node", path, str(os.getpid()), "0",
                               "-" * ZYGOTE_PAD], cwd=ROOT, env=env)
    forked: list[Forked] = []
    try:
        assert wait_until(lambda: Path(path).exists(), 30)

        def fork(name: str) -> Forked:
            forked.append(fork_from(path, {"run_dir": run_dir, "name": name, "inc": 0, "env": env,
                                           "cwd": str(ROOT)}, 30))
            return forked[-1]

        counter, sink = fork("counter"), fork("sink")
        want = [b"-m", b"dmnflow.runtime.worker", run_dir.encode()]  # written over the zygote's, just after fork
        for w in (counter, sink):
            assert alive(w.pid) and w.poll() is None
            stat = Path(f"/proc/{w.pid}/stat").read_text()
            assert int(stat.rsplit(")", 1)[1].split()[1]) == zygote.pid  # the zygote's own child
            assert wait_until(lambda w=w: Path(f"/proc/{w.pid}/cmdline").read_bytes().split(b"\0")[1:4] == want, 10)
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) in (128 + signal.SIGTERM, -signal.SIGTERM)  # its exit code, over the connection
        counter.sock.close()  # its actor is gone: so is its worker
        assert wait_until(lambda: not alive(counter.pid), 10)
        zygote.send_signal(signal.SIGTERM)
        assert zygote.wait(10) == 0
    finally:
        if zygote.poll() is None:
            zygote.kill()
            zygote.wait(10)
        kill_all([w.pid for w in forked if alive(w.pid)])
        shutil.rmtree(run_dir, ignore_errors=True)

"""The zygote imports numpy (and torch for model nodes) once for every worker (issue 20, a
graph that starts in a second): each worker still gets the OpenBLAS threads it would have
had importing numpy itself, one per pinned core, else one per core it may use."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from .procs import launched


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

"""The front door: `dmnflow.__all__` is sorted, complete, and every export says `dmnflow`."""

from __future__ import annotations

import types

import pytest

import dmnflow


def test_all_is_sorted_and_unique():
    assert list(dmnflow.__all__) == sorted(set(dmnflow.__all__))


def test_all_is_complete():
    public = {n for n in dir(dmnflow)
              if not n.startswith("_") and not isinstance(getattr(dmnflow, n), types.ModuleType)}
    assert public == set(dmnflow.__all__)


def test_a_worker_does_not_import_the_compiler_or_the_renderers():
    import subprocess
    import sys

    code = ("import sys, dmnflow.runtime.worker; "
            "print(sorted(m for m in ('networkx', 'yaml', 'dmnflow.viz', 'dmnflow.compiler', 'rich') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_a_worker_does_not_import_the_supervisor_its_backends_or_the_observer():
    import subprocess
    import sys

    code = "import dmnflow.runtime.worker; import sys; print('dmnflow.runtime.supervisor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
    code = ("import sys, dmnflow.runtime.worker; print(sorted(m for m in ('dmnflow.runtime.backends', "
            "'dmnflow.runtime.admin', 'dmnflow.runtime.report', 'dmnflow.runtime.observer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_the_runtime_names_load_on_first_use():
    import dmnflow.runtime as runtime
    from dmnflow.runtime.report import Report
    from dmnflow.runtime.supervisor import launch

    assert runtime.launch is launch and runtime.Report is Report
    assert set(runtime.__all__) <= set(dir(runtime))
    with pytest.raises(AttributeError, match="nothing_here"):
        runtime.nothing_here  # noqa: B018


def test_exports_report_the_package():
    for name in dmnflow.__all__:
        obj = getattr(dmnflow, name)
        if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__module__")):
            assert obj.__module__ == "dmnflow", name


def test_error_tree():
    assert issubclass(dmnflow.SpecError, dmnflow.GraphError)
    assert issubclass(dmnflow.CompileError, dmnflow.GraphError)
    assert issubclass(dmnflow.GraphError, dmnflow.DmnflowError)
    assert issubclass(dmnflow.DecodeError, dmnflow.CodecError)
    assert issubclass(dmnflow.SendTimeout, dmnflow.TransportError)


def test_every_hook_the_framework_calls_is_declared_on_node():
    import inspect

    hooks = ("setup", "teardown", "run", "on_message", "on_join", "on_command", "on_budget", "summary", "progress",
             "check_model", "ports", "environment")
    for hook in hooks:
        member = getattr(dmnflow.Node, hook)
        assert callable(member) and inspect.getdoc(member), hook

    class Plain(dmnflow.Node):
        value = dmnflow.Input(float)

        def on_value(self, value, ctx):
            pass

    class Source(Plain):
        def run(self, ctx):
            yield from ()

        def summary(self):
            return {"n": 1}

    assert not Plain.is_source() and Source.is_source()
    assert not Plain.defines("summary") and Source.defines("summary") and not Plain.defines("on_join")
    assert Plain.handles("value") and not Plain.handles("other")
    assert Plain().summary() is None and Plain().progress() is None and Plain.check_model(None, None) == []

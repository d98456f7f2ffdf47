"""The `dmnflow` command: exit codes, located messages, JSON output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmnflow.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def run(*args: str):
    return runner.invoke(app, list(args))


def test_validate_ok():
    result = run("validate", "graphs/quickstart.yaml")
    assert result.exit_code == 0, result.output
    assert "ok graphs/quickstart.yaml" in result.output


def test_validate_reports_every_error_with_location(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {uses: nodes.basic:Counter, params: {cuont: 1}}\n"
                   "  b: {uses: nodes.basic:Collect, inputs: {values: a.numbrs}}\n")
    result = run("validate", str(bad))
    assert result.exit_code == 1
    assert f"{bad}:2:43: error[unknown-param]" in result.output
    assert f"{bad}:3:51: error[unknown-port]" in result.output
    assert "did you mean 'numbers'?" in result.output
    assert "2 errors, 0 warnings" in result.output
    assert "Traceback" not in result.output


def test_validate_json(tmp_path):
    result = run("validate", "graphs/quickstart.yaml", "--json", "--set", "nodes.counter.params.count=-1")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["valid"] is False and data["errors"] == 1
    [issue] = data["issues"]
    assert issue["code"] == "invalid-param" and issue["file"] == "--set nodes.counter.params.count=-1"


def test_missing_file_is_a_located_error_not_a_traceback():
    result = run("validate", "graphs/nope.yaml")
    assert result.exit_code == 1
    assert "error[file-not-found]" in result.output and "Traceback" not in result.output


def test_a_misspelt_top_level_file_gets_the_closest_one_and_an_include_the_include_hint():
    result = run("validate", "graphs/quickstrat.yaml")
    assert result.exit_code == 1
    assert "help: did you mean graphs/quickstart.yaml?" in result.output
    assert "include" not in result.output  # the include-path hint is for includes only
    included = run("validate", "graphs/invalid/file-not-found.yaml")
    assert "relative include paths start at the including file" in included.output


def test_set_of_a_misspelt_variable_is_an_error_not_a_new_variable():
    result = run("validate", "graphs/quickstart.yaml", "--set", "vars.cout=5", "--json")
    assert result.exit_code == 1
    [issue] = json.loads(result.output)["issues"]
    assert (issue["code"], issue["file"], issue["path"]) == ("bad-override", "--set vars.cout=5", "vars.cout")
    assert issue["hint"] == "did you mean 'count'?"
    assert run("validate", "graphs/quickstart.yaml", "--set", "vars.count=5").exit_code == 0


@pytest.mark.parametrize(("setting", "code", "path"), [
    ("nodes.counter.prams.count=5", "unknown-key", "nodes.counter.prams"),
    ("nodes.counter.params.cont=5", "unknown-param", "nodes.counter.params.cont"),
    ("nodes.countr.params.count=5", "bad-override", "nodes.countr.params.count"),
    ("defaults.queu=5", "unknown-key", "defaults.queu"),
    ("nodes.scale.inputs.valu=counter.numbers", "unknown-input", "nodes.scale.inputs.valu"),
    ("profiles.fast.vars.count=5", "bad-override", "profiles.fast.vars.count"),
])
def test_every_set_key_is_checked_and_its_error_points_at_the_set(setting, code, path):
    result = run("validate", "graphs/quickstart.yaml", "--set", "vars.count=10", "--set", setting, "--json")
    assert result.exit_code == 1, result.output
    [issue] = json.loads(result.output)["issues"]
    assert (issue["code"], issue["path"]) == (code, path)
    assert issue["file"] == f"--set {setting}" and issue["line"] == 0  # not into graphs/quickstart.yaml


def test_usage_errors_exit_2():
    assert run("validate").exit_code == 2
    assert run("frobnicate").exit_code == 2
    assert run("plan", "graphs/quickstart.yaml", "--bogus").exit_code == 2


def test_plan_table_and_json():
    table = run("plan", "graphs/quickstart.yaml")
    assert table.exit_code == 0, table.output
    for text in ("process counter", "in  value <- counter.numbers  ipc push  queue 1000 (64 msgs, credit",
                 "out numbers [msgpack] -> push", "limits  control 1000/peer, supervisor 10000, admin 1000",
                 "out numbers [msgpack] -> push", "ipc://{run_dir}/counter.numbers.scale.value"):
        assert text in table.output
    as_json = run("plan", "graphs/quickstart.yaml", "--json")
    plan = json.loads(as_json.output)
    assert [n["name"] for n in plan["nodes"]] == ["counter", "scale", "sink"]
    # every derived ZeroMQ number is in the JSON, from compiler/limits.py
    assert [e["credit"] for e in plan["edges"]] == [2000, 2000]
    assert plan["limits"]["flush_delay_s"] == 200e-6 and plan["limits"]["control_hwm"] == 1000


def test_plan_of_an_invalid_graph_exits_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a: {uses: nodes.basic:Countr}\n")
    result = run("plan", str(bad))
    assert result.exit_code == 1 and "did you mean nodes.basic:Counter?" in result.output


def test_schema_to_file(tmp_path):
    out = tmp_path / "schema.json"
    assert run("schema", "-o", str(out)).exit_code == 0
    assert json.loads(out.read_text())["title"] == "dmnflow graph"


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.startswith("dmnflow ")


def test_the_installed_command_runs_as_a_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  a:\n    uses: nodes.basic:Counter\n   params: {}\n")
    proc = subprocess.run([sys.executable, "-m", "dmnflow", "validate", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert f"{bad}:4:" in proc.stderr and "error[yaml-syntax]" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_keys_generate_refuses_a_name_that_is_not_a_plain_file_name(tmp_path):
    for name in ("../evil", "a/b", "..", ".hidden", ""):
        result = run("keys", "generate", str(tmp_path / "keys"), "--name", name)
        assert result.exit_code == 2, (name, result.output)
        assert "is not a plain file name" in result.output
    assert not (tmp_path / "evil.key").exists() and not (tmp_path / "keys").exists()  # nothing written anywhere
    assert run("keys", "generate", str(tmp_path / "keys"), "--name", "host-a.1").exit_code == 0


def test_a_viewer_keypair_beside_the_graphs_needs_no_security_key(tmp_path):
    """docs/network.md's viewer step: `keys generate keys --name viewer` next to `graph`."""
    g = tmp_path / "secure.yaml"
    g.write_text("security: {curve: keys}\ndefaults: {transport: tcp}\nnodes:\n"
                 "  src: {uses: nodes.basic:Counter, params: {count: 3}}\n"
                 "  sink: {uses: nodes.basic:Collect, inputs: {values: src.numbers}}\n")
    assert run("keys", "generate", str(tmp_path / "keys")).exit_code == 0
    assert run("keys", "generate", str(tmp_path / "keys"), "--name", "viewer").exit_code == 0
    result = run("validate", str(g))
    assert result.exit_code == 0, result.output
    (tmp_path / "keys" / "graph.key_secret").rename(tmp_path / "keys" / "hosta.key_secret")
    (tmp_path / "keys" / "graph.key").rename(tmp_path / "keys" / "hosta.key")
    result = run("validate", str(g), "--json")  # two secrets, none the default: which is this host's?
    [issue] = json.loads(result.output)["issues"]
    assert (result.exit_code, issue["code"], issue["path"]) == (1, "bad-key", "security.curve")
    assert "found: hosta, viewer" in issue["message"] and "security.key" in issue["message"]
    assert run("validate", str(g), "--set", "security.key=hosta").exit_code == 0
    result = run("validate", str(g), "--set", "security.key=../keys/hosta", "--json")
    assert "is not a plain file name" in json.loads(result.output)["issues"][0]["message"]


def test_a_set_that_is_not_key_value_is_a_wrong_command_line():
    for command in ("validate", "plan", "launch"):
        result = run(command, "graphs/quickstart.yaml", "--set", "vars.count")
        assert result.exit_code == 2, (command, result.output)
        assert "'vars.count' is not KEY=VALUE" in result.output
    assert run("validate", "graphs/quickstart.yaml", "--set", "vars.count=" + "9" * 5000).exit_code == 1  # a value
    assert run("tune", "graphs/tune_dmn.yaml", "--set", "trials", "--dry-run").exit_code == 2


def test_help_shows_flags_as_flags_and_value_options_by_what_they_take():
    top = run("--help")
    assert "--version" in top.output and "<bool>" not in top.output
    validate_help = run("validate", "--help").output
    assert "<bool>" not in validate_help and "<list" not in validate_help
    assert "KEY=VALUE" in validate_help and "FILE" in validate_help


@pytest.mark.parametrize(("command", "option"), [("hz", "--window"), ("bw", "--window"), ("top", "--interval")])
def test_a_bad_duration_names_its_option(command, option):
    args = [command, "run", "node.port"] if command != "top" else [command, "run"]
    result = run(*args, option, "abc")
    assert result.exit_code == 2
    assert f"error: {option}: 'abc' is not a duration" in result.output


def test_cli_imports_lightly():
    """`dmnflow --help` (and a cached validate) must not pay for the compiler, torch, zmq or
    pydantic's schemas: each command imports what it runs (issue 20, start in a second)."""
    code = ("import sys\nsys.argv = ['dmnflow', '--help']\nimport dmnflow.cli\ntry:\n    dmnflow.cli.main()\n"
            "except SystemExit:\n    pass\n"
            "heavy = ['torch', 'numpy', 'zmq', 'pydantic', 'networkx', 'yaml', 'dmnflow.compiler', 'dmnflow.spec',"
            " 'dmnflow.runtime', 'dmnflow.observe', 'dmnflow.plan', 'dmnflow.viz']\n"
            "print('imported:', ','.join(m for m in heavy if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert done.stdout.splitlines()[-1] == "imported: "


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback():
    """issue 18.3: Ctrl-C in the CLI's own start-up (typer and rich load for a few hundred ms)
    is the signal landing inside those imports; a finder raises it there, deterministically."""
    code = ("import sys\n"
            "class Interrupt:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'rich.tree':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, Interrupt())\n"
            "sys.argv = ['dmnflow', 'validate', 'graphs/quickstart.yaml']\n"
            "from dmnflow.cli import main\n"
            "main()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted while dmnflow started\n"


def test_viz_format_choices_match_the_renderer():
    from dmnflow import cli, viz

    assert cli._VIZ_FORMATS == viz.FORMATS

"""Tune files: the schema, every check located in the tune file, the space, overlays, study storage.

The corpus ``graphs/invalid/tune/<code>.yaml`` holds one mistake per file, its first line
``# expect: <code> at <line>:<col>``, as ``graphs/invalid/`` does for graphs. Nothing here
runs a trial (tests/integration/test_tune.py does).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import dmnflow
from dmnflow.errors import GraphError
from dmnflow.spec import load_overlay
from dmnflow.tune import TuneError, dry_run, load_tune, tune_json_schema
from dmnflow.tune.objectives import Objective, match_node, value_of
from dmnflow.tune.space import Param, Space, overrides_for

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "graphs" / "invalid" / "tune"
DATA = Path(__file__).resolve().parent / "data"
_EXPECT = re.compile(r"^# expect: (?P<code>[a-z-]+) at (?P<line>\d+):(?P<col>\d+)\s*$")

TUNE_CODES = {"bad-substitution", "file-not-found", "import-error", "invalid-range", "invalid-value", "missing-key",
              "unknown-key", "unknown-objective", "unknown-param", "uneven-step", "yaml-syntax"}
TUNE_WARNINGS = {"uneven-step"}  # the study still runs: load_tune keeps them in TuneFile.issues


def _expects(path: Path) -> set[tuple[str, int, int]]:
    return {(m["code"], int(m["line"]), int(m["col"])) for m in map(_EXPECT.match, path.read_text().splitlines()) if m}


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def _errors(path: Path) -> list[dmnflow.Issue]:
    with pytest.raises(GraphError) as info:
        load_tune(path)
    return info.value.errors


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_tune_corpus_file_reports_its_one_mistake_where_it_is(path: Path) -> None:
    ((code, line, col),) = _expects(path)
    assert path.stem == code, "a corpus file is named after the code it expects"
    errors = load_tune(path).issues if code in TUNE_WARNINGS else _errors(path)
    assert [(i.code, i.loc.line, i.loc.col) for i in errors] == [(code, line, col)], "\n".join(map(str, errors))
    assert errors[0].loc.file.endswith(path.name) and errors[0].message


def test_tune_corpus_covers_the_tune_checks() -> None:
    assert {p.stem for p in CORPUS.glob("*.yaml")} == TUNE_CODES


def test_every_mistake_of_a_tune_file_in_one_pass_with_a_fix() -> None:
    path = DATA / "tune_mistakes.yaml"
    errors = _errors(path)
    assert {(i.code, i.loc.line, i.loc.col) for i in errors} == _expects(path)
    assert [(i.loc.line, i.loc.col) for i in errors] == sorted((i.loc.line, i.loc.col) for i in errors)
    hints = {(i.loc.line, i.loc.col): i.hint for i in errors}
    assert hints[(10, 7)] == "did you mean 'days'?"
    assert hints[(12, 3)] == "did you mean 'target_vol'?"
    assert hints[(17, 3)] == "did you mean 'sharpe'?"
    assert "'trend'" in next(i.message for i in errors if i.loc.line == 14)  # what the graph refused, and why
    assert "meta" in next(i.message for i in errors if i.loc.line == 14)


def test_the_cli_shows_the_mistakes_located_and_exits_1_without_a_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "dmnflow", "tune", "tests/unit/data/tune_mistakes.yaml",
                             "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1, result.stderr
    assert "tests/unit/data/tune_mistakes.yaml:12:3: error[unknown-key]" in result.stderr
    assert "6 errors" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_valid_tune_file_loads_with_its_space_objectives_and_paths() -> None:
    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml")
    assert tune.study == "tune_dmn" and tune.graph == (ROOT / "graphs" / "dmn_backtest.yaml")
    assert tune.objectives[0] == Objective("performance.sharpe", "maximize", "dmn/performance", "sharpe",
                                           tune.objectives[0].loc)
    assert tune.storage == str(Path("out") / "tune_dmn" / "journal.log")
    assert tune.holdout, "the shipped DMN study reports held-out years"
    assert {p.key for p in tune.space} and all(p.loc and p.loc.line > 0 for p in tune.space)


def test_command_line_settings_replace_the_files_and_are_checked_too() -> None:
    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml", {"trials": 2, "concurrency": 1, "seed": 5})
    assert (tune.spec.trials, tune.spec.concurrency, tune.spec.seed) == (2, 1, 5)
    with pytest.raises(GraphError) as info:
        load_tune(ROOT / "graphs" / "tune_dmn.yaml", {"trials": 0})
    (issue,) = info.value.errors
    assert issue.path == "trials" and str(issue.loc) == "--trials"


def test_a_renamed_study_writes_and_relaunches_into_its_own_directory(tmp_path: Path) -> None:
    """``--set study=X``: out/X/, and a best.yaml whose run writes into out/X/best, not out/tune_dmn/best."""
    from dmnflow.tune.results import Row, write_overlay

    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml", overrides=["study=renamed"])
    assert (tune.study, tune.out_dir, tune.storage) == ("renamed", Path("out/renamed"), "out/renamed/journal.log")
    overlay = write_overlay(tune, Row(3, "complete", [1.5], {"vars.strategy": "tsmom"}), tmp_path / "best.yaml")
    settings = yaml.safe_load(overlay.read_text())
    assert settings["vars.out"] == "${env:DMNFLOW_TRIAL_DIR:-out/renamed/best}"
    assert "tune_dmn" not in overlay.read_text().split("\n", 1)[1].replace("graphs/tune_dmn.yaml", "")


def test_an_interrupted_study_with_no_complete_trial_says_so_not_pareto_front(monkeypatch, tmp_path) -> None:
    import io

    from rich.console import Console

    from dmnflow import cli
    from dmnflow.tune.results import Row, StudyResult

    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml")
    buf = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buf, width=120, color_system=None))
    rows = [Row(0, "fail", None, {}, "interrupted")]
    cli._render_study(tune, StudyResult("tune_dmn", ["maximize"], ["performance.sharpe"], rows, [], {"fail": 1},
                                        interrupted=True))
    text = buf.getvalue()
    assert "Pareto" not in text and "no complete trial" in text and "interrupted: --resume continues" in text
    best = Row(1, "complete", [1.2], {"vars.strategy": "meta"})
    buf.seek(0)
    buf.truncate(0)
    cli._render_study(tune, StudyResult("tune_dmn", ["maximize"], ["performance.sharpe"], [best], [best],
                                        {"complete": 8}, plots=[tmp_path / "importances.png"]))
    text = buf.getvalue()
    assert "best trial: 1" in text
    assert "importances.png  (from 8 complete trials: importances mean little under 20)" in text


def test_a_step_that_does_not_divide_its_range_is_a_located_warning(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(f"graph: {ROOT / 'graphs' / 'dmn_backtest.yaml'}\nset: {{vars.days: 400}}\nspace:\n"
                    "  nodes.dmn/meta.params.window: {int: [21, 250], step: 21}\n"
                    "  nodes.dmn/risk.params.max_gross: {float: [1.0, 4.0], step: 0.5}\n"
                    "objectives: {performance.sharpe: max}\n")
    tune = load_tune(path)  # a warning: the study still runs
    [warning] = tune.issues
    assert (warning.code, warning.severity, warning.loc.line, warning.loc.col) == ("uneven-step", "warning", 4, 56)
    assert "the highest value drawn is 231, never 250" in warning.message and "[21, 252]" in warning.hint
    assert [i.code for i in load_tune(ROOT / "graphs" / "tune_dmn.yaml").issues] == []  # 21 divides [21, 252]
    import warnings

    import optuna

    window, gross = tune.space.params
    with warnings.catch_warnings():  # said once, located: not again by Optuna from site-packages
        warnings.simplefilter("error")
        assert window.distribution().high == 231 and window.probes() == [21, 231]
        assert gross.distribution().high == 4.0 and gross.top == 4.0
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        assert 21 <= window.suggest(trial) <= 231


def test_schema_of_tune_files_accepts_the_shipped_ones() -> None:
    import jsonschema
    import yaml

    schema = tune_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in ("tune_dmn.yaml", "tune_dmn_pbt.yaml", "tune_futures.yaml"):
        jsonschema.validate(yaml.safe_load((ROOT / "graphs" / name).read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"graph": "g.yaml", "objectives": {"a.b": "up"}}, schema)
    out = subprocess.run([sys.executable, "-m", "dmnflow", "schema", "--tune"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["title"] == "dmnflow tune file"


# ---------------------------------------------------------------- the space


def test_params_become_distributions_and_probe_their_ends() -> None:
    assert Param("k", "float", 0.05, 0.25).probes() == [0.05, 0.25]
    assert Param("k", "int", 21, 250, 21).probes() == [21, 231]  # the last value the grid reaches
    assert Param("k", "choice", choices=("a", "b")).probes() == ["a", "b"]
    d = Param("k", "float", 1e-4, 1e-2, log=True).distribution()
    assert d.log and (d.low, d.high) == (1e-4, 1e-2)
    assert Param("k", "int", 21, 252, 21).distribution().step == 21
    assert Param("k", "float", 0.0, 1.0, 0.25).grid() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_conditional_key_is_drawn_only_when_its_condition_holds() -> None:
    import optuna

    space = Space([Param("vars.strategy", "choice", choices=("meta", "tsmom")),
                   Param("nodes.meta.params.lookback", "int", 5, 50, when=(("vars.strategy", ("meta",)),))])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.sample(study.ask()) for _ in range(30)]
    assert all(("nodes.meta.params.lookback" in d) == (d["vars.strategy"] == "meta") for d in drawn)
    assert {d["vars.strategy"] for d in drawn} == {"meta", "tsmom"}


def test_trial_values_become_located_overrides_applied_like_set() -> None:
    (ov,) = overrides_for({"nodes.dmn/risk.params.target_vol": 0.123456789012345678})
    assert ov.path == ("nodes", "dmn/risk", "params", "target_vol")
    assert ov.text == "nodes.dmn/risk.params.target_vol=0.12345678901234568"  # every digit kept
    plan = dmnflow.compile_graph(ROOT / "graphs" / "dmn_backtest.yaml", [ov], models=False)
    risk = next(n for n in plan.nodes if n.name == "dmn/risk")
    assert risk.params["target_vol"] == 0.12345678901234568


def test_dry_run_draws_the_same_first_trials_for_the_same_seed() -> None:
    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml", {"seed": 11})
    first, again = dry_run(tune, 3), dry_run(tune, 3)
    assert first == again and len(first) == 3
    assert all(set(d) <= {p.key for p in tune.space} for d in first)


def test_objectives_read_figures_and_refuse_nan() -> None:
    obj = Objective("performance.sharpe", "maximize", "dmn/performance", "sharpe")
    assert value_of(obj, {"dmn/performance.sharpe": 1.5}) == (1.5, "")
    value, why = value_of(obj, {"dmn/performance.sharpe": None})
    assert value is None and "NaN" in why
    value, why = value_of(obj, {"dmn/performance.sortino": 1.0})
    assert value is None and "sortino" in why
    assert match_node("performance", ["dmn/performance", "dmn/risk"]) == ["dmn/performance"]


# ---------------------------------------------------------------- overlays and launch --overlay


def test_an_overlay_file_is_applied_like_set_and_its_mistakes_are_located_in_it(tmp_path: Path) -> None:
    overlay = tmp_path / "best.yaml"
    overlay.write_text("# a comment\nvars.days: 300\nnodes.dmn/risk.params.targte_vol: 0.1\n"
                       "nodes.dmn/risk.params.max_weight: -1\n")
    settings, problems = load_overlay(overlay)
    assert not problems and [s.text.split("=")[0] for s in settings][0] == "vars.days"
    issues = dmnflow.validate(ROOT / "graphs" / "dmn_backtest.yaml", settings, models=False)
    located = {(i.code, i.loc.line, i.loc.col) for i in issues if i.is_error}
    assert located == {("unknown-param", 3, 1), ("invalid-param", 4, 1)}
    assert all(i.loc.file == str(overlay) for i in issues if i.is_error)
    result = subprocess.run([sys.executable, "-m", "dmnflow", "validate", "graphs/dmn_backtest.yaml", "--no-models",
                             "--overlay", str(overlay)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and f"{overlay}:3:1: error[unknown-param]" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_broken_overlay_file_is_reported_where_it_breaks(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("vars.days: [1, 2\n")
    _, problems = load_overlay(bad)
    assert [p.code for p in problems] == ["yaml-syntax"]
    _, problems = load_overlay(tmp_path / "missing.yaml")
    assert [p.code for p in problems] == ["file-not-found"]


# ---------------------------------------------------------------- study storage and missing extras


def _small(tmp_path: Path, **settings: object) -> object:
    return load_tune(ROOT / "tests" / "integration" / "data" / "tune_score.yaml",
                     {"storage": str(tmp_path / "journal.log"), "out": str(tmp_path / "out"), **settings})


def test_a_storage_file_of_another_study_is_refused(tmp_path: Path) -> None:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from dmnflow.tune.study import open_study

    journal = tmp_path / "journal.log"
    optuna.create_study(storage=JournalStorage(JournalFileBackend(str(journal))), study_name="someone-else")
    with pytest.raises(TuneError, match="holds study 'someone-else', not 'tune-score'"):
        open_study(_small(tmp_path), resume=True)
    journal.unlink()
    tune = _small(tmp_path)
    open_study(tune, resume=False)
    with pytest.raises(TuneError, match="--resume"):
        open_study(tune, resume=False)
    other = _small(tmp_path, trials=5)
    open_study(other, resume=True)  # the trial count is not part of what the study depends on
    moved = load_tune(ROOT / "tests" / "integration" / "data" / "tune_score.yaml",
                      {"storage": str(journal), "set": {"vars.count": 500}})
    with pytest.raises(TuneError, match="another space"):
        open_study(moved, resume=True)


def test_a_missing_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmnflow.tune import raytune, study

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(TuneError, match=r"pip install -e '\.\[tune\]'"):
        study.require_optuna()
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    with pytest.raises(TuneError, match=r"pip install -e '\.\[ray\]'"):
        raytune.require_ray()


def test_an_unreachable_ray_address_is_a_clear_error() -> None:
    pytest.importorskip("ray")
    from dmnflow.tune.raytune import _check_address

    with pytest.raises(TuneError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        _check_address("127.0.0.1:1")
    with pytest.raises(TuneError, match="not host:port"):
        _check_address("nowhere")
    result = subprocess.run([sys.executable, "-m", "dmnflow", "tune", "tests/integration/data/tune_score.yaml",
                             "--engine", "ray", "--address", "127.0.0.1:1", "--storage", "/dev/null/x"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "cannot reach the Ray cluster" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_every_tune_file_key_is_in_docs_tune() -> None:
    from dmnflow.tune import schema

    text = (ROOT / "docs" / "tune.md").read_text()
    models = [schema.TuneSpec, schema.ParamSpec, schema.IntermediateSpec, schema.HoldoutSpec, schema.PublishSpec,
              schema.RaySpec, schema.TrainSpec, schema.PbtSpec]
    missing = [f"{m.__name__}.{f.alias or n}" for m in models for n, f in m.model_fields.items()
               if f"`{f.alias or n}`" not in text and f"`{f.alias or n}:" not in text]
    assert missing == []


def test_the_feed_binds_the_seeds_ports_by_default() -> None:
    from dmnflow.tune.schema import PublishSpec

    spec = PublishSpec()
    assert (spec.host, spec.coordinator, spec.workers, spec.aggregator) == ("127.0.0.1", 5559, [5560, 5561, 5562],
                                                                           5563)


@pytest.mark.parametrize("name", ["tune_dmn.yaml", "tune_dmn_pbt.yaml", "tune_futures.yaml"])
def test_the_dmn_tune_files_trade_a_day_after_the_signal_in_sample_and_held_out(name: str) -> None:
    """The DMN tune files select on, and hold out with, the tradable convention (`vars.delay: 1`);
    `--set set.vars.delay=0` gives the paper's same-close fill."""
    def delay(overrides: list[Any]) -> int:
        plan = dmnflow.compile_graph(tune.graph, overrides, models=False)
        return next(n for n in plan.nodes if n.name == "dmn/risk").params["delay"]

    tune = load_tune(ROOT / "graphs" / name)
    assert delay(list(tune.base)) == 1 and tune.holdout and delay([*tune.base, *tune.holdout]) == 1
    tune = load_tune(ROOT / "graphs" / name, overrides=["set.vars.delay=0"])
    assert delay(list(tune.base)) == 0


def test_intermediate_values_come_from_the_step_node_at_exact_steps() -> None:
    """The step node keeps its figures every `intermediate.every` steps (`Node.summary_steps`):
    the trials get a setting for it, not written in their overlay (it changes no figure)."""
    from dmnflow.tune.engine import Template, exact_steps

    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml", overrides=["intermediate.every=63"])
    steps = exact_steps(tune)
    assert steps is not None and steps.text == "nodes.dmn/performance.params.steps_every=63"
    template = Template.of(tune)
    assert template.intermediate is not None and template.intermediate["exact"] is True
    assert exact_steps(load_tune(ROOT / "graphs" / "tune_futures.yaml")) is None  # no intermediate values
    tune = load_tune(ROOT / "graphs" / "tune_dmn.yaml", overrides=["intermediate.step=performance.accounts"])
    assert exact_steps(tune) is None  # a figure the node keeps no steps of: read at the status ticks


def test_a_ray_trials_error_is_one_plain_line() -> None:
    """What a failed Ray trial or PBT member reports: the exception line of Ray's traceback,
    without the terminal colour codes Ray puts in it."""
    from dmnflow.tune.raytune import plain_error

    text = ("\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=123, ip=127.0.0.1)\n  File \"x.py\", line 3\n"
            "\x1b[1;31mValueError\x1b[0m: Could not recover from checkpoint as it does not exist on storage anymore\n")
    assert plain_error(text) == "ValueError: Could not recover from checkpoint as it does not exist on storage anymore"
    assert plain_error("") == "str"

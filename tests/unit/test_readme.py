"""README.md's steps are one command a line, and .ci/run runs exactly them (tools/readme.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tools import readme

ROOT = Path(__file__).resolve().parents[2]
TEXT = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_every_readme_step_is_one_command_a_line():
    assert readme.problems(TEXT) == []
    commands = readme.steps(TEXT)
    assert [c.step for c in commands] == sorted(c.step for c in commands)
    assert {c.step for c in commands} == {1, 2, 3}
    step1 = [c.text for c in commands if c.step == 1]
    assert step1[:2] == ["python3 -m venv .venv", ". .venv/bin/activate"]
    assert step1[-1] == "dmnflow launch graphs/dmn_trading.yaml"  # the install comes before it, each alone
    assert [c.text for c in commands if c.endless] == ["dmnflow launch graphs/dmn_trading.yaml"]
    for step in (2, 3):  # a new terminal: each later step activates the environment itself
        assert next(c.text for c in commands if c.step == step) == ". .venv/bin/activate"


def test_a_chained_line_is_refused_with_its_line():
    text = "x\n```bash\n# 1. set up\npip install a && dmnflow launch g.yaml   # until Ctrl-C\necho '#' a\n```\n"
    [problem] = readme.problems(text)
    assert problem.startswith("README.md:4: two commands on one line (&&)")
    commands = readme.steps(text)
    assert [(c.text, c.endless) for c in commands] == [("pip install a && dmnflow launch g.yaml", True),
                                                       ("echo '#' a", False)]


def test_ci_runs_the_readme_steps_as_written_and_installs_nothing_of_its_own():
    assert re.findall(r"^readme_step (\d+)$", CI, re.M) == ["1", "2", "3"]
    assert "pip install" not in CI and "python3 -m venv" not in CI and "pytest -q" not in CI
    done = subprocess.run([sys.executable, "-m", "tools.readme", "--step", "1", "--ci"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    step1 = [c for c in readme.steps(TEXT) if c.step == 1]
    assert done.stdout.splitlines() == [c.text + (" --duration 20s" if c.endless else "") for c in step1]

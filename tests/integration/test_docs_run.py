"""Every command block of README.md and docs/ runs as a reader would run it, and every sample
output is what its command prints today (tools/docs.py; docs/contributing.md has the markers).

Launches are bounded: each runs until its nodes are up, a second more, then gets Ctrl-C and
must drain with exit code 0; every process is stopped by its pid whatever happens.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools import docs

BLOCKS = docs.all_blocks()
COMMANDS = [b for b in BLOCKS if b.kind == "commands"]
OUTPUTS = [b for b in BLOCKS if b.kind == "output"]


@pytest.fixture(scope="module")
def ws() -> Iterator[docs.Workspace]:
    with docs.Workspace() as workspace:  # one for all blocks: a command shown twice runs once
        yield workspace


def test_there_are_commands_and_outputs_to_check():
    assert len(COMMANDS) >= 4 and len(OUTPUTS) >= 8
    launched = {tuple(c.argv[:3]) for b in COMMANDS for c in docs.commands(b)}
    assert ("dmnflow", "launch", "graphs/dmn_trading.yaml") in launched


@pytest.mark.parametrize("block", COMMANDS, ids=lambda b: b.id)
def test_command_block_runs(block, ws):
    assert docs.smoke(block, ws) == []


@pytest.mark.parametrize("block", OUTPUTS, ids=lambda b: b.id)
def test_sample_output_is_what_its_command_prints(block, ws):
    assert docs.check_output(block, ws) == []


def test_a_drifted_sample_output_fails(ws):
    [block] = [b for b in OUTPUTS if b.page == "docs/cli.md" and "unknown-port.yaml" in b.marker.args[0]]
    drifted = docs.Block(block.page, block.line, block.lang, block.text.replace(":8:21:", ":8:22:"), block.indent,
                         block.body, block.marker)
    [problem] = docs.check_output(drifted, ws)
    assert "has drifted" in problem and "-graphs/invalid/unknown-port.yaml:8:22" in problem


def test_a_failing_command_fails(ws):
    block = docs.Block("docs/x.md", 1, "bash", "dmnflow validate graphs/quickstrat.yaml\n", "", (1, 2))
    [problem] = docs.smoke(block, ws)
    assert "exit 1" in problem and "did you mean graphs/quickstart.yaml" in problem

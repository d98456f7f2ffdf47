"""README.md's numbered steps, a command a line, for CI to run exactly as a reader types them.

    python -m tools.readme                # every step's commands, each with its step number
    python -m tools.readme --step 1       # step 1's commands, one a line, as written
    python -m tools.readme --step 1 --ci  # the same, the live run bounded (what .ci/run runs)
    python -m tools.readme --check        # exit 1 when a line holds two commands (`a && b`)

The steps are the README's first ``bash`` block: a comment ``# N. what it does`` opens step
N, and every other non-comment line is one command. A command whose comment says it runs
``until Ctrl-C`` is endless: ``--ci`` gives it ``--duration 20s`` (a drain, exit 0). One
command a line keeps each one working alone, in order: a time limit or a Ctrl-C meant for
the live run cannot cancel an install chained in front of it. Standard library only: CI
runs this before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_DURATION = "20s"  # the live run in CI: long enough to start, trade and drain

_STEP_RE = re.compile(r"^#\s*(?P<n>\d+)\.\s")
_CHAINS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Command:
    step: int
    line: int  # in README.md, 1-based
    text: str  # the command as written, without its comment
    endless: bool  # runs until Ctrl-C

    def for_ci(self) -> str:
        """The command as CI runs it: an endless ``dmnflow launch`` bounded by ``--duration``."""
        if self.endless and self.text.startswith("dmnflow launch ") and "--duration" not in self.text:
            return f"{self.text} --duration {CI_DURATION}"
        return self.text


def steps(text: str) -> list[Command]:
    """The commands of the first ``bash`` block of ``text`` (a README), in order."""
    found: list[Command] = []
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "```bash"), None)
    if start is None:
        return found
    step = 0
    for i in range(start + 1, len(lines)):
        line = lines[i].strip()
        if line.startswith("```"):
            break
        if match := _STEP_RE.match(line):
            step = int(match["n"])
            continue
        if not line or line.startswith("#"):
            continue
        command, _, comment = _split_comment(line)
        found.append(Command(step, i + 1, command, "until ctrl-c" in comment.lower()))
    return found


def _split_comment(line: str) -> tuple[str, str, str]:
    """``cmd  # note`` -> (``cmd``, ``#``, ``note``); a ``#`` inside quotes is not a comment."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), "#", line[i + 1:].strip()
    return line, "", ""


def problems(text: str) -> list[str]:
    """Lines that are not one command, and steps without any (README.md:LINE: what is wrong)."""
    found = []
    commands = steps(text)
    for cmd in commands:
        lexer = shlex.shlex(cmd.text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            words = list(lexer)
        except ValueError as exc:
            found.append(f"README.md:{cmd.line}: {exc}: {cmd.text}")
            continue
        chained = sorted(_CHAINS & set(words))
        if chained:
            found.append(f"README.md:{cmd.line}: two commands on one line ({' '.join(chained)}): put each on "
                         f"its own line, so each works alone: {cmd.text}")
        if cmd.step == 0:
            found.append(f"README.md:{cmd.line}: a command before the first `# 1. ...` step: {cmd.text}")
    if not commands:
        found.append("README.md: no ```bash block of numbered steps")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.readme", description=__doc__.splitlines()[0])
    parser.add_argument("--step", type=int, help="only this step's commands, one a line")
    parser.add_argument("--ci", action="store_true", help=f"the live run with --duration {CI_DURATION}")
    parser.add_argument("--check", action="store_true", help="exit 1 when a line is not one command")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    found = problems(text)
    if found:
        print("\n".join(found), file=sys.stderr)
        return 1
    if args.check:
        return 0
    chosen = [c for c in steps(text) if args.step is None or c.step == args.step]
    if not chosen:
        print(f"README.md has no step {args.step}", file=sys.stderr)
        return 1
    for cmd in chosen:
        shown = cmd.for_ci() if args.ci else cmd.text
        print(shown if args.step is not None else f"{cmd.step}\t{shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

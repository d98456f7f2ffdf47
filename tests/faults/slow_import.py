"""A node module whose import takes a while (a heavy library): Ctrl-C lands while the graph compiles.

It says when the import began by creating the file ``$DMNFLOW_TEST_MARKER``."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dmnflow import Node, Output

Path(os.environ["DMNFLOW_TEST_MARKER"]).touch()
time.sleep(30)


class Source(Node):
    """Never runs: the test interrupts the import."""

    out = Output(int)

    def run(self, ctx: Any) -> Iterator[tuple[str, int]]:
        yield "out", 0

"""Consoles of the command line: at the terminal's width on a terminal, unwrapped in a file or pipe (rich
would otherwise squeeze tables and lines to 80 columns)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

FILE_WIDTH = 1000
"""Columns of a console that writes to a file: wide enough that no table or line of ours wraps."""


def _console(stderr: bool) -> Console:
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else FILE_WIDTH)


def stdout_console() -> Console:
    return _console(stderr=False)


def stderr_console() -> Console:
    return _console(stderr=True)

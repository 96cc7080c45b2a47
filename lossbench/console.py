"""The rich console lossbench prints through.

Rich sizes its output to the terminal, and to 80 columns when stdout is not one (a CI log, a
file, `| tee`): tables were cut to fit, headers and values ending in "…". Output that is kept
should be whole, so off a terminal the console is as wide as its widest line, unless the user
set COLUMNS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# Wide enough for any table lossbench prints; rich pads nothing to this width (tables and text
# take the width of their content), it only stops cutting.
UNCUT_WIDTH = 10_000


def console_width() -> int | None:
    """None (rich's own choice) on a terminal or when COLUMNS is set; else UNCUT_WIDTH."""
    if os.environ.get("COLUMNS", "").isdigit():
        return None
    try:
        if sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):  # a replaced or closed stdout
        pass
    return UNCUT_WIDTH


def shown_path(path: str | os.PathLike) -> Path:
    """A path as the user would type it: relative to the working directory when inside it (the
    same form on every line lossbench prints), else as it is."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return Path(path)


def counted(n: int, noun: str) -> str:
    """"1 step", "2 steps": a count and its noun, singular for one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def output_console(**kwargs: Any):
    """A rich Console for lossbench's output, uncut off a terminal (see the module docstring)."""
    from rich.console import Console

    return Console(width=console_width(), **kwargs)

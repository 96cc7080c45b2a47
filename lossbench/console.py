"""The rich console lossbench prints through.

Rich sizes its output to the terminal, and to 80 columns when stdout is not one (a CI log, a
file, `| tee`): tables were cut to fit, headers and values ending in "…". Output that is kept
should be whole, so off a terminal the console is as wide as its widest line, unless the user
set COLUMNS. And output outlives its reader (`OutlivedStream`): a closed pipe or terminal
silences it, without stopping the work.
"""

from __future__ import annotations

import errno
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


# Set by `lossbench.api` for `quiet=True`: a console in a notebook draws through IPython's
# display, which no redirection of stdout silences.
QUIET = False


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

    kwargs["quiet"] = kwargs.get("quiet", False) or QUIET
    return Console(width=console_width(), **kwargs)


class OutlivedStream:
    """sys.stdout or sys.stderr, which outlives its reader.

    `lossbench train ... | head -2` closes the pipe after two lines; a closed terminal (SIGHUP)
    makes every later write fail with EIO. Output is a view of the run, whose results go to
    its files: the run goes on quietly. The first write that finds the reader gone sends the
    rest to /dev/null (`reader_gone` then holds), so that no later write, nor the interpreter's
    last flush, raises or prints "Exception ignored"."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        return self._outlive(self._stream.write, text, len(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._outlive(self._stream.flush)

    def _outlive(self, call: Any, *args: Any) -> Any:
        done = args[-1] if args else None  # what a write into the void returns
        if self.reader_gone:
            return done
        try:
            return call(*args[:1])
        except OSError as err:
            if err.errno not in (errno.EPIPE, errno.EIO):
                raise
        self.reader_gone = True
        discard_output(self._stream)
        return done

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...
        return getattr(self._stream, name)


def discard_output(stream: Any) -> None:
    """From now on `stream`'s file descriptor writes to /dev/null; what its buffer still holds
    goes there too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)
    try:
        stream.flush()
    except (OSError, ValueError):
        pass


def outlive_readers() -> None:
    """Make sys.stdout and sys.stderr `OutlivedStream`s (the `lossbench` command does, at start)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, OutlivedStream):
            setattr(sys, name, OutlivedStream(stream))


def stdout_reader_gone() -> bool:
    """Whether the reader of stdout left while lossbench was writing to it."""
    return isinstance(sys.stdout, OutlivedStream) and sys.stdout.reader_gone

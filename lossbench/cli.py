"""`lossbench` command line: a thin dispatcher that imports a subcommand only when it runs.

`lossbench --help` must answer in well under a second, so nothing here imports torch, Hydra or
scikit-learn at module level.
"""

from __future__ import annotations

import gc
import signal
import sys
import threading

USAGE = """\
usage: lossbench <command> [args]

Compare loss functions in PyTorch: train, validate and test from one Hydra command.

commands:
  train     run the train -> validate -> test workflow (Hydra overrides, -m for sweeps)
  eval      evaluate a finished run's best weights on its test split (or another dataset)
  compare   aggregate runs into one table: which loss is best here?
  study     every loss at its own tuned settings, same budget, compared on fresh seeds
  losses    table of every loss: tasks, hyperparameters, reference
  list      list the options of every config group (datasets, models, losses, ...)
  plot-losses  draw losses and their gradients against the true-class probability

examples:
  lossbench train loss=bce optimizer=adam
  lossbench train -m loss=ce,gce,sce dataset.noise.kind=symmetric dataset.noise.rate=0.4 seed=0,1,2
  lossbench compare outputs/multirun/2026-01-01/12-00-00
  lossbench plot-losses ce,gce,mae,sce --out anatomy.png

`lossbench train --help` shows the config groups and their options.
"""


def console_main() -> None:
    """The `lossbench` command itself (the console script, `python -m lossbench`): `main`, then
    the exit. The work is done and its files are closed by then; what remains is the
    interpreter's own clean-up, whose last garbage collections walk every object torch,
    scikit-learn and matplotlib made at import (about 0.7 s of a 5 s smoke run on a 2-core
    machine). Frozen, those objects are not walked; atexit handlers, log handlers and the
    flushing of stdout and stderr still run. Only here, in a process that is about to end:
    `main` called from a program that goes on keeps its garbage collection whole."""
    from lossbench.console import discard_output, outlive_readers, stdout_reader_gone

    # the reader of stdout (head, less, grep -m1, a closed terminal) may leave: the work goes
    # on quietly, and the command then exits as Unix tools do, 141 (128 + SIGPIPE), unless it
    # has a failure of its own to report
    outlive_readers()
    # A shell starts a background job (`lossbench study ... &`) with SIGINT ignored, and Python
    # then leaves Ctrl-C unhandled; lossbench gives `kill -INT` Ctrl-C's meaning in every part
    # of every command, not only inside a run (engine/signals.py), as in the foreground.
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except SystemExit as end:
        gc.freeze()
        if stdout_reader_gone() and not end.code:
            sys.exit(141)
        raise
    except BrokenPipeError:  # written past sys.stdout (a library's own handle on fd 1)
        discard_output(sys.stdout)
        sys.exit(141)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: the help, on stderr, and the status of a usage error
        print(USAGE, end="", file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return
    if argv[0] in ("-V", "--version"):
        from lossbench import __version__

        print(f"lossbench {__version__}")
        return
    command, rest = argv[0], argv[1:]
    from lossbench.commands import COMMANDS as commands

    if command not in commands:
        print(USAGE, end="", file=sys.stderr)
        print(f"lossbench: error: unknown command '{command}' (choose from {', '.join(commands)})",
              file=sys.stderr)
        sys.exit(2)
    module_name, func_name = commands[command].split(":")
    import importlib

    from lossbench.errors import UserError, debug_requested, exit_report, report

    func = getattr(importlib.import_module(module_name), func_name)
    try:
        code = func(rest)
    except (UserError, KeyboardInterrupt) as err:
        # a user error; Ctrl-C (Interrupted: the run saved a checkpoint and its message says
        # so; else it came before any run began)
        if debug_requested():
            raise
        reported = exit_report(err)
    except Exception as err:  # the machine's refusal (a full disk, a read-only folder): one line
        reported = None if debug_requested() else exit_report(err)
        if reported is None:
            raise
    else:
        sys.exit(code or 0)
    sys.exit(report(*reported))

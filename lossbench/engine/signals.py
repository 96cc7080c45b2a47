"""Stopping a run on a signal, the same way in every phase, and how to continue it.

The signals that stop lossbench (`STOP_SIGNALS`): Ctrl-C (SIGINT), SIGTERM (a batch scheduler,
`kill`), SIGHUP (the terminal or ssh session closed), SIGUSR1 and SIGUSR2 (a scheduler's warning
before it preempts a job or its time runs out; under submitit, SIGUSR2 also requeues the job,
see `experiment.sweep.run_sweep_job`). What one does depends on the phase of the run
(`StopOnSignal.phase`):

- start-up (config, imports, loading the data, building the model): nothing to save yet, so
  lossbench stops at once (`errors.Stopped`) and leaves nothing behind;
- training: the loop finishes its step, writes checkpoint.pt and an "interrupted" record;
- finishing (testing, report, plots, weights, metrics.json): the run is complete but for its
  files: they are all written first, then lossbench stops.

A second signal stops at once in any phase. A signal the process inherited as ignored stays
ignored (`nohup` ignores SIGHUP so that a run outlives its terminal), except SIGINT: a shell
starts a background job with SIGINT ignored, and lossbench honours Ctrl-C's meaning, sent by
`kill -INT`, in every phase as it always has in training (the `lossbench` command restores
SIGINT's default handler as it starts, `cli.console_main`, so that it also stops between runs:
between a study's trials, a sweep's jobs). Every stop ends with 128 + the
signal's number, as shells report a process a signal ended.

Nothing here imports torch: `lossbench train` installs the start-up handlers before it loads.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import threading
import time
from typing import Any

from lossbench.errors import Stopped, stop_name

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# Further signals that stop a run like these: a scheduler's own choice of warning signal
# (SUBMITIT_PREEMPT_SIGNAL, see `sweep.run_sweep_job`).
EXTRA_STOP_SIGNALS: list[int] = []

PHASES = ("start-up", "training", "finishing")


class StopOnSignal:
    """While active (a `with` block; blocks nest, the outermost installs the handlers), a stop
    signal is handled as its `phase` says (see the module docstring; a run moves it on from
    "start-up"): `requested` holds the signal's number once one arrived in training or
    finishing. Outside the main thread signals
    cannot be caught: then it does nothing.
    """

    active = 0  # blocks of this process with their handlers installed

    def __init__(self, announce: bool = True, phase: str = "training") -> None:
        assert phase in PHASES, phase
        self.requested: int | None = None  # the signal number once one arrived
        self.announce = announce  # one process of several says it on the terminal
        self.phase = phase
        self._previous: dict[int, Any] = {}
        self._depth = 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None or self.phase == "start-up":
            raise Stopped(signum)
        self.requested = signum
        if not self.announce:
            return
        doing = ("stopping after this step and saving a checkpoint" if self.phase == "training"
                 else "training is over: writing the run's results first")
        try:  # a terminal that has closed (SIGHUP) cannot be written to any more
            print(f"\nlossbench: {signal.Signals(signum).name} received: {doing} (Ctrl-C again "
                  "to stop at once)", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> StopOnSignal:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():
            for signum in dict.fromkeys((*STOP_SIGNALS, *EXTRA_STOP_SIGNALS)):
                if signum != signal.SIGINT and signal.getsignal(signum) == signal.SIG_IGN:
                    continue  # nohup's choice, and the like
                self._previous[signum] = signal.signal(signum, self._handle)
            StopOnSignal.active += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return
        if self._previous:
            StopOnSignal.active -= 1
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def quote_override_value(value: str) -> str:
    """`value` as Hydra's override parser reads it back unchanged: as it is when it is made of
    letters, digits and `_ . / + -` only, else in single quotes (a quote escaped as `\\'`, and
    the backslashes before a quote or at the end doubled, as Hydra's grammar has it)."""
    if re.fullmatch(r"[A-Za-z0-9_./+-]+", value) and not value.startswith(("+", "-")):
        return value
    escaped = re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def resume_command(run_dir: Any) -> str:
    """The command that continues a stopped run, to paste into a shell as it is:
    `lossbench train resume=<run dir>`, quoted for Hydra and then for the shell when the path
    holds spaces, quotes or letters beyond ASCII."""
    return f"lossbench train {shlex.quote('resume=' + quote_override_value(str(run_dir)))}"


def plain_resume_argument(arg: str) -> str:
    """`resume=<a path with spaces>`, as the shell passes `resume='dir with spaces'`, quoted for
    Hydra so that `resume=` receives the plain path; any other argument as it is (a value
    already in Hydra's quotes too)."""
    key, sep, value = arg.partition("=")
    if key.lstrip("+") != "resume" or not sep or value[:1] in ("'", '"'):
        return arg
    return f"{key}={quote_override_value(value)}" if value else arg


def end_with_parent(poll_s: float = 0.5) -> None:
    """In a worker process (the joblib launcher's): when the process that started it dies, even
    by SIGKILL, stop as SIGTERM stops a run (checkpoint, "interrupted" record), then end the
    process, instead of training on and idling for a parent that is gone. Watches from a daemon
    thread, once per process."""
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by init or a subreaper
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)  # a run in progress writes its checkpoint
        # the run stops and writes its record in the main thread; nobody waits for its result
        while StopOnSignal.active:
            time.sleep(0.05)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="lossbench-end-with-parent", daemon=True).start()


_watching = False


__all__ = ["EXTRA_STOP_SIGNALS", "STOP_SIGNALS", "StopOnSignal", "Stopped", "end_with_parent",
           "plain_resume_argument", "quote_override_value", "resume_command", "stop_name"]

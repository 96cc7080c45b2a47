"""The errors lossbench reports to the user in one line, without a traceback, and
`exit_report`: the one place that turns an exception into that line and the exit status."""

from __future__ import annotations

import os
from collections.abc import Iterable


def debug_requested(argv: list[str] | None = None) -> bool:
    """Tracebacks wanted: LOSSBENCH_DEBUG=1, or hydra.verbose set on the command line."""
    if os.environ.get("LOSSBENCH_DEBUG", "") not in ("", "0"):
        return True
    return any(a.startswith("hydra.verbose=") and a.split("=", 1)[1].lower() not in
               ("false", "0", "[]", "null") for a in argv or [])


class UserError(Exception):
    """A mistake in the user's config, data or command line.

    The CLI prints its message on one line and exits with status 2; the traceback is shown only
    with `LOSSBENCH_DEBUG=1` or `hydra.verbose=true`. Anything else is an internal error and keeps
    its traceback.
    """


class LossbenchError(ValueError):
    """A mistake in what was asked (an override, a path, data that does not fit): its message is
    the line `lossbench` prints before exiting with status 2."""


class Diverged(Exception):
    """The training loss became NaN or infinite.

    `run()` raises it after writing metrics.json (status "diverged", with the epoch and step) and
    history.csv, keeping the last good checkpoint.pt; its message is the line the user reads.
    `lossbench train` exits with `exit_code`; in a sweep the job counts as failed and the other
    jobs go on (it is an ordinary Exception).
    """

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP, ...: `engine.signals`) stopped the run after its
    current step, or once it had written its results.

    `run()` raises it after writing checkpoint.pt and metrics.json (status "interrupted";
    `lossbench train resume=<run dir>` continues the run), or after writing the whole record of
    a run that completed while it stopped. A KeyboardInterrupt, so that a sweep stops as well
    instead of going on to its next job. Exit status 128 + the signal number, as shells report
    (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(KeyboardInterrupt):
    """A stop signal that ended lossbench at once: during start-up, with nothing to save yet, or
    a second signal. Exit status 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(stop_name(signum))
        self.signum = signum
        self.exit_code = 128 + signum


def stopped_by(err: BaseException) -> KeyboardInterrupt | None:
    """The stop (Ctrl-C, a stop signal) that `err` was raised from, or `err` itself when it is
    one; None for anything else. A signal that arrives while a compiled module initialises
    surfaces as that module's `ImportError: initialization failed`, raised from the stop: the
    user asked to stop, and is told so, not shown the import's traceback."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def stop_name(signum: int) -> str:
    """How a stop is named to the user: Ctrl-C for SIGINT, else the signal's name."""
    import signal

    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


# From an exception to what the user reads and the exit status: the one place that decides.
# Hydra and OmegaConf are imported only when an error of theirs is being looked at, so that
# every layer may import this module (and `lossbench --help` stays fast).


def exit_report(err: BaseException, composing: bool = False) -> tuple[str, int] | None:
    """(what stderr says after "lossbench: ", exit status) for `err`; None for an internal
    error, which keeps its traceback.

    - UserError: "error: <message>", 2;
    - Diverged: its message, 3; Interrupted: its message, 128 + the signal (130 for SIGINT);
    - Stopped (a signal during start-up, or a second one): "stopped by SIGTERM", 128 + it;
    - a bare KeyboardInterrupt (Ctrl-C before any run began): "stopped by Ctrl-C", 130;
    - an error raised from one of these (`stopped_by`): as that stop;
    - a config object that could not be built because of its config (`instantiation_mistake`):
      "error: ...", 2;
    - composing=True (Hydra had not called the job yet): Hydra's and OmegaConf's composition
      errors (`config_mistake`), 2. The same types raised by a running job are bugs;
    - the machine refusing a file (`storage_fault`: a full disk, no permission, a read-only file
      system, a name too long): "error: ...", 2, wherever it was raised.
    """
    if isinstance(err, UserError):
        return f"error: {err}", 2
    err = stopped_by(err) or err
    fault = storage_fault(err)
    if fault is not None:
        return f"error: {fault}", 2
    if isinstance(err, (Diverged, Interrupted)):
        # metrics.json says what happened and checkpoint.pt is kept: the message says so
        return str(err), err.exit_code
    if isinstance(err, Stopped):
        return f"stopped by {stop_name(err.signum)}", err.exit_code
    if isinstance(err, KeyboardInterrupt):
        return "stopped by Ctrl-C", 130
    if not isinstance(err, Exception):
        return None  # SystemExit, GeneratorExit: not ours to report
    mistake = config_mistake(err) if composing else instantiation_mistake(err)
    return None if mistake is None else (f"error: {mistake}", 2)


# errno → what the user can do about it. These come from the machine, not from lossbench: no
# traceback would help, and the user is the one who can free space or change a permission.
STORAGE_FAULTS = {
    "ENOSPC": "free some space, then run the same command again",
    "EDQUOT": "the disk quota is used up: free some space, then run the same command again",
    "EACCES": "lossbench may not write (or read) there: change the folder's permissions or "
              "choose another folder",
    "EPERM": "lossbench may not write (or read) there: change the folder's permissions or "
             "choose another folder",
    "EROFS": "that file system is read-only: choose a folder on another one",
    "ENAMETOOLONG": "a file or folder name is longer than the file system allows (255 bytes "
                    "per name): choose a shorter one",
}


def storage_fault(err: BaseException) -> str | None:
    """One line for an OSError the machine raised about a file (a full disk, no permission, a
    read-only file system, a name too long): which file, why, what to do; None for any other
    error. The errors `err` was raised from (`raise ... from`) are looked at too."""
    import errno as errno_names

    seen: BaseException | None = err
    while seen is not None and not (isinstance(seen, OSError) and seen.errno is not None):
        seen = seen.__cause__
    if not isinstance(seen, OSError):
        return database_fault(err)
    name = errno_names.errorcode.get(seen.errno or 0, "")
    if name not in STORAGE_FAULTS:
        return None
    what = seen.strerror or name
    where = f"{seen.filename}: " if seen.filename is not None else ""
    return f"{where}{what[:1].lower()}{what[1:]} ({name}); {STORAGE_FAULTS[name]}"


# SQLite's words (optuna's storage) for the same faults, and what to do about each
DATABASE_FAULTS = {
    "database or disk is full": STORAGE_FAULTS["ENOSPC"],
    "readonly database": STORAGE_FAULTS["EACCES"],
    "unable to open database file": STORAGE_FAULTS["EACCES"],
    "disk image is malformed": "the file is damaged (truncated?): move it aside and run the "
                               "command again to start over",
    "file is not a database": "the file is damaged or is no SQLite database: move it aside and "
                              "run the command again to start over",
}


def database_fault(err: BaseException) -> str | None:
    """One line for a SQLite database (a study's optuna.db) that is full, read-only or
    damaged, found among the errors `err` was raised from or while handling (optuna wraps
    SQLAlchemy's, which wraps sqlite3's); None otherwise."""
    import sqlite3

    seen: BaseException | None = err
    for _ in range(8):  # a chain, not a cycle
        if seen is None:
            return None
        if isinstance(seen, sqlite3.Error):
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    text = " ".join(str(seen).split())
    for words, advice in DATABASE_FAULTS.items():
        if words in text:
            return f"the study's database (optuna.db): {text}; {advice}"
    return None


def tell(line: str) -> None:
    """Print a report of `exit_report` to stderr, as every lossbench error line looks."""
    import sys

    print(f"lossbench: {line}", file=sys.stderr)


class Reported(BaseException):
    """An error already turned into its line and exit status by `exit_report`, raised instead of
    printed when lossbench runs inside the caller's Python process (`lossbench.api`): a program
    or a notebook wants an exception it can catch, not a line on stderr and an exit. Like the
    SystemExit it stands for, it is no Exception: Hydra passes it on without logging a failed
    job, and nothing between here and the API mistakes it for a bug."""

    def __init__(self, line: str, status: int):
        super().__init__(line)
        self.line, self.status = line, status


# Set by `lossbench.api` while it runs a command in the caller's process.
RAISE_REPORTS = False


def report(line: str, status: int) -> int:
    """The end of a command that failed: print `line` and give back `status` for the exit (the
    CLI), or raise `Reported` (in-process, see RAISE_REPORTS)."""
    if RAISE_REPORTS:
        raise Reported(line, status)
    tell(line)
    # that line is the last the console shows: a library that logs at exit (torch's FakeTensor
    # cache statistics, when a stop broke its import before its own logging was set up) would
    # reach Hydra's root handler
    import logging

    logging.disable(logging.INFO)
    return status


def _lines(err: BaseException) -> list[str]:
    # OmegaConf appends "full_key: ...", "object_type=..." lines: the key is in the first
    return [ln.strip() for ln in str(err).splitlines() if ln.strip()]


def unknown_key_hint(full_key: str, known: Iterable[str], typed: str | None = None) -> str:
    """`trainer.epohcs` -> "did you mean trainer.epochs?", from the keys `known` beside it (the
    composed config's, which the typed schema closes, or a dataset loader's arguments); else
    the keys there (empty when none are known). `typed`: the
    whole key as the user typed it, so that `optimzer.lr` gets "did you mean optimizer.lr?"."""
    import difflib

    parent, _, key = full_key.rpartition(".")
    known = [str(name) for name in known
             if not str(name).startswith("_") and str(name) != "hydra"]
    rest = typed[len(full_key):] if typed and typed.startswith(full_key) else ""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {parent + '.' if parent else ''}{close[0]}{rest}?"
    return f"{parent or 'root'} keys: {', '.join(known)}" if known else ""


def config_mistake(err: BaseException) -> str | None:
    """Hydra's and OmegaConf's composition errors as one or two lines for the user (None for an
    exception that is not a config mistake). An unknown group option keeps Hydra's list of the
    available ones."""
    from hydra.errors import (ConfigCompositionException, HydraException,
                              MissingConfigException, OverrideParseException)
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException):
        return _missing_option(err)
    if isinstance(err, ConfigCompositionException) and "Ambiguous value for argument" in str(err):
        # Hydra tells this case only by its message. Its hint ends "add --multirun": the third
        # line, which two lines would cut off
        override = str(err).split("'", 2)[1] if str(err).count("'") >= 2 else "key=a,b"
        return (f"{override} gives several values: to run one job per value, use "
                f"lossbench train -m {override}\n"
                f"(a list is key=[a,b]; a string with a comma is quoted: key=\\'a,b\\')")
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override: {'; '.join(_lines(err))}"
    cause = err.__cause__
    if isinstance(err, ConfigCompositionException) and isinstance(cause, OmegaConfBaseException):
        message = f"{_lines(err)[0].rstrip('.')}: {_lines(cause)[0]}"
        key = getattr(cause, "full_key", None)
        # a key the closed schema (or a struct node) does not declare
        unknown = isinstance(cause, (ConfigKeyError, ConfigAttributeError))
        siblings = getattr(cause, "parent_node", None)
        siblings = list(siblings.keys()) if hasattr(siblings, "keys") else []
        # the key as typed, from Hydra's "Could not override 'optimzer.lr'."
        typed = str(err).split("'", 2)[1] if str(err).count("'") >= 2 else None
        hint = unknown_key_hint(key, siblings, typed) if key and unknown else ""
        rest = hint or " ".join(_lines(err)[1:2])
        return f"{message}\n{rest}" if rest else message
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return "\n".join(_lines(err)[:2])
    return None


def _missing_option(err: BaseException) -> str:
    """"Could not find 'loss/sec' (did you mean sce?)" and the group's options, from Hydra's
    MissingConfigException (its `options` and `missing_cfg_file`)."""
    import difflib

    # where the option was asked for ("In 'experiment/longtail': ...") is only in the message
    head = str(err).split("Config search path:")[0].split("Available options in")[0]
    head = " ".join(head.split()).removeprefix("In 'config': ")
    options = list(getattr(err, "options", None) or [])
    if not options:
        return head
    group, _, name = str(getattr(err, "missing_cfg_file", "")).rpartition("/")
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"{head}{hint}\navailable options in '{group}': {', '.join(options)}"


def instantiation_mistake(err: BaseException) -> str | None:
    """A config object that could not be built because of its config (an unknown `_target_`, a
    wrong or invalid argument): one line, else None (a bug keeps its traceback)."""
    from hydra.errors import InstantiationException

    if not isinstance(err, InstantiationException):
        return None
    cause = err.__cause__
    # Hydra's text is all there is to show; which case it is, the cause's type tells
    what = str(err).split("\n")[0].split(", set env var HYDRA_FULL_ERROR")[0].rstrip(":. ")
    if isinstance(cause, UserError):  # what was built found the mistake and said it
        return str(cause)
    if cause is None:
        if "full_key" not in str(err):
            return None
        # Hydra refused the target itself (its blocklist of targets that run code, e.g.
        # os.system): what the config asked for is the mistake; say it on one line
        return " ".join(str(err).split("full_key:")[0].split()).rstrip(".")
    if isinstance(cause, ImportError):  # ModuleNotFoundError too: a `_target_` not found
        # the cause repeats the path; its last line says what is missing
        hint = " ".join(str(cause).strip().splitlines()[-1].split())
        return f"{what}: {hint}" if hint else what
    if isinstance(cause, (TypeError, ValueError)):  # the arguments the config gave
        detail = " ".join(str(cause).split())
        return f"{what}: {detail}" if detail else what
    return None


def error_line(err: BaseException) -> str:
    """`Type: message` on one line, as a sweep records a failed job; for a config object that
    failed to build, its own error; a UserError's message says it all."""
    from hydra.errors import InstantiationException

    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, UserError):
        return " ".join(str(err).split())
    return " ".join(f"{type(err).__name__}: {err}".split())

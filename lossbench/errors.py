"""The errors lossbench reports to the user in one line, without a traceback."""

import os


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


class Diverged(Exception):
    """The training loss became NaN or infinite.

    `run()` raises it after writing metrics.json (status "diverged", with the epoch and step) and
    history.csv, keeping the last good checkpoint.pt; its message is the line the user reads.
    `lossbench train` exits with `exit_code`; in a sweep the job counts as failed and the other
    jobs go on (it is an ordinary Exception).
    """

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run after its current step.

    `run()` raises it after writing checkpoint.pt and metrics.json (status "interrupted");
    `lossbench train resume=<run dir>` continues the run. A KeyboardInterrupt, so that a sweep
    stops as well instead of going on to its next job. Exit status 130 for SIGINT, 143 for
    SIGTERM (128 + the signal number, as shells report).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

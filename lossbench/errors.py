"""The one error type lossbench reports to the user as a single line (exit status 2)."""


class UserError(Exception):
    """A mistake in the user's config, data or command line.

    The CLI prints its message on one line and exits with status 2; the traceback is shown only
    with `LOSSBENCH_DEBUG=1` or `hydra.verbose=true`. Anything else is an internal error and keeps
    its traceback.
    """

"""Running a lossbench command inside the caller's Python process: fresh run directories, and
the process put back as it was found."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lossbench.errors import LossbenchError


# ---------------------------------------------------------------------------- run directories

def _fresh_dir(root: Path) -> Path:
    """`root/<date>/<time>`, or `<time>-1`, `<time>-2`, ... when taken: created here, so that a
    second call in the same second (in this process or another) gets a directory of its own."""
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    for n in range(1000):
        path = root / (stamp if n == 0 else f"{stamp}-{n}")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise LossbenchError(f"{root / stamp}: no free run directory name")  # pragma: no cover


def _hydra_quote(path: Path) -> str:
    """A path as one Hydra override value (spaces, commas and quotes included)."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _overrides(overrides: Sequence[str], options: dict[str, Any]) -> list[str]:
    """The override strings, then the keyword conveniences as `key=value` (`seed=1`,
    `loss="gce"`, `epochs=20` for trainer.epochs)."""
    from omegaconf import OmegaConf

    args = [str(o) for o in overrides]
    for key, value in options.items():
        if value is None:
            continue
        key = {"epochs": "trainer.epochs", "lr": "optimizer.lr"}.get(key, key)
        if isinstance(value, (list, tuple, dict)):
            value = OmegaConf.to_yaml(OmegaConf.create({"v": value})).split(":", 1)[1].strip()
        elif isinstance(value, os.PathLike):  # resume=run.dir: a path, quoted as one value
            value = _hydra_quote(Path(value))
        elif isinstance(value, bool):
            value = str(value).lower()
        args.append(f"{key}={value}")
    return args


# ------------------------------------------------------------------ the caller's process kept

@contextlib.contextmanager
def _process_kept(quiet: bool) -> Iterator[None]:
    """Run a command in this process and put back what it changes: the working directory,
    sys.argv, the environment, logging (Hydra configures it), Hydra's runtime config (a run or
    sweep leaves its own behind, which lossbench code run next would read as its own), torch's
    default dtype, threads, deterministic mode and random states, numpy's and random's states,
    and the signal handlers a run installs to stop cleanly. `quiet` keeps the run's stdout from
    the caller."""
    import numpy as np
    import torch
    from hydra.core.hydra_config import HydraConfig

    from lossbench import console, errors

    cwd, argv, environ = os.getcwd(), list(sys.argv), dict(os.environ)
    hydra_runtime = HydraConfig.instance().cfg
    root = logging.getLogger()
    loggers = {name: (lg.level, lg.disabled, lg.propagate, list(lg.handlers))
               for name, lg in logging.root.manager.loggerDict.items()
               if isinstance(lg, logging.Logger)}
    root_state = (root.level, list(root.handlers))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    out = contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext()
    errors.RAISE_REPORTS, console.QUIET = True, quiet
    try:
        with out:
            yield
    finally:
        errors.RAISE_REPORTS, console.QUIET = False, False
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = hydra_runtime  # None (as before the call) included
        os.chdir(cwd)
        sys.argv[:] = argv
        os.environ.clear()
        os.environ.update(environ)
        root.setLevel(root_state[0])
        root.handlers[:] = root_state[1]
        for name, lg in logging.root.manager.loggerDict.items():
            if not isinstance(lg, logging.Logger):
                continue
            if name in loggers:
                lg.level, lg.disabled, lg.propagate, lg.handlers[:] = (
                    loggers[name][0], loggers[name][1], loggers[name][2], loggers[name][3])
            else:  # a logger the run made: it keeps logging, but to its own handlers only
                lg.disabled = False
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])


def _lossbench_train(args: list[str], quiet: bool) -> int:
    """`lossbench train ARGS` in this process: its exit status, or the exception a program
    should see (LossbenchError for a mistake, KeyboardInterrupt for Ctrl-C, Diverged)."""
    from lossbench.commands.train import train_command
    from lossbench.errors import Diverged, Reported

    try:
        with _process_kept(quiet):
            return train_command(args)
    except Reported as err:
        if err.status == Diverged.exit_code:
            raise Diverged(err.line) from None
        if err.status in (130, 143):  # Ctrl-C (or SIGTERM): checkpoint.pt is written
            raise KeyboardInterrupt(err.line) from None
        raise LossbenchError(err.line.removeprefix("error: ")) from None



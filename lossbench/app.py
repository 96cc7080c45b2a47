"""The Hydra application behind `lossbench train`: a thin wrapper around `lossbench.run.run`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lossbench.errors import Diverged, Interrupted, UserError
from lossbench.schema import check_config, register_schemas, unknown_key_hint

register_schemas()  # conf/config.yaml's defaults list starts with the typed schema

# Set once Hydra has composed the config and calls the job: an exception before that is a
# mistake in the command line or the config files, reported in one or two lines.
_job_started = False


def _debug(argv: list[str] | None = None) -> bool:
    """Tracebacks wanted: LOSSBENCH_DEBUG=1, or hydra.verbose set on the command line."""
    if os.environ.get("LOSSBENCH_DEBUG", "") not in ("", "0"):
        return True
    return any(a.startswith("hydra.verbose=") and a.split("=", 1)[1].lower() not in
               ("false", "0", "[]", "null") for a in argv or [])


def config_error_message(err: BaseException) -> str | None:
    """Hydra's and OmegaConf's composition errors as one or two lines for the user (None for an
    exception that is not a config mistake). An unknown group option keeps Hydra's list of the
    available ones."""
    from hydra.errors import (ConfigCompositionException, HydraException,
                              MissingConfigException, OverrideParseException)
    from omegaconf.errors import OmegaConfBaseException

    def lines(exc: BaseException) -> list[str]:
        # OmegaConf appends "full_key: ...", "object_type=..." lines: the key is in the first
        return [ln.strip() for ln in str(exc).splitlines() if ln.strip()]

    if isinstance(err, MissingConfigException):
        text = str(err).split("Config search path:")[0]
        head, _, options = text.partition("Available options in")
        head = head.strip().removeprefix("In 'config': ")
        if not options:
            return " ".join(head.split())
        group, _, names = options.partition(":")
        return f"{head}\navailable options in{group}: {', '.join(names.split())}"
    if isinstance(err, OverrideParseException):
        return f"cannot parse the override: {'; '.join(lines(err))}"
    if isinstance(err, ConfigCompositionException) and isinstance(err.__cause__,
                                                                   OmegaConfBaseException):
        first = lines(err)[0].rstrip(".")
        cause = err.__cause__
        message = f"{first}: {lines(cause)[0]}"
        key = getattr(cause, "full_key", None)
        hint = unknown_key_hint(key) if key and "not in" in message else ""
        rest = hint or " ".join(lines(err)[1:2])
        return f"{message}\n{rest}" if rest else message
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return "\n".join(lines(err)[:2])
    return None


def _instantiation_mistake(err: BaseException) -> str | None:
    """A config object that could not be built because of its config (an unknown `_target_`, a
    wrong or invalid argument): one line, else None (a bug keeps its traceback)."""
    from hydra.errors import InstantiationException

    if not isinstance(err, InstantiationException):
        return None
    cause = err.__cause__
    if not ("Error locating target" in str(err)
            or isinstance(cause, (TypeError, ValueError, ImportError))):
        return None
    what = str(err).split("\n")[0].split(", set env var HYDRA_FULL_ERROR")[0].rstrip(":. ")
    if "Error locating target" in what:  # the cause repeats the path; its last line helps
        hint = str(cause).strip().splitlines()[-1] if cause is not None else ""
        return f"{what}: {' '.join(hint.split())}" if hint else what
    detail = " ".join(str(cause).split()) if cause is not None else ""
    return f"{what}: {detail}" if detail else what


def _discard_empty_run_dir(run_dir: Path, user_dir: Path) -> None:
    """A run stopped by a user error leaves nothing behind: remove the directory Hydra made for
    it, unless it already holds other files, and then the folders above it that are left empty
    (outputs/<date>/, outputs/), up to but never including user_dir, where lossbench was run."""
    run_dir, user_dir = run_dir.resolve(), user_dir.resolve()
    if run_dir == user_dir or run_dir in user_dir.parents:
        return  # hydra.run.dir=. (or above): that folder is the user's, not Hydra's
    leftovers = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    if set(leftovers) <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        return
    # Hydra made the run directory with mkdir(parents=True), so the empty folders between it and
    # user_dir are Hydra's. A run directory outside user_dir (hydra.run.dir=/elsewhere/...) keeps
    # its parents: they may be the user's. rmdir refuses a folder that holds anything.
    parent = run_dir.parent
    while user_dir in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty (an older run, the user's files) or not ours to remove
            break
        parent = parent.parent


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    global _job_started
    _job_started = True
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a failing job (user errors included) is recorded and the sweep goes on; completed
        # jobs of a resumed sweep are skipped (lossbench/sweep.py)
        from lossbench.run import choices, run
        from lossbench.sweep import run_sweep_job

        return run_sweep_job(cfg, hydra_cfg, run, choices)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    user_dir = Path(hydra_cfg.runtime.cwd)  # where lossbench was run, even with hydra.job.chdir
    try:
        check_config(cfg)  # before torch is even imported
        from lossbench.run import run

        return run(cfg)
    except (Diverged, Interrupted) as err:
        # metrics.json says what happened and checkpoint.pt is kept: one line, no traceback
        if hydra_cfg.verbose or _debug():
            raise
        print(f"lossbench: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        mistake = str(err) if isinstance(err, UserError) else _instantiation_mistake(err)
        if mistake is None or hydra_cfg.verbose or _debug():
            raise
        _discard_empty_run_dir(output_dir, user_dir)
        print(f"lossbench: error: {mistake}", file=sys.stderr)
        sys.exit(2)
    finally:
        if cfg.get("resume"):  # the resumed run went on in its own directory
            _discard_empty_run_dir(output_dir, user_dir)


def train_command(argv: list[str]) -> int:
    """`lossbench train [overrides]`: hand the arguments to Hydra as if it were the program."""
    global _job_started
    _job_started = False
    sys.argv = ["lossbench train", *argv]
    if _debug(argv):  # hydra.verbose=true asks for tracebacks, as LOSSBENCH_DEBUG=1 does
        os.environ["LOSSBENCH_DEBUG"] = "1"
    # Hydra would print its own errors and exit with status 1; with HYDRA_FULL_ERROR they reach
    # us instead, so that a config mistake is one or two lines and exit status 2.
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _train()
    except Exception as err:
        from lossbench import sweep

        if not _debug(argv) and sweep.summary_after_error(err):
            return 1  # the sweeper gave up after jobs failed (optuna: every trial failed)
        message = None if _job_started or user_full_error or _debug(argv) else (
            config_error_message(err))
        if message is None:
            raise
        raise UserError(message) from None
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    from lossbench import sweep

    return 1 if sweep.failed_jobs else 0  # the summary line has named them

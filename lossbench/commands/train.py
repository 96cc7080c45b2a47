"""The Hydra application behind `lossbench train`: a thin wrapper around `lossbench.experiment.run.run`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lossbench.errors import Diverged, Interrupted, UserError
from lossbench.config.schema import check_config, register_schemas, unknown_key_hint

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
        return (f"{head}{did_you_mean(head, names.split())}\n"
                f"available options in{group}: {', '.join(names.split())}")
    if "Ambiguous value for argument" in str(err):
        # Hydra's hint ends "add --multirun": its third line, which two lines cut off
        override = str(err).split("'", 2)[1] if str(err).count("'") >= 2 else "key=a,b"
        return (f"{override} gives several values: to run one job per value, use "
                f"lossbench train -m {override}\n"
                f"(a list is key=[a,b]; a string with a comma is quoted: key=\\'a,b\\')")
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


def did_you_mean(head: str, options: list[str]) -> str:
    """' (did you mean sce?)' for "Could not find 'loss/sec'", '' without a close option."""
    import difflib
    import re

    found = re.search(r"Could not find '(?:[^']*/)?([^'/]+)'", head)
    close = difflib.get_close_matches(found.group(1), options, n=1) if found else []
    return f" (did you mean {close[0]}?)" if close else ""


def instantiation_mistake(err: BaseException) -> str | None:
    """A config object that could not be built because of its config (an unknown `_target_`, a
    wrong or invalid argument): one line, else None (a bug keeps its traceback)."""
    from hydra.errors import InstantiationException

    if not isinstance(err, InstantiationException):
        return None
    cause = err.__cause__
    if cause is None and "full_key" in str(err):
        # Hydra refused the target itself (its blocklist of targets that run code, e.g.
        # os.system): what the config asked for is the mistake; say it on one line
        return " ".join(str(err).split("full_key:")[0].split()).rstrip(".")
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
    discard_empty_folders(run_dir.parent, user_dir)


def discard_empty_folders(folder: Path, user_dir: Path) -> None:
    """Remove `folder` and the folders above it while they are empty, up to user_dir."""
    # Hydra made the run directory with mkdir(parents=True), so the empty folders between it and
    # user_dir are Hydra's. A run directory outside user_dir (hydra.run.dir=/elsewhere/...) keeps
    # its parents: they may be the user's. rmdir refuses a folder that holds anything.
    parent, user_dir = folder.resolve(), user_dir.resolve()
    while user_dir in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty (an older run, the user's files) or not ours to remove
            break
        parent = parent.parent


def interrupted_message(run_dir: Path) -> str:
    """What a Ctrl-C outside the training loop left: nothing, a checkpoint to resume from, or a
    run directory with what was written so far."""
    from lossbench.engine.checkpoint import CHECKPOINT

    if not run_dir.exists():
        return "stopped by Ctrl-C before the run started; nothing was written"
    if (run_dir / CHECKPOINT).is_file():
        return (f"stopped by Ctrl-C; {run_dir / CHECKPOINT} is kept. Continue with: "
                f"lossbench train resume={run_dir}")
    return f"stopped by Ctrl-C; {run_dir} holds what was written so far (no checkpoint)"


@hydra.main(version_base="1.3", config_path="pkg://lossbench.conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    global _job_started
    _job_started = True
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a failing job (user errors included) is recorded and the sweep goes on; completed
        # jobs of a resumed sweep are skipped (lossbench/experiment/sweep.py)
        from lossbench.experiment.run import choices, run
        from lossbench.experiment.sweep import run_sweep_job

        return run_sweep_job(cfg, hydra_cfg, run, choices)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    user_dir = Path(hydra_cfg.runtime.cwd)  # where lossbench was run, even with hydra.job.chdir
    try:
        check_config(cfg)  # before torch is even imported
        from lossbench.experiment.run import run

        return run(cfg)
    except (Diverged, Interrupted) as err:
        # metrics.json says what happened and checkpoint.pt is kept: one line, no traceback
        if hydra_cfg.verbose or _debug():
            raise
        print(f"lossbench: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        # Ctrl-C outside the training loop (which stops after its step and saves a checkpoint,
        # raising Interrupted): during start-up, nothing worth keeping was written
        if hydra_cfg.verbose or _debug():
            raise
        _discard_empty_run_dir(output_dir, user_dir)
        print(f"lossbench: {interrupted_message(output_dir)}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        mistake = str(err) if isinstance(err, UserError) else instantiation_mistake(err)
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
        sweep.discard_unstarted_sweep()  # a typo in a sweep value: no sweep was run
        raise UserError(message) from None
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    from lossbench import sweep

    return 1 if sweep.failed_jobs else 0  # the summary line has named them

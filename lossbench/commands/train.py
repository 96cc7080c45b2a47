"""The Hydra application behind `lossbench train`: a thin wrapper around
`lossbench.experiment.launch.run`."""

from __future__ import annotations

import os
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lossbench.config.schema import check_config, register_schemas
from lossbench.results.files import discard_empty_folders
from lossbench.errors import (Diverged, Interrupted, config_mistake, debug_requested, exit_report,
                              instantiation_mistake, storage_fault, tell)

register_schemas()  # conf/config.yaml's defaults list starts with the typed schema

# What turns an exception into one line and an exit status lives in lossbench/errors.py;
# instantiation_mistake and config_error_message (errors.config_mistake) stay importable from
# here for the callers that know them by this module.
config_error_message = config_mistake
__all__ = ["config_error_message", "instantiation_mistake", "train_command"]


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


def continue_hint(run_dir: Path) -> str:
    """What is left to continue a run that a full disk or a permission stopped."""
    from lossbench.engine.checkpoint import CHECKPOINT

    if (run_dir / CHECKPOINT).is_file():
        return f". Its checkpoint is kept: continue with lossbench train resume={run_dir}"
    return ""


def record_absolute_paths(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """The user's own files (dataset.path=iris.csv) by their absolute path, in the job's config
    and in its saved copy (.hydra/config.yaml), so that `eval` and `resume=` find them from any
    folder."""
    from lossbench.data.files import absolute_paths

    if not cfg.get("dataset") or not absolute_paths(cfg.dataset, hydra_cfg.runtime.cwd):
        return
    if hydra_cfg.output_subdir is not None:
        from omegaconf import OmegaConf

        from lossbench.results.files import write_text_atomic

        saved = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir / "config.yaml"
        if saved.is_file():
            write_text_atomic(saved, OmegaConf.to_yaml(cfg))


@hydra.main(version_base="1.3", config_path="pkg://lossbench.conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from lossbench.config.hydra_context import hydra_config, in_sweep

    hydra_cfg = hydra_config()  # always set here, inside the Hydra app
    record_absolute_paths(cfg, hydra_cfg)
    if in_sweep():
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
    except (Exception, KeyboardInterrupt) as err:
        report = None if hydra_cfg.verbose or debug_requested() else exit_report(err)
        if report is None:
            raise
        line, status = report
        if not isinstance(err, (Diverged, Interrupted)):
            # a user error, or Ctrl-C outside the training loop (which stops after its step
            # and raises Interrupted): nothing worth keeping was written
            _discard_empty_run_dir(output_dir, user_dir)
        if isinstance(err, KeyboardInterrupt) and not isinstance(err, Interrupted):
            # Ctrl-C during start-up: say what is left (nothing, a checkpoint, some files)
            line = interrupted_message(output_dir)
        elif storage_fault(err) is not None:
            line += continue_hint(Path(cfg.get("resume") or output_dir))
        tell(line)
        sys.exit(status)
    finally:
        if cfg.get("resume"):  # the resumed run went on in its own directory
            _discard_empty_run_dir(output_dir, user_dir)


def raised_in_job(err: BaseException) -> bool:
    """Whether `err` came out of the job (Hydra had composed the config and called `_train`):
    its traceback passes through `_train`. Hydra's and OmegaConf's errors are config mistakes
    only before that; inside the job they are bugs and keep their traceback."""
    job = _train.__wrapped__.__code__
    return any(frame.f_code is job for frame, _ in traceback.walk_tb(err.__traceback__))


def train_command(argv: list[str]) -> int:
    """`lossbench train [overrides]`: hand the arguments to Hydra as if it were the program."""
    sys.argv = ["lossbench train", *argv]
    debug = debug_requested(argv)
    if debug:  # hydra.verbose=true asks for tracebacks, as LOSSBENCH_DEBUG=1 does
        os.environ["LOSSBENCH_DEBUG"] = "1"
    # Hydra would print its own errors and exit with status 1; with HYDRA_FULL_ERROR they reach
    # us instead, so that a config mistake is one or two lines and exit status 2.
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _train()
    except Exception as err:
        from lossbench.experiment import sweep

        if not debug and sweep.summary_after_error(err):
            return 1  # the sweeper gave up after jobs failed (optuna: every trial failed)
        # a full disk or a read-only folder is the machine's, wherever it was raised (a sweep
        # job's record, Hydra's folders): one line too
        in_job = raised_in_job(err) and storage_fault(err) is None
        report = None if in_job or user_full_error or debug else (
            exit_report(err, composing=True))
        if report is None:
            raise
        sweep.discard_unstarted_sweep()  # a typo in a sweep value: no sweep was run
        tell(report[0])
        return report[1]
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    from lossbench.experiment import sweep

    return 1 if sweep.failed_jobs else 0  # the summary line has named them

"""The Hydra application behind `lossbench train`: a thin wrapper around
`lossbench.experiment.launch.run`."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lossbench.config.schema import check_config, register_schemas
from lossbench.experiment.sweep_checks import StopBeforeStart, missing_plugin
from lossbench.experiment.sweep_folder import register_job_dir_resolver
from lossbench.results.files import discard_empty_folders
from lossbench.results.folder_lock import LOCK_FILE, FolderLock
from lossbench.errors import (Diverged, Interrupted, UserError, config_mistake, debug_requested,
                              exit_report, instantiation_mistake, report, stop_name,
                              stopped_by, storage_fault)

register_schemas()  # conf/config.yaml's defaults list starts with the typed schema
register_job_dir_resolver()  # hydra.sweep.subdir names each job's folder by its overrides

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
    if set(leftovers) <= {".hydra", "train.log", LOCK_FILE}:
        shutil.rmtree(run_dir, ignore_errors=True)
    if run_dir.exists():
        return
    discard_empty_folders(run_dir.parent, user_dir)


def interrupted_message(run_dir: Path, signum: int = signal.SIGINT) -> str:
    """What a stop signal outside the training loop left (start-up, or a second signal):
    nothing, a checkpoint to resume from, or a run directory with what was written so far."""
    from lossbench.engine.checkpoint import CHECKPOINT
    from lossbench.engine.signals import resume_command
    from lossbench.experiment.sweep_console import shown_path

    name = stop_name(signum)
    if not run_dir.exists():
        return f"stopped by {name} before the run started; nothing was written"
    if (run_dir / CHECKPOINT).is_file():
        return (f"stopped by {name}; {shown_path(run_dir) / CHECKPOINT} is kept. Continue with: "
                f"{resume_command(shown_path(run_dir))}")
    return f"stopped by {name}; {shown_path(run_dir)} holds what was written so far (no checkpoint)"


# `lossbench train --overwrite`: replace a finished (or stopped) run in hydra.run.dir
OVERWRITE_FLAG = "--overwrite"
# `lossbench train -m --add`: sweep into a folder that holds a sweep of other override keys
ADD_FLAG = "--add"
_overwrite = False
_run_lock: FolderLock | None = None


def torchrun_follower() -> bool:
    """True in a torchrun process other than rank 0 (`engine.distributed.launched_by_torchrun`,
    read from the environment without importing torch): the ranks share one run, which rank 0
    alone writes, and so alone locks."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    try:
        return (all(k in os.environ for k in keys) and int(os.environ["WORLD_SIZE"]) > 1
                and int(os.environ["RANK"]) != 0)
    except ValueError:
        return False


def guard_run_directory(config: DictConfig) -> None:
    """Before Hydra writes anything into the run directory: take its lock (one writer at a
    time), and never overwrite a run there. The same config, completed: nothing to do
    (StopBeforeStart, exit 0). Another config, or a run that stopped: one line, unless
    `--overwrite` asks to replace it (the old run's files go first). Under torchrun every rank
    decides the same from what is there, but only rank 0, the run's one writer, takes the lock
    and removes anything: ranks locking one folder each refused the other."""
    global _run_lock
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lossbench.engine.checkpoint import CHECKPOINT
    from lossbench.experiment.sweep_console import headline, shown_path
    from lossbench.results.record import read_metrics, resolved_config

    writer = not torchrun_follower()
    if config.get("resume"):  # the run goes on in its own directory: that one is locked
        folder = Path(str(config.resume))
        if folder.is_dir() and writer:
            from lossbench.engine.checkpoint import check_writable_run

            check_writable_run(folder)  # a read-only run: `resume=` is named, not the lock file
            _run_lock = FolderLock(folder, "run directory").acquire()
        return
    folder = Path(str(config.hydra.run.dir))
    if writer:
        _run_lock = FolderLock(folder, "run directory").acquire()
    try:
        metrics = read_metrics(folder)
    except (OSError, ValueError):
        metrics = {"status": "unreadable"}
    stopped = (folder / CHECKPOINT).is_file()
    if metrics is None and not stopped:
        return
    shown = shown_path(folder)
    status = str((metrics or {}).get("status", "stopped"))
    if status == "completed" and not _overwrite:
        HydraConfig.instance().set_config(config)  # ${hydra:...} resolves as in the job
        task = config.copy()
        with read_write(task), open_dict(task):
            del task["hydra"]
        if metrics.get("config") == resolved_config(task):
            result = headline(metrics)
            raise StopBeforeStart(f"lossbench: {shown} already holds this run, completed"
                                  f"{' (' + result + ')' if result else ''}: nothing to do", 0)
    if _overwrite:
        user_dir = Path.cwd().resolve()
        if folder.resolve() == user_dir or folder.resolve() in user_dir.parents:
            raise UserError(f"{OVERWRITE_FLAG} would empty {shown}, which holds the working "
                            f"directory; choose another hydra.run.dir")
        if not writer:
            return
        for entry in folder.iterdir():  # the old run's files go: nothing of it is mixed in
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return
    if status == "completed":
        what = "a completed run of another config"
    elif stopped and status in ("stopped", "interrupted"):
        what = f"an interrupted run (continue it with `lossbench train resume={shown}`)"
    else:
        what = f"a run whose record says {status}"
    raise UserError(f"{shown} holds {what}; choose another hydra.run.dir, or replace it with "
                    f"`lossbench train {OVERWRITE_FLAG} ...`")


class RunDirectoryGuard(Callback):
    """Registered in conf/config.yaml: `guard_run_directory` before a single run starts."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        # Hydra turns an Exception raised here into a warning line and goes on: a refusal, and a
        # full disk, a read-only folder or a name too long met while taking the lock, end the
        # command here instead, with their one line (train_command)
        folder = None if config.get("resume") else Path(str(config.hydra.run.dir)).absolute()
        there = folder  # the nearest folder that exists already: the lock makes those below it
        while there is not None and not os.path.lexists(there) and there != there.parent:
            there = there.parent
        try:
            guard_run_directory(config)
        except UserError as err:
            raise StopBeforeStart.refused(err) from None
        except Exception as err:  # a storage fault: its line; a bug: its traceback
            if there is not None and there != folder and storage_fault(err) is not None:
                try:  # the folders made for the lock go again, the user's stay
                    (folder / LOCK_FILE).unlink(missing_ok=True)
                    discard_empty_folders(folder, there)
                except OSError:
                    pass
            raise StopBeforeStart("", 2, err) from err


def release_run_lock() -> None:
    global _run_lock
    if _run_lock is not None:
        _run_lock.release()
        _run_lock = None


def continue_hint(run_dir: Path) -> str:
    """What is left to continue a run that a full disk or a permission stopped."""
    from lossbench.engine.checkpoint import CHECKPOINT

    from lossbench.engine.signals import resume_command
    from lossbench.experiment.sweep_console import shown_path

    if (run_dir / CHECKPOINT).is_file():
        return f". Its checkpoint is kept: continue with {resume_command(shown_path(run_dir))}"
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
        reported = None if hydra_cfg.verbose or debug_requested() else exit_report(err)
        if reported is None:
            raise
        line, status = reported
        if not isinstance(err, (Diverged, Interrupted)):
            # a user error, or Ctrl-C outside the training loop (which stops after its step
            # and raises Interrupted): nothing worth keeping was written
            _discard_empty_run_dir(output_dir, user_dir)
        stop = stopped_by(err)  # also an import that the stop broke
        if stop is not None and not isinstance(stop, Interrupted):
            # a stop during start-up: say what is left (nothing, a checkpoint, some files)
            line = interrupted_message(output_dir, getattr(stop, "signum", signal.SIGINT))
        elif storage_fault(err) is not None:
            line += continue_hint(Path(cfg.get("resume") or output_dir))
        sys.exit(report(line, status))
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
    global _overwrite
    from lossbench.engine.signals import StopOnSignal, plain_resume_argument
    from lossbench.experiment import sweep_folder as sweep

    _overwrite = OVERWRITE_FLAG in argv
    sweep.add_to_other_sweep = ADD_FLAG in argv
    # `resume='dir with spaces'`: the shell's quotes only; Hydra gets the path in its own
    argv = [plain_resume_argument(a) for a in argv if a not in (OVERWRITE_FLAG, ADD_FLAG)]
    sweep.command_argv[:] = argv
    sys.argv = ["lossbench train", *argv]
    debug = debug_requested(argv)
    if debug:  # hydra.verbose=true asks for tracebacks, as LOSSBENCH_DEBUG=1 does
        os.environ["LOSSBENCH_DEBUG"] = "1"
    # Hydra would print its own errors and exit with status 1; with HYDRA_FULL_ERROR they reach
    # us instead, so that a config mistake is one or two lines and exit status 2.
    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        # a stop signal before a run begins (and between a sweep's jobs) ends it at once; each
        # run installs its own for training and finishing (lossbench/engine/signals.py)
        with StopOnSignal(announce=False, phase="start-up"):
            _train()
    except StopBeforeStart as stop:  # before anything ran: the run is done, or refused
        if stop.error is not None:  # refused (a UserError, a full disk): its line and status
            reported = exit_report(stop.error)
            if reported is None:  # a bug keeps its traceback
                raise stop.error
            return report(*reported)
        print(stop.message, file=sys.stdout if stop.status == 0 else sys.stderr, flush=True)
        return stop.status
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM stopped a sweep's job
        line = None if debug else sweep.interrupted_sweep_line(err)
        if line is None:
            raise
        return report(line, err.exit_code if isinstance(err, Interrupted) else 130)
    except Exception as err:
        if not debug and sweep.summary_after_error(err):
            return 1  # the sweeper gave up after jobs failed (optuna: every trial failed)
        # a full disk or a read-only folder is the machine's, wherever it was raised (a sweep
        # job's record, Hydra's folders): one line too
        in_job = raised_in_job(err) and storage_fault(err) is None
        composing = not (in_job or user_full_error or debug)
        plugin = missing_plugin(err) if composing else None
        reported = (f"error: {plugin}", 2) if plugin is not None else (
            exit_report(err, composing=True) if composing else None)
        if reported is None:
            raise
        sweep.discard_unstarted_sweep()  # a typo in a sweep value: no sweep was run
        return report(*reported)
    finally:
        if user_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        release_run_lock()
        sweep.release_locks()
    if sweep.stopped_by is not None:  # Ctrl-C or SIGTERM stopped a parallel sweep
        return 128 + sweep.stopped_by
    return 1 if sweep.failed_jobs else 0  # the summary line has named them

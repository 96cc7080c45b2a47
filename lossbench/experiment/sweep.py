"""A sweep's jobs that finish and resume (the job side; the sweep folder is sweep_folder.py).

- A job that raises (a bug, a bad hyperparameter for one value, a diverged run, a user error) is
  recorded as failed in its own `metrics.json` and the sweep goes on with the other jobs.
- Re-running the same multirun command with `hydra.sweep.dir=<that sweep>` skips each job whose
  `metrics.json` says `completed` for the same resolved config, continues each job that was
  stopped (killed: no metrics.json; or interrupted) from its checkpoint.pt of the same config,
  exactly as `resume=` would, and reruns the others from the start.
- Under submitit (`hydra/launcher=slurm`), the scheduler's warning signal before it preempts or
  times out a job stops the run like Ctrl-C (checkpoint.pt written), then submitit requeues the
  job, which continues from that checkpoint.
- `SweepSummary`, a Hydra callback registered in conf/config.yaml, checks the whole sweep
  before its first job and prints the end line (sweep_folder.start_sweep, end_sweep).
- Each job holds its folder's lock while it runs (one writer at a time) and writes a line in
  the sweep's ledger, from which the end-of-sweep line counts the jobs.

Nothing here imports torch at module level (run_sweep_job sets its threads when it runs).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lossbench.errors import (Interrupted, Stopped, UserError, debug_requested, exit_report,
                              stopped_by)
from lossbench.experiment import sweep_folder
from lossbench.experiment.sweep_checks import StopBeforeStart
from lossbench.experiment.sweep_folder import (LOCK_FILE, STOP_FLAG, flag_stop, job_status,
                                               note_job, parallel_launcher, stop_when_done)
from lossbench.results.folder_lock import FolderLock
# names that used to live here: still importable from here
from lossbench.errors import error_line  # noqa: F401
from lossbench.experiment.sweep_folder import summary_line  # noqa: F401
from lossbench.results.record import (LOCATION_KEYS, METRICS,  # noqa: F401
                                      damaged_files, failure_record, metrics_path, read_metrics,
                                      resolved_config, write_metrics)


# Run directories (str) this process has just trained in a stack (experiment/stacked_sweep.py),
# with the stack's size: their jobs continue from the stack's checkpoint without a line of their
# own (the stack's line said it).
STACKED: dict[str, int] = {}


def completed_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run already completed in run_dir for this very config, else None."""
    try:
        metrics = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    if metrics is None or metrics.get("status") != "completed":
        return None
    damaged = damaged_files(run_dir, metrics)  # a zero-byte model.pt, a history.csv cut short
    if damaged:
        print(f"lossbench: {run_dir}: {', '.join(damaged)} changed since the run completed "
              "(truncated or removed): the job runs again", file=sys.stderr, flush=True)
        return None
    return metrics if metrics.get("config") == resolved_config(cfg) else None


def record_failure(run_dir: Path, cfg: DictConfig, err: BaseException, choices: dict[str, str],
                   started: float) -> None:
    """Write metrics.json with status failed and the error (atomically: a reader sees the old
    file or this one). What the failed attempt itself wrote there (a diverged run's epoch and
    status) is kept, its status moved to `stopped`."""
    earlier = None
    try:
        if metrics_path(run_dir).stat().st_mtime >= started:
            earlier = read_metrics(run_dir)
    except (OSError, ValueError):
        pass
    write_metrics(run_dir, failure_record(cfg, err, choices, time.time() - started, earlier))


def threads_per_job(hydra_cfg: DictConfig) -> int | None:
    """Torch threads for one job when the joblib launcher runs several at once, so that
    n_jobs × threads does not exceed the cores; None leaves torch's default."""
    launcher = hydra_cfg.get("launcher") or {}
    if "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    n_jobs = launcher.get("n_jobs") or -1
    parallel = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib: -1 = all cores
    return max(1, cores // parallel)


def unfinished_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint to continue this job from: its run was stopped (killed before it wrote
    metrics.json, or interrupted), and checkpoint.pt holds this very config. None when there is
    none, or when the job failed or diverged after its last checkpoint (it starts over)."""
    from lossbench.engine.checkpoint import CHECKPOINT, load_checkpoint

    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    status = job_status(run_dir)
    if status == "completed" or (status not in ("unfinished", "interrupted")
                                 and metrics_path(run_dir).stat().st_mtime
                                 >= path.stat().st_mtime):
        return None
    try:
        state = load_checkpoint(path)
    except UserError as err:
        print(f"lossbench: {err}: the job starts over", file=sys.stderr, flush=True)
        return None
    return state if state.get("config") == resolved_config(cfg) else None


def preemption_signal() -> int | None:
    """The signal submitit sends a job before the scheduler preempts it or its time runs out
    (SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise); None outside a submitit job."""
    if not os.environ.get("SUBMITIT_FOLDER"):  # set by submitit in the job's process
        return None
    try:
        from submitit import JobEnvironment
    except ImportError:
        return None
    return int(JobEnvironment._usr_sig())


def run_sweep_job(cfg: DictConfig, hydra_cfg: DictConfig,
                  run: Callable[..., float],
                  choices: Callable[[DictConfig], dict[str, str]]) -> float | None:
    """One job of a multirun: skip it if already completed, continue it from its checkpoint if
    it was stopped, else run it; a failure is recorded and returns None (the optuna sweeper
    marks the trial failed) instead of stopping the sweep."""
    run_dir = Path(hydra_cfg.runtime.output_dir)
    sweep_dir = Path(hydra_cfg.sweep.dir)
    label = f"job {hydra_cfg.job.num} [{' '.join(hydra_cfg.overrides.task)}]"
    if (sweep_dir / STOP_FLAG).exists():  # Ctrl-C came while this job waited in the queue
        if {p.name for p in run_dir.iterdir()} <= {".hydra", LOCK_FILE}:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # Hydra's folder for it: nothing ran
        print(f"lossbench: {label} not started: the sweep was stopped", file=sys.stderr,
              flush=True)
        return None
    try:  # one writer per job folder, whichever process runs the job
        lock = FolderLock(run_dir, "run directory").acquire()
    except UserError as err:
        note_job(sweep_dir, run_dir, "ran")
        print(f"lossbench: {label} not run: {err}", file=sys.stderr, flush=True)
        return None
    try:
        with stop_when_done(sweep_dir) if parallel_launcher(hydra_cfg) else nullcontext():
            return _run_locked_job(cfg, hydra_cfg, run, choices, run_dir, sweep_dir, label)
    finally:
        lock.release()


def _run_stoppable(run: Callable[..., float], cfg: DictConfig,
                   resume: dict[str, Any] | None) -> float:
    """`run`, with an error that a stop signal caused (`errors.stopped_by`) raised as that stop,
    so that the job is stopped, not recorded as failed."""
    try:
        return run(cfg, resume) if resume is not None else run(cfg)
    except Exception as err:
        stop = stopped_by(err)
        if stop is None:
            raise
        raise stop from None  # its own traceback: where the signal arrived


def _run_locked_job(cfg: DictConfig, hydra_cfg: DictConfig, run: Callable[..., float],
                    choices: Callable[[DictConfig], dict[str, str]], run_dir: Path,
                    sweep_dir: Path, label: str) -> float | None:
    done = completed_run(cfg, run_dir)
    if done is not None:
        from lossbench.experiment.sweep_console import shown_path

        note_job(sweep_dir, run_dir, "skipped")
        print(f"lossbench: {label} already completed: skipped (run directory: "
              f"{shown_path(run_dir)})", flush=True)
        return done.get("best_val")
    note_job(sweep_dir, run_dir, "ran")
    resume = unfinished_checkpoint(cfg, run_dir)
    if resume is not None and STACKED.pop(str(run_dir), None) is None:
        # (a job its stack trained just now finds its training done: the stack's line said so)
        from lossbench.engine.checkpoint import resume_point
        from lossbench.experiment.sweep_console import shown_path

        where = resume_point(resume)
        print(f"lossbench: {label} continues from its checkpoint at {where} (run directory: "
              f"{shown_path(run_dir)})", flush=True)
    threads = threads_per_job(hydra_cfg)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
        from lossbench.engine.signals import end_with_parent

        end_with_parent()  # a joblib worker: it stops and ends when the sweep's process dies
    started = time.time()  # wall clock: compared with file mtimes
    from lossbench.experiment.sweep_console import job_line

    preempt = preemption_signal()
    from lossbench.engine import checkpoint

    if preempt is not None:  # stop like Ctrl-C, with a checkpoint, before giving it to submitit
        checkpoint.EXTRA_STOP_SIGNALS[:] = [preempt]
    try:
        value = _run_stoppable(run, cfg, resume)
        print(job_line(label, run_dir, time.time() - started), flush=True)
        return value
    except (Interrupted, Stopped) as err:  # Stopped: the warning came during start-up
        if preempt is not None and err.exit_code == 128 + preempt:
            # checkpoint.pt is written: submitit's own handler, back in place, requeues the job
            # (hydra's launcher is checkpointable) and ends this process
            what = exit_report(err)[0] + (" during start-up" if isinstance(err, Stopped) else "")
            print(f"lossbench: {label} {what}; submitit requeues it", file=sys.stderr, flush=True)
            signal.raise_signal(preempt)
        if parallel_launcher(hydra_cfg):  # the other jobs finish writing; queued ones wait
            flag_stop(sweep_dir, err.exit_code - 128)
            print(job_line(label, run_dir, time.time() - started), file=sys.stderr, flush=True)
            return None
        raise
    except Exception as err:
        try:
            picked = choices(cfg)
        except Exception:
            picked = {}
        record_failure(run_dir, cfg, err, picked, started)
        print(job_line(label, run_dir, time.time() - started, error_line(err)),
              file=sys.stderr, flush=True)
        if debug_requested():
            traceback.print_exception(err)
        return None
    finally:
        checkpoint.EXTRA_STOP_SIGNALS.clear()


class SweepSummary(Callback):
    """The sweep's start and end in the launching process (sweep_folder.py). Hydra turns an
    Exception raised here into a warning: a refusal goes out as StopBeforeStart."""

    def __init__(self) -> None:
        self._stop: Any = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._stop = sweep_folder.start_sweep(config)
        except UserError as err:
            raise StopBeforeStart.refused(err) from None
        except Exception as err:  # a bug: `lossbench train` raises it, traceback and all
            raise StopBeforeStart("", 1, err) from err

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_folder.end_sweep(config, self._stop)
        self._stop = None

"""Sweeps that finish and resume.

- A job that raises (a bug, a bad hyperparameter for one value, a diverged run, a user error) is
  recorded as failed in its own `metrics.json` and the sweep goes on with the other jobs.
- Re-running the same multirun command with `hydra.sweep.dir=<that sweep>` skips each job whose
  `metrics.json` says `completed` for the same resolved config, continues each job that was
  stopped (killed: no metrics.json; or interrupted) from its checkpoint.pt of the same config,
  exactly as `resume=` would, and reruns the others from the start.
- Under submitit (`hydra/launcher=slurm`), the scheduler's warning signal before it preempts or
  times out a job stops the run like Ctrl-C (checkpoint.pt written), then submitit requeues the
  job, which continues from that checkpoint.
- `SweepSummary`, a Hydra callback registered in conf/config.yaml, prints one line at the end:
  how many of how many jobs failed, and where; `lossbench train -m` then exits with status 1.

Nothing here imports torch at module level (run_sweep_job sets its threads when it runs).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lossbench.errors import Interrupted, UserError, debug_requested
from lossbench.results.files import write_text_atomic
# resolved_config, LOCATION_KEYS and error_line used to live here: still importable from here
from lossbench.errors import error_line  # noqa: F401
from lossbench.results.record import (LOCATION_KEYS, METRICS,  # noqa: F401
                                      damaged_files, failure_record, metrics_path, read_metrics,
                                      resolved_config, write_metrics)

# Written into the sweep directory when a multirun starts; jobs whose `.hydra/` files are newer
# belong to this invocation (both times come from the same file system's clock).
START_MARKER = ".lossbench-sweep-start"

# Set by SweepSummary.on_multirun_end in the launching process: the failed job directories.
failed_jobs: list[Path] = []
# (sweep directory, start mtime) of the multirun in progress in this process, if any.
_started: tuple[Path, float] | None = None


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
    label = f"job {hydra_cfg.job.num} [{' '.join(hydra_cfg.overrides.task)}]"
    done = completed_run(cfg, run_dir)
    if done is not None:
        from lossbench.experiment.sweep_console import shown_path

        print(f"lossbench: {label} already completed: skipped (run directory: "
              f"{shown_path(run_dir)})", flush=True)
        return done.get("best_val")
    resume = unfinished_checkpoint(cfg, run_dir)
    if resume is not None:
        loop = resume["loop"]
        where = f"epoch {loop['epoch']}" + (f", step {loop['batch'] + 1}" if loop["batch"] else "")
        from lossbench.experiment.sweep_console import shown_path

        print(f"lossbench: {label} continues from its checkpoint at {where} (run directory: "
              f"{shown_path(run_dir)})", flush=True)
    threads = threads_per_job(hydra_cfg)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    started = time.time()  # wall clock: compared with file mtimes
    from lossbench.experiment.sweep_console import job_line

    preempt = preemption_signal()
    from lossbench.engine import checkpoint

    if preempt is not None:  # stop like Ctrl-C, with a checkpoint, before giving it to submitit
        checkpoint.EXTRA_STOP_SIGNALS[:] = [preempt]
    try:
        value = run(cfg, resume) if resume is not None else run(cfg)
        print(job_line(label, run_dir, time.time() - started), flush=True)
        return value
    except Interrupted as err:
        if preempt is not None and err.exit_code == 128 + preempt:
            # checkpoint.pt is written: submitit's own handler, back in place, requeues the job
            # (hydra's launcher is checkpointable) and ends this process
            print(f"lossbench: {label} {err}; submitit requeues it", file=sys.stderr, flush=True)
            signal.raise_signal(preempt)
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


def sweep_jobs(sweep_dir: Path, since: float) -> list[Path]:
    """Job directories under sweep_dir that Hydra (re)started at or after `since` (an mtime)."""
    jobs = set()
    # Hydra rewrites .hydra/ for every job it starts, skipped ones included; metrics.json
    # catches the rest when hydra.output_subdir=null
    for name in (".hydra/overrides.yaml", METRICS):
        for path in sweep_dir.rglob(name):
            if path.stat().st_mtime >= since:
                jobs.add(path.parent.parent if name.startswith(".hydra") else path.parent)
    return sorted(jobs, key=lambda p: (len(p.parts), str(p)))


def job_status(job_dir: Path) -> str:
    """completed, failed, or unfinished (no readable metrics.json: killed, still running)."""
    try:
        return str((read_metrics(job_dir) or {}).get("status", "unfinished"))
    except (OSError, ValueError):
        return "unfinished"


def job_warnings(job_dir: Path) -> list[str]:
    """The kinds of warning a completed job's metrics.json carries (near_chance, ...)."""
    try:
        found = (read_metrics(job_dir) or {}).get("warnings")
    except (OSError, ValueError):
        return []
    if not isinstance(found, list):
        return []
    return [str(w.get("kind", "warning")) if isinstance(w, dict) else str(w) for w in found]


def warnings_note(jobs: list[Path]) -> str:
    """'; 2 jobs carry warnings (near_chance): <dirs>', so a suspicious sweep never ends on a
    plain "all completed"."""
    warned = {job: kinds for job in jobs if (kinds := job_warnings(job))}
    if not warned:
        return ""
    kinds = ", ".join(dict.fromkeys(k for found in warned.values() for k in found))
    dirs = " ".join(str(job) for job in warned)
    return f"; {len(warned)} {'job carries' if len(warned) == 1 else 'jobs carry'} " \
           f"warnings ({kinds}): {dirs}"


def summary_line(sweep_dir: Path, jobs: list[Path], since: float) -> tuple[str, list[Path]]:
    failed = [job for job in jobs if job_status(job) != "completed"]
    note = warnings_note([job for job in jobs if job not in failed])
    if failed:
        dirs = " ".join(str(job) for job in failed)
        return f"lossbench: {len(failed)} of {len(jobs)} jobs failed: {dirs}{note}", failed
    reused = sum(1 for job in jobs if metrics_path(job).stat().st_mtime < since)
    skipped = f" ({reused} skipped: already completed)" if reused else ""
    return f"lossbench: all {len(jobs)} jobs completed{skipped} in {sweep_dir}{note}", failed


def summary_after_error(err: BaseException) -> bool:
    """The sweeper itself raised after its jobs ran (optuna's, when every trial failed or more
    than `max_failure_rate` did): if jobs of this sweep failed, print its error and the summary
    line instead of a traceback and return True; else False (the error is someone else's)."""
    if _started is None:
        return False
    sweep_dir, since = _started
    line, failed = summary_line(sweep_dir, sweep_jobs(sweep_dir, since), since)
    if not failed:
        return False
    failed_jobs[:] = failed
    print(f"lossbench: the sweep stopped: {error_line(err)}", file=sys.stderr, flush=True)
    print(line, file=sys.stderr, flush=True)
    return True


def discard_unstarted_sweep() -> None:
    """A sweep that stopped on a config mistake before its first job leaves nothing behind:
    its start marker and Hydra's multirun.yaml go, and the sweep directory if that empties it."""
    global _started
    if _started is None:
        return
    sweep_dir, _ = _started
    _started = None
    if not sweep_dir.is_dir() or {p.name for p in sweep_dir.iterdir()} - {
            START_MARKER, "multirun.yaml"}:
        return  # jobs of an earlier invocation live there: keep its record
    for name in (START_MARKER, "multirun.yaml"):
        (sweep_dir / name).unlink(missing_ok=True)
    from lossbench.results.files import discard_empty_folders

    discard_empty_folders(sweep_dir, Path.cwd())


class SweepSummary(Callback):
    """Prints the end-of-sweep line and remembers the failed jobs for the exit status."""

    def __init__(self) -> None:
        self.since: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _started
        failed_jobs.clear()
        marker = Path(config.hydra.sweep.dir) / START_MARKER
        try:
            write_text_atomic(marker, f"{time.time()}\n")
        except OSError:  # a read-only or full disk: the launcher's own write says so, once
            return
        self.since = marker.stat().st_mtime
        _started = (Path(config.hydra.sweep.dir), self.since)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.since is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir, self.since)
        line, failed = summary_line(sweep_dir, jobs, self.since)
        failed_jobs[:] = failed
        print(line, file=sys.stderr if failed else sys.stdout, flush=True)

"""The sweep folder: its jobs' names, its record of the sweeps run into it, the ledger of the
sweep in progress, its lock, and the end-of-sweep line.

- Each job's folder is named by its overrides (`job_dirname`: `loss=gce,seed=1`), not by its
  place in the sweep, so that extending a sweep (`seed=0,1,2` to `seed=0,1,2,3,4,5`, or another
  loss) into the same `hydra.sweep.dir` adds jobs and reruns none. A sweep with other override
  keys into a folder holding a sweep is refused unless `lossbench train -m --add` asks for it.
- `start_sweep` (from the Hydra callback `sweep.SweepSummary`) checks every job's config
  before the first one runs (sweep_checks.py) and holds the sweep folder's lock (one writer at
  a time, `results/folder_lock.py`); `end_sweep` prints one line at the end: how many of how
  many jobs failed, and where, counted from each job's metrics.json (never from file times);
  `lossbench train -m` then exits with status 1.
- Ctrl-C or SIGTERM in a parallel sweep stops it once the running jobs have written their
  records (`stop_when_done`); the end line says what each job's record holds and prints the
  command that continues the sweep.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lossbench.console import counted

from lossbench.errors import UserError, error_line
from lossbench.experiment.sweep_checks import (check_every_job, check_launcher, forget_composed,
                                               planned_jobs)
from lossbench.results.files import write_json_atomic
from lossbench.results.folder_lock import LOCK_FILE, FolderLock
from lossbench.results.record import read_metrics


# The sweep folder's own files. SWEEP_RECORD: the override keys of each sweep run into it (an
# extension has the same keys). JOB_LEDGER: one line per job of the sweep in progress, written
# before it runs ("expected", when the whole grid is known up front) and when it starts ("ran")
# or is skipped ("skipped"); the summary counts these jobs, their status read from their records.
SWEEP_RECORD = ".lossbench-sweep.json"
JOB_LEDGER = ".lossbench-sweep-jobs"
# Written when Ctrl-C (or SIGTERM) stops a parallel sweep: the jobs still queued do not start.
STOP_FLAG = ".lossbench-sweep-stopped"
SWEEP_FILES = (SWEEP_RECORD, JOB_LEDGER, STOP_FLAG, LOCK_FILE, "multirun.yaml")
# hydra.sweep.subdir in conf/config.yaml: ${lossbench_job_dir:${hydra.overrides.task}}
JOB_DIR_RESOLVER = "lossbench_job_dir"

# Set by SweepSummary.on_multirun_end in the launching process: the failed job directories.
failed_jobs: list[Path] = []
# The sweep directory of the multirun in progress in this process, if any.
_started: Path | None = None
_started_at = 0.0  # time.time() at the start: which submitit logs are this sweep's
# Set by `lossbench train -m --add`: sweep into a folder that holds a sweep of other keys.
add_to_other_sweep = False
_sweep_lock: FolderLock | None = None
# `lossbench train`'s arguments: the command that continues a stopped sweep
command_argv: list[str] = []
# The signal that stopped a parallel sweep in this process (then exit 128 + it), if any.
stopped_by: int | None = None


def parallel_launcher(hydra_cfg: DictConfig) -> bool:
    """Whether jobs run side by side in worker processes (joblib)."""
    launcher = hydra_cfg.get("launcher") or {}
    return "JoblibLauncher" in str(launcher.get("_target_", ""))


def flag_stop(sweep_dir: Path, signum: int) -> None:
    """Stop the sweep after the running jobs (see stop_when_done)."""
    global stopped_by
    stopped_by = stopped_by or signum
    try:
        (sweep_dir / STOP_FLAG).write_text(f"{signum}\n", encoding="utf-8")
    except OSError:
        pass


def stop_when_done(sweep_dir: Path) -> Any:
    """Ctrl-C or SIGTERM in a parallel sweep, in its launching process and in each job: no
    exception at some random point (a job writing its results would be cut short, the launcher
    would kill its workers), but the training loop's own first-signal rule (`StopOnSignal`:
    note it; a second one stops at once) plus a flag in the sweep folder: the jobs in training
    stop after their step with a checkpoint (the loop's handler), the others finish writing
    their record, and queued jobs do not start."""
    from lossbench.engine.checkpoint import StopOnSignal

    class StopWhenDone(StopOnSignal):
        def _handle(self, signum: int, frame: Any) -> None:
            super()._handle(signum, frame)
            flag_stop(sweep_dir, signum)

    return StopWhenDone(announce=False)


def job_dirname(overrides: Sequence[str]) -> str:
    """A job's folder in its sweep: its overrides sorted and joined by ',', as Hydra's
    override_dirname writes them (`loss=gce,seed=1`), whatever the job's place in the sweep.
    '/' and '%' are escaped (%2F, %25) so that a path value stays one folder; a name too long
    for a file system keeps its start and ends in a hash of the whole."""
    # Hydra hands the job's overrides escaped for OmegaConf (`$\{oc.env\:X\}`): as typed
    name = re.sub(r"\\(.)", r"\1", ",".join(sorted(str(o) for o in overrides))) or "defaults"
    name = name.replace("%", "%25").replace("/", "%2F")
    if len(name.encode()) > 200:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        name = f"{name.encode()[:160].decode('utf-8', 'ignore')}...{digest}"
    return name


def register_job_dir_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(JOB_DIR_RESOLVER):
        OmegaConf.register_new_resolver(JOB_DIR_RESOLVER, lambda task: job_dirname(list(task)))


def override_keys(overrides: Sequence[str]) -> list[str]:
    """The keys a sweep sets (`loss`, `seed`, `+loss.reduction`), whatever their values."""
    return sorted({str(o).split("=", 1)[0] for o in overrides})


def release_locks() -> None:
    """Let go of the sweep folder's lock, if this process holds it."""
    global _sweep_lock
    if _sweep_lock is not None:
        _sweep_lock.release()
    _sweep_lock = None


def note_job(sweep_dir: Path, job_dir: Path, what: str) -> None:
    """One line in the sweep's ledger (appended: jobs of a parallel launcher write at once)."""
    try:
        name = job_dir.resolve().relative_to(sweep_dir.resolve())
    except ValueError:
        name = job_dir.resolve()
    with open(sweep_dir / JOB_LEDGER, "a", encoding="utf-8") as ledger:
        ledger.write(f"{what}\t{name}\n")


def ledger_jobs(sweep_dir: Path) -> tuple[list[Path], set[Path]]:
    """(the jobs of the sweep in progress, in order; those of them skipped as completed)."""
    jobs: dict[Path, None] = {}
    skipped: set[Path] = set()
    try:
        lines = (sweep_dir / JOB_LEDGER).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        what, _, name = line.partition("\t")
        if not name:
            continue
        job = sweep_dir / name
        jobs.setdefault(job)
        if what == "skipped":
            skipped.add(job)
        elif what == "ran":
            skipped.discard(job)
    return list(jobs), skipped


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


def summary_line(sweep_dir: Path, jobs: list[Path], skipped: set[Path] = frozenset()
                 ) -> tuple[str, list[Path]]:
    """The end-of-sweep line and the jobs that did not complete, each job's status read from
    its own metrics.json (a job with none, killed or deleted, did not complete)."""
    failed = [job for job in jobs if job_status(job) != "completed"]
    note = warnings_note([job for job in jobs if job not in failed])
    if failed:
        dirs = " ".join(str(job) for job in failed)
        return (f"lossbench: {len(failed)} of {counted(len(jobs), 'job')} failed: {dirs}{note}",
                failed)
    reused = len(skipped & set(jobs))
    skipped_note = f" ({reused} skipped: already completed)" if reused else ""
    done = f"all {len(jobs)} jobs" if len(jobs) > 1 else counted(len(jobs), "job")
    return f"lossbench: {done} completed{skipped_note} in {sweep_dir}{note}", failed


def summary_after_error(err: BaseException) -> bool:
    """The sweeper itself raised after its jobs ran (optuna's, when every trial failed or more
    than `max_failure_rate` did): if jobs of this sweep failed, print its error and the summary
    line instead of a traceback and return True; else False (the error is someone else's)."""
    if _started is None:
        return False
    sweep_dir = _started
    line, failed = summary_line(sweep_dir, *ledger_jobs(sweep_dir))
    if not failed:
        return False
    failed_jobs[:] = failed
    print(f"lossbench: the sweep stopped: {error_line(err)}", file=sys.stderr, flush=True)
    print(line, file=sys.stderr, flush=True)
    return True


def discard_unstarted_sweep() -> None:
    """A sweep that stopped on a config mistake before its first job leaves nothing behind:
    its own files and Hydra's multirun.yaml go, and the sweep directory if that empties it."""
    global _started
    release_locks()
    if _started is None:
        return
    sweep_dir = _started
    _started = None
    if not sweep_dir.is_dir() or {p.name for p in sweep_dir.iterdir()} - set(SWEEP_FILES):
        return  # jobs of an earlier invocation live there: keep its record
    for name in SWEEP_FILES:
        (sweep_dir / name).unlink(missing_ok=True)
    from lossbench.results.files import discard_empty_folders

    discard_empty_folders(sweep_dir, Path.cwd())


def interrupted_sweep_line(err: KeyboardInterrupt) -> str | None:
    """What Ctrl-C (or SIGTERM) says when it stops a sweep: the stopped job's state and the
    sweep command that continues the whole sweep (its finished jobs are skipped, the stopped
    one continues from its checkpoint), not `resume=` of that one job. None outside a sweep."""
    if _started is None:
        return None
    what = (str(err) or "stopped by Ctrl-C").split(". Continue with:")[0]
    return f"{what}; the sweep stopped. {continue_command(_started)}"


def read_sweep_record(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((sweep_dir / SWEEP_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def check_same_sweep(sweep_dir: Path, keys: list[str], record: dict[str, Any] | None) -> None:
    """A sweep goes into an empty folder, or extends the sweep there (the same override keys,
    any values); another sweep's folder, or one holding other runs, takes `--add`."""
    if add_to_other_sweep:
        return
    hint = ("choose another hydra.sweep.dir, or add these jobs to it with "
            "`lossbench train -m --add ...`")
    shown = " ".join(keys) or "no overrides"
    if record is not None:
        known = [list(k) for k in record.get("sweeps", [])]
        if keys in known:
            return
        theirs = "; ".join(" ".join(k) or "no overrides" for k in known)
        raise UserError(f"{sweep_dir} holds another sweep (it sets {theirs}; this one sets "
                        f"{shown}); {hint}")
    if sweep_dir.is_dir() and {p.name for p in sweep_dir.iterdir()} - set(SWEEP_FILES):
        raise UserError(f"{sweep_dir} already holds files that are not of a lossbench sweep "
                        f"(or of one made before job folders were named by their overrides); "
                        f"{hint}")


def start_sweep(config: DictConfig) -> Any:
    """Before the first job: check every job and the launcher, take the sweep folder's lock,
    refuse a folder holding another sweep, record this sweep's keys and start its ledger.
    Returns the parallel sweep's stop handler, entered (None for other launchers)."""
    global _started, _started_at, _sweep_lock, stopped_by
    failed_jobs.clear()
    sweep_dir = Path(config.hydra.sweep.dir)
    jobs = planned_jobs(config)
    check_launcher(config)
    if jobs is not None:
        check_every_job(config, jobs)
    keys = override_keys([str(o) for o in config.hydra.overrides.task])
    existed = sweep_dir.exists()
    lock = FolderLock(sweep_dir, "sweep directory")
    try:
        lock.acquire()
        record = read_sweep_record(sweep_dir)
        check_same_sweep(sweep_dir, keys, record)
        sweeps = [list(k) for k in (record or {}).get("sweeps", [])]
        write_json_atomic(sweep_dir / SWEEP_RECORD,
                          {"sweeps": sweeps if keys in sweeps else [*sweeps, keys]})
        ours = JOB_DIR_RESOLVER in _raw_subdir(config)  # else job folders are not named here
        with open(sweep_dir / JOB_LEDGER, "w", encoding="utf-8") as ledger:
            for job in (jobs or []) if ours else []:
                ledger.write(f"expected\t{job_dirname(job)}\n")
    except BaseException:
        lock.release()
        forget_composed()  # no sweep: Hydra's config loader as it was
        if not existed:
            from lossbench.results.files import discard_empty_folders

            discard_empty_folders(sweep_dir, Path.cwd())
        raise
    _sweep_lock = lock
    _started, _started_at = sweep_dir, time.time()
    stopped_by = None
    (sweep_dir / STOP_FLAG).unlink(missing_ok=True)
    return stop_when_done(sweep_dir).__enter__() if parallel_launcher(config.hydra) else None


def end_sweep(config: DictConfig, stop: Any) -> None:
    """After the last job: the end line from the jobs' records, the lock let go."""
    global _started
    forget_composed()
    if _started is None:
        return
    sweep_dir = Path(config.hydra.sweep.dir)
    if stop is not None:
        stop.__exit__()
    from lossbench.experiment.sweep_console import submitit_job_lines

    for job, job_failed in submitit_job_lines(config, _started_at):  # their lines, at last
        print(job, file=sys.stderr if job_failed else sys.stdout, flush=True)
    line, failed = summary_line(sweep_dir, *ledger_jobs(sweep_dir))
    if stopped_by is None and (sweep_dir / STOP_FLAG).is_file():
        flag_stop(sweep_dir, signal.SIGINT)  # a job's Ctrl-C: it reached the jobs only
    if stopped_by is not None:
        line = stopped_line(sweep_dir, failed)
    failed_jobs[:] = failed
    _started = None
    release_locks()
    print(line, file=sys.stderr if failed else sys.stdout, flush=True)


def stopped_line(sweep_dir: Path, unfinished: list[Path]) -> str:
    """The end line of a parallel sweep stopped by Ctrl-C or SIGTERM: what each job's record
    says, and the command that continues the sweep."""
    name = signal.Signals(stopped_by or signal.SIGINT).name
    jobs, _ = ledger_jobs(sweep_dir)
    interrupted = [job for job in unfinished if job_status(job) == "interrupted"]
    waiting = len(unfinished) - len(interrupted)
    done = len(jobs) - len(unfinished)
    parts = [f"{done} completed", f"{len(interrupted)} interrupted with a checkpoint"]
    if waiting:
        parts.append(f"{waiting} not run")
    return (f"lossbench: the sweep stopped ({name}): {', '.join(parts)}. "
            f"{continue_command(sweep_dir)}")


def continue_command(sweep_dir: Path) -> str:
    """'Continue it with: lossbench train -m ... hydra.sweep.dir=<dir>' (completed jobs are
    skipped, stopped ones continue from their checkpoints)."""
    import shlex

    args = list(command_argv)
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        args.append(f"hydra.sweep.dir={sweep_dir}")
    if "-m" not in args and "--multirun" not in args:
        args.insert(0, "-m")
    return f"Continue it with: lossbench train {shlex.join(args)}"


def _raw_subdir(config: DictConfig) -> str:
    """hydra.sweep.subdir as written, its interpolation unresolved."""
    from omegaconf import OmegaConf

    return str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir"))

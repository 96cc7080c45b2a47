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
- Each job's folder is named by its overrides (`job_dirname`: `loss=gce,seed=1`), not by its
  place in the sweep, so that extending a sweep (`seed=0,1,2` to `seed=0,1,2,3,4,5`, or another
  loss) into the same `hydra.sweep.dir` adds jobs and reruns none. A sweep with other override
  keys into a folder holding a sweep is refused unless `lossbench train -m --add` asks for it.
- `SweepSummary`, a Hydra callback registered in conf/config.yaml, checks every job's config
  before the first one runs (basic sweeper: the whole grid is known), holds the sweep folder's
  lock (one writer at a time, `results/folder_lock.py`) and prints one line at the end: how many
  of how many jobs failed, and where, counted from each job's metrics.json; `lossbench train
  -m` then exits with status 1.

Nothing here imports torch at module level (run_sweep_job sets its threads when it runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lossbench.errors import Interrupted, UserError, debug_requested
from lossbench.results.files import write_json_atomic
from lossbench.results.folder_lock import LOCK_FILE, FolderLock
# resolved_config, LOCATION_KEYS and error_line used to live here: still importable from here
from lossbench.errors import error_line  # noqa: F401
from lossbench.results.record import (LOCATION_KEYS, METRICS,  # noqa: F401
                                      failure_record, metrics_path, read_metrics,
                                      resolved_config, write_metrics)

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
# Set by `lossbench train -m --add`: sweep into a folder that holds a sweep of other keys.
add_to_other_sweep = False
_sweep_lock: FolderLock | None = None
_job_lock: FolderLock | None = None
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


class StopBeforeStart(BaseException):
    """Ends `lossbench train` from one of its Hydra callbacks, before any job or run starts:
    `message` is printed as is, `status` is the exit status (0: nothing to do, on stdout; 2: a
    mistake, on stderr). A BaseException because Hydra turns an Exception raised in a callback
    into a warning and goes on. `error`: a bug met there, raised again with its traceback."""

    def __init__(self, message: str, status: int, error: Exception | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.error = message, status, error

    @classmethod
    def refused(cls, err: UserError) -> "StopBeforeStart":
        return cls(f"lossbench: error: {err}", 2)


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
    """Let go of the sweep's and the job's folder locks this process holds."""
    global _sweep_lock, _job_lock
    for lock in (_job_lock, _sweep_lock):
        if lock is not None:
            lock.release()
    _sweep_lock = _job_lock = None


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


def completed_run(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """metrics.json of a run already completed in run_dir for this very config, else None."""
    try:
        metrics = read_metrics(run_dir)
    except (OSError, ValueError):
        return None
    if metrics is None or metrics.get("status") != "completed":
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
    global _job_lock
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
        _job_lock = FolderLock(run_dir, "run directory").acquire()
    except UserError as err:
        note_job(sweep_dir, run_dir, "ran")
        print(f"lossbench: {label} not run: {err}", file=sys.stderr, flush=True)
        return None
    from contextlib import nullcontext

    try:
        with stop_when_done(sweep_dir) if parallel_launcher(hydra_cfg) else nullcontext():
            return _run_locked_job(cfg, hydra_cfg, run, choices, run_dir, sweep_dir, label)
    finally:
        if _job_lock is not None:
            _job_lock.release()
            _job_lock = None


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
        return f"lossbench: {len(failed)} of {len(jobs)} jobs failed: {dirs}{note}", failed
    reused = len(skipped & set(jobs))
    skipped_note = f" ({reused} skipped: already completed)" if reused else ""
    return (f"lossbench: all {len(jobs)} jobs completed{skipped_note} in {sweep_dir}{note}",
            failed)


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


# Launcher plugins that `pip install 'lossbench[sweep]'` brings (conf/hydra/launcher/*.yaml)
SWEEP_EXTRA_PLUGINS = ("joblib", "submitit_slurm", "submitit_local")


def check_launcher(config: DictConfig) -> None:
    """A launcher that cannot work here stops the sweep before anything is written: SLURM's
    off a cluster (no srun or sbatch on PATH)."""
    import shutil

    target = str((config.hydra.get("launcher") or {}).get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        lacking = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if lacking:
            verb = "is" if len(lacking) == 1 else "are"
            raise UserError(f"hydra/launcher=slurm submits the jobs to SLURM, but "
                            f"{' and '.join(lacking)} {verb} not on PATH here (not a SLURM "
                            f"cluster?); run the sweep on this machine with "
                            f"hydra/launcher=parallel, or from the cluster's login node")


def missing_plugin(err: BaseException) -> str | None:
    """The line for Hydra's "Could not load 'hydra/launcher/joblib'" (a launcher or sweeper
    preset whose plugin is not installed): which package brings it; None for other errors."""
    found = re.search(r"Could not load '(hydra/(launcher|sweeper))/([\w.-]+)'", str(err))
    if found is None:
        return None
    group, kind, name = found.groups()
    install = ("pip install 'lossbench[sweep]'" if name in SWEEP_EXTRA_PLUGINS
               else f"pip install hydra-{name.split('_')[0]}-{kind}")
    return f"the {name} {kind} (a Hydra plugin) is not installed; {install} brings it"


def interrupted_sweep_line(err: KeyboardInterrupt) -> str | None:
    """What Ctrl-C (or SIGTERM) says when it stops a sweep: the stopped job's state and the
    sweep command that continues the whole sweep (its finished jobs are skipped, the stopped
    one continues from its checkpoint), not `resume=` of that one job. None outside a sweep."""
    if _started is None:
        return None
    what = (str(err) or "stopped by Ctrl-C").split(". Continue with:")[0]
    return f"{what}; the sweep stopped. {continue_command(_started)}"


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, in the order Hydra's basic sweeper runs them (its own expansion of
    `hydra.sweeper.params` and the command line); None for a sweeper that picks its jobs as it
    goes (optuna)."""
    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = BasicSweeper(max_batch_size=None, params=config.hydra.sweeper.get("params"))
    arguments = [*sweeper._parse_config(), *(str(o) for o in config.hydra.overrides.task)]
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    return [list(job) for batch in batches for job in batch]


def check_job_config(cfg: DictConfig) -> None:
    """What can be checked of one run's config before any data is read: the schema's checks
    and settings that would do nothing (a noise rate without a kind)."""
    from lossbench.config.schema import check_config
    from lossbench.data.imbalance import check_imbalance_used
    from lossbench.data.noise import check_noise_used

    check_config(cfg)
    check_noise_used(cfg.dataset.get("noise"))
    check_imbalance_used(cfg.dataset.get("imbalance"))


def check_every_job(config: DictConfig, jobs: list[list[str]]) -> None:
    """Compose and check each job's config as its launcher will; the first mistake is a
    UserError naming that job's overrides, before any job (or folder) is made."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lossbench.errors import exit_report

    loader = GlobalHydra.instance().config_loader()
    before = HydraConfig.instance().cfg
    try:
        for job in jobs:
            try:
                job_cfg = loader.load_sweep_config(config, list(job))
                HydraConfig.instance().set_config(job_cfg)  # ${hydra:...} as in the job
                with read_write(job_cfg), open_dict(job_cfg):
                    del job_cfg["hydra"]
                check_job_config(job_cfg)
            except Exception as err:
                from omegaconf.errors import OmegaConfBaseException

                report = exit_report(err, composing=True)
                if report is None and isinstance(err, OmegaConfBaseException):
                    report = (error_line(err), 2)  # e.g. ${oc.env:X} with X unset
                if report is None or report[1] != 2:
                    raise
                reason = report[0].removeprefix("error: ")
                raise UserError(f"the sweep's job [{' '.join(job)}] cannot run: {reason}; "
                                f"no job was started") from None
    finally:
        if before is not None:
            HydraConfig.instance().set_config(before)


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


class SweepSummary(Callback):
    """Checks the sweep before its first job, holds its folder's lock, prints the end-of-sweep
    line and remembers the failed jobs for the exit status."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _started, _sweep_lock
        failed_jobs.clear()
        try:
            self._start(config)
        except UserError as err:
            raise StopBeforeStart.refused(err) from None
        except Exception as err:  # a bug: `lossbench train` raises it, traceback and all
            raise StopBeforeStart("", 1, err) from err

    def _start(self, config: DictConfig) -> None:
        global _started, _sweep_lock
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = planned_jobs(config)
        if jobs is not None:
            check_every_job(config, jobs)
        check_launcher(config)
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
            if not existed:
                from lossbench.results.files import discard_empty_folders

                discard_empty_folders(sweep_dir, Path.cwd())
            raise
        _sweep_lock = lock
        _started = sweep_dir
        global stopped_by
        stopped_by = None
        (sweep_dir / STOP_FLAG).unlink(missing_ok=True)
        if parallel_launcher(config.hydra):
            self._stop = stop_when_done(sweep_dir).__enter__()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _started
        if _started is None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if getattr(self, "_stop", None) is not None:
            self._stop.__exit__()
            self._stop = None
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

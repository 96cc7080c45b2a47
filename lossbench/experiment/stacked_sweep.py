"""A sweep's stackable jobs trained together: the work of `hydra/launcher=stacked`
(hydra_plugins/lossbench_launcher; docs/replicas.md).

The launcher groups the sweep's jobs (`stacking.group_jobs`) and, before the first job of a
stacked group runs, calls `train_group`. Each job of the group is prepared and built as its
separate run would be (`workflow.prepare`, `build`: its seeds, data, noisy labels, initial
weights), in its own job folder; the group trains as stacked replicas
(`engine.group_fit.fit_replicas`), and each replica's end of training goes to its job's
checkpoint.pt, marked with the first history row no log has seen (`unlogged_from`). Then every
job runs as any sweep's job does (`sweep.run_sweep_job`): it finds that checkpoint of its very
config and continues from it with nothing left to train, logs the epochs the group trained
(train.log, the tracker), tests both weights, reports and records. A stacked job's files are
written by the code that writes a separate run's.

A job that cannot join is left to run on its own, as in any sweep: completed already (skipped),
locked by another process, a mistake in its config (recorded as failed), a checkpoint taken
inside an epoch. A group that the engine refuses (`StackError`) or that fails runs job by job,
each from what its checkpoint holds. A stop signal ends the group after its epoch: each job
still training records `interrupted` with its checkpoint, and rerunning the command continues
them (stacked again).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from lossbench.console import counted
from lossbench.errors import Interrupted, UserError, debug_requested, error_line, stopped_by

@dataclass
class Member:
    """One job of a group, built: its run and parts (`workflow`), the replica `fit_replicas`
    trains, and its folder's lock."""

    number: int
    run: Any
    parts: Any
    replica: Any
    lock: Any


def compose_jobs(hydra_context: Any, config: DictConfig, jobs: Sequence[Sequence[str]],
                 first: int = 0) -> list[DictConfig]:
    """Each job's config with its `hydra` node, composed once as Hydra's basic launcher
    composes it (its number set); the launcher groups, trains and runs the jobs from these.
    The sweep's checks composed them already: the loader gives copies of those
    (`config/job_configs.py`)."""
    composed = []
    for i, overrides in enumerate(jobs):
        job = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(job):
            job.hydra.job.id = first + i
            job.hydra.job.num = first + i
        composed.append(job)
    return composed


def job_config(composed: DictConfig) -> tuple[DictConfig, Path]:
    """The job's config as Hydra's `run_job` gives it to the task (less `hydra`, its relative
    dataset paths made absolute as `lossbench train` makes them) and its run directory.
    HydraConfig is left set to the job's (the caller keeps the sweep's: `hydra_config_kept`)."""
    from hydra.core.hydra_config import HydraConfig

    from lossbench.data.files import absolute_paths

    job = copy.deepcopy(composed)
    HydraConfig.instance().set_config(job)
    run_dir = Path(str(OmegaConf.select(job, "hydra.sweep.dir"))) / str(
        OmegaConf.select(job, "hydra.sweep.subdir"))
    with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
        job.hydra.runtime.output_dir = os.path.abspath(run_dir)
    HydraConfig.instance().set_config(job)
    cfg = copy.deepcopy(job)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
        if cfg.get("dataset"):
            absolute_paths(cfg.dataset, job.hydra.runtime.cwd)
    return cfg, Path(job.hydra.runtime.output_dir)


def _say(line: str, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


def _member(number: int, cfg: DictConfig, run_dir: Path, stop: Any,
            started: float) -> Member | None:
    """The job built as a replica of its group, or None when it runs on its own (why: it is
    completed, locked, refused, or its config has a mistake its own run will record)."""
    from rich.console import Console

    from lossbench.config.schema import check_config
    from lossbench.engine.checkpoint import capture_rng
    from lossbench.engine.group_fit import ReplicaRun
    from lossbench.experiment import workflow
    from lossbench.experiment.builders import loss_name
    from lossbench.experiment.sweep import completed_run, unfinished_checkpoint
    from lossbench.results.folder_lock import FolderLock

    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = FolderLock(run_dir, "run directory").acquire()
    except UserError:
        return None  # its own job says so
    try:
        if completed_run(cfg, run_dir) is not None:
            lock.release()
            return None
        resume = unfinished_checkpoint(cfg, run_dir)
        if resume is not None and resume["loop"]["batch"]:
            lock.release()  # a checkpoint taken inside an epoch continues alone
            return None
        check_config(cfg)
        run = workflow.prepare(cfg, run_dir, Console(quiet=True), started, resume)
        parts = workflow.build(run)
        generator = workflow.training_generator(run)
        rng = capture_rng(generator)
        unlogged = (0 if resume is None
                    else resume.get("unlogged_from", len(resume["loop"]["history"])))
        save = workflow.checkpoint_writer(run, parts, stop, extra={"unlogged_from": unlogged})
        replica = ReplicaRun(parts.model, parts.loss_fn, parts.optimizer,
                             parts.schedule.scheduler, run.splits, parts.head, run.trainer,
                             generator, rng, resume=resume["loop"] if resume else None,
                             save=save, name=loss_name(cfg, run.picked.get("loss", "?")))
        return Member(number, run, parts, replica, lock)
    except Exception as err:
        lock.release()
        if stopped_by(err) is not None:
            raise
        return None  # its own run meets the same error and records it
    except BaseException:  # a stop during start-up: the folder it made for nothing goes
        lock.release()
        if made and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def train_group(config: DictConfig, jobs: Sequence[tuple[int, DictConfig]]) -> None:
    """Train the jobs (number, composed config: `compose_jobs`) of one group as stacked
    replicas, each to its end written as its checkpoint (module docstring); the jobs themselves
    run afterwards."""
    from lossbench.engine.signals import StopOnSignal
    from lossbench.experiment.sweep_checks import hydra_config_kept
    from lossbench.experiment.sweep_folder import STOP_FLAG

    sweep_dir = Path(str(config.hydra.sweep.dir))
    if (sweep_dir / STOP_FLAG).exists():
        return
    stop = StopOnSignal(phase="start-up")
    started = time.perf_counter()
    members: list[Member] = []
    # the group logs nothing: each job logs its epochs when it runs (`workflow.unlogged_epochs`)
    # into its own train.log; meanwhile nothing else may reach the console
    quiet = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with hydra_config_kept():
            for number, composed in jobs:
                cfg, run_dir = job_config(composed)
                member = _member(number, cfg, run_dir, stop, started)
                if member is not None:
                    members.append(member)
        for chunk in _chunks(members):
            if len(chunk) > 1:
                _train(chunk, stop, started)
    finally:
        logging.disable(quiet)
        for member in members:
            member.lock.release()


def _chunks(members: list[Member]) -> list[list[Member]]:
    """The members cut to what memory holds (the replicas' estimate,
    `stacking.replicas_that_fit`, once the data's shape is known); the user's `max_replicas`
    has cut the group already (`plan_groups`)."""
    from lossbench.experiment.stacking import replicas_that_fit

    if not members:
        return []
    first = members[0]
    cap = replicas_that_fit(first.run.cfg, first.run.splits.sample_shape,
                            first.parts.num_outputs) or len(members)
    if cap < len(members):
        _say(f"lossbench: jobs {_numbers(members)}: at most {cap} replicas at once (memory)")
    return [members[i:i + cap] for i in range(0, len(members), cap)]


def _numbers(members: Sequence[Member]) -> str:
    from lossbench.experiment.stacking import job_ranges

    return job_ranges([m.number for m in members])


def _train(members: list[Member], stop: Any, started: float) -> None:
    """One stack of `members` trained to its end; each completed job's run dir noted in
    `STACKED`. A refusal or a failure leaves each job to run on its own."""
    from lossbench.engine.group_fit import fit_replicas
    from lossbench.engine.replicas import StackError
    from lossbench.engine.threads import set_threads
    from lossbench.experiment.outcome import stop_early
    from lossbench.experiment.sweep import STACKED

    share = 1.0 / len(members)
    for member in members:  # each job's wall time: its share of the group's
        member.run.started, member.run.share = started, share
    # torch's threads for the stack's step, which does R replicas' arithmetic at once: chosen
    # as for one model whose batch is R times larger (`trainer.threads=auto`; a count as given)
    first = members[0].run
    set_threads(first.trainer.get("threads", "auto"), members[0].parts.model,
                first.splits.sample_shape, first.trainer.batch_size * len(members), first.device)
    stop.phase = "training"
    try:
        with stop:
            results = fit_replicas([m.replica for m in members], members[0].run.device,
                                   stop=stop)
    except StackError as err:
        _say(f"lossbench: jobs {_numbers(members)} run one by one: {err}")
        return
    except Exception as err:
        if stopped_by(err) is not None:
            raise
        _say(f"lossbench: the stack of jobs {_numbers(members)} failed ({error_line(err)}); "
             "each job runs on its own from its checkpoint", error=True)
        if debug_requested():
            traceback.print_exception(err)
        return
    finally:
        stop.phase = "finishing"
    interrupted: list[Interrupted] = []
    for member, result in zip(members, results):
        run = member.run
        if result.status == "completed":
            STACKED[str(run.run_dir)] = len(members)
        elif result.status == "interrupted":
            try:
                stop_early(result, run.run_dir, stop.requested, run.cfg, run.picked,
                           run.splits.name, run.splits.task, run.monitor, run.mode,
                           run.wall_time(), run.cfg.optimizer.get("lr"), True, run.pairing)
            except Interrupted as err:
                interrupted.append(err)
        # a diverged replica's job trains again on its own from its last good checkpoint and
        # records the divergence as its separate run would
    if stop.requested is not None:
        code = 128 + int(stop.requested)
        name = signal.Signals(int(stop.requested)).name
        raise Interrupted(f"the stack of jobs {_numbers(members)} was interrupted by {name} "
                          f"({counted(len(interrupted), 'job')} with a checkpoint)", code)


def plan_groups(jobs: Sequence[Sequence[str]], composed: Sequence[DictConfig],
                first: int = 0, max_replicas: int | None = None) -> list[Any]:
    """Each job's `stacking.Group` (numbered from `first`, as the sweep numbers its jobs), one
    per job in order, from the jobs' overrides and composed configs (`compose_jobs`); the
    sweep's line for each group is printed here, before any job runs."""
    from hydra.core.hydra_config import HydraConfig

    from lossbench.experiment.stacking import Group, group_jobs
    from lossbench.experiment.sweep_checks import hydra_config_kept

    configs = []
    with hydra_config_kept():  # ${hydra:...} read the job's own values
        for job in composed:
            HydraConfig.instance().set_config(job)
            resolved = OmegaConf.to_container(job, resolve=True)
            resolved.pop("hydra", None)
            configs.append(OmegaConf.create(resolved))
    groups = group_jobs(jobs, configs, max_replicas=max_replicas)
    of_job: list[Any] = [None] * len(jobs)
    for group in groups:
        numbered = Group(tuple(first + n for n in group.jobs), group.varies, group.alone)
        _say(numbered.line())
        for n in group.jobs:
            of_job[n] = numbered
    return of_job

"""`hydra/launcher=stacked`: Hydra's basic launcher, with a sweep's compatible jobs trained
together as stacked replicas first (lossbench/experiment/stacked_sweep.py, docs/replicas.md).

Hydra imports every module of `hydra_plugins` when it starts: nothing here imports torch or
lossbench's training code until a sweep is launched.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals

log = logging.getLogger(__name__)


class StackedLauncher(BasicLauncher):
    """Runs the jobs one after the other in this process, as `hydra/launcher=basic` does;
    before the first job of a group of stackable jobs, the group trains as one stacked model
    and each of its jobs then finds its training done (its checkpoint) and writes its results.
    `max_replicas`: at most this many jobs in one stack (None: as many as memory holds)."""

    def __init__(self, max_replicas: Optional[int] = None) -> None:
        super().__init__()
        self.max_replicas = max_replicas

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from lossbench.experiment.stacked_sweep import compose_jobs, plan_groups, train_group

        setup_globals()
        assert self.hydra_context is not None and self.config is not None
        assert self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [list(overrides) for overrides in job_overrides]
        composed = compose_jobs(self.hydra_context, self.config, jobs, initial_job_idx)
        groups = plan_groups(jobs, composed, initial_job_idx, self.max_replicas)
        trained: set[int] = set()
        runs: list[JobReturn] = []
        for i, job in enumerate(composed):
            group = groups[i]
            if group.stacked and group.jobs[0] not in trained:
                trained.add(group.jobs[0])
                train_group(self.config, [(n, composed[n - initial_job_idx])
                                          for n in group.jobs])
            runs.append(run_job(hydra_context=self.hydra_context,
                                task_function=self.task_function, config=copy.deepcopy(job),
                                job_dir_key="hydra.sweep.dir",
                                job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

"""A sweep checked whole before its first job: every job's config, and a launcher that can
work here. A mistake is one line naming the job's overrides, and nothing is written."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from omegaconf import DictConfig

from lossbench.errors import UserError, error_line


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


@contextmanager
def hydra_config_kept() -> Iterator[None]:
    """HydraConfig as it was before the block, afterwards: the sweep's, or unset (then a job's
    config composed inside must not stay behind for whatever runs next in this process: an
    in-process `resume=` reads the overrides it holds)."""
    from hydra.core.hydra_config import HydraConfig

    before = HydraConfig.instance().cfg
    try:
        yield
    finally:
        if before is not None:
            HydraConfig.instance().set_config(before)
        else:
            HydraConfig.instance().cfg = None


def compose_job(config: DictConfig, job: list[str]) -> DictConfig:
    """One job's config composed as its launcher will, less `hydra` (`config/job_configs.py`:
    each job composed once, most from a template). HydraConfig is left set to the job's
    (${hydra:...} reads its values); the caller puts the sweep's back (`hydra_config_kept`)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lossbench.config.job_configs import for_sweep

    job_cfg = for_sweep(config).compose(job)
    HydraConfig.instance().set_config(job_cfg)
    with read_write(job_cfg), open_dict(job_cfg):
        del job_cfg["hydra"]
    return job_cfg


def check_every_job(config: DictConfig, jobs: list[list[str]]) -> None:
    """Compose and check each job's config as its launcher will; the first mistake is a
    UserError naming that job's overrides, before any job (or folder) is made. The configs are
    kept for the sweep's launcher (`job_configs.keep_for_sweep`) until `forget_composed`."""
    from lossbench.config.job_configs import keep_for_sweep, let_go

    let_go()
    try:
        with hydra_config_kept():
            for job in jobs:
                check_composed(config, job)
    except BaseException:
        let_go()
        raise
    keep_for_sweep(config)


def forget_composed() -> None:
    """The sweep is over (or never started): its composed configs are let go."""
    from lossbench.config.job_configs import let_go

    let_go()


def check_composed(config: DictConfig, job: list[str]) -> None:
    """One job's config composed and checked; a mistake in it is a UserError naming the job."""
    from lossbench.errors import exit_report

    try:
        check_job_config(compose_job(config, job))
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

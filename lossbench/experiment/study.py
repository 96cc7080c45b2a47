"""`lossbench study`: every loss at its own best settings, with the same budget.

    lossbench study losses=ce,gce,sce,mae datasets=wine,iris trials=20 seeds.tune=2 \
        seeds.report=5 model=linear trainer.epochs=60

For each dataset (× each of `conditions`, if any) and loss, an Optuna study (ask/tell, stored in
`<dir>/optuna.db`) runs exactly `trials` trials over the shared settings
(lossbench/config/search_spaces/shared.yaml: learning rate, weight decay) and the loss's own
hyperparameters (lossbench/config/search_spaces/<loss>.yaml). A trial is one ordinary run per tuning seed
(`<dir>/tune/<dataset>/<loss>/trialNNN/seedS/`); its value is the mean validation score over those
seeds (`lossbench.results.tuning.validation_score`: the rule that picks a run's epoch, validation
accuracy with validation NLL breaking ties). The best trial of each loss is then rerun on fresh
seeds (`<dir>/report/<dataset>/<loss>/seedS/`, seeds from `seeds.report_from` on, never a tuning
seed), and only those runs are compared (lossbench.commands.compare) and aggregated
(lossbench.experiment.study_report).

Killed, the same command with `dir=<that study>` resumes: completed runs are kept, a trial the
kill left running is finished with the parameters it was given, and each loss still gets exactly
`trials` trials, each drawn as an uninterrupted study would have drawn it (the sampler of trial
k is seeded from sampler_seed, the (stratum, loss) and k: study_settings.make_sampler). Every other `key=value` argument goes to every run, as `lossbench train` takes it.

The settings, their command line and the search spaces are lossbench.experiment.study_settings';
this module runs the trials and the report runs.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
# the settings and search spaces live in study_settings; these names stay importable from here
from lossbench.experiment.study_settings import (LAUNCHERS, OWN_KEYS,  # noqa: F401
                                                 RESUMABLE_CHANGES, SAMPLERS, SEARCH_DIR, USAGE,
                                                 Param, Seeds, StudySettings, check_grid_budget,
                                                 check_settings, grid_points, load_trials,
                                                 make_sampler, parse_args, resumed_settings,
                                                 search_space, storage_url)


# --------------------------------------------------------------------------------------------
# one run


def compose_run(overrides: list[str], run_dir: Path):
    """The config `lossbench train <overrides>` would run, its run directory `run_dir`; Hydra's
    own node is registered (config-group choices) and removed from the task config."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    from lossbench.config.schema import register_schemas

    register_schemas()
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
        cfg.run_dir = str(run_dir)
    return cfg


def checked_config(overrides: list[str]):
    """Compose and check a run's config before anything is written (a mistake: UserError);
    returns it."""
    from lossbench.errors import config_mistake
    from lossbench.config.schema import check_config

    try:
        cfg = compose_run(overrides, Path("unused"))
    except Exception as err:
        message = config_mistake(err)
        if message is None:
            raise
        raise UserError(f"study: {' '.join(overrides)}: {message}") from None
    check_config(cfg)
    return cfg


def check_study_runs(settings: StudySettings) -> None:
    """Every (stratum, loss) checked before anything is written or trained: its search space,
    its run config, and the loss against the stratum's data (the line `lossbench train` gives
    for a loss that does not fit the dataset's task), so that no loss is found unfit only after
    the others were tuned."""
    from hydra.utils import instantiate

    from lossbench.experiment.builders import check_loss_fits, load_data

    check_grid_budget(settings)
    for _, data_overrides in settings.strata():
        splits = None
        for loss in settings.losses:
            search_space(loss, settings.search_spaces)
            cfg = checked_config([f"loss={loss}", *settings.train, *data_overrides])
            try:
                if splits is None:  # once per stratum: only its task is needed
                    splits = load_data(cfg)
                check_loss_fits(instantiate(cfg.loss), loss, splits)
            except UserError as err:
                raise UserError(f"study: {err}") from None


def run_in_process(overrides: list[str], run_dir: str) -> dict[str, Any]:
    """One ordinary run in run_dir (skipped when it already completed with this very config);
    returns its metrics.json. Its console output goes to run_dir/console.txt."""
    from omegaconf import OmegaConf

    from lossbench.experiment.run import choices, run
    from lossbench.experiment.sweep import completed_run, record_failure
    from lossbench.results.files import write_text_atomic
    from lossbench.results.record import read_metrics

    path = Path(run_dir)
    cfg = compose_run(overrides, path)
    done = completed_run(cfg, path)
    if done is not None:
        return done
    shutil.rmtree(path, ignore_errors=True)  # a run a kill left half-way starts again
    (path / ".hydra").mkdir(parents=True)
    write_text_atomic(path / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text_atomic(path / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(list(overrides)))
    started = time.time()
    with open(path / "console.txt", "w", encoding="utf-8") as out, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            run(cfg)
        except Exception as err:  # failed or diverged: recorded; the study goes on
            record_failure(path, cfg, err, choices(cfg), started)
    record = read_metrics(path)
    if record is None:  # run() returns or raises only after writing it: a bug if it did not
        raise RuntimeError(f"{path} holds no run record after its run")
    return record


def run_many(settings: StudySettings, jobs: list[tuple[list[str], Path]]) -> list[dict[str, Any]]:
    """Run each (overrides, run_dir): here one after another, or as submitit jobs at once."""
    if settings.launcher == "local":
        return [run_in_process(overrides, str(run_dir)) for overrides, run_dir in jobs]
    import submitit

    executor = submitit.AutoExecutor(folder=Path(str(settings.dir)) / ".submitit")
    extra = {"slurm_partition": settings.partition} if settings.partition else {}
    executor.update_parameters(timeout_min=settings.timeout_min, **extra)
    submitted = [executor.submit(run_in_process, overrides, str(run_dir))
                 for overrides, run_dir in jobs]
    return [job.result() for job in submitted]


# --------------------------------------------------------------------------------------------
# the study


def _value_text(value: float) -> str:
    return repr(float(value))


def tune_loss(settings: StudySettings, study_dir: Path, stratum: tuple[str, list[str]],
              loss: str, index: int) -> None:
    """Bring the Optuna study of (stratum, loss) to exactly `trials` finished trials."""
    import optuna
    from optuna.trial import TrialState

    from lossbench.results.tuning import mean_score, validation_score

    space = search_space(loss, settings.search_spaces)
    dataset = stratum[0]
    distributions = {p.key: p.distribution() for p in space}
    study = optuna.create_study(
        study_name=f"{dataset}/{loss}", storage=storage_url(study_dir), direction="maximize",
        sampler=make_sampler(settings, space, index, 0), load_if_exists=True)

    def evaluate(number: int, params: dict[str, float]) -> float:
        trial_dir = study_dir / "tune" / dataset / loss / f"trial{number:03d}"
        jobs = [(run_overrides(settings, stratum, loss, seed, params), trial_dir / f"seed{seed}")
                for seed in settings.tune_seeds()]
        records = run_many(settings, jobs)
        value = mean_score(validation_score(metrics, run_dir)
                           for metrics, (_, run_dir) in zip(records, jobs))
        shown = " ".join(f"{k}={v:.4g}" for k, v in params.items())
        result = "failed" if math.isinf(value) else f"validation {abs(value):.4f}"
        print(f"study: {dataset} {loss} trial {number + 1}/{settings.trials} [{shown}]: {result}",
              flush=True)
        return value

    def tell(number: int, value: float) -> None:
        if math.isinf(value):  # it used its share of the budget; the sampler learns nothing
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, value)

    # a trial a kill left running: finish it with the parameters it was given (no trial lost)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tell(frozen.number, evaluate(frozen.number, frozen.params))
    points = grid_points(settings, space, index) if settings.sampler == "grid" else []
    while (number := len(study.get_trials(deepcopy=False))) < settings.trials:
        if points:
            study.enqueue_trial(points[number])
        study.sampler = make_sampler(settings, space, index, number)  # resumable: see there
        trial = study.ask(distributions)
        tell(trial.number, evaluate(trial.number, trial.params))


def run_overrides(settings: StudySettings, stratum: tuple[str, list[str]], loss: str,
                  seed: int, params: dict[str, float]) -> list[str]:
    """What `lossbench train` gets for one run: the stratum's dataset and condition last among
    the user's overrides, then the trial's values."""
    return [f"loss={loss}", f"seed={seed}", *settings.train, *stratum[1],
            *(f"{k}={_value_text(v)}" for k, v in params.items())]


def report_runs(settings: StudySettings, study_dir: Path, stratum: tuple[str, list[str]],
                loss: str) -> bool:
    """The winner of (stratum, loss) on the report seeds: the only runs the study compares.
    False when every trial failed: the loss could not be tuned, nothing is reported for it."""
    from optuna.trial import TrialState

    dataset = stratum[0]
    trials = [t for t in load_trials(study_dir, dataset, loss) if t.state == TrialState.COMPLETE]
    if not trials:
        print(f"study: {dataset} {loss}: every trial failed; nothing to report (the runs' "
              f"console.txt under {study_dir / 'tune' / dataset / loss} say why)",
              file=sys.stderr)
        return False
    best = max(trials, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    params = " ".join(f"{k}={v:.4g}" for k, v in best.params.items())
    print(f"study: {dataset} {loss}: trial {best.number + 1} chosen [{params}]; reporting seeds "
          f"{settings.report_seeds()}", flush=True)
    jobs = [(run_overrides(settings, stratum, loss, seed, best.params),
             study_dir / "report" / dataset / loss / f"seed{seed}")
            for seed in settings.report_seeds()]
    run_many(settings, jobs)
    return True


def run_study(settings: StudySettings) -> tuple[Path, list[str]]:
    """Tune, report and write the report; returns it and the (stratum, loss) pairs that could
    not be tuned (every trial failed). One writer: a second study into the folder is refused."""
    from lossbench.results.folder_lock import FolderLock

    study_dir = Path(str(settings.dir))
    lock = FolderLock(study_dir, "study directory")
    try:
        lock.acquire()
    except PermissionError:
        database = study_dir / "optuna.db"
        if not database.is_file():
            raise  # a new study in a folder it may not write: that folder's line
        # a study to resume that this user may not write: its database is what it cannot write
        raise UserError(f"the study's database ({database}) is a readonly database for this "
                        f"user: the study records its trials there, and {study_dir} may not be "
                        f"written; change its permissions (chmod -R u+w {study_dir}) or copy the "
                        f"study elsewhere and run it there") from None
    try:
        return _run_locked_study(settings, study_dir)
    finally:
        lock.release()


def _run_locked_study(settings: StudySettings, study_dir: Path) -> tuple[Path, list[str]]:
    from omegaconf import OmegaConf

    from lossbench.experiment import study_report
    from lossbench.results.files import write_text_atomic

    if not (study_dir / "study.yaml").is_file():
        record = OmegaConf.to_yaml(OmegaConf.structured(settings))
        write_text_atomic(study_dir / "study.yaml", record)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pairs = [(stratum, loss) for stratum in settings.strata() for loss in settings.losses]
    for index, (stratum, loss) in enumerate(pairs):
        tune_loss(settings, study_dir, stratum, loss, index)
    untuned = [f"{loss} on {stratum[0]}" for stratum, loss in pairs
               if not report_runs(settings, study_dir, stratum, loss)]
    return study_report.write_report(settings, study_dir), untuned


def study_command(argv: list[str]) -> int:
    """`lossbench study key=value ...`: run (or resume) a study and write its report."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    settings, given = parse_args(argv)
    for module, needed in (("optuna", True), ("submitit", settings.launcher == "submitit")):
        try:
            if needed:
                __import__(module)
        except ImportError:
            raise UserError(f"study: needs {module}: pip install 'lossbench[study]'") from None
    if settings.dir and (Path(settings.dir) / "study.yaml").is_file():
        settings = resumed_settings(settings, given)
        print(f"study: resuming {settings.dir}", flush=True)
    else:
        settings.dir = settings.dir or datetime.now().strftime("outputs/studies/%Y-%m-%d/%H-%M-%S")
        check_study_runs(settings)  # every run's config, before anything is written
    try:
        report, untuned = run_study(settings)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM: the trial in progress stays RUNNING
        print(f"study: stopped; lossbench study dir={settings.dir} resumes it", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 130)) from None
    print(f"study: report {report}", flush=True)
    if untuned:  # the report compares the others; the study did not do what it was asked
        print(f"study: could not tune {', '.join(untuned)}: every trial failed", file=sys.stderr)
        return 1
    return 0

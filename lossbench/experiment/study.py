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
(lossbench.results.study_report).

Killed, the same command with `dir=<that study>` resumes: completed runs are kept, a trial the
kill left running is finished with the parameters it was given, and each loss still gets exactly
`trials` trials. Every other `key=value` argument goes to every run, as `lossbench train` takes it.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lossbench.errors import UserError

# The search spaces ship inside the package (lossbench/config/search_spaces/), outside the Hydra config
# tree: a folder under conf/ would be a config group of `lossbench train`.
SEARCH_DIR = Path(__file__).resolve().parents[1] / "config" / "search_spaces"
SAMPLERS = ("tpe", "random", "grid")
LAUNCHERS = ("local", "submitit")
# Train overrides a study sets itself, per run: the user names them through the study's keys.
OWN_KEYS = {"loss": "losses", "dataset": "datasets", "seed": "seeds.tune / seeds.report"}


@dataclass
class Seeds:
    tune: int = 2           # seeds 0 .. tune-1 choose each loss's settings
    report: int = 5         # seeds report_from .. report_from+report-1 report the winners
    report_from: int = 1000


@dataclass
class StudySettings:
    losses: list[str] = field(default_factory=lambda: ["ce", "gce", "sce", "mae"])
    datasets: list[str] = field(default_factory=lambda: ["wine"])
    # conditions.<name>="<overrides>": each dataset under each condition is its own stratum,
    # tuned and reported apart (e.g. conditions.noisy40="dataset.noise.kind=symmetric
    # dataset.noise.rate=0.4"); none: each dataset as the run overrides leave it
    conditions: dict[str, str] = field(default_factory=dict)
    trials: int = 20        # per stratum and loss: the equal budget
    seeds: Seeds = field(default_factory=Seeds)
    sampler: str = "tpe"    # tpe | random | grid
    sampler_seed: int = 0
    metric: str | None = None  # test metric of the final comparison (default: accuracy / rmse)
    alpha: float = 0.05
    bootstrap: int = 2000   # resamples of the aggregate's stratified bootstrap
    launcher: str = "local"  # local: in this process; submitit: one job per run (SLURM or local)
    timeout_min: int = 60   # submitit: a run's time limit
    partition: str | None = None  # submitit on SLURM
    dir: str | None = None
    train: list[str] = field(default_factory=list)  # overrides every run gets

    def strata(self) -> list[tuple[str, list[str]]]:
        """(name, overrides) of each dataset × condition: `wine`, or `wine-noisy40`."""
        if not self.conditions:
            return [(d, [f"dataset={d}"]) for d in self.datasets]
        return [(f"{d}-{name}", [f"dataset={d}", *overrides.split()])
                for d in self.datasets for name, overrides in self.conditions.items()]

    def tune_seeds(self) -> list[int]:
        return list(range(self.seeds.tune))

    def report_seeds(self) -> list[int]:
        return list(range(self.seeds.report_from, self.seeds.report_from + self.seeds.report))


# Keys that may differ when a study is resumed: where and how runs are launched.
RESUMABLE_CHANGES = ("launcher", "timeout_min", "partition", "dir")


# --------------------------------------------------------------------------------------------
# settings from the command line


def parse_args(argv: list[str]) -> tuple[StudySettings, set[str]]:
    """`key=value` arguments: the study's own keys (StudySettings) and, for every other key, an
    override that every run gets. Returns the settings and the study keys the user gave."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    own = {f.name for f in StudySettings.__dataclass_fields__.values()} - {"train", "seeds"}
    own |= {f"seeds.{name}" for name in Seeds.__dataclass_fields__}
    given: list[str] = []
    train: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            raise UserError(f"study: '{arg}' is not key=value (e.g. losses=ce,gce trials=20; "
                            "see lossbench study --help)")
        if key in own or key.startswith("conditions."):
            if key in ("losses", "datasets"):
                value = "[" + value.strip("[]") + "]"
            given.append(f"{key}={value}")
        elif key.lstrip("+~") in OWN_KEYS:
            raise UserError(f"study: set {key} through {OWN_KEYS[key.lstrip('+~')]}, not {key}=")
        elif key.startswith(("hydra.", "hydra/")) or key in ("resume", "-m"):
            raise UserError(f"study: {key} is the study's to set; a run gets its directory "
                            "inside the study's dir")
        else:
            train.append(arg)
    try:
        settings = OmegaConf.merge(OmegaConf.structured(StudySettings),
                                   OmegaConf.from_dotlist(given))
        settings = OmegaConf.to_object(settings)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        where = f"{key}: " if key else ""
        raise UserError(f"study: {where}{str(err).splitlines()[0]}") from None
    assert isinstance(settings, StudySettings)
    settings.train = train
    check_settings(settings)
    return settings, {g.partition("=")[0] for g in given}


def check_settings(s: StudySettings) -> None:
    if not s.losses or not s.datasets:
        raise UserError("study: losses= and datasets= each need at least one name")
    if s.trials < 1:
        raise UserError(f"study: trials={s.trials} must be at least 1")
    if s.seeds.tune < 1 or s.seeds.report < 1:
        raise UserError("study: seeds.tune and seeds.report must each be at least 1")
    if s.seeds.report_from < s.seeds.tune:
        raise UserError(f"study: seeds.report_from={s.seeds.report_from} would report tuning "
                        f"seeds (0..{s.seeds.tune - 1}); it must be at least seeds.tune")
    if s.sampler not in SAMPLERS:
        raise UserError(f"study: sampler={s.sampler}: choose from {', '.join(SAMPLERS)}")
    if s.launcher not in LAUNCHERS:
        raise UserError(f"study: launcher={s.launcher}: choose from {', '.join(LAUNCHERS)}")
    if not 0.0 < s.alpha < 1.0:
        raise UserError(f"study: alpha={s.alpha:g} must lie in (0, 1)")
    for names, what in ((s.losses, "loss"), (s.datasets, "dataset")):
        if len(set(names)) != len(names):
            raise UserError(f"study: a {what} is named twice in {','.join(names)}")


def resumed_settings(settings: StudySettings, given: set[str]) -> StudySettings:
    """The settings recorded in an existing study's dir; what the command gives must agree."""
    from omegaconf import OmegaConf

    study_dir = Path(str(settings.dir))
    recorded = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudySettings),
                                                   OmegaConf.load(study_dir / "study.yaml")))
    assert isinstance(recorded, StudySettings)
    mine, theirs = asdict(settings), asdict(recorded)
    differ = [key for key in given if key not in RESUMABLE_CHANGES and _get(mine, key) !=
              _get(theirs, key)]
    if settings.train and settings.train != recorded.train:
        differ.append("run overrides (" + " ".join(settings.train) + ")")
    if differ:
        raise UserError(f"study: {study_dir} was started with other settings ({', '.join(differ)}"
                        f"); resume it with dir={study_dir} alone, or start a new dir")
    for key in RESUMABLE_CHANGES:
        if key in given:
            setattr(recorded, key, getattr(settings, key))
    recorded.dir = str(study_dir)
    return recorded


def _get(tree: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


# --------------------------------------------------------------------------------------------
# search spaces


@dataclass
class Param:
    key: str              # a `lossbench train` config key (optimizer.lr, loss.q)
    low: float
    high: float
    log: bool = False
    grid: list[float] = field(default_factory=list)

    def distribution(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log)

    def at_edge(self, value: float, sampler: str, share: float = 0.05) -> bool:
        """True when `value` lies at the edge of what was searched: the first or last grid
        value, else within `share` of the range's ends (on the log scale for log ranges). The
        best may lie beyond it, outside what the study tried."""
        if sampler == "grid":
            return len(self.grid) > 1 and value in (min(self.grid), max(self.grid))
        low, high, v = self.low, self.high, value
        if self.log:
            low, high, v = math.log(low), math.log(high), math.log(value)
        where = (v - low) / (high - low)
        return where <= share or where >= 1 - share


def search_space(loss: str) -> list[Param]:
    """search_spaces/shared.yaml then search_spaces/<loss>.yaml: what a study tunes for `loss`."""
    from omegaconf import OmegaConf

    path = SEARCH_DIR / f"{loss}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SEARCH_DIR.glob("*.yaml") if p.stem != "shared")
        raise UserError(f"study: no search space for loss {loss}: add "
                        f"lossbench/config/search_spaces/{loss}.yaml (losses with one: "
                        f"{', '.join(known)})")
    params = []
    for source in (SEARCH_DIR / "shared.yaml", path):
        for key, spec in (OmegaConf.to_container(OmegaConf.load(source)) or {}).items():
            try:
                param = Param(key=key, **spec)
                param.grid = [float(v) for v in param.grid]
            except TypeError as err:
                raise UserError(f"{source}: {key}: {err}") from None
            if not param.low < param.high or (param.log and param.low <= 0):
                raise UserError(f"{source}: {key}: needs low < high (and low > 0 with log)")
            params.append(param)
    return params


def make_sampler(settings: StudySettings, space: list[Param], index: int):
    import optuna

    seed = settings.sampler_seed + index  # each (stratum, loss) its own stream, reproducibly
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":  # the points come from grid_points, enqueued one per trial
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def grid_points(settings: StudySettings, space: list[Param], index: int
                ) -> list[dict[str, float]]:
    """sampler=grid: every combination of the grids in search_spaces/, in an order shuffled by
    the sampler seed (with fewer trials than points, a random subset of the grid). Optuna's
    GridSampler is not used: it stops a study from inside `optimize`, which ask/tell has not."""
    import itertools
    import random

    missing = [p.key for p in space if not p.grid]
    if missing:
        raise UserError(f"study: sampler=grid needs a grid for {', '.join(missing)} in "
                        "lossbench/config/search_spaces/")
    points = [dict(zip([p.key for p in space], values))
              for values in itertools.product(*(p.grid for p in space))]
    random.Random(settings.sampler_seed + index).shuffle(points)
    return points


def check_grid_budget(settings: StudySettings) -> None:
    """Equal budgets under sampler=grid: no loss may run out of grid points before `trials`."""
    if settings.sampler != "grid":
        return
    sizes = {loss: len(grid_points(settings, search_space(loss), 0)) for loss in settings.losses}
    if min(sizes.values()) < settings.trials:
        shown = ", ".join(f"{loss} {n}" for loss, n in sizes.items())
        raise UserError(f"study: sampler=grid with trials={settings.trials}, but some grids have "
                        f"fewer points ({shown}); set trials={min(sizes.values())} at most, or "
                        "add grid values in lossbench/config/search_spaces/")


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


def checked_config(overrides: list[str]) -> None:
    """Compose and check a run's config before anything is written (a mistake: UserError)."""
    from lossbench.commands.train import config_error_message
    from lossbench.config.schema import check_config

    try:
        cfg = compose_run(overrides, Path("unused"))
    except Exception as err:
        message = config_error_message(err)
        if message is None:
            raise
        raise UserError(f"study: {' '.join(overrides)}: {message}") from None
    check_config(cfg)


def run_in_process(overrides: list[str], run_dir: str) -> dict[str, Any]:
    """One ordinary run in run_dir (skipped when it already completed with this very config);
    returns its metrics.json. Its console output goes to run_dir/console.txt."""
    from omegaconf import OmegaConf

    from lossbench.results.files import read_json, write_text_atomic
    from lossbench.experiment.run import choices, run
    from lossbench.experiment.sweep import completed_run, record_failure

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
    return read_json(path / "metrics.json")


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

    space = search_space(loss)
    dataset = stratum[0]
    distributions = {p.key: p.distribution() for p in space}
    study = optuna.create_study(
        study_name=f"{dataset}/{loss}", storage=storage_url(study_dir), direction="maximize",
        sampler=make_sampler(settings, space, index), load_if_exists=True)

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
        trial = study.ask(distributions)
        tell(trial.number, evaluate(trial.number, trial.params))


def run_overrides(settings: StudySettings, stratum: tuple[str, list[str]], loss: str,
                  seed: int, params: dict[str, float]) -> list[str]:
    """What `lossbench train` gets for one run: the stratum's dataset and condition last among
    the user's overrides, then the trial's values."""
    return [f"loss={loss}", f"seed={seed}", *settings.train, *stratum[1],
            *(f"{k}={_value_text(v)}" for k, v in params.items())]


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'optuna.db').resolve()}"


def load_trials(study_dir: Path, dataset: str, loss: str) -> list[Any]:
    import optuna

    study = optuna.load_study(study_name=f"{dataset}/{loss}", storage=storage_url(study_dir))
    return study.get_trials(deepcopy=False)


def report_runs(settings: StudySettings, study_dir: Path, stratum: tuple[str, list[str]],
                loss: str) -> None:
    """The winner of (stratum, loss) on the report seeds: the only runs the study compares."""
    from optuna.trial import TrialState

    dataset = stratum[0]
    trials = [t for t in load_trials(study_dir, dataset, loss) if t.state == TrialState.COMPLETE]
    if not trials:
        print(f"study: {dataset} {loss}: every trial failed; nothing to report", file=sys.stderr)
        return
    best = max(trials, key=lambda t: (t.value, -t.number))  # ties: the earlier trial
    params = " ".join(f"{k}={v:.4g}" for k, v in best.params.items())
    print(f"study: {dataset} {loss}: trial {best.number + 1} chosen [{params}]; reporting seeds "
          f"{settings.report_seeds()}", flush=True)
    jobs = [(run_overrides(settings, stratum, loss, seed, best.params),
             study_dir / "report" / dataset / loss / f"seed{seed}")
            for seed in settings.report_seeds()]
    run_many(settings, jobs)


def run_study(settings: StudySettings) -> Path:
    from omegaconf import OmegaConf

    from lossbench import study_report
    from lossbench.results.files import write_text_atomic

    study_dir = Path(str(settings.dir))
    if not (study_dir / "study.yaml").is_file():
        record = OmegaConf.to_yaml(OmegaConf.structured(settings))
        write_text_atomic(study_dir / "study.yaml", record)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pairs = [(stratum, loss) for stratum in settings.strata() for loss in settings.losses]
    for index, (stratum, loss) in enumerate(pairs):
        tune_loss(settings, study_dir, stratum, loss, index)
    for stratum, loss in pairs:
        report_runs(settings, study_dir, stratum, loss)
    return study_report.write_report(settings, study_dir)


USAGE = """\
usage: lossbench study [key=value ...] [train overrides ...]

Every loss at its own best settings, with the same budget: per dataset and loss, `trials` Optuna
trials over lossbench/config/search_spaces/shared.yaml and <loss>.yaml, chosen on seeds 0..seeds.tune-1
(validation), the winners rerun on seeds.report fresh seeds, and only those compared.

study keys (defaults):
  losses=ce,gce,sce,mae  datasets=wine  conditions.<name>="<overrides>"  trials=20
  seeds.tune=2  seeds.report=5
  seeds.report_from=1000  sampler=tpe (tpe|random|grid)  sampler_seed=0  metric=accuracy
  alpha=0.05  bootstrap=2000  launcher=local (local|submitit)  timeout_min=60  partition=
  dir=outputs/studies/<date>/<time>   (an existing study's dir resumes it)
any other key=value goes to every run, as `lossbench train` takes it (model=linear,
trainer.epochs=60, dataset.noise.kind=symmetric ...).

example:
  lossbench study losses=ce,gce datasets=wine,iris trials=4 seeds.tune=1 seeds.report=3 \\
      model=linear trainer.epochs=30 trainer.plots=false print_config=false
"""


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
        # every run's config, checked before anything is written
        check_grid_budget(settings)
        for _, data_overrides in settings.strata():
            for loss in settings.losses:
                search_space(loss)
                checked_config([f"loss={loss}", *settings.train, *data_overrides])
    try:
        report = run_study(settings)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM: the trial in progress stays RUNNING
        print(f"study: stopped; lossbench study dir={settings.dir} resumes it", file=sys.stderr)
        raise SystemExit(getattr(err, "exit_code", 130)) from None
    print(f"study: report {report}", flush=True)
    return 0

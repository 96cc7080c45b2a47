"""`lossbench study`'s settings: its command line (StudySettings, parse_args, resuming a
study with the settings it was started with), its search spaces (lossbench/config/search_spaces/:
what each loss's trials may try) and where its trials are recorded (optuna.db, read by the study
and its report alike). Running the trials is lossbench.experiment.study's."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
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
    # a folder of the user's own search spaces (<loss>.yaml, shared.yaml), read before the
    # shipped ones (lossbench/config/search_spaces/)
    search_spaces: str | None = None
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
    if settings.search_spaces is not None:  # recorded absolute: a study resumes from anywhere
        settings.search_spaces = str(Path(settings.search_spaces).resolve())
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
    if s.search_spaces is not None and not Path(s.search_spaces).is_dir():
        raise UserError(f"study: search_spaces={s.search_spaces}: no such folder")
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


def search_space(loss: str, folder: str | Path | None = None) -> list[Param]:
    """shared.yaml then <loss>.yaml, each from the user's `folder` (search_spaces=DIR) when it
    holds one, else from the shipped search_spaces/: what a study tunes for `loss`."""
    from omegaconf import OmegaConf

    folders = [Path(folder), SEARCH_DIR] if folder else [SEARCH_DIR]

    def source(name: str) -> Path | None:
        return next((f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()), None)

    path = source(loss)
    if path is None:
        raise UserError(unknown_loss(loss) or (
            f"study: no search space for loss {loss}: put {loss}.yaml in a folder of your own "
            f"and pass search_spaces=<that folder> ({{}} in it tunes shared.yaml alone)"))
    params = []
    for source_path in (source("shared"), path):
        for key, spec in (OmegaConf.to_container(OmegaConf.load(source_path)) or {}).items():
            try:
                param = Param(key=key, **spec)
                param.grid = [float(v) for v in param.grid]
            except TypeError as err:
                raise UserError(f"{source_path}: {key}: {err}") from None
            if not param.low < param.high or (param.log and param.low <= 0):
                raise UserError(f"{source_path}: {key}: needs low < high (and low > 0 with log)")
            params.append(param)
    return params


def unknown_loss(loss: str) -> str | None:
    """"... no such loss (did you mean gce?)" when `loss` (gcee) is no option of conf/loss, else
    None."""
    import difflib

    from lossbench.config.catalogue import group_options

    known = list(group_options("loss"))
    if loss in known:
        return None
    close = difflib.get_close_matches(loss, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"study: no search space for loss {loss}: no such loss{hint}; "
            "`lossbench list losses` names them")


def make_sampler(settings: StudySettings, space: list[Param], index: int, number: int):
    """The sampler that draws trial `number` of the `index`-th (stratum, loss): seeded from the
    study's sampler seed, the index and the trial number, so that a resumed study draws each
    trial as an uninterrupted one would (a sampler seeded once and rebuilt on resuming would
    start its stream again and repeat the first trials). The history it learns from is the
    study's storage, the same either way."""
    import numpy as np
    import optuna

    seed = int(np.random.SeedSequence([settings.sampler_seed, index, number]).generate_state(1)[0])
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
        raise UserError(f"study: sampler=grid needs a grid for {', '.join(missing)} in its "
                        "search space (search_spaces=<folder> for your own)")
    points = [dict(zip([p.key for p in space], values))
              for values in itertools.product(*(p.grid for p in space))]
    random.Random(settings.sampler_seed + index).shuffle(points)
    return points


def check_grid_budget(settings: StudySettings) -> None:
    """Equal budgets under sampler=grid: no loss may run out of grid points before `trials`."""
    if settings.sampler != "grid":
        return
    sizes = {loss: len(grid_points(settings, search_space(loss, settings.search_spaces), 0))
             for loss in settings.losses}
    if min(sizes.values()) < settings.trials:
        shown = ", ".join(f"{loss} {n}" for loss, n in sizes.items())
        raise UserError(f"study: sampler=grid with trials={settings.trials}, but some grids have "
                        f"fewer points ({shown}); set trials={min(sizes.values())} at most, or "
                        "add grid values in search spaces of your own (search_spaces=<folder>)")


# --------------------------------------------------------------------------------------------
# the trials a study has recorded (optuna.db in its dir)


def storage_url(study_dir: Path) -> str:
    return f"sqlite:///{(study_dir / 'optuna.db').resolve()}"


def load_trials(study_dir: Path, dataset: str, loss: str) -> list[Any]:
    import optuna

    study = optuna.load_study(study_name=f"{dataset}/{loss}", storage=storage_url(study_dir))
    return study.get_trials(deepcopy=False)


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
  search_spaces=DIR   (your own <loss>.yaml and shared.yaml, read before the shipped ones)
any other key=value goes to every run, as `lossbench train` takes it (model=linear,
trainer.epochs=60, dataset.noise.kind=symmetric ...).

example:
  lossbench study losses=ce,gce datasets=wine,iris trials=4 seeds.tune=1 seeds.report=3 \\
      model=linear trainer.epochs=30 trainer.plots=false print_config=false
"""

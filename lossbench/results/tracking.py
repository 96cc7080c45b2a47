"""Experiment trackers: the `logger` config group (`none`, `tensorboard`, `mlflow`, `wandb`).

A tracker mirrors what the run directory already holds into a tool people browse runs with; the
run directory's own files are written whatever the logger. The run calls, in order:

    tracker = build_tracker(cfg.logger)          # before any file is written: a missing package
                                                  # is a UserError with the command to install it
    tracker.start(run_dir, config, choices)       # config: the resolved config as a nested dict
    tracker.log_epoch(row)                        # once per epoch: history.csv's row
    tracker.finish(run_dir, metrics)              # metrics.json's dict; logs files as artifacts
    tracker.fail(interrupted)                     # instead of finish when the run raised

The heavy packages (tensorboard, mlflow, wandb) are imported only by the tracker that uses them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
from lossbench.config.hydra_context import hydra_config, in_sweep
from lossbench.results import record

# Files of a run directory mirrored as artifacts (model.pt only when asked: it can be large).
ARTIFACT_PATTERNS = (record.REPORT, record.METRICS, record.HISTORY, "*.png", ".hydra/*.yaml")


# {'trainer': {'epochs': 5}} -> {'trainer.epochs': 5}; lists stay whole values: a tracker logs
# a list as one parameter
flatten = functools.partial(record.flatten, lists="keep")


def scalar_items(row: Mapping[str, Any]) -> Iterator[tuple[str, float]]:
    """The numeric entries of a row or metrics dict (bools and nested values left out)."""
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            yield key, float(value)


def final_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """What a tracker records at the end: test metrics as `test_<name>` plus the run's summary."""
    values = {f"test_{k}": v for k, v in scalar_items(metrics.get("test", {}))}
    for key in ("best_val", "best_epoch", "epochs_run", "wall_time_s"):
        if isinstance(metrics.get(key), (int, float)):
            values[key] = float(metrics[key])
    return values


def run_files(run_dir: Path, include_model: bool = False) -> list[Path]:
    patterns = ARTIFACT_PATTERNS + ((record.MODEL,) if include_model else ())
    return sorted({p for pattern in patterns for p in run_dir.glob(pattern) if p.is_file()})


def sweep_context() -> dict[str, str]:
    """Where this job sits in a Hydra sweep ({} for a single run or outside Hydra)."""
    if not in_sweep():
        return {}
    hydra_cfg = hydra_config()
    varying = swept_keys(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    job_overrides = list(hydra_cfg.overrides.task)
    picked = [o for o in job_overrides if o.split("=", 1)[0].lstrip("+~") in varying]
    return {"sweep_dir": str(hydra_cfg.sweep.dir), "job_num": str(hydra_cfg.job.num),
            "overrides": ",".join(picked or job_overrides)}


def swept_keys(multirun_yaml: Path) -> set[str]:
    """The keys a sweep varies (`seed=0,1`, `loss=ce,gce`, `lr=interval(...)`), read from the
    sweep's own record of its command line; empty when it cannot be read."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        task = OmegaConf.load(multirun_yaml).hydra.overrides.task
        parsed = OverridesParser.create().parse_overrides(list(task))
    except Exception:  # no record (another launcher layout): name the run by all its overrides
        return set()
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def run_label(choices: Mapping[str, str], context: Mapping[str, str]) -> str:
    """A readable run name: what the sweep varies for a sweep job (`loss=gce,seed=1`), else
    loss and dataset."""
    if context.get("overrides"):
        return context["overrides"]
    return f"loss={choices.get('loss', '?')} dataset={choices.get('dataset', '?')}"


# Trackers started in this process and not yet finished: a run that raises marks them failed
# (see `fail_open_runs`), so a crashed job does not stay "running" in the tracker forever.
_open: list[NoTracker] = []


def fail_open_runs(error: BaseException | None = None) -> None:
    """Close the trackers of a run that raised `error`: an interrupted run (Ctrl-C, SIGTERM) is
    marked killed, any other failed."""
    interrupted = isinstance(error, KeyboardInterrupt)
    while _open:
        _open.pop().fail(interrupted)


class NoTracker:
    """Nothing beyond the run directory's own files (`logger=none`)."""

    def start(self, run_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str]) -> None:
        pass

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        pass

    def finish(self, run_dir: Path, metrics: Mapping[str, Any]) -> None:
        pass

    def fail(self, interrupted: bool = False) -> None:
        pass


class TensorBoardTracker(NoTracker):
    """TensorBoard event files in `<run dir>/tensorboard` (`logger=tensorboard`); `tensorboard
    --logdir outputs` shows every run. Scalars `epoch/<metric>` per epoch, `test/<metric>` at the
    end, the config as text, the plots as images, and the run's choices (loss, dataset, ...) and
    seed against its test metrics in the HParams tab, which sets losses side by side."""

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30):
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        except ImportError:
            raise UserError("logger=tensorboard needs the tensorboard package: "
                            "pip install 'lossbench[tensorboard]'") from None
        self._writer_class = SummaryWriter
        self.subdir = subdir
        self.flush_secs = flush_secs
        self.writer = None
        self.hparams: dict[str, Any] = {}

    def start(self, run_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str]) -> None:
        import yaml

        self.writer = self._writer_class(log_dir=str(Path(run_dir) / self.subdir),
                                         flush_secs=self.flush_secs)
        _open.append(self)
        # four leading spaces make TensorBoard's markdown show the YAML as a code block
        text = yaml.safe_dump(dict(config), sort_keys=False)
        self.hparams = {**dict(choices), "seed": config.get("seed", 0)}
        self.writer.add_text("config", "\n".join("    " + line for line in text.splitlines()))

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        epoch = int(row["epoch"])
        for key, value in scalar_items(row):
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, epoch)

    def finish(self, run_dir: Path, metrics: Mapping[str, Any]) -> None:
        step = int(metrics.get("epochs_run") or 0)
        for key, value in final_scalars(metrics).items():
            name = f"test/{key[5:]}" if key.startswith("test_") else f"summary/{key}"
            self.writer.add_scalar(name, value, step)
        # run_name="." keeps the HParams record in this run's own folder
        self.writer.add_hparams(self.hparams, {f"hparams/{k}": v for k, v in
                                               final_scalars(metrics).items()}, run_name=".")
        for png in sorted(Path(run_dir).glob("*.png")):
            from matplotlib.image import imread

            self.writer.add_image(f"plots/{png.stem}", imread(png)[..., :3], step,
                                  dataformats="HWC")
        self.writer.close()
        _open.remove(self)

    def fail(self, interrupted: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowTracker(NoTracker):
    """One MLflow run per job (`logger=mlflow`), in a SQLite store under outputs/ by default;
    `logger.tracking_uri` takes any tracking URI (a server, a database).

    Params: the flattened resolved config; metrics: every epoch's row (step = epoch), then the
    test metrics as `test_<name>`; artifacts: report.txt, metrics.json, history.csv, the plots and
    the Hydra config. Single runs go to the experiment `lossbench`; each sweep gets its own
    experiment, named after its sweep directory, unless `logger.experiment` names one.
    """

    def __init__(self, tracking_uri: str = "sqlite:///outputs/mlflow.db",
                 artifact_location: str | None = "outputs/mlartifacts",
                 experiment: str | None = None, log_model: bool = False):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("logger=mlflow needs the mlflow package: "
                            "pip install 'lossbench[mlflow]'") from None
        self._client_class = MlflowClient
        self.tracking_uri = self._absolute_uri(tracking_uri)
        self.artifact_location = (Path(artifact_location).resolve().as_uri()
                                  if artifact_location and "://" not in artifact_location
                                  else artifact_location)
        self.experiment = experiment
        self.log_model = log_model
        self.client = None
        self.run_id: str | None = None

    @staticmethod
    def _absolute_uri(uri: str) -> str:
        """Relative SQLite paths are made absolute against the working directory, so jobs of a
        sweep (and a later `mlflow ui --backend-store-uri ...`) all see the same store."""
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + str(Path(uri[len(prefix):]).resolve())
        return uri

    @contextlib.contextmanager
    def _store_lock(self) -> Iterator[None]:
        """Parallel jobs of a sweep (hydra/launcher=parallel) opening a new SQLite store at once
        would each run its schema migrations and trip over one another: one at a time, here."""
        prefix = "sqlite:///"
        if not self.tracking_uri.startswith(prefix):
            yield
            return
        database = Path(self.tracking_uri[len(prefix):])
        database.parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not its folder
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, parallel first runs may need a retry
            yield
            return
        with open(f"{database}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _experiment_id(self, context: Mapping[str, str]) -> str:
        name = self.experiment or (f"lossbench sweep {context['sweep_dir']}" if context
                                   else "lossbench")
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except Exception:  # a parallel job of the same sweep created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def start(self, run_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        # MLflow's store announces its database migrations at INFO: not the user's business
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        context = sweep_context()
        tags = {"run_dir": str(Path(run_dir).resolve()), **context,
                **{f"choice.{k}": v for k, v in choices.items()}}
        with self._store_lock():
            self.client = self._client_class(tracking_uri=self.tracking_uri)
            experiment_id = self._experiment_id(context)
        run = self.client.create_run(experiment_id, run_name=run_label(choices, context),
                                     tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        _open.append(self)
        params = [Param(key[:250], str(value)[:6000]) for key, value in flatten(config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("lossbench.status", "running")])

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        self._log_metrics({k: v for k, v in scalar_items(row) if k != "epoch"}, int(row["epoch"]))

    def finish(self, run_dir: Path, metrics: Mapping[str, Any]) -> None:
        run_dir = Path(run_dir)
        self._log_metrics(final_scalars(metrics), int(metrics.get("epochs_run") or 0))
        for path in run_files(run_dir, self.log_model):
            folder = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path),
                                     artifact_path=None if folder == "." else folder)
        self.client.set_tag(self.run_id, "lossbench.status", str(metrics.get("status", "")))
        self.client.set_terminated(self.run_id, "FINISHED")
        _open.remove(self)

    def fail(self, interrupted: bool = False) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "KILLED" if interrupted else "FAILED")


def wandb_logged_in() -> bool:
    """Whether Weights & Biases has a login to use: an API key in the environment or in the
    netrc file `wandb login` writes. Without one, runs are kept offline (never a prompt)."""
    import netrc
    import os

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(NoTracker):
    """One Weights & Biases run per job (`logger=wandb`; needs `pip install 'lossbench[wandb]'`).

    The resolved config is the run's config; every epoch's row is logged at step = epoch; the
    test metrics and the run's summary (`test_<name>`, best_epoch, ...) are the run's summary;
    report.txt, history.csv and the plots are saved as run files (model.pt too with
    `logger.log_model=true`). The jobs of a sweep share one group, named after
    the sweep directory. `mode: null` (the default) is online when a login is configured
    (`wandb login` or WANDB_API_KEY) and offline otherwise; WANDB_MODE, when set, decides. Offline
    runs are written under `<run dir>/wandb/` and can be uploaded later with `wandb sync`.
    """

    def __init__(self, project: str = "lossbench", entity: str | None = None,
                 mode: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, log_model: bool = False):
        try:
            import wandb
        except ImportError:
            raise UserError("logger=wandb needs the wandb package: "
                            "pip install 'lossbench[wandb]'") from None
        if mode not in (None, "online", "offline", "disabled"):
            raise UserError(f"logger.mode={mode} is not a W&B mode; choose online, offline, "
                            "disabled or null (online when logged in, else offline)")
        self._wandb = wandb
        self.project, self.entity, self.group = project, entity, group
        self.tags = list(tags or [])
        self.mode = mode
        self.log_model = log_model
        self.run = None

    def resolved_mode(self) -> str:
        import os

        if self.mode is not None:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if wandb_logged_in() else "offline"

    def start(self, run_dir: Path, config: Mapping[str, Any], choices: Mapping[str, str]) -> None:
        import os

        os.environ.setdefault("WANDB_SILENT", "true")  # lossbench's console is its own
        context = sweep_context()
        group = self.group or (f"sweep {context['sweep_dir']}" if context else None)
        settings = self._wandb.Settings(console="off", quiet=True, x_disable_stats=True,
                                        disable_git=True, save_code=False)
        self.run = self._wandb.init(
            project=self.project, entity=self.entity, dir=str(run_dir), mode=self.resolved_mode(),
            config=dict(config), group=group, name=run_label(choices, context),
            tags=self.tags + [f"{k}={v}" for k, v in choices.items()][:60],
            job_type="sweep-job" if context else "run", reinit="create_new", settings=settings)
        _open.append(self)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        values = {k: v for k, v in scalar_items(row) if k != "epoch"}
        self.run.log(values, step=int(row["epoch"]))

    def finish(self, run_dir: Path, metrics: Mapping[str, Any]) -> None:
        run_dir = Path(run_dir)
        self.run.summary.update({**final_scalars(metrics),
                                 "status": str(metrics.get("status", ""))})
        for path in run_files(run_dir, self.log_model):
            # offline, wandb keeps copies under <run dir>/wandb/: a second metrics.json or
            # .hydra/ there would count as another run for `compare` and the sweep summary
            # (the config and the summary carry their contents anyway)
            if path.name != record.METRICS and ".hydra" not in path.relative_to(run_dir).parts:
                self.run.save(str(path), base_path=str(run_dir), policy="now")
        self.run.finish()
        _open.remove(self)

    def fail(self, interrupted: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=130 if interrupted else 1)


def build_tracker(logger_cfg: Any) -> NoTracker:
    """The tracker a `logger` config asks for (`_target_: null` or no config: none)."""
    if logger_cfg is None or not logger_cfg.get("_target_"):
        return NoTracker()
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(logger_cfg)
    except InstantiationException as err:  # Hydra wraps the tracker's own "install me" error
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise

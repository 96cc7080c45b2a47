"""The workflow of one process's run, top to bottom: `run_process`.

prepare (seeds, device, data, budget) → build (loss, model, optimizer, scheduler) → announce →
fit (epochs of train/validate, checkpoints) → test the selected and the last weights → report →
record. Each step is a function below; the process plumbing around it is in `launch.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from lossbench.console import counted, shown_path
from lossbench.data import Splits
from lossbench.data.noise import describe_corruption
from lossbench.engine import distributed
from lossbench.engine.checkpoint import CHECKPOINT, check_same_data, save_checkpoint
from lossbench.engine.signals import StopOnSignal
from lossbench.engine.loop import FitResult, Settings, fit
from lossbench.engine.precision import autocast, autocast_dtype, training_model
from lossbench.engine.selection import (describe_selection, planned_epochs, resolve_monitor,
                                        selection_rule, steps_per_epoch)
from lossbench.engine.optim import optimizer_kernel
from lossbench.engine.predict import SCORE_SOURCES, predict, score_source
from lossbench.engine.progress import EpochProgress
from lossbench.engine.threads import set_threads
from lossbench.experiment.builders import (SMOKE_ENV, Schedule, build_loss_and_model,
                                           build_scheduler, build_training_optimizer,
                                           data_to_device, load_data, loss_name, order_hash,
                                           pick_device, replaced_targets, run_seeds,
                                           scheduler_config, seed_everything, smoke_limits,
                                           state_hash)
from lossbench.config.hydra_context import hydra_config, in_sweep
from lossbench.experiment.outcome import (config_tree, loss_params_line, memorisation_summary,
                                          report_notes, robust_line, run_metrics, stop_early,
                                          test_report, write_plots, write_record)
from lossbench.results import report as rep
from lossbench.results import tracking
from lossbench.results.files import write_text_atomic
from lossbench.results.record import REPORT, resolved_config

log = logging.getLogger("lossbench")


def choices(cfg: DictConfig) -> dict[str, str]:
    """The config-group options this run was composed from (dataset=..., loss=..., ...); a group
    whose `_target_` the command line replaced is named by that class (`loss._target_=
    my_pkg.MyLoss` runs MyLoss, not the option's loss)."""
    runtime = hydra_config()
    if runtime is not None:
        picked = {k: v for k, v in runtime.runtime.choices.items()
                  if not k.startswith("hydra") and v is not None}
        for group in replaced_targets() & set(picked):
            if target := (cfg.get(group) or {}).get("_target_"):
                picked[group] = str(target).rsplit(".", 1)[-1]
        return picked
    names = {}  # called without Hydra (tests, notebooks): the classes' names
    for group in ("dataset", "model", "loss", "optimizer", "scheduler"):
        target = (cfg.get(group) or {}).get("_target_") or "none"
        names[group] = str(target).rsplit(".", 1)[-1]
    return names


def shows_config(cfg: DictConfig) -> bool:
    """`print_config`: every single run prints its config; a sweep's jobs do not (their
    console is one line each, and each job's config is in its .hydra/config.yaml)."""
    return bool(cfg.get("print_config", True)) and not in_sweep()


@dataclass
class Run:
    """What every step of one process's run reads: its config, where it writes, and what
    `prepare` decided (device, data, selection rule, budget)."""

    cfg: DictConfig
    run_dir: Path
    console: Console
    started: float  # perf_counter() when this process began the run
    resume: dict[str, Any] | None
    picked: dict[str, str]
    device: torch.device
    splits: Splits
    trainer: Settings  # `cfg.trainer` with `epochs: auto` resolved
    monitor: str
    mode: str
    selection: dict[str, Any]
    per_epoch: int  # optimizer steps per epoch
    train_seed: int
    precision: torch.dtype | None  # autocast's dtype; None: float32 throughout
    pairing: dict[str, Any] = field(default_factory=dict)  # what makes runs paired
    share: float = 1.0  # of the time since `started` that is this run's (1/R in a stack)

    @property
    def is_main(self) -> bool:
        return distributed.current().is_main

    def wall_time(self) -> float:
        """Seconds this run has trained, over every resumption; a replica of a stack of R
        counts 1/R of the stack's time."""
        before = self.resume["elapsed_s"] if self.resume is not None else 0.0
        return before + (time.perf_counter() - self.started) * self.share


@dataclass
class Parts:
    """What `build` made for the run."""

    loss_fn: torch.nn.Module
    model: torch.nn.Module
    head: str
    num_outputs: int
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    threads: Any  # what `set_threads` chose, for the log


def run_process(cfg: DictConfig, run_dir: Path, console: Console, started: float,
                resume: dict[str, Any] | None = None, stop: StopOnSignal | None = None) -> float:
    """This process's share of the run (the whole run in a single process); returns the best
    value of the monitored validation metric. `stop`: how signals stop the run, its phase moved
    on here (`engine.signals`); the caller sees `stop.requested` of a run that completed."""
    stop = stop if stop is not None else StopOnSignal(announce=distributed.current().is_main,
                                                      phase="start-up")
    run = prepare(cfg, run_dir, console, started, resume)
    parts = build(run)
    # a tracker whose package is missing is the user's to install: checked before any file
    tracker = (tracking.build_tracker(cfg.get("logger")) if run.is_main
               else tracking.NoTracker())
    # Everything the user could have got wrong has been checked: from here on, files are written.
    announce(run, parts, tracker)
    result = train(run, parts, tracker, stop)
    tested = test_weights(run, parts, result)
    if not run.is_main:
        return float(result.best_value)
    metrics = report(run, parts, result, tested)
    write_record(run.run_dir, result.history, metrics, parts.model, parts.loss_fn)
    # a completed run is not resumed: model.pt keeps its best weights, the checkpoint (optimizer
    # moments, a second copy of the weights) would only take disk space in every run of a sweep
    (run.run_dir / CHECKPOINT).unlink(missing_ok=True)
    tracker.finish(run.run_dir, metrics)
    console.print(f"run directory: {shown_path(run.run_dir)}", highlight=False)
    log.info("completed: %s", {k: v for k, v in metrics["test"].items() if isinstance(v, float)})
    return float(result.best_value)


def prepare(cfg: DictConfig, run_dir: Path, console: Console, started: float,
            resume: dict[str, Any] | None) -> Run:
    """Seeds, the device, the data on it (split, corrupted on purpose if asked, scaled with
    training statistics only), the selection rule and the budget in epochs."""
    trainer = cfg.trainer
    picked = resume["choices"] if resume is not None else choices(cfg)
    data_seed, train_seed = run_seeds(cfg)
    # the global generators serve initial weights and dropout: the training side of the seeds
    seed_everything(train_seed, trainer.deterministic)
    dist = distributed.current()
    device = distributed.rank_device(pick_device(trainer.device), dist.local_rank,
                                     dist.world_size)
    precision = autocast_dtype(trainer.get("precision", 32))
    splits = load_data(cfg)
    if resume is not None:  # the same data as the checkpoint's, or a result of two datasets
        check_same_data(resume, splits.data_hash, run_dir)
    monitor, mode = resolve_monitor(splits.task, trainer.monitor, trainer.mode, len(splits.val))
    selection = selection_rule(splits.task, trainer, splits.val.y_clean is not None,
                               len(splits.val))
    per_epoch = steps_per_epoch(len(splits.train), trainer.batch_size, dist.world_size,
                                trainer.get("max_batches"))
    budget = {"epochs": planned_epochs(trainer.epochs, selection["min_steps"], per_epoch)}
    budget.update(smoke_limits(budget["epochs"], trainer.get("max_batches")))
    if "max_batches" in budget:
        console.print(f"{SMOKE_ENV}: at most {budget['epochs']} epochs of "
                      f"{budget['max_batches']} batches (a smoke test, not a result)")
        per_epoch = min(per_epoch, budget["max_batches"])
    data_to_device(splits, device, trainer.get("num_workers", "auto"))
    # the loop reads its settings from a plain dict, with `epochs: auto` resolved
    return Run(cfg, run_dir, console, started, resume, picked, device, splits,
               Settings({**Settings.of(trainer), **budget}), monitor, mode, selection,
               per_epoch, train_seed, precision, pairing={"data_seed": data_seed, "train_seed": train_seed})


def build(run: Run) -> Parts:
    """The loss, the model sized for it, the optimizer over both and the scheduler; restored
    from the checkpoint when the run resumes (fit restores the loop and the RNGs)."""
    cfg, trainer = run.cfg, run.trainer
    loss_fn, model, head, num_outputs = build_loss_and_model(
        cfg, run.splits, run.device, loss_name(cfg, run.picked.get("loss", "?")))
    run.pairing["init_hash"] = state_hash(model.state_dict())
    threads = set_threads(trainer.get("threads", "auto"), model, run.splits.sample_shape,
                          trainer.batch_size, run.device)
    optimizer = build_training_optimizer(cfg, model, loss_fn)
    schedule = build_scheduler(scheduler_config(cfg, trainer.epochs), optimizer,
                               run.per_epoch * trainer.epochs)
    if run.resume is not None:
        model.load_state_dict(run.resume["model"])
        loss_fn.load_state_dict(run.resume["loss"])
        optimizer.load_state_dict(run.resume["optimizer"])
        if schedule.scheduler is not None:
            schedule.scheduler.load_state_dict(run.resume["scheduler"])
    return Parts(loss_fn, model, head, num_outputs, optimizer, schedule, threads)


def announce(run: Run, parts: Parts, tracker: Any) -> None:
    """The config tree, the run's header lines and the log's; the tracker's run starts. The
    config tree comes only now, so that a user error is all the console shows."""
    cfg, console, splits = run.cfg, run.console, run.splits
    if shows_config(cfg):
        console.print(config_tree(cfg, run.picked), highlight=False)
    log.info("run directory %s, device %s, torch threads %d, choices %s", run.run_dir,
             run.device, torch.get_num_threads(), run.picked)
    log.info("torch threads: %s", parts.threads)
    log.info("optimizer %s, %s", type(parts.optimizer).__name__,
             optimizer_kernel(parts.optimizer))
    tracker.start(run.run_dir, OmegaConf.to_container(cfg, resolve=True), run.picked)
    corruption = describe_corruption(splits.info)  # noise, imbalance: '' for clean data
    # how it trains, where that is not the default: N processes, mixed precision
    devices = int(run.trainer.get("devices", 1) or 1)
    precision = str(run.trainer.get("precision", 32))
    how = (f" devices={devices}" if devices > 1 else "") + (
        f" precision={precision}" if precision != "32" else "")
    console.print(f"[bold]lossbench[/] loss={run.picked.get('loss')} dataset={splits.name} "
                  f"({splits.task}, {len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
                  f"train/val/test) model={run.picked.get('model')} device={run.device}{how}"
                  f"{', ' + corruption if corruption else ''}", highlight=False)
    run.selection["noise_injected"] = splits.val.y_clean is not None
    keep = run.trainer.get("keep", "best")
    console.print(f"{describe_selection(run.selection, keep)}; budget "
                  f"{counted(run.trainer.epochs, 'epoch')} × {counted(run.per_epoch, 'step')}",
                  highlight=False)


def training_generator(run: Run) -> torch.Generator:
    """The generator of the run's batch order, seeded with its training seed; the order's hash
    (a pairing check) is drawn from it first, as every run does before it trains."""
    device = run.device
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(run.train_seed)
    run.pairing["order_hash"] = order_hash(generator, len(run.splits.train))
    return generator


def checkpoint_writer(run: Run, parts: Parts, stop: StopOnSignal,
                      extra: dict[str, Any] | None = None) -> Callable[..., None]:
    """What writes the run's checkpoint.pt for the loop (`save(loop, states=None)`). `extra`:
    keys the checkpoint carries besides (a stacked group's `unlogged_from`)."""
    saved_config = resolved_config(run.cfg)

    def save(loop: dict[str, Any], states: dict[str, Any] | None = None) -> None:
        if run.is_main:  # flushed to the disk when it is the last one (Ctrl-C, SIGTERM)
            save_checkpoint(run.run_dir / CHECKPOINT, model=parts.model, loss_fn=parts.loss_fn,
                            optimizer=parts.optimizer, scheduler=parts.schedule.scheduler,
                            loop=loop, config=saved_config, choices=run.picked,
                            elapsed_s=run.wall_time(),
                            sync=stop.requested is not None or states is not None,
                            states=states, data_hash=run.splits.data_hash, extra=extra)

    return save


def unlogged_epochs(run: Run) -> list[dict[str, Any]]:
    """The history rows of a resumed run that no log or tracker has seen: those a stacked group
    trained (`experiment.stacked_sweep`), which logs nothing itself. The run logs them before
    it goes on, so its train.log and tracker hold every epoch as a separate run's do."""
    if run.resume is None or run.resume.get("unlogged_from") is None:
        return []
    return list(run.resume["loop"]["history"][int(run.resume["unlogged_from"]):])


def train(run: Run, parts: Parts, tracker: Any, stop: StopOnSignal) -> FitResult:
    """Epochs of train/validate keeping the best weights; checkpoint.pt lets a stopped run go
    on. A run that diverged or was interrupted is recorded and raises (`stop_early`). From here
    a stop signal lets the step end and writes a checkpoint; once training is over it lets the
    run write its results first."""
    device, trainer = run.device, run.trainer
    generator = training_generator(run)
    save = checkpoint_writer(run, parts, stop)
    for row in unlogged_epochs(run):
        log.info("epoch %s", row)
        tracker.log_epoch(row)
    stop.phase = "training"
    with stop, EpochProgress(run.console, trainer.epochs, run.monitor,
                             enabled=run.is_main) as progress:  # no hidden bars on other ranks
        result = fit(training_model(parts.model, device, trainer.get("compile", False)),
                     parts.loss_fn, parts.optimizer, parts.schedule.scheduler, run.splits,
                     parts.head, trainer, device, generator, progress,
                     on_epoch=lambda row: (log.info("epoch %s", row), tracker.log_epoch(row)),
                     resume=run.resume["loop"] if run.resume is not None else None, save=save,
                     stop=stop)
        stop.phase = "finishing"
    if result.status != "completed":
        stop_early(result, run.run_dir, stop.requested, run.cfg, run.picked, run.splits.name,
                   run.splits.task, run.monitor, run.mode, run.wall_time(),
                   run.cfg.optimizer.get("lr"), run.is_main, run.pairing)
    return result


def test_titles(run: Run, result: FitResult) -> dict[str, str]:
    """The test report's title for the selected (`best`) and the `last` weights."""
    name = f"loss={run.picked.get('loss')} dataset={run.splits.name}"
    sel = f"{run.selection['column']}={result.best_value:.4f}"
    titles = {"best": (f"Test split: {name}, selected epoch {result.best_epoch} ({sel}, "
                       f"chosen on validation, not on test)"),
              "last": (f"Test split: {name}, last epoch {result.epochs_run} of "
                       f"{run.trainer.epochs} planned")}
    corruption = describe_corruption(run.splits.info)
    if corruption:
        titles = {at: f"{title}; {corruption}" for at, title in titles.items()}
    return titles


def test_weights(run: Run, parts: Parts, result: FitResult
                 ) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Test the selected weights and the last ones: {"best"/"last": (predictions, metrics)}
    on rank 0, {} elsewhere. `trainer.keep` picks the headline (printed; the other is only
    recorded) and the weights the model holds afterwards, those model.pt gets. Every rank
    predicts both (its share of the gathers), in the same order."""
    model, loss_fn, trainer = parts.model, parts.loss_fn, run.trainer
    amp = autocast(run.device, run.precision)
    keep, titles, quiet = trainer.get("keep", "best"), test_titles(run, result), Console(quiet=True)
    best_state = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                  {k: v.detach().clone() for k, v in loss_fn.state_dict().items()})
    tested: dict[str, tuple[Any, dict[str, Any]]] = {}
    for at in ("best", "last"):
        if at == "last":
            if result.epochs_run == result.best_epoch:  # the same weights: the same predictions
                if run.is_main:
                    tested["last"] = tested["best"]
                continue
            model.load_state_dict(result.last_state)
            loss_fn.load_state_dict(result.last_loss_state)
        if not run.is_main:
            with amp:
                predict(model, run.splits, "test", parts.head, trainer.eval_batch_size,
                        run.device, loss_fn, trainer.get("max_batches"))
            continue
        tested[at] = test_report(model, loss_fn, run.splits, parts.head, trainer, run.device,
                                 amp, run.console if at == keep else quiet, titles[at])
    if keep == "best":
        model.load_state_dict(best_state[0])
        loss_fn.load_state_dict(best_state[1])
    return tested


def report(run: Run, parts: Parts, result: FitResult,
           tested: dict[str, tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
    """The lines under the test tables (console and report.txt), the plots; returns the run's
    metrics for metrics.json."""
    splits, console, keep = run.splits, run.console, run.trainer.get("keep", "best")
    pred, test = tested[keep]
    test_at = {at: {k: v for k, v in metrics.items() if k != "classification_report_text"}
               for at, (_, metrics) in tested.items()}
    memorised = memorisation_summary(splits, result)
    notes, warnings = report_notes(splits, result, tested, test_at, keep, run.selection,
                                   memorised)
    if splits.task != "regression":  # what nll, brier and ece measure the calibration of
        source = score_source(parts.loss_fn, parts.head, parts.num_outputs)
        notes.insert(0, f"class probabilities: {SCORE_SOURCES[source]}")
    for line in notes:
        style = "[yellow]" if line.startswith("warning:") else ""
        console.print(f"{style}{line}", highlight=False, soft_wrap=True)
    # the lines the console shows besides the tables go to report.txt too (a sweep's console
    # shows one line per job: report.txt is where its job's report is read)
    params_line = loss_params_line(parts.loss_fn)
    details = [robust_line(parts.loss_fn, test)] if "robust_accuracy" in test else []
    details += [params_line] if params_line else []
    write_text_atomic(run.run_dir / REPORT,
                      rep.report_text(splits.task, test, "test", test_titles(run, result)[keep],
                                      [*details, *notes]))
    if run.trainer.get("plots", True):
        corruption = describe_corruption(splits.info)
        write_plots(run.run_dir, console, task=splits.task,
                    label=f"loss={run.picked.get('loss')} dataset={splits.name}"
                          f"{', ' + corruption if corruption else ''}",
                    history=result.history, monitor=run.selection["column"],
                    best_epoch=result.best_epoch, y_true=pred.y_true, y_pred=pred.y_pred,
                    scores=pred.scores, test_metrics=test)
    if params_line:
        console.print(params_line, highlight=False)
    return run_metrics(run, parts, result, test_at, len(pred.y_true), memorised, warnings)

"""`fit` for a stack: R runs trained together as stacked replicas (`engine.replicas`) through
whole trainings, each replica's `FitResult` the one `engine.loop.fit` gives its separate run.

An epoch is one stacked training pass of every replica still training; then each replica is
written back into its own module and torch optimizer, and its own `Course` (engine.course, the
code `fit` runs after its training pass) validates the ordinary module, appends the history
row, calls on_epoch and progress, steps its scheduler, observes its early stopping, keeps its
best weights and writes its checkpoint. A replica whose course ends (stopped early, diverged,
budget spent, interrupted) gets its final result and leaves the stack (`Replicas.keep`); the
others go on. The schedulers are torch's own, stepped on each replica's torch optimizer as
`fit` steps them; the stack then follows its new lr (`StackedOptimizer.follow`).

Randomness: each run hands in `rng`, `capture_rng(generator)` taken where its `fit` would start
(right after building its parts). Its dropout stream is the stack's (`StackedModel.rng`); its
Python, NumPy and torch generators are swapped in around its own bookkeeping and its loss's
epoch hooks, so a replica's checkpoint holds the RNG states its separate run's holds, and
resumes as that separate run (`fit(..., resume=)`).

    runs = [ReplicaRun(model, loss_fn, optimizer, scheduler, splits, head, trainer, generator,
                       capture_rng(generator), save=save, on_epoch=log) for each run]
    results = fit_replicas(runs, device, stop=stop)   # one FitResult per run, in order
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from lossbench.data import Splits
from lossbench.engine import distributed
from lossbench.engine.checkpoint import capture_rng, restore_rng
from lossbench.engine.course import Course, FitResult
from lossbench.engine.loop import Epochs, Settings
from lossbench.engine.loop_state import EpochSoFar
from lossbench.engine.precision import autocast_dtype, unwrap
from lossbench.engine.progress import EpochProgress
from lossbench.engine.replicas import (ReplicaBatches, Replicas, StackedModel, StackError,
                                       StackedOptimizer, random_state)
from lossbench.engine.selection import steps_per_epoch
from lossbench.engine.stacked_eval import stacked_outputs
from lossbench.losses.base import hook

__all__ = ["ReplicaRun", "fit_replicas", "group_refusal"]

# trainer settings that shape the training pass: one value for the whole stack
SHARED_SETTINGS = ("batch_size", "max_batches")


@dataclass
class ReplicaRun:
    """One run of a stack: what `engine.loop.fit` takes for it (the parts `workflow.prepare`
    and `build` made), and `rng`, `capture_rng(generator)` taken right after building them.
    `resume` is a checkpoint's `loop` entry, as for `fit`."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    splits: Splits
    head: str
    trainer: Any
    generator: torch.Generator
    rng: dict[str, Any]
    progress: EpochProgress | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None
    resume: dict[str, Any] | None = None
    save: Callable[..., None] | None = None
    name: str | None = None  # the loss as messages name it (`gce`)


def run_refusal(run: ReplicaRun) -> str | None:
    """Why this run cannot train in a stack exactly as `fit` trains it (None: it can)."""
    trainer = Settings.of(run.trainer)
    if distributed.current().active or int(trainer.get("devices", 1) or 1) > 1:
        return "a stack trains in one process: several processes (trainer.devices > 1) run alone"
    if autocast_dtype(trainer.get("precision", 32)) is not None:
        return f"mixed precision (trainer.precision={trainer.precision}) is not stacked"
    if trainer.get("compile") or unwrap(run.model) is not run.model:
        return "a wrapped model (torch.compile, DistributedDataParallel) is not stacked"
    if run.splits.train.x is None:
        return ("training samples read through a DataLoader (on-disk or augmented data) are "
                "not stacked")
    if run.resume is not None and run.resume["batch"]:
        return ("a checkpoint taken mid-epoch does not resume in a stack: the run resumes "
                "alone")
    if hook(run.loss_fn, "terms") is not None:
        return "a composite loss's parts (its terms) are not recorded per replica in a stack"
    return None


def group_refusal(runs: Sequence[ReplicaRun]) -> str | None:
    """Why these runs cannot train as one stack (None: they can, as far as `fit_replicas`
    is concerned; the engine's own refusals come when the stack is built)."""
    for run in runs:
        if (reason := run_refusal(run)) is not None:
            return reason
    first, x = Settings.of(runs[0].trainer), runs[0].splits.train.x
    for run in runs[1:]:
        trainer = Settings.of(run.trainer)
        for key in SHARED_SETTINGS:
            if trainer.get(key) != first.get(key):
                return f"replicas of one stack share trainer.{key}"
        if run.splits.train.x.shape != x.shape:
            return "replicas of one stack train on as many samples of one shape"
    return None


def shared_samples(runs: Sequence[ReplicaRun]) -> bool:
    """Whether every run trains on the same samples (one data seed): then the stack reads one
    copy of them; otherwise each replica its own (R, N, ...)."""
    x = runs[0].splits.train.x
    return all(r.splits.train.x is x or torch.equal(r.splits.train.x, x) for r in runs[1:])


def dropout_stream(rng: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The state of the generator dropout draws from on `device`, in a `capture_rng` dict."""
    if device.type == "cuda":
        return rng["cuda"][device.index if device.index is not None else
                           torch.cuda.current_device()]
    return rng["torch"]


class Group:
    """The runs of `fit_replicas` with their courses, RNG states and the stack in training."""

    def __init__(self, runs: Sequence[ReplicaRun], device: torch.device) -> None:
        self.runs, self.device = list(runs), device
        self.courses = [course(r, device) for r in self.runs]
        # where each run's training starts: a resumed run at its epoch's start
        self.rng = [r.resume["epoch_rng"] if r.resume is not None else r.rng for r in self.runs]
        self.epoch = [c.state.epoch for c in self.courses]
        self.results: list[FitResult | None] = [None] * len(self.runs)
        self.group: Replicas | None = None

    def stack(self, ids: list[int]) -> Replicas:
        """The stack of runs `ids` (original indices), each from its starting state."""
        runs = [self.runs[j] for j in ids]
        for j in ids:
            self.runs[j].generator.set_state(self.rng[j]["generator"])
        modules = [r.model for r in runs]
        model = StackedModel(modules, [dropout_stream(self.rng[j], self.device) for j in ids])
        optimizer = StackedOptimizer.from_torch(
            [r.optimizer for r in runs], modules, model.params,
            [Settings.of(r.trainer).get("grad_clip") for r in runs])
        trainer = Settings.of(runs[0].trainer)
        shared = shared_samples(runs)
        x = (runs[0].splits.train.x if shared
             else torch.stack([r.splits.train.x for r in runs]))  # (N, ...) or (R, N, ...)
        batches = ReplicaBatches(x, torch.stack([r.splits.train.y for r in runs]),
                                 [r.generator for r in runs], trainer.batch_size,
                                 trainer.get("max_batches"), shared_x=shared)
        group = Replicas(model, [r.loss_fn for r in runs], optimizer, batches,
                         [r.name or type(r.loss_fn).__name__ for r in runs])
        group.ids = list(ids)
        for r in runs:  # the stack takes its steps: torch's schedulers would warn they come first
            r.optimizer._opt_called = True
        return group

    @contextmanager
    def own_rng(self, j: int, position: int | None) -> Iterator[None]:
        """The process's generators set to run j's (its dropout stream from the stack's
        `position`), their advance kept (`fit_replicas` puts the process's own back at the
        end)."""
        generator = self.runs[j].generator
        restore_rng({**self.rng[j], "generator": generator.get_state()}, generator)
        stream = self.group.model.rng if self.group is not None else None
        if position is not None:
            set_stream(stream[position], self.device)
        try:
            yield
        finally:
            if position is not None:
                stream[position] = random_state(self.device)
            self.rng[j] = capture_rng(generator)

    def finish(self, j: int, position: int | None) -> None:
        with self.own_rng(j, position):
            self.results[j] = self.courses[j].finish()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.runs[j].optimizer for j in self.group.ids]

    def on_batch(self, b: int, loss: torch.Tensor) -> None:
        """After each step: per-batch schedulers (one-cycle) stepped, the stack following."""
        for j in self.group.ids:
            run = self.courses[j].run
            if run.per_batch:
                run.scheduler.step()
        self.group.optimizer.follow(self.optimizers())

    def train_epoch(self, stop: Any) -> None:
        """One epoch of every replica in the stack, and each one's bookkeeping after it; the
        next epoch's `begin` ends the bookkeeping of a replica that goes on (nothing of it
        happens in between: this saves swapping its generators in twice)."""
        group, start = self.group, time.perf_counter()
        trainer = Settings.of(self.runs[group.ids[0]].trainer)
        n = steps_per_epoch(group.batches.n, trainer.batch_size, 1,
                            trainer.get("max_batches"))
        for j in group.ids:
            self.courses[j].progress.start_epoch(self.epoch[j], n)
        per_batch = any(self.courses[j].run.per_batch for j in group.ids)
        batch_losses: list[torch.Tensor] = []  # (R,) per step
        sums = group.train_epoch(self.on_batch if per_batch else None, batch_losses)
        modules = [self.runs[j].model for j in group.ids]
        group.model.write_back(modules)  # to validate, keep, test
        # the torch optimizers are read by checkpoints and by whoever takes a run that ends
        saving = any(self.runs[j].save is not None for j in group.ids)
        if saving:
            group.optimizer.write_back(self.optimizers(), modules)
        outputs = stacked_outputs(group.model, group.loss,
                                  [self.courses[j].run for j in group.ids])
        stopping = once(lambda: stop is not None and bool(stop.requested))  # one for all
        total = group.batches.n
        sizes = [min(trainer.batch_size, total - b * trainer.batch_size) for b in range(n)]
        staying = []
        for i, j in enumerate(group.ids):
            so_far = EpochSoFar([losses[i] for losses in batch_losses], list(sizes))
            course = self.courses[j]
            with self.own_rng(j, i):
                going = course.end_epoch(self.epoch[j], start, n, so_far, sums[i], stopping,
                                         outputs[i] if outputs is not None else None)
                if going and self.epoch[j] < course.epochs:
                    staying.append(i)
                    course.begin(self.epoch[j] + 1)
            self.epoch[j] += 1
        if len(staying) < len(group.ids) and not saving:
            group.optimizer.write_back(self.optimizers(), modules)
        for i, j in enumerate(group.ids):
            if i not in staying:
                self.finish(j, i)
        if not staying:
            group.ids = []
            return
        if len(staying) < len(group.ids):
            group.keep(staying)
        group.optimizer.follow(self.optimizers())  # epoch and plateau schedulers stepped


def once(answer: Callable[[], bool]) -> Callable[[], bool]:
    """`answer`, asked the first time only: a stop (Ctrl-C) that comes while the replicas are
    validated is seen by all of them at the same epoch's end (the first asks where its
    separate run would), or by none until the next."""
    given: list[bool] = []

    def ask() -> bool:
        if not given:
            given.append(answer())
        return given[0]

    return ask


def course(run: ReplicaRun, device: torch.device) -> Course:
    """The run's bookkeeping, made as `fit` makes it (no stop of its own: the group's)."""
    progress = run.progress or EpochProgress(Console(quiet=True), 0, "", enabled=False)
    epochs = Epochs(run.model, run.loss_fn, run.optimizer, run.scheduler, run.splits, run.head,
                    Settings.of(run.trainer), device, run.generator, progress, stop=None,
                    keep_rng=False)
    return Course(epochs, progress, run.on_epoch, run.resume, run.save)


def set_stream(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


def fit_replicas(runs: Sequence[ReplicaRun], device: torch.device, stop: Any = None
                 ) -> list[FitResult]:
    """Train the runs together as stacked replicas, each to the end `fit` would take it to:
    one `FitResult` per run, in order, each the one `engine.loop.fit` returns for that run
    alone; every module then holds its run's best weights, as after `fit`.

    `stop.requested` (Ctrl-C) ends the group after the current epoch: every replica still
    training writes its checkpoint and ends "interrupted". What cannot train exactly so is
    refused before any step, with a `StackError` saying why (`group_refusal`; the engine's own
    refusals: `engine.replicas`).
    """
    if not runs:
        return []
    if (reason := group_refusal(runs)) is not None:
        raise StackError(reason)
    state, outside = Group(runs, device), torch.Generator()
    process_rng = capture_rng(outside)
    try:
        training = [j for j, c in enumerate(state.courses) if state.epoch[j] <= c.epochs]
        for j in set(range(len(runs))) - set(training):  # resumed after training had ended
            state.finish(j, None)
        if training:
            state.group = state.stack(training)
            for i, j in enumerate(training):
                with state.own_rng(j, i):
                    state.courses[j].begin(state.epoch[j])
        while state.group is not None and state.group.ids:
            state.train_epoch(stop)
    finally:
        restore_rng(process_rng, outside)
    return state.results

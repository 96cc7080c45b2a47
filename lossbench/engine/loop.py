"""The training loop: epochs of train then validate, early stopping, best weights kept.

Plain PyTorch, read top to bottom. Per step there is no host synchronisation: batch losses stay
on the device and are summed once per epoch. Its parts live beside it: the batches
(`engine.batches`), precision and wrappers (`engine.precision`), the selection rule and early
stopping (`engine.selection`), the per-epoch record (`engine.validation`) and the state a
checkpoint keeps (`engine.loop_state`), and the bookkeeping around each training pass
(`engine.course`: validation into the history, early stopping, divergence, checkpoints).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lossbench.data import Splits
from lossbench.engine import distributed
from lossbench.engine.batches import train_batches
from lossbench.engine.checkpoint import capture_rng, restore_rng
# FitResult is read from here by the workflow: the result of `fit`
from lossbench.engine.course import Course, FitResult, stop_requested  # noqa: F401
from lossbench.engine.loop_state import EpochSoFar, LoopState
from lossbench.engine.optim import scheduler_stepping
from lossbench.engine.precision import autocast, autocast_dtype, grad_scaler, unwrap
from lossbench.engine.predict import predict
from lossbench.engine.progress import EpochProgress
from lossbench.engine.validation import (epoch_record, flipped_training, memorisation,
                                         scores_classes, validation_metrics)
from lossbench.losses.base import hook, squeeze_output


def average_loss_gradients(loss_fn: nn.Module) -> None:
    """Average the gradients of a loss's own parameters (learned weights, a classifier) over the
    processes, as DistributedDataParallel does for the model's, so that every rank keeps the
    same loss parameters. A no-op in one process or for a loss without parameters."""
    dist = distributed.current()
    grads = [p.grad for p in loss_fn.parameters() if p.grad is not None]
    if not dist.active or not grads:
        return
    flat = distributed.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), dist)
    flat /= dist.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class OptimizerStep:
    """backward, the loss's gradients averaged over processes, clipping, step: one code path,
    with or without a float16 loss scaler (`scaler`: the loss is scaled so that small gradients
    do not underflow, and unscaled before clipping)."""

    def __init__(self, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                 params: list[torch.Tensor] | None = None, grad_clip: float | None = None,
                 scaler: torch.amp.GradScaler | None = None) -> None:
        self.optimizer, self.loss_fn, self.grad_clip, self.scaler = (optimizer, loss_fn,
                                                                      grad_clip, scaler)
        self.params = (params if params is not None
                       else [p for group in optimizer.param_groups for p in group["params"]])
        # decided once, not per step: at a few hundred microseconds a step, walking the loss's
        # parameters every step costs several percent of a small model's epoch
        self.sync_loss = distributed.current().active and any(True for _ in loss_fn.parameters())

    def __call__(self, loss: torch.Tensor) -> None:
        scaler = self.scaler
        self.optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if self.sync_loss:
            average_loss_gradients(self.loss_fn)
        if self.grad_clip:
            if scaler is not None:
                scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        if scaler is not None:
            scaler.step(self.optimizer)  # skipped when the gradients hold inf or NaN
            scaler.update()
        else:
            self.optimizer.step()


def train_epoch(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *,
                params: list[torch.Tensor] | None = None, grad_clip: float | None = None,
                scheduler: Any = None, amp: Callable[[], AbstractContextManager] = nullcontext,
                scaler: torch.amp.GradScaler | None = None,
                on_batch: Callable[[int, torch.Tensor], None] | None = None,
                term_sums: dict[str, torch.Tensor] | None = None,
                losses: list[torch.Tensor] | None = None, sizes: list[int] | None = None,
                stop: Any = None) -> torch.Tensor:
    """One pass over `batches`: forward, loss, backward, step. Returns (2,) on the device:
    [sum over batches of loss × batch size, number of samples]. A composite loss's parts
    (its `terms`) are summed the same way into `term_sums` when given.

    Nothing here waits for the device: batch losses stay tensors and are summed once at the end
    (`scheduler` is stepped per batch, for one-cycle schedules).

    `losses`/`sizes`, when given, hold the batches of this epoch already done (an epoch resumed
    from a checkpoint) and receive the new ones; `stop.requested` (Ctrl-C) ends the pass after the
    current step.
    """
    step = OptimizerStep(optimizer, loss_fn, params, grad_clip, scaler)
    model_loss = hook(loss_fn, "model_loss")  # e.g. adversarial training
    if model_loss is None:
        def model_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return loss_fn(squeeze_output(model(x)), y)  # (B, O), or (B,) for one output
    sum_terms = term_sums is not None and hook(loss_fn, "terms") is not None
    losses = [] if losses is None else losses
    sizes = [] if sizes is None else sizes
    for b, (x, y) in enumerate(batches):
        with amp():
            loss = model_loss(model, x, y)
        step(loss)
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        sizes.append(len(y))
        if sum_terms:
            for name, value in hook(loss_fn, "terms").items():
                term_sums[name] = term_sums.get(name, 0) + value.float() * len(y)
        if on_batch is not None:
            on_batch(b, losses[-1])
        if stop is not None and stop.requested:
            break
    if not losses:
        return torch.zeros(2)
    weights = torch.tensor(sizes, dtype=torch.float32).to(losses[0].device, non_blocking=True)
    return torch.stack([torch.dot(torch.stack(losses).float(), weights), weights.sum()])


class Settings(dict):
    """A config section read as plain attributes (`trainer.epochs`, `trainer.get(...)`).

    Each read of an OmegaConf node costs a fraction of a millisecond (type checks,
    interpolation); the loop reads its settings every epoch, so it reads them from a dict.
    """

    @classmethod
    def of(cls, section: Any) -> Settings:
        if isinstance(section, Settings):
            return section
        from omegaconf import DictConfig, OmegaConf

        if isinstance(section, DictConfig):
            section = OmegaConf.to_container(section, resolve=True)
        return cls(section)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Epochs:
    """The work of one epoch, set up once for the whole run by `fit`: train (resuming an epoch
    a checkpoint stopped in), then validate into a history row."""

    model: nn.Module  # what trains (maybe wrapped: DistributedDataParallel, torch.compile)
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    splits: Splits
    head: str
    trainer: Settings
    device: torch.device
    generator: torch.Generator
    progress: EpochProgress
    stop: Any  # None over several processes: ranks must agree, so they stop at epoch ends
    keep_rng: bool  # checkpoints are written: each epoch's starting RNG is kept for them

    def __post_init__(self) -> None:
        self.core = unwrap(self.model)  # validates and holds the weights that are kept
        self.dtype = autocast_dtype(self.trainer.get("precision", 32))
        self.scaler = grad_scaler(self.device, self.dtype)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.steps = scheduler_stepping(type(self.scheduler)) if self.scheduler is not None else None
        self.per_batch = self.steps == "batch"
        self.flipped = flipped_training(self.splits)

    def amp(self) -> AbstractContextManager:
        return autocast(self.device, self.dtype)

    def on_batch(self, b: int, loss: torch.Tensor) -> None:
        if b % 10 == 9:  # reading the loss waits for the device: only now and then
            self.progress.batch(b + 1, float(loss))

    def train(self, epoch: int, resumed: LoopState | None
              ) -> tuple[int, EpochSoFar, dict | None, torch.Tensor]:
        """(steps in the epoch, its steps done, RNG at its start, `train_epoch`'s sums)."""
        if resumed is not None:  # this epoch's data order, as it was first drawn
            restore_rng(resumed.epoch_rng, self.generator)
        epoch_rng = capture_rng(self.generator) if self.keep_rng else None
        so_far = resumed.so_far if resumed is not None else EpochSoFar()
        n, batches = train_batches(self.splits.train, self.trainer.batch_size, self.generator,
                                   self.trainer.get("max_batches"), skip=len(so_far))
        self.progress.start_epoch(epoch, n)
        if len(so_far):  # then draw as it would have
            restore_rng(resumed.rng, self.generator)
        sums = train_epoch(self.model, self.loss_fn, self.optimizer, batches, params=self.params,
                           grad_clip=self.trainer.grad_clip, amp=self.amp, scaler=self.scaler,
                           scheduler=self.scheduler if self.per_batch else None,
                           on_batch=self.on_batch if self.progress.live else None,
                           term_sums=so_far.term_sums, losses=so_far.losses,
                           sizes=so_far.sizes, stop=self.stop)
        return n, so_far, epoch_rng, sums

    def validate(self, epoch: int, train_loss: float, terms: dict[str, float], steps: int,
                 outputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """The epoch's history row, the same on every rank (rank 0's), scheduler stepped.
        `outputs`: the model's outputs already computed (a stack's, `engine.stacked_eval`)."""
        t, given = self.trainer, outputs or {}
        with self.amp():
            pred = predict(self.core, self.splits, "val", self.head, t.eval_batch_size,
                           self.device, self.loss_fn, t.get("max_batches"),
                           outputs=given.get("val"))
            memorised = (memorisation(self.core, self.flipped, self.head, self.loss_fn,
                                      t.eval_batch_size, self.device, given.get("flipped"))
                         if self.flipped is not None and scores_classes(self.head, self.loss_fn)
                         else None)
        row = epoch_record(epoch, train_loss, terms, validation_metrics(self.splits, pred),
                           memorised, steps, self.optimizer.param_groups[0]["lr"])
        # Every rank computed the same row from the gathered predictions; rank 0's copy makes
        # the scheduler and early-stopping decisions identical by construction.
        row = distributed.broadcast_object(row, distributed.current())
        if self.scheduler is not None and not self.per_batch:
            on_plateau = self.steps == "metric"
            self.scheduler.step(row["val_loss"]) if on_plateau else self.scheduler.step()
        return row


def fit(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: Any, splits: Splits, head: str, trainer: Any, device: torch.device,
        generator: torch.Generator, progress: EpochProgress,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        resume: dict[str, Any] | None = None,
        save: Callable[[dict[str, Any]], None] | None = None, stop: Any = None) -> FitResult:
    """Train for `trainer.epochs` epochs, validating after each; restore the best weights.

    `save`, `resume`, `stop`: checkpoints (`Checkpoints`, `LoopState`): a run resumed from
    `resume` continues exactly as if it had not stopped; `stop.requested` (Ctrl-C) ends it after
    its current step, status "interrupted". A NaN or infinite loss ends it, status "diverged"
    (read once per epoch, with the epoch's loss, so the steps cost nothing more). `model` may
    be wrapped (`training_model`): it trains; the plain module inside validates and holds the
    weights that are kept. The bookkeeping around each training pass is `Course`'s.
    """
    trainer, dist = Settings.of(trainer), distributed.current()
    run = Epochs(model, loss_fn, optimizer, scheduler, splits, head, trainer, device, generator,
                 progress, stop=stop if not dist.active else None, keep_rng=save is not None)
    course = Course(run, progress, on_epoch, resume, save)
    state = course.state
    for epoch in range(state.epoch, course.epochs + 1):
        start = time.perf_counter()
        course.begin(epoch)
        resumed = state if resume is not None and epoch == state.epoch else None
        num_batches, so_far, epoch_rng, sums = run.train(epoch, resumed)
        if run.stop is not None and run.stop.requested and len(so_far) < num_batches:
            course.checkpoints.mid_epoch(lambda: course.snapshot(epoch, so_far, epoch_rng))
            course.result.stop("interrupted", epoch, len(so_far), num_batches)
            break
        if not course.end_epoch(epoch, start, num_batches, so_far, sums,
                                lambda: stop_requested(stop)):
            break
    return course.finish()

"""One run's way through its epochs around the training passes (`Course`): the selection
rule and budget, early stopping and the best weights, the history, divergence, checkpoints, and
the `FitResult` they make.

`engine.loop.fit` drives one course with the passes of its own model; `engine.group_fit` drives
one per replica of a stack of replicas trained together. Both share this code, so a replica's
bookkeeping is its separate run's by construction. `run` is the run's `engine.loop.Epochs` (its
`validate`, `core`, `loss_fn`, `optimizer`, ...), typed loosely here: loop.py imports this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lossbench.engine import distributed
from lossbench.engine.checkpoint import capture_rng, training_states
from lossbench.engine.loop_state import Checkpoints, EpochSoFar, LoopState, copy_state
from lossbench.engine.progress import EpochProgress
from lossbench.engine.selection import (EarlyStopping, planned_epochs, selection_rule,
                                        steps_per_epoch)
from lossbench.losses.base import hook

@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    epochs_run: int = 0
    stopped_early: bool = False
    status: str = "completed"  # or "interrupted" (Ctrl-C, SIGTERM), "diverged" (NaN/inf loss)
    stopped_at: dict[str, Any] | None = None  # epoch and step where it stopped, if it did
    best_tie: float = float("nan")  # the tie-break metric at the best epoch
    steps_run: int = 0  # optimizer steps taken (batches of one process)
    selection: dict[str, Any] = field(default_factory=dict)  # see `selection_rule`
    # the weights of the last epoch run (the model itself holds the best ones after `fit`)
    last_state: dict[str, torch.Tensor] | None = None
    last_loss_state: dict[str, torch.Tensor] | None = None

    def stop(self, status: str, epoch: int, step: int, steps: int, **details: Any) -> None:
        self.status = status
        self.stopped_at = {"epoch": epoch, "step": step, "steps": steps, **details}


def epoch_means(so_far: EpochSoFar, sums: torch.Tensor) -> tuple[float, dict[str, float]]:
    """The epoch's mean training loss and mean composite-loss parts over every process: one
    synchronisation with the device per epoch."""
    dist = distributed.current()
    total, count = distributed.all_reduce_sum(sums, dist).tolist()
    names = sorted(so_far.term_sums)  # a composite loss's parts, averaged like the total
    totals = (distributed.all_reduce_sum(torch.stack([so_far.term_sums[n] for n in names]),
                                         dist).tolist() if names else [])
    return total / max(count, 1), {n: t / max(count, 1) for n, t in zip(names, totals)}


def first_bad_step(so_far: EpochSoFar, train_loss: float) -> tuple[int, float]:
    """(1-based step, its loss) of the first NaN or infinite batch loss of a diverged epoch."""
    bad = (~torch.isfinite(torch.stack(so_far.losses).float())).nonzero().flatten().tolist()
    step = bad[0] + 1 if bad else len(so_far)
    return step, float(so_far.losses[step - 1]) if len(so_far) else train_loss


def starting_state(resume: dict[str, Any] | None, run: Any, stopping: EarlyStopping
                   ) -> LoopState:
    """The state `fit` starts from: a checkpoint's `loop` entry (`resume`) loaded into the early
    stopping counters and the loss scaler, or a new run's, whose best weights so far are the
    initial ones."""
    state = LoopState() if resume is None else LoopState.from_checkpoint(resume, run.device)
    if resume is not None:
        stopping.load_state_dict(state.stopping)
    if run.scaler is not None and state.scaler:
        run.scaler.load_state_dict(state.scaler)
    if state.best_state is None:
        state.keep_best(run.core, run.loss_fn)
    elif state.best_loss_state is None:  # a checkpoint from before the loss's weights were kept
        state.best_loss_state = copy_state(run.loss_fn)
    return state


def stop_requested(stop: Any) -> bool:
    """Whether a stop (Ctrl-C) was asked for, as every process sees it: rank 0's answer."""
    dist = distributed.current()
    return stop is not None and bool(
        distributed.broadcast_object(bool(stop.requested), dist) if dist.active
        else stop.requested)


class Course:
    """One run's way through its epochs around the training passes: the selection rule and the
    budget, early stopping, the best weights, the history, divergence and checkpoints.

    `fit` drives one course with the passes of its own model; `engine.group_fit` drives one per
    replica of a stack, whose passes train them all at once. Either way an epoch is `begin`,
    a training pass, then `end_epoch` (False: the run ends there), and `finish` gives the result.
    """

    def __init__(self, run: Any, progress: EpochProgress,
                 on_epoch: Callable[[dict[str, Any]], None] | None,
                 resume: dict[str, Any] | None, save: Callable[..., None] | None) -> None:
        splits, trainer, dist = run.splits, run.trainer, distributed.current()
        self.run, self.progress, self.on_epoch, self.resume, self.save = (run, progress, on_epoch,
                                                                          resume, save)
        self.selection = selection_rule(splits.task, trainer, splits.val.y_clean is not None,
                                        len(splits.val))
        self.epochs = planned_epochs(trainer.epochs, self.selection["min_steps"], steps_per_epoch(
            len(splits.train), trainer.batch_size, dist.world_size, trainer.get("max_batches")))
        first = hook(run.loss_fn, "first_selectable_epoch")(self.epochs)
        self.stopping = EarlyStopping.of(self.selection, first)
        self.state = state = starting_state(resume, run, self.stopping)
        self.result = FitResult(selection=self.selection, history=state.history,
                                steps_run=state.steps_run, epochs_run=len(state.history))
        self.checkpoints = Checkpoints(save, trainer)

    def snapshot(self, epoch: int, so_far: EpochSoFar | None = None,
                 epoch_rng: dict | None = None) -> LoopState:
        """The state to resume from: `epoch`, its steps done, RNG at its start and now."""
        run, state = self.run, self.state
        rng, so_far = capture_rng(run.generator), EpochSoFar() if so_far is None else so_far
        return LoopState(epoch=epoch, batch=len(so_far), epoch_rng=epoch_rng or rng, rng=rng,
                         so_far=so_far, history=self.result.history,
                         stopping=self.stopping.state_dict(), best_state=state.best_state,
                         best_loss_state=state.best_loss_state,
                         scaler=run.scaler.state_dict() if run.scaler else None)

    def begin(self, epoch: int) -> None:
        self.run.model.train()
        hook(self.run.loss_fn, "on_epoch_start")(epoch, self.epochs)

    def end_epoch(self, epoch: int, start: float, num_batches: int, so_far: EpochSoFar,
                  sums: torch.Tensor, stopping_now: Callable[[], bool],
                  outputs: dict[str, Any] | None = None) -> bool:
        """After the training pass of `epoch` (`so_far`, `sums`: `Epochs.train`'s): divergence,
        validation, the history row, early stopping, the checkpoint. False: the run ends."""
        run, result, checkpoints, epochs = self.run, self.result, self.checkpoints, self.epochs
        train_loss, terms = epoch_means(so_far, sums)
        if not math.isfinite(train_loss):  # NaN or inf: keep the last good checkpoint, stop
            step, loss = first_bad_step(so_far, train_loss)
            result.stop("diverged", epoch, step, num_batches, loss=loss, phase="train")
            checkpoints.diverged()
            return False
        result.steps_run += num_batches
        row = run.validate(epoch, train_loss, terms, result.steps_run, outputs)
        row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        result.epochs_run = epoch
        self.progress.end_epoch(row)
        if self.on_epoch is not None:
            self.on_epoch(row)
        if not math.isfinite(row["val_loss"]):  # broken weights
            result.stop("diverged", epoch, num_batches, num_batches, loss=row["val_loss"],
                        phase="validation")
            checkpoints.diverged()
            return False
        verdict = self.stopping.observe(epoch, row, result.steps_run)
        if verdict == "best":
            self.state.keep_best(run.core, run.loss_fn)
        elif verdict == "stop":
            # patience running out on the budget's last epoch stops nothing early
            result.stopped_early = epoch < epochs
            return False
        now = stopping_now()
        if epoch < epochs:  # the last epoch needs no checkpoint: the run completes
            checkpoints.epoch_end(epoch, lambda: self.snapshot(epoch + 1), lambda: training_states(
                run.core, run.loss_fn, run.optimizer, run.scheduler, clone=True), now)
            if now:
                result.stop("interrupted", epoch + 1, 0, num_batches)
                return False
        return True

    def finish(self) -> FitResult:
        """The result once training is over: the end's checkpoint, best and last weights; the
        model and the loss hold the best ones from here on."""
        result, state, stopping, core, loss_fn = (self.result, self.state, self.stopping,
                                                  self.run.core, self.run.loss_fn)
        if self.resume is not None and state.epoch > self.epochs:  # resumed after it had ended
            result.stopped_early = len(result.history) < self.epochs
        elif result.status == "completed" and self.save is not None:
            # Training is over: its end goes to disk before the run tests and writes its
            # results, so that a run stopped then (a full disk, kill -9) finishes them with
            # `resume=`, which trains no further. The run deletes the checkpoint once its
            # record is written.
            self.save(self.snapshot(self.epochs + 1).to_checkpoint())
        result.best_epoch, result.best_value, result.best_tie = (
            stopping.best_epoch, stopping.best_value, stopping.best_tie)
        result.last_state, result.last_loss_state = copy_state(core), copy_state(loss_fn)
        core.load_state_dict(state.best_state)
        loss_fn.load_state_dict(state.best_loss_state)
        return result

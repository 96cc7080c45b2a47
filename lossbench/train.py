"""The training loop: epochs of train then validate, early stopping, best weights kept.

Plain PyTorch, read top to bottom. Per step there is no host synchronisation: batch losses stay
on the device and are summed once per epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lossbench.data import Split, Splits
from lossbench.evaluate import predict
from lossbench.errors import UserError
from lossbench.progress import EpochProgress

# Validation metrics each task produces, and which direction is better.
TASK_METRICS = {
    "classification": {"val_loss": "min", "val_accuracy": "max", "val_macro_f1": "max"},
    "regression": {"val_loss": "min", "val_rmse": "min", "val_mae": "min", "val_r2": "max"},
}


def task_kind(task: str) -> str:
    return "regression" if task == "regression" else "classification"


def resolve_monitor(task: str, monitor: str = "auto", mode: str = "auto") -> tuple[str, str]:
    """The monitored validation metric and its mode; `auto` fits the task."""
    metrics = TASK_METRICS[task_kind(task)]
    if monitor == "auto":
        monitor = "val_rmse" if task == "regression" else "val_accuracy"
    if monitor not in metrics:
        raise UserError(f"trainer.monitor={monitor} is not produced by a {task} dataset; "
                        f"choose from: {', '.join(metrics)}")
    if mode == "auto":
        mode = metrics[monitor]
    if mode not in ("min", "max"):
        raise UserError(f"trainer.mode={mode} must be auto, min or max")
    return monitor, mode


def validation_metrics(splits: Splits, pred) -> dict[str, float]:
    """The per-epoch validation row (cheap metrics only)."""
    import numpy as np

    row = {"val_loss": float(pred.loss) if pred.loss is not None else float("nan")}
    if splits.task == "regression":
        err = pred.y_pred - pred.y_true
        mse = float(np.mean(err ** 2))
        var = float(np.var(pred.y_true))
        row.update(val_rmse=math.sqrt(mse), val_mae=float(np.mean(np.abs(err))),
                   val_r2=1.0 - mse / var if var > 0 else float("nan"))
    else:
        from sklearn.metrics import f1_score

        row["val_accuracy"] = float(np.mean(pred.y_pred == pred.y_true))
        row["val_macro_f1"] = float(f1_score(pred.y_true, pred.y_pred, average="macro",
                                             labels=list(range(splits.num_classes)),
                                             zero_division=0))
    return row


def train_batches(split: Split, batch_size: int, generator: torch.Generator,
                  max_batches: int | None = None, loader_kwargs: dict | None = None
                  ) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(number of batches, iterator) over one shuffled epoch of the training split.

    In-memory tensors are sliced by a random permutation on their own device (no Dataset, no
    per-sample Python); on-disk or augmented data goes through a DataLoader.
    """
    if split.x is None:
        loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size, shuffle=True,
                                             generator=generator, **(loader_kwargs or {}))
        n = len(loader) if max_batches is None else min(len(loader), max_batches)
        device = split.y.device

        def from_loader():
            for b, (x, y) in enumerate(loader):
                if b >= n:
                    return
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return n, from_loader()
    count = len(split)
    n = math.ceil(count / batch_size)
    if max_batches is not None:
        n = min(n, max_batches)
    order = torch.randperm(count, generator=generator, device=generator.device)
    order = order.to(split.x.device)

    def from_tensors():
        for b in range(n):
            idx = order[b * batch_size:(b + 1) * batch_size]
            yield split.x[idx], split.y[idx]
    return n, from_tensors()


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = float("nan")
    epochs_run: int = 0
    stopped_early: bool = False


def fit(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: Any, splits: Splits, head: str, trainer: Any, device: torch.device,
        generator: torch.Generator, progress: EpochProgress,
        on_epoch: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
    """Train for `trainer.epochs` epochs, validating after each; restore the best weights."""
    monitor, mode = resolve_monitor(splits.task, trainer.monitor, trainer.mode)
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
    max_batches = trainer.get("max_batches")
    step_per_batch = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    on_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    custom_loss = getattr(loss_fn, "model_loss", None)  # e.g. adversarial training
    params = [p for group in optimizer.param_groups for p in group["params"]]
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    waited = 0
    for epoch in range(1, trainer.epochs + 1):
        start = time.perf_counter()
        model.train()
        num_batches, batches = train_batches(splits.train, trainer.batch_size, generator,
                                             max_batches)
        progress.start_epoch(epoch, num_batches)
        losses, sizes = [], []
        for b, (x, y) in enumerate(batches):
            if custom_loss is not None:
                loss = custom_loss(model, x, y)
            else:
                out = model(x)  # (B, O)
                if out.shape[-1] == 1:
                    out = out.squeeze(-1)  # one logit / one regression value: (B,)
                loss = loss_fn(out, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if trainer.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, trainer.grad_clip)
            optimizer.step()
            if step_per_batch:
                scheduler.step()
            losses.append(loss.detach())
            sizes.append(len(y))
            if progress.live and b % 10 == 9:
                progress.batch(b + 1, float(losses[-1]))
        weights = torch.tensor(sizes, device=losses[0].device, dtype=torch.float32)
        train_loss = float((torch.stack(losses).float() * weights).sum() / weights.sum())

        pred = predict(model, splits, "val", head, trainer.eval_batch_size, device, loss_fn,
                       max_batches)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        row.update(validation_metrics(splits, pred))
        row["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None and not step_per_batch:
            scheduler.step(row["val_loss"]) if on_plateau else scheduler.step()
        row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        result.epochs_run = epoch
        progress.end_epoch(row)
        if on_epoch is not None:
            on_epoch(row)

        value = row[monitor]
        if epoch == 1 or better(value, result.best_value):
            result.best_value, result.best_epoch, waited = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if trainer.early_stopping and waited >= trainer.patience:
                result.stopped_early = True
                break
    model.load_state_dict(best_state)
    return result

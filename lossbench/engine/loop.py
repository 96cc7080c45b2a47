"""The training loop: epochs of train then validate, early stopping, best weights kept.

Plain PyTorch, read top to bottom. Per step there is no host synchronisation: batch losses stay
on the device and are summed once per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lossbench import distributed
from lossbench.engine.checkpoint import CheckpointClock, capture_rng, restore_rng, training_states
from lossbench.data import Split, Splits
from lossbench.engine.predict import class_scores, loader_batches, model_outputs, predict
from lossbench.losses.base import hook
from lossbench.errors import UserError
from lossbench.engine.progress import EpochProgress

# Validation metrics each task produces, and which direction is better.
TASK_METRICS = {
    "classification": {"val_loss": "min", "val_accuracy": "max", "val_macro_f1": "max",
                       "val_nll": "min"},
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


# Probabilities are clipped here before the log, as in the report's NLL (report.NLL_EPS).
NLL_EPS = 1e-12


def nll(scores, y_true) -> float:
    """Mean negative log-likelihood −(1/N) Σ_i log p_i[y_i] of (N, K) class probabilities:
    the same for every loss (never the loss's own value), so it can rank epochs of any loss."""
    import numpy as np

    if scores is None or not len(y_true):
        return float("nan")
    p_true = scores[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(np.maximum(p_true, NLL_EPS))))


def validation_metrics(splits: Splits, pred) -> dict[str, float]:
    """The per-epoch validation row (cheap metrics only). Under injected label noise the same
    predictions are scored against the clean labels too (`*_clean` columns)."""
    import numpy as np

    row = {"val_loss": float(pred.loss) if pred.loss is not None else float("nan")}
    if splits.task == "regression":
        err = pred.y_pred - pred.y_true
        mse = float(np.mean(err ** 2))
        var = float(np.var(pred.y_true))
        row.update(val_rmse=math.sqrt(mse), val_mae=float(np.mean(np.abs(err))),
                   val_r2=1.0 - mse / var if var > 0 else float("nan"))
        return row
    labels = {"": pred.y_true}
    clean = splits.val.y_clean
    if clean is not None:
        n = len(pred.y_true)  # max_batches may have cut the split short
        labels["_clean"] = clean[:n].cpu().numpy()
    for suffix, y in labels.items():
        row[f"val_accuracy{suffix}"] = float(np.mean(pred.y_pred == y))
        row[f"val_macro_f1{suffix}"] = macro_f1(y, pred.y_pred, splits.num_classes)
        row[f"val_nll{suffix}"] = nll(pred.scores, y)
    return row


def selection_rule(task: str, trainer: Any, noisy: bool) -> dict[str, Any]:
    """The one rule that picks the epoch whose weights are tested, the same for every loss.

    Classification: the monitored metric (validation accuracy by default), ties broken by the
    validation NLL of the class scores (lower wins), so that a small validation split whose
    accuracy saturates still follows the predictions that keep improving. `labels`: the noisy
    validation labels (what a user of noisy data has) or, asked for, the clean ones (privileged
    information: only a benchmark that injected the noise knows them). `min_steps`: early
    stopping may not end a run before that many optimizer steps.
    """
    monitor, mode = resolve_monitor(task, trainer.monitor, trainer.mode)
    labels = trainer.get("select_on", "noisy")
    if labels not in ("noisy", "clean"):
        raise UserError(f"trainer.select_on={labels} must be noisy or clean")
    if labels == "clean" and not noisy:
        raise UserError("trainer.select_on=clean needs injected label noise (dataset.noise.kind "
                        "and dataset.noise.rate); without it the validation labels are clean")
    classification = task_kind(task) == "classification"
    tie_break = "val_nll" if classification and monitor not in ("val_nll", "val_loss") else None
    suffix = "_clean" if labels == "clean" else ""
    if suffix and monitor == "val_loss":
        raise UserError("trainer.select_on=clean scores the predictions against the clean labels "
                        "(val_accuracy, val_macro_f1, val_nll); the loss itself is only known on "
                        "the noisy ones: choose another trainer.monitor")
    return {"metric": monitor, "mode": mode, "tie_break": tie_break, "labels": labels,
            "privileged": labels == "clean",
            # the history.csv columns the rule reads
            "column": monitor + suffix,
            "tie_column": tie_break + suffix if tie_break else None,
            "min_steps": int(trainer.get("min_steps", 0) or 0),
            "patience": int(trainer.patience) if trainer.early_stopping else None,
            "on_test": False}


def describe_selection(selection: dict[str, Any]) -> str:
    """One console line: which epoch is tested, and why."""
    ties = f", ties by lower {selection['tie_break']}" if selection["tie_break"] else ""
    labels = (" on CLEAN validation labels (privileged)" if selection["privileged"]
              else " on the validation labels" + (" (noisy)" if selection.get("noise_injected") else ""))
    stop = (f"; early stopping after {selection['patience']} epochs without improvement, "
            f"not before {selection['min_steps']} steps" if selection["patience"] is not None
            else "; no early stopping")
    return (f"selection: best {selection['metric']} ({selection['mode']}){ties}{labels}{stop}; "
            "never on test")


def steps_per_epoch(n_train: int, batch_size: int, world_size: int = 1,
                    max_batches: int | None = None) -> int:
    """Optimizer steps in one epoch: batches of one process's shard (see `train_batches`)."""
    steps = math.ceil(math.ceil(n_train / max(world_size, 1)) / batch_size)
    return min(steps, max_batches) if max_batches else steps


def planned_epochs(epochs: Any, min_steps: int, steps_per_epoch: int) -> int:
    """`trainer.epochs`, or for `auto` 50 epochs raised until the budget holds `min_steps`
    optimizer steps: a small dataset (one batch per epoch) gets as many steps as a large one
    would in a few epochs."""
    if epochs != "auto":
        return int(epochs)
    return max(AUTO_EPOCHS, math.ceil(min_steps / max(steps_per_epoch, 1)))


AUTO_EPOCHS = 50


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean over the K classes of F1 = 2·TP / (2·TP + FP + FN), 0 for a class with
    no true and no predicted sample: scikit-learn's f1_score(average="macro",
    labels=range(K), zero_division=0), from one bincount. It runs after every epoch, where
    scikit-learn's input checks cost more than the training steps of a small dataset."""
    import numpy as np

    k = num_classes
    confusion = np.bincount(np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64),
                            minlength=k * k).reshape(k, k)  # (true, predicted)
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(0) + confusion.sum(1)  # 2·TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


class EpochOrder(torch.utils.data.Sampler):
    """The sample order of the current epoch, replaced before each epoch, so that one DataLoader
    (and its persistent workers) serves every epoch."""

    def __init__(self) -> None:
        self.order: list[int | tuple[int, int]] = []  # dataset keys: (index, epoch seed)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def epoch_loader(split: Split, batch_size: int, loader_kwargs: dict | None = None
                 ) -> torch.utils.data.DataLoader:
    """The DataLoader of a split read through its `dataset`, built on first use and kept."""
    if split.loader is None or split.loader.batch_size != batch_size:
        # num_workers, pin_memory: as asked, else as the run set them for the split
        kwargs = dict(loader_kwargs or split.loader_options or {})
        split.loader = torch.utils.data.DataLoader(
            split.dataset, batch_size=batch_size, sampler=EpochOrder(),
            persistent_workers=int(kwargs.get("num_workers") or 0) > 0, **kwargs)
    return split.loader


# The most training samples `train_batches` copies at once: a chunk this small is still in the
# processor's cache when the steps read it (64 MiB chunks read an epoch of CIFAR-sized images
# 2.5x slower than one gather per batch; benchmarks/data_paths.py).
GATHER_BYTES = 4 * 2**20


def train_batches(split: Split, batch_size: int, generator: torch.Generator,
                  max_batches: int | None = None, loader_kwargs: dict | None = None,
                  skip: int = 0) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """(number of batches, iterator) over one shuffled epoch of the training split; the
    iterator leaves out the first `skip` batches (an epoch resumed from a checkpoint), and the
    number counts them.

    In-memory tensors are sliced by a random permutation on their own device (no Dataset, no
    per-sample Python); on-disk or augmented data goes through a DataLoader reading the same
    permutation. Over several processes every rank draws the same permutation (same seed) and
    keeps its own shard of it, all shards of equal length.
    """
    dist = distributed.current()
    count = len(split)
    order = torch.randperm(count, generator=generator, device=generator.device)
    order = distributed.shard_order(order, dist)
    n = math.ceil(len(order) / batch_size)
    if max_batches is not None:
        n = min(n, max_batches)
    if split.dataset is not None:  # on-disk or augmented samples
        loader = epoch_loader(split, batch_size, loader_kwargs)
        keys = order[skip * batch_size:n * batch_size].tolist()  # no sample read for nothing
        if getattr(split.dataset, "augments", False):
            # one seed per epoch, from the generator a checkpoint holds, travels with every index:
            # the crops and flips depend on (index, seed) only, not on which worker reads them
            seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
            keys = [(i, seed) for i in keys]
        loader.sampler.order = keys
        return n, loader_batches(loader, split.y.device)
    order = order.to(split.x.device)
    # Gather a run of batches with one index per tensor, then hand out contiguous slices of it
    # (views): two gathers per chunk instead of two per step, about 5 % of a small model's
    # epoch. A chunk holds at most GATHER_BYTES of samples (at least one batch).
    sample_bytes = split.x[:1].numel() * split.x.element_size()
    per_chunk = max(1, GATHER_BYTES // max(batch_size * sample_bytes, 1))

    def from_tensors():
        for first in range(skip, n, per_chunk):
            last = min(first + per_chunk, n)
            idx = order[first * batch_size:last * batch_size]
            xs, ys = split.x[idx], split.y[idx]  # (≤ per_chunk·B, ...), same samples in order
            for b in range(0, len(ys), batch_size):
                yield xs[b:b + batch_size], ys[b:b + batch_size]
    return n, from_tensors()


PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def autocast_dtype(precision: Any) -> torch.dtype | None:
    """`trainer.precision` (32, bf16 or 16) -> the autocast dtype, None for full precision."""
    key = str(precision).removesuffix("-mixed")
    if key not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} must be 32, bf16 or 16")
    return PRECISIONS[key]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision for the forward pass and the loss (backward runs outside it)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers: the one whose
    state_dict is saved and which evaluates (no collective calls in its forward)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":  # torch.compile's (no dynamo import)
            model = model._orig_mod
        else:  # a user's model may well have its own `.module`: not a wrapper
            return model


def training_model(model: nn.Module, device: torch.device, compile_model: bool = False
                   ) -> nn.Module:
    """The module the training loop calls: DistributedDataParallel over several processes
    (gradients all-reduced in backward), then torch.compile when asked."""
    if distributed.current().active and any(p.requires_grad for p in model.parameters()):
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)
    return model


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
    (`loss_fn.terms`) are summed the same way into `term_sums` when given.

    Nothing here waits for the device: batch losses stay tensors and are summed once at the end
    (`scheduler` is stepped per batch, for one-cycle schedules).

    `losses`/`sizes`, when given, hold the batches of this epoch already done (an epoch resumed
    from a checkpoint) and receive the new ones; `stop.requested` (Ctrl-C) ends the pass after the
    current step.
    """
    custom_loss = getattr(loss_fn, "model_loss", None)  # e.g. adversarial training
    # decided once, not per step: at a few hundred microseconds a step, walking the loss's
    # parameters every step costs several percent of a small model's epoch
    sync_loss = distributed.current().active and any(True for _ in loss_fn.parameters())
    losses = [] if losses is None else losses
    sizes = [] if sizes is None else sizes
    for b, (x, y) in enumerate(batches):
        with amp():
            if custom_loss is not None:
                loss = custom_loss(model, x, y)
            else:
                out = model(x)  # (B, O)
                if out.shape[-1] == 1:
                    out = out.squeeze(-1)  # one logit / one regression value: (B,)
                loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            if sync_loss:
                average_loss_gradients(loss_fn)
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if sync_loss:
                average_loss_gradients(loss_fn)
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.detach())
        sizes.append(len(y))
        if term_sums is not None:
            for name, value in getattr(loss_fn, "terms", {}).items():
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


def flipped_training(splits: Splits) -> Split | None:
    """The training samples whose label the injected noise changed, with their noisy `y` and
    true `y_clean` labels, or None when there are none (no noise, regression)."""
    train = splits.train
    if train.y_clean is None or splits.task == "regression":
        return None
    idx = (train.y != train.y_clean).nonzero().flatten()
    if not len(idx):
        return None
    if train.x is not None:
        return Split(x=train.x[idx], y=train.y[idx], y_clean=train.y_clean[idx])
    # read in order, unaugmented (an integer key, not (index, epoch seed))
    return Split(y=train.y[idx], y_clean=train.y_clean[idx],
                 dataset=torch.utils.data.Subset(train.dataset, idx.cpu().tolist()),
                 loader_options=train.loader_options)


def memorisation(model: nn.Module, flipped: Split, head: str, loss_fn: nn.Module,
                 batch_size: int, device: torch.device) -> dict[str, float]:
    """Shares of the flipped training samples that the model predicts as their (wrong) noisy
    label, `flipped_memorised`, and as their true label, `flipped_true`: one extra prediction
    over those samples only."""
    out, _, _ = model_outputs(model, flipped, batch_size, device)
    with torch.inference_mode():
        predicted = class_scores(out, head, loss_fn).argmax(-1)  # (F,)
    return {"flipped_memorised": float((predicted == flipped.y).float().mean()),
            "flipped_true": float((predicted == flipped.y_clean).float().mean())}


def fit(model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: Any, splits: Splits, head: str, trainer: Any, device: torch.device,
        generator: torch.Generator, progress: EpochProgress,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
        resume: dict[str, Any] | None = None,
        save: Callable[[dict[str, Any]], None] | None = None, stop: Any = None) -> FitResult:
    """Train for `trainer.epochs` epochs, validating after each; restore the best weights.

    Checkpoints (lossbench/engine/checkpoint.py): `save(loop)` receives the loop's state at the end of
    an epoch when `CheckpointClock` says one is due (`trainer.checkpoint_interval_s`,
    `trainer.checkpoint_every`) and when `stop.requested` is set (Ctrl-C: the run stops after
    its current step, status "interrupted"); `save(loop, states)` the state of the end of the
    last good epoch when the loss diverges; `resume` is such a state, from which the run
    continues exactly as if it had not stopped: same data order, same random draws. A NaN or
    infinite training loss stops the run (status "diverged", with the epoch and step); it is
    read once per epoch, with the epoch's loss, so the steps cost nothing more.

    `model` may be wrapped (DistributedDataParallel, torch.compile; see `training_model`): it
    trains; the plain module inside validates and holds the weights that are kept.
    """
    trainer = Settings.of(trainer)
    flipped = flipped_training(splits)
    selection = selection_rule(splits.task, trainer, splits.val.y_clean is not None)
    column, tie_column = selection["column"], selection["tie_column"]
    sign = -1.0 if selection["mode"] == "min" else 1.0

    def better(value: float, tie: float, best: float, best_tie: float) -> bool:
        """Strictly better on the metric, or equal on it and lower on the tie-break."""
        if sign * value != sign * best:
            return sign * value > sign * best or math.isnan(best)
        return tie_column is not None and tie < best_tie

    min_steps = selection["min_steps"]
    max_batches = trainer.get("max_batches")
    epochs = planned_epochs(trainer.epochs, min_steps, steps_per_epoch(
        len(splits.train), trainer.batch_size, distributed.current().world_size, max_batches))
    step_per_batch = isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    on_plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    dtype = autocast_dtype(trainer.get("precision", 32))
    amp = lambda: autocast(device, dtype)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    dist = distributed.current()
    core = unwrap(model)

    def on_batch(b: int, loss: torch.Tensor) -> None:
        if b % 10 == 9:  # reading the loss waits for the device: only now and then
            progress.batch(b + 1, float(loss))

    result = FitResult(selection=selection)
    best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
    # a loss's own parameters (mixed's classifier over the embedding) belong to the best epoch too
    best_loss_state = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
    waited = 0
    first_epoch = 1
    if resume is not None:
        result.history = list(resume["history"])
        result.best_epoch, result.best_value = resume["best_epoch"], resume["best_value"]
        result.best_tie = resume.get("best_tie", float("nan"))
        result.epochs_run = len(result.history)
        result.steps_run = int(result.history[-1].get("steps", 0)) if result.history else 0
        best_state, waited, first_epoch = resume["best_state"], resume["waited"], resume["epoch"]
        best_loss_state = resume.get("best_loss_state", best_loss_state)
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
    clock = CheckpointClock(trainer.get("checkpoint_interval_s", 0),
                            trainer.get("checkpoint_every", 0))
    good: tuple[dict, dict] | None = None  # (loop, states) at the end of the last good epoch
    # a loss may rule out early epochs (deferred re-weighting: none before its switch)
    first_selectable = hook(loss_fn, "first_selectable_epoch")(epochs)
    step_stop = stop if not dist.active else None  # ranks must agree: stop at epoch ends there

    def loop_state(epoch: int, epoch_rng: dict, losses: list, sizes: list, term_sums: dict
                   ) -> dict[str, Any]:
        """What `resume` needs: epoch in progress, its batches done, RNG at its start."""
        return {"epoch": epoch, "batch": len(losses), "epoch_rng": epoch_rng,
                "rng": capture_rng(generator),
                "losses": torch.stack(losses).cpu() if losses else torch.zeros(0),
                "sizes": list(sizes), "term_sums": {k: v.cpu() for k, v in term_sums.items()},
                "history": result.history, "best_epoch": result.best_epoch,
                "best_value": result.best_value, "best_tie": result.best_tie,
                "best_state": best_state, "waited": waited,
                "best_loss_state": best_loss_state,
                "scaler": scaler.state_dict() if scaler is not None else None}

    for epoch in range(first_epoch, epochs + 1):
        start = time.perf_counter()
        model.train()
        hook(loss_fn, "on_epoch_start")(epoch, epochs)
        resuming = resume is not None and epoch == first_epoch
        if resuming:  # this epoch's data order, as it was first drawn
            restore_rng(resume["epoch_rng"], generator)
        epoch_rng = capture_rng(generator) if save is not None else None
        done = resume["batch"] if resuming else 0  # batches done before the checkpoint
        num_batches, batches = train_batches(splits.train, trainer.batch_size, generator,
                                             max_batches, skip=done)
        progress.start_epoch(epoch, num_batches)
        losses: list[torch.Tensor] = []
        sizes: list[int] = []
        term_sums: dict[str, torch.Tensor] = {}
        if done:  # then draw as it would have
            losses = list(resume["losses"].to(device).unbind())
            sizes = list(resume["sizes"])
            term_sums = {k: v.to(device) for k, v in resume["term_sums"].items()}
            restore_rng(resume["rng"], generator)
        sums = train_epoch(model, loss_fn, optimizer, batches, params=params,
                           grad_clip=trainer.grad_clip,
                           scheduler=scheduler if step_per_batch else None, amp=amp,
                           scaler=scaler, on_batch=on_batch if progress.live else None,
                           term_sums=term_sums, losses=losses, sizes=sizes, stop=step_stop)
        if step_stop is not None and step_stop.requested and len(losses) < num_batches:
            if save is not None:  # stopped mid-epoch: the rest of it runs on resume
                save(loop_state(epoch, epoch_rng, losses, sizes, term_sums))
            result.status = "interrupted"
            result.stopped_at = {"epoch": epoch, "step": len(losses), "steps": num_batches}
            break
        total, count = distributed.all_reduce_sum(sums, dist).tolist()  # one sync per epoch
        train_loss = total / max(count, 1)
        if not math.isfinite(train_loss):  # NaN or inf: keep the last good checkpoint, stop
            bad = (~torch.isfinite(torch.stack(losses).float())).nonzero().flatten().tolist()
            step = bad[0] + 1 if bad else len(losses)
            result.status = "diverged"
            result.stopped_at = {"epoch": epoch, "step": step, "steps": num_batches,
                                 "loss": float(losses[step - 1]) if losses else train_loss,
                                 "phase": "train"}
            if good is not None:
                save(*good)
            break
        term_names = sorted(term_sums)  # a composite loss's parts, averaged like the total
        term_totals = (distributed.all_reduce_sum(torch.stack([term_sums[n] for n in term_names]),
                                                  dist).tolist() if term_names else [])

        with amp():
            pred = predict(core, splits, "val", head, trainer.eval_batch_size, device, loss_fn,
                           max_batches)
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        row.update({f"train_loss_{n}": t / max(count, 1) for n, t in zip(term_names, term_totals)})
        row.update(validation_metrics(splits, pred))
        if flipped is not None and (head != "embedding" or hasattr(loss_fn, "scores")):
            with amp():
                row.update(memorisation(core, flipped, head, loss_fn, trainer.eval_batch_size,
                                        device))
        result.steps_run += num_batches
        row["steps"] = result.steps_run
        row["lr"] = optimizer.param_groups[0]["lr"]
        # Every rank computed the same row from the gathered predictions; rank 0's copy makes
        # the scheduler and early-stopping decisions identical by construction.
        row = distributed.broadcast_object(row, dist)
        if scheduler is not None and not step_per_batch:
            scheduler.step(row["val_loss"]) if on_plateau else scheduler.step()
        row["seconds"] = time.perf_counter() - start
        result.history.append(row)
        result.epochs_run = epoch
        progress.end_epoch(row)
        if on_epoch is not None:
            on_epoch(row)
        if pred.loss is not None and not math.isfinite(row["val_loss"]):  # broken weights
            result.status = "diverged"
            result.stopped_at = {"epoch": epoch, "step": num_batches, "steps": num_batches,
                                 "loss": row["val_loss"], "phase": "validation"}
            if good is not None:
                save(*good)
            break

        value, tie = row[column], row[tie_column] if tie_column else float("nan")
        if epoch < first_selectable:  # e.g. before deferred re-weighting switches on
            pass
        elif epoch <= max(first_selectable, 1) or better(value, tie, result.best_value,
                                                         result.best_tie):
            result.best_value, result.best_tie, result.best_epoch, waited = value, tie, epoch, 0
            best_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
            best_loss_state = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
        else:
            waited += 1
            if (trainer.early_stopping and waited >= trainer.patience
                    and result.steps_run >= min_steps):
                result.stopped_early = True
                break
        stopping = stop is not None and bool(
            distributed.broadcast_object(bool(stop.requested), dist) if dist.active
            else stop.requested)
        if save is not None and epoch < epochs and (stopping or clock.due(epoch)):
            clock.save(save, loop_state(epoch + 1, capture_rng(generator), [], [], {}))
            good = None  # on disk already
        elif save is not None and epoch < epochs:  # kept for a divergence to come
            loop = loop_state(epoch + 1, capture_rng(generator), [], [], {})
            good = (dict(loop, history=list(result.history)),
                    training_states(core, loss_fn, optimizer, scheduler, clone=True))
        if stopping and epoch < epochs:
            result.status = "interrupted"
            result.stopped_at = {"epoch": epoch + 1, "step": 0, "steps": num_batches}
            break
    result.last_state = {k: v.detach().clone() for k, v in core.state_dict().items()}
    result.last_loss_state = {k: v.detach().clone() for k, v in loss_fn.state_dict().items()}
    core.load_state_dict(best_state)
    loss_fn.load_state_dict(best_loss_state)
    return result

"""Which epoch's weights are tested, and when training stops: the same rule for every loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lossbench.console import counted
from lossbench.errors import UserError
from lossbench.tasks import VALIDATION_METRICS, task_kind

AUTO_EPOCHS = 50
# Below this many validation samples one sample moves validation accuracy by more than half a
# point, and `monitor: auto` selects on the validation NLL instead: on wine's 36 samples a
# single flip picked epoch 19 of 400 (still at NLL 0.51, test ECE 0.40). docs/protocol.md.
MIN_VAL_SAMPLES_FOR_ACCURACY = 200


def resolve_monitor(task: str, monitor: str = "auto", mode: str = "auto",
                    n_val: int | None = None) -> tuple[str, str]:
    """The monitored validation metric and its mode; `auto` fits the task: val_rmse for
    regression, val_accuracy for classification, or val_nll when the validation split has
    `n_val` < MIN_VAL_SAMPLES_FOR_ACCURACY samples (too few for accuracy to rank epochs)."""
    metrics = VALIDATION_METRICS[task_kind(task)]
    if monitor == "auto":
        small = n_val is not None and n_val < MIN_VAL_SAMPLES_FOR_ACCURACY
        monitor = ("val_rmse" if task == "regression" else
                   "val_nll" if small else "val_accuracy")
    if monitor not in metrics:
        raise UserError(f"trainer.monitor={monitor} is not produced by a {task} dataset; "
                        f"choose from: {', '.join(metrics)}")
    if mode == "auto":
        mode = metrics[monitor]
    if mode not in ("min", "max"):
        raise UserError(f"trainer.mode={mode} must be auto, min or max")
    return monitor, mode


def selection_rule(task: str, trainer: Any, noisy: bool, n_val: int | None = None
                   ) -> dict[str, Any]:
    """The one rule that picks the epoch whose weights are tested, the same for every loss.

    Classification: the monitored metric (validation accuracy by default, the validation NLL on
    a validation split of `n_val` < MIN_VAL_SAMPLES_FOR_ACCURACY samples), ties broken by the
    validation NLL of the class scores (lower wins), so that a small validation split whose
    accuracy saturates still follows the predictions that keep improving. `labels`: with
    injected noise, the noisy validation labels (what a user of noisy data has) or, asked for,
    the clean ones (privileged information: only a benchmark that injected the noise knows
    them); without, "given": the dataset's own labels, neither. `min_steps`: early
    stopping may not end a run before that many optimizer steps. `trainer.keep=last` tests the
    last epoch as the end of the budget: it turns early stopping off, or "last" would be
    wherever patience ran out.
    """
    monitor, mode = resolve_monitor(task, trainer.monitor, trainer.mode, n_val)
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
    return {"metric": monitor, "mode": mode, "tie_break": tie_break,
            "labels": labels if noisy else "given",
            "privileged": labels == "clean",
            # the history.csv columns the rule reads
            "column": monitor + suffix,
            "tie_column": tie_break + suffix if tie_break else None,
            "min_steps": int(trainer.get("min_steps", 0) or 0),
            "patience": int(trainer.patience) if trainer.early_stopping and trainer.get(
                "keep", "best") != "last" else None,
            "on_test": False}


def describe_selection(selection: dict[str, Any], keep: str = "best") -> str:
    """One console line: which epoch is tested, and why."""
    ties = f", ties by lower {selection['tie_break']}" if selection["tie_break"] else ""
    labels = (" on CLEAN validation labels (privileged)" if selection["privileged"]
              else " on the validation labels" + (" (noisy)" if selection.get("noise_injected") else ""))
    stop = (f"; early stopping after {counted(selection['patience'], 'epoch')} without "
            f"improvement, not before {counted(selection['min_steps'], 'step')}"
            if selection["patience"] is not None
            else "; no early stopping" + (": trainer.keep=last keeps the end of the whole budget"
                                          if keep == "last" else ""))
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


@dataclass
class EarlyStopping:
    """The best epoch so far under a `selection_rule`, and when to stop looking for a better one.

    `observe` reads each epoch's history row and answers:
    - "skipped": the epoch comes before `first_selectable` (a loss may rule out early epochs:
      deferred re-weighting, none before its switch); nothing changes;
    - "best": the first selectable epoch, or strictly better on `column`, or equal on it and
      lower on `tie_column`; its weights are to be kept, the patience count starts again;
    - "worse": one more epoch without improvement;
    - "stop": that, and `patience` such epochs in a row, and at least `min_steps` optimizer
      steps taken (a small dataset must not stop after a handful of steps).
    `patience` None: no early stopping. The counters (`state_dict`) travel in checkpoints.
    """

    column: str
    mode: str = "max"
    tie_column: str | None = None
    patience: int | None = None
    min_steps: int = 0
    first_selectable: int = 1
    best_epoch: int = 0
    best_value: float = float("nan")
    best_tie: float = float("nan")  # the tie-break metric at the best epoch
    waited: int = 0  # epochs since the best one

    @classmethod
    def of(cls, selection: dict[str, Any], first_selectable: int = 1) -> EarlyStopping:
        return cls(column=selection["column"], mode=selection["mode"],
                   tie_column=selection["tie_column"], patience=selection["patience"],
                   min_steps=selection["min_steps"], first_selectable=first_selectable)

    def better(self, value: float, tie: float) -> bool:
        """Strictly better on the metric, or equal on it and lower on the tie-break."""
        sign = -1.0 if self.mode == "min" else 1.0
        if sign * value != sign * self.best_value:
            return sign * value > sign * self.best_value or math.isnan(self.best_value)
        return self.tie_column is not None and tie < self.best_tie

    def observe(self, epoch: int, row: dict[str, Any], steps_run: int) -> str:
        """'skipped', 'best', 'worse' or 'stop' for the epoch whose history row is `row`."""
        value = row[self.column]
        tie = row[self.tie_column] if self.tie_column else float("nan")
        if epoch < self.first_selectable:
            return "skipped"
        if epoch <= max(self.first_selectable, 1) or self.better(value, tie):
            self.best_value, self.best_tie, self.best_epoch, self.waited = value, tie, epoch, 0
            return "best"
        self.waited += 1
        if (self.patience is not None and self.waited >= self.patience
                and steps_run >= self.min_steps):
            return "stop"
        return "worse"

    def state_dict(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_value": self.best_value,
                "best_tie": self.best_tie, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
        self.best_tie = state.get("best_tie", float("nan"))  # absent from older checkpoints
        self.waited = state["waited"]

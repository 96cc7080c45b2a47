"""What the training loop carries from one epoch (or one step) to the next, and what a checkpoint
keeps of it: exact resume reviewed apart from the loop.

A run resumed from a `LoopState` continues as if it had never stopped: the same data order (the
generator's state at the start of the epoch), the same random draws after the last step done
(every RNG), the same batch losses of the epoch so far, the same best epoch, patience count,
best weights and float16 loss scale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lossbench.engine.checkpoint import CheckpointClock


def copy_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a module's state_dict, which training will not change."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@dataclass
class EpochSoFar:
    """The training steps of the current epoch done so far. Batch losses stay on the device
    (reading them would wait for it); they are summed once, at the end of the epoch."""

    losses: list[torch.Tensor] = field(default_factory=list)  # one () tensor per step
    sizes: list[int] = field(default_factory=list)  # samples per step
    term_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # composite loss's parts,
    # each Σ over steps of part × batch size

    def __len__(self) -> int:
        return len(self.losses)


@dataclass
class LoopState:
    """The state of `fit` between two steps: the `loop` entry of checkpoint.pt.

    `epoch` is the epoch to run, `batch` the number of its steps done (0 at an epoch's end);
    `epoch_rng` the RNG states at the start of `epoch` (they draw its data order), `rng` the
    ones after its step `batch`. `stopping` is `EarlyStopping.state_dict()`; `best_state` and
    `best_loss_state` the weights of the best epoch (model and loss), `scaler` the float16
    GradScaler's state (None without one).
    """

    epoch: int = 1
    history: list[dict[str, Any]] = field(default_factory=list)
    stopping: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    best_loss_state: dict[str, torch.Tensor] | None = None
    scaler: dict[str, Any] | None = None
    batch: int = 0
    epoch_rng: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    so_far: EpochSoFar = field(default_factory=EpochSoFar)

    def keep_best(self, model: nn.Module, loss_fn: nn.Module) -> None:
        """Copy the weights of a new best epoch: the model's and the loss's own (mixed's
        classifier over the embedding belongs to the best epoch too)."""
        self.best_state, self.best_loss_state = copy_state(model), copy_state(loss_fn)

    @property
    def steps_run(self) -> int:
        """Optimizer steps of the epochs completed (the history's last `steps`)."""
        return int(self.history[-1].get("steps", 0)) if self.history else 0

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain data (tensors on the CPU, dicts, lists, numbers) that `torch.load` reads back
        with `weights_only=True`; the history is copied, as training goes on appending to it."""
        return {"epoch": self.epoch, "batch": self.batch, "epoch_rng": self.epoch_rng,
                "rng": self.rng,
                "losses": (torch.stack(self.so_far.losses).cpu() if self.so_far.losses
                           else torch.zeros(0)),
                "sizes": list(self.so_far.sizes),
                "term_sums": {k: v.cpu() for k, v in self.so_far.term_sums.items()},
                "history": list(self.history), **self.stopping,
                "best_state": self.best_state, "best_loss_state": self.best_loss_state,
                "scaler": self.scaler}

    @classmethod
    def from_checkpoint(cls, loop: dict[str, Any], device: torch.device) -> LoopState:
        """The state a checkpoint's `loop` entry holds, the epoch's batch losses back on
        `device`. Checkpoints written before `best_tie`, `best_loss_state` and `scaler` existed
        leave them unset (the tie to NaN, the others to None)."""
        so_far = EpochSoFar()
        if loop["batch"]:
            so_far = EpochSoFar(list(loop["losses"].to(device).unbind()), list(loop["sizes"]),
                                {k: v.to(device) for k, v in loop["term_sums"].items()})
        return cls(epoch=loop["epoch"], history=list(loop["history"]),
                   stopping={"best_epoch": loop["best_epoch"], "best_value": loop["best_value"],
                             "best_tie": loop.get("best_tie", float("nan")),
                             "waited": loop["waited"]},
                   best_state=loop["best_state"], best_loss_state=loop.get("best_loss_state"),
                   scaler=loop.get("scaler"), batch=loop["batch"],
                   epoch_rng=loop["epoch_rng"], rng=loop["rng"], so_far=so_far)


class Checkpoints:
    """When `fit` hands its state to `save` (the run's checkpoint writer; None: never).

    `save(loop)` receives `LoopState.to_checkpoint()` at an epoch's end when `CheckpointClock`
    says one is due (`trainer.checkpoint_interval_s`, `trainer.checkpoint_every`) or a stop was
    asked for, and mid-epoch when a stop (Ctrl-C) ends the epoch early: the rest of it runs on
    resume. Between two writes, the state of the end of the last good epoch is kept in memory
    (`good`: the loop state and cloned `training_states`), and `save(loop, states)` receives it
    when the loss diverges, so that a diverged run leaves a checkpoint from before it did.
    """

    def __init__(self, save: Callable[..., None] | None, trainer: Any) -> None:
        self.save = save
        self.clock = CheckpointClock(trainer.get("checkpoint_interval_s", 0),
                                     trainer.get("checkpoint_every", 0))
        self.good: tuple[dict[str, Any], dict[str, Any]] | None = None

    def mid_epoch(self, state: Callable[[], LoopState]) -> None:
        if self.save is not None:  # stopped mid-epoch: the rest of it runs on resume
            self.save(state().to_checkpoint())

    def epoch_end(self, epoch: int, state: Callable[[], LoopState],
                  states: Callable[[], dict[str, Any]], stopping: bool) -> None:
        """After `epoch`, when it is not the last: write the state, or keep it for later."""
        if self.save is None:
            return
        if stopping or self.clock.due(epoch):
            self.clock.save(self.save, state().to_checkpoint())
            self.good = None  # on disk already
        else:
            self.good = (state().to_checkpoint(), states())

    def diverged(self) -> None:
        """Write the state of the last good epoch, unless it is on disk already."""
        if self.good is not None:
            self.save(*self.good)

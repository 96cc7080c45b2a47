"""The loss contract: everything the runner may ask of a loss, written down once.

A loss is an `nn.Module` with `forward(input, target)` (input first, as in torch). The class
attributes and hooks below are what the runner (experiment/builders.py, experiment/outcome.py,
engine/loop.py, engine/predict.py) calls; `Loss` gives every hook a default that does nothing,
so a loss overrides only the ones it needs. Every shipped loss subclasses `Loss`. A loss from
outside lossbench may be a plain `nn.Module` that declares only what it needs (the README's
example does): the runner reaches every attribute and hook through `hook(loss, name)`, which
falls back on the defaults below, so both kinds are read the same way.

Attributes
- `tasks`: the dataset tasks the loss fits (`multiclass`, `binary`, `regression`);
- `head`: what the model must output for it: `logits` (K scores; 2 for binary data), `sigmoid`
  (one logit for binary data, K one-vs-rest logits otherwise), `embedding` (`embedding_dim`
  features), or `cosine` (K cosine similarities from a cosine classifier: the model's last
  linear layer is replaced by `lossbench.models.CosineClassifier`, and the run records it);
- `reference`: the paper, shown by `lossbench losses`;
- `needs_class_counts`: the loss is told the training split's class counts before the first
  step (`set_class_counts`); a run of such a loss on a regression task is refused.

Hooks, in the order the runner calls them
1. `setup(task, num_classes)`: size layers the loss owns, once the data is known;
2. `set_class_counts(counts)`: (K,) float64 tensor, the number of training samples per class
   after imbalance, noise and re-sampling, summed over every process under DDP;
3. `on_epoch_start(epoch, epochs)`: before each training epoch (1-based), also when a run
   resumes from a checkpoint (deferred re-weighting switches its weights here);
4. `first_selectable_epoch(epochs)`: the first epoch whose weights may be selected as the best
   (1 for most losses; the switch epoch for deferred re-weighting, so that a run never reports
   weights trained without the part its name promises);
5. `model_loss(model, x, y)` replaces `loss(model(x), y)` when present (adversarial training);
6. `scores(output)`: class probabilities when the head's default (softmax) does not apply;
7. `attack(model, x, y)`: (B, ...) inputs -> (B, ...) adversarial inputs, for a loss that trains
   against an attack; the runner then reports the test split's `robust_accuracy` under that
   attack, named by `describe()`. None (the default): the loss trains on clean inputs only;
8. `describe()`: one line saying what was configured from the data (margins, weights, the
   attack), recorded as `loss_description`; None (the default): nothing to say;
9. `report()`: dict of floats recorded in metrics.json as `loss_params`; None (the default):
   the loss has no parameters of its own to record.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

HEADS = ("logits", "sigmoid", "embedding", "cosine")


class Loss(nn.Module):
    """Base class of a lossbench loss: the attributes and hook defaults of the contract above."""

    tasks: tuple[str, ...] = ("multiclass", "binary")
    head: str = "logits"
    reference: str = ""
    needs_class_counts: bool = False
    # Optional hooks: a loss that has one defines it as a method (or, for `terms`, sets it);
    # None here means "not this loss", and the runner takes its plain path.
    # hook 5: (model, x, y) -> scalar loss, replacing loss(model(x), y)
    model_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # hook 6: (N, ...) outputs -> (N, K) class probabilities; None: `default_scores`
    scores: Callable[[torch.Tensor], torch.Tensor] | None = None
    # hook 7: the attack a loss trains against; None: clean inputs only
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # the named parts of the last value, detached ({"ce": ..., "rce": ...}); the loop records
    # their epoch means as train_loss_<name>. None: a loss of one part
    terms: dict[str, torch.Tensor] | None = None

    def setup(self, task: str, num_classes: int) -> None:
        """Size layers the loss owns (called before the optimizer is built)."""

    def set_class_counts(self, counts: torch.Tensor) -> None:
        """(K,) training samples per class; called before the first step."""

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before training epoch `epoch` of `epochs` (1-based)."""

    def first_selectable_epoch(self, epochs: int) -> int:
        """The earliest epoch whose weights may be kept as the best."""
        return 1

    def describe(self) -> str | None:
        """What was configured from the data; None when there is nothing to say."""
        return None

    def report(self) -> dict[str, float] | None:
        """The loss's own parameters; None for a loss that has none."""
        return None


def hook(loss: nn.Module, name: str) -> Any:
    """The loss's hook or attribute `name` (`hook(loss, "head")`, `hook(loss, "attack")`), or
    the contract's default for losses that do not declare it: the runner's single way of
    reaching one. A default method comes bound to `loss`; a default attribute as it is."""
    own = getattr(loss, name, None)
    if own is not None:
        return own
    default = getattr(Loss, name)
    return default.__get__(loss) if callable(default) else default


def declared_tasks(loss: nn.Module | type) -> tuple[str, ...] | None:
    """The tasks a loss (or loss class) declares it fits; None for one that declares none
    (torch's own losses, used as they are): the runner then leaves the fit to the user."""
    tasks = getattr(loss, "tasks", None)
    return None if tasks is None else tuple(tasks)


def squeeze_output(out: torch.Tensor) -> torch.Tensor:
    """(B, 1) model output -> (B,): one logit or one regression value per sample, the shape
    every one-output loss takes; wider outputs are returned as they are."""
    return out.squeeze(-1) if out.shape[-1] == 1 else out


def needs_class_counts(loss: nn.Module) -> bool:
    return bool(getattr(loss, "needs_class_counts", False))


def default_scores(output: torch.Tensor, head: str) -> torch.Tensor:
    """Class probabilities from a model's outputs, as lossbench reads each head: the contract's
    default `scores` for a loss that does not define its own (and the base of those that do).

    (N,) one logit z per sample: P(class 1) = σ(z), so (N, 2) = [1 − σ(z), σ(z)];
    (N, K) with head `sigmoid`: K one-vs-rest probabilities σ(z_k), normalised to sum to 1;
    (N, K) otherwise: softmax(z). Returns (N, K) (K = 2 for one logit).
    """
    if output.dim() == 1:  # one logit: P(class 1)
        p = torch.sigmoid(output)
        return torch.stack([1 - p, p], dim=-1)
    if head == "sigmoid":  # K one-vs-rest sigmoids, normalised to a distribution
        p = torch.sigmoid(output)
        return p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(output, dim=-1)

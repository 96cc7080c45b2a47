"""A weighted sum of losses composed in config, with fixed or learned (uncertainty) weights."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lossbench.losses._checks import check_choice, check_int, check_range
from lossbench.losses.base import Loss, declared_tasks, default_scores, hook
from lossbench.tasks import TASKS

WEIGHTINGS = ("fixed", "uncertainty")


def combined_head(losses: Mapping[str, nn.Module]) -> str:
    """The head a mix of losses needs; ValueError when their heads cannot share one output."""
    heads = {name: hook(loss, "head") for name, loss in losses.items()}
    kinds = set(heads.values())
    if kinds <= {"logits", "embedding"}:
        return "embedding" if "embedding" in kinds else "logits"
    if kinds == {"sigmoid"}:
        return "sigmoid"
    raise ValueError(f"losses must share a head (logits and embedding terms may mix), got {heads}")


class MixedLoss(Loss):
    r"""A weighted sum of losses, composed in config: L = Σ_i w_i L_i, or with learned weights.

    ``weighting='fixed'``:

    .. math:: L = \sum_i w_i L_i

    ``weighting='uncertainty'`` (Kendall, Gal & Cipolla 2018, "Multi-task learning using
    uncertainty to weigh losses for scene geometry and semantics"), one learned log-variance
    s_i = log σ_i² per term:

    .. math:: L = \sum_i e^{-s_i} w_i L_i + s_i

    (the paper's ½ factors dropped, as is common; s_i starts at 0, and `report()` gives every s_i
    and its weight e^{−s_i} at the end of the run).

    Terms on a shared embedding: when some losses want an embedding (contrastive, triplet,
    supcon) and others logits (ce, mae, ...), the model outputs the embedding (B, D) and this loss
    owns a linear classifier D → K that turns it into logits for the logits terms. The classifier
    is an ordinary submodule, so its parameters reach the optimizer with the loss's parameters
    (lossbench optimizes model and loss parameters together), and the predictions of such a run
    are its softmax (`scores`), not k-nearest neighbours. K is set by `setup(task, num_classes)`,
    which lossbench calls once the data is known (or pass num_classes directly).

    After each forward, `terms` holds every term's unweighted value (detached), which training
    logs per epoch as ``train_loss_<name>``. Each term reduces over its own batch items (pairs for
    contrastive, samples for ce), so the mixed loss always returns a scalar.

    Shapes: as its terms (input (B, K) logits or (B, D) embeddings, target (B,)).
    Hyperparameters: losses (name → loss), weights w_i ∈ [0, ∞) (default 1; > 0 with
    uncertainty weighting, where a zero weight leaves only the term s_i, unbounded below), weighting ∈
    {fixed, uncertainty}, embedding_dim (D, ≥ 1, needed for a shared embedding).
    """

    tasks = ("multiclass", "binary", "regression")  # narrowed to the terms' common tasks
    head = "logits"  # set from the terms
    reference = "Kendall, Gal & Cipolla 2018, uncertainty weighting"

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None,
                 weighting: str = "fixed", embedding_dim: int | None = None,
                 num_classes: int | None = None):
        super().__init__()
        if not losses:
            raise ValueError("losses must name at least one loss, got none")
        for name, loss in losses.items():
            if not isinstance(loss, nn.Module):
                raise ValueError(f"losses.{name} must be a loss module, got {type(loss).__name__}")
        self.losses = nn.ModuleDict(dict(losses))
        weights = dict(weights or {})
        unknown = set(weights) - set(self.losses)
        if unknown:
            raise ValueError(f"weights name unknown losses {sorted(unknown)}; "
                             f"valid names: {sorted(self.losses)}")
        self.weights = {name: check_range(f"weights.{name}", weights.get(name, 1.0), low=0.0)
                        for name in self.losses}
        self.weighting = check_choice("weighting", weighting, WEIGHTINGS)
        if self.weighting == "uncertainty":
            # e^{-s}·0·L + s has the constant gradient 1 in s: s runs to -inf and so does L
            zero = [name for name, w in self.weights.items() if w == 0]
            if zero:
                raise ValueError(f"weights.{zero[0]}=0 with weighting=uncertainty leaves that "
                                 f"term's log-variance unbounded below (the loss has no minimum); "
                                 f"drop the term or use weighting=fixed")
        common = set.intersection(*(set((declared_tasks(loss) or ())) for loss in self.losses.values()))
        if not common:
            raise ValueError(f"losses {sorted(self.losses)} fit no common task")
        self.tasks = tuple(t for t in TASKS if t in common)
        self.head = combined_head(self.losses)
        self.needs_classifier = self.head == "embedding" and any(
            hook(loss, "head") != "embedding" for loss in self.losses.values())
        self.embedding_dim = None if embedding_dim is None else check_int("embedding_dim", embedding_dim, 1)
        if self.needs_classifier and self.embedding_dim is None:
            raise ValueError("embedding_dim must be an integer in [1, inf) when logits and "
                             "embedding losses share an embedding, got None")
        self.classifier: nn.Linear | None = None
        if self.weighting == "uncertainty":
            self.log_vars = nn.Parameter(torch.zeros(len(self.losses)))
        self.terms: dict[str, torch.Tensor] = {}
        if num_classes is not None:
            self.setup(self.tasks[0], num_classes)

    def setup(self, task: str, num_classes: int) -> None:
        """Size the shared-embedding classifier for the data's classes (no-op without one)."""
        if self.needs_classifier and self.classifier is None:
            check_int("num_classes", num_classes, 2)
            self.classifier = nn.Linear(self.embedding_dim, num_classes)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = None
        if self.needs_classifier:
            if self.classifier is None:
                raise RuntimeError("MixedLoss.setup(task, num_classes) must run before forward")
            logits = self.classifier(input)  # (B, D) -> (B, K)
        values = {}
        for name, loss in self.losses.items():
            own_input = input if logits is None or loss.head == "embedding" else logits
            values[name] = loss(own_input, target)
        total = input.new_zeros(())
        for i, (name, value) in enumerate(values.items()):
            weighted = self.weights[name] * value
            if self.weighting == "uncertainty":
                s = self.log_vars[i]
                weighted = torch.exp(-s) * weighted + s
            total = total + weighted
        self.terms = {name: value.detach() for name, value in values.items()}
        return total

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings (shared classifier) or (N, K) logits -> (N, K) class probabilities."""
        if self.classifier is not None:
            return torch.softmax(self.classifier(output), dim=-1)
        return default_scores(output, self.head)

    def report(self) -> dict[str, float]:
        """The learned log-variances s_i and weights e^{−s_i} (uncertainty weighting)."""
        if self.weighting != "uncertainty":
            return {}
        result = {}
        for name, s in zip(self.losses, self.log_vars.detach().tolist()):
            result[f"log_var_{name}"] = s
            result[f"weight_{name}"] = float(torch.exp(torch.tensor(-s)))
        return result

"""Adversarial training: a classification loss evaluated on FGSM or PGD examples."""

from __future__ import annotations

import torch
from torch import nn

from lossbench.losses._checks import check_choice, check_int, check_range
from lossbench.losses.base import Loss, declared_tasks, default_scores, hook, squeeze_output
from lossbench.tasks import CLASSIFICATION

ATTACKS = ("fgsm", "pgd")


class AdversarialLoss(Loss):
    r"""Adversarial training around any classification loss L (Goodfellow, Shlens & Szegedy
    2015, "Explaining and harnessing adversarial examples" for FGSM; Madry et al. 2018,
    "Towards deep learning models resistant to adversarial attacks" for PGD).

    .. math:: \mathcal{L}(x, y) = c\,L(f(x), y) + (1 - c)\,L(f(x + \delta^*), y),
              \qquad \delta^* \approx \arg\max_{\|\delta\|_\infty \le \varepsilon} L(f(x + \delta), y)

    FGSM: δ* = ε·sign(∇ₓL). PGD: from a uniform random start in the ε-ball, `steps` steps
    δ ← clip_ε(δ + step_size·sign(∇_δ L)). ε is in the units of the model's input, which lossbench
    standardises per feature, so ε = 0.1 is a tenth of a feature's standard deviation; inputs are
    not clipped to a pixel range.

    Training goes through the `model_loss(model, x, y)` hook; `forward(input, target)` is the
    wrapped loss on clean outputs (the validation loss). `attack(model, x, y)` makes adversarial
    inputs, with which lossbench reports robust accuracy on the test split. `terms` holds the
    clean and adversarial loss values of the last batch.

    Shapes: those of the wrapped loss. Hyperparameters: loss (a classification loss with a
    logits or sigmoid head), attack ∈ {fgsm, pgd}, epsilon ε ∈ (0, ∞), steps ≥ 1 (PGD),
    step_size ∈ (0, ∞) or None (2.5·ε/steps, as Madry et al.), clean_fraction c ∈ [0, 1]
    (Goodfellow et al.: 0.5).
    """

    tasks = ("multiclass", "binary")  # narrowed to the wrapped loss's
    head = "logits"  # the wrapped loss's
    reference = "Goodfellow et al. 2015 (FGSM); Madry et al. 2018 (PGD)"

    def __init__(self, loss: nn.Module, attack: str = "pgd", epsilon: float = 0.1,
                 steps: int = 5, step_size: float | None = None, clean_fraction: float = 0.5):
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise ValueError(f"loss must be a loss module, got {type(loss).__name__}")
        head = hook(loss, "head")
        tasks = tuple(t for t in (declared_tasks(loss) or ()) if t in CLASSIFICATION)
        if head not in ("logits", "sigmoid") or not tasks:
            raise ValueError(f"loss must be a classification loss with a logits or sigmoid head, "
                             f"got {type(loss).__name__} (head {head}, tasks {declared_tasks(loss) or ()})")
        self.loss = loss
        self.head, self.tasks = head, tasks
        self.attack_name = check_choice("attack", attack, ATTACKS)
        self.epsilon = check_range("epsilon", epsilon, low=0.0, low_open=True)
        steps = check_int("steps", steps, 1)
        self.steps = 1 if attack == "fgsm" else steps
        if step_size is None:
            step_size = self.epsilon if attack == "fgsm" else 2.5 * self.epsilon / self.steps
        self.step_size = check_range("step_size", step_size, low=0.0, low_open=True)
        self.clean_fraction = check_range("clean_fraction", clean_fraction, 0.0, 1.0)
        self.terms: dict[str, torch.Tensor] = {}

    def describe(self) -> str:
        steps = "" if self.attack_name == "fgsm" else f", {self.steps} steps of {self.step_size:g}"
        return f"{self.attack_name.upper()} (epsilon={self.epsilon:g}{steps})"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(input, target)

    def attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, ...) inputs -> (B, ...) adversarial inputs within ε (L∞) of x, detached."""
        x = x.detach()
        if self.attack_name == "pgd":
            delta = torch.empty_like(x).uniform_(-self.epsilon, self.epsilon)
        else:
            delta = torch.zeros_like(x)
        with torch.enable_grad():
            for _ in range(self.steps):
                delta.requires_grad_(True)
                loss = self.loss(squeeze_output(model(x + delta)), y)
                (grad,) = torch.autograd.grad(loss, delta)  # no parameter gradients accumulate
                delta = (delta.detach() + self.step_size * grad.sign()).clamp(-self.epsilon, self.epsilon)
        return (x + delta).detach()

    def model_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adversarial = self.loss(squeeze_output(model(self.attack(model, x, y))), y)
        terms = {"adversarial": adversarial.detach()}
        total = (1 - self.clean_fraction) * adversarial
        if self.clean_fraction > 0:
            clean = self.loss(squeeze_output(model(x)), y)
            terms["clean"] = clean.detach()
            total = total + self.clean_fraction * clean
        self.terms = terms
        return total

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        if hook(self.loss, "scores") is not None:
            return self.loss.scores(output)
        return default_scores(output, self.head)

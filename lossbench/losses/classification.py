"""Classification losses on logits: cross-entropy (with label smoothing), focal, Poly-1, binary
cross-entropy and the multi-class hinge.

Every loss here takes `forward(input, target)` in torch's order: `input` holds the model's raw
logits, `target` the integer class indices. Probabilities are never formed and then logged:
log-softmax / log-sigmoid keep logits of ±1e4 finite, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import (check_binary_target, check_bool, check_range,
                                      check_reduction, reduce)
from lossbench.losses.base import Loss, default_scores


def target_log_prob(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K) logits, (N,) classes -> (N,) log softmax(z)_y."""
    return F.log_softmax(input, dim=-1).gather(-1, target.long().unsqueeze(-1)).squeeze(-1)


def log_one_minus_target_prob(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K) logits -> (N,) log(1 − p_y) = logsumexp_{k≠y} z_k − logsumexp_k z_k.

    Computed from the logits, so it stays finite (and its gradient too) when p_y rounds to 1.
    """
    own = F.one_hot(target.long(), input.shape[-1]).bool()
    others = input.masked_fill(own, float("-inf"))
    return torch.logsumexp(others, dim=-1) - torch.logsumexp(input, dim=-1)


class CrossEntropyLoss(Loss):
    r"""Categorical cross-entropy on logits, optionally with label smoothing.

    .. math:: \ell(z, y) = -(1 - \varepsilon)\log p_y - \frac{\varepsilon}{K}\sum_{k=1}^K \log p_k,
              \qquad p = \mathrm{softmax}(z)

    With ε = 0 this is the plain maximum-likelihood loss −log p_y, whose gradient with respect
    to the logits is softmax(z) − onehot(y). With ε > 0 the target is the smoothed distribution
    (1 − ε)·onehot(y) + ε/K (Szegedy et al. 2016, "Rethinking the Inception architecture for
    computer vision"), as in ``torch.nn.functional.cross_entropy(..., label_smoothing=ε)``.

    Shapes: input (N, K) logits, target (N,) class indices in [0, K). Returns a scalar, or (N,)
    with ``reduction='none'``. Hyperparameters: label_smoothing ε ∈ [0, 1].
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "maximum likelihood; label smoothing: Szegedy et al. 2016"

    def __init__(self, label_smoothing: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.label_smoothing = check_range("label_smoothing", label_smoothing, 0.0, 1.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # torch's fused kernel computes exactly the formula above (log-softmax inside), and is
        # the hot path of the default run; tests check it against a loop over samples.
        return F.cross_entropy(input, target.long(), reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


class FocalLoss(Loss):
    r"""Focal loss of Lin et al. (2017), "Focal loss for dense object detection".

    Binary data (one logit per sample, sigmoid focal as in the paper), with p = σ(z),
    p_t = p if y = 1 else 1 − p, α_t = α if y = 1 else 1 − α:

    .. math:: \ell(z, y) = -\alpha_t (1 - p_t)^\gamma \log p_t

    Multiclass data (K logits, softmax focal), with p = softmax(z):

    .. math:: \ell(z, y) = -\alpha (1 - p_y)^\gamma \log p_y

    where α is then a constant factor (the α-balanced form with one α for every class).
    ``alpha=None`` drops the α factor in both cases. The modulating factor is computed as
    exp(γ·log(1 − p_t)) from the logits, so saturated predictions stay finite.

    Shapes: binary: input (N,) logits, target (N,) in {0, 1}; multiclass: input (N, K), target
    (N,) class indices. Head ``sigmoid``: lossbench gives binary data one logit and multiclass data
    K logits. Hyperparameters: gamma γ ∈ [0, ∞) (paper: 2), alpha α ∈ [0, 1] or None (paper: 0.25).
    """

    tasks = ("binary", "multiclass")
    head = "sigmoid"
    reference = "Lin et al. 2017, Focal loss for dense object detection"

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, reduction: str = "mean"):
        super().__init__()
        self.gamma = check_range("gamma", gamma, low=0.0)
        self.alpha = None if alpha is None else check_range("alpha", alpha, 0.0, 1.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 1:  # (N,) sigmoid focal
            check_binary_target(target)
            t = target.to(input.dtype)
            signed = torch.where(target.bool(), input, -input)  # z_t: log p_t = log σ(z_t)
            log_pt = F.logsigmoid(signed)
            log_1m_pt = F.logsigmoid(-signed)
            alpha_t = None if self.alpha is None else self.alpha * t + (1 - self.alpha) * (1 - t)
        else:  # (N, K) softmax focal
            log_pt = target_log_prob(input, target)
            log_1m_pt = log_one_minus_target_prob(input, target)
            alpha_t = self.alpha
        per_sample = -torch.exp(self.gamma * log_1m_pt) * log_pt
        if alpha_t is not None:
            per_sample = alpha_t * per_sample
        return reduce(per_sample, self.reduction)

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """Class probabilities as the loss models them: sigmoid (binary), softmax (multiclass):
        K logits are a softmax focal loss's, not one-vs-rest sigmoids, whatever the head."""
        return default_scores(output, "logits")


class Poly1Loss(Loss):
    r"""Poly-1 cross-entropy of Leng et al. (2022), "PolyLoss: a polynomial expansion
    perspective of classification loss functions".

    .. math:: \ell(z, y) = -\log p_y + \varepsilon (1 - p_y), \qquad p = \mathrm{softmax}(z)

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: epsilon ε ∈ [−1, ∞)
    (paper: 1 for image classification; ε = −1 removes the first polynomial term).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Leng et al. 2022, PolyLoss"

    def __init__(self, epsilon: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.epsilon = check_range("epsilon", epsilon, low=-1.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_py = target_log_prob(input, target)
        per_sample = -log_py + self.epsilon * (1 - log_py.exp())
        return reduce(per_sample, self.reduction)


class BCEWithLogitsLoss(Loss):
    r"""Binary cross-entropy on logits; one-vs-rest over K logits for multiclass data.

    .. math:: \ell(z, t) = -[t \log\sigma(z) + (1 - t)\log(1 - \sigma(z))]

    With ŷ = σ(z), the gradient is ∂ℓ/∂z = ŷ − t (prediction minus target, per sample before
    the 1/N of the mean; not t − ŷ). Like torch's ``BCEWithLogitsLoss()(input, target)`` the
    logits come first: swapping them computes a different, meaningless number.

    Shapes: binary data: input (N,) one logit per sample, target (N,) in {0, 1}; multiclass
    data: input (N, K), target (N,) class indices, compared with one-hot targets column by
    column and averaged over the K columns.
    """

    tasks = ("binary", "multiclass")
    head = "sigmoid"
    reference = "maximum likelihood (Bernoulli); one-vs-rest for K classes"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 1:  # (N,) binary
            check_binary_target(target)
            t = target.to(input.dtype)
            per_sample = F.binary_cross_entropy_with_logits(input, t, reduction="none")
        else:  # (N, K) one-vs-rest
            t = F.one_hot(target.long(), input.shape[-1]).to(input.dtype)
            per_sample = F.binary_cross_entropy_with_logits(input, t, reduction="none").mean(-1)
        return reduce(per_sample, self.reduction)


class MultiMarginHingeLoss(Loss):
    r"""Multi-class margin (hinge) loss of Weston & Watkins (1999), "Support vector machines
    for multi-class pattern recognition", in torch's ``multi_margin_loss`` form.

    .. math:: \ell(z, y) = \frac{1}{K}\sum_{k \ne y} \max(0,\ m - z_y + z_k)^p,
              \qquad p = 2 \text{ if squared else } 1

    Shapes: input (N, K) logits (scores), target (N,) class indices. Hyperparameters: margin
    m ∈ (0, ∞), squared (bool).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Weston & Watkins 1999, multi-class SVM"

    def __init__(self, margin: float = 1.0, squared: bool = False, reduction: str = "mean"):
        super().__init__()
        self.margin = check_range("margin", margin, low=0.0, low_open=True)
        self.squared = check_bool("squared", squared)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z_y = input.gather(-1, target.long().unsqueeze(-1))  # (N, 1)
        gaps = (self.margin - z_y + input).clamp_min(0)  # (N, K); the k = y entry is m
        if self.squared:
            gaps = gaps.pow(2)
        own = F.one_hot(target.long(), input.shape[-1]).bool()
        per_sample = gaps.masked_fill(own, 0.0).sum(-1) / input.shape[-1]
        return reduce(per_sample, self.reduction)

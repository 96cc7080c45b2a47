"""Losses robust to label noise: bounded or symmetric alternatives to cross-entropy.

All take `forward(input, target)` with input (N, K) logits and target (N,) class indices, and
work from log-softmax so that logits of ±1e4 stay finite. p = softmax(z) below. Defaults are
the published settings for MNIST-like data (10 classes, symmetric noise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import check_range, check_reduction, reduce
from lossbench.losses.classification import log_one_minus_target_prob, target_log_prob
from lossbench.losses.base import Loss


def _one_minus_py(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) 1 − p_y, exact also when p_y rounds to 1."""
    return log_one_minus_target_prob(input, target).exp()


def _nce(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) normalised cross-entropy −log p_y / Σ_k −log p_k."""
    log_p = F.log_softmax(input, dim=-1)
    return log_p.gather(-1, target.long().unsqueeze(-1)).squeeze(-1) / log_p.sum(-1)


class MAELoss(Loss):
    r"""Mean absolute error on probabilities, robust to symmetric label noise (Ghosh, Kumar &
    Sastry 2017, "Robust loss functions under label noise for deep neural networks"; the
    passive MAE of Ma et al. 2020).

    .. math:: \ell(z, y) = 1 - p_y

    (half of ‖onehot(y) − p‖₁). Shapes: input (N, K) logits, target (N,) class indices.
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Ghosh et al. 2017, Robust loss functions under label noise"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce(_one_minus_py(input, target), self.reduction)


class GCELoss(Loss):
    r"""Generalized cross-entropy of Zhang & Sabuncu (2018), "Generalized cross entropy loss for
    training deep neural networks with noisy labels" (the L_q loss).

    .. math:: \ell(z, y) = \frac{1 - p_y^{\,q}}{q}

    q → 0 gives cross-entropy, q = 1 gives MAE. p_y^q is computed as exp(q·log p_y).
    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: q ∈ (0, 1]
    (paper: 0.7).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Zhang & Sabuncu 2018, Generalized cross entropy"

    def __init__(self, q: float = 0.7, reduction: str = "mean"):
        super().__init__()
        self.q = check_range("q", q, 0.0, 1.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = -torch.expm1(self.q * target_log_prob(input, target)) / self.q
        return reduce(per_sample, self.reduction)


# A, the value that stands for log 0 in the reverse cross-entropy: log(1e-4), as in the code the
# published β settings of SCE and NCE+RCE were tuned with (labels clamped to [1e-4, 1]).
LOG_1E_4 = math.log(1e-4)


class RCELoss(Loss):
    r"""Reverse cross-entropy of Wang et al. (2019), "Symmetric cross entropy for robust
    learning with noisy labels": the cross-entropy with prediction and label swapped,
    log 0 being replaced by a constant A < 0.

    .. math:: \ell(z, y) = -\sum_k p_k \log q_k = -A\,(1 - p_y),
              \qquad q = \mathrm{onehot}(y),\ \log 0 := A

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: log_zero A ∈ (−∞, 0).
    Default A = log(1e-4) ≈ −9.21, the value of the authors' code (one-hot labels clamped to
    1e-4 before the log), with which the published β of SCE and NCE+RCE were tuned; the paper's
    text says −4, under which those β act 4 / 9.21 ≈ 0.43 times as strongly.
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Wang et al. 2019, Symmetric cross entropy"

    def __init__(self, log_zero: float = LOG_1E_4, reduction: str = "mean"):
        super().__init__()
        self.log_zero = check_range("log_zero", log_zero, high=0.0, high_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce(-self.log_zero * _one_minus_py(input, target), self.reduction)


class _ActivePassive(Loss):
    r"""The per-sample sum α·active + β·passive of a bounded ("passive") term and a fitting
    ("active") one, the form Ma et al. (2020) name active-passive and SCE already had. SCE,
    NCE+RCE and NCE+MAE differ only in their two terms and their defaults.

    Subclasses define `active(input, target)` and `passive(input, target)`, each (N,) from
    (N, K) logits and (N,) classes, and their defaults. log_zero A ∈ (−∞, 0) is the
    replacement of log 0 in the reverse cross-entropy RCE = (−A)(1 − p_y), for those using it.
    """

    tasks = ("multiclass", "binary")
    head = "logits"

    def __init__(self, alpha: float, beta: float, log_zero: float | None = None,
                 reduction: str = "mean"):
        super().__init__()
        self.alpha = check_range("alpha", alpha, low=0.0)
        self.beta = check_range("beta", beta, low=0.0)
        if log_zero is not None:
            self.log_zero = check_range("log_zero", log_zero, high=0.0, high_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = (self.alpha * self.active(input, target)
                      + self.beta * self.passive(input, target))
        return reduce(per_sample, self.reduction)

    def rce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(N,) reverse cross-entropy (−A)(1 − p_y)."""
        return -self.log_zero * _one_minus_py(input, target)


class SCELoss(_ActivePassive):
    r"""Symmetric cross-entropy of Wang et al. (2019), "Symmetric cross entropy for robust
    learning with noisy labels".

    .. math:: \ell(z, y) = \alpha\,(-\log p_y) + \beta\,(-A)(1 - p_y)

    (cross-entropy plus reverse cross-entropy, A the replacement of log 0).
    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: alpha α ∈ [0, ∞),
    beta β ∈ [0, ∞) (published MNIST setting: α = 0.01, β = 1), log_zero A ∈ (−∞, 0). The
    defaults are one pairing from one source, the authors' code: its β with its A = log(1e-4)
    ≈ −9.21 (the paper's text says A = −4, which makes β act 0.43 times as strongly).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Wang et al. 2019, Symmetric cross entropy"

    def __init__(self, alpha: float = 0.01, beta: float = 1.0, log_zero: float = LOG_1E_4,
                 reduction: str = "mean"):
        super().__init__(alpha, beta, log_zero, reduction)

    def active(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -target_log_prob(input, target)  # cross-entropy

    passive = _ActivePassive.rce


class NCELoss(Loss):
    r"""Normalized cross-entropy of Ma et al. (2020), "Normalized loss functions for deep
    learning with noisy labels": cross-entropy divided by its sum over all labels.

    .. math:: \ell(z, y) = \frac{-\log p_y}{-\sum_{k=1}^K \log p_k} \in (0, 1]

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: scale (a positive
    factor, 1 by default).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Ma et al. 2020, Normalized loss functions (active-passive)"

    def __init__(self, scale: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.scale = check_range("scale", scale, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce(self.scale * _nce(input, target), self.reduction)


class NCERCELoss(_ActivePassive):
    r"""Active-passive loss NCE+RCE of Ma et al. (2020), "Normalized loss functions for deep
    learning with noisy labels".

    .. math:: \ell(z, y) = \alpha\,\mathrm{NCE}(z, y) + \beta\,(-A)(1 - p_y)

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: alpha α ∈ [0, ∞),
    beta β ∈ [0, ∞) (published MNIST setting: α = 1, β = 10), log_zero A ∈ (−∞, 0). The
    defaults pair as in the authors' code: that β with its A = log(1e-4) ≈ −9.21 (the SCE
    paper's text says −4, under which β would act 0.43 times as strongly).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Ma et al. 2020, Normalized loss functions (active-passive)"

    def __init__(self, alpha: float = 1.0, beta: float = 10.0, log_zero: float = LOG_1E_4,
                 reduction: str = "mean"):
        super().__init__(alpha, beta, log_zero, reduction)

    active = staticmethod(_nce)
    passive = _ActivePassive.rce


class NCEMAELoss(_ActivePassive):
    r"""Active-passive loss NCE+MAE of Ma et al. (2020), "Normalized loss functions for deep
    learning with noisy labels".

    .. math:: \ell(z, y) = \alpha\,\mathrm{NCE}(z, y) + \beta\,(1 - p_y)

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameters: alpha α ∈ [0, ∞),
    beta β ∈ [0, ∞) (published MNIST setting: α = 1, β = 10).
    """

    tasks = ("multiclass", "binary")
    head = "logits"
    reference = "Ma et al. 2020, Normalized loss functions (active-passive)"

    def __init__(self, alpha: float = 1.0, beta: float = 10.0, reduction: str = "mean"):
        super().__init__(alpha, beta, reduction=reduction)

    active = staticmethod(_nce)
    passive = staticmethod(_one_minus_py)  # MAE

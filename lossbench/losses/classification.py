"""Classification losses on logits: categorical and binary cross-entropy.

Every loss here takes `forward(input, target)` in torch's order: `input` holds the model's raw
logits, `target` the integer class indices. Probabilities are never formed and then logged:
log-softmax / log-sigmoid keep logits of ±1e4 finite, gradients included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import check_reduction, reduce


class CrossEntropyLoss(nn.Module):
    r"""Categorical cross-entropy on logits.

    .. math:: \ell(z, y) = -\log \mathrm{softmax}(z)_y = -z_y + \log\sum_k e^{z_k}

    Shapes: input (N, K) logits, target (N,) class indices in [0, K). Returns a scalar, or (N,)
    with ``reduction='none'``. The gradient with respect to the logits is softmax(z) − onehot(y).
    Reference: the standard maximum-likelihood loss; torch.nn.functional.cross_entropy.
    """

    tasks = ("multiclass", "binary")
    head = "logits"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_sample = -F.log_softmax(input, dim=-1).gather(-1, target.long().unsqueeze(-1))
        return reduce(per_sample.squeeze(-1), self.reduction)


class BCEWithLogitsLoss(nn.Module):
    r"""Binary cross-entropy on logits; one-vs-rest over K logits for multiclass data.

    .. math:: \ell(z, t) = -[t \log\sigma(z) + (1 - t)\log(1 - \sigma(z))]

    With ŷ = σ(z), the gradient is ∂ℓ/∂z = ŷ − t (prediction minus target; not t − ŷ).
    Shapes: binary data: input (N,) one logit per sample, target (N,) in {0, 1}; multiclass
    data: input (N, K), target (N,) class indices, compared with one-hot targets column by
    column and averaged over the K columns. Like torch's ``BCEWithLogitsLoss()(input, target)``
    the logits come first: swapping them computes a different, meaningless number.
    """

    tasks = ("binary", "multiclass")
    head = "sigmoid"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 1:  # (N,) binary
            t = target.to(input.dtype)
            per_sample = F.binary_cross_entropy_with_logits(input, t, reduction="none")
        else:  # (N, K) one-vs-rest
            t = F.one_hot(target.long(), input.shape[-1]).to(input.dtype)
            per_sample = F.binary_cross_entropy_with_logits(input, t, reduction="none").mean(-1)
        return reduce(per_sample, self.reduction)

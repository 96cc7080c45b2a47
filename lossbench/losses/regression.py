"""Regression losses, and squared error that also serves classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import check_reduction, reduce


class MSELoss(nn.Module):
    r"""Mean squared error.

    .. math:: \ell(\hat y, y) = (\hat y - y)^2

    Regression: input (N,) predictions, target (N,) values.
    Classification: input (N, K) raw logits (not probabilities), target (N,) class indices,
    compared with one-hot vectors and averaged over the K outputs: the square loss that
    Hui & Belkin (2021, "Evaluation of neural architectures trained with square loss vs
    cross-entropy in classification tasks") found competitive with cross-entropy.
    """

    tasks = ("regression", "multiclass", "binary")
    head = "logits"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 2 and not target.is_floating_point():  # (N, K) vs class indices
            t = F.one_hot(target.long(), input.shape[-1]).to(input.dtype)
            per_sample = (input - t).pow(2).mean(-1)
        else:
            per_sample = (input - target.to(input.dtype)).pow(2)
        return reduce(per_sample, self.reduction)

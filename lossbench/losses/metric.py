"""Metric-learning losses: the model outputs an embedding, pairs are formed inside each batch."""

from __future__ import annotations

import torch
from torch import nn

from lossbench.losses._checks import check_range, check_reduction, reduce


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, with a gradient that stays finite at distance 0."""
    sq = (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(1e-12).sqrt()


class ContrastiveLoss(nn.Module):
    r"""Contrastive loss of Hadsell, Chopra & LeCun (2006), "Dimensionality reduction by
    learning an invariant mapping".

    For every pair i < j in the batch with distance d = ||e_i − e_j||₂:

    .. math:: \ell_{ij} = \tfrac12 s_{ij} d^2 + \tfrac12 (1 - s_{ij}) \max(0, m - d)^2

    where s_ij = 1 when y_i = y_j (similar: pulled together) and 0 otherwise (dissimilar: pushed
    beyond the margin m). Shapes: input (B, D) embeddings, target (B,) class indices. Returns the
    mean over the B(B−1)/2 pairs, or the (B(B−1)/2,) pair losses with ``reduction='none'``.
    """

    tasks = ("multiclass", "binary")
    head = "embedding"

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = check_range("margin", margin, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        i, j = torch.triu_indices(len(target), len(target), offset=1, device=input.device)
        d = pairwise_distances(input)[i, j]  # (P,)
        similar = (target[i] == target[j]).to(input.dtype)
        per_pair = 0.5 * similar * d.pow(2) + 0.5 * (1 - similar) * (self.margin - d).clamp_min(0).pow(2)
        return reduce(per_pair, self.reduction)

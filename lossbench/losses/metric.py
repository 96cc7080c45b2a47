"""Metric-learning losses: the model outputs an embedding, pairs are formed inside each batch.

Shapes: input (B, D) embeddings, target (B,) class indices. Head ``embedding``: the model outputs
`embedding_dim` features and is evaluated by k-nearest neighbours on the training embeddings.
A batch without a usable pair or triplet gives a zero loss (with a gradient of zeros).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import check_choice, check_range, check_reduction, reduce
from lossbench.losses.base import Loss


def pairwise_squared_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) squared Euclidean distances (differences first: no cancellation)."""
    return (embeddings.unsqueeze(1) - embeddings.unsqueeze(0)).pow(2).sum(-1)


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, with a gradient that stays finite at distance 0."""
    return pairwise_squared_distances(embeddings).clamp_min(1e-12).sqrt()


def _empty(input: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss of a batch with nothing to compare: zero, still attached to the graph."""
    none = input.sum() * 0
    return none.reshape(1)[:0] if reduction == "none" else none


class ContrastiveLoss(Loss):
    r"""Contrastive loss of Hadsell, Chopra & LeCun (2006), "Dimensionality reduction by
    learning an invariant mapping".

    For every pair i < j in the batch with distance d = ||e_i − e_j||₂:

    .. math:: \ell_{ij} = \tfrac12 s_{ij} d^2 + \tfrac12 (1 - s_{ij}) \max(0, m - d)^2

    where s_ij = 1 when y_i = y_j (similar: pulled together) and 0 otherwise (dissimilar: pushed
    beyond the margin m). Shapes: input (B, D) embeddings, target (B,) class indices. Returns the
    mean over the B(B−1)/2 pairs, or the (B(B−1)/2,) pair losses with ``reduction='none'``.
    Hyperparameters: margin m ∈ (0, ∞).
    """

    tasks = ("multiclass", "binary")
    head = "embedding"
    reference = "Hadsell, Chopra & LeCun 2006, Dimensionality reduction by learning an invariant mapping"

    def __init__(self, margin: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.margin = check_range("margin", margin, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if len(target) < 2:
            return _empty(input, self.reduction)
        i, j = torch.triu_indices(len(target), len(target), offset=1, device=input.device)
        sq = pairwise_squared_distances(input)[i, j]  # (P,)
        d = sq.clamp_min(1e-12).sqrt()
        similar = (target[i] == target[j]).to(input.dtype)
        per_pair = 0.5 * similar * sq + 0.5 * (1 - similar) * (self.margin - d).clamp_min(0).pow(2)
        return reduce(per_pair, self.reduction)


class TripletLoss(Loss):
    r"""Triplet margin loss (Schroff, Kalenichenko & Philbin 2015, "FaceNet"), with the triplets
    mined inside the batch (Hermans, Beyer & Leibe 2017, "In defense of the triplet loss").

    For an anchor a, a positive p (same class, p ≠ a) and a negative n (other class):

    .. math:: \ell(a, p, n) = \max(0,\ d(a, p) - d(a, n) + m), \qquad d = \|\cdot\|_2

    Shapes: input (B, D) embeddings, target (B,) class indices.
    ``mining='batch_all'``: every valid (a, p, n) triplet of the batch, averaged (or the
    (T,) triplet losses with ``reduction='none'``). ``mining='batch_hard'``: one triplet per anchor,
    its farthest positive and nearest negative ((A,) per anchor with ``reduction='none'``).
    Hyperparameters: margin m ∈ (0, ∞), mining ∈ {batch_all, batch_hard}. Batch-all forms a
    (B, B, B) tensor: memory grows as B³ (2M entries at B = 128).
    """

    tasks = ("multiclass", "binary")
    head = "embedding"
    reference = "Schroff et al. 2015, FaceNet; mining: Hermans et al. 2017"

    def __init__(self, margin: float = 1.0, mining: str = "batch_all", reduction: str = "mean"):
        super().__init__()
        self.margin = check_range("margin", margin, low=0.0, low_open=True)
        self.mining = check_choice("mining", mining, ("batch_all", "batch_hard"))
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = pairwise_distances(input)  # (B, B)
        same = target.unsqueeze(0) == target.unsqueeze(1)  # (B, B)
        eye = torch.eye(len(target), dtype=torch.bool, device=input.device)
        positive = same & ~eye
        negative = ~same
        if self.mining == "batch_all":
            # valid[a, p, n]: p a positive of a, n a negative of a
            valid = positive.unsqueeze(2) & negative.unsqueeze(1)  # (B, B, B)
            if not valid.any():
                return _empty(input, self.reduction)
            gaps = d.unsqueeze(2) - d.unsqueeze(1) + self.margin  # d(a,p) − d(a,n) + m
            return reduce(gaps[valid].clamp_min(0), self.reduction)
        anchors = positive.any(1) & negative.any(1)  # (B,) anchors with a positive and a negative
        if not anchors.any():
            return _empty(input, self.reduction)
        hardest_pos = d.masked_fill(~positive, float("-inf")).amax(1)  # (B,)
        hardest_neg = d.masked_fill(~negative, float("inf")).amin(1)  # (B,)
        per_anchor = (hardest_pos - hardest_neg + self.margin)[anchors].clamp_min(0)
        return reduce(per_anchor, self.reduction)


class SupConLoss(Loss):
    r"""Supervised contrastive loss of Khosla et al. (2020), "Supervised contrastive learning"
    (the L_out form); with one positive per anchor it is NT-Xent (Chen et al. 2020, SimCLR).

    Embeddings are L2-normalised, s_ij = e_i·e_j / τ. For an anchor i with positives P(i) (same
    class, j ≠ i) and A(i) = every j ≠ i:

    .. math:: \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
              \log \frac{\exp s_{ip}}{\sum_{a \in A(i)} \exp s_{ia}}

    Shapes: input (B, D) embeddings, target (B,) class indices.
    Anchors without a positive are left out; the mean is over the remaining anchors ((A,) with
    ``reduction='none'``). Hyperparameters: temperature τ ∈ (0, ∞) (paper: 0.1).
    """

    tasks = ("multiclass", "binary")
    head = "embedding"
    reference = "Khosla et al. 2020, Supervised contrastive learning"

    def __init__(self, temperature: float = 0.1, reduction: str = "mean"):
        super().__init__()
        self.temperature = check_range("temperature", temperature, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = F.normalize(input, dim=-1)
        sim = z @ z.T / self.temperature  # (B, B)
        eye = torch.eye(len(target), dtype=torch.bool, device=input.device)
        positive = (target.unsqueeze(0) == target.unsqueeze(1)) & ~eye
        anchors = positive.any(1)
        if not anchors.any():
            return _empty(input, self.reduction)
        log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        pos_sum = log_prob.masked_fill(~positive, 0.0).sum(1)  # (B,)
        per_anchor = -pos_sum[anchors] / positive.sum(1)[anchors]
        return reduce(per_anchor, self.reduction)

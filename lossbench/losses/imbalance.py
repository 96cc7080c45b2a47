r"""Losses for class-imbalanced (long-tailed) training data: re-weighting, class-balanced
weights, label-distribution-aware margins (LDAM), deferred re-weighting (DRW) and logit
adjustment (with balanced softmax as its τ = 1 case).

Each needs the training split's class counts n_c (K,), which lossbench hands to it through
`set_class_counts` before the first step (see `lossbench.losses.base`). Class priors are
π_c = n_c / Σ_k n_k. A class with no training sample counts as one sample for the weights
(it never appears as a target, so its weight never enters a loss value).

Normalisation conventions, stated once:
- weight vectors are normalised to sum to K (so on balanced data every weight is 1);
- a weighted softmax cross-entropy with ``reduction='mean'`` divides by the batch's summed
  weights, Σ_i w_{y_i} ℓ_i / Σ_i w_{y_i}, as torch's ``F.cross_entropy(weight=...)`` and the
  LDAM-DRW authors' code do;
- class-balanced sigmoid and focal losses divide by the batch size N (Cui et al.'s code), the
  sigmoid one also by K (the mean over the N·K one-vs-rest terms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lossbench.losses._checks import check_choice, check_range, check_reduction, reduce
from lossbench.losses.base import Loss

WEIGHTINGS = ("inverse", "sqrt_inverse", "class_balanced")
CB_BASES = ("ce", "focal", "sigmoid")


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """(K,) positive weights scaled to sum to K."""
    return weights * (len(weights) / weights.sum())


def inverse_frequency_weights(counts: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """w_c ∝ n_c^(−power), normalised to sum to K (power 1: inverse, 1/2: square-root inverse)."""
    return normalised(counts.clamp_min(1).pow(-power))


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Weights by the effective number of samples (Cui et al. 2019):

    .. math:: w_c \propto \frac{1 - \beta}{1 - \beta^{n_c}}, \qquad \sum_c w_c = K

    E_n = (1 − β^n)/(1 − β) is the expected volume covered by n samples. β → 1 gives E_n → n
    (inverse-frequency weights); β = 0 gives E_n = 1 (uniform weights). Where the weights sit
    between the two depends on β·n: with n = 100 samples, β = 0.9 already makes β^n ≈ 3e-5, so
    every class of 100 or more samples weighs the same (uniform in practice); β = 0.9999 keeps
    1 − β^n ≈ n(1 − β), i.e. nearly inverse frequency, for classes up to a few thousand samples.
    """
    beta = float(beta)
    if beta == 0.0:
        return torch.ones_like(counts)
    effective = (1.0 - torch.pow(torch.as_tensor(beta, dtype=counts.dtype),
                                 counts.clamp_min(1))) / (1.0 - beta)
    return normalised(1.0 / effective)


class ClassCountsLoss(Loss):
    """Shared part of the losses below: the class counts (a buffer, so that a checkpoint and
    loss.pt carry them) and deferred re-weighting.

    Deferred re-weighting (Cao et al. 2019, "DRW"): the class weights are off (all 1) for the
    first ⌊drw_start · E⌋ of the E epochs and on from the next one, so the representation is
    learned from the plain distribution first and the weights only re-balance the decision
    boundary. The switch depends only on the epoch, which the checkpoint holds: a resumed run
    switches at the same epoch. Selection of the best epoch starts at the switch (see
    `first_selectable_epoch`): a DRW run never reports weights trained without DRW.
    """

    tasks = ("multiclass", "binary")
    needs_class_counts = True

    def __init__(self, drw_start: float | None = None, reduction: str = "mean"):
        super().__init__()
        self.drw_start = None if drw_start is None else check_range(
            "drw_start", drw_start, 0.0, 1.0, low_open=True, high_open=True)
        self.reduction = check_reduction(reduction)
        self.register_buffer("class_counts", None)
        # 1.0 while the class weights apply; DRW turns it on at its switch epoch
        self.register_buffer("weights_on", torch.tensor(0.0 if self.drw_start else 1.0))

    def set_class_counts(self, counts: torch.Tensor) -> None:
        self.class_counts = torch.as_tensor(counts, dtype=torch.float64).clone()

    def counts(self) -> torch.Tensor:
        if self.class_counts is None:
            raise RuntimeError(f"{type(self).__name__} has no class counts: call "
                               "set_class_counts(counts) before the first forward")
        return self.class_counts

    def drw_switch_epoch(self, epochs: int) -> int:
        """The first epoch trained with the class weights (1-based): ⌊drw_start · E⌋ + 1."""
        return 1 if self.drw_start is None else math.floor(self.drw_start * epochs) + 1

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.weights_on.fill_(1.0 if epoch >= self.drw_switch_epoch(epochs) else 0.0)

    def first_selectable_epoch(self, epochs: int) -> int:
        return self.drw_switch_epoch(epochs)

    def class_weights(self) -> torch.Tensor:
        """(K,) float64 weights at full strength (what DRW switches on)."""
        return torch.ones_like(self.counts())

    def active_weights(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The weights this step uses, or None while they are off (DRW before its switch)."""
        if not bool(self.weights_on):
            return None
        return self.class_weights().to(dtype)

    def report(self) -> dict[str, float]:
        weights = self.class_weights()
        out = {f"class_weight_{c}": float(w) for c, w in enumerate(weights)}
        if self.drw_start is not None:
            out["drw_weights_on"] = float(self.weights_on)
        return out


class WeightedCELoss(ClassCountsLoss):
    r"""Class-weighted cross-entropy, the first re-weighting users try.

    .. math:: \ell(z, y) = -w_y \log \mathrm{softmax}(z)_y,
              \qquad \text{mean: } \frac{\sum_i \ell_i}{\sum_i w_{y_i}}

    Weights: ``inverse`` w_c ∝ 1/n_c; ``sqrt_inverse`` w_c ∝ 1/√n_c; ``class_balanced``
    w_c ∝ (1 − β)/(1 − β^{n_c}) (Cui et al. 2019); or an explicit list of K weights (used as
    given, not normalised). Computed weights are normalised to sum to K. The mean divides by the
    batch's summed weights, as torch's ``F.cross_entropy(weight=w)``.

    ``drw_start`` ∈ (0, 1) defers the weights to that fraction of the epochs (CE-DRW of Cao et
    al. 2019 with ``weights=class_balanced``, β = 0.9999, drw_start = 0.8).

    Shapes: input (N, K) logits, target (N,) class indices.
    """

    reference = "re-weighting by class frequency; DRW: Cao et al. 2019"

    def __init__(self, weights: str | Sequence[float] = "inverse", beta: float = 0.9999,
                 drw_start: float | None = None, reduction: str = "mean"):
        super().__init__(drw_start, reduction)
        if isinstance(weights, str):
            self.weighting = check_choice("weights", weights, WEIGHTINGS)
            self.given = None
        else:
            given = torch.as_tensor([float(w) for w in weights], dtype=torch.float64)
            if len(given) == 0 or not bool((given >= 0).all()) or not bool(given.isfinite().all()):
                raise ValueError(f"weights must be non-negative numbers, got {list(weights)}")
            self.weighting, self.given = "given", given
        self.beta = check_range("beta", beta, 0.0, 1.0, high_open=True)

    def set_class_counts(self, counts: torch.Tensor) -> None:
        if self.given is not None and len(self.given) != len(counts):
            raise ValueError(f"weights has {len(self.given)} values but the data has "
                             f"{len(counts)} classes")
        super().set_class_counts(counts)

    def class_weights(self) -> torch.Tensor:
        counts = self.counts()
        if self.weighting == "given":
            return self.given.to(counts.device)
        if self.weighting == "class_balanced":
            return class_balanced_weights(counts, self.beta)
        return inverse_frequency_weights(counts, 1.0 if self.weighting == "inverse" else 0.5)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(input, target.long(), weight=self.active_weights(input.dtype),
                               reduction=self.reduction)

    def describe(self) -> str:
        drw = f", deferred to epoch fraction {self.drw_start}" if self.drw_start else ""
        return f"weighted_ce ({self.weighting} weights{drw})"


class ClassBalancedLoss(ClassCountsLoss):
    r"""Class-balanced loss of Cui et al. (2019), "Class-balanced loss based on effective
    number of samples": a base loss weighted per class by the inverse effective number,

    .. math:: \ell(z, y) = w_y\, L(z, y), \qquad
              w_c = K \frac{(1 - \beta)/(1 - \beta^{n_c})}{\sum_k (1 - \beta)/(1 - \beta^{n_k})}

    with L one of (p = softmax(z), σ the sigmoid, t = onehot(y)):
    - ``ce``: −log p_y; the mean divides by Σ_i w_{y_i} (torch's weighted mean);
    - ``sigmoid``: Σ_k BCE(z_k, t_k); the mean divides by N·K (the authors' mean over all terms);
    - ``focal``: Σ_k (1 − p_{t,k})^γ BCE(z_k, t_k), sigmoid focal per class, p_{t,k} = σ(z_k)
      if t_k = 1 else 1 − σ(z_k); the mean divides by N (the authors' code divides by Σ t).

    β ∈ [0, 1): near 1 the weights approach inverse frequency, at 0 they are uniform; at
    β = 0.9 every class with more than ~50 samples gets the same weight (see
    `class_balanced_weights`). The paper tunes β ∈ {0.9, 0.99, 0.999, 0.9999}.

    Shapes: input (N, K) logits, target (N,) class indices.
    """

    reference = "Cui et al. 2019, Class-balanced loss based on effective number of samples"

    def __init__(self, beta: float = 0.9999, base: str = "ce", gamma: float = 1.0,
                 drw_start: float | None = None, reduction: str = "mean"):
        super().__init__(drw_start, reduction)
        self.beta = check_range("beta", beta, 0.0, 1.0, high_open=True)
        self.base = check_choice("base", base, CB_BASES)
        self.gamma = check_range("gamma", gamma, low=0.0)

    def class_weights(self) -> torch.Tensor:
        return class_balanced_weights(self.counts(), self.beta)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        weights = self.active_weights(input.dtype)
        if self.base == "ce":
            return F.cross_entropy(input, target, weight=weights, reduction=self.reduction)
        w = torch.ones(len(target), dtype=input.dtype, device=input.device) if weights is None \
            else weights[target]  # (N,)
        t = F.one_hot(target, input.shape[-1]).to(input.dtype)  # (N, K)
        bce = F.binary_cross_entropy_with_logits(input, t, reduction="none")  # (N, K)
        if self.base == "sigmoid":
            per_sample = w * bce.mean(-1)
        else:  # focal: (1 − p_t)^γ = σ(−z_t)^γ with z_t = z if t = 1 else −z, from the logits
            signed = torch.where(t.bool(), input, -input)
            per_sample = w * (torch.exp(self.gamma * F.logsigmoid(-signed)) * bce).sum(-1)
        return reduce(per_sample, self.reduction)

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        """Softmax for the softmax base; normalised one-vs-rest sigmoids otherwise."""
        if self.base == "ce":
            return torch.softmax(output, dim=-1)
        p = torch.sigmoid(output)
        return p / p.sum(-1, keepdim=True).clamp_min(1e-12)

    def describe(self) -> str:
        drw = f", deferred to epoch fraction {self.drw_start}" if self.drw_start else ""
        return f"class_balanced ({self.base}, beta={self.beta:g}{drw})"


class LDAMLoss(ClassCountsLoss):
    r"""Label-distribution-aware margin loss of Cao et al. (2019), "Learning imbalanced
    datasets with label-distribution-aware margin loss", as the authors' code computes it.

    .. math:: \ell(z, y) = -w_y \log \frac{e^{s(z_y - \Delta_y)}}
              {e^{s(z_y - \Delta_y)} + \sum_{k \ne y} e^{s z_k}},
              \qquad \Delta_c = C\, n_c^{-1/4}, \quad C = \frac{m_{max}}{\max_c n_c^{-1/4}}

    so the rarest class gets the largest margin, m_max (0.5). The model ends in a cosine
    classifier (head ``cosine``: z_k = cos(x, W_k) ∈ [−1, 1]), and s (30) scales the cosines into
    logits. Weights w are 1, or with ``drw_start`` the class-balanced weights (β = 0.9999) from
    that fraction of the epochs on: LDAM-DRW. The mean divides by Σ_i w_{y_i}.

    Shapes: input (N, K) cosines, target (N,) class indices. Predictions: argmax_k z_k; class
    probabilities softmax(s·z).
    """

    head = "cosine"
    reference = "Cao et al. 2019, LDAM loss (LDAM-DRW)"

    def __init__(self, max_margin: float = 0.5, s: float = 30.0, drw_start: float | None = None,
                 beta: float = 0.9999, reduction: str = "mean"):
        super().__init__(drw_start, reduction)
        self.max_margin = check_range("max_margin", max_margin, low=0.0, low_open=True)
        self.s = check_range("s", s, low=0.0, low_open=True)
        self.beta = check_range("beta", beta, 0.0, 1.0, high_open=True)

    def margins(self) -> torch.Tensor:
        """(K,) Δ_c ∝ n_c^(−1/4), the largest equal to max_margin."""
        m = self.counts().clamp_min(1).pow(-0.25)
        return m * (self.max_margin / m.max())

    def class_weights(self) -> torch.Tensor:
        return class_balanced_weights(self.counts(), self.beta)

    def active_weights(self, dtype: torch.dtype) -> torch.Tensor | None:
        # plain LDAM has no class weights; only DRW switches them on
        return None if self.drw_start is None else super().active_weights(dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        own = F.one_hot(target, input.shape[-1]).to(input.dtype)  # (N, K)
        shifted = input - own * self.margins().to(input.dtype)[target].unsqueeze(-1)
        return F.cross_entropy(self.s * shifted, target, weight=self.active_weights(input.dtype),
                               reduction=self.reduction)

    def scores(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.s * output, dim=-1)

    def describe(self) -> str:
        drw = f", DRW from epoch fraction {self.drw_start}" if self.drw_start else ""
        return f"ldam (max margin {self.max_margin:g}, s={self.s:g}{drw})"

    def report(self) -> dict[str, float]:
        out = {f"margin_{c}": float(m) for c, m in enumerate(self.margins())}
        if self.drw_start is not None:
            out.update(super().report())
        return out


class LogitAdjustedLoss(ClassCountsLoss):
    r"""Logit-adjusted cross-entropy of Menon et al. (2021), "Long-tail learning via logit
    adjustment":

    .. math:: \ell(z, y) = -\log \frac{e^{z_y + \tau \log \pi_y}}{\sum_k e^{z_k + \tau \log \pi_k}}

    Training fits z + τ·log π to the (imbalanced) training distribution, so the model's own
    logits z estimate the balanced one: predictions are argmax_k z_k, with no prior added. τ = 1
    is the balanced softmax of Ren et al. (2020) (z_k + log n_k differs from z_k + log π_k by the
    constant log N, which the softmax cancels): config `balanced_softmax`. π_c + 1e-12 inside the
    logarithm keeps a class absent from training finite, as the authors' code does.

    Shapes: input (N, K) logits, target (N,) class indices. Hyperparameter: tau τ ≥ 0 (paper: 1).
    """

    reference = "Menon et al. 2021, logit adjustment; τ=1: Ren et al. 2020, balanced softmax"

    def __init__(self, tau: float = 1.0, reduction: str = "mean"):
        super().__init__(None, reduction)
        self.tau = check_range("tau", tau, low=0.0)

    def log_prior(self) -> torch.Tensor:
        """(K,) log π_c."""
        counts = self.counts()
        return torch.log(counts / counts.sum() + 1e-12)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        adjusted = input + self.tau * self.log_prior().to(input.dtype)
        return F.cross_entropy(adjusted, target.long(), reduction=self.reduction)

    def describe(self) -> str:
        return f"logit_adjusted (tau={self.tau:g})"

    def report(self) -> dict[str, float]:
        return {}


class PosthocLogitAdjustment(torch.nn.Module):
    r"""A trained model whose logits are adjusted after training (Menon et al. 2021, post-hoc
    logit adjustment): z_k − τ·log π_k, so that argmax picks the class that would win on
    balanced data. Used by `lossbench eval RUN --logit-adjust TAU`; the weights are untouched.
    """

    def __init__(self, model: torch.nn.Module, counts: torch.Tensor, tau: float):
        super().__init__()
        self.model = model
        prior = counts.to(torch.float64) / counts.sum()
        self.register_buffer("offset", (-float(tau) * torch.log(prior + 1e-12)).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, K)
        return self.model(x) + self.offset.to(x.device)

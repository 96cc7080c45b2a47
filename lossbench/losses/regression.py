"""Regression losses on a residual e = ŷ − y, and squared error that also serves classification.

Regression shapes: input (N,) predictions (one output per sample, standardised target units),
target (N,) values. Returns a scalar, or (N,) with ``reduction='none'``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lossbench.losses._checks import (check_bool, check_range, check_reduction, check_same_shape,
                                      reduce)
from lossbench.losses.base import Loss


def _residual(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """ŷ − y, per sample: input and target of one shape, never broadcast against each other."""
    check_same_shape(input, target)
    return input - target.to(input.dtype)


class MSELoss(Loss):
    r"""Mean squared error.

    .. math:: \ell(\hat y, y) = (\hat y - y)^2

    Shapes: regression: input (N,) predictions, target (N,) values.
    Classification: input (N, K) raw logits (not probabilities), target (N,) class indices,
    compared with one-hot vectors and averaged over the K outputs: the square loss that
    Hui & Belkin (2021, "Evaluation of neural architectures trained with square loss vs
    cross-entropy in classification tasks") found competitive with cross-entropy.
    """

    tasks = ("regression", "multiclass", "binary")
    head = "logits"
    reference = "Gauss/Legendre least squares; classification: Hui & Belkin 2021"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() == 2 and not target.is_floating_point():  # (N, K) vs class indices
            t = F.one_hot(target.long(), input.shape[-1]).to(input.dtype)
            per_sample = (input - t).pow(2).mean(-1)
        else:
            per_sample = _residual(input, target).pow(2)
        return reduce(per_sample, self.reduction)


class L1Loss(Loss):
    r"""Mean absolute error, the median regression loss.

    .. math:: \ell(\hat y, y) = |\hat y - y|

    Shapes: input (N,) predictions, target (N,) values.
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Laplace; least absolute deviations"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return reduce(_residual(input, target).abs(), self.reduction)


class HuberLoss(Loss):
    r"""Huber loss (Huber 1964, "Robust estimation of a location parameter"): quadratic near
    zero, linear beyond δ.

    .. math:: \ell(e) = \begin{cases} \tfrac12 e^2 & |e| \le \delta \\
              \delta (|e| - \tfrac12 \delta) & \text{otherwise} \end{cases}, \qquad e = \hat y - y

    Shapes: input (N,) predictions, target (N,) values. Hyperparameters: delta δ ∈ (0, ∞).
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Huber 1964, Robust estimation of a location parameter"

    def __init__(self, delta: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.delta = check_range("delta", delta, low=0.0, low_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = _residual(input, target).abs()
        quadratic = a.clamp(max=self.delta)  # min(|e|, δ): the quadratic part
        per_sample = 0.5 * quadratic.pow(2) + self.delta * (a - quadratic)
        return reduce(per_sample, self.reduction)


class SmoothL1Loss(Loss):
    r"""Smooth L1 loss (Girshick 2015, "Fast R-CNN"): Huber divided by β.

    .. math:: \ell(e) = \begin{cases} \tfrac12 e^2 / \beta & |e| < \beta \\
              |e| - \tfrac12 \beta & \text{otherwise} \end{cases}

    Shapes: input (N,) predictions, target (N,) values. Hyperparameters: beta β ∈ [0, ∞)
    (β = 0 is the L1 loss).
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Girshick 2015, Fast R-CNN"

    def __init__(self, beta: float = 1.0, reduction: str = "mean"):
        super().__init__()
        self.beta = check_range("beta", beta, low=0.0)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = _residual(input, target).abs()
        if self.beta == 0:
            return reduce(a, self.reduction)
        quadratic = a.clamp(max=self.beta)
        per_sample = 0.5 * quadratic.pow(2) / self.beta + (a - quadratic)
        return reduce(per_sample, self.reduction)


class LogCoshLoss(Loss):
    r"""Log-cosh loss: ½e² near zero, |e| − log 2 far away, smooth everywhere.

    .. math:: \ell(e) = \log\cosh(e) = |e| + \log(1 + e^{-2|e|}) - \log 2

    The right-hand form never overflows (cosh(1e4) would). Reference: the log-cosh loss of
    robust statistics, e.g. Chen et al. 2019, "Log hyperbolic cosine loss improves variational
    auto-encoder". Shapes: input (N,) predictions, target (N,) values.
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Chen et al. 2019, Log hyperbolic cosine loss"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        a = _residual(input, target).abs()
        per_sample = a + F.softplus(-2 * a) - math.log(2.0)
        return reduce(per_sample, self.reduction)


class QuantileLoss(Loss):
    r"""Quantile (pinball) loss of Koenker & Bassett (1978), "Regression quantiles": its
    minimiser is the τ-quantile of y.

    .. math:: \ell(\hat y, y) = \max(\tau (y - \hat y),\ (\tau - 1)(y - \hat y))

    Shapes: input (N,) predictions, target (N,) values. Hyperparameters: tau τ ∈ (0, 1)
    (0.5: half the absolute error).
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Koenker & Bassett 1978, Regression quantiles"

    def __init__(self, tau: float = 0.5, reduction: str = "mean"):
        super().__init__()
        self.tau = check_range("tau", tau, 0.0, 1.0, low_open=True, high_open=True)
        self.reduction = check_reduction(reduction)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e = -_residual(input, target)  # y − ŷ
        per_sample = torch.maximum(self.tau * e, (self.tau - 1) * e)
        return reduce(per_sample, self.reduction)


def general_robust_loss(x: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    r"""Barron's ρ(x, α, c) for 0 < α < 2, elementwise:

    .. math:: \rho(x, \alpha, c) = \frac{|\alpha - 2|}{\alpha}
              \left[\left(\frac{(x/c)^2}{|\alpha - 2|} + 1\right)^{\alpha/2} - 1\right]

    The power is taken as exp(α/2 · log1p(·)) so residuals of 1e4 stay finite.
    """
    b = (alpha - 2).abs()
    return b / alpha * torch.expm1(alpha / 2 * torch.log1p((x / scale).pow(2) / b))


# Quadrature grid for the partition function, in u with x = sinh(u): the substitution reaches
# |x| ≈ 5e12 so even the Cauchy-like tails of α → 0 are integrated, while du = 0.005 resolves the
# Gaussian-like core of α → 2. Trapezoidal sums of smooth decaying integrands converge fast.
_U_MAX, _U_STEPS = 30.0, 6001


def log_partition(alpha: torch.Tensor) -> torch.Tensor:
    r"""log Z(α), Z(α) = ∫ exp(−ρ(x, α, 1)) dx, by a differentiable trapezoidal rule (float64)."""
    u = torch.linspace(0.0, _U_MAX, _U_STEPS, dtype=torch.float64, device=alpha.device)
    a = alpha.to(torch.float64)
    x = torch.sinh(u)
    log_integrand = -general_robust_loss(x, a, torch.ones((), dtype=torch.float64,
                                                          device=alpha.device)) + torch.log(torch.cosh(u))
    du = u[1] - u[0]
    weights = torch.full_like(u, float(du))
    weights[0] = weights[-1] = float(du) / 2
    # ∫_{-∞}^{∞} = 2 ∫_0^∞ (the integrand is even)
    return (torch.logsumexp(log_integrand + weights.log(), dim=0) + math.log(2.0)).to(alpha.dtype)


class AdaptiveRobustLoss(Loss):
    r"""The general and adaptive robust loss of Barron (2019), "A general and adaptive robust
    loss function", with shape α and scale c learned by gradient descent.

    The loss is the negative log-likelihood of Barron's distribution p(x | α, c) =
    exp(−ρ(x, α, c)) / (c Z(α)) of the residual x = ŷ − y:

    .. math:: \ell(x) = \rho(x, \alpha, c) + \log c + \log Z(\alpha)

    with ρ as in `general_robust_loss` (α = 1: pseudo-Huber √((x/c)² + 1) − 1; α → 2: ½(x/c)²;
    α → 0: log(½(x/c)² + 1)). Minimising ρ alone would let c grow without bound; the log c and
    log Z(α) terms are what make α and c learnable. Z(α) is integrated numerically.

    Parameters: α = lo + (hi − lo)·sigmoid(a) with lo, hi = alpha_range (paper: 0.001, 1.999),
    c = softplus(s) + scale_min; a and s are `nn.Parameter`s, so they reach the optimizer, and
    `report()` gives their current values. With learn_alpha / learn_scale false they stay at
    their initial values. The loss may be negative (a log-density); it is smallest at x = 0.

    Shapes: input (N,) predictions, target (N,) values. Hyperparameters: alpha (initial) inside
    alpha_range, scale (initial) > scale_min, alpha_range ⊂ [0.001, 1.999] (the range where Z is
    integrated), scale_min ∈ (0, ∞).
    """

    tasks = ("regression",)
    head = "logits"
    reference = "Barron 2019, A general and adaptive robust loss function"

    def __init__(self, alpha: float = 1.0, scale: float = 1.0, learn_alpha: bool = True,
                 learn_scale: bool = True, alpha_range: tuple[float, float] = (0.001, 1.999),
                 scale_min: float = 1e-5, reduction: str = "mean"):
        super().__init__()
        if len(alpha_range) != 2:
            raise ValueError(f"alpha_range must be two numbers [lo, hi], got {alpha_range!r}")
        lo = check_range("alpha_range[0]", alpha_range[0], 0.001, 1.999)
        hi = check_range("alpha_range[1]", alpha_range[1], lo, 1.999, low_open=True)
        alpha = check_range("alpha", alpha, lo, hi, low_open=True, high_open=True)
        self.scale_min = check_range("scale_min", scale_min, low=0.0, low_open=True)
        scale = check_range("scale", scale, low=self.scale_min, low_open=True)
        self.alpha_lo, self.alpha_hi = lo, hi
        self.reduction = check_reduction(reduction)
        fraction = (alpha - lo) / (hi - lo)
        alpha_latent = torch.tensor(math.log(fraction / (1 - fraction)))
        scale_latent = torch.tensor(math.log(math.expm1(scale - self.scale_min)))
        self.alpha_latent = nn.Parameter(alpha_latent, requires_grad=check_bool("learn_alpha", learn_alpha))
        self.scale_latent = nn.Parameter(scale_latent, requires_grad=check_bool("learn_scale", learn_scale))

    def alpha(self) -> torch.Tensor:
        return self.alpha_lo + (self.alpha_hi - self.alpha_lo) * torch.sigmoid(self.alpha_latent)

    def scale(self) -> torch.Tensor:
        return F.softplus(self.scale_latent) + self.scale_min

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        alpha, scale = self.alpha().to(input.dtype), self.scale().to(input.dtype)
        x = _residual(input, target)
        per_sample = general_robust_loss(x, alpha, scale) + scale.log() + log_partition(alpha)
        return reduce(per_sample, self.reduction)

    def report(self) -> dict[str, float]:
        """The learned shape and scale, recorded in metrics.json as loss_params."""
        with torch.no_grad():
            return {"alpha": float(self.alpha()), "scale": float(self.scale())}

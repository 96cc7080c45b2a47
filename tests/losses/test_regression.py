"""Regression losses against torch's built-ins and per-sample formulas; Barron's adaptive loss
against numerical integration with scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_properties import assert_finite_with_grad, assert_reductions_agree, assert_rejects, gradcheck
from scipy import integrate

from lossbench.losses import (AdaptiveRobustLoss, HuberLoss, L1Loss, LogCoshLoss, MSELoss,
                              QuantileLoss, SmoothL1Loss)
from lossbench.losses.regression import general_robust_loss, log_partition


def sample(n=32, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g, dtype=dtype) * scale,
            torch.randn(n, generator=g, dtype=dtype) * scale)


LOSSES = {
    "mse": lambda reduction="mean": MSELoss(reduction),
    "l1": lambda reduction="mean": L1Loss(reduction),
    "huber": lambda reduction="mean": HuberLoss(0.7, reduction),
    "smooth_l1": lambda reduction="mean": SmoothL1Loss(0.5, reduction),
    "smooth_l1_zero": lambda reduction="mean": SmoothL1Loss(0.0, reduction),
    "log_cosh": lambda reduction="mean": LogCoshLoss(reduction),
    "quantile": lambda reduction="mean": QuantileLoss(0.8, reduction),
    "adaptive_robust": lambda reduction="mean": AdaptiveRobustLoss(0.5, 2.0, reduction=reduction),
}


def test_against_torch_built_ins():
    pred, y = sample()
    torch.testing.assert_close(MSELoss()(pred, y), F.mse_loss(pred, y))
    torch.testing.assert_close(L1Loss()(pred, y), F.l1_loss(pred, y))
    for delta in (0.1, 1.0, 5.0):
        torch.testing.assert_close(HuberLoss(delta)(pred, y), F.huber_loss(pred, y, delta=delta))
    for beta in (0.0, 0.5, 1.0, 4.0):
        torch.testing.assert_close(SmoothL1Loss(beta)(pred, y), F.smooth_l1_loss(pred, y, beta=beta))


def test_log_cosh_and_quantile_match_per_sample_formulas():
    pred, y = sample(seed=1)
    cosh = [math.log(math.cosh(p - t)) for p, t in zip(pred.tolist(), y.tolist())]
    torch.testing.assert_close(LogCoshLoss(reduction="none")(pred, y), torch.tensor(cosh, dtype=torch.float64))
    for tau in (0.1, 0.5, 0.9):
        pinball = [max(tau * (t - p), (tau - 1) * (t - p)) for p, t in zip(pred.tolist(), y.tolist())]
        torch.testing.assert_close(QuantileLoss(tau, reduction="none")(pred, y),
                                   torch.tensor(pinball, dtype=torch.float64))


def test_quantile_minimiser_is_the_quantile():
    """Minimising the pinball loss over a constant recovers the τ-quantile of the targets."""
    y = torch.randn(2001, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grid = torch.linspace(-3, 3, 6001, dtype=torch.float64)
    loss = QuantileLoss(0.9)
    values = torch.stack([loss(c.expand_as(y), y) for c in grid])
    assert abs(float(grid[values.argmin()]) - float(torch.quantile(y, 0.9))) < 2e-3


def barron_rho(x, alpha, c):
    b = abs(alpha - 2)
    return b / alpha * (((x / c) ** 2 / b + 1) ** (alpha / 2) - 1)


@pytest.mark.parametrize("alpha", [0.001, 0.2, 1.0, 1.7, 1.999])
def test_log_partition_matches_scipy_quadrature(alpha):
    z, _ = integrate.quad(lambda x: math.exp(-barron_rho(x, alpha, 1.0)), -np.inf, np.inf, limit=500)
    got = float(log_partition(torch.tensor(alpha, dtype=torch.float64)))
    assert got == pytest.approx(math.log(z), abs=1e-8)


@pytest.mark.parametrize("alpha,scale", [(0.3, 0.5), (1.0, 1.0), (1.9, 2.0)])
def test_adaptive_robust_is_the_negative_log_likelihood_per_sample(alpha, scale):
    pred, y = sample(n=12, seed=3)
    z, _ = integrate.quad(lambda x: math.exp(-barron_rho(x, alpha, 1.0)), -np.inf, np.inf, limit=500)
    expected = [barron_rho(p - t, alpha, scale) + math.log(scale) + math.log(z)
                for p, t in zip(pred.tolist(), y.tolist())]
    loss = AdaptiveRobustLoss(alpha, scale, reduction="none").double()
    torch.testing.assert_close(loss(pred, y), torch.tensor(expected, dtype=torch.float64))
    # the special cases named in the paper
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    one = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(general_robust_loss(x, one, one), (x ** 2 + 1).sqrt() - 1)
    near_two = torch.tensor(1.9999, dtype=torch.float64)
    torch.testing.assert_close(general_robust_loss(x, near_two, one), x ** 2 / 2, rtol=1e-3, atol=1e-3)


def test_adaptive_robust_parameters_learn_and_are_reported():
    loss = AdaptiveRobustLoss()
    names = {name for name, p in loss.named_parameters() if p.requires_grad}
    assert names == {"alpha_latent", "scale_latent"}
    assert loss.report() == pytest.approx({"alpha": 1.0, "scale": 1.0})
    # heavy-tailed residuals: maximum likelihood drives alpha down from 1
    torch.manual_seed(4)
    residual = torch.distributions.StudentT(1.0).sample((2000,)).float()
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss(residual, torch.zeros_like(residual)).backward()
        opt.step()
    learned = loss.report()
    assert learned["alpha"] < 0.7
    frozen = AdaptiveRobustLoss(alpha=1.5, learn_alpha=False, learn_scale=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_gradcheck_adaptive_robust_in_residual_alpha_and_scale():
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    nll = lambda x, a, c: (general_robust_loss(x, a, c) + c.log() + log_partition(a)).sum()
    assert torch.autograd.gradcheck(nll, (x, alpha, scale), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_float64(name):
    pred, y = sample(n=8, seed=5)
    assert gradcheck(LOSSES[name]().double(), pred, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=40, deadline=None)
@given(pred=st.lists(st.sampled_from([-1e4, -3.0, 0.0, 0.5, 1e4]), min_size=1, max_size=8),
       data=st.data())
def test_finite_at_extreme_values_and_reductions_agree(name, pred, data):
    y = torch.tensor(data.draw(st.lists(st.floats(-3, 3), min_size=len(pred), max_size=len(pred))))
    pred = torch.tensor(pred)
    values = assert_finite_with_grad(LOSSES[name]("none"), pred, y)
    if name != "adaptive_robust":  # a log-density: may be negative
        assert (values >= 0).all()
    assert_reductions_agree(LOSSES[name], pred, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=30, deadline=None)
@given(y=st.lists(st.floats(-5, 5), min_size=1, max_size=8),
       offset=st.floats(-4, 4).filter(lambda v: abs(v) > 1e-3))
def test_exact_prediction_is_minimal(name, y, offset):
    y = torch.tensor(y, dtype=torch.float64)
    loss = LOSSES[name]("none").double()
    at_target = loss(y.clone(), y)
    assert (at_target < loss(y + offset, y)).all()
    if name != "adaptive_robust":
        assert (at_target == 0).all()


@pytest.mark.parametrize("make,bad", [
    (HuberLoss, {"delta": 0.0}), (HuberLoss, {"delta": -1.0}),
    (SmoothL1Loss, {"beta": -0.1}),
    (QuantileLoss, {"tau": 0.0}), (QuantileLoss, {"tau": 1.0}),
    (L1Loss, {"reduction": "avg"}), (LogCoshLoss, {"reduction": None}),
    (AdaptiveRobustLoss, {"alpha": 0.0}), (AdaptiveRobustLoss, {"alpha": 2.0}),
    (AdaptiveRobustLoss, {"scale": 0.0}), (AdaptiveRobustLoss, {"scale_min": -1.0}),
    (AdaptiveRobustLoss, {"alpha_range": (0.5, 0.2)}),
    (AdaptiveRobustLoss, {"alpha_range": (0.0, 1.0)}),
    (AdaptiveRobustLoss, {"learn_alpha": "no"}), (AdaptiveRobustLoss, {"learn_scale": 1}),
    (AdaptiveRobustLoss, {"alpha_range": (0.5,)}), (AdaptiveRobustLoss, {"reduction": "all"}),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(make, bad):
    assert_rejects(make, **bad)

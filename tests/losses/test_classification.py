"""Classification losses against torch's built-ins, torchvision's sigmoid focal loss and
per-sample loops written from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_properties import (assert_finite_with_grad, assert_reductions_agree, assert_rejects,
                             gradcheck, logits_and_classes)
from torchvision.ops import sigmoid_focal_loss

from lossbench.losses import (BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss, MSELoss,
                              MultiMarginHingeLoss, Poly1Loss)


def sample(n=16, k=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale, torch.randint(0, k, (n,), generator=g)


# Every logits-head classification loss of this family, built with non-default hyperparameters.
MULTICLASS = {
    "ce": lambda reduction="mean": CrossEntropyLoss(reduction=reduction),
    "label_smoothing": lambda reduction="mean": CrossEntropyLoss(0.2, reduction=reduction),
    "focal": lambda reduction="mean": FocalLoss(gamma=1.5, alpha=0.3, reduction=reduction),
    "poly1": lambda reduction="mean": Poly1Loss(epsilon=2.0, reduction=reduction),
    "bce": lambda reduction="mean": BCEWithLogitsLoss(reduction=reduction),
    "hinge": lambda reduction="mean": MultiMarginHingeLoss(0.5, reduction=reduction),
    "hinge_squared": lambda reduction="mean": MultiMarginHingeLoss(squared=True, reduction=reduction),
    "mse": lambda reduction="mean": MSELoss(reduction=reduction),
}


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_cross_entropy_matches_torch_with_label_smoothing(eps):
    x, y = sample()
    torch.testing.assert_close(CrossEntropyLoss(eps)(x, y), F.cross_entropy(x, y, label_smoothing=eps))


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, 0.5), (1.0, None), (3.5, 0.9)])
def test_binary_focal_matches_torchvision(gamma, alpha):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(64, generator=g) * 4
    y = torch.randint(0, 2, (64,), generator=g)
    expected = sigmoid_focal_loss(z, y.float(), alpha=-1 if alpha is None else alpha, gamma=gamma,
                                  reduction="mean")
    torch.testing.assert_close(FocalLoss(gamma, alpha)(z, y), expected)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.5, None)])
def test_softmax_focal_matches_per_sample_formula(gamma, alpha):
    x, y = sample(seed=2)
    expected = []
    for logits, c in zip(x.double().tolist(), y.tolist()):
        p = math.exp(logits[c]) / sum(math.exp(v) for v in logits)
        expected.append(-(alpha if alpha is not None else 1.0) * (1 - p) ** gamma * math.log(p))
    got = FocalLoss(gamma, alpha, reduction="none")(x.double(), y)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_cross_entropy_matches_a_loop_over_samples_from_the_formula(eps):
    x, y = torch.randn(7, 4, dtype=torch.float64) * 3, torch.randint(0, 4, (7,))
    expected = []
    for z, k in zip(x.tolist(), y.tolist()):
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_p = [v - log_norm for v in z]
        expected.append(-(1 - eps) * log_p[k] - eps / len(z) * sum(log_p))
    got = CrossEntropyLoss(eps, reduction="none")(x, y)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_focal_with_gamma_zero_is_cross_entropy():
    x, y = sample(seed=3)
    torch.testing.assert_close(FocalLoss(0.0, None)(x, y), F.cross_entropy(x, y))


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
def test_poly1_matches_per_sample_formula(epsilon):
    x, y = sample(seed=4)
    expected = []
    for logits, c in zip(x.double().tolist(), y.tolist()):
        p = math.exp(logits[c]) / sum(math.exp(v) for v in logits)
        expected.append(-math.log(p) + epsilon * (1 - p))
    torch.testing.assert_close(Poly1Loss(epsilon, reduction="none")(x.double(), y),
                               torch.tensor(expected, dtype=torch.float64))


def test_bce_matches_torch_on_one_logit_and_one_vs_rest():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(32, generator=g) * 3
    t = torch.randint(0, 2, (32,), generator=g)
    torch.testing.assert_close(BCEWithLogitsLoss()(z, t),
                               F.binary_cross_entropy_with_logits(z, t.float()))
    x, y = sample(seed=5)
    torch.testing.assert_close(BCEWithLogitsLoss()(x, y),
                               F.binary_cross_entropy_with_logits(x, F.one_hot(y, 5).float()))


def test_bce_gradient_is_prediction_minus_target():
    g = torch.Generator().manual_seed(6)
    z = (torch.randn(20, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    t = torch.randint(0, 2, (20,), generator=g)
    BCEWithLogitsLoss(reduction="sum")(z, t).backward()
    y_hat = torch.sigmoid(z.detach())
    torch.testing.assert_close(z.grad, y_hat - t.double())
    assert not torch.allclose(z.grad, t.double() - y_hat)  # the sign the seed document had
    z.grad = None
    BCEWithLogitsLoss()(z, t).backward()  # the mean divides by N, nothing else
    torch.testing.assert_close(z.grad, (y_hat - t.double()) / 20)


def test_swapped_bce_with_logits_call_gives_a_different_value():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(16, generator=g) * 2
    target = torch.randint(0, 2, (16,), generator=g).float()
    right = torch.nn.BCEWithLogitsLoss()(logits, target)
    swapped = torch.nn.BCEWithLogitsLoss()(target, logits)
    torch.testing.assert_close(BCEWithLogitsLoss()(logits, target.long()), right)
    assert not torch.isclose(right, swapped)


@pytest.mark.parametrize("margin,squared", [(1.0, False), (0.5, True), (2.0, False)])
def test_hinge_matches_torch_multi_margin_loss(margin, squared):
    x, y = sample(seed=8)
    expected = F.multi_margin_loss(x, y, p=2 if squared else 1, margin=margin)
    torch.testing.assert_close(MultiMarginHingeLoss(margin, squared)(x, y), expected)


def test_mse_on_classes_compares_logits_with_one_hot_and_keeps_regression():
    x, y = sample(seed=9)
    expected = [sum((v - (1.0 if j == c else 0.0)) ** 2 for j, v in enumerate(row)) / 5
                for row, c in zip(x.double().tolist(), y.tolist())]
    torch.testing.assert_close(MSELoss(reduction="none")(x.double(), y),
                               torch.tensor(expected, dtype=torch.float64))
    pred, target = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(MSELoss()(pred, target), F.mse_loss(pred, target))


@pytest.mark.parametrize("name", sorted(MULTICLASS))
def test_gradcheck_float64(name):
    x, y = sample(n=6, k=4, seed=10, scale=1.0)
    assert gradcheck(MULTICLASS[name](), x, y)


def test_gradcheck_binary_focal_and_bce():
    z = torch.randn(8, dtype=torch.float64)
    t = torch.randint(0, 2, (8,))
    assert gradcheck(FocalLoss(), z, t)
    assert gradcheck(BCEWithLogitsLoss(), z, t)


@pytest.mark.parametrize("name", sorted(MULTICLASS))
@settings(max_examples=40, deadline=None)
@given(data=logits_and_classes())
def test_finite_non_negative_and_reductions_agree(name, data):
    x, y = data
    make = MULTICLASS[name]
    values = assert_finite_with_grad(make("none"), x, y)
    assert (values >= 0).all()
    assert_reductions_agree(make, x, y)


@settings(max_examples=40, deadline=None)
@given(z=st.lists(st.sampled_from([-1e4, -30.0, 0.0, 30.0, 1e4]), min_size=1, max_size=8),
       data=st.data())
def test_binary_focal_and_bce_finite_at_extreme_logits(z, data):
    t = torch.tensor(data.draw(st.lists(st.integers(0, 1), min_size=len(z), max_size=len(z))))
    z = torch.tensor(z)
    for loss in (FocalLoss(reduction="none"), BCEWithLogitsLoss(reduction="none")):
        assert (assert_finite_with_grad(loss, z, t) >= 0).all()


@pytest.mark.parametrize("name", ["ce", "focal", "poly1", "bce", "hinge", "hinge_squared"])
@settings(max_examples=25, deadline=None)
@given(data=logits_and_classes(values=st.floats(-5, 5)))
def test_a_confident_correct_prediction_is_minimal(name, data):
    """Logits that put the class far ahead give (near) the smallest value of the loss."""
    x, y = data
    loss = MULTICLASS[name]("none")
    perfect = torch.where(F.one_hot(y, x.shape[1]).bool(), 30.0, -30.0)
    assert (loss(perfect, y) <= loss(x, y) + 1e-6).all()
    assert (loss(perfect, y) < 1e-6).all()


def test_label_smoothing_minimum_is_the_smoothed_distribution():
    """With ε > 0 the optimum is softmax(z) = (1 − ε)·onehot + ε/K, not a saturated logit."""
    eps, k = 0.2, 4
    y = torch.tensor([2])
    target_p = torch.full((1, k), eps / k)
    target_p[0, 2] += 1 - eps
    best = CrossEntropyLoss(eps)(target_p.log(), y)
    saturated = CrossEntropyLoss(eps)(torch.tensor([[-30.0, -30.0, 30.0, -30.0]]), y)
    assert best < saturated


@pytest.mark.parametrize("make,bad", [
    (CrossEntropyLoss, {"label_smoothing": -0.1}),
    (CrossEntropyLoss, {"label_smoothing": 1.5}),
    (CrossEntropyLoss, {"reduction": "avg"}),
    (FocalLoss, {"gamma": -1.0}),
    (FocalLoss, {"alpha": 1.2}),
    (FocalLoss, {"alpha": -0.1}),
    (Poly1Loss, {"epsilon": -1.5}),
    (BCEWithLogitsLoss, {"reduction": "max"}),
    (MultiMarginHingeLoss, {"margin": 0.0}),
    (MultiMarginHingeLoss, {"squared": "yes"}),
    (MSELoss, {"reduction": "median"}),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(make, bad):
    assert_rejects(make, **bad)


def test_value_error_states_the_valid_range():
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, inf\), got -1"):
        FocalLoss(gamma=-1)

"""The class-imbalance losses against their papers' formulas (loops over samples) and against
the authors' published algorithms (rewritten here in NumPy), values and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loss_properties import assert_rejects, gradcheck

from lossbench.losses import ClassBalancedLoss, LDAMLoss, LogitAdjustedLoss, WeightedCELoss
from lossbench.losses.base import Loss, hook
from lossbench.losses.imbalance import (
    PosthocLogitAdjustment,
    class_balanced_weights,
    inverse_frequency_weights,
)

COUNTS = torch.tensor([500.0, 120.0, 40.0, 9.0, 2.0])  # a long tail of K = 5 classes


def batch(n: int = 12, k: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=dtype) * 3
    y = torch.randint(0, k, (n,), generator=g)
    y[:k] = torch.arange(k)  # every class present
    return z, y


def with_counts(loss, counts=COUNTS):
    loss.set_class_counts(counts)
    return loss


def log_softmax_row(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return z - m - math.log(np.exp(z - m).sum())


# ------------------------------------------------------------------------------------------
# weights


def cui_weights(counts, beta):
    """Cui et al.'s code: (1 − β)/(1 − β^n), normalised to sum to K."""
    effective_num = 1.0 - np.power(beta, counts)
    w = (1.0 - beta) / effective_num
    return w / w.sum() * len(counts)


@pytest.mark.parametrize("beta", [0.9, 0.99, 0.999, 0.9999])
def test_class_balanced_weights_match_the_authors_formula(beta):
    got = class_balanced_weights(COUNTS.double(), beta).numpy()
    np.testing.assert_allclose(got, cui_weights(COUNTS.numpy().astype(float), beta), rtol=1e-9)
    assert got.sum() == pytest.approx(5.0)


def test_beta_near_one_approaches_inverse_frequency_and_small_beta_uniform():
    counts = COUNTS.double()
    inverse = inverse_frequency_weights(counts)
    np.testing.assert_allclose(class_balanced_weights(counts, 1 - 1e-9), inverse, rtol=1e-4)
    assert not np.allclose(class_balanced_weights(counts, 0.9999), inverse, rtol=1e-2)
    big = torch.tensor([5000.0, 800.0, 300.0, 100.0])  # β = 0.9 at ≥ 100 samples: uniform
    np.testing.assert_allclose(class_balanced_weights(big, 0.9), torch.ones(4), atol=1e-4)
    assert torch.equal(class_balanced_weights(counts, 0.0), torch.ones(5, dtype=torch.float64))


def test_inverse_and_square_root_weights_sum_to_k_and_rank_rare_classes_first():
    for power in (1.0, 0.5):
        w = inverse_frequency_weights(COUNTS.double(), power)
        expected = COUNTS.double().pow(-power)
        np.testing.assert_allclose(w, expected / expected.sum() * 5, rtol=1e-12)
        assert torch.all(w[1:] > w[:-1])


# ------------------------------------------------------------------------------------------
# weighted cross-entropy


def weighted_ce_loop(z, y, w):
    """−Σ_i w_{y_i} log p_{y_i} / Σ_i w_{y_i} (torch's weighted mean), one sample at a time."""
    num = den = 0.0
    for zi, yi in zip(z.tolist(), y.tolist()):
        num -= w[yi] * log_softmax_row(np.array(zi))[yi]
        den += w[yi]
    return num / den


@pytest.mark.parametrize("weights", ["inverse", "sqrt_inverse", "class_balanced",
                                     [1.0, 2.0, 0.5, 3.0, 1.5]])
def test_weighted_ce_is_the_weighted_mean_of_the_formula(weights):
    z, y = batch()
    loss = with_counts(WeightedCELoss(weights=weights, beta=0.999))
    w = loss.class_weights().numpy()
    if not isinstance(weights, str):
        np.testing.assert_allclose(w, weights)  # given weights are used as given
    assert float(loss(z, y)) == pytest.approx(weighted_ce_loop(z, y, w), rel=1e-10)
    assert gradcheck(loss, z, y)


def test_weighted_ce_sum_and_none_reductions_weight_each_sample():
    z, y = batch()
    w = with_counts(WeightedCELoss()).class_weights()
    per = with_counts(WeightedCELoss(reduction="none"))(z, y)
    expected = -w[y] * F.log_softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(per, expected)
    torch.testing.assert_close(with_counts(WeightedCELoss(reduction="sum"))(z, y), expected.sum())


def test_given_weights_must_match_the_number_of_classes():
    with pytest.raises(ValueError, match="weights has 3 values but the data has 5 classes"):
        with_counts(WeightedCELoss(weights=[1.0, 1.0, 1.0]))


# ------------------------------------------------------------------------------------------
# class-balanced loss


def cui_loss(z: np.ndarray, y: np.ndarray, counts, beta, base, gamma):
    """Cui et al.'s class-balanced sigmoid / focal loss as their code computes it."""
    k = z.shape[1]
    w = cui_weights(np.asarray(counts, dtype=float), beta)
    onehot = np.eye(k)[y]
    weights = np.repeat((onehot * w).sum(1, keepdims=True), k, axis=1)  # per sample, per column
    bce = np.maximum(z, 0) - z * onehot + np.log1p(np.exp(-np.abs(z)))
    if base == "sigmoid":
        return float(np.mean(weights * bce))
    modulator = np.exp(-gamma * onehot * z - gamma * np.log1p(np.exp(-z)))
    return float(np.sum(weights * modulator * bce) / np.sum(onehot))


@pytest.mark.parametrize("base,gamma", [("sigmoid", 0.0), ("focal", 0.5), ("focal", 2.0)])
def test_class_balanced_sigmoid_and_focal_match_the_authors_code(base, gamma):
    z, y = batch(seed=3)
    loss = with_counts(ClassBalancedLoss(beta=0.999, base=base, gamma=gamma))
    expected = cui_loss(z.numpy(), y.numpy(), COUNTS.numpy(), 0.999, base, gamma)
    assert float(loss(z, y)) == pytest.approx(expected, rel=1e-9)
    assert gradcheck(loss, z, y)


def test_class_balanced_softmax_is_weighted_cross_entropy_with_effective_number_weights():
    z, y = batch(seed=4)
    loss = with_counts(ClassBalancedLoss(beta=0.99))
    w = cui_weights(COUNTS.numpy().astype(float), 0.99)
    assert float(loss(z, y)) == pytest.approx(weighted_ce_loop(z, y, w), rel=1e-10)
    assert gradcheck(loss, z, y)


def test_class_balanced_focal_stays_finite_on_saturated_logits():
    z = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 50.0]], requires_grad=True)
    loss = with_counts(ClassBalancedLoss(base="focal", gamma=2.0), torch.tensor([10., 5., 1.]))
    value = loss(z, torch.tensor([1, 0]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


# ------------------------------------------------------------------------------------------
# LDAM


def ldam_authors(x: np.ndarray, y: np.ndarray, counts, max_m=0.5, s=30.0, weight=None):
    """Cao et al.'s LDAMLoss.forward, step by step in NumPy."""
    m_list = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, dtype=float)))
    m_list = m_list * (max_m / np.max(m_list))
    index = np.eye(x.shape[1])[y].astype(bool)
    batch_m = (m_list[None, :] @ index.T.astype(float)).reshape(-1, 1)
    output = np.where(index, x - batch_m, x)
    logits = s * output
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    nll = -logp[np.arange(len(y)), y]
    w = np.ones(x.shape[1]) if weight is None else weight
    return float(np.sum(w[y] * nll) / np.sum(w[y]))


def ldam_paper_loop(x, y, counts, max_m, s):
    """−log e^{s(z_y − Δ_y)} / (e^{s(z_y − Δ_y)} + Σ_{k≠y} e^{s z_k}), Δ_c = C n_c^{−1/4}."""
    delta = [max_m * (n ** -0.25) / (min(counts) ** -0.25) for n in counts]
    total = 0.0
    for zi, yi in zip(x.tolist(), y.tolist()):
        row = [s * (v - (delta[yi] if k == yi else 0.0)) for k, v in enumerate(zi)]
        total -= log_softmax_row(np.array(row))[yi]
    return total / len(y)


def test_ldam_matches_the_authors_code_and_the_paper():
    z, y = batch(seed=5)
    cos = torch.tanh(z)  # cosines in [−1, 1]
    loss = with_counts(LDAMLoss())
    expected = ldam_authors(cos.numpy(), y.numpy(), COUNTS.numpy())
    assert float(loss(cos, y)) == pytest.approx(expected, rel=1e-10)
    assert float(loss(cos, y)) == pytest.approx(
        ldam_paper_loop(cos, y, COUNTS.tolist(), 0.5, 30.0), rel=1e-10)
    assert gradcheck(loss, cos, y)
    margins = loss.margins()
    assert float(margins.max()) == pytest.approx(0.5) and int(margins.argmax()) == 4


def test_ldam_drw_uses_class_balanced_weights_from_its_switch_epoch():
    z, y = batch(seed=6)
    cos = torch.tanh(z)
    loss = with_counts(LDAMLoss(drw_start=0.8))
    plain = ldam_authors(cos.numpy(), y.numpy(), COUNTS.numpy())
    weighted = ldam_authors(cos.numpy(), y.numpy(), COUNTS.numpy(),
                            weight=cui_weights(COUNTS.numpy().astype(float), 0.9999))
    assert loss.drw_switch_epoch(200) == 161  # epochs 1-160 plain, as the authors' 0-159
    assert loss.first_selectable_epoch(200) == 161
    loss.on_epoch_start(160, 200)
    assert float(loss(cos, y)) == pytest.approx(plain, rel=1e-10)
    loss.on_epoch_start(161, 200)
    assert float(loss(cos, y)) == pytest.approx(weighted, rel=1e-10)
    assert gradcheck(loss, cos, y)


def test_drw_state_travels_in_the_state_dict():
    loss = with_counts(WeightedCELoss(weights="class_balanced", drw_start=0.5))
    loss.on_epoch_start(6, 10)
    state = loss.state_dict()
    assert set(state) == {"class_counts", "weights_on"} and float(state["weights_on"]) == 1.0
    fresh = WeightedCELoss(weights="class_balanced", drw_start=0.5)
    fresh.set_class_counts(torch.zeros(5))  # sized by the data, then loaded
    fresh.load_state_dict(state)
    z, y = batch()
    torch.testing.assert_close(fresh(z, y), loss(z, y))
    loss.on_epoch_start(5, 10)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(z, y))  # before the switch: plain


# ------------------------------------------------------------------------------------------
# logit adjustment and balanced softmax


def menon_loss(z: np.ndarray, y: np.ndarray, counts, tau):
    """google-research logit_adjustment: logits + log(prior^τ + 1e-12), then cross-entropy."""
    prior = np.asarray(counts, dtype=float) / np.sum(counts)
    adjusted = z + np.log(prior ** tau + 1e-12)
    return float(np.mean([-log_softmax_row(r)[t] for r, t in zip(adjusted, y)]))


@pytest.mark.parametrize("tau", [1.0, 0.5, 2.0])
def test_logit_adjusted_loss_matches_the_authors_code(tau):
    z, y = batch(seed=7)
    loss = with_counts(LogitAdjustedLoss(tau=tau))
    assert float(loss(z, y)) == pytest.approx(menon_loss(z.numpy(), y.numpy(), COUNTS.numpy(), tau),
                                              rel=1e-8)
    assert gradcheck(loss, z, y)


def test_balanced_softmax_config_is_logit_adjustment_at_tau_one(compose_cfg):
    """Ren et al.'s balanced softmax, z + log n_c, is the same loss: one method, not two."""
    from hydra.utils import instantiate

    z, y = batch(seed=8)
    alias = with_counts(instantiate(compose_cfg("loss=balanced_softmax").loss))
    adjusted = with_counts(instantiate(compose_cfg("loss=logit_adjusted").loss))
    assert type(alias) is type(adjusted) and alias.tau == adjusted.tau == 1.0
    ren = F.cross_entropy(z + torch.log(COUNTS.double()), y)
    torch.testing.assert_close(alias(z, y), ren, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adjusted(z, y), ren, rtol=1e-10, atol=1e-12)
    z1 = z.clone().requires_grad_(True)
    z2 = z.clone().requires_grad_(True)
    alias(z1, y).backward()
    F.cross_entropy(z2 + torch.log(COUNTS.double()), y).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


def test_posthoc_adjustment_subtracts_tau_log_prior():
    z, _ = batch(seed=9, dtype=torch.float32)
    adjusted = PosthocLogitAdjustment(torch.nn.Identity(), COUNTS, tau=1.0)
    prior = COUNTS / COUNTS.sum()
    torch.testing.assert_close(adjusted(z), z - torch.log(prior))
    # on equal logits the rarest class wins once adjusted
    assert int(adjusted(torch.zeros(1, 5)).argmax()) == 4


# ------------------------------------------------------------------------------------------
# the contract


def test_the_imbalance_losses_declare_the_contract():
    for loss in (WeightedCELoss(), ClassBalancedLoss(), LDAMLoss(), LogitAdjustedLoss()):
        assert isinstance(loss, Loss) and loss.needs_class_counts
        assert "regression" not in loss.tasks
        with pytest.raises(RuntimeError, match="set_class_counts"):
            loss(*batch())
    assert LDAMLoss.head == "cosine"


def test_a_loss_without_the_base_class_gets_the_contract_defaults():
    ce = torch.nn.CrossEntropyLoss()
    assert hook(ce, "first_selectable_epoch")(50) == 1
    assert hook(ce, "on_epoch_start")(3, 50) is None


@pytest.mark.parametrize("make,bad", [
    (WeightedCELoss, {"weights": "median"}), (WeightedCELoss, {"beta": 1.0}),
    (WeightedCELoss, {"drw_start": 1.0}), (ClassBalancedLoss, {"base": "hinge"}),
    (ClassBalancedLoss, {"beta": -0.1}), (LDAMLoss, {"max_margin": 0.0}), (LDAMLoss, {"s": -1}),
    (LogitAdjustedLoss, {"tau": -1.0}),
])
def test_bad_hyperparameters_are_named(make, bad):
    assert_rejects(make, **bad)


def test_float32_logits_work_with_float64_counts():
    z, y = batch(dtype=torch.float32)
    for loss in (WeightedCELoss(), ClassBalancedLoss(base="focal"), LDAMLoss(),
                 LogitAdjustedLoss()):
        value = with_counts(loss)(torch.tanh(z), y)
        assert value.dtype == torch.float32 and torch.isfinite(value)

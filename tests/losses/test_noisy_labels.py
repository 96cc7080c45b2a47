"""Label-noise-robust losses against per-sample loops written from the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_properties import (assert_finite_with_grad, assert_reductions_agree, assert_rejects,
                             gradcheck, logits_and_classes)

from lossbench.losses import GCELoss, MAELoss, NCELoss, NCEMAELoss, NCERCELoss, RCELoss, SCELoss


def sample(n=16, k=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=torch.float64) * scale,
            torch.randint(0, k, (n,), generator=g))


def softmax_rows(x):
    rows = []
    for logits in x.tolist():
        top = max(logits)
        e = [math.exp(v - top) for v in logits]
        rows.append([v / sum(e) for v in e])
    return rows


def reference(name, x, y, **hp):
    """Per-sample values of each loss, from its paper's formula, in plain Python."""
    out = []
    for p, c in zip(softmax_rows(x), y.tolist()):
        ce = -math.log(p[c])
        nce = ce / sum(-math.log(v) for v in p)
        # reverse cross-entropy −Σ_k p_k log q_k, q = one-hot label with log 0 := A
        a = hp.get("log_zero", math.log(1e-4))  # log(1e-4), as in the authors' code
        rce = -sum(pk * (0.0 if k == c else a) for k, pk in enumerate(p))
        mae = 1 - p[c]
        out.append({
            "mae": mae,
            "gce": (1 - p[c] ** hp.get("q", 0.7)) / hp.get("q", 0.7),
            "rce": rce,
            "sce": hp.get("alpha", 0.01) * ce + hp.get("beta", 1.0) * rce,
            "nce": hp.get("scale", 1.0) * nce,
            "nce_rce": hp.get("alpha", 1.0) * nce + hp.get("beta", 10.0) * rce,
            "nce_mae": hp.get("alpha", 1.0) * nce + hp.get("beta", 10.0) * mae,
        }[name])
    return torch.tensor(out, dtype=torch.float64)


LOSSES = {
    "mae": (MAELoss, {}),
    "gce": (GCELoss, {"q": 0.4}),
    "rce": (RCELoss, {"log_zero": -2.0}),
    "sce": (SCELoss, {"alpha": 0.1, "beta": 2.0, "log_zero": -6.0}),
    "nce": (NCELoss, {"scale": 2.0}),
    "nce_rce": (NCERCELoss, {"alpha": 0.5, "beta": 3.0}),
    "nce_mae": (NCEMAELoss, {"alpha": 2.0, "beta": 5.0}),
}


def build(name, reduction="mean", defaults=False):
    cls, hp = LOSSES[name]
    return cls(reduction=reduction) if defaults else cls(**hp, reduction=reduction)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("defaults", [True, False])
def test_matches_per_sample_formula(name, defaults):
    x, y = sample(seed=len(name))
    hp = {} if defaults else LOSSES[name][1]
    torch.testing.assert_close(build(name, "none", defaults)(x, y), reference(name, x, y, **hp))


def test_gce_tends_to_cross_entropy_and_equals_mae_at_q_one():
    x, y = sample(seed=11)
    torch.testing.assert_close(GCELoss(q=1e-6)(x, y), F.cross_entropy(x, y), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(GCELoss(q=1.0)(x, y), MAELoss()(x, y))


def test_published_defaults():
    assert GCELoss().q == 0.7
    assert (SCELoss().alpha, SCELoss().beta, SCELoss().log_zero) == (0.01, 1.0, math.log(1e-4))
    assert (NCERCELoss().alpha, NCERCELoss().beta) == (1.0, 10.0)
    assert (NCEMAELoss().alpha, NCEMAELoss().beta) == (1.0, 10.0)


def test_nce_lies_in_zero_one():
    x, y = sample(n=64, seed=12)
    values = NCELoss(reduction="none")(x, y)
    assert ((values > 0) & (values <= 1)).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_float64(name):
    x, y = sample(n=6, k=4, seed=13, scale=1.0)
    assert gradcheck(build(name), x, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=40, deadline=None)
@given(data=logits_and_classes())
def test_finite_non_negative_and_reductions_agree(name, data):
    x, y = data
    values = assert_finite_with_grad(build(name, "none"), x, y)
    assert (values >= 0).all()
    assert_reductions_agree(lambda r: build(name, r), x, y)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=25, deadline=None)
@given(data=logits_and_classes(values=st.floats(-5, 5)))
def test_a_confident_correct_prediction_is_minimal(name, data):
    x, y = data
    loss = build(name, "none")
    perfect = torch.where(F.one_hot(y, x.shape[1]).bool(), 30.0, -30.0)
    assert (loss(perfect, y) <= loss(x, y) + 1e-6).all()


@pytest.mark.parametrize("make,bad", [
    (GCELoss, {"q": 0.0}), (GCELoss, {"q": 1.5}),
    (RCELoss, {"log_zero": 0.0}),
    (SCELoss, {"alpha": -1.0}), (SCELoss, {"beta": -0.5}), (SCELoss, {"log_zero": 1.0}),
    (NCELoss, {"scale": 0.0}),
    (NCERCELoss, {"alpha": -1.0}), (NCERCELoss, {"beta": -1.0}), (NCERCELoss, {"log_zero": 0.5}),
    (NCEMAELoss, {"alpha": -2.0}), (NCEMAELoss, {"beta": float("nan")}),
    (MAELoss, {"reduction": "total"}),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(make, bad):
    assert_rejects(make, **bad)

"""Metric-learning losses against loops over the batch's pairs, triplets and anchors written
from the papers, and torch's triplet_margin_loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from loss_properties import assert_finite_with_grad, assert_reductions_agree, assert_rejects, gradcheck

from lossbench.losses import ContrastiveLoss, SupConLoss, TripletLoss


def sample(b=10, d=4, classes=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randint(0, classes, (b,), generator=g)


def dist(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v)))


LOSSES = {
    "contrastive": lambda reduction="mean": ContrastiveLoss(0.8, reduction),
    "triplet_all": lambda reduction="mean": TripletLoss(0.5, "batch_all", reduction),
    "triplet_hard": lambda reduction="mean": TripletLoss(1.5, "batch_hard", reduction),
    "supcon": lambda reduction="mean": SupConLoss(0.5, reduction),
}


@pytest.mark.parametrize("margin", [0.5, 2.0])
def test_contrastive_matches_pair_loop(margin):
    e, y = sample()
    rows, labels = e.tolist(), y.tolist()
    expected = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            d = dist(rows[i], rows[j])
            expected.append(0.5 * d * d if labels[i] == labels[j] else 0.5 * max(0.0, margin - d) ** 2)
    got = ContrastiveLoss(margin, reduction="none")(e, y)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("margin", [0.3, 1.0, 3.0])
def test_triplet_batch_all_matches_torch_over_every_valid_triplet(margin):
    e, y = sample(seed=1)
    anchors, positives, negatives = [], [], []
    for a in range(len(y)):
        for p in range(len(y)):
            for n in range(len(y)):
                if p != a and y[p] == y[a] and y[n] != y[a]:
                    anchors.append(a), positives.append(p), negatives.append(n)
    expected = F.triplet_margin_loss(e[anchors], e[positives], e[negatives], margin=margin, eps=0.0)
    torch.testing.assert_close(TripletLoss(margin, "batch_all")(e, y), expected)


def test_triplet_batch_hard_matches_anchor_loop():
    e, y = sample(seed=2)
    rows, labels, margin = e.tolist(), y.tolist(), 1.0
    expected = []
    for a in range(len(rows)):
        pos = [dist(rows[a], rows[p]) for p in range(len(rows)) if p != a and labels[p] == labels[a]]
        neg = [dist(rows[a], rows[n]) for n in range(len(rows)) if labels[n] != labels[a]]
        if pos and neg:
            expected.append(max(0.0, max(pos) - min(neg) + margin))
    got = TripletLoss(margin, "batch_hard", reduction="none")(e, y)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_supcon_matches_anchor_loop(temperature):
    e, y = sample(seed=3)
    z = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in e.tolist()]
    labels = y.tolist()
    expected = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        s = lambda j: sum(a * b for a, b in zip(z[i], z[j])) / temperature  # noqa: E731
        denom = sum(math.exp(s(a)) for a in range(len(z)) if a != i)
        expected.append(-sum(math.log(math.exp(s(p)) / denom) for p in positives) / len(positives))
    got = SupConLoss(temperature, reduction="none")(e, y)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))


def test_supcon_with_one_positive_per_anchor_is_nt_xent():
    """Two views per sample, each its own class: SupCon reduces to SimCLR's NT-Xent."""
    e, _ = sample(b=8, seed=4)
    y = torch.arange(4).repeat(2)
    z = F.normalize(e, dim=1)
    sim = z @ z.T / 0.2
    sim.fill_diagonal_(float("-inf"))
    partner = torch.arange(8).roll(4)
    expected = F.cross_entropy(sim, partner)
    torch.testing.assert_close(SupConLoss(0.2)(e, y), expected)


def test_batches_without_pairs_give_zero_with_a_gradient():
    e = torch.randn(3, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2])  # no positives
    for name in ("triplet_all", "triplet_hard", "supcon"):
        value = LOSSES[name]()(e, y)
        value.backward()
        assert value.item() == 0 and torch.equal(e.grad, torch.zeros_like(e))
        e.grad = None


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradcheck_float64(name):
    e, y = sample(b=6, d=3, classes=2, seed=5)
    assert gradcheck(LOSSES[name](), e, y)


@st.composite
def embeddings(draw):
    b = draw(st.integers(2, 7))
    d = draw(st.integers(1, 4))
    flat = draw(st.lists(st.sampled_from([-1e4, -2.0, 0.0, 0.5, 3.0, 1e4]), min_size=b * d, max_size=b * d))
    y = draw(st.lists(st.integers(0, 2), min_size=b, max_size=b))
    return torch.tensor(flat).reshape(b, d), torch.tensor(y)


@pytest.mark.parametrize("name", sorted(LOSSES))
@settings(max_examples=40, deadline=None)
@given(data=embeddings())
def test_finite_non_negative_and_reductions_agree(name, data):
    e, y = data
    values = assert_finite_with_grad(LOSSES[name]("none"), e, y)
    assert (values >= 0).all()
    if len(values):
        assert_reductions_agree(LOSSES[name], e, y)


@pytest.mark.parametrize("name", ["contrastive", "triplet_all", "triplet_hard"])
@settings(max_examples=25, deadline=None)
@given(y=st.lists(st.integers(0, 2), min_size=2, max_size=8))
def test_separated_class_clusters_give_zero(name, y):
    """Every sample at its class's point, the points farther apart than the margins: loss 0."""
    y = torch.tensor(y)
    e = F.one_hot(y, 3).double() * 10.0
    assert LOSSES[name]()(e, y).item() == 0


@pytest.mark.parametrize("make,bad", [
    (ContrastiveLoss, {"margin": 0.0}), (ContrastiveLoss, {"reduction": "mean_pairs"}),
    (TripletLoss, {"margin": -1.0}), (TripletLoss, {"mining": "semi_hard"}),
    (SupConLoss, {"temperature": 0.0}), (SupConLoss, {"temperature": -0.1}),
    (TripletLoss, {"reduction": "max"}), (SupConLoss, {"reduction": "max"}),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(make, bad):
    assert_rejects(make, **bad)

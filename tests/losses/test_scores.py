"""Class probabilities from model outputs: one definition (losses.base.default_scores), which
the losses that read outputs their own way build on."""

from __future__ import annotations

import pytest
import torch

from lossbench.losses import AdversarialLoss, BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss
from lossbench.losses.base import default_scores
from lossbench.losses.composite import MixedLoss


def test_one_logit_is_the_probability_of_class_one():
    z = torch.tensor([-2.0, 0.0, 3.0])
    p = default_scores(z, "sigmoid")
    assert p.shape == (3, 2)
    for i, zi in enumerate(z.tolist()):  # σ(z) = 1 / (1 + e^{−z}), written out per sample
        p1 = 1.0 / (1.0 + torch.exp(torch.tensor(-zi)))
        torch.testing.assert_close(p[i], torch.stack([1 - p1, p1]))


def test_k_logits_softmax_and_sigmoid_heads():
    z = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(default_scores(z, "logits"), torch.softmax(z, dim=-1))
    s = torch.sigmoid(z)
    torch.testing.assert_close(default_scores(z, "sigmoid"), s / s.sum(-1, keepdim=True))
    assert torch.allclose(default_scores(z, "sigmoid").sum(-1), torch.ones(5))


@pytest.mark.parametrize("shape", [(6,), (6, 3)])
def test_losses_that_define_scores_agree_with_the_default(shape):
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    # focal: one logit is sigmoid focal, K logits softmax focal (never one-vs-rest)
    torch.testing.assert_close(FocalLoss().scores(z), default_scores(z, "logits"))
    mixed = MixedLoss({"a": BCEWithLogitsLoss(), "b": BCEWithLogitsLoss()})
    torch.testing.assert_close(mixed.scores(z), default_scores(z, "sigmoid"))
    adversarial = AdversarialLoss(CrossEntropyLoss(), attack="fgsm")
    torch.testing.assert_close(adversarial.scores(z), default_scores(z, "logits"))

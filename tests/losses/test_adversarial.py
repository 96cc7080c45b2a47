"""Adversarial training: FGSM/PGD examples from the model's own gradient, and robust accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from loss_properties import assert_rejects, gradcheck
from torch import nn

from lossbench.data import Split, Splits
from lossbench.engine.predict import predict, robust_accuracy
from lossbench.losses import (AdversarialLoss, ContrastiveLoss, CrossEntropyLoss, FocalLoss,
                              HuberLoss)


def linear_model(d=4, k=3, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(d, k).double()


def batch(n=10, d=4, k=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, k, (n,), generator=g)


def test_fgsm_steps_epsilon_along_the_input_gradient_sign():
    model, (x, y) = linear_model(), batch()
    loss = AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.3)
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y).backward()
    torch.testing.assert_close(loss.attack(model, x, y), x + 0.3 * xr.grad.sign())


def test_pgd_stays_in_the_ball_raises_the_loss_and_leaves_parameters_alone():
    model, (x, y) = linear_model(), batch()
    loss = AdversarialLoss(CrossEntropyLoss(), attack="pgd", epsilon=0.2, steps=10)
    torch.manual_seed(3)
    x_adv = loss.attack(model, x, y)
    assert (x_adv - x).abs().max() <= 0.2 + 1e-12
    assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    assert all(p.grad is None for p in model.parameters())
    assert not x_adv.requires_grad
    assert loss.step_size == pytest.approx(2.5 * 0.2 / 10)


def test_model_loss_mixes_clean_and_adversarial_losses():
    model, (x, y) = linear_model(), batch()
    loss = AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.1, clean_fraction=0.25)
    x_adv = loss.attack(model, x, y)
    clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss.model_loss(model, x, y), 0.25 * clean + 0.75 * adv)
    torch.testing.assert_close(loss.terms["clean"], clean.detach())
    torch.testing.assert_close(loss.terms["adversarial"], adv.detach())
    only_adv = AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.1, clean_fraction=0.0)
    torch.testing.assert_close(only_adv.model_loss(model, x, y), adv)
    assert set(only_adv.terms) == {"adversarial"}


def test_forward_is_the_wrapped_loss_and_gradchecks():
    x, y = batch()
    loss = AdversarialLoss(CrossEntropyLoss())
    torch.testing.assert_close(loss(x[:, :3], y), F.cross_entropy(x[:, :3], y))
    assert gradcheck(loss, x[:, :3], y)


def test_wraps_binary_focal_on_one_logit():
    torch.manual_seed(0)
    model = nn.Linear(4, 1).double()
    x, _ = batch()
    y = (x[:, 0] > 0).long()
    loss = AdversarialLoss(FocalLoss(), attack="pgd", epsilon=0.1, steps=3)
    assert loss.head == "sigmoid" and loss.tasks == ("binary", "multiclass")
    value = loss.model_loss(model, x, y)
    assert value.dim() == 0 and torch.isfinite(value)


def make_splits(x, y, k):
    part = Split(y=y, x=x)
    return Splits(train=part, val=part, test=part, task="multiclass", name="blobs",
                  num_classes=k, class_names=[str(c) for c in range(k)], sample_shape=(x.shape[1],))


def test_robust_accuracy_drops_under_a_large_attack():
    """Three well separated blobs, a trained linear model: clean accuracy ~1, and an attack of
    radius comparable to the gap between blobs flips many predictions."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    y = torch.randint(0, 3, (300,), generator=g)
    x = centers[y] + 0.3 * torch.randn(300, 2, generator=g)
    model = nn.Linear(2, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    splits = make_splits(x, y, 3)
    clean = predict(model, splits, "test", "logits", 128, torch.device("cpu"))
    clean_acc = float((clean.y_pred == clean.y_true).mean())
    weak = robust_accuracy(model, splits, "test", "logits", 128, torch.device("cpu"),
                           AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.01))
    strong = robust_accuracy(model, splits, "test", "logits", 128, torch.device("cpu"),
                             AdversarialLoss(CrossEntropyLoss(), attack="pgd", epsilon=1.5))
    assert clean_acc > 0.95
    assert weak == pytest.approx(clean_acc, abs=0.02)
    assert strong < clean_acc - 0.3


@pytest.mark.parametrize("bad", [
    {"attack": "cw"}, {"epsilon": 0.0}, {"steps": 0}, {"steps": 2.5}, {"step_size": -0.1},
    {"clean_fraction": 1.5}, {"clean_fraction": -0.1},
])
def test_invalid_hyperparameters_raise_value_error_naming_them(bad):
    assert_rejects(lambda **kw: AdversarialLoss(CrossEntropyLoss(), **kw), **bad)


@pytest.mark.parametrize("inner", [ContrastiveLoss(), HuberLoss(), "ce"])
def test_wrapping_a_non_classification_loss_raises(inner):
    with pytest.raises(ValueError, match="loss must be"):
        AdversarialLoss(inner)


@pytest.mark.slow
def test_robust_accuracy_over_two_processes_covers_the_whole_test_split(cli, tmp_path):
    """Two DDP processes report the robust accuracy of one process (same weights: lr 0)."""
    from conftest import read_metrics

    common = ["train", "loss=adversarial", "loss.attack=fgsm", "dataset=iris", "model=linear",
              "trainer=smoke", "trainer.plots=false", "optimizer.lr=0.0"]
    robust = {}
    for devices in (1, 2):
        run_dir = tmp_path / f"devices{devices}"
        proc = cli(*common, f"trainer.devices={devices}", f"hydra.run.dir={run_dir}", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        test = read_metrics(run_dir)["test"]
        robust[devices] = (test["accuracy"], test["robust_accuracy"])
    assert robust[1] == robust[2]

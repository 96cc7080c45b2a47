"""What the losses refuse when called directly (the Python API): inputs that would otherwise give
a silently wrong number, and a hyperparameter mix with no minimum."""

from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from lossbench.config.catalogue import loss_catalogue
from lossbench.losses import (AdaptiveRobustLoss, BCEWithLogitsLoss, CrossEntropyLoss, FocalLoss,
                              HuberLoss, L1Loss, LogCoshLoss, MixedLoss, MSELoss, NCERCELoss,
                              QuantileLoss, RCELoss, SCELoss, SmoothL1Loss)

REGRESSION = [MSELoss, L1Loss, HuberLoss, SmoothL1Loss, LogCoshLoss, QuantileLoss,
              AdaptiveRobustLoss]


@pytest.mark.parametrize("loss_class", REGRESSION, ids=lambda c: c.__name__)
def test_regression_loss_refuses_a_target_of_another_shape(loss_class):
    pred = torch.randn(8)
    target = torch.randn(8, 1)  # a column: broadcasting would make an (8, 8) loss
    with pytest.raises(ValueError, match=r"same shape.*\(8,\).*\(8, 1\)"):
        loss_class()(pred, target)
    with pytest.raises(ValueError, match="same shape"):
        loss_class()(pred.unsqueeze(1), target.squeeze(1))
    loss_class()(pred, target.squeeze(1))  # the same data, matching shapes: a number


@pytest.mark.parametrize("loss_class", [FocalLoss, BCEWithLogitsLoss], ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [2.0, -1.0, 0.5])
def test_one_logit_loss_refuses_targets_outside_0_1(loss_class, bad):
    logits = torch.randn(4)
    target = torch.tensor([0.0, 1.0, bad, 1.0])
    with pytest.raises(ValueError, match=f"must be 0 or 1, got {bad:g}"):
        loss_class()(logits, target)
    good = loss_class()(logits, torch.tensor([0, 1, 1, 0]))
    assert good.item() >= 0


def test_focal_on_one_logit_was_negative_for_a_target_of_2():
    """The case the check exists for: the formula itself gives a negative 'loss'."""
    z = torch.tensor([3.0])
    t = torch.tensor([2.0])
    log_pt = torch.nn.functional.logsigmoid(z)
    alpha_t = 0.25 * t + 0.75 * (1 - t)  # -0.25
    assert (-(alpha_t) * (1 - log_pt.exp()) ** 2 * log_pt).item() < 0  # what was returned
    with pytest.raises(ValueError):
        FocalLoss()(z, t)


def test_mixed_uncertainty_refuses_a_zero_weight():
    terms = {"ce": CrossEntropyLoss(), "mse": MSELoss()}
    with pytest.raises(ValueError, match=r"weights.mse=0 with weighting=uncertainty"):
        MixedLoss(terms, weights={"ce": 1.0, "mse": 0.0}, weighting="uncertainty")
    # fixed weighting: a zero weight only switches the term off, which is fine
    MixedLoss(terms, weights={"ce": 1.0, "mse": 0.0}, weighting="fixed")


def test_mixed_uncertainty_with_positive_weights_has_a_minimum_in_s():
    """e^{-s} w L + s is smallest at s = log(w L): the learned log-variance stays finite."""
    loss = MixedLoss({"ce": CrossEntropyLoss()}, weighting="uncertainty")
    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        loss(x, y).backward()
        opt.step()
    expected = math.log(CrossEntropyLoss()(x, y).item())
    assert loss.log_vars.item() == pytest.approx(expected, abs=1e-3)


def test_log_zero_default_is_the_one_the_published_betas_were_tuned_with():
    a = math.log(1e-4)
    assert RCELoss().log_zero == SCELoss().log_zero == NCERCELoss().log_zero == pytest.approx(a)
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        for name in ("rce", "sce", "nce_rce"):
            cfg = compose(config_name="config", overrides=[f"loss={name}"])
            assert cfg.loss.log_zero == pytest.approx(a), name
    # with A = log(1e-4) the RCE term of a sample with p_y = 0 is 9.21, not 4
    x = torch.tensor([[-30.0, 30.0]])
    assert RCELoss()(x, torch.tensor([0])).item() == pytest.approx(-a, rel=1e-6)


def test_every_listed_hyperparameter_can_be_set_from_the_command_line():
    """`lossbench losses` lists hyperparameters; each one is `loss.<name>=` of that config."""
    checked = 0
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        for entry in loss_catalogue():
            for key, value in entry.hyperparameters.items():
                if isinstance(value, str) and "(" in value or isinstance(value, (dict, list)):
                    continue  # nested losses of mixed/adversarial: set as loss.<term>.<key>=
                shown = "null" if value is None else str(value).lower() if isinstance(
                    value, bool) else str(value)
                cfg = compose(config_name="config",
                              overrides=[f"loss={entry.name}", f"loss.{key}={shown}"])
                assert key in cfg.loss, (entry.name, key)
                checked += 1
        cfg = compose(config_name="config", overrides=["loss=ce", "loss.label_smoothing=0.1"])
    assert instantiate(cfg.loss).label_smoothing == 0.1
    assert checked > 30

"""A loss written outside the package, the README's way (an `nn.Module` with `tasks` and
`head`, plus the hooks of lossbench/losses/base.py it needs), driven through the CLI."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from conftest import read_metrics
from lossbench.experiment.outcome import loss_record
from lossbench.losses import AdversarialLoss, CrossEntropyLoss, MixedLoss
from lossbench.losses.base import hook

MYLOSSES = '''
import torch
from torch import nn


class SquaredHingeLoss(nn.Module):
    """Multi-class squared hinge: mean over samples of sum_{k != y} max(0, margin - s_y + s_k)^2."""

    tasks = ("multiclass", "binary")
    head = "logits"

    def __init__(self, margin: float = 1.0):
        super().__init__()
        self.margin = margin

    def forward(self, input, target):
        true = input.gather(1, target[:, None])
        gaps = (self.margin - true + input).clamp_min(0) ** 2
        return gaps.scatter(1, target[:, None], 0.0).sum(1).mean()


class FGSMHingeLoss(SquaredHingeLoss):
    """The squared hinge on FGSM examples x + epsilon * sign(grad_x loss)."""

    def __init__(self, margin: float = 1.0, epsilon: float = 0.1):
        super().__init__(margin)
        self.epsilon = epsilon
        self.terms = {}

    def attack(self, model, x, y):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self(model(x), y), x)
        return (x + self.epsilon * grad.sign()).detach()

    def model_loss(self, model, x, y):
        adversarial = self(model(self.attack(model, x, y)), y)
        self.terms = {"adversarial": adversarial.detach()}
        return adversarial

    def describe(self):
        return f"FGSM on the squared hinge (epsilon={self.epsilon:g})"


class AbsoluteLoss(nn.Module):
    """Mean absolute error, for regression."""

    tasks = ("regression",)
    head = "logits"

    def forward(self, input, target):
        return (input - target).abs().mean()
'''


@pytest.fixture
def own_losses(tmp_path):
    """mylosses.py and a config folder naming two of its losses; the env that finds them."""
    (tmp_path / "mylosses.py").write_text(MYLOSSES)
    (tmp_path / "myconf" / "loss").mkdir(parents=True)
    (tmp_path / "myconf" / "loss" / "squared_hinge.yaml").write_text(
        "_target_: mylosses.SquaredHingeLoss\nmargin: 1.0\n")
    (tmp_path / "myconf" / "loss" / "absolute.yaml").write_text("_target_: mylosses.AbsoluteLoss\n")
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path}


@pytest.mark.slow  # a whole training run with an attack in every step: about 20 s
def test_an_own_adversarial_loss_trains_on_its_attack_and_is_tested_under_it(cli, tmp_path,
                                                                               own_losses):
    proc = cli("train", "loss._target_=mylosses.FGSMHingeLoss", "~loss.label_smoothing",
               "+loss.margin=0.5", "+loss.epsilon=0.3", "dataset=iris", "trainer=smoke",
               "trainer.plots=false", f"hydra.run.dir={tmp_path / 'run'}", env=own_losses,
               check=True)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed"
    assert 0.0 <= metrics["test"]["robust_accuracy"] <= 1.0
    assert metrics["test_at"]["last"]["robust_accuracy"] == metrics["test"]["robust_accuracy"]
    assert metrics["loss_description"] == "FGSM on the squared hinge (epsilon=0.3)"
    assert "loss_params" not in metrics  # it has no parameters of its own to report
    line = (f"robust accuracy under FGSM on the squared hinge (epsilon=0.3): "
            f"{metrics['test']['robust_accuracy']:.4f} (clean: {metrics['test']['accuracy']:.4f})")
    assert line in proc.stdout
    assert line in (tmp_path / "run" / "report.txt").read_text()
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # the training loss is the loss's own model_loss: its adversarial term is recorded
    assert [float(r["train_loss_adversarial"]) for r in rows] == [
        pytest.approx(float(r["train_loss"])) for r in rows]


def test_the_hint_names_the_own_loss_and_lists_own_options_that_fit(cli, tmp_path, own_losses):
    proc = cli("train", "--config-dir", str(tmp_path / "myconf"), "loss=squared_hinge",
               "dataset=diabetes", "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}",
               env=own_losses)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    head, _, listed = proc.stderr.strip().partition("; losses that do: ")
    assert head == ("lossbench: error: loss=squared_hinge does not fit the regression task "
                    "of dataset diabetes")
    names = listed.split(", ")
    assert "mse" in names and "absolute" in names  # shipped and own regression losses
    assert "squared_hinge" not in names and "ce" not in names
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_the_hint_names_the_class_put_in_place_of_the_option(cli, tmp_path, own_losses):
    proc = cli("train", "loss._target_=mylosses.AbsoluteLoss", "~loss.label_smoothing",
               "dataset=iris", "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}",
               env=own_losses)
    assert proc.returncode == 2, proc.stderr
    head, _, listed = proc.stderr.strip().partition("; losses that do: ")
    # the option's name (ce) would point at the wrong loss
    assert head == ("lossbench: error: loss=mylosses.AbsoluteLoss does not fit the multiclass "
                    "task of dataset iris")
    assert "ce" in listed.split(", ")


def test_the_contract_answers_for_losses_that_declare_nothing():
    torch_loss = torch.nn.CrossEntropyLoss()
    assert hook(torch_loss, "attack") is None
    assert hook(torch_loss, "head") == "logits"
    assert hook(torch_loss, "describe")() is None and hook(torch_loss, "report")() is None
    adversarial = AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.2)
    assert hook(adversarial, "attack") == adversarial.attack
    assert hook(adversarial, "describe")() == "FGSM (epsilon=0.2)"


def test_metrics_record_what_a_loss_says_of_itself_and_nothing_for_the_rest():
    assert loss_record(CrossEntropyLoss(), "logits") == {}
    adversarial = AdversarialLoss(CrossEntropyLoss(), attack="fgsm", epsilon=0.2)
    assert loss_record(adversarial, "logits") == {"loss_description": "FGSM (epsilon=0.2)"}
    # a report that is empty is still the loss's answer (fixed weights: nothing learned)
    mixed = MixedLoss(losses={"ce": CrossEntropyLoss(), "focal": CrossEntropyLoss()})
    assert loss_record(mixed, "cosine") == {"head": "cosine classifier (asked for by the loss)",
                                            "loss_params": {}}

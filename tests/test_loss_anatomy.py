"""`lossbench plot-losses`: the curves are the loss modules' own values and autograd gradients,
checked against closed forms, and the command reports its mistakes in one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from lossbench.commands.plot_losses import plot_losses


def test_classification_curves_match_the_closed_forms(tmp_path):
    k = 10
    path, curves, task = plot_losses(["ce", "mae", "gce"], ["gce.q=0.5"], tmp_path / "a.png", k)
    assert task == "classification"
    ce, mae, gce = curves
    p = ce.x
    # softmax puts p on the label, (1 − p)/(K − 1) on each other class
    np.testing.assert_allclose(ce.value, -np.log(p), rtol=1e-9)
    # ‖softmax(z) − e_y‖ = (1 − p)·sqrt(K/(K − 1))
    np.testing.assert_allclose(ce.grad, (1 - p) * math.sqrt(k / (k - 1)), rtol=1e-9)
    # MAE = 1 − p, its gradient p·‖e_y − softmax(z)‖: it vanishes where p → 0
    np.testing.assert_allclose(mae.value, 1 - p, rtol=1e-9)
    np.testing.assert_allclose(mae.grad, p * (1 - p) * math.sqrt(k / (k - 1)), rtol=1e-9)
    np.testing.assert_allclose(gce.value, (1 - p ** 0.5) / 0.5, rtol=1e-9)  # the override
    assert gce.label == "gce (q=0.5)"
    assert ce.grad[0] > 10 * mae.grad[0]  # the picture's point, at p = 0.001
    image = Image.open(path)
    assert image.size[0] > 800 and "Anatomy of the losses (10 classes)" in image.info["Title"]


def test_sigmoid_head_and_regression_curves(tmp_path):
    _, (bce,), _ = plot_losses(["bce"], [], tmp_path / "b.png")
    np.testing.assert_allclose(bce.value, -np.log(bce.x), rtol=1e-9)  # one logit, target 1
    np.testing.assert_allclose(bce.grad, 1 - bce.x, rtol=1e-9)  # |σ(z) − 1|
    _, (mse, huber), task = plot_losses(["mse", "huber"], ["huber.delta=0.5"],
                                        tmp_path / "r.png", r_max=2.0)
    assert task == "regression"
    r = mse.x
    assert r.min() == -2.0 and r.max() == 2.0
    np.testing.assert_allclose(mse.value, r ** 2)
    np.testing.assert_allclose(mse.grad, 2 * np.abs(r))
    np.testing.assert_allclose(huber.grad, np.minimum(np.abs(r), 0.5))


def test_the_command_writes_the_png(cli, tmp_path):
    proc = cli("plot-losses", "ce,gce,mae,sce", "--out", "anatomy.png", check=True)
    assert proc.stdout.strip() == "wrote anatomy.png (classification: ce, gce, mae, sce)"
    assert Image.open(tmp_path / "anatomy.png").format == "PNG"


@pytest.mark.parametrize("args, message", [
    (("ce,gcee",), "no loss named gcee (did you mean gce?)"),
    (("ce,huber",), "one picture per task: huber is for regression, ce for classification"),
    (("ce,contrastive",), "contrastive is a loss of embeddings"),
    (("ce,gce", "sce.beta=2"), "sce.beta=2: sce is not one of the losses drawn"),
    (("gce", "gce.q=2"), "gce: "),
    (("gce", "gce.qq=2"), "gce: "),
])
def test_mistakes_are_one_line_and_exit_2(cli, tmp_path, args, message):
    proc = cli("plot-losses", *args, "--out", "x.png")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "x.png").exists()

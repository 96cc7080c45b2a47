"""Calibration metrics of the classification report (ECE with 15 bins, NLL, Brier score),
checked against a per-sample loop written from the definitions, and end to end in a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lossbench.results.report import calibration_bins, calibration_metrics
from conftest import read_metrics, run_dirs


def reference_calibration(scores, labels, n_bins=15):
    """ECE, NLL and Brier one sample at a time, straight from the definitions."""
    n = len(labels)
    bin_conf = [[] for _ in range(n_bins)]
    bin_correct = [[] for _ in range(n_bins)]
    nll = 0.0
    brier = 0.0
    for p, y in zip(scores, labels):
        p = [float(v) for v in p]
        conf = max(p)
        pred = p.index(conf)
        # bin b covers (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 joins the first bin
        b = 0
        while b < n_bins - 1 and conf > (b + 1) / n_bins:
            b += 1
        bin_conf[b].append(conf)
        bin_correct[b].append(1.0 if pred == y else 0.0)
        nll -= math.log(max(p[y], 1e-12))
        brier += sum((p[k] - (1.0 if k == y else 0.0)) ** 2 for k in range(len(p)))
    ece = 0.0
    for confs, correct in zip(bin_conf, bin_correct):
        if confs:
            ece += len(confs) / n * abs(sum(correct) / len(correct) - sum(confs) / len(confs))
    return ece, nll / n, brier / n


def random_problem(seed, n, k, sharpness):
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.full(k, sharpness), size=n)
    labels = rng.integers(0, k, size=n)
    return scores, labels


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 200), k=st.integers(2, 12),
       sharpness=st.sampled_from([0.05, 0.3, 1.0, 5.0]))
def test_matches_the_per_sample_reference(seed, n, k, sharpness):
    scores, labels = random_problem(seed, n, k, sharpness)
    got = calibration_metrics(scores, labels)
    ece, nll, brier = reference_calibration(scores, labels)
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["nll"] == pytest.approx(nll, rel=1e-12)
    assert got["brier"] == pytest.approx(brier, rel=1e-12)


def test_confident_and_right_is_perfect_and_confident_and_wrong_is_worst():
    labels = np.array([0, 1, 2, 1])
    right = np.eye(3)[labels]
    wrong = np.eye(3)[(labels + 1) % 3]
    assert calibration_metrics(right, labels) == pytest.approx({"ece": 0.0, "nll": 0.0,
                                                                "brier": 0.0}, abs=1e-12)
    worst = calibration_metrics(wrong, labels)
    assert worst["ece"] == pytest.approx(1.0)
    assert worst["brier"] == pytest.approx(2.0)
    assert worst["nll"] == pytest.approx(-math.log(1e-12))  # clipped, finite


def test_a_hand_worked_example():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    scores = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    labels = np.array([0, 0, 0])
    got = calibration_metrics(scores, labels)
    assert got["ece"] == pytest.approx(2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6))
    assert got["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + math.log(0.6)) / 3)
    assert got["brier"] == pytest.approx((2 * 0.01 + 2 * 0.81 + 2 * 0.16) / 3)


def test_bins_count_every_sample_once_and_put_edges_in_the_lower_bin():
    scores, labels = random_problem(3, 500, 4, 0.5)
    bins = calibration_bins(scores, labels)
    assert bins["count"].sum() == 500
    assert len(bins["edges"]) == 16
    # a confidence of exactly 1 belongs to the last bin, exactly 0.5 to (7/15, 8/15]
    edge = calibration_bins(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 1]))
    assert edge["count"][14] == 1 and edge["count"][7] == 1


def test_a_classification_run_reports_calibration(cli, tmp_path):
    proc = cli("train", "dataset=iris", "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}",
               "print_config=false", check=True)
    assert "Calibration: ECE (15 bins)" in proc.stdout
    (run_dir,) = run_dirs(tmp_path)
    test = read_metrics(run_dir)["test"]
    assert 0.0 <= test["ece"] <= 1.0
    assert 0.0 <= test["brier"] <= 2.0
    assert test["nll"] > 0.0
    report = (run_dir / "report.txt").read_text()
    assert f"ECE (15 bins) {test['ece']:.4f}" in report


def test_a_regression_run_has_no_calibration(compose_cfg):
    from lossbench.experiment.run import run

    cfg = compose_cfg("dataset=diabetes", "loss=mse", "trainer=smoke", "trainer.plots=false")
    run(cfg)
    metrics = read_metrics(cfg.run_dir)
    assert "ece" not in metrics["test"] and "rmse" in metrics["test"]

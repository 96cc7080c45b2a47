"""The imbalance metrics against scikit-learn and against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, recall_score

from lossbench.engine.predict import Predictions
from lossbench.results.imbalance_metrics import imbalance_metrics, imbalance_summary, shot_groups
from lossbench.results.report import classification_metrics, report_text


def predictions(k: int, n: int, seed: int, absent: tuple[int, ...] = ()):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    y_true = y_true[~np.isin(y_true, absent)]
    # right 70 % of the time, else a random class (absent ones included)
    y_pred = np.where(rng.random(len(y_true)) < 0.7, y_true, rng.integers(0, k, len(y_true)))
    return y_true, y_pred


@pytest.mark.parametrize("seed,absent", [(0, ()), (1, ()), (2, (3,))])
def test_balanced_accuracy_and_recalls_match_scikit_learn(seed, absent):
    counts = [300, 150, 90, 40, 25, 12, 6]
    y_true, y_pred = predictions(7, 400, seed, absent)
    m = imbalance_metrics(y_true, y_pred, counts)
    present = sorted(set(y_true.tolist()))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    recalls = recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    assert [m["per_class_recall"][str(c)] for c in present] == pytest.approx(recalls.tolist())
    assert m["worst_class_recall"] == pytest.approx(min(recalls))
    # Σ π_c recall_c, π over the classes the split holds: counted sample by sample here
    total = sum(counts[c] for c in present)
    by_hand = sum(counts[c] / total * np.mean(y_pred[y_true == c] == c) for c in present)
    assert m["prior_accuracy"] == pytest.approx(by_hand)


def test_liu_cutoffs_when_every_group_has_two_classes_else_thirds():
    liu = shot_groups([500, 300, 101, 100, 20, 60, 19, 3])
    assert liu == {"rule": "liu", "many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7]}
    digits_ratio_10 = [107, 84, 65, 50, 39, 30, 23, 18, 14, 10]  # one class above 100
    thirds = shot_groups(digits_ratio_10)
    assert thirds == {"rule": "thirds", "many": [0, 1, 2], "medium": [3, 4, 5, 6],
                      "few": [7, 8, 9]}
    shuffled = shot_groups([10, 107, 50, 84, 14, 65, 39, 18, 30, 23])  # ranked by count, not index
    assert shuffled["many"] == [1, 3, 5] and shuffled["few"] == [0, 4, 7]


def test_shot_accuracies_are_mean_recalls_within_each_group():
    counts = [107, 84, 65, 50, 39, 30, 23, 18, 14, 10]
    y_true, y_pred = predictions(10, 600, 5)
    m = imbalance_metrics(y_true, y_pred, counts)
    recall = recall_score(y_true, y_pred, labels=list(range(10)), average=None)
    assert m["many_shot_accuracy"] == pytest.approx(recall[[0, 1, 2]].mean())
    assert m["medium_shot_accuracy"] == pytest.approx(recall[[3, 4, 5, 6]].mean())
    assert m["few_shot_accuracy"] == pytest.approx(recall[[7, 8, 9]].mean())


def test_classification_metrics_and_report_carry_them():
    y_true, y_pred = predictions(4, 200, 7)
    pred = Predictions(y_true=y_true, y_pred=y_pred)
    plain = classification_metrics(pred, None, 4)
    assert "balanced_accuracy" not in plain  # no training counts, no imbalance metrics
    m = classification_metrics(pred, None, 4, [80, 40, 20, 10])
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    text = report_text("multiclass", m, "test", "header")
    assert imbalance_summary(m).splitlines()[0] in text
    assert "thirds groups of 1/2/1 classes by training count" in text


@pytest.mark.parametrize("counts", [[108, 107, 108], [59, 71, 48], [30, 300], [5, 50]],
                         ids=["balanced", "nearly balanced", "binary", "binary 1:10"])
def test_no_shot_groups_on_balanced_or_binary_training_data(counts):
    y_true, y_pred = predictions(len(counts), 300, 3)
    m = imbalance_metrics(y_true, y_pred, counts)
    assert not {"shot_groups", "many_shot_accuracy", "few_shot_accuracy"} & set(m)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    summary = imbalance_summary(m)
    assert "few-shot" not in summary and len(summary.splitlines()) == 1
    imbalanced = imbalance_metrics(*predictions(3, 300, 3), [100, 40, 10])
    assert "few-shot" in imbalance_summary(imbalanced) and imbalanced["shot_groups"]

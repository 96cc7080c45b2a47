"""The per-epoch validation metrics, computed cheaply, equal scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from lossbench.engine.validation import macro_f1


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_equals_scikit_learn_with_missing_classes(seed):
    rng = np.random.default_rng(seed)
    k = 6
    y_true = rng.integers(0, 4, 50)  # classes 4 and 5 never occur ...
    y_pred = rng.integers(0, 5, 50)  # ... class 5 is never predicted either
    expected = f1_score(y_true, y_pred, average="macro", labels=list(range(k)), zero_division=0)
    assert macro_f1(y_true, y_pred, k) == pytest.approx(expected, abs=1e-12)


def test_macro_f1_of_perfect_and_empty_predictions():
    y = np.array([0, 1, 2, 2])
    assert macro_f1(y, y, 3) == 1.0
    assert macro_f1(y, np.array([1, 2, 0, 0]), 3) == 0.0

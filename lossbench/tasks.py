"""Tasks and metrics: what a dataset poses, what each task measures, and which way is better.

The single home of these facts; the loop (which epoch is best), the report, a sweep's job line
and `compare` (which row wins) all ask here. `Predictions` (what a model predicted on a split)
and `nll` (the NLL of its class probabilities) sit here too, below both the engine that makes
them and the report that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

TASKS = ("multiclass", "binary", "regression")  # what a dataset poses (RawData.task)
CLASSIFICATION = ("multiclass", "binary")
KINDS = ("classification", "regression")

# Validation metrics the loop records per epoch for each kind, and which direction is better.
VALIDATION_METRICS = {
    "classification": {"val_loss": "min", "val_accuracy": "max", "val_macro_f1": "max",
                       "val_nll": "min"},
    "regression": {"val_loss": "min", "val_rmse": "min", "val_mae": "min", "val_r2": "max"},
}

# Test metrics a comparison leads with, per kind: the first one is a run's headline.
HEADLINE = {"classification": ("accuracy", "macro_f1"), "regression": ("rmse", "r2")}

# Metrics (or metric suffixes, e.g. val_nll, test_rmse) for which smaller is better.
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "loss", "nll", "brier", "ece", "error"})


def task_kind(task: str | None) -> str:
    """'regression' or 'classification' (multiclass and binary)."""
    return "regression" if task == "regression" else "classification"


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.rsplit("_", 1)[-1] in LOWER_IS_BETTER


def headline_metric(task: str | None) -> str:
    """The one metric a run is summed up by: accuracy, or rmse for regression."""
    return HEADLINE[task_kind(task)][0]


@dataclass
class Predictions:
    """Model outputs on one split, as numpy arrays for scikit-learn."""

    y_true: np.ndarray  # (N,) class indices, or targets in original units
    y_pred: np.ndarray  # (N,) predicted class indices, or predicted values
    scores: np.ndarray | None = None  # (N, K) class probabilities (classification)
    embeddings: np.ndarray | None = None  # (N, D) for metric-learning heads
    loss: float | None = None  # mean loss on the split (training units)


# Probabilities are clipped here before the log: the loop's validation NLL and the report's.
NLL_EPS = 1e-12


def nll(scores, y_true) -> float:
    """Mean negative log-likelihood −(1/N) Σ_i log p_i[y_i] of (N, K) class probabilities:
    the same for every loss (never the loss's own value), so it can rank epochs of any loss."""
    if scores is None or not len(y_true):
        return float("nan")
    import numpy as np

    p_true = scores[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)]
    return float(-np.mean(np.log(np.maximum(p_true, NLL_EPS))))

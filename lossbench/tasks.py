"""Tasks and metrics: what a dataset poses, what each task measures, and which way is better.

The single home of these facts; the loop (which epoch is best), the report, a sweep's job line
and `compare` (which row wins) all ask here.
"""

from __future__ import annotations

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

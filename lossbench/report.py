"""Test metrics and how they are shown: scikit-learn's classification report as a rich table,
the confusion matrix, regression errors."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table
from sklearn import metrics as skm

from lossbench.evaluate import Predictions


def classification_metrics(pred: Predictions, class_names: list[str] | None,
                           num_classes: int) -> dict[str, Any]:
    """scikit-learn's classification report (as a dict), confusion matrix, accuracy, macro-F1."""
    labels = list(range(num_classes))
    names = class_names or [str(k) for k in labels]
    report = skm.classification_report(pred.y_true, pred.y_pred, labels=labels, target_names=names,
                                       output_dict=True, zero_division=0)
    text = skm.classification_report(pred.y_true, pred.y_pred, labels=labels, target_names=names,
                                     digits=4, zero_division=0)
    result: dict[str, Any] = {
        "accuracy": float(skm.accuracy_score(pred.y_true, pred.y_pred)),
        "macro_f1": float(skm.f1_score(pred.y_true, pred.y_pred, labels=labels, average="macro",
                                       zero_division=0)),
        "classification_report": report,
        "classification_report_text": text,
        "confusion_matrix": skm.confusion_matrix(pred.y_true, pred.y_pred, labels=labels).tolist(),
        "class_names": names,
    }
    if pred.embeddings is not None:
        result["pair_roc_auc"] = pair_verification_auc(pred.embeddings, pred.y_true)
    return result


def pair_verification_auc(embeddings: np.ndarray, labels: np.ndarray, max_samples: int = 2000,
                          seed: int = 0) -> float:
    """ROC-AUC of "same class?" predicted by negative Euclidean distance, over all test pairs
    (a random subset of `max_samples` samples when the split is larger)."""
    if len(labels) > max_samples:
        keep = np.random.default_rng(seed).choice(len(labels), max_samples, replace=False)
        embeddings, labels = embeddings[keep], labels[keep]
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    if same.all() or not same.any():
        return float("nan")
    dist = np.linalg.norm(embeddings[i] - embeddings[j], axis=1)
    return float(skm.roc_auc_score(same, -dist))


def regression_metrics(pred: Predictions) -> dict[str, float]:
    mse = float(skm.mean_squared_error(pred.y_true, pred.y_pred))
    return {"mse": mse, "rmse": float(np.sqrt(mse)),
            "mae": float(skm.mean_absolute_error(pred.y_true, pred.y_pred)),
            "r2": float(skm.r2_score(pred.y_true, pred.y_pred))}


def classification_report_table(report: dict[str, Any], title: str) -> Table:
    """scikit-learn's report dict as a rich table: one row per class, then the averages."""
    table = Table(title=title, title_justify="left")
    table.add_column("", style="bold")
    for col in ("precision", "recall", "f1-score", "support"):
        table.add_column(col, justify="right")
    classes = [k for k in report if k not in ("accuracy", "macro avg", "weighted avg", "micro avg")]
    for name in classes:
        row = report[name]
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                      f"{row['f1-score']:.4f}", str(int(row["support"])))
    table.add_section()
    total = int(report["macro avg"]["support"])
    if "accuracy" in report:
        table.add_row("accuracy", "", "", f"{report['accuracy']:.4f}", str(total))
    for avg in ("micro avg", "macro avg", "weighted avg"):
        if avg in report:
            row = report[avg]
            table.add_row(avg, f"{row['precision']:.4f}", f"{row['recall']:.4f}",
                          f"{row['f1-score']:.4f}", str(int(row["support"])))
    return table


def confusion_matrix_table(matrix: list[list[int]], names: list[str], title: str) -> Table:
    """Rows: true class; columns: predicted class."""
    table = Table(title=title, title_justify="left")
    table.add_column("true \\ pred", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, matrix):
        table.add_row(name, *(str(v) for v in row))
    return table


def regression_table(values: dict[str, float], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key in ("mse", "rmse", "mae", "r2"):
        table.add_row(key.upper() if key != "r2" else "R²", f"{values[key]:.6g}")
    return table


def confusion_matrix_text(matrix: list[list[int]], names: list[str]) -> str:
    width = max([len(n) for n in names] + [len(str(v)) for row in matrix for v in row] + [4])
    lines = ["true \\ pred".ljust(width + 2) + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.ljust(width + 2) + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def report_text(task: str, metrics: dict[str, Any], split: str, header: str) -> str:
    """The plain-text report written to report.txt."""
    lines = [header, f"Measured on the {split} split.", ""]
    if task == "regression":
        lines += [f"{k.upper():5s} {metrics[k]:.6g}" for k in ("mse", "rmse", "mae", "r2")]
    else:
        lines += [metrics["classification_report_text"].rstrip(), "", "Confusion matrix:",
                  confusion_matrix_text(metrics["confusion_matrix"], metrics["class_names"])]
        if "pair_roc_auc" in metrics:
            lines += ["", f"Pair verification ROC-AUC: {metrics['pair_roc_auc']:.4f}"]
    return "\n".join(lines) + "\n"

"""Test metrics and how they are shown: scikit-learn's classification report as a rich table,
the confusion matrix, regression errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from rich.console import Group
from rich.table import Table
from rich.text import Text
from sklearn import metrics as skm

from lossbench.tasks import Predictions
from lossbench.tasks import nll as mean_nll


def classification_metrics(pred: Predictions, class_names: list[str] | None,
                           num_classes: int, train_counts: list[int] | None = None
                           ) -> dict[str, Any]:
    """scikit-learn's classification report (as a dict), confusion matrix, accuracy, macro-F1;
    with the training split's class counts, the imbalance metrics too
    (lossbench/results/imbalance_metrics.py)."""
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
    if train_counts is not None and len(pred.y_true):
        from lossbench.results.imbalance_metrics import imbalance_metrics

        result.update(imbalance_metrics(pred.y_true, pred.y_pred, train_counts))
    if pred.scores is not None:
        result.update(calibration_metrics(pred.scores, pred.y_true))
    if pred.embeddings is not None:
        result["pair_roc_auc"] = pair_verification_auc(pred.embeddings, pred.y_true)
    return result


# Probabilities are clipped here before the logarithm, so that one confidently wrong sample (a
# k-NN vote of 0, a saturated softmax) gives a large but finite NLL instead of infinity.


def calibration_bins(scores: np.ndarray, y_true: np.ndarray, n_bins: int = 15
                     ) -> dict[str, np.ndarray]:
    """Reliability-diagram statistics over equal-width confidence bins.

    scores: (N, K) class probabilities; y_true: (N,) class indices. A sample's confidence is
    max_k p_k and it counts as correct when argmax_k p_k == y. Bin b holds confidences in
    (b/n_bins, (b+1)/n_bins] (the first bin also holds 0). Returns per-bin arrays `count`,
    `confidence` (mean confidence) and `accuracy` (fraction correct), and `edges` (n_bins + 1,).
    Empty bins have count 0 and NaN means.
    """
    confidence = scores.max(axis=1)
    correct = (scores.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") puts c == b/n_bins into bin b-1: right-closed bins, as in ECE
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": accuracy, "edges": edges}


def calibration_summary(metrics: dict[str, Any]) -> str:
    """One line for the console and report.txt: ECE, NLL and Brier score."""
    return (f"Calibration: ECE (15 bins) {metrics['ece']:.4f}, NLL {metrics['nll']:.4f}, "
            f"Brier {metrics['brier']:.4f}")


def calibration_metrics(scores: np.ndarray, y_true: np.ndarray, n_bins: int = 15
                        ) -> dict[str, float]:
    """Expected calibration error, negative log-likelihood and Brier score of (N, K) probabilities.

    ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over `n_bins` equal-width confidence bins;
    NLL = −(1/N) Σ_i log max(p_{i,y_i}, 1e-12);
    Brier = (1/N) Σ_i Σ_k (p_{i,k} − [k = y_i])²  (summed over classes: 0 is perfect, 2 worst).
    """
    scores = np.asarray(scores, dtype=np.float64)
    y_true = np.asarray(y_true).astype(int)
    n = len(y_true)
    bins = calibration_bins(scores, y_true, n_bins)
    filled = bins["count"] > 0
    ece = float(np.sum(bins["count"][filled] / n
                       * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))
    nll = mean_nll(scores, y_true)  # the loop's validation NLL, the same formula
    onehot = np.zeros_like(scores)
    onehot[np.arange(n), y_true] = 1.0
    brier = float(np.mean(np.sum((scores - onehot) ** 2, axis=1)))
    return {"ece": ece, "nll": nll, "brier": brier}


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


def titled(title: str, table: Table) -> Group:
    """A table under its title. A rich table's own title wraps at the table's width: a run's
    title ("Test split: loss=mse dataset=diabetes, selected epoch 2 (...)") above a two-column
    table became seven lines of twenty characters. On a line of its own it wraps at the
    terminal's."""
    return Group(Text(title, style="italic"), table)


def classification_report_table(report: dict[str, Any], title: str) -> Group:
    """scikit-learn's report dict as a rich table: one row per class, then the averages."""
    table = Table()
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
    return titled(title, table)


def confusion_matrix_table(matrix: list[list[int]], names: list[str], title: str) -> Group:
    """Rows: true class; columns: predicted class."""
    table = Table()
    table.add_column("true \\ pred", style="bold")
    for name in names:
        table.add_column(name, justify="right")
    for name, row in zip(names, matrix):
        table.add_row(name, *(str(v) for v in row))
    return titled(title, table)


def regression_table(values: dict[str, float], title: str) -> Group:
    table = Table()
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key in ("mse", "rmse", "mae", "r2"):
        table.add_row(key.upper() if key != "r2" else "R²", f"{values[key]:.6g}")
    return titled(title, table)


def confusion_matrix_text(matrix: list[list[int]], names: list[str]) -> str:
    width = max([len(n) for n in names] + [len(str(v)) for row in matrix for v in row] + [4])
    lines = ["true \\ pred".ljust(width + 2) + " ".join(n.rjust(width) for n in names)]
    for name, row in zip(names, matrix):
        lines.append(name.ljust(width + 2) + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def suspicious_results(task: str, metrics: dict[str, Any], y_true: np.ndarray,
                       num_classes: int, at: str) -> list[dict[str, str]]:
    """Warnings for test metrics no better than a model that ignores its input.

    Classification: accuracy within two standard errors (at least 0.02) of chance, 1/K, or of
    the majority-class rate of the test split, the share a constant prediction reaches; the
    margin is the binomial standard error sqrt(b(1-b)/n) of such a guesser on n test samples.
    Regression: R² at or below 0, no better than predicting the mean.
    """
    if task == "regression":
        r2 = metrics.get("r2")
        if r2 is not None and r2 <= 0:
            return [{"kind": "below_mean_predictor", "at": at,
                     "message": f"test R² {r2:.4f} at the {at} epoch: no better than predicting "
                                "the mean"}]
        return []
    n = len(y_true)
    acc = metrics.get("accuracy")
    if not n or acc is None or num_classes < 2:
        return []

    def margin(rate: float) -> float:
        return max(0.02, 2 * math.sqrt(rate * (1 - rate) / n))

    chance = 1.0 / num_classes
    majority = float(np.bincount(np.asarray(y_true, dtype=np.int64), minlength=num_classes).max()
                     / n)
    if acc <= chance + margin(chance):
        return [{"kind": "near_chance", "at": at,
                 "message": f"test accuracy {acc:.4f} at the {at} epoch is near chance "
                            f"(1/{num_classes} = {chance:.4f}, n = {n})"}]
    if majority > chance and acc <= majority + margin(majority):
        return [{"kind": "majority_rate", "at": at,
                 "message": f"test accuracy {acc:.4f} at the {at} epoch is near the majority-class "
                            f"rate {majority:.4f}: what always predicting one class scores (n = {n})"}]
    return []


HEADLINE_KEYS = ("accuracy", "macro_f1", "nll", "brier", "ece", "rmse", "mae", "r2", "loss")


def best_and_last_lines(test_at: dict[str, dict[str, Any]], keep: str, best_epoch: int,
                        last_epoch: int, selection: dict[str, Any]) -> list[str]:
    """Test metrics at the selected and at the last epoch, one line each; the selected epoch
    was chosen on validation (never on test: not the oracle best some papers report)."""
    labels = "CLEAN validation labels (privileged)" if selection.get("privileged") else "validation"
    ties = f", ties by {selection['tie_break']}" if selection.get("tie_break") else ""
    names = {"best": f"selected epoch {best_epoch} (on {labels}: {selection.get('metric')}{ties})",
             "last": f"last epoch {last_epoch}"}
    lines = []
    for at in ("best", "last"):
        values = " ".join(f"{k} {test_at[at][k]:.4f}" for k in HEADLINE_KEYS
                          if isinstance(test_at[at].get(k), float))
        mark = " (headline)" if at == keep else ""
        lines.append(f"test at {names[at]}{mark}: {values}")
    return lines


def report_text(task: str, metrics: dict[str, Any], split: str, header: str,
                notes: list[str] | None = None) -> str:
    """The plain-text report written to report.txt."""
    lines = [header, f"Measured on the {split} split.", ""]
    if task == "regression":
        lines += [f"{k.upper():5s} {metrics[k]:.6g}" for k in ("mse", "rmse", "mae", "r2")]
    else:
        lines += [metrics["classification_report_text"].rstrip(), "", "Confusion matrix:",
                  confusion_matrix_text(metrics["confusion_matrix"], metrics["class_names"])]
        if "balanced_accuracy" in metrics:
            from lossbench.results.imbalance_metrics import imbalance_summary

            lines += ["", imbalance_summary(metrics)]
        if "ece" in metrics:
            lines += ["", calibration_summary(metrics)]
        if "pair_roc_auc" in metrics:
            lines += ["", f"Pair verification ROC-AUC: {metrics['pair_roc_auc']:.4f}"]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"

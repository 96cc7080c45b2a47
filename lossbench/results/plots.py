"""The pictures of a run: learning curves, confusion matrix, predicted against true values, and the
reliability diagram, written as PNG files into the run directory.

matplotlib is imported only when a plot is drawn, and only its Agg canvas is used (no pyplot, no
display, no global backend switch), so plotting works on headless machines and in parallel jobs.
Each `*_figure` function returns a `matplotlib.figure.Figure`; `save_run_plots` writes them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.results.files import write_bytes_atomic

# Past this many classes the confusion matrix drops its per-cell numbers and most tick labels.
MAX_ANNOTATED_CLASSES = 20
# Curves of more epochs than this are drawn as lines without a marker per epoch.
MAX_MARKED_EPOCHS = 30


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def wrap_title(text: str, width_in: float) -> str:
    """A title broken into lines that fit a figure `width_in` inches wide (at matplotlib's
    default 12 pt title, about 9 characters an inch): a long run label (overrides, noise,
    imbalance) is wrapped, never clipped at the figure's edges."""
    import textwrap

    chars = max(20, int(width_in * 9))
    return "\n".join(textwrap.fill(line, chars, break_on_hyphens=False)
                     for line in text.split("\n"))


def figure_title(fig) -> str:
    """The figure's title as drawn (suptitle, else its first axes' title), one line."""
    title = fig.get_suptitle() or next((ax.get_title() for ax in fig.axes if ax.get_title()), "")
    return " ".join(title.split())


def save_png(fig, path: str | Path) -> Path:
    """Render a figure to PNG bytes and write them atomically. The title goes into the PNG's
    Title field too, so tools (and tests) can read what a picture shows without OCR."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Title": figure_title(fig)})
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def curves_figure(history: Sequence[dict[str, Any]], monitor: str, best_epoch: int | None,
                  label: str):
    """Train and validation loss per epoch (left), the monitored validation metric (middle)
    and, when labels were flipped on purpose, what the network memorises (right): the share of
    flipped training samples predicted as their wrong label and as their true one."""
    from matplotlib.ticker import MaxNLocator

    memorises = bool(history) and "flipped_memorised" in history[-1]
    fig = _figure(15 if memorises else 10, 4)
    fig.suptitle(wrap_title(f"Learning curves: {label}", 15 if memorises else 10))
    loss_ax, metric_ax, *memo_ax = fig.subplots(1, 3 if memorises else 2)
    for ax in (loss_ax, metric_ax, *memo_ax):  # epochs are whole: no tick at 1.2 in a two-epoch run
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    epochs = [row["epoch"] for row in history]
    marker = "o" if len(epochs) <= MAX_MARKED_EPOCHS else None  # a smoke run still shows points
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        values = [row.get(key, np.nan) for row in history]
        loss_ax.plot(epochs, values, marker=marker, label=name)
    loss_ax.set_title("Loss per epoch")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    values = [row.get(monitor, np.nan) for row in history]
    metric_ax.plot(epochs, values, marker=marker, color="tab:green", label=monitor)
    # under label noise: the same predictions scored against the other labels (clean or noisy)
    other = monitor.removesuffix("_clean") if monitor.endswith("_clean") else f"{monitor}_clean"
    if history and other in history[-1]:
        metric_ax.plot(epochs, [row.get(other, np.nan) for row in history], color="tab:green",
                       linestyle=":", label=other)
    if best_epoch and best_epoch in epochs:
        best = values[epochs.index(best_epoch)]
        also = " (the last)" if best_epoch == epochs[-1] else ""
        metric_ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        metric_ax.plot([best_epoch], [best], marker="*", markersize=14, color="tab:red",
                       linestyle="none", label=f"best epoch {best_epoch}{also}: {best:.4g}")
    if epochs and epochs[-1] != best_epoch:  # both are tested (metrics.json's test_at)
        metric_ax.plot([epochs[-1]], [values[-1]], marker="D", markersize=8, color="tab:purple",
                       linestyle="none", label=f"last epoch {epochs[-1]}: {values[-1]:.4g}")
    metric_ax.set_title(f"Monitored metric: {monitor}")
    metric_ax.set_xlabel("epoch")
    metric_ax.set_ylabel(monitor)
    metric_ax.legend()
    metric_ax.grid(alpha=0.3)
    if memorises:
        ax = memo_ax[0]
        for key, name, color in (("flipped_memorised", "predicted as the noisy label", "tab:red"),
                                 ("flipped_true", "predicted as the true label", "tab:blue")):
            ax.plot(epochs, [row.get(key, np.nan) for row in history], marker=marker,
                    color=color, label=name)
        if best_epoch and best_epoch in epochs:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1)
        ax.set_title("Flipped training labels: memorisation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("share of flipped training samples")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
        ax.grid(alpha=0.3)
    return fig


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], label: str):
    """Confusion matrix normalised over each true class (rows sum to 1: recall on the diagonal)."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    k = len(class_names)
    side = min(4 + 0.45 * k, 16)
    fig = _figure(side + 1.5, side)
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    step = max(1, k // MAX_ANNOTATED_CLASSES)
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks, [class_names[i] for i in ticks], rotation=45, ha="right")
    ax.set_yticks(ticks, [class_names[i] for i in ticks])
    if k <= MAX_ANNOTATED_CLASSES:
        for i in range(k):
            for j in range(k):
                value = normalised[i, j]
                # inside its cell: left out of the layout, which then measures 2 texts, not k²+2
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value > 0.5 else "black", in_layout=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(wrap_title(f"Confusion matrix (test, normalised by true class)\n{label}",
                            side + 1.5))
    return fig


def pred_vs_true_figure(y_true: np.ndarray, y_pred: np.ndarray, label: str,
                        metrics: dict[str, float] | None = None):
    """Predicted against true values on the test split, with the line of perfect prediction."""
    y_true = np.asarray(y_true, dtype=float).ravel()
    y_pred = np.asarray(y_pred, dtype=float).ravel()
    fig = _figure(6, 6)
    ax = fig.subplots()
    ax.scatter(y_true, y_pred, s=12, alpha=0.6, edgecolors="none")
    finite = np.concatenate([y_true, y_pred])
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color="tab:red", linestyle="--", label="perfect prediction")
    ax.set_xlabel("true value")
    ax.set_ylabel("predicted value")
    summary = ""
    if metrics:
        summary = f"\nRMSE {metrics['rmse']:.4g}, R² {metrics['r2']:.4f}"
    ax.set_title(wrap_title(f"Predicted vs true (test): {label}{summary}", 6))
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def reliability_figure(scores: np.ndarray, y_true: np.ndarray, label: str, n_bins: int = 15):
    """Reliability diagram: accuracy against confidence per bin, with the samples per bin below.

    A calibrated model's bars reach their bin's mean confidence (red) and so follow the diagonal;
    the hatched red gap between a bar and its red mark is the bin's miscalibration (above the
    bar: over-confidence). A bin whose samples are all wrong is a full gap on no bar; a bin with
    no samples is shaded grey, so the two never look alike.
    """
    from lossbench.results.report import calibration_bins, calibration_metrics

    bins = calibration_bins(scores, y_true, n_bins)
    summary = calibration_metrics(scores, y_true, n_bins)
    edges = bins["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    filled = bins["count"] > 0
    fig = _figure(6, 7)
    acc_ax, count_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    accuracy, confidence = bins["accuracy"][filled], bins["confidence"][filled]
    for x in centers[~filled]:
        acc_ax.axvspan(x - width / 2, x + width / 2, facecolor="0.92", linewidth=0,
                       label="empty bin (no samples)")
    acc_ax.bar(centers[filled], accuracy, width=width, edgecolor="black", color="tab:blue",
               label="accuracy")
    acc_ax.bar(centers[filled], confidence - accuracy, bottom=accuracy, width=width,
               facecolor=(1, 0, 0, 0.12), edgecolor="tab:red", hatch="//", linewidth=0.8,
               label="gap to confidence")
    acc_ax.errorbar(centers[filled], confidence, xerr=width / 2, fmt="none",
                    ecolor="tab:red", elinewidth=2.5, label="mean confidence")
    acc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    acc_ax.set_xlim(0, 1)
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy")
    # three lines, each its own: what, which run (wrapped only when it is long), the scores
    acc_ax.set_title(f"Reliability diagram (test, {n_bins} bins)\n{wrap_title(label, 6)}\n"
                     f"ECE {summary['ece']:.4f}, NLL {summary['nll']:.4f}, "
                     f"Brier {summary['brier']:.4f}")
    # bars can reach any corner of the axes: the legend goes below the figure, never over them
    handles, labels = acc_ax.get_legend_handles_labels()
    shown = dict(zip(labels, handles))  # one entry for all the empty bins
    fig.legend(list(shown.values()), list(shown), loc="outside lower center", ncol=3,
               fontsize="small", frameon=False)
    count_ax.bar(centers, bins["count"], width=width, edgecolor="black", color="tab:grey")
    count_ax.set_xlabel("confidence (max class probability)")
    count_ax.set_ylabel("samples")
    return fig


def save_run_plots(run_dir: str | Path, *, task: str, label: str,
                   history: Sequence[dict[str, Any]], monitor: str, best_epoch: int | None,
                   y_true: np.ndarray, y_pred: np.ndarray, scores: np.ndarray | None,
                   test_metrics: dict[str, Any]) -> list[Path]:
    """Write curves.png and, for classification, confusion.png and reliability.png, or for
    regression pred_vs_true.png. `label` names the run, e.g. "loss=ce dataset=digits"."""
    run_dir = Path(run_dir)
    figures = {"curves.png": curves_figure(history, monitor, best_epoch, label)}
    if task == "regression":
        figures["pred_vs_true.png"] = pred_vs_true_figure(y_true, y_pred, label, test_metrics)
    else:
        figures["confusion.png"] = confusion_figure(test_metrics["confusion_matrix"],
                                                    test_metrics["class_names"], label)
        if scores is not None:
            figures["reliability.png"] = reliability_figure(scores, y_true, label)
    return [save_png(fig, run_dir / name) for name, fig in figures.items()]

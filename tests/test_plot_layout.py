"""The pictures read well: whole-epoch ticks, titles inside the figure, legends off the data,
intervals inside the metric's range, one colour per configuration in both compare plots."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lossbench.results.comparison import plots as comparison_plots
from lossbench.results.comparison.rows import Block, Row
from lossbench.results.stats import Stat
from lossbench.results.plots import curves_figure, pred_vs_true_figure, reliability_figure

LONG = ("loss=ce dataset=digits, noise=asymmetric rate=0.3 per mapped class (realised 0.104), "
        "imbalance=longtail ratio=20 (realised 20.0)")


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, page = artist.get_window_extent(), fig.bbox
    return box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1 and box.y1 <= page.y1 + 1


def test_two_epochs_get_whole_ticks_and_the_long_title_fits():
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.4},
               {"epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "val_accuracy": 0.5}]
    fig = curves_figure(history, "val_accuracy", 2, LONG)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0, 2.0]
    assert _inside(fig, fig._suptitle)


def test_reliability_legend_is_off_the_bars_and_titles_fit():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([0.3, 0.3, 0.3], size=200)  # confident: bars reach the top left
    y = rng.integers(0, 3, 200)
    fig = reliability_figure(scores, y, LONG)
    acc_ax = fig.axes[0]
    assert acc_ax.get_legend() is None and len(fig.legends) == 1
    fig.canvas.draw()
    legend = fig.legends[0].get_window_extent()
    assert legend.y1 <= min(ax.get_window_extent().y0 for ax in fig.axes) + 1  # below the plots
    assert _inside(fig, acc_ax.title)
    pred = pred_vs_true_figure(rng.normal(size=50), rng.normal(size=50), LONG,
                               {"rmse": 1.0, "r2": 0.1})
    assert _inside(pred, pred.axes[0].title)


def test_reliability_title_breaks_only_between_its_three_parts():
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([1.0, 1.0, 1.0], size=50)
    fig = reliability_figure(scores, rng.integers(0, 3, 50), "loss=label_smoothing dataset=wine")
    lines = fig.axes[0].get_title().split("\n")
    assert lines[:2] == ["Reliability diagram (test, 15 bins)", "loss=label_smoothing dataset=wine"]
    assert len(lines) == 3 and lines[2].startswith("ECE ")
    assert _inside(fig, fig.axes[0].title)


def _block(metric: str, stats: list[tuple[float, float, float]], labels: list[str]) -> Block:
    rows = []
    for (mean, low, high), label, mark in zip(stats, labels, ("best", "not separated (n = 3)", "")):
        row = Row(key=(label,), runs=[], labels={"loss": label})
        row.stats[metric] = Stat(3, mean, 0.1, low, high, [mean] * 3)
        row.mark = mark
        rows.append(row)
    return Block("iris", "multiclass", metric, "max", [metric], ["loss"], rows)


def test_comparison_intervals_stay_in_range_and_colours_match_curves(monkeypatch):
    captured = []
    monkeypatch.setattr(comparison_plots, "_png_bytes", lambda fig: captured.append(fig) or b"")
    long_label = "x" * 10 + ", " + ", ".join(f"key{i}=value{i}" for i in range(12))
    block = _block("accuracy", [(0.95, 0.80, 1.235), (0.90, 0.70, 1.10), (0.5, -0.2, 1.2)],
                   ["ce", "gce", long_label])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "Tight layout not applied"
        comparison_plots.comparison_plot([block])
    fig = captured[0]
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert -0.05 <= low and high <= 1.05  # the 1.235 of a t interval is not drawn
    for line in ax.lines:
        x = line.get_xdata()
        assert min(x) >= 0.0 and max(x) <= 1.0
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert max(len(part) for label in labels for part in label.split("\n")) <= 40
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "best, or better than the baseline", "not separated from the reference"]
    # the k-th configuration has curves.png's k-th colour (_row_colour, in both plots)
    colours = [container.lines[0].get_color() for container in ax.containers]
    assert colours == ["C0", "C1", "C2"]


def _rate_block(order: list[str]) -> Block:
    rows = []
    for loss in order:
        for rate, mean in ((0.0, 0.95), (0.4, 0.8)):
            row = Row(key=(loss, rate), runs=[], labels={"loss": loss, "dataset.noise.rate": rate})
            row.stats["accuracy"] = Stat(3, mean, 0.01, mean - 0.02, mean + 0.02, [mean] * 3)
            rows.append(row)
    block = Block("digits", "multiclass", "accuracy", "max", ["accuracy"],
                  ["loss", "dataset.noise.rate"], rows)
    block.rate_key = "dataset.noise.rate"
    return block


def test_rates_plot_keeps_each_loss_colour_and_names_the_epoch(monkeypatch):
    """`compare --at best` and `--at last` sort rows differently: a loss keeps its colour."""
    captured = []
    monkeypatch.setattr(comparison_plots, "_png_bytes", lambda fig: captured.append(fig) or b"")
    comparison_plots.rates_plot([_rate_block(["ce", "gce", "sce"])], "best")
    comparison_plots.rates_plot([_rate_block(["sce", "ce", "gce"])], "last")
    colours = []
    for fig in captured:
        ax = fig.axes[0]
        colours.append({c.get_label(): c.lines[0].get_color() for c in ax.containers})
    assert colours[0] == colours[1] and len(set(colours[0].values())) == 3
    assert "selected epoch" in captured[0].axes[0].get_title()
    assert "last epoch" in captured[1].axes[0].get_title()

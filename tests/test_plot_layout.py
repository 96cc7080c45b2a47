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
    (legend,) = fig.legends  # below the axes, which keep the figure's width
    assert [t.get_text() for t in legend.get_texts()] == [
        "highest mean (the reference)", "not separated from the reference",
        "not tested (no reference in its family)"]
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


def _noisy_row(loss: str, rate: float, mean: float, mark: str, index: int) -> Row:
    row = Row(key=(loss, rate), runs=[], labels={"loss": loss, "dataset.noise.rate": rate})
    row.stats["accuracy"] = Stat(3, mean, 0.01, mean - 0.03, min(1.0, mean + 0.03), [mean] * 3)
    row.mark = mark
    row.corruption = {"noise_kind": "symmetric", "noise_rate": rate, "noise_realised": rate,
                      "imbalance_kind": "none", "imbalance_ratio": None}
    return row


def _inside_axes(fig, ax, artist) -> bool:
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), ax.get_window_extent()
    return box.x0 >= frame.x0 - 0.5 and box.x1 <= frame.x1 + 0.5


def test_comparison_names_the_reference_the_baseline_and_the_noise_and_keeps_markers_whole():
    from lossbench.results.comparison.families import Family

    rows = [_noisy_row("gce", 0.2, 1.0, "better", 0), _noisy_row("mae", 0.2, 0.99,
            "not separated (n = 3)", 1), _noisy_row("ce", 0.2, 0.97, "baseline", 2)]
    block = Block("iris", "multiclass", "accuracy", "max", ["accuracy"], ["loss"], rows)
    block.treatment = "loss"
    block.families = [Family({}, rows, [], 0.025, rows[2])]
    fig = comparison_plots.comparison_figure([block], "last")
    (ax,) = fig.axes
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["baseline loss=ce (the reference)", "better than the reference",
                     "not separated from the reference"]
    # the reference's marker in the plot is the one its legend entry shows
    markers = {c.lines[0].get_marker() for c in ax.containers}
    assert legend.legend_handles[0].get_marker() == ax.containers[2].lines[0].get_marker()
    assert len(markers) == 3
    title = ax.get_title()
    assert "against baseline loss=ce" in title and "symmetric 0.2" in title
    assert "last epoch" in title
    for container in ax.containers:  # the star at 1.0 is drawn whole, inside the axes
        assert _inside_axes(fig, ax, container.lines[0])
    assert ax.get_xlim()[1] <= 1.05
    # no third of the width left empty: the axes span most of the figure
    fig.canvas.draw()
    assert ax.get_window_extent().width >= 0.7 * fig.bbox.width
    assert _inside(fig, ax.title) and _inside(fig, legend)


def test_a_rate_sweep_gets_one_panel_per_rate_each_against_its_baseline():
    from lossbench.results.comparison.families import Family

    families, rows = [], []
    for rate in (0.0, 0.2, 0.4, 0.6):
        family = [_noisy_row("gce", rate, 0.9 - rate / 2, "better", 0),
                  _noisy_row("ce", rate, 0.9 - rate, "baseline", 1)]
        families.append(Family({"dataset.noise.rate": rate}, family, [], 0.05, family[1]))
        rows += family
    block = Block("digits", "multiclass", "accuracy", "max", ["accuracy"],
                  ["loss", "dataset.noise.rate"], rows)
    block.treatment, block.families = "loss", families
    fig = comparison_plots.comparison_figure([block])
    assert len(fig.axes) == 4
    fig.canvas.draw()
    for ax, rate in zip(fig.axes, (0.0, 0.2, 0.4, 0.6)):
        assert f"dataset.noise.rate={rate:g}" in ax.get_title()
        assert [t.get_text() for t in ax.get_yticklabels()] == ["loss=gce", "loss=ce"]
        box = ax.get_window_extent()
        assert box.width >= 0.7 * fig.bbox.width  # labels short enough to leave the width
        assert box.height >= 2 * 0.25 * fig.dpi  # a quarter inch and more per row
        assert _inside(fig, ax.title)
    assert fig.axes[0].get_xlim() == fig.axes[-1].get_xlim()  # one scale for all rates


def test_compare_curves_say_the_validation_labels_are_noisy_and_long_lines_carry_no_markers(
        tmp_path, monkeypatch):
    from lossbench.results.comparison.records import Run

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.csv").write_text("epoch,val_accuracy\n" + "".join(
        f"{e},{0.5 + e / 1000}\n" for e in range(1, 401)))
    run = Run(run_dir, "completed", {"monitor": "val_accuracy"}, {}, {}, {})
    row = _noisy_row("ce", 0.4, 0.8, "best", 0)
    row.runs = [run]
    block = Block("digits", "multiclass", "accuracy", "max", ["accuracy"], ["loss"], [row])
    captured = []
    monkeypatch.setattr(comparison_plots, "_png_bytes", lambda fig: captured.append(fig) or b"")
    comparison_plots.curves_plot([block])
    row.corruption = {**row.corruption, "noise_kind": "none", "noise_rate": 0.0}
    comparison_plots.curves_plot([block])
    noisy, clean = (fig.axes[0] for fig in captured)
    assert "NOISY validation labels" in noisy.get_ylabel().replace("\n", " ")
    assert "noisy" in noisy.get_title()
    assert "noisy" not in clean.get_ylabel().lower() and "noisy" not in clean.get_title()
    (line,) = noisy.get_lines()
    assert len(line.get_xdata()) == 400 and line.get_marker() in (None, "None", "")
    captured[0].canvas.draw()
    assert noisy.yaxis.label.get_window_extent().height <= noisy.get_window_extent().height


def test_the_sensitivity_y_label_fits_its_short_axes(monkeypatch):
    from matplotlib.figure import Figure

    from lossbench.experiment.study_report import sensitivity_plot

    per_loss = {loss: {"history": [{"state": "COMPLETE", "value": 0.9,
                                    "params": {"optimizer.lr": 1e-3}}],
                       "chosen": {"optimizer.lr": 1e-3}, "validation": 0.9,
                       "space": {"optimizer.lr": {"low": 1e-4, "high": 1e-1, "log": True}}}
                for loss in ("ce", "gce", "sce")}
    saved, savefig = [], Figure.savefig  # keep the figure the PNG was drawn from
    monkeypatch.setattr(Figure, "savefig",
                        lambda self, *a, **k: saved.append(self) or savefig(self, *a, **k))
    assert sensitivity_plot("digits", per_loss)[:4] == b"\x89PNG"
    (fig,) = saved
    ax = fig.axes[0]
    label, frame = ax.yaxis.label.get_window_extent(), ax.get_window_extent()
    assert label.y0 >= frame.y0 - 1 and label.y1 <= frame.y1 + 1


def _anatomy(names):
    from lossbench.commands.plot_losses import (anatomy_figure, build_losses,
                                                classification_curve)

    modules = build_losses(names, {n: [] for n in names})
    curves = [classification_curve(n, m, 10, n) for n, m in modules.items()]
    return anatomy_figure(curves, "classification", 10)


def test_plot_losses_normalises_curves_of_sizes_ten_times_apart_and_labels_off_the_curves():
    fig = _anatomy(["ce", "focal", "poly1", "label_smoothing", "nce_rce", "hinge", "bce"])
    value_ax, grad_ax = fig.axes
    for ax in (value_ax, grad_ax):
        assert "largest value" in ax.get_ylabel()
        tops = [max(line.get_ydata()) for line in ax.get_lines()]
        assert max(tops) == pytest.approx(1.0) and min(tops) > 0.5  # no curve flattened
    # the confidently-mislabelled band is named in the legend, not in text over the curves
    assert not value_ax.texts and not grad_ax.texts
    (legend,) = fig.legends
    assert any("confidently" in t.get_text() for t in legend.get_texts())
    assert _inside(fig, legend)
    same_size = _anatomy(["ce", "gce", "mae", "sce"])  # within 10x: the plain view
    assert [ax.get_ylabel() for ax in same_size.axes] == ["ℓ", "‖∂ℓ/∂z‖"]


def test_plot_losses_scale_flag_picks_the_view(cli, tmp_path):
    proc = cli("plot-losses", "ce,mae", "--scale", "log", "--out", "log.png", check=True)
    assert proc.stdout.startswith("wrote log.png")
    from PIL import Image
    assert Image.open(tmp_path / "log.png").format == "PNG"
    bad = cli("plot-losses", "ce,mae", "--scale", "sqrt", "--out", "x.png")
    assert bad.returncode == 2 and "invalid choice: 'sqrt'" in bad.stderr
    assert not (tmp_path / "x.png").exists()

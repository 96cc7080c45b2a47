"""The run's plots: what each figure shows (titles, labels, data) and that runs write them as
readable PNG files, or skip them with trainer.plots=false."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_dirs

from lossbench.results import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    """Decode a PNG the way an image viewer would; returns (H, W, channels) floats in [0, 1]."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def assert_drawn(path, min_side=300):
    image = read_png(path)
    assert image.shape[0] >= min_side and image.shape[1] >= min_side
    assert image[..., :3].std() > 0.05  # not a blank canvas


HISTORY = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "val_accuracy": a}
           for e, a in zip(range(1, 6), [0.5, 0.7, 0.8, 0.78, 0.77])]


def test_curves_show_both_losses_and_the_monitored_metric_with_the_best_epoch():
    fig = plots.curves_figure(HISTORY, "val_accuracy", 3, "loss=ce dataset=iris")
    loss_ax, metric_ax = fig.axes
    assert "loss=ce dataset=iris" in fig._suptitle.get_text()
    assert loss_ax.get_xlabel() == "epoch" and loss_ax.get_ylabel() == "loss"
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert labels == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.get_lines()[1].get_ydata(), [2.2 / e for e in range(1, 6)])
    assert metric_ax.get_ylabel() == "val_accuracy"
    best = [line for line in metric_ax.get_lines() if line.get_label().startswith("best")]
    assert best and best[0].get_xdata()[0] == 3 and best[0].get_ydata()[0] == pytest.approx(0.8)
    # the last epoch is tested too (trainer.keep=last keeps it): marked apart from the best
    last = [line for line in metric_ax.get_lines() if line.get_label().startswith("last")]
    assert last and last[0].get_label() == "last epoch 5: 0.77"
    assert last[0].get_xdata()[0] == 5 and last[0].get_ydata()[0] == pytest.approx(0.77)
    same = plots.curves_figure(HISTORY, "val_accuracy", 5, "loss=ce").axes[1]
    assert [line.get_label() for line in same.get_lines() if line.get_label()[:4] in (
        "best", "last")] == ["best epoch 5 (the last): 0.77"]


def test_confusion_matrix_is_normalised_per_true_class_and_names_the_classes():
    matrix = [[8, 2, 0], [0, 5, 5], [0, 0, 0]]  # the last class never occurs in the test split
    fig = plots.confusion_figure(matrix, ["cat", "dog", "bird"], "loss=focal dataset=pets")
    ax = fig.axes[0]
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 0.0]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "bird"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "bird"]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert "loss=focal dataset=pets" in ax.get_title()
    assert "0.80" in [t.get_text() for t in ax.texts]


def test_confusion_matrix_of_many_classes_drops_cell_numbers():
    k = 40
    fig = plots.confusion_figure(np.eye(k, dtype=int).tolist(), [f"c{i}" for i in range(k)], "x")
    ax = fig.axes[0]
    assert len(ax.texts) == 0
    assert len(ax.get_xticklabels()) < k


def test_pred_vs_true_scatters_every_test_sample_against_the_diagonal():
    y_true = np.linspace(0, 10, 50)
    y_pred = y_true + np.sin(y_true)
    fig = plots.pred_vs_true_figure(y_true, y_pred, "loss=huber dataset=diabetes",
                                    {"rmse": 0.7, "r2": 0.9})
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.c_[y_true, y_pred])
    diagonal = ax.get_lines()[0]
    np.testing.assert_allclose(diagonal.get_xdata(), diagonal.get_ydata())
    assert ax.get_xlabel() == "true value" and ax.get_ylabel() == "predicted value"
    assert "loss=huber dataset=diabetes" in ax.get_title() and "RMSE 0.7" in ax.get_title()


def test_reliability_bars_are_the_accuracy_of_each_confidence_bin():
    # 10 samples at confidence 0.95 (9 right), 10 at 0.55 (3 right)
    scores = np.array([[0.95, 0.05]] * 10 + [[0.55, 0.45]] * 10)
    labels = np.array([0] * 9 + [1] + [0] * 3 + [1] * 7)
    fig = plots.reliability_figure(scores, labels, "loss=ce dataset=moons")
    acc_ax, count_ax = fig.axes
    (bars,) = [c for c in acc_ax.containers if c.get_label() == "accuracy"]
    heights = sorted(round(p.get_height(), 6) for p in bars)
    assert heights == [0.3, 0.9]
    assert sum(p.get_height() for p in count_ax.patches) == 20
    assert "ECE 0.1500" in acc_ax.get_title()  # (10·|0.9−0.95| + 10·|0.3−0.55|) / 20
    assert acc_ax.get_ylabel() == "accuracy"
    assert count_ax.get_xlabel().startswith("confidence")


def _bars(ax, label):
    return [p for c in ax.containers if c.get_label() == label for p in c]


def test_reliability_tells_an_empty_bin_from_a_bin_with_every_sample_wrong():
    # 10 samples at confidence 0.95 (all right), 5 at 0.45 (all wrong); the bins between are empty
    scores = np.array([[0.95, 0.05]] * 10 + [[0.45, 0.55]] * 5)
    labels = np.array([0] * 10 + [0] * 5)
    fig = plots.reliability_figure(scores, labels, "loss=ce dataset=moons", n_bins=10)
    acc_ax = fig.axes[0]

    def drawn_at(x, label):  # the artists with this legend label covering confidence x
        return [p for p in acc_ax.patches if p.get_label() == label or p in _bars(acc_ax, label)
                if p.get_x() <= x <= p.get_x() + p.get_width()]

    wrong, empty = 0.55, 0.75  # the bin of 0.55 holds the five wrong samples; 0.75 holds none
    assert [p.get_height() for p in _bars(acc_ax, "accuracy") if p.get_x() <= wrong
            <= p.get_x() + p.get_width()] == [0.0]
    (gap,) = [p for p in _bars(acc_ax, "gap to confidence")
              if p.get_x() <= wrong <= p.get_x() + p.get_width()]
    assert gap.get_height() == pytest.approx(0.55)  # the whole way from 0 to the confidence
    assert not drawn_at(wrong, "empty bin (no samples)")
    assert drawn_at(empty, "empty bin (no samples)")
    assert not [p for p in _bars(acc_ax, "accuracy") + _bars(acc_ax, "gap to confidence")
                if p.get_x() <= empty <= p.get_x() + p.get_width()]
    # what tells them apart is in the legend, once each
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend.count("empty bin (no samples)") == 1 and "gap to confidence" in legend
    # and in the pixels: the empty bin is shaded, the all-wrong bin is not the same colour
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)

    def pixel(x, y):
        px, py = acc_ax.transData.transform((x, y))
        return image[image.shape[0] - int(py), int(px)]

    assert tuple(pixel(empty, 0.2)) != tuple(pixel(wrong, 0.2))
    assert tuple(pixel(empty, 0.2)) != (255, 255, 255)


def test_save_run_plots_writes_readable_pngs(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.dirichlet([1.0, 1.0, 1.0], size=60)
    y_true = rng.integers(0, 3, 60)
    written = plots.save_run_plots(
        tmp_path, task="multiclass", label="loss=ce dataset=wine", history=HISTORY,
        monitor="val_accuracy", best_epoch=3, y_true=y_true, y_pred=scores.argmax(1),
        scores=scores, test_metrics={"confusion_matrix": [[5, 1, 0], [1, 5, 0], [0, 0, 6]],
                                     "class_names": ["a", "b", "c"]})
    assert sorted(p.name for p in written) == ["confusion.png", "curves.png", "reliability.png"]
    for path in written:
        assert_drawn(path)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def test_runs_write_the_plots_their_task_calls_for(cli, tmp_path):
    cli("train", "dataset=iris", "trainer=smoke", "trainer.plots=true", "print_config=false",
        f"hydra.run.dir={tmp_path / 'cls'}", check=True)
    cli("train", "dataset=diabetes", "loss=mse", "trainer=smoke", "trainer.plots=true",
        "print_config=false", f"hydra.run.dir={tmp_path / 'reg'}", check=True)
    cls, reg = tmp_path / "cls", tmp_path / "reg"
    assert {p.name for p in cls.glob("*.png")} == {"curves.png", "confusion.png",
                                                   "reliability.png"}
    assert {p.name for p in reg.glob("*.png")} == {"curves.png", "pred_vs_true.png"}
    for path in [*cls.glob("*.png"), *reg.glob("*.png")]:
        assert_drawn(path)


def test_plots_false_skips_them(cli, tmp_path):
    cli("train", "dataset=iris", "trainer=smoke", "trainer.plots=false", "print_config=false",
        f"hydra.run.dir={tmp_path / 'run'}", check=True)
    (run_dir,) = run_dirs(tmp_path)
    assert (run_dir / "report.txt").exists()
    assert list(run_dir.glob("*.png")) == []

"""What the user watches: a live bar on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from lossbench.engine.progress import EpochProgress


def _drive(console: Console) -> EpochProgress:
    with EpochProgress(console, epochs=2, monitor="val_accuracy") as progress:
        for epoch in (1, 2):
            progress.start_epoch(epoch, 4)
            for b in range(4):
                progress.batch(b + 1, 0.5)
            progress.end_epoch({"epoch": epoch, "train_loss": 0.5, "val_accuracy": 0.75})
    return progress


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = _drive(Console(file=out, force_terminal=False, width=120))
    lines = out.getvalue().splitlines()
    assert lines == ["epoch 1/2 train_loss=0.5 val_accuracy=0.75",
                     "epoch 2/2 train_loss=0.5 val_accuracy=0.75"]
    assert progress.progress is None


def test_live_bars_with_loss_and_metric_on_a_terminal():
    out = io.StringIO()
    progress = _drive(Console(file=out, force_terminal=True, width=120))
    text = out.getvalue()
    assert progress.progress is not None
    assert "epochs" in text and "batches" in text
    assert "loss 0.5000" in text and "val_accuracy 0.7500" in text
    assert "2/2" in text


def test_a_live_bar_in_a_jupyter_notebook_not_epoch_lines():
    # rich draws a live bar in a notebook cell (through ipywidgets); plain lines only in logs
    jupyter = Console(file=io.StringIO(), force_terminal=False, force_jupyter=True)
    assert EpochProgress(jupyter, epochs=2, monitor="val_accuracy").live
    log = Console(file=io.StringIO(), force_terminal=False, force_jupyter=False)
    assert not EpochProgress(log, epochs=2, monitor="val_accuracy").live

"""The per-epoch record: the columns of history.csv, from real predictions and a real `fit`."""
from __future__ import annotations

import numpy as np
import torch
from rich.console import Console

from lossbench.data import Split, Splits
from lossbench.engine.loop import fit
from lossbench.engine.predict import Predictions
from lossbench.engine.progress import EpochProgress
from lossbench.engine.validation import epoch_record, flipped_training, validation_metrics


def toy_splits(noise: bool) -> Splits:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (60,), generator=g)
    x = torch.randn(60, 4, generator=g) + y.unsqueeze(1).float()
    noisy = torch.where(torch.arange(60) % 5 == 0, (y + 1) % 3, y)
    part = Split(x=x, y=noisy, y_clean=y) if noise else Split(x=x, y=y)
    return Splits(train=part, val=part, test=part, task="multiclass", name="toy",
                  num_classes=3, class_names=["0", "1", "2"], sample_shape=(4,))


def test_the_record_holds_its_columns_in_the_order_of_history_csv():
    splits = toy_splits(noise=True)
    scores = np.full((60, 3), 1 / 3)
    pred = Predictions(y_true=splits.val.y.numpy(), y_pred=np.zeros(60, dtype=np.int64),
                       scores=scores, loss=1.1)
    row = epoch_record(4, 0.9, {"ce": 0.7, "contrastive": 0.2},
                       validation_metrics(splits, pred),
                       {"flipped_memorised": 0.25, "flipped_true": 0.5}, 68, 1e-3)
    assert list(row) == [
        "epoch", "train_loss", "train_loss_ce", "train_loss_contrastive", "val_loss",
        "val_accuracy", "val_macro_f1", "val_nll", "val_accuracy_clean", "val_macro_f1_clean",
        "val_nll_clean", "flipped_memorised", "flipped_true", "steps", "lr"]
    assert row["val_accuracy"] == float(np.mean(splits.val.y.numpy() == 0))
    assert row["val_accuracy_clean"] == float(np.mean(splits.val.y_clean.numpy() == 0))
    assert abs(row["val_nll"] - np.log(3)) < 1e-12 and row["steps"] == 68


def test_fit_writes_one_record_per_epoch_with_seconds_last(compose_cfg):
    splits = toy_splits(noise=True)
    trainer = compose_cfg("trainer=smoke", "trainer.epochs=3", "trainer.max_batches=null",
                          "trainer.early_stopping=false").trainer
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    loss = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with EpochProgress(Console(quiet=True), 3, "val_accuracy", enabled=False) as progress:
        result = fit(model, loss, optimizer, None, splits, "logits", trainer,
                     torch.device("cpu"), torch.Generator().manual_seed(0), progress)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    steps = -(-60 // trainer.batch_size)
    assert [row["steps"] for row in result.history] == [steps, 2 * steps, 3 * steps]
    assert list(result.history[0]) == [
        "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_nll",
        "val_accuracy_clean", "val_macro_f1_clean", "val_nll_clean", "flipped_memorised",
        "flipped_true", "steps", "lr", "seconds"]
    # the flipped samples are every 5th: memorised + true shares cannot exceed 1
    flipped = flipped_training(splits)
    assert len(flipped) == 12
    assert all(r["flipped_memorised"] + r["flipped_true"] <= 1 for r in result.history)

"""The training loop: early stopping, best weights restored, monitor chosen by task."""

from __future__ import annotations

import csv

import pytest
import torch

from lossbench.errors import UserError
from lossbench.engine.predict import predict
from lossbench.models import MLP
from lossbench.experiment.run import load_data, run
from lossbench.engine.selection import resolve_monitor


def test_monitor_defaults_fit_the_task():
    assert resolve_monitor("multiclass") == ("val_accuracy", "max")
    assert resolve_monitor("regression") == ("val_rmse", "min")
    assert resolve_monitor("binary", "val_loss") == ("val_loss", "min")
    with pytest.raises(UserError, match="val_rmse is not produced by a binary"):
        resolve_monitor("binary", "val_rmse")


def test_early_stopping_stops_when_the_metric_stalls(compose_cfg):
    # lr=0: nothing changes after epoch 1, so the run stops after `patience` more epochs
    # (min_steps=0: early stopping may end the run at any step).
    cfg = compose_cfg("optimizer.lr=0.0", "trainer.epochs=20", "trainer.patience=3",
                      "trainer.min_steps=0")
    run(cfg)
    rows = list(csv.DictReader(open(f"{cfg.run_dir}/history.csv")))
    assert len(rows) == 4
    import json

    metrics = json.load(open(f"{cfg.run_dir}/metrics.json"))
    assert metrics["best_epoch"] == 1 and metrics["stopped_early"] is True


def test_saved_weights_are_those_of_the_best_epoch(compose_cfg):
    # A learning rate high enough to wander: the last epoch is rarely the best one.
    cfg = compose_cfg("dataset=wine", "trainer.epochs=12", "trainer.early_stopping=false",
                      "optimizer=sgd", "optimizer.lr=0.5", "trainer.monitor=val_loss")
    run(cfg)
    rows = list(csv.DictReader(open(f"{cfg.run_dir}/history.csv")))
    best = min(rows, key=lambda r: float(r["val_loss"]))
    splits = load_data(cfg)
    model = MLP(splits.sample_shape, splits.num_classes, hidden=list(cfg.model.hidden))
    model.load_state_dict(torch.load(f"{cfg.run_dir}/model.pt", weights_only=True))
    from lossbench.losses import CrossEntropyLoss

    pred = predict(model, splits, "val", "logits", 1024, torch.device("cpu"), CrossEntropyLoss())
    assert pred.loss == pytest.approx(float(best["val_loss"]), rel=1e-5)


@pytest.mark.parametrize("scheduler", ["step", "cosine", "onecycle", "plateau"])
def test_every_scheduler_drives_the_learning_rate(compose_cfg, scheduler):
    overrides = {"step": ["scheduler.step_size=1", "scheduler.gamma=0.5"],
                 "cosine": [], "onecycle": ["scheduler.max_lr=0.01"],
                 "plateau": ["scheduler.patience=0", "optimizer.lr=1e-6"]}[scheduler]
    cfg = compose_cfg(f"scheduler={scheduler}", "trainer.epochs=4",
                      "trainer.early_stopping=false", "dataset=iris", *overrides)
    run(cfg)
    lrs = [float(r["lr"]) for r in csv.DictReader(open(f"{cfg.run_dir}/history.csv"))]
    assert len(lrs) == 4
    assert len(set(lrs)) > 1, f"{scheduler} never changed the learning rate: {lrs}"
    if scheduler == "step":
        assert lrs[:3] == pytest.approx([1e-3, 5e-4, 2.5e-4])


@pytest.mark.parametrize("gather_bytes", [1, 3 * 8 * 5 * 4, 2**30])  # a batch, 3 batches, all
@pytest.mark.parametrize("max_batches,skip", [(None, 0), (4, 0), (None, 2), (4, 3)])
@pytest.mark.parametrize("through", ["tensors", "a DataLoader"])
def test_training_batches_are_the_epochs_permutation_in_order(monkeypatch, gather_bytes,
                                                              max_batches, skip, through):
    """Batches gathered a chunk at a time, or read by a DataLoader, are exactly the epoch's
    permutation sliced per batch, the short last batch included, whatever the chunk size; a
    resumed epoch leaves out the batches it had done."""
    from lossbench.engine import batches as train
    from lossbench.data import Split
    from lossbench.data.augment import AugmentedImages

    monkeypatch.setattr(train, "GATHER_BYTES", gather_bytes)
    x = torch.arange(45 * 5, dtype=torch.float32).reshape(45, 5)  # 20 bytes a sample
    y = torch.arange(45)
    split = Split(x=x, y=y, dataset=AugmentedImages(x, y) if through != "tensors" else None)
    n, batches = train.train_batches(split, 8, torch.Generator().manual_seed(3), max_batches,
                                     skip=skip)
    got = list(batches)
    order = torch.randperm(45, generator=torch.Generator().manual_seed(3))
    want = [order[i:i + 8] for i in range(0, 45, 8)][:max_batches]
    assert n == len(want) and len(got) == n - skip
    for (xb, yb), idx in zip(got, want[skip:]):
        assert torch.equal(yb, idx) and torch.equal(xb, x[idx])

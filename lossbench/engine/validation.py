"""What each epoch records: the validation metrics, the memorisation of flipped labels, and the
history row (one line of history.csv) that holds them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from lossbench.data import Split, Splits
from lossbench.engine.predict import class_scores, model_outputs
from lossbench.losses.base import hook
from lossbench.tasks import Predictions, nll

def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Unweighted mean over the K classes of F1 = 2·TP / (2·TP + FP + FN), 0 for a class with
    no true and no predicted sample: scikit-learn's f1_score(average="macro",
    labels=range(K), zero_division=0), from one bincount. It runs after every epoch, where
    scikit-learn's input checks cost more than the training steps of a small dataset."""
    k = num_classes
    confusion = np.bincount(np.asarray(y_true, dtype=np.int64) * k + np.asarray(y_pred, dtype=np.int64),
                            minlength=k * k).reshape(k, k)  # (true, predicted)
    tp = np.diag(confusion).astype(np.float64)
    denom = confusion.sum(0) + confusion.sum(1)  # 2·TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


def validation_metrics(splits: Splits, pred: Predictions) -> dict[str, float]:
    """The per-epoch validation row (cheap metrics only). Under injected label noise the same
    predictions are scored against the clean labels too (`*_clean` columns)."""
    row = {"val_loss": float(pred.loss) if pred.loss is not None else float("nan")}
    if splits.task == "regression":
        err = pred.y_pred - pred.y_true
        mse = float(np.mean(err ** 2))
        var = float(np.var(pred.y_true))
        row.update(val_rmse=math.sqrt(mse), val_mae=float(np.mean(np.abs(err))),
                   val_r2=1.0 - mse / var if var > 0 else float("nan"))
        return row
    labels = {"": pred.y_true}
    clean = splits.val.y_clean
    if clean is not None:
        n = len(pred.y_true)  # max_batches may have cut the split short
        labels["_clean"] = clean[:n].cpu().numpy()
    for suffix, y in labels.items():
        row[f"val_accuracy{suffix}"] = float(np.mean(pred.y_pred == y))
        row[f"val_macro_f1{suffix}"] = macro_f1(y, pred.y_pred, splits.num_classes)
        row[f"val_nll{suffix}"] = nll(pred.scores, y)
    return row


def flipped_training(splits: Splits) -> Split | None:
    """The training samples whose label the injected noise changed, with their noisy `y` and
    true `y_clean` labels, or None when there are none (no noise, regression)."""
    train = splits.train
    if train.y_clean is None or splits.task == "regression":
        return None
    idx = (train.y != train.y_clean).nonzero().flatten()
    if not len(idx):
        return None
    if train.x is not None:
        return Split(x=train.x[idx], y=train.y[idx], y_clean=train.y_clean[idx])
    # read in order, unaugmented (an integer key, not (index, epoch seed))
    return Split(y=train.y[idx], y_clean=train.y_clean[idx],
                 dataset=torch.utils.data.Subset(train.dataset, idx.cpu().tolist()),
                 loader_options=train.loader_options)


def scores_classes(head: str, loss_fn: nn.Module) -> bool:
    """Whether the outputs of `head` give class scores: every head but an embedding, which
    does only through a loss's own classifier (`scores`, e.g. mixed's)."""
    return head != "embedding" or hook(loss_fn, "scores") is not None


def memorisation(model: nn.Module, flipped: Split, head: str, loss_fn: nn.Module,
                 batch_size: int, device: torch.device, out: torch.Tensor | None = None
                 ) -> dict[str, float]:
    """Shares of the flipped training samples that the model predicts as their (wrong) noisy
    label, `flipped_memorised`, and as their true label, `flipped_true`: one extra prediction
    over those samples only (`out`: the model's outputs on them, when the caller has them)."""
    if out is None:
        out, _, _ = model_outputs(model, flipped, batch_size, device)
    with torch.inference_mode():
        predicted = class_scores(out, head, loss_fn).argmax(-1)  # (F,)
    return {"flipped_memorised": float((predicted == flipped.y).float().mean()),
            "flipped_true": float((predicted == flipped.y_clean).float().mean())}


def epoch_record(epoch: int, train_loss: float, terms: dict[str, float],
                 validation: dict[str, float], memorised: dict[str, float] | None,
                 steps: int, lr: float) -> dict[str, Any]:
    """One history.csv row, its columns in file order: epoch, train_loss, then a composite
    loss's parts (train_loss_<part>), the validation metrics (`validation_metrics`), the
    memorisation shares under label noise (`memorisation`), the optimizer steps so far and the
    learning rate of the epoch. `fit` appends `seconds` once the epoch's bookkeeping is done."""
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
    row.update({f"train_loss_{name}": value for name, value in terms.items()})
    row.update(validation)
    row.update(memorised or {})
    row["steps"] = steps
    row["lr"] = lr
    return row

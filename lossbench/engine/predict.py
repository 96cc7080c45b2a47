"""Predictions of a model on a split, turned into what the report needs.

Heads (see `lossbench.losses`): `logits` → softmax, `sigmoid` → sigmoid, `embedding` →
k-nearest neighbours fitted on the training embeddings. Regression outputs are mapped back to the
original target units before any metric is computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from lossbench.engine import distributed
from lossbench.data import Split, Splits
from lossbench.engine.batches import (eval_batches, loader_batches, loader_options,  # noqa: F401
                                      split_loader)
from lossbench.losses.base import default_scores, hook, squeeze_output
from lossbench.tasks import Predictions


@torch.inference_mode()
def model_outputs(model: nn.Module, split: Split, batch_size: int, device: torch.device,
                  max_batches: int | None = None, loss_fn: nn.Module | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """All outputs (N, O) and targets (N,) of a split, plus the mean loss when loss_fn is given.

    Over several processes, every rank returns the outputs of the whole split (gathered).
    """
    was_training = model.training
    model.eval()
    outs, ys = [], []
    total = torch.zeros((), device=device)
    for x, y in eval_batches(split, batch_size, device, max_batches):
        out = squeeze_output(model(x))  # (B, O), or (B,) for one output
        if loss_fn is not None and len(y):
            total += loss_fn(out, y).float() * len(y)
        outs.append(out.float())
        ys.append(y)
    model.train(was_training)
    dist = distributed.current()
    if outs:
        out_all, y_all = torch.cat(outs), torch.cat(ys)
    else:  # a rank whose slice is empty (more ranks than samples) still joins the gathers
        out_all = torch.empty((0,), device=device)
        y_all = torch.empty((0,), device=device, dtype=split.y.dtype)
    if dist.active:
        out_all = distributed.gather_rows(out_all, dist)
        y_all = distributed.gather_rows(y_all, dist)
        total = distributed.all_reduce_sum(total, dist)
    mean_loss = float(total) / max(len(y_all), 1) if loss_fn is not None else None
    return out_all, y_all, mean_loss


def class_scores(output: torch.Tensor, head: str, loss_fn: nn.Module | None = None) -> torch.Tensor:
    """(N, K) or (N,) outputs -> (N, K) class probabilities."""
    scores = hook(loss_fn, "scores")
    if scores is not None:  # the loss's own: a classifier it owns, or its margins removed
        return scores(output)
    return default_scores(output, head)


# Where a run's class probabilities come from (metrics.json's `class_scores`): calibration (nll,
# brier, ece) of kNN vote shares, which move in steps of 1/k, is not that of a model's
# probabilities, and lossbench compare does not rank one against the other.
KNN_NEIGHBOURS = 5
SCORE_SOURCES = {
    "softmax": "softmax of the logits",
    "sigmoid": "sigmoid of the one logit",
    "ovr_sigmoid": "one-vs-rest sigmoids of the logits, normalised to sum to 1",
    "loss": "the loss's own scores (its `scores` hook)",
    "knn_votes": f"vote shares of the {KNN_NEIGHBOURS} nearest training embeddings",
}


def score_source(loss_fn: nn.Module | None, head: str, num_outputs: int) -> str:
    """Which of SCORE_SOURCES `predict` turns this loss's outputs into class probabilities by."""
    if hook(loss_fn, "scores") is not None:
        return "loss"
    if head == "embedding":
        return "knn_votes"
    if num_outputs == 1:
        return "sigmoid"
    return "ovr_sigmoid" if head == "sigmoid" else "softmax"


def knn_classifier(train_embeddings: np.ndarray, train_labels: np.ndarray,
                   k: int = KNN_NEIGHBOURS):
    """A k-nearest-neighbour classifier on embeddings, as used for metric-learning runs."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=min(k, len(train_labels))).fit(
        train_embeddings, train_labels)


def predict(model: nn.Module, splits: Splits, split_name: str, head: str, batch_size: int,
            device: torch.device, loss_fn: nn.Module | None = None,
            max_batches: int | None = None,
            outputs: tuple[torch.Tensor, torch.Tensor, float | None] | None = None
            ) -> Predictions:
    """Predictions on `split_name` ('train', 'val' or 'test') in the form the report expects.
    `outputs`: what `model_outputs` returns for that split, when the caller has it already."""
    split = getattr(splits, split_name)
    out, y, mean_loss = (outputs if outputs is not None else
                         model_outputs(model, split, batch_size, device, max_batches, loss_fn))
    if splits.task == "regression":
        scale = lambda t: (t.double().cpu().numpy() * splits.target_std + splits.target_mean)
        return Predictions(y_true=scale(y), y_pred=scale(out), loss=mean_loss)
    y_true = y.cpu().numpy()
    if head == "embedding" and hook(loss_fn, "scores") is None:  # kNN unless the loss classifies
        train_out, train_y, _ = model_outputs(model, splits.train, batch_size, device, max_batches)
        knn = knn_classifier(train_out.cpu().numpy(), train_y.cpu().numpy())
        emb = out.cpu().numpy()
        proba = np.zeros((len(emb), splits.num_classes))
        proba[:, knn.classes_] = knn.predict_proba(emb)
        return Predictions(y_true=y_true, y_pred=knn.classes_[proba[:, knn.classes_].argmax(1)],
                           scores=proba, embeddings=emb, loss=mean_loss)
    with torch.inference_mode():  # scores may run the loss's own layers (mixed's classifier)
        scores = class_scores(out, head, loss_fn).cpu().numpy()
    emb = out.cpu().numpy() if head == "embedding" else None
    return Predictions(y_true=y_true, y_pred=scores.argmax(1), scores=scores, embeddings=emb,
                       loss=mean_loss)


def robust_accuracy(model: nn.Module, splits: Splits, split_name: str, head: str,
                    batch_size: int, device: torch.device, loss_fn: nn.Module,
                    max_batches: int | None = None) -> float:
    """Accuracy on `split_name` when every input is replaced by `loss_fn.attack(model, x, y)`
    (the attack the adversarial loss trains against), the model in eval mode.

    The calling process attacks the whole split (over several processes only the main one
    reports): it reads every row, not its rank's slice.
    """
    split = getattr(splits, split_name)
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    for x, y in eval_batches(split, batch_size, device, max_batches, whole=True):
        x, y = x.to(device), y.to(device)
        x_adv = loss_fn.attack(model, x, y)  # needs input gradients: outside inference mode
        with torch.inference_mode():
            out = squeeze_output(model(x_adv))
            pred = class_scores(out, head, loss_fn).argmax(-1)
        correct += int((pred == y).sum())
        seen += len(y)
    model.train(was_training)
    return correct / max(seen, 1)

"""Predictions of a model on a split, turned into what the report needs.

Heads (see `lossbench.losses`): `logits` → softmax, `sigmoid` → sigmoid, `embedding` →
k-nearest neighbours fitted on the training embeddings. Regression outputs are mapped back to the
original target units before any metric is computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lossbench.data import Split, Splits


@dataclass
class Predictions:
    """Model outputs on one split, as numpy arrays for scikit-learn."""

    y_true: np.ndarray  # (N,) class indices, or targets in original units
    y_pred: np.ndarray  # (N,) predicted class indices, or predicted values
    scores: np.ndarray | None = None  # (N, K) class probabilities (classification)
    embeddings: np.ndarray | None = None  # (N, D) for metric-learning heads
    loss: float | None = None  # mean loss on the split (training units)


def eval_batches(split: Split, batch_size: int, device: torch.device,
                 max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a split in order, sliced from tensors (or read through a DataLoader)."""
    if split.x is None:
        loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size, shuffle=False)
        for b, (x, y) in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                return
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return
    n = len(split)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    for start in range(0, n, batch_size):
        yield split.x[start:start + batch_size], split.y[start:start + batch_size]


@torch.inference_mode()
def model_outputs(model: nn.Module, split: Split, batch_size: int, device: torch.device,
                  max_batches: int | None = None, loss_fn: nn.Module | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, float | None]:
    """All outputs (N, O) and targets (N,) of a split, plus the mean loss when loss_fn is given."""
    was_training = model.training
    model.eval()
    outs, ys = [], []
    total = torch.zeros((), device=device)
    for x, y in eval_batches(split, batch_size, device, max_batches):
        out = model(x)
        if out.shape[-1] == 1:
            out = out.squeeze(-1)
        if loss_fn is not None:
            total += loss_fn(out, y).float() * len(y)
        outs.append(out.float())
        ys.append(y)
    model.train(was_training)
    y_all = torch.cat(ys)
    mean_loss = float(total) / max(len(y_all), 1) if loss_fn is not None else None
    return torch.cat(outs), y_all, mean_loss


def class_scores(output: torch.Tensor, head: str, loss_fn: nn.Module | None = None) -> torch.Tensor:
    """(N, K) or (N,) outputs -> (N, K) class probabilities."""
    if loss_fn is not None and hasattr(loss_fn, "scores"):
        return loss_fn.scores(output)
    if head == "sigmoid":
        if output.dim() == 1:  # one logit: P(class 1)
            p = torch.sigmoid(output)
            return torch.stack([1 - p, p], dim=-1)
        p = torch.sigmoid(output)  # one-vs-rest: normalise the K sigmoids to a distribution
        return p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    if output.dim() == 1:  # a one-output model asked for classes (not produced by lossbench)
        output = torch.stack([-output, output], dim=-1)
    return torch.softmax(output, dim=-1)


def knn_classifier(train_embeddings: np.ndarray, train_labels: np.ndarray, k: int = 5):
    """A k-nearest-neighbour classifier on embeddings, as used for metric-learning runs."""
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=min(k, len(train_labels))).fit(
        train_embeddings, train_labels)


def predict(model: nn.Module, splits: Splits, split_name: str, head: str, batch_size: int,
            device: torch.device, loss_fn: nn.Module | None = None,
            max_batches: int | None = None) -> Predictions:
    """Predictions on `split_name` ('train', 'val' or 'test') in the form the report expects."""
    split = getattr(splits, split_name)
    out, y, mean_loss = model_outputs(model, split, batch_size, device, max_batches, loss_fn)
    if splits.task == "regression":
        scale = lambda t: (t.double().cpu().numpy() * splits.target_std + splits.target_mean)
        return Predictions(y_true=scale(y), y_pred=scale(out), loss=mean_loss)
    y_true = y.cpu().numpy()
    if head == "embedding":
        train_out, train_y, _ = model_outputs(model, splits.train, batch_size, device, max_batches)
        knn = knn_classifier(train_out.cpu().numpy(), train_y.cpu().numpy())
        emb = out.cpu().numpy()
        proba = np.zeros((len(emb), splits.num_classes))
        proba[:, knn.classes_] = knn.predict_proba(emb)
        return Predictions(y_true=y_true, y_pred=knn.classes_[proba[:, knn.classes_].argmax(1)],
                           scores=proba, embeddings=emb, loss=mean_loss)
    scores = class_scores(out, head, loss_fn).cpu().numpy()
    return Predictions(y_true=y_true, y_pred=scores.argmax(1), scores=scores, loss=mean_loss)

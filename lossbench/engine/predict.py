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

from lossbench import distributed
from lossbench.data import Split, Splits
from lossbench.errors import UserError


@dataclass
class Predictions:
    """Model outputs on one split, as numpy arrays for scikit-learn."""

    y_true: np.ndarray  # (N,) class indices, or targets in original units
    y_pred: np.ndarray  # (N,) predicted class indices, or predicted values
    scores: np.ndarray | None = None  # (N, K) class probabilities (classification)
    embeddings: np.ndarray | None = None  # (N, D) for metric-learning heads
    loss: float | None = None  # mean loss on the split (training units)


def loader_options(device: torch.device, num_workers: int | str = "auto") -> dict:
    """DataLoader options for data read per sample (on-disk images): worker processes decode
    while the GPU computes, into pinned memory so host-to-GPU copies can overlap. On CPU the
    cores are busy training, so `auto` reads in the main process."""
    import os

    if num_workers == "auto":
        per_rank = (os.cpu_count() or 1) // max(distributed.current().world_size, 1)
        num_workers = min(4, max(per_rank - 1, 0)) if device.type == "cuda" else 0
    return {"num_workers": int(num_workers), "pin_memory": device.type == "cuda"}


def loader_batches(loader: torch.utils.data.DataLoader, device: torch.device
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) batches of a DataLoader, moved to `device`. A sample that cannot be read
    (an image file damaged or removed since the run started) stops the run with one line: a
    worker's error reaches this process wrapped with the worker's traceback, which is cut off."""
    try:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    except UserError as err:
        last = str(err).strip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


def split_loader(split: Split, lo: int, hi: int, batch_size: int, device: torch.device
                 ) -> torch.utils.data.DataLoader:
    """The DataLoader over samples lo..hi-1 of a split, in order, with the run's workers; built
    on first use and kept, so that its workers persist from one validation to the next."""
    if split.eval_loader is None or split.eval_loader[:2] != ((lo, hi), batch_size):
        options = dict(split.loader_options or loader_options(device))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(split.dataset, range(lo, hi)), batch_size=batch_size,
            shuffle=False, persistent_workers=options["num_workers"] > 0, **options)
        split.eval_loader = ((lo, hi), batch_size, loader)
    return split.eval_loader[2]


def eval_batches(split: Split, batch_size: int, device: torch.device,
                 max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a split in order, sliced from tensors (or read through a DataLoader).

    Over several processes each rank reads only its contiguous slice of the split (see
    `distributed.eval_range`); `model_outputs` gathers the slices back in order.
    """
    n = len(split)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    lo, hi = distributed.eval_range(n, distributed.current())
    if split.x is None:
        if lo == hi:  # an empty batch of the right shape keeps the gathers of all ranks alike
            x = split.dataset[0][0] if len(split) else torch.zeros(0)
            yield x.new_zeros((0, *x.shape)).to(device), split.y[lo:hi].to(device)
            return
        yield from loader_batches(split_loader(split, lo, hi, batch_size, device), device)
        return
    if lo == hi:  # more ranks than samples: an empty batch keeps the output shape for gathers
        yield split.x[lo:hi], split.y[lo:hi]
    for start in range(lo, hi, batch_size):
        stop = min(start + batch_size, hi)
        yield split.x[start:stop], split.y[start:stop]


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
        out = model(x)
        if out.shape[-1] == 1:
            out = out.squeeze(-1)
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
    if head == "embedding" and not hasattr(loss_fn, "scores"):  # kNN unless the loss classifies
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
    reports), so batches are read here rather than through the per-rank `eval_batches`.
    """
    split = getattr(splits, split_name)
    n = len(split) if max_batches is None else min(len(split), max_batches * batch_size)
    if split.x is not None:
        batches = ((split.x[i:i + batch_size], split.y[i:i + batch_size])
                   for i in range(0, n, batch_size))
    else:
        batches = torch.utils.data.DataLoader(torch.utils.data.Subset(split.dataset, range(n)),
                                              batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        x_adv = loss_fn.attack(model, x, y)  # needs input gradients: outside inference mode
        with torch.inference_mode():
            out = model(x_adv)
            if out.shape[-1] == 1:
                out = out.squeeze(-1)
            pred = class_scores(out, head, loss_fn).argmax(-1)
        correct += int((pred == y).sum())
        seen += len(y)
    model.train(was_training)
    return correct / max(seen, 1)

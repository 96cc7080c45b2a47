"""Train/validation/test split, stratified for classification, fixed by the seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lossbench.data.raw import RawData
from lossbench.errors import UserError


@dataclass
class Split:
    """One split. `x` is None when samples are read per item through `dataset` (on-disk images)."""

    y: torch.Tensor  # (N,) int64 class indices, or float32 regression targets
    x: torch.Tensor | None = None  # (N, *sample_shape) float32
    dataset: Any = None  # a torch Dataset yielding (x, y), batched by a DataLoader
    loader: Any = None  # the DataLoader over `dataset`, built once so its workers persist
    loader_options: dict | None = None  # its workers and pinned memory, set by the run
    eval_loader: Any = None  # (rows, batch size, DataLoader) that evaluation reads in order
    # (N,) the labels before injected noise (train and val under `dataset.noise`, else None):
    # validation is scored against both, and the flipped training samples are followed
    y_clean: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    """Everything the model, loss and report need to know about the data."""

    train: Split
    val: Split
    test: Split
    task: str
    name: str
    num_classes: int  # 0 for regression
    class_names: list[str] | None
    sample_shape: tuple[int, ...]
    target_mean: float = 0.0  # regression targets are standardised for training ...
    target_std: float = 1.0  # ... and mapped back before any metric is computed
    info: dict = field(default_factory=dict)  # noise/imbalance statistics, written to metrics.json
    # (mean, std) the inputs were standardised with (scalars, or arrays that broadcast against a
    # sample): what a caller's raw inputs need before the model sees them (lossbench.api)
    input_scale: tuple[Any, Any] = (0.0, 1.0)
    data_hash: str = ""  # RawData.content_hash of the data as loaded, before the split


def _split_indices(n: int, y: np.ndarray, first: float, second: float, stratify: bool,
                   seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets with fractions `first` and `second` of n (rest unused)."""
    idx = np.arange(n)
    n_first = int(round(first * n))
    n_second = int(round(second * n))
    if n_first < 1 or n_second < 1:
        raise UserError(f"{what}: {n} samples are too few for the split fractions {first}/{second}")
    try:
        rest, part_second = train_test_split(
            idx, test_size=n_second, random_state=seed, stratify=y if stratify else None)
        # fractions summing to 1 take all the rest, whatever the rounding of n_first says
        if n_first < len(rest) and first + second < 1.0 - 1e-9:
            part_first, _ = train_test_split(
                rest, train_size=n_first, random_state=seed,
                stratify=y[rest] if stratify else None)
        else:
            part_first = rest
    except ValueError as err:
        raise UserError(f"{what}: cannot split stratified by class ({err})") from None
    return np.sort(part_first), np.sort(part_second)


def _check_class_sizes(raw: RawData, needed: int, what: str) -> None:
    """A stratified split puts every class in each part, so each class needs `needed` samples."""
    counts = np.bincount(np.asarray(raw.y, dtype=np.int64), minlength=raw.num_classes)
    small = [(c, int(n)) for c, n in enumerate(counts) if 0 < n < needed]
    if small:
        c, n = small[0]
        name = raw.class_names[c] if raw.class_names and c < len(raw.class_names) else str(c)
        raise UserError(f"{what}: class {name!r} has only {n} sample{'s' * (n != 1)}, too few for "
                        f"a stratified split into {needed} parts; give it at least {needed} "
                        "samples or remove it")


def check_split(train: float, val: float, test: float) -> None:
    """Fractions in [0, 1], non-empty train and validation, summing to at most 1."""
    for name, value in (("train", train), ("val", val), ("test", test)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"dataset.split.{name}={value} must lie in [0, 1]")
    if train <= 0 or val <= 0:
        raise UserError("dataset.split.train and dataset.split.val must be greater than 0")
    if train + val + test > 1.0 + 1e-9:
        raise UserError(f"dataset.split fractions sum to {train + val + test:g} (train={train}, "
                        f"val={val}, test={test}); they must sum to at most 1")


def split_dataset(raw: RawData, train: float = 0.6, val: float = 0.2, test: float = 0.2,
                  seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Split raw arrays into {'train', 'val', 'test'}: (x, y).

    Classification splits are stratified. A dataset with its own test split keeps it, and the
    validation part is carved from its training part as val / (train + val); one with its own
    validation and test splits keeps all three.
    """
    check_split(train, val, test)
    stratify = raw.task != "regression"
    what = f"dataset {raw.name}"
    if raw.x_val is not None:
        return {"train": (raw.x, raw.y), "val": (raw.x_val, raw.y_val),
                "test": (raw.x_test, raw.y_test)}
    if stratify:
        _check_class_sizes(raw, 2 if raw.x_test is not None else 3, what)
    if raw.x_test is not None:
        total = train + val
        tr, va = _split_indices(len(raw.y), raw.y, train / total, val / total, stratify, seed, what)
        return {"train": (raw.x[tr], raw.y[tr]), "val": (raw.x[va], raw.y[va]),
                "test": (raw.x_test, raw.y_test)}
    if test <= 0:
        raise UserError("dataset.split.test must be greater than 0 for a dataset without its "
                        "own test split")
    rest, te = _split_indices(len(raw.y), raw.y, train + val, test, stratify, seed, what)
    tr, va = _split_indices(len(rest), raw.y[rest], train / (train + val), val / (train + val),
                            stratify, seed, what)
    tr, va = rest[tr], rest[va]
    return {"train": (raw.x[tr], raw.y[tr]), "val": (raw.x[va], raw.y[va]),
            "test": (raw.x[te], raw.y[te])}

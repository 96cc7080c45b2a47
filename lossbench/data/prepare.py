"""From a dataset config to `Splits` of tensors: split → imbalance → noise → scale → augment."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lossbench.data.augment import AugmentedImages, augmentation_wanted, check_augment
from lossbench.data.raw import RawData
from lossbench.data.split import Split, Splits, split_dataset


def _feature_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std from the training split: per feature for vectors, per channel otherwise."""
    if x.ndim == 2:  # (N, F)
        axes: tuple[int, ...] = (0,)
    else:  # (N, C, ...) sequences or images: one statistic per channel
        axes = (0, *range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std[std < 1e-12] = 1.0  # constant features stay constant instead of dividing by zero
    return mean[0], std[0]


def prepare_data(raw: RawData, split: Any, noise: Any = None, imbalance: Any = None,
                 scale: bool = True, seed: int = 0, augment: Any = None) -> Splits:
    """Split `raw`, make the training classes imbalanced and the labels noisy as configured,
    scale, and convert to tensors.

    split: mapping with train/val/test fractions. noise / imbalance: mappings with `kind`
    (`none` leaves the data alone). Imbalance subsamples the training split by its clean labels;
    label noise then touches train and validation, never test. augment: crop_padding / hflip for
    image training data, which the training loop then reads through a DataLoader.
    """
    parts = split_dataset(raw, float(split["train"]), float(split["val"]), float(split["test"]),
                          seed=seed)
    info: dict[str, Any] = {}
    if imbalance is not None and imbalance.get("kind", "none") != "none":
        from lossbench.data.imbalance import apply_imbalance

        parts, info["imbalance"] = apply_imbalance(parts, raw, imbalance, seed)
    if noise is not None and noise.get("kind", "none") != "none":
        from lossbench.data.noise import apply_label_noise

        parts, info["noise"] = apply_label_noise(parts, raw, noise, seed)

    x_train = parts["train"][0].astype(np.float32)
    mean, std = _feature_stats(x_train) if scale else (0.0, 1.0)
    target_mean, target_std = 0.0, 1.0
    if raw.task == "regression":
        y_train = parts["train"][1].astype(np.float64)
        target_mean, target_std = float(y_train.mean()), float(y_train.std() or 1.0)

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        xt = torch.from_numpy(((x.astype(np.float32) - mean) / std).astype(np.float32))
        if raw.task == "regression":
            yt = torch.from_numpy(((y.astype(np.float64) - target_mean) / target_std)
                                  .astype(np.float32))
        else:
            yt = torch.from_numpy(y.astype(np.int64))
        return Split(x=xt, y=yt)

    train = to_split(*parts["train"])
    if augmentation_wanted(augment):
        # x stays for evaluation (e.g. kNN on clean training embeddings); training reads the
        # augmented view through a DataLoader
        check_augment(augment, tuple(raw.x.shape[1:]), raw.name)
        train.dataset = AugmentedImages(train.x, train.y, augment.get("crop_padding") or 0,
                                        augment.get("hflip", False))
        info["augment"] = {"crop_padding": int(augment.get("crop_padding") or 0),
                           "hflip": bool(augment.get("hflip", False))}
    if scale and x_train.ndim > 2:  # per-channel statistics of images and sequences
        info["normalisation"] = {"mean": [round(float(v), 6) for v in np.ravel(mean)],
                                 "std": [round(float(v), 6) for v in np.ravel(std)]}

    return Splits(
        train=train, val=to_split(*parts["val"]),
        test=to_split(*parts["test"]), task=raw.task, name=raw.name,
        num_classes=raw.num_classes, class_names=raw.class_names,
        sample_shape=tuple(raw.x.shape[1:]), target_mean=target_mean, target_std=target_std,
        info=info)

"""Train/validation/test splits: fractions, stratification, seeds, scaling on train only."""

from __future__ import annotations

import numpy as np
import pytest

from lossbench.data import RawData, prepare_data, split_dataset
from lossbench.data.sklearn_datasets import diabetes, digits
from lossbench.errors import UserError

SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}


def test_fractions_are_kept_and_parts_are_disjoint():
    raw = digits()
    raw.x = np.arange(len(raw.y))[:, None].astype(np.float32)  # sample id as the feature
    parts = split_dataset(raw, 0.6, 0.2, 0.2, seed=0)
    sizes = {k: len(v[1]) for k, v in parts.items()}
    n = len(raw.y)
    assert abs(sizes["test"] - 0.2 * n) <= 1 and abs(sizes["val"] - 0.2 * n) <= 1
    assert sum(sizes.values()) == n
    ids = [set(parts[k][0][:, 0].tolist()) for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_classification_split_is_stratified():
    raw = digits()
    parts = split_dataset(raw, 0.6, 0.2, 0.2, seed=1)
    overall = np.bincount(raw.y) / len(raw.y)
    for _, y in parts.values():
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01


def test_same_seed_same_split_other_seed_other_split():
    raw = diabetes()
    a = split_dataset(raw, seed=0)["test"][1]
    b = split_dataset(raw, seed=0)["test"][1]
    c = split_dataset(raw, seed=1)["test"][1]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_dataset_with_own_test_split_keeps_it():
    rng = np.random.default_rng(0)
    raw = RawData(x=rng.normal(size=(100, 3)), y=np.repeat([0, 1], 50), task="binary",
                  name="own", x_test=rng.normal(size=(30, 3)), y_test=np.repeat([0, 1], 15))
    parts = split_dataset(raw, 0.6, 0.2, 0.2, seed=0)
    assert np.array_equal(parts["test"][0], raw.x_test)
    assert len(parts["train"][1]) == 75 and len(parts["val"][1]) == 25  # 0.6:0.2 of the 100


def test_fractions_over_one_are_a_user_error():
    with pytest.raises(UserError, match="sum to 1.1"):
        split_dataset(digits(), 0.7, 0.2, 0.2)


def test_scaling_is_fitted_on_the_training_split_only():
    splits = prepare_data(diabetes(), SPLIT, seed=0)
    train_mean = splits.train.x.mean(0)
    assert train_mean.abs().max() < 1e-5  # standardised with its own statistics
    assert splits.val.x.mean(0).abs().max() > 1e-3  # others with the training statistics
    y_train = splits.train.y.double()
    assert abs(y_train.mean()) < 1e-6 and abs(y_train.std(unbiased=False) - 1) < 1e-6


def test_digits_are_kept_as_images_with_class_names():
    splits = prepare_data(digits(), SPLIT, seed=0)
    assert splits.sample_shape == (1, 8, 8)
    assert splits.class_names == [str(k) for k in range(10)]
    assert splits.train.x.shape[1:] == (1, 8, 8)

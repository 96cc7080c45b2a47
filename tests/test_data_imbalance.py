"""Class imbalance: long-tailed and step class sizes on the training split only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from lossbench.data import RawData, split_dataset
from lossbench.data.imbalance import apply_imbalance
from lossbench.errors import UserError

SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}


def balanced(n_per_class: int = 100, k: int = 5) -> RawData:
    y = np.repeat(np.arange(k), n_per_class)
    x = np.arange(len(y), dtype=np.float32)[:, None]  # the sample's own index, to trace it
    return RawData(x=x, y=y, task="multiclass", name="toy")


def imbalanced(raw: RawData, seed: int = 0, **cfg):
    parts = split_dataset(raw, seed=seed, **SPLIT)
    out, info = apply_imbalance(parts, raw, OmegaConf.create(cfg), seed)
    return parts, out, info


def test_longtail_sizes_decay_exponentially_to_the_ratio():
    raw = balanced(100, k=5)
    parts, out, info = imbalanced(raw, kind="longtail", ratio=20)
    n_max = np.bincount(parts["train"][1]).max()  # 60 per class in training
    expected = [math.floor(n_max * 20 ** (-c / 4)) for c in range(5)]  # 60, 29, 13, 6, 3
    assert np.bincount(out["train"][1], minlength=5).tolist() == expected
    assert info["class_counts"] == expected
    assert info["class_counts_before"] == [n_max] * 5


def test_step_reduces_half_the_classes_by_the_ratio():
    raw = balanced(100, k=4)
    _, out, info = imbalanced(raw, kind="step", ratio=10)
    assert np.bincount(out["train"][1]).tolist() == [60, 60, 6, 6]
    assert info["realised_ratio"] == pytest.approx(10.0)


def test_imbalance_keeps_real_training_samples_and_leaves_val_and_test_alone():
    raw = balanced(50, k=3)
    parts, out, _ = imbalanced(raw, kind="longtail", ratio=5)
    kept = out["train"][0][:, 0].astype(int)
    assert set(kept) <= set(parts["train"][0][:, 0].astype(int))
    np.testing.assert_array_equal(raw.y[kept], out["train"][1])  # labels stay with their samples
    for name in ("val", "test"):
        np.testing.assert_array_equal(out[name][1], parts[name][1])


def test_imbalance_is_reproducible_from_the_seed():
    raw = balanced(50, k=3)
    a = imbalanced(raw, seed=1, kind="longtail", ratio=5)[1]["train"][0]
    b = imbalanced(raw, seed=1, kind="longtail", ratio=5)[1]["train"][0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg, message", [
    ({"kind": "longtail", "ratio": 0.5}, "must be at least 1"),
    ({"kind": "zipf", "ratio": 10}, "not a kind of imbalance"),
])
def test_bad_imbalance_settings_are_user_errors(cfg, message):
    with pytest.raises(UserError, match=message):
        imbalanced(balanced(20, k=3), **cfg)


def test_cli_records_class_counts_and_reports_every_class(cli, tmp_path):
    import json

    run = tmp_path / "run"
    cli("train", "dataset=digits", "model=linear", "trainer=smoke", "dataset.imbalance.kind=step",
        "dataset.imbalance.ratio=5", f"hydra.run.dir={run}", check=True)
    metrics = json.loads((run / "metrics.json").read_text())
    counts = metrics["data"]["imbalance"]["class_counts"]
    assert metrics["split_sizes"]["train"] == sum(counts)
    n_max = max(metrics["data"]["imbalance"]["class_counts_before"])
    assert counts[5:] == [n_max // 5] * 5
    report = metrics["test"]["classification_report"]
    assert all(str(c) in report for c in range(10))  # per-class rows, rare classes included

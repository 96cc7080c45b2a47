"""Label noise: exact counts, only the configured flips, reproducible, test split clean."""

from __future__ import annotations

import re

import numpy as np
import pytest
from omegaconf import OmegaConf

from lossbench.data import RawData, split_dataset
from lossbench.data.noise import PRESETS, apply_label_noise
from lossbench.errors import UserError

SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]


def balanced(n_per_class: int = 50, k: int = 10, names: list[str] | None = None) -> RawData:
    y = np.repeat(np.arange(k), n_per_class)
    x = np.random.default_rng(0).normal(size=(len(y), 3)).astype(np.float32)
    return RawData(x=x, y=y, task="multiclass", name="toy",
                   class_names=names or [str(c) for c in range(k)])


def noisy(raw: RawData, seed: int = 0, **noise):
    parts = split_dataset(raw, seed=seed, **SPLIT)
    out, info = apply_label_noise(parts, raw, OmegaConf.create(noise), seed)
    return parts, out, info


def test_symmetric_flips_exactly_round_rate_n_labels_each_to_another_class():
    raw = balanced(60)
    parts, out, info = noisy(raw, kind="symmetric", rate=0.3)
    for name in ("train", "val"):
        clean, given = parts[name][1], out[name][1]
        wrong = clean != given
        assert wrong.sum() == round(0.3 * len(clean))
        assert info["realised_rate"][name] == pytest.approx(wrong.mean())
        np.testing.assert_array_equal(out[name][0], parts[name][0])  # samples untouched
    np.testing.assert_array_equal(out["test"][1], parts["test"][1])  # test stays clean


def test_symmetric_noise_spreads_uniformly_over_the_other_classes():
    k = 5
    raw = RawData(x=np.zeros((50_000, 1), np.float32), y=np.repeat(np.arange(k), 10_000),
                  task="multiclass", name="big")
    parts, out, info = noisy(raw, kind="symmetric", rate=0.5)
    counts = np.array(info["transition_counts"]["train"])
    off = counts[~np.eye(k, dtype=bool)].reshape(k, k - 1)
    assert np.all(np.diag(counts) > 0)
    expected = off.sum(1, keepdims=True) / (k - 1)  # uniform over the K-1 other classes
    assert np.all(np.abs(off - expected) < 5 * np.sqrt(expected))


def test_transition_counts_match_the_labels():
    raw = balanced(30, k=4)
    parts, out, info = noisy(raw, kind="symmetric", rate=0.4)
    for name in ("train", "val"):
        counts = np.array(info["transition_counts"][name])
        for i in range(4):
            for j in range(4):
                assert counts[i, j] == np.sum((parts[name][1] == i) & (out[name][1] == j))
        assert info["realised_rate"][name] == pytest.approx(1 - np.trace(counts) / counts.sum())


def test_noise_is_reproducible_from_the_seed():
    raw = balanced(40)
    _, a, _ = noisy(raw, seed=3, kind="symmetric", rate=0.2)
    _, b, _ = noisy(raw, seed=3, kind="symmetric", rate=0.2)
    parts = split_dataset(raw, seed=3, **SPLIT)
    c, _ = apply_label_noise(parts, raw, OmegaConf.create({"kind": "symmetric", "rate": 0.2}), 4)
    np.testing.assert_array_equal(a["train"][1], b["train"][1])
    assert np.any(a["train"][1] != c["train"][1])


def test_mnist_preset_flips_only_its_pairs_round_rate_per_source_class():
    raw = balanced(50)  # classes named by digit, like MNIST
    parts, out, info = noisy(raw, kind="asymmetric", preset="mnist", rate=0.4)
    pairs = {(7, 1), (2, 7), (5, 6), (6, 5), (3, 8)}
    for name in ("train", "val"):
        counts = np.array(info["transition_counts"][name])
        clean = parts[name][1]
        for i in range(10):
            for j in range(10):
                if i == j:
                    continue
                if (i, j) in pairs:
                    assert counts[i, j] == round(0.4 * np.sum(clean == i))
                else:
                    assert counts[i, j] == 0


def test_cifar10_preset_uses_class_names():
    raw = balanced(40, names=CIFAR_NAMES)
    parts, out, info = noisy(raw, kind="asymmetric", preset="cifar10", rate=0.5)
    idx = CIFAR_NAMES.index
    expected = {(idx("truck"), idx("automobile")), (idx("bird"), idx("airplane")),
                (idx("deer"), idx("horse")), (idx("cat"), idx("dog")), (idx("dog"), idx("cat"))}
    counts = np.array(info["transition_counts"]["train"])
    flipped = {(i, j) for i in range(10) for j in range(10) if i != j and counts[i, j] > 0}
    assert flipped == expected
    assert len(PRESETS["cifar10"]) == 5


def test_custom_mapping_by_name_and_pairflip():
    raw = balanced(40, k=3, names=["cat", "dog", "fox"])
    _, _, info = noisy(raw, kind="asymmetric", mapping={"fox": "cat"}, rate=0.5)
    counts = np.array(info["transition_counts"]["train"])
    assert counts[2, 0] == round(0.5 * counts[2].sum()) and counts[0, 1:].sum() == 0
    _, _, info = noisy(raw, kind="pairflip", rate=0.25)
    counts = np.array(info["transition_counts"]["train"])
    for c in range(3):
        assert counts[c, (c + 1) % 3] == round(0.25 * counts[c].sum())
        assert counts[c, (c + 2) % 3] == 0


@pytest.mark.parametrize("noise, message", [
    ({"kind": "symmetric", "rate": 1.0}, "dataset.noise.rate=1 must lie in [0, 1)"),
    ({"kind": "symmetric", "rate": -0.1}, "must lie in [0, 1)"),
    ({"kind": "asymmetric", "rate": 0.2, "mapping": {"wolf": "cat"}}, "'wolf'"),
    ({"kind": "asymmetric", "rate": 0.2, "preset": "imagenet"}, "not a preset"),
    ({"kind": "gaussian", "rate": 0.2}, "not a kind of label noise"),
])
def test_bad_noise_settings_are_user_errors(noise, message):
    raw = balanced(20, k=3, names=["cat", "dog", "fox"])
    with pytest.raises(UserError, match=re.escape(message)):
        noisy(raw, **noise)


def test_run_writes_noise_statistics_and_tests_on_clean_labels(compose_cfg):
    from lossbench.experiment.run import load_data

    cfg = compose_cfg("dataset=digits", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.3")
    splits = load_data(cfg)
    clean = load_data(compose_cfg("dataset=digits"))
    assert np.array_equal(splits.test.y.numpy(), clean.test.y.numpy())
    wrong = (splits.train.y != clean.train.y).float().mean().item()
    assert wrong == pytest.approx(splits.info["noise"]["realised_rate"]["train"])
    assert abs(wrong - 0.3) < 1 / len(clean.train)
    assert np.array(splits.info["noise"]["transition_counts"]["train"]).shape == (10, 10)

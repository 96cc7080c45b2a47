"""Class imbalance through the CLI and `run`: the class counts reach the loss (one process and
two), DRW never reports weights from before its switch and survives a resume, the data options
(order, re-sampling), post-hoc logit adjustment in `eval`, `compare` columns, the presets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import read_metrics, run_dirs

SMOKE = ("trainer=smoke", "trainer.plots=false", "print_config=false", "trainer.device=cpu")
LONGTAIL = ("dataset.imbalance.kind=longtail", "dataset.imbalance.ratio=10")


def loss_state(run_dir):
    return torch.load(run_dir / "loss.pt", weights_only=True)


def labels_of_training_split(compose_cfg, *overrides) -> np.ndarray:
    """The training labels, rebuilt from the config without the run: counted independently."""
    from lossbench.experiment.run import load_data

    return load_data(compose_cfg(*overrides)).train.y.numpy()


@pytest.mark.slow
def test_class_counts_reach_the_loss_in_one_process_and_two(cli, tmp_path, compose_cfg):
    data = ("dataset=digits", *LONGTAIL, "dataset.noise.kind=symmetric", "dataset.noise.rate=0.2")
    expected = np.bincount(labels_of_training_split(compose_cfg, *data), minlength=10).tolist()
    assert expected[0] > 5 * expected[9]  # long-tailed, after noise moved some labels
    for name, extra in (("one", ()), ("two", ("trainer.devices=2",))):
        proc = cli("train", "loss=logit_adjusted", *data, *SMOKE, *extra,
                   f"hydra.run.dir={name}", timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        counts = loss_state(tmp_path / name)["class_counts"]
        assert counts.tolist() == expected, name  # neither one rank's share nor twice the split
        assert read_metrics(tmp_path / name)["data"]["train_class_counts"] == expected


def test_a_loss_needing_counts_on_regression_data_is_one_line(cli, tmp_path):
    proc = cli("train", "loss=ldam", "dataset=diabetes", *SMOKE, "hydra.run.dir=run")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "loss=ldam does not fit the regression task" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_ldam_drw_selects_no_epoch_before_its_switch(cli, tmp_path):
    # 10 epochs, switch at ⌊0.8·10⌋ + 1 = 9: selection starts there
    proc = cli("train", "loss=ldam_drw", "dataset=digits", *LONGTAIL, "trainer.epochs=10",
               "trainer.plots=false", "print_config=false", "hydra.run.dir=run", timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = read_metrics(tmp_path / "run")
    assert metrics["best_epoch"] >= 9
    assert metrics["loss_params"]["drw_weights_on"] == 1.0
    assert metrics["head"].startswith("cosine classifier")
    assert "DRW from epoch fraction 0.8" in metrics["loss_description"]
    weights = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    last = [k for k in weights if k.endswith("weight")][-1]
    assert weights[last].shape[0] == 10  # the cosine classifier: (K, D), no bias after it
    assert not any(k.endswith("bias") and k.split(".")[:-1] == last.split(".")[:-1]
                   for k in weights)


def test_drw_resumes_to_the_result_of_an_uninterrupted_run(compose_cfg, tmp_path, monkeypatch):
    from test_resume import RUN, assert_same_result, interrupt_at, run_in

    from lossbench.errors import Interrupted

    # switch at epoch ⌊0.5·4⌋ + 1 = 3: interrupted in epoch 2, resumed across the switch
    overrides = (*RUN, "trainer.epochs=4", "loss=ce_drw", "loss.drw_start=0.5", *LONGTAIL)
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    interrupt_at(monkeypatch, 2, 3)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    checkpoint = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert float(checkpoint["loss"]["weights_on"]) == 0.0  # stopped before the switch
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")
    assert read_metrics(tmp_path / "whole")["best_epoch"] >= 3


def test_random_order_gives_the_sizes_to_a_seeded_permutation(compose_cfg):
    from lossbench.experiment.run import load_data

    def info(seed):
        splits = load_data(compose_cfg("dataset=digits", *LONGTAIL,
                                       "dataset.imbalance.order=random", f"seed={seed}"))
        return splits.info["imbalance"], np.bincount(splits.train.y.numpy(), minlength=10)

    first, counts = info(0)
    order = first["size_order"]
    assert sorted(order) == list(range(10)) and order != list(range(10))
    assert counts.tolist() == first["class_counts"]
    assert counts[order[0]] == counts.max() and counts[order[-1]] == counts.min()
    assert np.all(np.diff(counts[order]) <= 0)  # sizes fall along the permutation
    assert info(0)[0]["size_order"] == order and info(1)[0]["size_order"] != order
    index = load_data(compose_cfg("dataset=digits", *LONGTAIL)).info["imbalance"]
    assert index["size_order"] == list(range(10)) and index["order"] == "index"


def test_a_wrong_order_is_one_line(cli, tmp_path):
    proc = cli("train", *LONGTAIL, "dataset.imbalance.order=shuffled", *SMOKE, "hydra.run.dir=r")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "dataset.imbalance.order=shuffled is not an order" in proc.stderr


@pytest.mark.parametrize("kind,power", [("class_balanced", 0.0), ("sqrt", 0.5)])
def test_resampling_draws_classes_in_proportion_to_n_to_the_power(compose_cfg, kind, power):
    from lossbench.experiment.run import load_data

    splits = load_data(compose_cfg("dataset=digits", *LONGTAIL, f"dataset.resample={kind}"))
    before = np.array(splits.info["resample"]["class_counts_before"])
    after = np.bincount(splits.train.y.numpy(), minlength=10)
    assert after.sum() == before.sum()
    target = before ** power / (before ** power).sum() * before.sum()
    assert np.all(np.abs(after - target) <= 1)
    assert splits.info["train_class_counts"] == after.tolist()
    if kind == "class_balanced":
        assert after.max() - after.min() <= 1


@pytest.mark.slow
def test_posthoc_logit_adjustment_in_eval(cli, tmp_path):
    cli("train", "loss=ce", "dataset=digits", *LONGTAIL, "dataset.imbalance.ratio=20",
        "trainer.epochs=8", "trainer.plots=false", "print_config=false", "hydra.run.dir=run",
        check=True, timeout=240)
    cli("eval", "run", "--out", "plain.json", check=True)
    cli("eval", "run", "--logit-adjust", "1.0", "--out", "adjusted.json", check=True)
    plain = json.loads((tmp_path / "plain.json").read_text())["test"]
    adjusted = json.loads((tmp_path / "adjusted.json").read_text())["test"]
    assert plain["accuracy"] == read_metrics(tmp_path / "run")["test"]["accuracy"]
    assert adjusted["posthoc_logit_adjustment"] == {"tau": 1.0} and "loss" not in adjusted
    # subtracting log π moves predictions towards the rare classes: more of them predicted
    matrix_plain = np.array(plain["confusion_matrix"])
    matrix_adjusted = np.array(adjusted["confusion_matrix"])
    assert matrix_adjusted[:, 7:].sum() > matrix_plain[:, 7:].sum()
    assert adjusted["balanced_accuracy"] != plain["balanced_accuracy"]

    bad = cli("eval", "run", "--logit-adjust", "-1")
    assert bad.returncode == 2 and "--logit-adjust -1 must be a number >= 0" in bad.stderr


@pytest.mark.slow
def test_compare_shows_the_imbalance_columns_for_imbalanced_runs(cli, tmp_path):
    cli("train", "-m", "loss=ce,logit_adjusted", "dataset=iris", *LONGTAIL, *SMOKE,
        "hydra.sweep.dir=sweep", check=True, timeout=240)
    cli("train", "loss=ce", "dataset=iris", *SMOKE, "hydra.run.dir=balanced", check=True)
    imbalanced = cli("compare", "sweep", "--format", "csv", check=True).stdout
    header = imbalanced.splitlines()[0]
    for column in ("balanced_accuracy", "worst_class_recall", "few_shot_accuracy",
                   "prior_accuracy"):
        assert column in header
    balanced = cli("compare", "balanced", "--format", "csv", check=True).stdout
    assert "balanced_accuracy" not in balanced.splitlines()[0]
    metrics = read_metrics(run_dirs(tmp_path / "sweep")[0])["test"]
    assert math.isfinite(metrics["balanced_accuracy"])


@pytest.mark.slow
def test_the_longtail_preset_runs_in_its_smoke_form(cli, tmp_path, compose_cfg):
    cfg = compose_cfg("experiment=longtail")
    assert cfg.dataset.imbalance.kind == "longtail" and cfg.trainer.early_stopping is False
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.trainer.epochs == 60
    assert compose_cfg("experiment=longtail", "dataset=wine").dataset._target_.endswith("wine")
    cifar = compose_cfg("experiment=longtail_cifar10")
    assert cifar.dataset.imbalance.ratio == 100 and cifar.trainer.epochs == 200
    assert list(cifar.scheduler.milestones) == [160, 180] and cifar.model._target_.endswith(
        "resnet18")

    proc = cli("train", "-m", "experiment=longtail", "loss=ce,ldam_drw", "trainer.epochs=3",
               "trainer.max_batches=2", "trainer.plots=false", "hydra.sweep.dir=sweep",
               timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {read_metrics(d)["choices"]["loss"]: read_metrics(d)
            for d in run_dirs(tmp_path / "sweep")}
    assert sorted(runs) == ["ce", "ldam_drw"]
    assert runs["ldam_drw"]["best_epoch"] == 3  # ⌊0.8·3⌋ + 1
    for metrics in runs.values():
        assert metrics["data"]["imbalance"]["kind"] == "longtail"
        assert metrics["test"]["shot_groups"]["rule"] == "thirds"

"""The comparison protocol on the training side: enough steps and one selection rule, best and
last epochs tested, clean and noisy validation, memorisation of flipped labels, warnings for
results no better than a guess, and the seeds and hashes that pair runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from conftest import read_metrics
from lossbench.data import Split, Splits
from lossbench.engine.predict import Predictions
from lossbench.results.report import suspicious_results
from lossbench.engine.selection import planned_epochs, steps_per_epoch
from lossbench.engine.validation import validation_metrics

FAST = ("trainer.device=cpu", "print_config=false", "trainer.plots=false")


def history(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_auto_epochs_plan_min_steps_on_small_data():
    # wine: 107 training samples, one batch of 128 per epoch
    assert steps_per_epoch(107, 128) == 1
    assert planned_epochs("auto", 400, 1) == 400
    # a large dataset keeps 50 epochs; a number is taken as it is
    assert planned_epochs("auto", 400, 390) == 50
    assert planned_epochs(3, 400, 1) == 3
    # two processes: each takes half the samples
    assert steps_per_epoch(1000, 100, world_size=2) == 5
    assert steps_per_epoch(1000, 100, max_batches=2) == 2


@pytest.mark.slow
def test_wine_gets_enough_steps_and_ties_go_to_the_lower_nll(cli, tmp_path):
    # accuracy named: on wine's 36 validation samples `auto` monitors val_nll instead
    proc = cli("train", "dataset=wine", "trainer.monitor=val_accuracy", *FAST,
               "hydra.run.dir=run", check=True)
    run_dir = tmp_path / "run"
    m = read_metrics(run_dir)
    assert m["budget"] == {"epochs": 400, "epochs_run": 400, "steps_run": 400,
                           "early_stopping": True}
    assert m["selection"]["metric"] == "val_accuracy"
    assert m["selection"]["tie_break"] == "val_nll"
    assert m["selection"]["labels"] == "given" and m["selection"]["privileged"] is False
    assert "selection: best val_accuracy (max), ties by lower val_nll" in proc.stdout
    rows = history(run_dir)
    best = max(r["val_accuracy"] for r in rows)
    tied = [r for r in rows if r["val_accuracy"] == best]
    # the selected epoch: best accuracy, and among those the lowest NLL
    chosen = min(tied, key=lambda r: (r["val_nll"], r["epoch"]))
    assert m["best_epoch"] == int(chosen["epoch"])
    assert len(tied) > 1, "the accuracy must saturate for the tie-break to matter"
    # trained, not underfit (the old defaults ended at NLL ~0.6, ECE ~0.4 here)
    assert m["test"]["accuracy"] > 0.9 and m["test"]["nll"] < 0.3 and m["test"]["ece"] < 0.15
    assert m["warnings"] == []


def test_best_and_last_are_both_tested_and_keep_picks_the_headline(cli, tmp_path):
    # a learning rate that wanders: the last epoch is not the selected one
    common = ("dataset=wine", "trainer.epochs=12", "trainer.early_stopping=false",
              "optimizer=sgd", "optimizer.lr=0.5", *FAST)
    cli("train", *common, "hydra.run.dir=best", check=True)
    proc = cli("train", *common, "trainer.keep=last", "hydra.run.dir=last", check=True)
    best, last = read_metrics(tmp_path / "best"), read_metrics(tmp_path / "last")
    assert best["keep"] == "best" and last["keep"] == "last"
    assert best["last_epoch"] == last["last_epoch"] == 12
    assert best["best_epoch"] != 12
    # the same training: the same two test results, whichever is the headline
    assert best["test_at"] == last["test_at"]
    assert best["test"] == best["test_at"]["best"]
    assert last["test"] == last["test_at"]["last"]
    assert best["test_at"]["best"] != best["test_at"]["last"]
    # model.pt holds the kept weights
    weights = {at: torch.load(tmp_path / at / "model.pt", weights_only=True)
               for at in ("best", "last")}
    assert any(not torch.equal(weights["best"][k], weights["last"][k]) for k in weights["best"])
    report = (tmp_path / "last" / "report.txt").read_text()
    assert f"test at last epoch 12 (headline): accuracy {last['test_at']['last']['accuracy']:.4f}" \
        in report
    assert f"test at selected epoch {last['best_epoch']} (on validation" in report
    assert "last epoch 12 of 12 planned" in report
    assert "test at last epoch 12 (headline)" in proc.stdout


def test_noise_scores_validation_against_clean_labels_and_follows_flipped_samples(cli, tmp_path):
    proc = cli("train", "dataset=digits", "dataset.noise.kind=symmetric",
               "dataset.noise.rate=0.4", "trainer.epochs=4", "trainer.plots=true",
               "trainer.device=cpu", "print_config=false", "hydra.run.dir=run", check=True)
    run_dir = tmp_path / "run"
    m = read_metrics(run_dir)
    rows = history(run_dir)
    for key in ("val_accuracy_clean", "val_nll_clean", "flipped_memorised", "flipped_true"):
        assert all(0 <= r[key] for r in rows), key
    assert all(r["flipped_memorised"] + r["flipped_true"] <= 1 for r in rows)
    # noisy validation labels are harder to predict than the clean ones
    assert rows[-1]["val_accuracy_clean"] > rows[-1]["val_accuracy"]
    # every flipped training label counted, and the summary taken from the history
    realised = m["data"]["noise"]["realised_rate"]["train"]
    assert m["memorisation"]["flipped"] == round(realised * m["split_sizes"]["train"])
    at_best = rows[m["best_epoch"] - 1]
    assert m["memorisation"]["best"] == {"memorised": at_best["flipped_memorised"],
                                         "true": at_best["flipped_true"]}
    assert m["memorisation"]["last"]["true"] == rows[-1]["flipped_true"]
    assert "flipped training labels" in proc.stdout
    assert m["selection"]["labels"] == "noisy" and not m["selection"]["privileged"]
    # curves.png gains the memorisation panel: three panels, 1500 px wide instead of 1000
    from matplotlib.image import imread

    assert imread(run_dir / "curves.png").shape[1] == 1500


def test_clean_selection_is_privileged_and_reads_the_clean_columns(cli, tmp_path):
    cli("train", "dataset=digits", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.4",
        "trainer.epochs=5", "trainer.select_on=clean", *FAST, "hydra.run.dir=run", check=True)
    m = read_metrics(tmp_path / "run")
    assert m["selection"]["labels"] == "clean" and m["selection"]["privileged"] is True
    rows = history(tmp_path / "run")
    chosen = min(rows, key=lambda r: (-r["val_accuracy_clean"], r["val_nll_clean"], r["epoch"]))
    assert m["best_epoch"] == int(chosen["epoch"])
    assert m["best_val"] == chosen["val_accuracy_clean"]
    assert "CLEAN validation labels (privileged)" in (tmp_path / "run" / "report.txt").read_text()


def test_clean_selection_without_noise_is_a_user_error(cli, tmp_path):
    proc = cli("train", "dataset=wine", "trainer.select_on=clean", *FAST, "hydra.run.dir=run")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "trainer.select_on=clean needs injected label noise" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_validation_metrics_against_scikit_learn():
    rng = np.random.default_rng(0)
    n, k = 50, 3
    scores = rng.dirichlet(np.ones(k), size=n)  # (N, K)
    noisy = rng.integers(0, k, n)
    clean = rng.integers(0, k, n)
    pred = Predictions(y_true=noisy, y_pred=scores.argmax(1), scores=scores, loss=0.5)
    val = Split(y=torch.from_numpy(noisy), x=torch.zeros(n, 2), y_clean=torch.from_numpy(clean))
    splits = Splits(train=val, val=val, test=val, task="multiclass", name="t", num_classes=k,
                    class_names=None, sample_shape=(2,))
    row = validation_metrics(splits, pred)
    for suffix, y in (("", noisy), ("_clean", clean)):
        assert row[f"val_accuracy{suffix}"] == pytest.approx(skm.accuracy_score(y, pred.y_pred))
        assert row[f"val_nll{suffix}"] == pytest.approx(skm.log_loss(y, scores, labels=range(k)))
        assert row[f"val_macro_f1{suffix}"] == pytest.approx(
            skm.f1_score(y, pred.y_pred, average="macro", labels=range(k), zero_division=0))


def test_suspicious_results():
    y = np.array([0] * 70 + [1] * 30)
    # a constant prediction scores the majority rate: warned
    warned = suspicious_results("binary", {"accuracy": 0.7}, y, 2, "best")
    assert [w["kind"] for w in warned] == ["majority_rate"]
    assert "0.7000" in warned[0]["message"] and "best" in warned[0]["message"]
    assert suspicious_results("binary", {"accuracy": 0.95}, y, 2, "best") == []
    ten = np.repeat(np.arange(10), 20)
    assert [w["kind"] for w in suspicious_results("multiclass", {"accuracy": 0.12}, ten, 10,
                                                  "last")] == ["near_chance"]
    assert suspicious_results("multiclass", {"accuracy": 0.5}, ten, 10, "last") == []
    assert [w["kind"] for w in suspicious_results("regression", {"r2": -0.1}, ten, 0,
                                                  "best")] == ["below_mean_predictor"]


def test_an_untrained_model_is_warned_about(cli, tmp_path):
    # lr=0: the initial weights are tested, about chance on ten balanced digits
    proc = cli("train", "optimizer.lr=0", "trainer.epochs=2", *FAST, "hydra.run.dir=run",
               check=True)
    m = read_metrics(tmp_path / "run")
    assert m["test"]["accuracy"] < 0.2
    assert [w["kind"] for w in m["warnings"]] == ["near_chance"]
    assert "warning: test accuracy" in proc.stdout
    assert "near chance (1/10" in (tmp_path / "run" / "report.txt").read_text()


@pytest.mark.slow
def test_seeds_apart_and_the_hashes_that_pair_runs(cli, tmp_path):
    smoke = ("trainer=smoke", "dataset=wine", "dataset.noise.kind=symmetric",
             "dataset.noise.rate=0.2", *FAST)
    runs = {"seed1": ("seed=1",), "both1": ("seed=7", "data_seed=1", "train_seed=1"),
            "data1": ("seed=2", "data_seed=1"), "train1": ("seed=2", "train_seed=1"),
            "focal": ("seed=1", "loss=focal")}
    for name, overrides in runs.items():
        cli("train", *smoke, *overrides, f"hydra.run.dir={name}", check=True)
    m = {name: read_metrics(tmp_path / name) for name in runs}
    # `seed` alone sets both
    assert m["seed1"]["pairing"]["data_seed"] == m["seed1"]["pairing"]["train_seed"] == 1
    assert m["both1"]["pairing"] == m["seed1"]["pairing"]
    assert m["both1"]["test"] == m["seed1"]["test"]
    # data_seed: the same split and noise, other weights and batch order
    assert m["data1"]["data"]["noise"] == m["seed1"]["data"]["noise"]
    assert m["data1"]["pairing"]["init_hash"] != m["seed1"]["pairing"]["init_hash"]
    assert m["data1"]["pairing"]["order_hash"] != m["seed1"]["pairing"]["order_hash"]
    # train_seed: the same initial weights and batch order on other data
    assert m["train1"]["pairing"]["init_hash"] == m["seed1"]["pairing"]["init_hash"]
    assert m["train1"]["pairing"]["order_hash"] == m["seed1"]["pairing"]["order_hash"]
    assert m["train1"]["data"]["noise"] != m["seed1"]["data"]["noise"]
    # two losses with the same head start from the same weights: a paired comparison
    assert m["focal"]["pairing"] == m["seed1"]["pairing"]


def test_resume_under_noise_keeps_clean_metrics_memorisation_and_pairing(compose_cfg, tmp_path,
                                                                          monkeypatch):
    """The new per-epoch state (tie-break value, steps, clean scores, memorisation) and the
    last weights survive an interruption: the resumed run ends as the uninterrupted one."""
    from lossbench.errors import Interrupted
    from test_resume import assert_same_result, interrupt_at, run_in

    overrides = ("trainer.device=cpu", "trainer.batch_size=64", "trainer.epochs=4",
                 "trainer.keep=last", "dataset.noise.kind=pairflip", "dataset.noise.rate=0.3",
                 "print_config=false", "trainer.plots=false")
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    interrupt_at(monkeypatch, 2, 5)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    stopped = read_metrics(tmp_path / "stopped")
    assert stopped["status"] == "interrupted" and stopped["pairing"]["train_seed"] == 0
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")
    a, b = read_metrics(tmp_path / "stopped"), read_metrics(tmp_path / "whole")
    for key in ("test_at", "memorisation", "pairing", "budget", "selection"):
        assert a[key] == b[key], key

"""`lossbench eval RUN_DIR`: a finished run's saved config and best weights reproduce its test
metrics and report; overrides change what is evaluated."""

from __future__ import annotations

import json

import pytest

from conftest import read_metrics

TINY = ("trainer=smoke", "model=linear")


def report_rows(stdout: str) -> list[str]:
    """The body rows of the printed tables (the titles differ between train and eval)."""
    return [line for line in stdout.splitlines() if line.startswith("│")]


@pytest.mark.parametrize("data", [("dataset=iris",), ("dataset=diabetes", "loss=mse"),
                                  ("dataset=iris", "loss=mixed")],
                         ids=["classification", "regression", "loss-with-its-own-layers"])
def test_eval_reproduces_the_test_metrics_and_report_of_train(cli, tmp_path, data):
    run = tmp_path / "run"
    trained = cli("train", *TINY, *data, f"hydra.run.dir={run}", check=True)
    evaluated = cli("eval", str(run), "--out", "eval.json", check=True)
    saved = read_metrics(run)["test"]
    again = json.loads((tmp_path / "eval.json").read_text())["test"]
    assert set(saved) <= set(again)
    # a loss with its own layers (mixed's classifier) saves them beside the model
    assert (run / "loss.pt").is_file() == ("loss=mixed" in data)
    for key, value in saved.items():
        if isinstance(value, float):
            assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert again[key] == value, key
    # the same tables, row for row, as train printed them
    rows = report_rows(evaluated.stdout)
    assert len(rows) >= 4
    assert "\n".join(rows) in "\n".join(report_rows(trained.stdout))


def test_eval_on_the_validation_split_gives_the_best_monitored_value(cli, tmp_path):
    run = tmp_path / "run"
    # accuracy named: on iris's 30 validation samples `auto` monitors val_nll instead
    cli("train", *TINY, "dataset=iris", "trainer.monitor=val_accuracy", f"hydra.run.dir={run}",
        check=True)
    cli("eval", str(run), "--split", "val", "--out", "val.json", check=True)
    metrics = read_metrics(run)
    assert metrics["monitor"] == "val_accuracy"
    val = json.loads((tmp_path / "val.json").read_text())["val"]
    assert val["accuracy"] == pytest.approx(metrics["best_val"])


def test_eval_overrides_change_what_is_evaluated(cli, tmp_path):
    run = tmp_path / "run"
    cli("train", *TINY, "dataset=iris", f"hydra.run.dir={run}", check=True)
    # smoke evaluates at most 2 batches: with batches of 8, 16 of the 30 test samples
    cli("eval", str(run), "trainer.eval_batch_size=8", "--out", "small.json", check=True)
    small = json.loads((tmp_path / "small.json").read_text())
    assert small["overrides"] == ["trainer.eval_batch_size=8"]
    assert small["test"]["classification_report"]["macro avg"]["support"] == 16
    assert read_metrics(run)["test"]["classification_report"]["macro avg"]["support"] == 30


@pytest.mark.parametrize("args, message", [
    (("nowhere",), "nowhere is not a directory"),
    (("run", "trainer.nokey=1"), "trainer.nokey is not in the run's config"),
    (("run", "dataset=wine"), "does not fit the model built from the config"),
    (("run", "loss=ce,bce"), "eval takes one value per key"),
    (("empty",), "has no model.pt"),
])
def test_eval_mistakes_are_one_line_user_errors(cli, tmp_path, args, message):
    if "run" in args:
        cli("train", *TINY, "dataset=iris", f"hydra.run.dir={tmp_path / 'run'}", check=True)
    (tmp_path / "empty").mkdir()
    proc = cli("eval", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

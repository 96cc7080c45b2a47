"""The report shows scikit-learn's numbers on the same predictions, nothing else."""

from __future__ import annotations

import re

import numpy as np
import torch
from rich.console import Console
from sklearn.metrics import classification_report, confusion_matrix

from lossbench.engine.predict import Predictions, predict
from lossbench.models import MLP
from lossbench.results.report import classification_metrics, classification_report_table
from lossbench.experiment.run import load_data, run


def _rendered_rows(table) -> dict[str, list[str]]:
    console = Console(record=True, width=200)
    console.print(table)
    rows = {}
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if cells and cells[0] not in ("precision",):
            rows[cells[0]] = cells[1:]
    return rows


def test_table_equals_sklearn_report_on_random_predictions():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    names = ["cat", "dog", "bird", "fish"]
    metrics = classification_metrics(Predictions(y_true=y_true, y_pred=y_pred), names, 4)
    rows = _rendered_rows(classification_report_table(metrics["classification_report"], "t"))
    expected = classification_report(y_true, y_pred, target_names=names, output_dict=True)
    for name in names + ["macro avg", "weighted avg"]:
        want = expected[name]
        got = rows[name]
        assert [float(v) for v in got[:3]] == [round(want[k], 4) for k in
                                               ("precision", "recall", "f1-score")]
        assert int(got[3]) == want["support"]
    assert float(rows["accuracy"][0]) == round(expected["accuracy"], 4)
    assert metrics["confusion_matrix"] == confusion_matrix(y_true, y_pred).tolist()


def test_run_prints_and_writes_sklearns_report_for_its_own_predictions(compose_cfg, capsys):
    cfg = compose_cfg("trainer.epochs=3", "dataset=wine")
    run(cfg)
    printed = capsys.readouterr().out
    run_dir = cfg.run_dir
    # Rebuild the same test split and the saved best model, predict, and ask scikit-learn.
    splits = load_data(cfg)
    model = MLP(splits.sample_shape, splits.num_classes, hidden=list(cfg.model.hidden))
    model.load_state_dict(torch.load(f"{run_dir}/model.pt", weights_only=True))
    pred = predict(model, splits, "test", "logits", 1024, torch.device("cpu"))
    names = splits.class_names
    expected_text = classification_report(pred.y_true, pred.y_pred, target_names=names,
                                          labels=[0, 1, 2], digits=4, zero_division=0)
    assert expected_text.rstrip() in open(f"{run_dir}/report.txt").read()
    expected = classification_report(pred.y_true, pred.y_pred, target_names=names,
                                     output_dict=True, zero_division=0)
    for name in names:
        line = next(line for line in printed.splitlines() if line.strip("│ ").startswith(name))
        numbers = re.findall(r"\d+\.\d{4}", line)
        assert [float(n) for n in numbers] == [round(expected[name][k], 4)
                                               for k in ("precision", "recall", "f1-score")]

"""Every conf/loss/*.yaml trains through the CLI, and `lossbench losses` lists them all
without importing torch."""

from __future__ import annotations

import csv
import inspect
import json
import math
import subprocess
import sys

import pytest
from conftest import read_metrics, run_dirs

from lossbench.config.catalogue import group_options, loss_catalogue

LOSS_NAMES = sorted(group_options("loss"))
CLASSIFICATION = [e.name for e in loss_catalogue() if "multiclass" in e.tasks]
REGRESSION = [e.name for e in loss_catalogue() if "regression" in e.tasks]
# losses whose behaviour differs on binary data: one logit (sigmoid head), mse on two logits
BINARY = ["bce", "focal", "mse", "adversarial"]


def test_every_loss_config_fits_some_task():
    assert set(CLASSIFICATION) | set(REGRESSION) == set(LOSS_NAMES)
    assert len(LOSS_NAMES) >= 25


@pytest.mark.slow
@pytest.mark.parametrize("dataset,losses", [
    ("iris", CLASSIFICATION), ("diabetes", REGRESSION), ("breast_cancer", BINARY)])
def test_every_loss_config_trains_a_smoke_run(cli, tmp_path, dataset, losses):
    """One sweep per dataset through the CLI: each loss config trains, tests and writes its run."""
    proc = cli("train", "-m", f"loss={','.join(losses)}", f"dataset={dataset}", "model=linear",
               "trainer=smoke", "trainer.plots=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {read_metrics(d)["choices"]["loss"]: d for d in run_dirs(tmp_path / "sweep")}
    assert sorted(runs) == sorted(losses)
    for name, run_dir in runs.items():
        metrics = read_metrics(run_dir)
        assert metrics["status"] == "completed", name
        score = metrics["test"]["rmse" if dataset == "diabetes" else "accuracy"]
        assert math.isfinite(score), name
        with open(run_dir / "history.csv", newline="") as f:
            history = list(csv.DictReader(f))
        assert len(history) == 2 and all(math.isfinite(float(r["train_loss"])) for r in history)
        # a sweep's console shows one line per job: each job's report is its report.txt
        report = (run_dir / "report.txt").read_text()
        if name == "adversarial":  # robust accuracy under the training attack, on test
            assert 0.0 <= metrics["test"]["robust_accuracy"] <= 1.0
            assert {"train_loss_clean", "train_loss_adversarial"} <= set(history[0])
            if dataset != "breast_cancer":
                assert "robust accuracy under PGD" in report
        if name == "mixed":  # each term logged per epoch
            assert {"train_loss_ce", "train_loss_contrastive"} <= set(history[0])
        if name == "adaptive_robust":  # alpha and scale reached the optimizer: they moved
            params = metrics["loss_params"]
            assert set(params) == {"alpha", "scale"}
            assert params["alpha"] != 1.0 and params["scale"] != 1.0
            assert "learned loss parameters: alpha=" in report
        if name == "bce" and dataset == "breast_cancer":
            assert metrics["num_outputs"] == 1
        if name == "bce" and dataset == "iris":
            assert metrics["num_outputs"] == 3


def test_uncertainty_weighted_mixed_run_reports_log_variances(cli, tmp_path):
    proc = cli("train", "loss=mixed", "loss.weighting=uncertainty", "dataset=iris",
               "model=linear", "trainer=smoke", "trainer.plots=false",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = read_metrics(tmp_path / "run")["loss_params"]
    assert set(params) == {"log_var_ce", "weight_ce", "log_var_contrastive", "weight_contrastive"}
    assert params["log_var_ce"] != 0.0  # learned with the model
    assert "learned loss parameters: log_var_ce=" in proc.stdout
    assert "learned loss parameters: log_var_ce=" in (tmp_path / "run" / "report.txt").read_text()


def test_a_loss_that_does_not_fit_the_task_is_a_user_error(cli, tmp_path):
    proc = cli("train", "loss=huber", "dataset=iris", "trainer=smoke",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert "loss=huber does not fit the multiclass task" in proc.stderr
    assert "gce" in proc.stderr and "log_cosh" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_catalogue_agrees_with_the_instantiated_losses(compose_cfg):
    """What `lossbench losses` reads from the sources is what the classes really are."""
    from hydra.utils import instantiate

    for entry in loss_catalogue():
        loss = instantiate(compose_cfg(f"loss={entry.name}").loss)
        assert set(loss.tasks) == set(entry.tasks), entry.name
        assert loss.head == entry.head, entry.name
        assert type(loss).reference == entry.reference and entry.reference, entry.name
        signature = inspect.signature(type(loss).__init__).parameters
        for key, value in entry.hyperparameters.items():
            assert key in signature, (entry.name, key)
            if key not in group_options("loss")[entry.name]:  # not set by the YAML: the default
                assert signature[key].default == value, (entry.name, key)
        doc = type(loss).__doc__
        assert ".. math::" in doc and "Shapes" in doc, entry.name


HYPER = "hyperparameters (defaults)"
COLUMNS = ("name", "tasks", "head", HYPER, "reference")


def losses_table_rows(text: str) -> dict[str, dict[str, list[str]]]:
    """The rows of `lossbench losses`'s table, read by its header's column positions: loss name
    -> each other column's lines (a cell wraps onto the lines whose name column is blank)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["name", "tasks"])
    starts = [lines[at].index(title) for title in COLUMNS]
    assert set(lines[at + 1].strip()) == {"─"}, lines[at + 1]  # the rule under the header
    rows: dict[str, dict[str, list[str]]] = {}
    for line in lines[at + 2:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])]
        if cells[0]:
            name = cells[0]
            assert name not in rows, name
            rows[name] = {title: [] for title in COLUMNS[1:]}
        for title, cell in zip(COLUMNS[1:], cells[1:]):
            if cell:
                rows[name][title].append(cell)
    return rows


def test_losses_command_lists_every_loss_without_importing_torch(tmp_path):
    code = ("import sys\n"
            "from lossbench.cli import main\n"
            "try:\n    main(['losses'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(json.dumps(sorted(m for m in ('torch', 'hydra', 'sklearn') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                          text=True, cwd=tmp_path, env={"COLUMNS": "250", "PATH": ""}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    *table, imported = proc.stdout.strip().splitlines()
    assert json.loads(imported) == []
    rows = losses_table_rows("\n".join(table))
    assert sorted(rows) == sorted(entry.name for entry in loss_catalogue())  # one row each
    assert "Barron 2019" in " ".join(rows["adaptive_robust"]["reference"])
    assert "q=0.7" in rows["gce"][HYPER]
    assert rows["focal"][HYPER][:2] == ["gamma=2.0", "alpha=0.25"]


def test_losses_command_filters_by_task(cli):
    proc = cli("losses", "--task", "regression", env={"COLUMNS": "250"})
    assert proc.returncode == 0
    rows = losses_table_rows(proc.stdout)
    assert "adaptive_robust" in rows and "mse" in rows
    assert "gce" not in rows
    assert sorted(rows) == sorted(REGRESSION)
    assert all("regression" in " ".join(row["tasks"]) for row in rows.values())
    bad = cli("losses", "--task", "ranking")
    assert bad.returncode == 2 and "--task ranking is not a task" in bad.stderr


def test_readme_losses_table_matches_the_catalogue():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.split("## Losses", 1)[1].splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    for entry in loss_catalogue():
        name_cell, tasks, hyper, reference = rows.pop(entry.name)
        assert tasks == ", ".join(entry.tasks) and reference == entry.reference, entry.name
        for key in entry.hyperparameters:
            assert f"{key}=" in hyper, (entry.name, key)
    assert rows == {}


@pytest.mark.parametrize("override,message", [
    ("loss=focal loss.gamma=-1", "gamma must lie in [0, inf), got -1"),
    ("loss=triplet loss.mining=semi_hard", "mining must be one of ('batch_all', 'batch_hard')"),
])
def test_a_bad_hyperparameter_on_the_command_line_is_one_line_and_exit_2(cli, tmp_path, override, message):
    proc = cli("train", *override.split(), "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()

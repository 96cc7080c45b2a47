"""`lossbench` driven as a user drives it: a subprocess in a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import read_metrics, run_dirs


def test_help_lists_subcommands_without_importing_torch(tmp_path):
    code = ("import sys\nfrom lossbench.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'sklearn', 'hydra', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    for command in ("train", "eval", "compare", "losses", "list"):
        assert f"\n  {command} " in out
    assert "HEAVY []" in out


def test_a_finished_command_exits_with_the_heap_frozen_and_still_flushes(tmp_path):
    """The `lossbench` command ends with gc.freeze() (the interpreter's last collections would
    walk every object torch and scikit-learn made); atexit handlers and log files still complete.
    `main` called in-process leaves the caller's garbage collection alone."""
    code = ("import atexit, gc, logging, sys\nfrom lossbench.cli import console_main, main\n"
            "logging.basicConfig(filename='exit.log', level=logging.INFO)\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
            "logging.info('%s', 'x' * 100000)\n"  # more than one buffer's worth
            "try:\n    main(['list', 'losses'])\nexcept SystemExit:\n"  # a program going on
            "    print('in-process frozen', gc.get_freeze_count() > 0)\n"
            "sys.argv = ['lossbench', 'list', 'losses']\nconsole_main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "focal" in proc.stdout and "in-process frozen False" in proc.stdout
    assert proc.stdout.rstrip().endswith("frozen True")
    assert (tmp_path / "exit.log").read_text().rstrip().endswith("x" * 100000)


def test_unknown_command_exits_2(cli):
    proc = cli("trian")
    assert proc.returncode == 2
    assert "unknown command 'trian'" in proc.stderr


def test_train_help_shows_config_groups(cli):
    proc = cli("train", "--help", check=True)
    for group in ("dataset:", "model:", "loss:", "optimizer:", "scheduler:", "trainer:"):
        assert group in proc.stdout
    assert "digits" in proc.stdout and "contrastive" in proc.stdout


def test_cfg_job_prints_resolved_config_without_running(cli, tmp_path):
    proc = cli("train", "--cfg", "job", "loss=bce", "optimizer=sgd", check=True)
    assert "_target_: lossbench.losses.BCEWithLogitsLoss" in proc.stdout
    assert "_target_: torch.optim.SGD" in proc.stdout
    assert not (tmp_path / "outputs").exists() or not run_dirs(tmp_path / "outputs")


@pytest.mark.parametrize("overrides, task, num_outputs", [
    (["loss=ce"], "multiclass", 10),
    (["loss=bce"], "multiclass", 10),  # one-vs-rest: K logits on a multiclass dataset
    (["loss=bce", "dataset=breast_cancer"], "binary", 1),
    (["loss=ce", "dataset=breast_cancer"], "binary", 2),
    (["loss=mse", "dataset=diabetes"], "regression", 1),
    (["loss=contrastive", "embedding_dim=16"], "multiclass", 16),
])
def test_smoke_run_per_task_writes_the_run_directory(cli, tmp_path, overrides, task, num_outputs):
    run_dir = tmp_path / "run"
    proc = cli("train", "trainer=smoke", f"hydra.run.dir={run_dir}", *overrides, check=True)
    for name in (".hydra/config.yaml", "metrics.json", "history.csv", "report.txt", "model.pt",
                 "train.log"):
        assert (run_dir / name).is_file(), name
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    assert metrics["task"] == task
    assert metrics["num_outputs"] == num_outputs
    assert metrics["epochs_run"] == 2
    history = (run_dir / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_loss")
    assert len(history) == 3  # header + 2 epochs
    report = (run_dir / "report.txt").read_text()
    assert "Measured on the test split." in report
    if task == "regression":
        assert {"mse", "rmse", "mae", "r2"} <= set(metrics["test"])
        assert "RMSE" in proc.stdout and "R²" in proc.stdout
    else:
        assert "precision" in proc.stdout and "macro avg" in proc.stdout
        assert "Confusion matrix" in proc.stdout
        assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # not a terminal: one plain line per epoch instead of a progress bar
    assert "epoch 1/2 " in proc.stdout and "epoch 2/2 " in proc.stdout
    if overrides[0] == "loss=contrastive":
        assert 0.0 <= metrics["test"]["pair_roc_auc"] <= 1.0


def test_default_bce_on_default_dataset_is_the_product_example(cli, tmp_path):
    proc = cli("train", "loss=bce", "optimizer=adam", "trainer.epochs=8",
               f"hydra.run.dir={tmp_path / 'run'}", check=True)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["choices"]["loss"] == "bce" and metrics["choices"]["optimizer"] == "adam"
    assert metrics["test"]["accuracy"] > 0.5  # 8 epochs on digits already learn a lot
    assert "weighted avg" in proc.stdout


def test_incompatible_loss_and_task_stops_before_training(cli, tmp_path):
    proc = cli("train", "loss=ce", "dataset=diabetes", "trainer=smoke")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "loss=ce" in lines[0] and "regression" in lines[0] and "mse" in lines[0]
    assert "Traceback" not in proc.stderr
    assert run_dirs(tmp_path) == []


def test_multirun_runs_all_four_seed_losses(cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", "loss=ce,bce,mse,contrastive", "trainer=smoke",
               f"hydra.sweep.dir={sweep}", check=True)
    dirs = run_dirs(sweep)
    # each job's folder is named by its overrides, sorted (not by its place in the sweep)
    assert [d.name for d in dirs] == [f"loss={loss},trainer=smoke"
                                      for loss in ("bce", "ce", "contrastive", "mse")]
    losses = [read_metrics(d)["choices"]["loss"] for d in dirs]
    assert losses == ["bce", "ce", "contrastive", "mse"]
    assert all(read_metrics(d)["status"] == "completed" for d in dirs)
    # one console line per job; each job's report is in its own report.txt
    assert proc.stdout.count("] completed: test accuracy ") == 4
    assert all("precision" in (d / "report.txt").read_text() for d in dirs)


def test_default_output_layout_is_dated(cli, tmp_path):
    cli("train", "trainer=smoke", check=True)
    dirs = run_dirs(tmp_path / "outputs")
    assert len(dirs) == 1
    date, time = dirs[0].relative_to(tmp_path / "outputs").parts
    assert len(date) == 10 and date[4] == "-" and len(time) == 8 and time[2] == "-"


def test_users_own_config_dir_adds_a_loss(cli, tmp_path):
    (tmp_path / "myconf" / "loss").mkdir(parents=True)
    (tmp_path / "myconf" / "loss" / "smoothed.yaml").write_text(
        "_target_: torch.nn.CrossEntropyLoss\nlabel_smoothing: 0.1\n")
    proc = cli("train", "--config-dir", str(tmp_path / "myconf"), "loss=smoothed",
               "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}", check=True)
    config = (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    assert "label_smoothing: 0.1" in config
    assert read_metrics(tmp_path / "run")["status"] == "completed"
    assert "precision" in proc.stdout


def test_python_dash_m_works(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lossbench", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("usage: lossbench")


def test_metrics_json_holds_what_the_run_promises(cli, tmp_path):
    cli("train", "trainer=smoke", f"hydra.run.dir={tmp_path / 'run'}", "seed=3", check=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("status", "best_epoch", "best_val", "epochs_run", "wall_time_s", "test",
                "monitor", "seed"):
        assert key in metrics, key
    assert metrics["seed"] == 3
    assert metrics["monitor"] == "val_accuracy"
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]


def test_bare_lossbench_prints_the_help_on_stderr_and_exits_2(cli):
    proc = cli()
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("usage: lossbench <command>")
    assert "\n  train " in proc.stderr

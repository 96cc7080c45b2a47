"""Experiment tracking with the real packages: the TensorBoard event file is read back with
TensorBoard's own reader, the MLflow runs are found through MLflow's own client."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from conftest import read_metrics, run_dirs

from lossbench.errors import UserError
from lossbench.results.tracking import flatten


def history(run_dir):
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'outputs' / 'mlflow.db'}")


def all_runs(client):
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments])


def test_flatten_joins_nested_keys_with_dots_and_keeps_lists():
    assert flatten({"trainer": {"epochs": 5, "opt": {"lr": 0.1}}, "seed": 0, "h": [1, 2]}) == {
        "trainer.epochs": 5, "trainer.opt.lr": 0.1, "seed": 0, "h": [1, 2]}


def test_tensorboard_event_file_holds_every_epoch_and_the_test_metrics(cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli("train", "dataset=iris", "trainer=smoke", "trainer.plots=true", "logger=tensorboard",
        "print_config=false", f"hydra.run.dir={tmp_path / 'run'}", check=True)
    (run_dir,) = run_dirs(tmp_path)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    rows = history(run_dir)
    val_acc = acc.Scalars("epoch/val_accuracy")
    assert [e.step for e in val_acc] == [1, 2]
    assert [e.value for e in val_acc] == pytest.approx([float(r["val_accuracy"]) for r in rows],
                                                       rel=1e-6)
    train_loss = acc.Scalars("epoch/train_loss")
    assert [e.value for e in train_loss] == pytest.approx([float(r["train_loss"]) for r in rows],
                                                          rel=1e-6)
    test = read_metrics(run_dir)["test"]
    assert acc.Scalars("test/accuracy")[0].value == pytest.approx(test["accuracy"], rel=1e-6)
    assert acc.Scalars("test/ece")[0].value == pytest.approx(test["ece"], rel=1e-6)
    assert {"plots/curves", "plots/confusion", "plots/reliability"} <= set(acc.Tags()["images"])
    # the HParams tab: this run's choices against its test metrics
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["loss"].string_value == "ce" and hparams["dataset"].string_value == "iris"
    assert acc.Scalars("hparams/test_accuracy")[0].value == pytest.approx(test["accuracy"],
                                                                          rel=1e-6)


def test_mlflow_run_has_config_params_epoch_metrics_test_metrics_and_artifacts(cli, tmp_path):
    cli("train", "dataset=iris", "trainer=smoke", "trainer.plots=true", "logger=mlflow",
        "optimizer.lr=0.005", "print_config=false", f"hydra.run.dir={tmp_path / 'run'}",
        check=True)
    assert (tmp_path / "outputs" / "mlflow.db").is_file()  # the default store, under outputs/
    run_dir = tmp_path / "run"
    client = mlflow_client(tmp_path)
    (run,) = all_runs(client)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "lossbench"
    assert run.info.run_name == "loss=ce dataset=iris"
    params = run.data.params
    assert params["optimizer.lr"] == "0.005"
    assert params["trainer.epochs"] == "2"
    assert params["dataset._target_"] == "lossbench.data.sklearn_datasets.iris"
    rows = history(run_dir)
    val_loss = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(m.step for m in val_loss) == [1, 2]
    assert [m.value for m in sorted(val_loss, key=lambda m: m.step)] == pytest.approx(
        [float(r["val_loss"]) for r in rows])
    test = read_metrics(run_dir)["test"]
    for name in ("accuracy", "macro_f1", "ece", "nll", "brier"):
        assert run.data.metrics[f"test_{name}"] == pytest.approx(test[name])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.txt", "metrics.json", "history.csv", "curves.png", "confusion.png",
            "reliability.png", ".hydra"} <= artifacts
    assert "model.pt" not in artifacts
    report = client.download_artifacts(run.info.run_id, "report.txt", str(tmp_path))
    assert open(report).read() == (run_dir / "report.txt").read_text()


def test_a_sweep_is_one_experiment_with_one_run_per_job(cli, tmp_path):
    sweep_dir = tmp_path / "sweep"
    cli("train", "-m", "dataset=iris", "trainer=smoke", "logger=mlflow", "seed=0,1",
        "print_config=false", f"hydra.sweep.dir={sweep_dir}", check=True)
    client = mlflow_client(tmp_path)
    runs = all_runs(client)
    assert len(runs) == 2
    (experiment_id,) = {r.info.experiment_id for r in runs}
    assert client.get_experiment(experiment_id).name == f"lossbench sweep {sweep_dir}"
    assert sorted(r.info.run_name for r in runs) == ["seed=0", "seed=1"]
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.parametrize("error, status", [(RuntimeError, "FAILED"),
                                           (KeyboardInterrupt, "KILLED")])
def test_a_run_that_raises_is_marked_failed_or_killed_in_mlflow(compose_cfg, tmp_path,
                                                                 monkeypatch, error, status):
    from lossbench.results import report
    from lossbench.experiment.run import run

    def broken(*args, **kwargs):
        raise error("simulated while reporting")

    monkeypatch.setattr(report, "classification_metrics", broken)
    db = tmp_path / "store" / "mlflow.db"
    cfg = compose_cfg("dataset=iris", "trainer=smoke", "logger=mlflow", "print_config=false",
                      f"logger.tracking_uri=sqlite:///{db}",
                      f"logger.artifact_location={tmp_path / 'artifacts'}")
    with pytest.raises(error, match="simulated"):
        run(cfg)
    from mlflow.tracking import MlflowClient

    (stopped,) = all_runs(MlflowClient(tracking_uri=f"sqlite:///{db}"))
    assert stopped.info.status == status
    assert len(stopped.data.metrics) and "test_accuracy" not in stopped.data.metrics


@pytest.mark.parametrize("logger, module", [("mlflow", "mlflow.tracking"),
                                            ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_package_is_a_user_error_before_any_file(compose_cfg, monkeypatch,
                                                                   logger, module):
    from lossbench.experiment.run import run

    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    cfg = compose_cfg("dataset=iris", "trainer=smoke", f"logger={logger}", "print_config=false")
    with pytest.raises(UserError, match=rf"pip install 'lossbench\[{logger}\]'"):
        run(cfg)
    assert run_dirs(cfg.run_dir) == []
    assert not (Path(cfg.run_dir) / "model.pt").exists()


@pytest.mark.slow
def test_parallel_jobs_share_a_new_mlflow_store(cli, tmp_path):
    # two processes open the not-yet-created SQLite store at the same moment
    proc = cli("train", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
               "loss=ce,gce", "dataset=iris", "model=linear", "trainer=smoke", "logger=mlflow",
               "print_config=false", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert proc.returncode == 0, proc.stderr
    runs = all_runs(mlflow_client(tmp_path))
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        ("loss=ce", "FINISHED"), ("loss=gce", "FINISHED")]

"""The Python API (lossbench/api): the CLI's behaviour from a program or a notebook."""
import json
import logging
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig

import lossbench as lb

SMOKE = "trainer=smoke"


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_the_public_api_is_what_all_lists():
    assert sorted(lb.__all__) == ["Comparison", "LossbenchError", "Run", "Runs", "compare", "load",
                                  "sweep", "train"]
    for name in lb.__all__:
        assert getattr(lb, name).__doc__, name
    assert issubclass(lb.LossbenchError, ValueError)
    with pytest.raises(AttributeError):
        lb.no_such_name  # noqa: B018


def test_train_gives_the_test_metrics_of_the_cli_with_the_same_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = lb.train(SMOKE, "loss=gce", seed=3, quiet=True)
    cli = subprocess.run(["lossbench", "train", SMOKE, "loss=gce", "seed=3",
                          "hydra.run.dir=cli"], cwd=tmp_path, capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    from_cli = _metrics(tmp_path / "cli")
    assert run.status == "completed" and run.loss == "gce"
    for at in ("best", "last"):
        for key in ("accuracy", "macro_f1", "nll"):
            assert run.test[at][key] == pytest.approx(from_cli["test_at"][at][key], rel=1e-6)
    # the same files in the same places as a CLI run
    assert {p.name for p in run.dir.iterdir()} == {p.name for p in (tmp_path / "cli").iterdir()}
    assert run.dir.parent.parent == tmp_path / "outputs"


def test_two_calls_in_the_same_second_get_two_directories_and_overwrite_nothing(tmp_path,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = lb.train(SMOKE, quiet=True)
    written = (first.dir / "metrics.json").read_bytes()
    second = lb.train(SMOKE, quiet=True)
    third = lb.train(SMOKE, quiet=True)
    assert len({first.dir, second.dir, third.dir}) == 3
    assert (first.dir / "metrics.json").read_bytes() == written


def test_a_bad_override_raises_the_cli_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cli = subprocess.run(["lossbench", "train", "loss=gcee"], cwd=tmp_path, capture_output=True,
                         text=True)
    with pytest.raises(lb.LossbenchError) as raised:
        lb.train("loss=gcee")
    assert cli.returncode == 2
    assert cli.stderr.splitlines()[0] == f"lossbench: error: {str(raised.value).splitlines()[0]}"
    assert "did you mean gce?" in str(raised.value)
    with pytest.raises(ValueError, match="must be a number"):
        lb.train("optimizer.lr=abc", quiet=True)
    out = capsys.readouterr()
    assert out.err == ""  # no line printed, no Hydra "Error executing job"
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] \
        if (tmp_path / "outputs").exists() else True


def test_the_callers_process_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = logging.getLogger("a.callers.logger")
    mine.setLevel(logging.INFO)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    mine.addHandler(handler)
    root_handlers, root_level = list(logging.getLogger().handlers), logging.getLogger().level
    argv, environ = list(sys.argv), dict(os.environ)
    hydra_runtime = HydraConfig.instance().cfg
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)

    lb.train(SMOKE, "trainer.threads=1", "seed=7", quiet=True)

    assert os.getcwd() == str(tmp_path)
    assert sys.argv == argv and dict(os.environ) == environ
    # Hydra's runtime config is the caller's again: code run next reads no leftover run's
    assert HydraConfig.instance().cfg is hydra_runtime
    assert torch.get_num_threads() == threads and torch.get_default_dtype() == dtype
    assert logging.getLogger().handlers == root_handlers
    assert logging.getLogger().level == root_level
    mine.info("still heard")
    assert [r.getMessage() for r in records] == ["still heard"]
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_a_run_reads_back_history_report_model_and_predictions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = lb.train(SMOKE, "dataset=iris", quiet=True)
    again = lb.load(run.dir)
    assert again.test == run.test and again.dir == run.dir
    history = run.history
    assert list(history.index) == list(range(1, len(history) + 1))
    assert {"train_loss", "val_accuracy"} <= set(history.columns)
    report = run.report
    assert {"precision", "recall", "f1-score", "support"} <= set(report.columns)
    assert report.loc["accuracy", "f1-score"] == pytest.approx(run.test["best"]["accuracy"])
    assert run.config.dataset.name == "iris" if "name" in run.config.dataset else True
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    scores = run.predict(x)
    assert scores.shape == (150, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    # the predictions on the whole dataset are as good as the reported test accuracy, roughly
    assert (scores.argmax(1) == y).mean() >= run.test["best"]["accuracy"] - 0.25
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    with pytest.raises(lb.LossbenchError, match="shape"):
        run.predict(np.zeros((2, 5)))
    assert "<table>" in run._repr_html_()


def test_sweep_then_compare_renders_a_table_and_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hydra_runtime = HydraConfig.instance().cfg
    runs = lb.sweep(SMOKE, "dataset=wine", "loss=ce,gce", "seed=0,1", quiet=True)
    assert len(runs) == 4 and runs.dir.is_dir()
    # the sweep's Hydra runtime config is not left behind for the code the caller runs next
    assert HydraConfig.instance().cfg is hydra_runtime
    assert sorted(r.loss for r in runs) == ["ce", "ce", "gce", "gce"]
    assert all(r.status == "completed" for r in runs)
    table = lb.compare(runs, baseline="ce")
    frame = table.to_pandas()
    assert len(frame) == 2
    assert "<table" in table._repr_html_() and "gce" in str(table)
    pictures = table.plot()
    assert [p.name for p in pictures][:2] == ["comparison.png", "curves.png"]
    assert all(p._repr_png_().startswith(b"\x89PNG") for p in pictures)
    # the same table from the folder, as `lossbench compare` reads it; compare writes nothing
    assert lb.compare(runs.dir, baseline="ce").to_pandas().equals(frame)
    assert not list(runs.dir.glob("comparison.*"))
    assert len(lb.Runs.of(runs.dir)) == 4


def test_load_says_what_a_folder_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(lb.LossbenchError, match="not a directory"):
        lb.load(tmp_path / "missing")
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sweep" / "0" / "metrics.json").write_text(json.dumps(
        {"schema_version": 1, "status": "failed"}))
    with pytest.raises(lb.LossbenchError, match="sweep folder of 1 runs"):
        lb.load(tmp_path / "sweep")


def test_ctrl_c_stops_the_run_with_its_checkpoint(tmp_path):
    script = textwrap.dedent("""
        import os, signal, threading, time
        from pathlib import Path
        import lossbench as lb

        def interrupt():
            while not list(Path("outputs").rglob("train.log")) or "'epoch': 3," not in \\
                    next(Path("outputs").rglob("train.log")).read_text():
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        try:
            lb.train("trainer.epochs=400", "trainer.patience=1000", "dataset=iris", quiet=True)
        except KeyboardInterrupt as err:
            print("stopped:", err)
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "stopped:" in done.stdout and "resume=" in done.stdout
    run_dir = next((tmp_path / "outputs").rglob("checkpoint.pt")).parent
    assert _metrics(run_dir)["status"] == "interrupted"
    resumed = subprocess.run(
        [sys.executable, "-c", f"import lossbench as lb, pathlib; r = lb.train(resume=pathlib.Path({str(run_dir)!r}), "
                               "quiet=True); print(r.status, r.dir)"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.split()[0] == "completed"


def test_the_losses_work_in_a_users_own_loop():
    from lossbench.losses import GCELoss

    loss_fn = GCELoss(q=0.7)
    logits = torch.randn(8, 3, requires_grad=True)
    loss = loss_fn(logits, torch.randint(0, 3, (8,)))
    loss.backward()
    assert loss.ndim == 0 and logits.grad is not None

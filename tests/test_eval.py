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


def test_damaged_files_of_a_run_are_one_line_with_the_reason(cli, tmp_path):
    """A zero-byte or truncated model.pt says why it cannot be read (the size against the one
    the run recorded); a zero-byte .hydra/config.yaml is named, not a missing-key traceback."""
    import shutil

    run = tmp_path / "run"
    cli("train", *TINY, "dataset=iris", f"hydra.run.dir={run}", check=True)
    written = (run / "model.pt").stat().st_size
    cases = {"empty": (b"", "model.pt", "the file is empty (0 bytes) where the run wrote "
                                        f"{written}"),
             "cut": ((run / "model.pt").read_bytes()[:100], "model.pt",
                     f"the file has 100 bytes where the run wrote {written}"),
             "noconfig": (b"", ".hydra/config.yaml", "config.yaml is empty (0 bytes)")}
    for name, (content, damaged, message) in cases.items():
        shutil.copytree(run, tmp_path / name)
        (tmp_path / name / damaged).write_bytes(content)
        proc = cli("eval", name)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert message in lines[0], lines[0]


def test_eval_of_a_run_on_a_relative_file_works_from_another_folder(cli, tmp_path):
    """dataset.path=iris.csv is recorded by its absolute path; a run saved with the relative
    one (before lossbench recorded it) is read against the folder it was run from."""
    from sklearn.datasets import load_iris

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    load_iris(as_frame=True).frame.to_csv(work / "iris.csv", index=False)
    cli("train", *TINY, "dataset=csv", "dataset.path=iris.csv", "dataset.target=target",
        "hydra.run.dir=run", cwd=work, check=True)
    saved = (work / "run" / ".hydra" / "config.yaml").read_text()
    assert f"path: {(work / 'iris.csv').resolve()}" in saved
    assert read_metrics(work / "run")["config"]["dataset"]["path"] == str(
        (work / "iris.csv").resolve())
    first = cli("eval", "../work/run", cwd=elsewhere)
    assert first.returncode == 0, first.stderr
    # as an older lossbench saved it: the path as typed
    config = work / "run" / ".hydra" / "config.yaml"
    config.write_text(saved.replace(str((work / "iris.csv").resolve()), "iris.csv"))
    again = cli("eval", "../work/run", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert report_rows(again.stdout) == report_rows(first.stdout)


def test_eval_of_a_sweep_folder_says_how_to_eval_its_jobs(cli, tmp_path):
    cli("train", "-m", *TINY, "dataset=iris", "seed=0,1", "hydra.sweep.dir=sweep", check=True)
    proc = cli("eval", "sweep")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "sweep is a sweep folder (2 completed jobs" in lines[0]
    # the example is the first job, by the folder its overrides name, and it pastes as is
    first = [job for job in (tmp_path / "sweep").iterdir() if "seed=0" in job.name.split(",")]
    assert len(first) == 1 and (first[0] / "model.pt").is_file(), first
    example = f"lossbench eval {first[0].relative_to(tmp_path)};"
    assert example in lines[0] and "did not complete" not in lines[0], lines[0]
    assert cli(*example.rstrip(";").split()[1:]).returncode == 0

"""The run record (lossbench/results/record.py): metrics.json and history.csv written atomically
and versioned, read back the same, old records read, newer ones refused; one `flatten`; and no
other module naming those files."""

from __future__ import annotations

import ast
import json
import math
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import lossbench
from lossbench.errors import UserError
from lossbench.results import files, record

PACKAGE = Path(lossbench.__file__).parent


def hand_written_run(run_dir: Path, **fields) -> Path:
    """A completed run's files as an older lossbench wrote them: no schema_version."""
    metrics = {"status": "completed", "task": "multiclass", "dataset": "wine", "seed": 0,
               "choices": {"loss": "ce", "dataset": "wine"}, "monitor": "val_accuracy",
               "best_epoch": 2, "test": {"accuracy": 0.9, "macro_f1": 0.88},
               "config": {"seed": 0, "loss": {"_target_": "lossbench.losses.ce"}}, **fields}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- loss=ce\n- seed=0\n")
    (run_dir / "history.csv").write_text("epoch,train_loss,val_accuracy\n1,1.0,0.8\n2,0.9,0.9\n")
    return run_dir


# --------------------------------------------------------------------------------------------
# metrics.json


def test_round_trip_stamps_the_schema_version_first(tmp_path):
    metrics = {"status": "completed", "best_val": 0.875, "test": {"accuracy": 0.9},
               "warnings": [{"kind": "near_chance", "message": "m"}], "memorisation": None}
    record.write_metrics(tmp_path, metrics)
    raw = json.loads((tmp_path / "metrics.json").read_text())
    assert list(raw)[0] == "schema_version" and raw["schema_version"] == record.SCHEMA_VERSION
    # `files`: the sizes of the files the record vouches for (none here)
    assert record.read_metrics(tmp_path) == {"schema_version": record.SCHEMA_VERSION, **metrics,
                                             "files": {}}
    assert "schema_version" not in metrics  # the caller's dict is left as it was


@pytest.mark.parametrize("status", ["completed", "interrupted"])
def test_the_record_vouches_for_the_sizes_of_its_files(tmp_path, status):
    """A run is whole only while every file its record names is as it was written: a
    zero-byte or truncated model.pt, a cut history.csv or a removed file is caught."""
    import torch

    record.write_history(tmp_path, [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
    files.save_torch_atomic(tmp_path / record.MODEL, {"w": torch.ones(64)})
    (tmp_path / record.CHECKPOINT).write_bytes(b"state")
    record.write_metrics(tmp_path, {"status": status})
    written = record.read_metrics(tmp_path)["files"]
    names = {record.HISTORY, record.MODEL} | ({record.CHECKPOINT} if status != "completed"
                                              else set())
    assert set(written) == names  # a completed run's checkpoint is about to be removed
    assert written[record.MODEL] == (tmp_path / record.MODEL).stat().st_size
    metrics = record.read_metrics(tmp_path)
    assert record.damaged_files(tmp_path, metrics) == []
    model = (tmp_path / record.MODEL).read_bytes()
    (tmp_path / record.MODEL).write_bytes(model[: len(model) // 2])  # truncated
    history = (tmp_path / record.HISTORY).read_text()
    (tmp_path / record.HISTORY).write_text(history.rsplit("\n", 2)[0] + "\n")  # last row cut
    assert record.damaged_files(tmp_path, metrics) == [record.HISTORY, record.MODEL]
    (tmp_path / record.MODEL).write_bytes(b"")  # zero bytes
    (tmp_path / record.HISTORY).unlink()
    assert record.damaged_files(tmp_path, metrics) == [record.HISTORY, record.MODEL]
    assert record.damaged_files(tmp_path, {"status": "completed"}) == []  # an older record


def test_a_stamp_in_the_input_is_replaced_by_the_writers_own(tmp_path):
    record.write_metrics(tmp_path, {"schema_version": 0, "status": "failed"})
    assert record.read_metrics(tmp_path)["schema_version"] == record.SCHEMA_VERSION


def test_non_finite_numbers_and_numpy_values_survive_the_round_trip(tmp_path):
    np = pytest.importorskip("numpy")
    record.write_metrics(tmp_path, {"best_val": float("nan"), "counts": np.array([3, 4]),
                                    "rate": np.float32(0.25)})
    back = record.read_metrics(tmp_path)
    assert math.isnan(back["best_val"]) and back["counts"] == [3, 4] and back["rate"] == 0.25


def test_a_write_that_fails_while_dumping_leaves_the_old_record(tmp_path, monkeypatch):
    record.write_metrics(tmp_path, {"status": "completed", "n": 1})

    def broken_dump(*args, **kwargs):
        raise RuntimeError("disk gremlin")

    monkeypatch.setattr(files.json, "dumps", broken_dump)
    with pytest.raises(RuntimeError, match="gremlin"):
        record.write_metrics(tmp_path, {"status": "failed", "n": 2})
    monkeypatch.undo()
    assert record.read_metrics(tmp_path)["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_write_that_fails_half_way_leaves_the_old_record_and_no_temporary(tmp_path,
                                                                            monkeypatch):
    record.write_metrics(tmp_path, {"status": "completed", "n": 1})
    real_fdopen = os.fdopen

    class HalfThenFull:
        """Writes half of what it is given, then the disk is full."""

        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", HalfThenFull)
    with pytest.raises(OSError, match="No space"):
        record.write_metrics(tmp_path, {"status": "failed", "n": 2, "padding": "x" * 1000})
    monkeypatch.undo()
    assert record.read_metrics(tmp_path) == {"schema_version": record.SCHEMA_VERSION,
                                             "status": "completed", "n": 1, "files": {}}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_no_record_reads_as_none(tmp_path):
    assert record.read_metrics(tmp_path) is None
    assert not record.has_metrics(tmp_path)


@pytest.mark.slow
def test_a_run_writes_its_record_through_the_owner(tmp_path, cli):
    proc = cli("train", "trainer=smoke", "model=linear", "dataset=iris", "trainer.plots=false",
               "print_config=false", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr
    raw = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(raw)[:2] == ["schema_version", "status"] and raw["schema_version"] == 1
    history = record.read_history(tmp_path / "run")
    assert [row["epoch"] for row in history] == list(range(1, raw["epochs_run"] + 1))


def test_a_record_without_a_version_is_read_as_version_one(tmp_path):
    hand_written_run(tmp_path / "old")
    metrics = record.read_metrics(tmp_path / "old")
    assert "schema_version" not in metrics and metrics["status"] == "completed"


@pytest.mark.parametrize("text, reason", [
    ("{\"status\": \"compl", "Unterminated string"),
    ("[1, 2]", "not a JSON object"),
    ("{\"schema_version\": \"two\"}", "schema_version 'two' is not a version number"),
    ("{\"schema_version\": true}", "schema_version True is not a version number"),
])
def test_a_file_that_is_no_record_raises_a_value_error_naming_it(tmp_path, text, reason):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(record.UnreadableRecord) as caught:
        record.read_metrics(tmp_path)
    assert isinstance(caught.value, ValueError) and not isinstance(caught.value, UserError)
    assert str(tmp_path / "metrics.json") in str(caught.value) and reason in caught.value.reason


def test_a_newer_record_is_a_user_error_naming_the_file_and_both_versions(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 99, "status": "x"}))
    with pytest.raises(UserError) as caught:
        record.read_metrics(tmp_path)
    message = str(caught.value)
    assert not isinstance(caught.value, ValueError)  # readers that skip broken files don't
    assert str(tmp_path / "metrics.json") in message and "99" in message
    assert f"up to {record.SCHEMA_VERSION}" in message and "\n" not in message


def test_compare_refuses_a_newer_record_with_one_line_and_writes_nothing(tmp_path, cli):
    run_dir = hand_written_run(tmp_path / "runs" / "new", schema_version=99)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = cli("compare", "runs/new")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(run_dir / "metrics.json") in lines[0] and "schema version 99" in lines[0]
    assert f"up to {record.SCHEMA_VERSION}" in lines[0]
    assert proc.stdout == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_compare_reads_an_old_record_and_still_reports_a_broken_one(tmp_path, cli):
    hand_written_run(tmp_path / "runs" / "old")
    broken = hand_written_run(tmp_path / "runs" / "broken")
    (broken / "metrics.json").write_text("{\"status\": \"compl")
    proc = cli("compare", "runs", "--format", "json", "--no-plots")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert json.dumps(report).count("0.9") >= 1  # the old run's accuracy is compared
    unreadable = [f for f in report["failed"] if f["status"] == "unreadable"]
    assert len(unreadable) == 1 and unreadable[0]["error"].startswith("metrics.json: ")
    assert str(broken) not in unreadable[0]["error"]  # the path is the run's, not the message's


def test_eval_refuses_a_newer_record_with_exit_status_2(tmp_path, cli):
    run_dir = hand_written_run(tmp_path / "run", schema_version=2 + record.SCHEMA_VERSION)
    (run_dir / "model.pt").write_bytes(b"not read: the record is refused first")
    proc = cli("eval", "run")
    assert proc.returncode == 2
    assert "schema version" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_sweep_does_not_take_a_newer_record_for_a_completed_job(tmp_path):
    from lossbench.experiment.sweep import completed_run, job_status

    cfg = OmegaConf.create({"seed": 0, "run_dir": str(tmp_path)})
    record.write_metrics(tmp_path, {"status": "completed", "config": record.resolved_config(cfg)})
    assert completed_run(cfg, tmp_path)["status"] == "completed"
    assert job_status(tmp_path) == "completed"
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": 99, "status": "done"}))
    with pytest.raises(record.NewerRecord):
        completed_run(cfg, tmp_path)


# --------------------------------------------------------------------------------------------
# history.csv


def test_history_round_trip_with_columns_that_appear_later(tmp_path):
    rows = [{"epoch": 1, "train_loss": 0.5, "val_accuracy": 0.8},
            {"epoch": 2, "train_loss": 0.25, "val_accuracy": 0.9, "flipped_memorised": 0.125}]
    record.write_history(tmp_path, rows)
    header = (tmp_path / "history.csv").read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_accuracy,flipped_memorised"
    back = record.read_history(tmp_path)
    assert back[0] == {"epoch": 1.0, "train_loss": 0.5, "val_accuracy": 0.8}  # empty: left out
    assert back[1] == {"epoch": 2.0, "train_loss": 0.25, "val_accuracy": 0.9,
                       "flipped_memorised": 0.125}


def test_history_keeps_nan_and_drops_text(tmp_path):
    (tmp_path / "history.csv").write_text("epoch,val_nll,note\n1,nan,warm-up\n")
    (row,) = record.read_history(tmp_path)
    assert set(row) == {"epoch", "val_nll"} and math.isnan(row["val_nll"])
    assert record.read_history(tmp_path / "nowhere") == []


def test_the_tie_break_reads_the_selected_epochs_row(tmp_path):
    from lossbench.results.tuning import selected_tie

    record.write_history(tmp_path, [{"epoch": 1, "val_nll": 0.7, "val_nll_clean": 0.6},
                                    {"epoch": 2, "val_nll": 0.5, "val_nll_clean": float("nan")}])
    metrics = {"best_epoch": 2, "selection": {"tie_break": "val_nll", "labels": "noisy"}}
    assert selected_tie(metrics, tmp_path) == 0.5
    assert selected_tie({**metrics, "best_epoch": 1}, tmp_path) == 0.7
    clean = {**metrics, "selection": {"tie_break": "val_nll", "labels": "clean"}}
    assert selected_tie(clean, tmp_path) is None  # NaN at that epoch: no tie-break
    assert selected_tie({**metrics, "best_epoch": 3}, tmp_path) is None


# --------------------------------------------------------------------------------------------
# identity and failures


def test_the_identity_leaves_out_where_the_run_lives_and_is_json_shaped(tmp_path):
    a = OmegaConf.create({"seed": 1, "lr": "${opt.lr}", "opt": {"lr": 0.1}, "run_dir": "a"})
    b = OmegaConf.create({"seed": 1, "lr": 0.1, "opt": {"lr": 0.1}, "run_dir": "b"})
    assert record.resolved_config(a) == record.resolved_config(b)
    assert "run_dir" not in record.run_identity(a)
    record.write_metrics(tmp_path, {"config": record.resolved_config(a)})
    assert record.read_metrics(tmp_path)["config"] == record.resolved_config(b)
    from lossbench.experiment import sweep

    assert sweep.resolved_config is record.resolved_config  # the old name still imports


def test_a_failure_record_keeps_what_the_failed_attempt_wrote():
    cfg = OmegaConf.create({"seed": 3, "data_seed": 7, "train_seed": None})
    try:
        raise ValueError("bad\nvalue")
    except ValueError as err:
        failed = record.failure_record(cfg, err, {"loss": "gce"}, 2.5,
                                       earlier={"status": "diverged", "best_epoch": 4})
    assert failed["status"] == "failed" and failed["stopped"] == "diverged"
    assert failed["best_epoch"] == 4 and failed["error"] == "ValueError: bad value"
    assert "Traceback" in failed["traceback"] and failed["wall_time_s"] == 2.5
    assert failed["pairing"] == {"data_seed": 7, "train_seed": 3}
    assert failed["config"] == {"seed": 3, "data_seed": 7, "train_seed": None}
    fresh = record.failure_record(cfg, UserError("no such loss"), {}, 0.0)
    assert "stopped" not in fresh and fresh["error"] == "no such loss"


def test_a_failure_record_of_an_unresolvable_config_has_no_config():
    cfg = OmegaConf.create({"seed": 0, "lr": "${missing.key}"})
    failed = record.failure_record(cfg, KeyError("missing"), {}, 0.0)
    assert failed["config"] is None and failed["seed"] == 0


# --------------------------------------------------------------------------------------------
# flatten


def test_flatten_joins_keys_and_turns_lists_into_json_text_for_compare():
    tree = {"a": {"b": 1, "c": {"d": None}}, "e": [1, {"f": 2}], "g": {}}
    flat = record.flatten(tree)
    assert flat == {"a.b": 1, "a.c.d": None, "e": "[1, {\"f\": 2}]"}
    assert all(hash(v) is not None for v in flat.values())  # compare groups by these values


def test_flatten_keeps_lists_whole_for_trackers():
    from lossbench.results.tracking import flatten as tracking_flatten

    tree = OmegaConf.to_container(OmegaConf.create({"t": {"epochs": 5}, "h": [1, 2]}))
    assert record.flatten(tree, lists="keep") == {"t.epochs": 5, "h": [1, 2]}
    assert tracking_flatten(tree) == record.flatten(tree, lists="keep")
    assert record.flatten(tree, "run.", lists="keep") == {"run.t.epochs": 5, "run.h": [1, 2]}


def test_flatten_of_a_leaf_and_a_bad_list_rule():
    assert record.flatten(3, "x.") == {"x": 3}
    with pytest.raises(ValueError, match="json or keep"):
        record.flatten({"a": [1]}, lists="tuple")


def test_one_flatten_in_the_package():
    from lossbench.results.comparison import records

    assert records.flatten is record.flatten
    defined = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
               if re.search(r"^def flatten\(", p.read_text(encoding="utf-8"), re.M)]
    assert defined == ["results/record.py"]


# --------------------------------------------------------------------------------------------
# one owner of the files


OWNERS = {"results/record.py", "results/files.py"}
# a path by the record's file names, e.g. "metrics.json" or "trial*/seed*/metrics.json"; prose
# such as "see its metrics.json" has spaces and is no path
FILE_NAME = re.compile(r"^[\w*./-]*(metrics\.json|history\.csv)$")


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def named_record_files(path: Path) -> list[str]:
    """Where a module names metrics.json or history.csv as a path (not in prose, docstrings or
    comments): `line: text`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    return [f"{node.lineno}: {node.value}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docs and FILE_NAME.match(node.value)]


def test_the_finder_sees_a_path_and_ignores_prose(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('"""Writes metrics.json."""\nA = "see its metrics.json"\n'
                      'B = run_dir / "metrics.json"\nC = f"{d}/history.csv"\n')
    assert named_record_files(module) == ["3: metrics.json", "4: /history.csv"]


def test_only_the_record_names_its_files():
    """Every writer and reader of metrics.json and history.csv goes through results/record.py,
    which knows the schema; a module that opens them by name (to write, or to json-load) would
    be a second owner."""
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in OWNERS and (found := named_record_files(path)):
            offenders[name] = found
    assert offenders == {}

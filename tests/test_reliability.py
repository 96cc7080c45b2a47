"""Runs that diverge, repeat, or meet a hostile checkpoint; files that are never half-written."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import read_metrics

QUIET = ("print_config=false", "trainer.plots=false", "trainer.device=cpu")
# Epoch 1 trains at lr=0.01; the step scheduler then multiplies it by 1e12: epoch 2 blows up.
BLOW_UP_IN_EPOCH_2 = ("trainer=smoke", "trainer.epochs=4", "optimizer=sgd", "optimizer.lr=0.01",
                      "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=1e12", *QUIET)


def test_nan_loss_ends_the_run_as_diverged_keeping_the_last_good_checkpoint(cli, tmp_path):
    out = tmp_path / "run"
    proc = cli("train", *BLOW_UP_IN_EPOCH_2, f"hydra.run.dir={out}")
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "diverged at epoch 2" in lines[0]
    assert "optimizer.lr=0.001" in lines[0] and "trainer.grad_clip" in lines[0]

    metrics = read_metrics(out)
    assert metrics["status"] == "diverged"
    assert metrics["stopped_at"]["epoch"] == 2 and metrics["stopped_at"]["step"] >= 1
    assert metrics["checkpoint"] == "checkpoint.pt"
    assert not (out / "model.pt").exists()
    # the checkpoint is the one written after epoch 1: finite weights, resumable state
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["loop"]["epoch"] == 2 and state["loop"]["batch"] == 0
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    with open(out / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["epoch"] == "1" and float(rows[0]["train_loss"]) < 10


def test_nan_in_the_first_steps_names_the_step(cli, tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "trainer=smoke", "optimizer=sgd", "optimizer.lr=1e30", *QUIET,
               f"hydra.run.dir={out}")
    assert proc.returncode == 3, proc.stderr
    metrics = read_metrics(out)
    assert metrics["status"] == "diverged"
    assert metrics["stopped_at"]["epoch"] == 1
    assert metrics["stopped_at"]["phase"] in ("train", "validation")
    assert not (out / "checkpoint.pt").exists()
    assert "no checkpoint was written" in proc.stderr


def test_a_diverged_run_is_not_resumed(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", *BLOW_UP_IN_EPOCH_2, f"hydra.run.dir={out}").returncode == 3
    proc = cli("train", f"resume={out}")
    assert proc.returncode == 2
    assert "diverged" in proc.stderr and "optimizer.lr" in proc.stderr


def _without_times(metrics: dict) -> dict:
    # `files` holds the files' sizes: history.csv's seconds column is a time too
    return {k: v for k, v in metrics.items() if k not in ("wall_time_s", "files")}


def test_same_config_and_seed_give_identical_metrics(cli, tmp_path):
    args = ("trainer.epochs=3", "trainer.batch_size=64", "model.dropout=0.3", *QUIET)
    for name in ("a", "b"):
        proc = cli("train", *args, f"hydra.run.dir={tmp_path / name}")
        assert proc.returncode == 0, proc.stderr
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert _without_times(a) == _without_times(b)
    history = [[{k: v for k, v in row.items() if k != "seconds"}
                for row in csv.DictReader(open(tmp_path / name / "history.csv"))]
               for name in ("a", "b")]
    assert history[0] == history[1]
    # ...and the seed matters: another seed, other numbers
    proc = cli("train", *args, "seed=1", f"hydra.run.dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stderr
    assert read_metrics(tmp_path / "c")["test"] != a["test"]


def test_deterministic_flag_turns_on_torch_deterministic_algorithms(compose_cfg):
    from lossbench.experiment.run import run

    assert not torch.are_deterministic_algorithms_enabled()
    try:
        run(compose_cfg("trainer=smoke", "trainer.deterministic=true", *QUIET))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(cli, tmp_path):
    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save({"format": 1, "model": _RunsCode(marker)}, run_dir / "checkpoint.pt")
    # the same file through plain pickle would run the command: the test would notice
    with pytest.raises(pickle.UnpicklingError):
        torch.load(run_dir / "checkpoint.pt", weights_only=True)
    proc = cli("train", f"resume={run_dir}")
    assert proc.returncode == 2, proc.stderr
    assert "refused" in proc.stderr and "run code" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_checkpoint_round_trips_through_weights_only_load(compose_cfg, tmp_path, monkeypatch):
    """Every state a checkpoint holds (RNGs, optimizer, one-cycle scheduler, history) is plain
    data that `weights_only=True` accepts. A run that dies in epoch 3 leaves the checkpoint of
    epoch 2; a run that completes removes its own (model.pt keeps the best weights)."""
    from omegaconf import open_dict

    import lossbench.engine.loop as train
    from lossbench.experiment.run import run

    cfg = compose_cfg("trainer=smoke", "trainer.epochs=3", "scheduler=onecycle",
                      "trainer.checkpoint_every=1", *QUIET)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "run")
    run(cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert (tmp_path / "run" / "model.pt").is_file()

    original, calls = train.train_batches, []

    def dies_in_epoch_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("the process is gone")
        return original(*args, **kwargs)

    monkeypatch.setattr(train, "train_batches", dies_in_epoch_3)
    with open_dict(cfg):
        cfg.run_dir = str(tmp_path / "crashed")
    with pytest.raises(MemoryError):
        run(cfg)
    state = torch.load(tmp_path / "crashed" / "checkpoint.pt", weights_only=True)
    assert state["loop"]["epoch"] == 3  # written after epoch 2, the last before the crash
    assert len(state["loop"]["history"]) == 2
    assert state["scheduler"]["_step_count"] > 1
    assert state["config"]["trainer"]["epochs"] == 3
    assert set(state["loop"]["rng"]) >= {"python", "numpy", "torch", "generator"}


def test_a_crash_while_writing_leaves_the_old_file_whole(tmp_path, monkeypatch):
    """metrics.json and checkpoint.pt go through a temporary file and a rename: a failure in
    the middle of a write leaves the previous file as it was and no temporary file behind."""
    from lossbench.results import files as rundir
    from lossbench.engine.checkpoint import load_checkpoint

    path = tmp_path / "metrics.json"
    rundir.write_json_atomic(path, {"status": "completed", "n": 1})
    with pytest.raises(TypeError):
        rundir.write_json_atomic(path, {"status": "completed", "n": object()})
    assert json.loads(path.read_text()) == {"status": "completed", "n": 1}

    ckpt = tmp_path / "checkpoint.pt"
    rundir.save_torch_atomic(ckpt, {"format": 1, "loop": {"epoch": 2}})

    def crash_midway(fd, data):  # the disk fills up after half of the bytes
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rundir.os, "fdopen", lambda fd, mode: _HalfWriter(fd, crash_midway))
    with pytest.raises(OSError):
        rundir.save_torch_atomic(ckpt, {"format": 1, "loop": {"epoch": 3}})
    monkeypatch.undo()
    assert load_checkpoint(ckpt)["loop"]["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.json"]


class _HalfWriter:
    def __init__(self, fd, write):
        self.fd, self._write = fd, write

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, data):
        self._write(self.fd, data)

    def flush(self):
        pass

    def fileno(self):
        return self.fd


def test_internal_error_keeps_its_traceback(cli, tmp_path):
    """A bug (here in the user's own dataset function) is not a config mistake: its traceback
    is shown and the exit status is 1, not 2."""
    (tmp_path / "mydata.py").write_text("def broken():\n    return 1 / 0\n")
    proc = cli("train", "trainer=smoke", "dataset._target_=mydata.broken", *QUIET,
               f"hydra.run.dir={tmp_path / 'run'}", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ZeroDivisionError" in proc.stderr

"""`logger=wandb`, fully offline: the run is written under the run directory and read back from
wandb's own transaction log (.wandb), decoded with wandb's own protobuf schema. No network, no
login."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from conftest import read_metrics, run_dirs

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2  # noqa: E402

TINY = ("dataset=iris", "trainer=smoke", "print_config=false", "logger=wandb")


@pytest.fixture(autouse=True)
def no_login(monkeypatch):
    """Nothing in the environment says online: the tracker must choose offline itself."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No login anywhere (an empty netrc) and wandb's own folders in tmp_path."""
    (tmp_path / "netrc").write_text("")
    env = {"NETRC": str(tmp_path / "netrc"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wb_config"),
           "WANDB_CACHE_DIR": str(tmp_path / "wb_cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wb_data")}
    return env


def wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a .wandb file. It is a LevelDB-style log (wandb's `datastore`: a
    ':W&B' header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST chunks behind a
    7-byte header), each record one serialised `wandb_internal_pb2.Record`."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, header = 32768, 7
    pos, pending, records = 7, b"", []
    while pos + header <= len(data):
        if block - pos % block < header:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        chunk = data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 2):  # FULL, FIRST
            pending = chunk
        elif kind in (3, 4):  # MIDDLE, LAST
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_run(run_dir: Path) -> dict:
    """config, history rows, summary and saved files of the one offline W&B run in run_dir."""
    (log,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    out: dict = {"history": [], "summary": {}, "files": set(), "dir": log.parent}
    for record in wandb_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"] = record.run.run_group
            out["name"] = record.run.display_name
            out["config"] = {u.key: json.loads(u.value_json) for u in record.run.config.update}
        elif kind == "history":
            out["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            for u in record.summary.update:
                out["summary"]["/".join(u.nested_key) or u.key] = json.loads(u.value_json)
        elif kind == "files":
            out["files"] |= {f.path for f in record.files.files}
    return out


def test_a_run_is_logged_offline_under_its_run_directory(cli, tmp_path):
    run = tmp_path / "run"
    proc = cli("train", *TINY, "trainer.plots=true", f"hydra.run.dir={run}",
               env=offline_env(tmp_path), check=True)
    assert "wandb" not in proc.stdout.lower()  # the console stays lossbench's
    logged = read_run(run)
    metrics = read_metrics(run)
    # config: the run's resolved config
    assert logged["config"]["loss"]["_target_"] == "lossbench.losses.CrossEntropyLoss"
    assert logged["config"]["dataset"]["_target_"].endswith("iris")
    assert logged["name"] == "loss=ce dataset=iris"
    # per-epoch metrics, at step = epoch, equal to history.csv
    import csv

    rows = list(csv.DictReader((run / "history.csv").open()))
    steps = {int(h["_step"]): h for h in logged["history"]}
    assert sorted(steps) == [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert steps[int(row["epoch"])]["val_loss"] == pytest.approx(float(row["val_loss"]))
    # test metrics as the summary
    assert logged["summary"]["test_accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert logged["summary"]["best_epoch"] == metrics["best_epoch"]
    # report and plots as files, byte for byte
    assert {"report.txt", "history.csv", "curves.png", "confusion.png"} <= logged["files"]
    saved = logged["dir"] / "files"
    assert (saved / "report.txt").read_bytes() == (run / "report.txt").read_bytes()
    assert (saved / "curves.png").read_bytes() == (run / "curves.png").read_bytes()
    assert "model.pt" not in logged["files"]
    # no second metrics.json or .hydra/ under the run: compare and sweeps see one run here
    assert run_dirs(tmp_path) == [run]
    assert len(list(run.rglob("overrides.yaml"))) == 1


@pytest.mark.slow
def test_the_jobs_of_a_sweep_share_one_group(cli, tmp_path):
    sweep = tmp_path / "sweep"
    cli("train", "-m", *TINY, "loss=ce,mae", "trainer.plots=false", f"hydra.sweep.dir={sweep}",
        env=offline_env(tmp_path), check=True)
    jobs = run_dirs(sweep)
    assert len(jobs) == 2
    logged = [read_run(job) for job in jobs]
    assert {run["group"] for run in logged} == {f"sweep {sweep}"}
    assert sorted(run["name"] for run in logged) == ["loss=ce", "loss=mae"]


def test_a_missing_package_or_a_bad_mode_is_one_line(cli, tmp_path):
    proc = cli("train", *TINY, "logger.mode=sometimes", env=offline_env(tmp_path))
    assert proc.returncode == 2
    assert "logger.mode=sometimes is not a W&B mode" in proc.stderr
    assert not (tmp_path / "outputs").exists()

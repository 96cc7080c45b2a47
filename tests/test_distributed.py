"""Training over several processes with real torch.distributed (gloo on CPU): the sharding and
gathering pieces in a real 2-process group, and whole runs through the CLI."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, run_dirs
from lossbench.engine import distributed
from lossbench.errors import UserError


# --- workers run inside the spawned processes (module-level, so the children can import them)

def _collective_worker(out_dir: str) -> None:
    dist = distributed.init_from_env(torch.device("cpu"))
    result = {}
    # a permutation of 7 over 2 ranks: every rank draws the same one and keeps its shard
    order = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    result["order"] = order.tolist()
    result["shard"] = distributed.shard_order(order, dist).tolist()
    # each rank holds a contiguous slice of 0..n-1 (uneven: n=7), gathered back in order
    for n in (7, 1):
        lo, hi = distributed.eval_range(n, dist)
        rows = torch.arange(lo, hi).float().unsqueeze(-1).repeat(1, 3)  # (n_r, 3)
        result[f"gathered_{n}"] = distributed.gather_rows(rows, dist)[:, 0].tolist()
    result["sum"] = float(distributed.all_reduce_sum(torch.tensor(dist.rank + 1.0), dist))
    result["row"] = distributed.broadcast_object({"rank": dist.rank}, dist)
    Path(out_dir, f"rank{dist.rank}.json").write_text(json.dumps(result))


def _failing_worker() -> None:
    if os.environ["RANK"] == "1":
        raise UserError("dataset.split.val=0 must be greater than 0")
    distributed.init_from_env(torch.device("cpu"))
    torch.distributed.barrier()  # would wait forever for rank 1 if nobody stopped it


# --- the pieces, in a real 2-process gloo group

def test_shards_cover_each_epoch_and_gathers_keep_order(tmp_path):
    distributed.spawn(_collective_worker, 2, (str(tmp_path),))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["order"] == ranks[1]["order"]  # same seed, same permutation
    shards = [r["shard"] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 4  # equal step counts: 7 padded to 8
    assert set(shards[0]) | set(shards[1]) == set(range(7))
    assert Counter(shards[0] + shards[1]).most_common(1)[0][1] == 2  # one sample drawn twice
    for r in ranks:
        assert r["gathered_7"] == [float(i) for i in range(7)]  # every sample once, in order
        assert r["gathered_1"] == [0.0]  # rank 1's slice is empty and it still takes part
        assert r["sum"] == 3.0
        assert r["row"] == {"rank": 0}  # rank 0's value everywhere


def test_user_error_in_one_rank_stops_all_and_reads_as_one_line():
    with pytest.raises(UserError, match=r"^dataset.split.val=0 must be greater than 0$"):
        distributed.spawn(_failing_worker, 2, ())


def test_shard_order_is_identity_in_a_single_process():
    order = torch.randperm(10)
    assert distributed.shard_order(order, distributed.Dist()) is order
    assert distributed.eval_range(10, distributed.Dist()) == (0, 10)


# --- whole runs: trainer.devices=2 against one process, through the CLI

def test_two_processes_report_every_test_sample_once_and_match_one_process(cli, tmp_path,
                                                                          compose_cfg):
    common = ("trainer.device=cpu", "trainer.epochs=15", "trainer.early_stopping=false")
    one = cli("train", *common, "hydra.run.dir=one", check=True)
    two = cli("train", *common, "trainer.devices=2", cwd=tmp_path, check=True)
    # exactly one run directory for the two processes, and only rank 0 printed
    outputs = [p for p in (tmp_path / "outputs").rglob("*") if p.is_dir() and p.parent.parent
               == tmp_path / "outputs"]
    assert len(outputs) == 1 and run_dirs(tmp_path / "outputs") == outputs
    assert two.stdout.count("run directory:") == 1
    assert two.stdout.count("Confusion matrix") == 1

    single, multi = read_metrics(tmp_path / "one"), read_metrics(outputs[0])
    # the test split's labels, counted independently of the run
    from lossbench.experiment.run import load_data

    labels = Counter(load_data(compose_cfg()).test.y.tolist())
    report = multi["test"]["classification_report"]
    support = {int(k): v["support"] for k, v in report.items() if k.isdigit()}
    if not support:  # classes reported by name
        names = multi["test"]["class_names"]
        support = {names.index(k): v["support"] for k, v in report.items() if k in names}
    assert support == dict(labels)
    assert sum(map(sum, multi["test"]["confusion_matrix"])) == sum(labels.values())
    assert multi["split_sizes"]["test"] == sum(labels.values())
    assert single["test"]["accuracy"] > 0.9
    assert abs(multi["test"]["accuracy"] - single["test"]["accuracy"]) < 0.05


@pytest.mark.slow
def test_ranks_stop_early_together(cli, tmp_path):
    # Watching the validation loss for a *maximum* while training lowers it: epoch 1 stays the
    # best, so every rank must stop after `patience` more epochs; a rank that disagreed would
    # leave the others waiting in a collective.
    proc = cli("train", "trainer.device=cpu", "trainer.devices=2", "trainer.monitor=val_loss",
               "trainer.mode=max", "trainer.epochs=20", "trainer.patience=2", "trainer.min_steps=0",
               "hydra.run.dir=run", check=True, timeout=240)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["epochs_run"] == 3 and metrics["stopped_early"] is True
    assert proc.stdout.count("epoch 3/20") == 1 and "epoch 4/20" not in proc.stdout


def test_torchrun_makes_one_run_directory(tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={distributed.free_port()}", "-m", "lossbench", "train", "trainer=smoke", "trainer.device=cpu"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = run_dirs(tmp_path / "outputs")
    day_dirs = list((tmp_path / "outputs").iterdir())
    assert len(found) == 1 and sum(1 for d in day_dirs for _ in d.iterdir()) == 1
    assert proc.stdout.count("run directory:") == 1
    assert read_metrics(found[0])["status"] == "completed"


def test_bad_device_counts_are_user_errors(cli):
    proc = cli("train", "trainer=smoke", "trainer.devices=0")
    assert proc.returncode == 2 and "trainer.devices=0 must be at least 1" in proc.stderr
    if not torch.cuda.is_available():
        proc = cli("train", "trainer=smoke", "trainer.devices=2", "trainer.device=cuda")
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines()[-1].startswith("lossbench: error: trainer."
                                                               "device=cuda but CUDA")
        assert "Traceback" not in proc.stderr

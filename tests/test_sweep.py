"""Multirun sweeps driven through the CLI: every job runs, failures are recorded and counted,
and a re-run of the same command into the same sweep directory resumes it."""

from __future__ import annotations

import json
import os
import re

import pytest
from omegaconf import OmegaConf

from lossbench.sweep import threads_per_job
from conftest import read_metrics, run_dirs

TINY = ("trainer=smoke", "model=linear", "dataset=iris")


def summary_lines(proc) -> list[str]:
    text = proc.stdout + proc.stderr
    return [line for line in text.splitlines()
            if re.match(r"lossbench: (all \d+ jobs completed|\d+ of \d+ jobs failed)", line)]


@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")],
                         ids=["basic", "joblib"])
def test_two_losses_two_seeds_sweep_completes_every_job(cli, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", *launcher, "loss=ce,bce", "seed=0,1", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr
    runs = run_dirs(sweep)
    assert len(runs) == 4
    combos = set()
    for run in runs:
        metrics = read_metrics(run)
        assert metrics["status"] == "completed"
        assert metrics["config"]["seed"] == metrics["seed"]
        combos.add((metrics["choices"]["loss"], metrics["seed"]))
        assert (run / "model.pt").is_file() and (run / "history.csv").is_file()
    assert combos == {("ce", 0), ("ce", 1), ("bce", 0), ("bce", 1)}
    if launcher:  # two jobs at a time share the cores: torch threads per job = cores // 2
        threads = max(1, len(os.sched_getaffinity(0)) // 2)
        for run in runs:
            assert f"torch threads {threads}," in (run / "train.log").read_text()
    assert summary_lines(proc) == [f"lossbench: all 4 jobs completed in {sweep}"]


def test_failing_job_is_recorded_and_the_others_still_run(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # the middle job gets a loss hyperparameter the loss rejects
    proc = cli("train", "-m", "loss=ce", "+loss.reduction=mean,bogus,sum", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    statuses = {run.name: read_metrics(run)["status"] for run in run_dirs(sweep)}
    assert statuses == {"0": "completed", "1": "failed", "2": "completed"}
    failed = read_metrics(sweep / "1")
    assert "bogus" in failed["error"] and "ValueError" in failed["error"]
    assert failed["config"]["loss"]["reduction"] == "bogus"
    assert not (sweep / "1" / "model.pt").exists()
    assert summary_lines(proc) == [f"lossbench: 1 of 3 jobs failed: {sweep / '1'}"]
    assert "Traceback" not in proc.stderr


def test_diverging_job_is_recorded_as_failed(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # plain SGD at lr=1e38 overflows float32 weights within two steps
    proc = cli("train", "-m", "optimizer=sgd", "optimizer.lr=0.1,1e38", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert read_metrics(sweep / "0")["status"] == "completed"
    diverged = read_metrics(sweep / "1")
    assert diverged["status"] == "failed" and "diverged" in diverged["error"]
    # what the run itself wrote when it stopped is kept beside the failure
    assert diverged["stopped"] == "diverged" and diverged["stopped_at"]["epoch"] >= 1
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {sweep / '1'}"]


def test_user_error_in_a_sweep_counts_as_a_failed_job(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # the second job monitors a regression metric that a classification dataset lacks
    proc = cli("train", "-m", "trainer.monitor=val_accuracy,val_rmse", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert read_metrics(sweep / "0")["status"] == "completed"
    assert "val_rmse" in read_metrics(sweep / "1")["error"]
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {sweep / '1'}"]


def test_resumed_sweep_skips_completed_jobs_and_reruns_the_failed_one(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # job 1's reduction comes from an environment variable: unset, the job fails
    args = ("train", "-m", "loss=ce", "+loss.reduction=mean,${oc.env:LB_TEST_REDUCTION}", *TINY,
            f"hydra.sweep.dir={sweep}")
    env = {k: v for k, v in os.environ.items() if k != "LB_TEST_REDUCTION"}
    first = cli(*args, env=env)
    assert first.returncode == 1
    assert read_metrics(sweep / "1")["status"] == "failed"
    job0 = (sweep / "0" / "metrics.json").read_bytes()
    model0 = (sweep / "0" / "model.pt").stat().st_mtime_ns

    second = cli(*args, env={"LB_TEST_REDUCTION": "sum"})
    assert second.returncode == 0, second.stderr
    out = second.stdout + second.stderr
    assert re.search(r"job 0 \[.*\] already completed: skipped \(run directory: "
                     + re.escape(str(sweep / "0")) + r"\)",
                     out)
    assert not re.search(r"job 1 \[.*\] already completed", out)
    assert (sweep / "0" / "metrics.json").read_bytes() == job0
    assert (sweep / "0" / "model.pt").stat().st_mtime_ns == model0
    rerun = read_metrics(sweep / "1")
    assert rerun["status"] == "completed" and rerun["config"]["loss"]["reduction"] == "sum"
    assert summary_lines(second) == [
        f"lossbench: all 2 jobs completed (1 skipped: already completed) in {sweep}"]


def test_resume_reruns_unfinished_jobs_and_jobs_whose_config_changed(cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", "seed=0,1,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert cli(*args).returncode == 0
    # job 1 was killed before it wrote metrics.json; job 2 finished under another config
    (sweep / "1" / "metrics.json").unlink()
    metrics2 = read_metrics(sweep / "2")
    metrics2["config"]["trainer"]["epochs"] = 3
    (sweep / "2" / "metrics.json").write_text(json.dumps(metrics2))

    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    skipped = re.findall(r"job (\d+) \[.*\] already completed", out)
    assert skipped == ["0"]
    assert all(read_metrics(run)["status"] == "completed" for run in run_dirs(sweep))
    assert read_metrics(sweep / "2")["config"]["trainer"]["epochs"] == 2
    assert summary_lines(proc) == [
        f"lossbench: all 3 jobs completed (1 skipped: already completed) in {sweep}"]


@pytest.mark.parametrize("n_jobs", [1, 2, -1])
def test_joblib_jobs_share_the_cores_between_them(n_jobs):
    cores = len(os.sched_getaffinity(0))
    hydra_cfg = OmegaConf.create({"launcher": {
        "_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "n_jobs": n_jobs}})
    parallel = cores if n_jobs == -1 else n_jobs
    assert threads_per_job(hydra_cfg) == max(1, cores // parallel)
    assert threads_per_job(hydra_cfg) * min(parallel, cores) <= cores


def test_basic_launcher_keeps_torch_threads():
    hydra_cfg = OmegaConf.create({"launcher": {
        "_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    assert threads_per_job(hydra_cfg) is None


def test_launcher_presets_compose(cli):
    slurm = cli("train", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg",
                "hydra", "--package", "hydra.launcher", check=True)
    launcher = OmegaConf.create(slurm.stdout)
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.tasks_per_node == 1
    parallel = cli("train", "hydra/launcher=parallel", "--cfg", "hydra", "--package",
                   "hydra.launcher", check=True)
    assert OmegaConf.create(parallel.stdout)._target_.endswith("JoblibLauncher")


@pytest.mark.slow
def test_submitit_launcher_runs_the_same_sweep(cli, tmp_path):
    """The SLURM plugin's own local executor: each job a separate submitit process, as on a
    cluster; failures, the summary line and the exit status behave the same."""
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
               "loss=ce", "+loss.reduction=mean,bogus", *TINY, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert read_metrics(sweep / "0")["status"] == "completed"
    assert read_metrics(sweep / "1")["status"] == "failed"
    assert (sweep / ".submitit").is_dir()
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {sweep / '1'}"]

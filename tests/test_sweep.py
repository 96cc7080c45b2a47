"""Multirun sweeps driven through the CLI: every job runs, failures are recorded and counted,
and a re-run of the same command into the same sweep directory resumes it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lossbench.experiment.sweep import threads_per_job
from conftest import lossbench_cmd, read_metrics, run_dirs

TINY = ("trainer=smoke", "model=linear", "dataset=iris")


def job(sweep: Path, *overrides: str) -> Path:
    """A job's folder in its sweep: named by its overrides as Hydra hands them to the job
    (`trainer.plots=False`, `optimizer.lr=1e+38`), sorted and joined by ',' (as Hydra's
    override_dirname), whatever its place in the sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return sweep / ",".join(sorted(f"{o.get_key_element()}={o.get_value_element_as_str()}"
                                   for o in parsed))


def summary_lines(proc, warnings: bool = False) -> list[str]:
    """The end-of-sweep lines; without `warnings`, less the note on runs that carry warnings
    (smoke runs may end near chance, which is not what these tests are about)."""
    text = proc.stdout + proc.stderr
    lines = [line for line in text.splitlines()
             if re.match(r"lossbench: (all \d+ jobs completed|1 job completed|\d+ of \d+ jobs? "
                         r"failed)", line)]
    return lines if warnings else [re.sub(r"; \d+ jobs? carr(y|ies) warnings .*$", "", line)
                                   for line in lines]


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
        for run in runs:  # of which trainer.threads=auto takes one for this small model
            log = (run / "train.log").read_text()
            assert "torch threads 1," in log and f"; {threads} available" in log
    assert summary_lines(proc) == [f"lossbench: all 4 jobs completed in {sweep}"]


def test_failing_job_is_recorded_and_the_others_still_run(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # the middle job gets a loss hyperparameter the loss rejects
    proc = cli("train", "-m", "loss=ce", "+loss.reduction=mean,bogus,sum", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    jobs = {r: job(sweep, "loss=ce", f"+loss.reduction={r}", *TINY)
            for r in ("mean", "bogus", "sum")}
    statuses = {r: read_metrics(run)["status"] for r, run in jobs.items()}
    assert statuses == {"mean": "completed", "bogus": "failed", "sum": "completed"}
    assert sorted(run_dirs(sweep)) == sorted(jobs.values())
    failed = read_metrics(jobs["bogus"])
    assert "bogus" in failed["error"] and "ValueError" in failed["error"]
    assert failed["config"]["loss"]["reduction"] == "bogus"
    assert not (jobs["bogus"] / "model.pt").exists()
    assert summary_lines(proc) == [f"lossbench: 1 of 3 jobs failed: {jobs['bogus']}"]
    assert "Traceback" not in proc.stderr


def test_diverging_job_is_recorded_as_failed(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # plain SGD at lr=1e38 overflows float32 weights within two steps
    proc = cli("train", "-m", "optimizer=sgd", "optimizer.lr=0.1,1e38", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert read_metrics(job(sweep, "optimizer=sgd", "optimizer.lr=0.1", *TINY))["status"] \
        == "completed"
    bad = job(sweep, "optimizer=sgd", "optimizer.lr=1e38", *TINY)
    diverged = read_metrics(bad)
    assert diverged["status"] == "failed" and "diverged" in diverged["error"]
    # what the run itself wrote when it stopped is kept beside the failure
    assert diverged["stopped"] == "diverged" and diverged["stopped_at"]["epoch"] >= 1
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {bad}"]


def test_user_error_in_a_sweep_counts_as_a_failed_job(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # the second job monitors a regression metric that a classification dataset lacks
    proc = cli("train", "-m", "trainer.monitor=val_accuracy,val_rmse", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 1
    assert read_metrics(job(sweep, "trainer.monitor=val_accuracy", *TINY))["status"] \
        == "completed"
    bad = job(sweep, "trainer.monitor=val_rmse", *TINY)
    assert "val_rmse" in read_metrics(bad)["error"]
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {bad}"]


def write_iris_csv(path: Path) -> None:
    from sklearn.datasets import load_iris

    load_iris(as_frame=True).frame.to_csv(path, index=False)


def test_resumed_sweep_skips_completed_jobs_and_reruns_the_failed_one(cli, tmp_path):
    sweep = tmp_path / "sweep"
    # job 1 reads a CSV file that is not there yet: it fails, and runs once the file exists
    run = ("dataset=csv", "dataset.path=a.csv,b.csv", "trainer=smoke", "model=linear")
    args = ("train", "-m", *run, f"hydra.sweep.dir={sweep}")
    write_iris_csv(tmp_path / "a.csv")
    first = cli(*args)
    assert first.returncode == 1
    job0, job1 = (job(sweep, "dataset=csv", f"dataset.path={name}", *run[2:])
                  for name in ("a.csv", "b.csv"))
    assert read_metrics(job1)["status"] == "failed"
    metrics0 = (job0 / "metrics.json").read_bytes()
    model0 = (job0 / "model.pt").stat().st_mtime_ns

    write_iris_csv(tmp_path / "b.csv")
    second = cli(*args)
    assert second.returncode == 0, second.stderr
    out = second.stdout + second.stderr
    # the run directory as the user would type it: relative to where lossbench runs
    assert re.search(r"job 0 \[.*\] already completed: skipped \(run directory: "
                     + re.escape(str(job0.relative_to(tmp_path))) + r"\)",
                     out)
    assert not re.search(r"job 1 \[.*\] already completed", out)
    assert (job0 / "metrics.json").read_bytes() == metrics0
    assert (job0 / "model.pt").stat().st_mtime_ns == model0
    rerun = read_metrics(job1)
    # the rerun read b.csv, which the record names by its absolute path
    assert rerun["status"] == "completed"
    assert rerun["config"]["dataset"]["path"] == str((tmp_path / "b.csv").resolve())
    assert summary_lines(second) == [
        f"lossbench: all 2 jobs completed (1 skipped: already completed) in {sweep}"]


def test_resume_reruns_unfinished_jobs_and_jobs_whose_config_changed(cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", "seed=0,1,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert cli(*args).returncode == 0
    # job 1 was killed before it wrote metrics.json; job 2 finished under another config
    job1, job2 = job(sweep, "seed=1", *TINY), job(sweep, "seed=2", *TINY)
    (job1 / "metrics.json").unlink()
    metrics2 = read_metrics(job2)
    metrics2["config"]["trainer"]["epochs"] = 3
    (job2 / "metrics.json").write_text(json.dumps(metrics2))

    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    skipped = re.findall(r"job (\d+) \[.*\] already completed", out)
    assert skipped == ["0"]
    assert all(read_metrics(run)["status"] == "completed" for run in run_dirs(sweep))
    assert read_metrics(job2)["config"]["trainer"]["epochs"] == 2
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
    failed = job(sweep, "loss=ce", "+loss.reduction=bogus", *TINY)
    assert read_metrics(job(sweep, "loss=ce", "+loss.reduction=mean", *TINY))["status"] \
        == "completed"
    assert read_metrics(failed)["status"] == "failed"
    assert (sweep / ".submitit").is_dir()
    assert summary_lines(proc) == [f"lossbench: 1 of 2 jobs failed: {failed}"]


def test_a_sweep_whose_runs_carry_warnings_says_so_in_its_last_line(cli, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("train", "-m", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}")
    assert cli(*args).returncode == 0
    # job 1 completed with a warning in its record (as a run near chance accuracy writes it);
    # resuming the sweep skips both jobs and still reports the warning at the end
    job0, job1 = job(sweep, "seed=0", *TINY), job(sweep, "seed=1", *TINY)
    metrics = read_metrics(job1)
    metrics["warnings"] = [{"kind": "near_chance", "message": "test accuracy 0.33 ~ chance"}]
    (job1 / "metrics.json").write_text(json.dumps(metrics))
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    # job 0 may warn by itself (a 2-epoch smoke run can end near chance)
    warned = [run for run in (job0, job1) if read_metrics(run).get("warnings")]
    assert job1 in warned
    kinds = list(dict.fromkeys(w["kind"] for run in warned
                               for w in read_metrics(run)["warnings"]))
    jobs = "1 job carries" if len(warned) == 1 else f"{len(warned)} jobs carry"
    assert summary_lines(proc, warnings=True) == [
        f"lossbench: all 2 jobs completed (2 skipped: already completed) in {sweep}; "
        f"{jobs} warnings ({', '.join(kinds)}): {' '.join(map(str, warned))}"]
    assert "near_chance" in kinds


def _start_sweep(args: list[str], cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("LOSSBENCH_DEBUG", None)
    return subprocess.Popen([*lossbench_cmd(), "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def logged_epochs(train_log) -> list[int]:
    """The epochs a job's train.log records, in order (a sweep's console shows one line per
    job; each epoch goes to the job's log)."""
    if not train_log.is_file():
        return []
    return [int(m) for m in re.findall(r"INFO epoch \{'epoch': (\d+),", train_log.read_text())]


@pytest.mark.slow
def test_a_job_killed_outright_continues_from_its_checkpoint(cli, tmp_path):
    """SIGKILL (the OOM killer, a lost node) once job 1 has logged its epoch 8: re-running the
    sweep skips job 0, continues job 1 from the checkpoint of its last epoch instead of epoch 1,
    says so, and ends exactly as the same run never killed (and as resume= would)."""
    from test_resume import assert_same_result

    sweep = tmp_path / "sweep"
    epochs = 60  # small batches, many epochs: job 1 runs on for seconds after its epoch 8
    run = ["trainer.device=cpu", "trainer.batch_size=8", "trainer.early_stopping=false",
           "model.dropout=0.2", "scheduler=onecycle", "print_config=false",
           "trainer.plots=false", f"trainer.epochs={epochs}", "trainer.checkpoint_every=1"]
    args = ["-m", "seed=0,1", *run, f"hydra.sweep.dir={sweep}"]
    job0, job1 = job(sweep, "seed=0", *run), job(sweep, "seed=1", *run)
    proc = _start_sweep(args, tmp_path)
    deadline = time.monotonic() + 240
    while not any(e >= 8 for e in logged_epochs(job1 / "train.log")):
        assert proc.poll() is None, "the sweep ended before job 1 logged its epoch 8"
        assert time.monotonic() < deadline, "job 1 never reached epoch 8"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs, nothing more is written
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert read_metrics(job0)["status"] == "completed"
    assert not (job1 / "metrics.json").exists()  # killed mid-run
    killed_log = logged_epochs(job1 / "train.log")
    assert killed_log == list(range(1, killed_log[-1] + 1)) and 8 <= killed_log[-1] < epochs
    epoch = torch.load(job1 / "checkpoint.pt", weights_only=True)["loop"]["epoch"]
    # the epoch a resumed run starts with: the one after the last logged (its checkpoint was
    # written), or the last logged itself when the kill came between its log line and checkpoint
    assert 8 <= epoch <= epochs and epoch in (killed_log[-1], killed_log[-1] + 1)

    again = cli("train", *args)
    assert again.returncode == 0, again.stderr
    assert re.search(r"job 0 \[.*\] already completed", again.stdout)
    # the path as the user typed it: relative to where lossbench ran
    assert re.search(rf"job 1 \[seed=1 [^\]]*\] continues from its checkpoint at epoch {epoch} "
                     rf"\(run directory: {re.escape(str(job1.relative_to(tmp_path)))}\)",
                     again.stdout)
    resumed_log = logged_epochs(job1 / "train.log")
    assert resumed_log[:len(killed_log)] == killed_log
    assert resumed_log[len(killed_log):] == list(range(epoch, epochs + 1))  # not from epoch 1
    metrics = read_metrics(job1)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == epochs
    assert not (job1 / "checkpoint.pt").exists()

    whole = cli("train", "seed=1", *run, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    assert_same_result(job1, tmp_path / "whole")
    assert summary_lines(again) == [
        f"lossbench: all 2 jobs completed (1 skipped: already completed) in {sweep}"]


def test_a_stopped_job_starts_over_when_its_checkpoint_is_of_another_config(tmp_path):
    """A checkpoint continues only the config it was written for, and only a run that stopped
    (no metrics.json, or interrupted): a job that failed after its checkpoint starts over."""
    from lossbench.engine.checkpoint import load_checkpoint
    from lossbench.experiment.sweep import resolved_config, unfinished_checkpoint

    cfg = OmegaConf.create({"seed": 1, "trainer": {"epochs": 5}})
    run_dir = tmp_path / "job"
    run_dir.mkdir()
    assert unfinished_checkpoint(cfg, run_dir) is None  # nothing there

    def write(config):
        torch.save({"format": 1, "config": config, "loop": {"epoch": 3, "batch": 0}},
                   run_dir / "checkpoint.pt")
        os.utime(run_dir / "checkpoint.pt", (time.time(), time.time() + 10))

    write(resolved_config(cfg))
    assert load_checkpoint(run_dir / "checkpoint.pt")["loop"]["epoch"] == 3
    assert unfinished_checkpoint(cfg, run_dir)["loop"]["epoch"] == 3  # killed: continues
    assert unfinished_checkpoint(OmegaConf.create({"seed": 2, "trainer": {"epochs": 5}}),
                                 run_dir) is None
    (run_dir / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    assert unfinished_checkpoint(cfg, run_dir) is not None
    (run_dir / "metrics.json").write_text(json.dumps({"status": "failed"}))
    os.utime(run_dir / "metrics.json", (time.time(), time.time() + 20))  # after the checkpoint
    assert unfinished_checkpoint(cfg, run_dir) is None
    write(resolved_config(cfg))  # a newer attempt was killed after writing a checkpoint
    os.utime(run_dir / "checkpoint.pt", (time.time(), time.time() + 30))
    assert unfinished_checkpoint(cfg, run_dir) is not None
    (run_dir / "checkpoint.pt").write_bytes(b"truncated")
    assert unfinished_checkpoint(cfg, run_dir) is None  # unreadable: starts over


def _submitit_task(sweep) -> int | None:
    """The pid of the submitit task running a job of `sweep` (the process that trains)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(sweep).encode() in a for a in args):
            return int(cmdline.parent.name)
    return None


@pytest.mark.slow
def test_submitit_job_preempted_writes_its_checkpoint_and_is_requeued(cli, tmp_path):
    """SIGUSR2, the signal submitit's jobs get before a preemption or their time limit (sent
    here as SLURM would, 20 epochs into the run): the job stops after its step, writes
    checkpoint.pt, submitit requeues it, and the new attempt continues from the checkpoint and
    ends exactly as the run never stopped."""
    from test_resume import assert_same_result

    sweep = tmp_path / "sweep"
    run = ["trainer.device=cpu", "trainer.batch_size=64", "trainer.early_stopping=false",
           "model.dropout=0.2", "scheduler=onecycle", "print_config=false",
           "trainer.plots=false", "trainer.epochs=200", "seed=3"]
    proc = _start_sweep(["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                         *run, f"hydra.sweep.dir={sweep}"], tmp_path)
    job0 = job(sweep, *run)
    deadline = time.monotonic() + 240
    pid = None
    while time.monotonic() < deadline and proc.poll() is None:
        pid = pid or _submitit_task(sweep)
        # a sweep's console shows one line per job: the epochs are in the job's train.log
        if pid is not None and any(e >= 20 for e in logged_epochs(job0 / "train.log")):
            os.kill(pid, signal.SIGUSR2)
            break
        time.sleep(0.02)
    else:
        pytest.fail("the job never reached epoch 20")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr
    logs = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    # mid-epoch: "at epoch N, step S of T"; landing between two epochs: "before epoch N"
    assert re.search(r"interrupted by SIGUSR2 (at|before) epoch \d+.*; submitit requeues it", logs)
    assert "Requeued job" in logs
    resumed_at = re.findall(r"job 0 \[.*\] continues from its checkpoint at epoch (\d+)", logs)
    assert len(resumed_at) == 1 and int(resumed_at[0]) >= 20
    metrics = read_metrics(job0)
    assert metrics["status"] == "completed" and metrics["epochs_run"] == 200
    assert summary_lines(subprocess.CompletedProcess([], 0, stdout, stderr)) == [
        f"lossbench: 1 job completed in {sweep}"]
    whole = cli("train", *run, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    assert_same_result(job0, tmp_path / "whole")

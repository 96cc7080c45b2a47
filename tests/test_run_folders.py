"""What is in a run, sweep or study folder is never lost to the next command: a finished run is
not overwritten, an extended sweep reruns nothing, a sweep is checked whole before it writes
anything, and one process writes a folder at a time."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import lossbench_cmd, read_metrics, run_dirs
from test_sweep import job
from lossbench.results.folder_lock import LOCK_FILE, FolderLock

TINY = ("trainer=smoke", "model=linear", "dataset=iris", "print_config=false")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (the lock file aside) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_FILE}


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lossbench: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_a_finished_run_is_never_overwritten(cli, tmp_path):
    run = tmp_path / "run"
    args = ("train", *TINY, "trainer.plots=true", "hydra.run.dir=run")  # smoke draws none
    assert cli(*args).returncode == 0
    before = snapshot(run)
    assert "metrics.json" in before and "curves.png" in before

    again = cli(*args)  # the same config: already done, nothing rewritten
    assert again.returncode == 0, again.stderr
    assert "run already holds this run, completed" in again.stdout
    assert snapshot(run) == before

    other = cli(*args, "seed=1")  # another config: refused, nothing written
    assert other.returncode == 2
    line = one_error_line(other)
    assert "holds a completed run of another config" in line and "--overwrite" in line
    assert snapshot(run) == before

    # asked for: the old run goes whole (no plots of it left beside a run that makes none)
    replaced = cli("train", "--overwrite", *TINY, "hydra.run.dir=run", "seed=1")
    assert replaced.returncode == 0, replaced.stderr
    assert read_metrics(run)["seed"] == 1
    assert not (run / "curves.png").exists()
    assert (run / "train.log").read_text().count("INFO epoch {") == 2  # not appended to


def test_extending_a_sweep_reruns_nothing_and_another_sweep_is_refused(cli, tmp_path):
    sweep = tmp_path / "sweep"
    first = cli("train", "-m", "loss=ce,mae", "seed=0", *TINY, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr
    done = {j: (j / "metrics.json").read_bytes() for j in run_dirs(sweep)}
    assert set(done) == {job(sweep, f"loss={loss}", "seed=0", *TINY) for loss in ("ce", "mae")}

    # one more seed: Hydra's job numbers shift (mae seed=0 was job 1, is now job 2)
    more = cli("train", "-m", "loss=ce,mae", "seed=0,1", *TINY, f"hydra.sweep.dir={sweep}")
    assert more.returncode == 0, more.stderr
    assert {j: (j / "metrics.json").read_bytes() for j in done} == done  # nothing rerun
    jobs = run_dirs(sweep)
    assert len(jobs) == 4
    for folder in jobs:  # each folder holds the job it is named for
        metrics = read_metrics(folder)
        assert folder == job(sweep, f"loss={metrics['choices']['loss']}",
                             f"seed={metrics['seed']}", *TINY)
        assert metrics["status"] == "completed"
    assert re.search(r"lossbench: all 4 jobs completed \(2 skipped: already completed\) in ",
                     more.stdout + more.stderr)

    other = cli("train", "-m", "loss=ce,mae", *TINY, f"hydra.sweep.dir={sweep}")  # no seed=
    assert other.returncode == 2
    assert "holds another sweep" in one_error_line(other) and "--add" in other.stderr
    assert run_dirs(sweep) == jobs
    added = cli("train", "-m", "--add", "loss=ce", *TINY, f"hydra.sweep.dir={sweep}")
    assert added.returncode == 0, added.stderr
    assert run_dirs(sweep) == sorted([*jobs, job(sweep, "loss=ce", *TINY)])


def test_a_sweep_is_checked_whole_before_its_first_job(cli, tmp_path):
    # the rate needs a noise kind: the second rate's jobs cannot run, the first ones could
    proc = cli("train", "-m", "loss=ce,gce", "dataset.noise.rate=0,0.4", *TINY,
               "hydra.sweep.dir=sweep")
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "[loss=ce dataset.noise.rate=0.4 " in line and "dataset.noise.kind" in line
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no job folder


OFF_A_CLUSTER = pytest.mark.skipif(
    any(Path(p, tool).exists() for p in os.get_exec_path() for tool in ("srun", "sbatch")),
    reason="a SLURM cluster: hydra/launcher=slurm would submit the jobs")


@OFF_A_CLUSTER
def test_help_shows_a_sweep_that_runs(cli, tmp_path):
    """`lossbench --help`'s sweep example passes the checks made before a sweep starts."""
    from lossbench.cli import USAGE

    example = next(line.split("lossbench train ", 1)[1].split()
                   for line in USAGE.splitlines() if "lossbench train -m" in line)
    # the launcher it would use does not exist here: its check comes after the jobs' checks
    proc = cli("train", *example, "hydra/launcher=slurm", "hydra.sweep.dir=sweep")
    assert proc.returncode == 2
    assert "hydra/launcher=slurm submits the jobs to SLURM" in one_error_line(proc)


@OFF_A_CLUSTER
def test_the_slurm_launcher_off_a_cluster_is_one_line(cli, tmp_path):
    proc = cli("train", "-m", "hydra/launcher=slurm", "loss=ce,gce", *TINY,
               "hydra.sweep.dir=sweep")
    assert proc.returncode == 2
    assert "not on PATH" in one_error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_a_launcher_plugin_not_installed_names_the_extra(cli, tmp_path):
    # a regular package named hydra_plugins first on the path hides the installed plugins,
    # as an environment without `lossbench[sweep]` lacks them
    (tmp_path / "bare" / "hydra_plugins").mkdir(parents=True)
    (tmp_path / "bare" / "hydra_plugins" / "__init__.py").write_text("")
    proc = cli("train", "-m", "hydra/launcher=parallel", "loss=ce,gce", *TINY,
               "hydra.sweep.dir=sweep", env={"PYTHONPATH": str(tmp_path / "bare")})
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "joblib" in line and "pip install 'lossbench[sweep]'" in line
    assert not (tmp_path / "sweep").exists()


def test_a_folder_in_use_by_another_process_is_refused(cli, tmp_path):
    """This test's process holds each folder's lock, as a running lossbench would: a run, a
    sweep and a study into it are refused in one line naming this PID, and write nothing."""
    cases = {
        "run": ("train", *TINY, "hydra.run.dir=run"),
        "sweep": ("train", "-m", "seed=0,1", *TINY, "hydra.sweep.dir=sweep"),
        "study": ("study", "losses=ce", "datasets=iris", "trials=1", "seeds.tune=1",
                  "seeds.report=1", "trainer=smoke", "model=linear", "dir=study"),
    }
    for name, args in cases.items():
        with FolderLock(tmp_path / name):
            proc = cli(*args)
            assert proc.returncode == 2, (name, proc.stderr)
            assert f"(PID {os.getpid()})" in one_error_line(proc)
            assert [p.name for p in (tmp_path / name).iterdir()] == [LOCK_FILE]


@contextlib.contextmanager
def _running(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """`lossbench train <args>` in its own process group, killed if the test leaves it running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("LOSSBENCH_DEBUG", None)
    proc = subprocess.Popen([*lossbench_cmd(), "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def _wait_for(condition, proc: subprocess.Popen, what: str, limit: float = 240) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.01)


RUN = ["trainer.device=cpu", "trainer.batch_size=8", "trainer.early_stopping=false",
       "print_config=false", "trainer.plots=false", "model=linear", "dataset=iris"]


@pytest.mark.slow
def test_a_second_sweep_into_a_running_sweeps_folder_is_refused(cli, tmp_path):
    """Two real lossbench processes: the second sweep into the folder of a running one is
    refused in one line naming the first's PID, and writes nothing."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", *RUN, "trainer.epochs=100000", f"hydra.sweep.dir={sweep}"]
    job0 = job(sweep, "seed=0", *RUN, "trainer.epochs=100000")
    with _running(args, tmp_path) as proc:
        _wait_for(lambda: (job0 / "train.log").is_file(), proc, "job 0 started")
        second = cli("train", *args)
        assert proc.poll() is None  # the first one still runs
        assert second.returncode == 2
        assert f"(PID {proc.pid})" in one_error_line(second)
        assert [p.name for p in sweep.iterdir() if p.is_dir()] == [job0.name]


@pytest.mark.slow
def test_a_job_folder_deleted_mid_sweep_counts_as_not_completed(tmp_path):
    """The end line reads each job's record: a job folder deleted while the sweep runs is a job
    that did not complete (not a smaller sweep that did), and the exit status is 1."""
    sweep = tmp_path / "sweep"
    job0, job1 = (job(sweep, f"trainer.epochs={n}", *RUN) for n in (3, 600))
    with _running(["-m", "trainer.epochs=3,600", *RUN, f"hydra.sweep.dir={sweep}"],
                  tmp_path) as proc:
        _wait_for(lambda: (job1 / "train.log").is_file(), proc, "job 1 started")
        assert read_metrics(job0)["status"] == "completed"
        import shutil

        shutil.rmtree(job0)  # finished, then deleted while job 1 runs
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr
    assert read_metrics(job1)["status"] == "completed"
    assert f"lossbench: 1 of 2 jobs failed: {job0}" in stderr
    assert not (sweep / LOCK_FILE).exists()  # released at the end


@pytest.mark.slow
def test_ctrl_c_in_a_parallel_sweep_leaves_every_job_with_its_record(tmp_path):
    """Ctrl-C to the terminal's process group (the launcher and its joblib workers): the jobs
    in training stop after their step with checkpoint.pt and an interrupted record, the queued
    job does not start, and the advice is the sweep command that continues it."""
    sweep = tmp_path / "sweep"
    run = ["trainer.device=cpu", "trainer.batch_size=8", "trainer.early_stopping=false",
           "print_config=false", "trainer.plots=false", "trainer.epochs=3000",
           "model=linear", "dataset=iris"]
    args = ["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2", *run,
            f"hydra.sweep.dir={sweep}"]
    logs = [job(sweep, f"seed={seed}", *run) / "train.log" for seed in (0, 1)]
    with _running(args, tmp_path) as proc:
        _wait_for(lambda: all(log.is_file() and log.read_text().count("INFO epoch {") >= 2
                              for log in logs), proc, "both jobs trained two epochs")
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr
    folders = [p for p in sweep.iterdir() if p.is_dir()]
    assert sorted(folders) == sorted(log.parent for log in logs)  # seed=2 never started
    for folder in folders:
        metrics = read_metrics(folder)
        assert metrics["status"] == "interrupted"
        assert (folder / "checkpoint.pt").is_file()
    assert (f"Continue it with: lossbench train {' '.join(args[:4])} {' '.join(run)} "
            f"hydra.sweep.dir={sweep}") in stderr
    assert "2 interrupted with a checkpoint, 1 not run" in stderr


def test_train_help_names_lossbenchs_own_flags(cli):
    out = cli("train", "--help").stdout
    assert "--overwrite  replace the run in hydra.run.dir" in out
    assert "-m --add     sweep into a hydra.sweep.dir" in out

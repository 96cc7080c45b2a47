"""Faults a real machine produces on the files of a run: a full disk, a read-only folder, a name
the file system refuses. Each is made for real (a small tmpfs filled up, a folder without write
permission seen by a user who is not root), never by patching lossbench; each gets one line on
stderr, exit status 2, nothing half-written, and a state the same command continues from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import read_metrics
from faults import as_user, fill, mounted_tmpfs

SMOKE = ("trainer=smoke", "print_config=false", "trainer.plots=false")


@pytest.fixture
def small_filesystem() -> Iterator[Path]:
    with mounted_tmpfs() as folder:
        yield folder


def lossbench(*args: str, cwd: Path, prefix: list[str] = (), timeout: float = 300
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "HOME": str(cwd)}
    env.pop("LOSSBENCH_DEBUG", None)
    return subprocess.run([*prefix, sys.executable, "-m", "lossbench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and one `lossbench: error:` line on stderr holding `words`."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith("lossbench: error: "), lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*.tmp")]


def test_train_on_a_full_disk_says_so_and_the_same_command_continues(small_filesystem):
    fs = small_filesystem
    # room for the config, log, history and report, not for digits' 70 KiB of weights
    filler = fill(fs, leave_kib=40)
    args = ("train", *SMOKE, "dataset=digits", "hydra.run.dir=run")
    proc = lossbench(*args, cwd=fs)
    line = assert_one_line(proc, "no space left on device", "free some space")
    assert "model.pt" in line or "run" in line
    assert not (fs / "run" / "metrics.json").exists()  # no record of a run that is not whole
    assert no_temporary_files(fs)
    filler.unlink()
    again = lossbench(*args, cwd=fs)
    assert again.returncode == 0, again.stderr
    assert read_metrics(fs / "run")["status"] == "completed"


def test_a_disk_already_full_refuses_before_training(small_filesystem):
    fs = small_filesystem
    fill(fs, leave_kib=0)
    proc = lossbench("train", *SMOKE, "dataset=iris", "hydra.run.dir=run", cwd=fs)
    assert_one_line(proc, "no space left on device")


def test_a_folder_name_too_long_is_one_line(tmp_path):
    proc = lossbench("train", *SMOKE, "dataset=iris", f"hydra.run.dir=out/{'x' * 256}",
                     cwd=tmp_path)
    assert_one_line(proc, "file name too long", "ENAMETOOLONG", "shorter")


def test_read_only_folders_are_one_line_for_train_and_sweeps(tmp_path):
    prefix, home = as_user(tmp_path)
    try:
        (home / "ro").mkdir(mode=0o555)
        (home / "ro").chmod(0o555)
        single = lossbench("train", *SMOKE, "dataset=iris", "hydra.run.dir=ro/run", cwd=home,
                           prefix=prefix)
        assert_one_line(single, "ro/run", "permission denied", "EACCES")
        sweep = lossbench("train", "-m", *SMOKE, "dataset=iris", "seed=0,1",
                          "hydra.sweep.dir=ro/sweep", cwd=home, prefix=prefix)
        assert_one_line(sweep, "ro/sweep", "permission denied")
        assert list((home / "ro").iterdir()) == []
    finally:
        shutil.rmtree(home)


def interrupted_run(cwd: Path, name: str, *overrides: str) -> Path:
    """A real run stopped by a real SIGINT once its first checkpoint is on disk."""
    import signal
    import time

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lossbench", "train", "print_config=false",
                             "trainer.plots=false", "trainer.epochs=500", "trainer.device=cpu",
                             "trainer.early_stopping=false", "trainer.checkpoint_every=1",
                             f"hydra.run.dir={name}", *overrides],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not (cwd / name / "checkpoint.pt").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert read_metrics(cwd / name)["status"] == "interrupted"
    return cwd / name


def test_resume_of_a_read_only_run_is_refused_before_training(tmp_path):
    prefix, home = as_user(tmp_path)
    try:
        run = interrupted_run(home, "run", "dataset=digits", "trainer.epochs=60",
                              "trainer.max_batches=1")
        for path in [run, *run.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
        proc = lossbench("train", "resume=run", cwd=home, prefix=prefix)
        assert_one_line(proc, "resume=run", "read-only")
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
        run.chmod(0o755)  # made writable again, the same command continues it
        for path in run.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        again = lossbench("train", "resume=run", cwd=home)
        assert again.returncode == 0, again.stderr
        assert read_metrics(run)["status"] == "completed"
    finally:
        shutil.rmtree(home)


def sweep_job(sweep: Path, seed: int) -> Path:
    """The folder of a sweep's job, named by its overrides (`...,seed=1,...`), by its seed."""
    found = [p for p in sweep.iterdir() if f"seed={seed}" in p.name.split(",")]
    assert len(found) == 1, sorted(p.name for p in sweep.iterdir())
    return found[0]


def test_a_rerun_sweep_runs_again_the_jobs_whose_files_are_damaged(tmp_path):
    """A completed job is skipped only while the files its record names are whole: a zero-byte
    model.pt and a history.csv cut short make their jobs run again; the whole one is skipped."""
    args = ("train", "-m", *SMOKE, "dataset=iris", "seed=0,1,2", "hydra.sweep.dir=sweep")
    first = lossbench(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    jobs = [sweep_job(tmp_path / "sweep", n) for n in range(3)]
    (jobs[0] / "model.pt").write_bytes(b"")
    history = (jobs[1] / "history.csv").read_text()
    (jobs[1] / "history.csv").write_text(history.rsplit("\n", 2)[0] + "\n")
    again = lossbench(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    skipped = [ln for ln in again.stdout.splitlines() if "already completed: skipped" in ln]
    assert len(skipped) == 1 and "seed=2" in skipped[0], again.stdout
    assert "model.pt changed since the run completed" in again.stderr
    assert "history.csv changed since the run completed" in again.stderr
    for job in jobs:
        metrics = read_metrics(job)
        assert metrics["status"] == "completed"
        assert metrics["files"]["model.pt"] == (job / "model.pt").stat().st_size > 0


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A completed sweep of three seeds, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("sweep")
    proc = lossbench("train", "-m", *SMOKE, "dataset=iris", "seed=0,1,2",
                     "hydra.sweep.dir=sweep", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root / "sweep"


COMPARISON_FILES = ("comparison.csv", "comparison.md", "comparison.tex")


def test_compare_of_a_read_only_sweep_prints_its_table_and_says_what_was_not_saved(
        tmp_path, finished_sweep):
    prefix, home = as_user(tmp_path)
    try:
        shutil.copytree(finished_sweep, home / "sweep")
        for path in [home / "sweep", *(home / "sweep").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        proc = lossbench("compare", "sweep", "--no-plots", cwd=home, prefix=prefix)
        assert proc.returncode == 0, proc.stderr
        assert "accuracy" in proc.stdout and "Traceback" not in proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "comparison files not saved" in lines[0], proc.stderr
        assert "permission denied" in lines[0] and "--out DIR" in lines[0]
        assert not any((home / "sweep" / name).exists() for name in COMPARISON_FILES)
        # asked for by --out, files that cannot be written are an error, after the table
        asked = lossbench("compare", "sweep", "--no-plots", "--out", "sweep/saved", cwd=home,
                          prefix=prefix)
        assert asked.returncode == 2 and "accuracy" in asked.stdout
        assert asked.stderr.startswith("lossbench: error: comparison files not saved")
        # --format csv needs no file
        as_csv = lossbench("compare", "sweep", "--format", "csv", "--no-plots", cwd=home,
                           prefix=prefix)
        rows = as_csv.stdout.splitlines()
        assert as_csv.returncode == 0 and len(rows) == 2 and "accuracy" in rows[0], as_csv
    finally:
        shutil.rmtree(home)


def test_compare_on_a_full_disk_prints_its_table_then_saves_once_there_is_room(
        small_filesystem, finished_sweep):
    fs = small_filesystem
    shutil.copytree(finished_sweep, fs / "sweep")
    filler = fill(fs, leave_kib=0)
    proc = lossbench("compare", "sweep", "--no-plots", cwd=fs)
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    assert "no space left on device" in proc.stderr and "Traceback" not in proc.stderr
    assert no_temporary_files(fs)
    filler.unlink()
    again = lossbench("compare", "sweep", "--no-plots", cwd=fs)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert all((fs / "sweep" / name).is_file() for name in COMPARISON_FILES)


def test_compare_names_the_jobs_an_incomplete_sweep_lacks(tmp_path, finished_sweep):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep)
    killed = sweep_job(sweep, 1)
    (killed / "metrics.json").unlink()  # killed, or still running
    shutil.rmtree(sweep_job(sweep, 2))  # not started yet
    proc = lossbench("compare", "sweep", "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    assert "the sweep sweep is incomplete: of its 3 jobs, 1 without a record" in proc.stderr
    assert f"sweep/{killed.name}" in proc.stderr and "1 not started" in proc.stderr
    assert "not written into an incomplete folder" in proc.stderr
    assert not any((sweep / name).exists() for name in COMPARISON_FILES)
    elsewhere = lossbench("compare", "sweep", "--no-plots", "--out", "table", cwd=tmp_path)
    assert elsewhere.returncode == 0
    assert (tmp_path / "table" / "comparison.md").is_file()


STUDY = ("study", "losses=ce", "datasets=iris", "trials=1", "seeds.tune=1", "seeds.report=1",
         *SMOKE)


def test_a_study_on_a_full_disk_is_one_line_and_the_same_command_finishes_it(small_filesystem):
    fs = small_filesystem
    filler = fill(fs, leave_kib=0)
    proc = lossbench(*STUDY, "dir=study", cwd=fs)
    assert_one_line(proc, "no space left on device")
    filler.unlink()
    again = lossbench(*STUDY, "dir=study", cwd=fs)
    assert again.returncode == 0, again.stderr
    assert (fs / "study" / "study.md").is_file()


def test_a_damaged_or_read_only_study_database_is_one_line(tmp_path):
    prefix, home = as_user(tmp_path)
    try:
        first = lossbench(*STUDY, "dir=study", cwd=home)
        assert first.returncode == 0, first.stderr
        database = home / "study" / "optuna.db"
        whole = database.read_bytes()
        for path in [home / "study", *(home / "study").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        read_only = lossbench("study", "dir=study", cwd=home, prefix=prefix)
        assert_one_line(read_only, "optuna.db", "readonly database", "permissions")
        database.chmod(0o644)
        database.write_bytes(whole[:5000])  # truncated
        truncated = lossbench("study", "dir=study", cwd=home)
        assert_one_line(truncated, "optuna.db", "malformed", "move it aside")
    finally:
        shutil.rmtree(home)


def test_compare_names_a_run_whose_files_were_cut_short(tmp_path, finished_sweep):
    sweep = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep)
    cut = sweep_job(sweep, 0)
    history = (cut / "history.csv").read_text()
    (cut / "history.csv").write_text(history.rsplit("\n", 2)[0] + "\n")
    proc = lossbench("compare", "sweep", "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0 and "accuracy" in proc.stdout, proc.stderr
    assert "history.csv changed since the run completed" in proc.stderr
    assert str(cut) in proc.stderr or f"sweep/{cut.name}" in proc.stderr
    assert not (sweep / "comparison.md").exists()

"""`hydra/launcher=stacked`, driven as a user drives it: a sweep whose jobs train together as
stacked replicas writes, job by job, what the same sweep under Hydra's basic launcher writes
(the same files; the same numbers to float32's rounding; the same pairing hashes, selected
epochs and statuses), is skipped when rerun, continues stacked after SIGTERM, and records a
diverging replica as its separate run does. The engine's own equality, in float64 to 1e-9, is
tests/engine/test_group_fit.py's."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import lossbench_cmd

pytestmark = pytest.mark.slow

RTOL = 1e-5  # float32: a stacked step rounds like the separate one to ~1e-7 per epoch
# fused Adam rounds differently from the per-parameter step the stack follows
NOISY_SWEEP = ("loss=ce,gce", "seed=0,1", "trainer.epochs=3", "optimizer.fused=false",
               "dataset.noise.kind=symmetric", "dataset.noise.rate=0.2")


def sweep(cwd: Path, folder: str, *overrides: str, timeout: float = 300
          ) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("LOSSBENCH_DEBUG", None)
    return subprocess.run([*lossbench_cmd(), "train", "-m", *overrides,
                           f"hydra.sweep.dir={folder}"], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout)


def jobs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir()}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=1e-7) or (math.isnan(a) and math.isnan(b))


def assert_same_numbers(a: object, b: object, where: str) -> None:
    """Equal structures; floats to RTOL, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same_numbers(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_numbers(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        assert close(a, float(b)), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as rows:
        return list(csv.DictReader(rows))


def epoch_lines(run_dir: Path) -> list[str]:
    return [line for line in (run_dir / "train.log").read_text().splitlines()
            if "INFO epoch {" in line]


def assert_same_run(stacked: Path, separate: Path, weights_atol: float = 1e-6) -> None:
    """The job folder of a stacked job against the same job run separately."""
    assert sorted(p.name for p in stacked.iterdir()) == sorted(p.name for p in separate.iterdir())
    assert not (stacked / "checkpoint.pt").exists()
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (stacked, separate))
    for key in ("wall_time_s", "files"):  # the clock's; the files' sizes (floats as text)
        a.pop(key), b.pop(key)
    assert_same_numbers(a, b, stacked.name)
    rows_a, rows_b = history(stacked), history(separate)
    assert len(rows_a) == len(rows_b) and rows_a[0].keys() == rows_b[0].keys()
    for row_a, row_b in zip(rows_a, rows_b):
        for column in row_a:
            if column == "seconds":
                continue
            x, y = row_a[column], row_b[column]
            try:
                assert close(float(x), float(y)), f"{stacked.name} {column}: {x} != {y}"
            except ValueError:
                assert x == y
    weights_a = torch.load(stacked / "model.pt", weights_only=True)
    weights_b = torch.load(separate / "model.pt", weights_only=True)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=RTOL,
                                   atol=weights_atol)
    # every epoch in train.log, once, after the run's own header lines, as a separate run's
    assert len(epoch_lines(stacked)) == len(epoch_lines(separate)) == len(rows_b)
    log = (stacked / "train.log").read_text()
    assert log.index("run directory") < log.index("INFO epoch {")


@pytest.fixture(scope="module")
def noisy_sweeps(tmp_path_factory):
    """The same sweep (2 losses × 2 seeds, label noise) stacked and under the basic launcher."""
    cwd = tmp_path_factory.mktemp("stacked")
    stacked = sweep(cwd, "stacked", "hydra/launcher=stacked", *NOISY_SWEEP)
    separate = sweep(cwd, "separate", *NOISY_SWEEP)
    assert stacked.returncode == 0, stacked.stdout + stacked.stderr
    assert separate.returncode == 0, separate.stdout + separate.stderr
    return cwd, stacked


def test_a_stacked_sweep_writes_what_the_same_jobs_write_separately(noisy_sweeps):
    cwd, stacked = noisy_sweeps
    lines = stacked.stdout.splitlines()
    assert lines[0] == "lossbench: 4 jobs stacked: loss × seed (jobs 0-3)"
    assert "continues from its checkpoint" not in stacked.stdout + stacked.stderr
    assert lines[-1].startswith("lossbench: all 4 jobs completed")
    assert sum("completed: test accuracy" in line for line in lines) == 4
    folders, separate = jobs(cwd / "stacked"), jobs(cwd / "separate")
    assert folders.keys() == separate.keys() and len(folders) == 4
    for name in folders:
        assert_same_run(folders[name], separate[name])
    # each job its own loss, seed and noisy labels: no two replicas trained alike
    finals = {json.loads((d / "metrics.json").read_text())["best_val"] for d in folders.values()}
    hashes = {json.dumps(json.loads((d / "metrics.json").read_text())["pairing"],
                         sort_keys=True) for d in folders.values()}
    assert len(hashes) == 2  # paired by seed across the two losses, as separate runs are
    assert len(finals) > 1


def test_rerunning_a_stacked_sweep_skips_its_completed_jobs(noisy_sweeps):
    cwd, _ = noisy_sweeps
    folders = jobs(cwd / "stacked")
    before = {name: (d / "model.pt").stat().st_mtime_ns for name, d in folders.items()}
    again = sweep(cwd, "stacked", "hydra/launcher=stacked", *NOISY_SWEEP)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("already completed: skipped") == 4
    assert {name: (d / "model.pt").stat().st_mtime_ns for name, d in folders.items()} == before


def test_a_stack_stopped_by_sigterm_continues_stacked_and_ends_as_if_never_stopped(tmp_path):
    overrides = ("seed=0,1", "trainer.epochs=40", "trainer.early_stopping=false",
                 "trainer.checkpoint_every=1")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("LOSSBENCH_DEBUG", None)
    args = [*lossbench_cmd(), "train", "-m", "hydra/launcher=stacked", *overrides,
            "hydra.sweep.dir=stacked"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "stacked").glob("*/checkpoint.pt")):  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "the stack of jobs 0, 1 was interrupted by SIGTERM (2 jobs with a checkpoint)" in err, err
    folders = jobs(tmp_path / "stacked")
    for folder in folders.values():
        record = json.loads((folder / "metrics.json").read_text())
        assert record["status"] == "interrupted" and (folder / "checkpoint.pt").is_file()
        assert record["epochs_run"] < 40
    again = subprocess.run(args, cwd=tmp_path, env=env, text=True, capture_output=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == "lossbench: 2 jobs stacked: seed (jobs 0, 1)"
    separate = sweep(tmp_path, "separate", *overrides)
    assert separate.returncode == 0, separate.stdout + separate.stderr
    for name, folder in jobs(tmp_path / "separate").items():
        assert_same_run(folders[name], folder)


def test_a_diverging_replica_is_recorded_as_its_separate_run_records_it(tmp_path):
    overrides = ("optimizer.lr=0.001,1e30", "trainer.epochs=3")
    stacked = sweep(tmp_path, "stacked", "hydra/launcher=stacked", *overrides)
    separate = sweep(tmp_path, "separate", *overrides)
    assert stacked.returncode == separate.returncode, stacked.stderr + separate.stderr
    assert stacked.stdout.splitlines()[0] == "lossbench: 2 jobs stacked: optimizer.lr (jobs 0, 1)"
    statuses = {}
    for name, folder in jobs(tmp_path / "separate").items():
        a = json.loads((tmp_path / "stacked" / name / "metrics.json").read_text())
        b = json.loads((folder / "metrics.json").read_text())
        statuses[name] = b["status"]
        if b["status"] == "completed":
            assert_same_run(tmp_path / "stacked" / name, folder)
        else:  # where and how it diverged, the advice: the separate run's record
            for key in ("wall_time_s", "traceback", "files"):
                a.pop(key), b.pop(key)
            assert_same_numbers(a, b, name)
            assert b["stopped"] == "diverged"
    assert sorted(statuses.values()) == ["completed", "failed"]  # a sweep's diverged job


def test_an_rmsprop_sweep_stacks_and_writes_what_its_jobs_write_separately(tmp_path):
    """optimizer=rmsprop (conf/optimizer/rmsprop.yaml) with each job its own lr and momentum:
    one stack, every job's files those of its separate run."""
    overrides = ("optimizer=rmsprop", "optimizer.lr=0.001,0.003", "optimizer.momentum=0.5",
                 "seed=0,1", "trainer.epochs=3")
    stacked = sweep(tmp_path, "stacked", "hydra/launcher=stacked", *overrides)
    separate = sweep(tmp_path, "separate", *overrides)
    assert stacked.returncode == 0 and separate.returncode == 0, stacked.stderr + separate.stderr
    assert stacked.stdout.splitlines()[0] == (
        "lossbench: 4 jobs stacked: optimizer.lr × seed (jobs 0-3)")
    assert "runs alone" not in stacked.stdout + stacked.stderr
    folders = jobs(tmp_path / "stacked")
    assert folders.keys() == jobs(tmp_path / "separate").keys() and len(folders) == 4
    for name, folder in folders.items():
        # RMSprop divides each step by the root of a running mean of squared gradients, which
        # magnifies float32's rounding (the stack's lr is a tensor, torch's a scalar fused into
        # the update): a few weights of 8,192 move by ~2e-6 in 3 epochs. Metrics and history
        # hold to RTOL; the float64 tests (tests/engine/test_replicas.py) hold it to 1e-9.
        assert_same_run(folder, tmp_path / "separate" / name, weights_atol=1e-5)


def compare_json(cwd: Path, folder: str) -> dict[str, dict]:
    """`lossbench compare <folder> --format json`: each loss's row."""
    done = subprocess.run([*lossbench_cmd(), "compare", folder, "--format", "json", "--no-plots"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["configurations"]
    return {row["runs"].split("loss=")[1].split(",")[0]: row for row in rows}


def test_twenty_jobs_stacked_and_unstacked_agree_through_compare(tmp_path):
    """Full trainings in float32 (the default budget, early stopping, 40 % label noise): each
    loss's mean test accuracy over ten seeds, stacked, lies inside the unstacked sweep's 95 %
    CI, and the other way round (`lossbench compare` on both)."""
    overrides = ("loss=ce,gce", "seed=" + ",".join(map(str, range(10))),
                 "dataset.noise.kind=symmetric", "dataset.noise.rate=0.4", "trainer.plots=false")
    stacked = sweep(tmp_path, "stacked", "hydra/launcher=stacked", *overrides, timeout=900)
    assert stacked.returncode == 0, stacked.stdout + stacked.stderr
    assert stacked.stdout.splitlines()[0] == "lossbench: 20 jobs stacked: loss × seed (jobs 0-19)"
    separate = sweep(tmp_path, "separate", *overrides, timeout=900)
    assert separate.returncode == 0, separate.stdout + separate.stderr
    a, b = compare_json(tmp_path, "stacked"), compare_json(tmp_path, "separate")
    assert a.keys() == b.keys() == {"ce", "gce"}
    for loss in a:
        assert a[loss]["n_runs"] == b[loss]["n_runs"] == 10
        for one, other in ((a[loss], b[loss]), (b[loss], a[loss])):
            assert other["accuracy_ci95_low"] <= one["accuracy_mean"] <= other["accuracy_ci95_high"]


def test_the_launcher_module_imports_no_torch():
    """Hydra imports every plugin module at each start: the launcher's must cost nothing."""
    code = ("import sys, hydra_plugins.lossbench_launcher.stacked_launcher as m; "
            "print(m.StackedLauncher.__name__, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["StackedLauncher", "False"]


@pytest.mark.parametrize("launcher", ["stacked", "basic"])
def test_a_sweep_of_seeds_composes_two_jobs_in_full(tmp_path, launcher):
    """The sweep's checks make every job's config before the first one runs (Hydra composes
    the first job and, to check the copies, the second; the third is a copy of the first with
    its seed: config/job_configs.py); Hydra's sweeper and the launcher are given those configs
    instead of composing each job twice more (about 0.1 s a job)."""
    code = (
        "import atexit, sys, traceback\n"
        "from hydra._internal.config_loader_impl import ConfigLoaderImpl as Loader\n"
        "calls, compose = [], Loader.load_sweep_config\n"
        "def counted(self, *args, **kwargs):\n"
        "    files = [frame.filename for frame in traceback.extract_stack()]\n"
        "    by = next(f for f in reversed(files) if f != '<string>').rsplit('/', 1)[-1]\n"
        "    calls.append((by, kwargs.get('sweep_overrides', args[-1] if args else None)[0]))\n"
        "    return compose(self, *args, **kwargs)\n"
        "Loader.load_sweep_config = counted\n"
        "atexit.register(lambda: print('composed', sorted(calls), file=sys.stderr))\n"
        f"sys.argv = ['lossbench', 'train', '-m', 'hydra/launcher={launcher}', 'seed=0,1,2',\n"
        "            'trainer.epochs=1', 'trainer.plots=false', 'hydra.sweep.dir=s']\n"
        "from lossbench.cli import console_main\n"
        "console_main()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    if launcher == "stacked":
        assert done.stdout.splitlines()[0] == "lossbench: 3 jobs stacked: seed (jobs 0-2)"
    composed = next(line for line in done.stderr.splitlines() if line.startswith("composed"))
    expected = [("job_configs.py", "seed=0"), ("job_configs.py", "seed=1")]
    assert composed == f"composed {expected}", done.stderr
    assert len(jobs(tmp_path / "s")) == 3

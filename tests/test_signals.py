"""Stop signals in every phase of a run, a terminal that closes, a reader of stdout that leaves,
a parallel sweep killed outright: real signals to real `lossbench train` processes
(tests/faults.py). Nothing finished is lost, and each stop says in one line what is left and
how to continue."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from conftest import lossbench_cmd, read_metrics
from faults import REPORT, StalledData, alive, descendants, logged_epochs, start_train

# a run that trains long enough to be stopped in the middle: iris epochs take milliseconds
LONG = ("dataset=iris", "trainer.epochs=500", "trainer.early_stopping=false",
        "print_config=false", "trainer.plots=false", "trainer.device=cpu")


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    return lines[-1]


@pytest.mark.parametrize("signum, ignored", [
    (signal.SIGTERM, ()), (signal.SIGHUP, ()),
    # a shell's background job (`lossbench train ... &`) inherits SIGINT ignored
    (signal.SIGINT, (signal.SIGINT,))], ids=["SIGTERM", "SIGHUP", "SIGINT-in-background"])
def test_a_stop_during_start_up_stops_at_once_and_says_so(tmp_path, signum, ignored):
    """Loading the data (here from a disk that does not answer): nothing to save yet, so the run
    stops at once, leaves nothing, and says so; 128 + the signal's number, as shells report."""
    data = StalledData(tmp_path)
    run = start_train(tmp_path, *data.overrides, "trainer=smoke", run_dir="outputs/run",
                      ignored=ignored)
    data.wait_opened(run)
    run.signal(signum)
    time.sleep(0.5)
    data.release()  # a run that went on would now get its data, train and exit 0
    ended = run.finish()
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    assert ended.returncode == 128 + signum, ended.stderr
    assert _one_line(ended.stderr) == (f"lossbench: stopped by {name} before the run started; "
                                       "nothing was written")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                                    signal.SIGUSR2], ids=lambda s: signal.Signals(s).name)
def test_a_stop_during_training_leaves_a_checkpoint_and_says_how_to_continue(tmp_path, signum):
    run = start_train(tmp_path, *LONG)
    run.wait_for_epoch(1)
    run.signal(signum)
    ended = run.finish()
    name = signal.Signals(signum).name
    assert ended.returncode == 128 + signum, ended.stderr
    assert re.fullmatch(rf"lossbench: interrupted by {name} (at|before) epoch \d+.*; checkpoint "
                        r"saved in run/checkpoint\.pt\. Continue with: lossbench train resume=run",
                        _one_line(ended.stderr))
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted" and metrics["stopped_at"]["epoch"] < 500
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_a_stop_while_testing_finishes_the_record_first(tmp_path):
    """SIGTERM when report.txt appears (the test split is reported; the plots, the weights and
    metrics.json are still to come): the finished run is written whole, then it stops."""
    run = start_train(tmp_path, "dataset=digits", "trainer=smoke", "trainer.plots=true",
                      "print_config=false")
    run.wait_for_file(REPORT)
    run.signal(signal.SIGTERM)
    ended = run.finish()
    assert ended.returncode == 143, ended.stderr
    assert _one_line(ended.stderr) == ("lossbench: stopped by SIGTERM after the run completed; "
                                       "its results are all in run")
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed"
    for name in ("model.pt", "history.csv", REPORT, "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name


def test_killed_outright_while_writing_results_resume_finishes_them(tmp_path):
    """kill -9 once the test report is written (the run is tested, its plots and record still
    to come): the end of training is on disk, so `resume=` writes the results without training
    a step further, and they equal an uninterrupted run's."""
    common = ("dataset=digits", "trainer=smoke", "trainer.plots=true", "print_config=false")
    whole = subprocess.run([*lossbench_cmd(), "train", *common, "hydra.run.dir=whole"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    run = start_train(tmp_path, *common)
    run.wait_for_file(REPORT)
    run.signal(signal.SIGKILL)
    run.finish()
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert not (tmp_path / "run" / "metrics.json").exists()
    resumed = subprocess.run([*lossbench_cmd(), "train", "resume=run"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    got, want = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "whole")
    assert got["status"] == "completed" and got["epochs_run"] == want["epochs_run"] == 2
    assert got["test"]["accuracy"] == want["test"]["accuracy"]
    assert got["test_at"]["last"]["nll"] == pytest.approx(want["test_at"]["last"]["nll"])
    assert logged_epochs(tmp_path / "run") == [1, 2]  # no epoch trained again
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_closed_terminal_stops_the_run_with_a_checkpoint(tmp_path):
    """The terminal goes away (an ssh session drops): SIGHUP, and every later write to the
    terminal fails. The run stops after its step with its checkpoint and record, as for
    SIGTERM, and `resume=` continues it."""
    run = start_train(tmp_path, *LONG, terminal=True)
    run.wait_for_epoch(1)
    run.hang_up()
    ended = run.finish()
    assert ended.returncode == 128 + signal.SIGHUP
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted", metrics
    assert "interrupted by SIGHUP" in metrics["message"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_nohup_keeps_the_run_going_when_the_terminal_closes(tmp_path):
    """`nohup lossbench train ...` ignores SIGHUP: lossbench leaves that choice alone."""
    run = start_train(tmp_path, "dataset=iris", "trainer.epochs=150",
                      "trainer.early_stopping=false", "print_config=false",
                      "trainer.plots=false", ignored=(signal.SIGHUP,))
    run.wait_for_epoch(1)
    run.signal(signal.SIGHUP)
    ended = run.finish()
    assert ended.returncode == 0, ended.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"


def test_the_continue_hint_pastes_as_is_into_a_shell(tmp_path):
    """A run directory with spaces and non-ASCII letters: the printed "Continue with: ..."
    command, pasted into bash as it is, continues the run to the end."""
    run_dir = "int run ü/日本 x"
    run = start_train(tmp_path, *LONG, run_dir=run_dir)
    run.wait_for_epoch(1)
    run.signal(signal.SIGTERM)
    ended = run.finish()
    assert ended.returncode == 143, ended.stderr
    hint = _one_line(ended.stderr).split("Continue with: ", 1)[1]
    assert shlex.split(hint)[:2] == ["lossbench", "train"]
    pasted = subprocess.run(["bash", "-c", hint.replace("lossbench", shlex.join(
        lossbench_cmd()), 1)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert pasted.returncode == 0, pasted.stderr
    assert read_metrics(tmp_path / run_dir)["status"] == "completed"


@pytest.mark.parametrize("path", [
    "plain/run", "int run ü/日本 x", "it's here", "a\\b", "ends\\", "back\\'quote", "$HOME x",
    "a,b=c", "[x] {y}", "'quoted'", "tab\there"])
def test_resume_values_reach_hydra_as_the_plain_path(path):
    """The rule behind the hint: the `resume=` argument it prints, split as a shell splits it,
    is parsed by Hydra into exactly the run directory, whatever characters it holds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lossbench.engine.signals import resume_command

    words = shlex.split(resume_command(path))
    assert words[:2] == ["lossbench", "train"] and len(words) == 3
    parsed = OverridesParser.create().parse_override(words[2])
    assert parsed.key_or_group == "resume" and parsed.value() == path


def test_resume_accepts_the_plain_quoted_path(cli, tmp_path):
    """`resume='dir with spaces'` (the shell's quoting only): the path reaches lossbench whole,
    not as a Hydra parse error."""
    proc = cli("train", "resume=no such ü run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "lossbench: error: resume=no such ü run: no such run directory\n"


def test_a_closed_stdout_loses_nothing(tmp_path):
    """`lossbench train ... | head -2`: the reader leaves after two lines; training goes on
    quietly, every result is written, and lossbench exits as Unix tools do when their reader
    has gone: 141 (128 + SIGPIPE), nothing on stderr."""
    command = (f"set -o pipefail; {shlex.join(lossbench_cmd())} train trainer=smoke "
               "hydra.run.dir=run | head -2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 2
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed"
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / REPORT).is_file()


@pytest.mark.slow
def test_a_killed_parallel_sweep_leaves_no_worker_running(tmp_path):
    """SIGKILL to `lossbench train -m hydra/launcher=parallel` (the OOM killer): its workers end
    with it instead of training on and idling, each job it held leaving a checkpoint and an
    "interrupted" record, and the same command continues them."""
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=parallel", "seed=0,1", *LONG,
            f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*lossbench_cmd(), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def job(seed: int):  # a job's folder is named by its overrides
        found = [d for d in sweep.glob("*") if f"seed={seed}" in d.name.split(",")]
        return found[0] if found else sweep / "not yet"

    deadline = time.monotonic() + 180
    while not all(logged_epochs(job(seed)) for seed in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, "the jobs never started"
        time.sleep(0.05)
    workers = descendants(proc.pid)
    assert workers
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)], "workers outlived their parent"
    for seed in (0, 1):
        metrics = json.loads((job(seed) / "metrics.json").read_text())
        assert metrics["status"] == "interrupted", metrics
        assert (job(seed) / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_a_preemption_warning_during_start_up_still_requeues_the_submitit_job(tmp_path):
    """Under submitit, SIGUSR2 warns of a preemption: in start-up as in training, the job hands
    it back to submitit, which requeues it; the new attempt then runs to the end."""
    from test_sweep import _submitit_task

    sweep = tmp_path / "sweep"
    data = StalledData(tmp_path)
    run = start_train(tmp_path, "-m", "hydra/launcher=submitit_local",
                      "hydra.launcher.timeout_min=5", *data.overrides, "trainer=smoke",
                      f"hydra.sweep.dir={sweep}")
    data.wait_opened(run)  # the first attempt waits for its data
    task = _submitit_task(sweep)
    assert task is not None
    os.kill(task, signal.SIGUSR2)

    def logs() -> str:
        return "".join(p.read_text(errors="replace") for p in sweep.rglob("*_log.*"))

    run.wait_until(lambda: "Requeued job" in logs(), "the job to be requeued")
    os.close(data.fd)  # the next attempt opens the data anew
    data.fd = None
    data.wait_opened(run)
    data.release()
    ended = run.finish(timeout=300)
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert re.search(r"job 0 \[.*\] stopped by SIGUSR2 during start-up; submitit requeues it",
                     logs())
    jobs = [p.parent for p in sweep.rglob("metrics.json")]  # one job, named by its overrides
    assert len(jobs) == 1 and read_metrics(jobs[0])["status"] == "completed"

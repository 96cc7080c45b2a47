"""What a user sees and keeps: errors first, pipes that close early, whole tables in logs, files
colleagues can read, one line per sweep job, damaged run directories, Ctrl-C at start-up and
the hints a mistyped command gets."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import lossbench_cmd, read_metrics, run_dirs

TINY = ("dataset=iris", "trainer=smoke", "trainer.plots=false")


def test_a_user_error_is_all_the_console_shows(cli, tmp_path):
    """Wrong loss for the task, bad device: the one line, no config tree before it."""
    for args in (("dataset=diabetes", "loss=ce"), ("trainer.device=cuda:7",)):
        proc = cli("train", "trainer=smoke", *args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stdout == ""  # the config tree used to come first
        assert proc.stderr.startswith("lossbench: error: ")
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def _closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run lossbench with a stdout whose reader has already gone, as `| head -0` leaves it."""
    read, write = os.pipe()
    os.close(read)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("COLUMNS", None)
    try:
        return subprocess.run([*lossbench_cmd(), *args], cwd=cwd, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=300, env=env)
    finally:
        os.close(write)


@pytest.mark.parametrize("args", [["list"], ["losses"], ["--help"], ["train", *TINY]],
                         ids=["list", "losses", "help", "train"])
def test_piping_into_a_reader_that_stops_ends_quietly(tmp_path, args):
    proc = _closed_pipe(args, tmp_path)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr == ""
    assert proc.returncode in (0, 1, 141)


def test_compare_into_head_ends_quietly(cli, tmp_path):
    cli("train", "-m", "loss=ce,mae", *TINY, f"hydra.sweep.dir={tmp_path / 's'}", check=True)
    shell = subprocess.run(
        f"{' '.join(lossbench_cmd())} compare {tmp_path / 's'} | head -1", shell=True,
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert shell.stderr == "" and shell.stdout.strip()


def test_result_files_honour_the_umask(tmp_path):
    script = ("import os, sys; os.umask(0o022); sys.argv = ['lossbench', 'train', "
              + ", ".join(repr(a) for a in (*TINY[:2], "trainer.plots=true", "hydra.run.dir=run"))
              + "]; from lossbench.cli import console_main; console_main()")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (tmp_path / "run").iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"metrics.json", "report.txt", "history.csv", "model.pt", "train.log",
            "curves.png"} <= names
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


def test_tables_are_whole_when_stdout_is_not_a_terminal(cli, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run([*lossbench_cmd(), "losses"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0
    assert "…" not in proc.stdout
    assert "learn_alpha=true" in proc.stdout and "Kendall, Gal & Cipolla 2018" in proc.stdout
    run = subprocess.run([*lossbench_cmd(), "train", *TINY, "print_config=false",
                          "hydra.run.dir=run"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "…" not in run.stdout
    assert "┃ precision ┃ recall ┃ f1-score ┃ support ┃" in run.stdout
    header = [ln for ln in run.stdout.splitlines() if ln.startswith("lossbench loss=")]
    assert header and header[0].rstrip().endswith("device=cpu")  # one line, not wrapped


def test_a_sweep_prints_one_line_per_job_and_the_summary(cli, tmp_path):
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", "loss=ce,mae,bogus_value_for_reduction", "seed=0,1", *TINY,
               f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 2  # the typo is caught before any job
    proc = cli("train", "-m", "loss=ce,mae", "+loss.reduction=mean,bogus", "seed=0", *TINY,
               f"hydra.sweep.dir={sweep}")
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert len(lines) == 5, lines  # 4 jobs + the summary
    done = [ln for ln in lines if " completed: test accuracy " in ln]
    failed = [ln for ln in lines if "] failed: " in ln]
    assert len(done) == 2 and len(failed) == 2
    import re

    assert all(re.fullmatch(r"lossbench: job \d \[.*\] completed: test accuracy [\d.]+ "
                            r"\([\d.]+ s; run directory: sweep/(\S+)\)", ln) for ln in done), done
    # each job's folder is named by its overrides: the job's own, as the line shows them
    for ln in done:
        overrides, folder = re.search(r"\[(.*)\].*run directory: sweep/(\S+)\)$", ln).groups()
        assert folder == ",".join(sorted(overrides.split()))
    assert "reduction must be one of" in failed[0]
    assert lines[-1].startswith("lossbench: 2 of 4 jobs failed")
    for job in run_dirs(sweep):  # the details went to each job's own files
        if read_metrics(job)["status"] == "completed":
            assert "precision" in (job / "report.txt").read_text()
            assert "epoch" in (job / "train.log").read_text()


def _run_dir(cli, tmp_path) -> Path:
    run = tmp_path / "run"
    cli("train", *TINY, "print_config=false", f"hydra.run.dir={run}", check=True)
    return run


def test_eval_of_a_run_whose_config_is_damaged_or_refused_is_one_line(cli, tmp_path):
    run = _run_dir(cli, tmp_path)
    config = run / ".hydra" / "config.yaml"
    good = config.read_text()
    config.write_text(good + "loss: [unclosed\n")
    proc = cli("eval", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"lossbench: error: {config} cannot be read as a config")
    config.write_text(good.replace("lossbench.losses.CrossEntropyLoss", "os.system"))
    proc = cli("eval", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "os.system" in proc.stderr and len(proc.stderr.splitlines()) == 1


def ctrl_c_while_loading(tmp_path: Path, loader: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `lossbench train dataset=iris` given SIGINT while its
    data loads: `loader` is Python that defines `iris(**k)`, which prints 'loading' and waits."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOSSBENCH_DEBUG", None)
    script = ("import atexit, logging, time, sys; import lossbench.data.sklearn_datasets as d\n"
              f"{loader}\nd.iris = iris\n"
              "sys.argv = ['lossbench', 'train', 'dataset=iris', 'trainer=smoke', "
              "'print_config=false', 'hydra.run.dir=outputs/run']\n"
              "from lossbench.cli import console_main; console_main()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "loading"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_ctrl_c_during_start_up_leaves_nothing_and_says_so(tmp_path):
    """SIGINT while the run starts (before the training loop): no empty run directory, and no
    promise of a checkpoint."""
    # a start-up that takes long enough to interrupt: the data loader sleeps
    status, _, err = ctrl_c_while_loading(tmp_path, (
        "f = d.iris\n"
        "iris = lambda **k: (print('loading', flush=True), time.sleep(30), f(**k))[2]"))
    assert status == 130, err
    assert "Traceback" not in err
    assert err.strip() == "lossbench: stopped by Ctrl-C before the run started; nothing was written"
    assert not (tmp_path / "outputs").exists()


def test_ctrl_c_that_breaks_a_compiled_modules_import_is_still_one_line(tmp_path):
    """A signal that arrives while a compiled module initialises surfaces as that module's
    `ImportError: initialization failed`, raised from the stop (scipy's, seen under load); and a
    library whose import it broke may log at exit. The user still reads one line."""
    # the data loader imports like a compiled module: a stop while it initialises becomes its
    # ImportError; and, like a half-imported library, it logs through the root logger at exit
    status, out, err = ctrl_c_while_loading(tmp_path, (
        "atexit.register(lambda: logging.getLogger('half.imported').info('cache stats'))\n"
        "def iris(**k):\n"
        "    print('loading', flush=True)\n"
        "    try:\n"
        "        time.sleep(30)\n"
        "    except KeyboardInterrupt as stop:\n"
        "        raise ImportError('initialization failed') from stop"))
    assert status == 130, err
    assert "Traceback" not in err and "initialization failed" not in err
    assert err.strip() == "lossbench: stopped by Ctrl-C before the run started; nothing was written"
    assert "cache stats" not in out + err
    assert not (tmp_path / "outputs").exists()


def test_a_value_list_without_m_says_to_add_it(cli):
    proc = cli("train", "loss=ce,gce")
    assert proc.returncode == 2
    assert "use lossbench train -m loss=ce,gce" in proc.stderr


def test_a_typo_in_a_sweep_value_suggests_the_option_and_leaves_nothing(cli, tmp_path):
    proc = cli("train", "-m", "loss=ce,gce,sec", *TINY)
    assert proc.returncode == 2
    assert "Could not find 'loss/sec' (did you mean sce?)" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # no start marker, no multirun.yaml
    proc = cli("train", "loss=foca", *TINY)
    assert "(did you mean focal?)" in proc.stderr


def test_list_shows_every_group(cli):
    out = cli("list", check=True).stdout
    for header in ("datasets (", "models (", "losses (", "optimizers (", "schedulers (",
                   "loggers (", "trainers (", "experiments (", "launchers ("):
        assert header in out, header
    assert "  parallel " in out and "  sce " in out


def test_a_target_hydra_refuses_is_one_line_for_train_too(cli, tmp_path):
    """The path `resume=` takes as well: the saved config is built by the same run()."""
    proc = cli("train", *TINY, "loss._target_=os.system")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lossbench: error: Target 'os.system' is blocklisted")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("table", ["regression", "classification", "confusion"])
def test_a_report_title_wraps_at_the_terminal_not_at_its_narrow_table(table):
    """A rich table's own title wrapped at the table's width: a regression report's long title
    above its two columns became seven lines of twenty characters."""
    from rich.console import Console

    from lossbench.results import report

    title = ("Test split: loss=mse dataset=diabetes, selected epoch 2 (val_rmse=71.6337, chosen "
             "on validation, not on test)")
    renderable = {
        "regression": lambda: report.regression_table(
            {"mse": 1.0, "rmse": 1.0, "mae": 1.0, "r2": 0.5}, title),
        "classification": lambda: report.classification_report_table(
            {"a": {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 3},
             "macro avg": {"precision": 1.0, "recall": 1.0, "f1-score": 1.0, "support": 3}},
            title),
        "confusion": lambda: report.confusion_matrix_table([[3]], ["a"], title)}[table]()
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    lines = console.export_text().splitlines()
    assert " ".join(line.strip() for line in lines[:2]) == title  # two lines at 80 columns
    assert len(lines[0].rstrip()) > 60


def test_counts_of_one_are_singular(cli, tmp_path):
    """"1 steps", "1 configurations": a count of one takes the singular everywhere it prints."""
    run = cli("train", *TINY, "trainer.epochs=1", "trainer.max_batches=1",
              "trainer.early_stopping=true", "trainer.patience=1", "trainer.min_steps=1",
              "print_config=false", "hydra.run.dir=one", check=True)
    assert "budget 1 epoch × 1 step" in run.stdout
    assert "early stopping after 1 epoch without improvement, not before 1 step" in run.stdout
    compared = cli("compare", "one", "--no-plots", check=True)
    assert "iris (multiclass): 1 configuration, 1 run;" in compared.stdout
    for wrong in ("1 steps", "1 epochs", "1 configurations", "1 runs"):
        assert wrong not in run.stdout + compared.stdout


def test_the_divergence_hint_names_a_smaller_learning_rate_in_the_same_notation(cli):
    proc = cli("train", *TINY, "optimizer=sgd", "optimizer.lr=1e6", "print_config=false",
               "hydra.run.dir=run")
    assert proc.returncode == 3, proc.stderr
    import re

    hint = re.search(r"optimizer\.lr=(\S+), a tenth of (\S+)\)", proc.stderr)
    assert hint, proc.stderr
    assert float(hint.group(1)) == 1e5 and float(hint.group(2)) == 1e6
    assert hint.group(1) == "1e+05"  # as the epoch lines print lr ("lr=1e+06"), not "100000"


def test_run_metadata_says_what_happened_and_nothing_else(cli, tmp_path):
    """Clean data is not "selected on noisy labels", and patience that runs out on the last
    epoch of the budget stopped nothing early. lr=0: the weights never change, so the first
    epoch stays the best and patience 1 runs out one epoch later."""
    frozen = (*TINY, "optimizer.lr=0", "trainer.early_stopping=true", "trainer.patience=1",
              "trainer.min_steps=0", "print_config=false")
    cli("train", *frozen, "trainer.epochs=2", "hydra.run.dir=full", check=True)
    full = read_metrics(tmp_path / "full")
    assert full["epochs_run"] == 2 and full["stopped_early"] is False
    assert full["selection"]["labels"] == "given" and full["selection"]["privileged"] is False
    cli("train", *frozen, "trainer.epochs=3", "hydra.run.dir=early", check=True)
    early = read_metrics(tmp_path / "early")
    assert early["epochs_run"] == 2 and early["stopped_early"] is True
    cli("train", *frozen, "trainer.epochs=2", "dataset.noise.kind=symmetric",
        "dataset.noise.rate=0.2", "hydra.run.dir=noisy", check=True)
    assert read_metrics(tmp_path / "noisy")["selection"]["labels"] == "noisy"
    compared = cli("compare", "full", "noisy", "--format", "csv", "--no-plots",
                   "--out", "cmp", check=True).stdout
    import csv

    selection = {r["noise_kind"]: r["selection"] for r in csv.DictReader(compared.splitlines())}
    assert selection == {"none": "given", "symmetric": "noisy"}


def test_resume_says_where_it_continues(cli, tmp_path):
    """A real SIGTERM after the first epoch line; `resume=` then names the epoch it goes on
    from, as a sweep's job does."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([*lossbench_cmd(), "train", *TINY, "trainer.epochs=300",
                             "print_config=false", "hydra.run.dir=stopped"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    stopped_at = read_metrics(tmp_path / "stopped")["stopped_at"]
    resumed = cli("train", "resume=stopped", check=True)
    # the run directory as it was typed, on every line that names it
    assert "checkpoint saved in stopped/checkpoint.pt" in err
    assert "run directory: stopped\n" in resumed.stdout and str(tmp_path) not in resumed.stdout
    import re

    said = re.search(r"lossbench: resume=stopped: continuing from epoch (\d+)", resumed.stdout)
    assert said, resumed.stdout
    assert int(said.group(1)) in (stopped_at["epoch"], stopped_at["epoch"] + 1)
    assert read_metrics(tmp_path / "stopped")["status"] == "completed"


@pytest.mark.parametrize("args, shown", [
    (("trainer.precision=bf16",), "device=cpu precision=bf16"),
    (("trainer.devices=2",), "device=cpu devices=2"),
    ((), "device=cpu")], ids=["bf16", "two processes", "defaults"])
def test_the_header_names_devices_and_precision_when_they_are_not_the_default(cli, args, shown):
    proc = cli("train", *TINY, "print_config=false", "hydra.run.dir=run", *args, check=True)
    [header] = [ln for ln in proc.stdout.splitlines() if ln.startswith("lossbench loss=")]
    assert header.rstrip().endswith(shown)
    if not args:
        assert "precision" not in header and "devices" not in header


@pytest.mark.slow
def test_submitit_local_prints_one_line_per_job_like_the_other_launchers(cli, tmp_path):
    """submitit runs each job in a process of its own, its output in log files: Hydra's
    launcher lines came instead of the jobs' own."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = cli("train", "-m", "hydra/launcher=submitit_local", "+loss.reduction=mean,bogus",
               *TINY, "hydra.sweep.dir=sweep", timeout=600)
    out = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(out) == 1 and out[0].startswith("lossbench: job 0 [+loss.reduction=mean")
    assert " completed: test accuracy " in out[0]
    # its folder is named by its overrides, and the line names it
    shown = out[0].split("run directory: ", 1)[1].rstrip(")")
    assert shown.startswith("sweep/+loss.reduction=mean,") and (tmp_path / shown).is_dir()
    assert len(err) == 2, err  # the failed job's line, then the summary
    assert err[0].startswith("lossbench: job 1 [+loss.reduction=bogus") and "] failed: " in err[0]
    assert err[1].startswith("lossbench: 1 of 2 jobs failed: ")
    assert "[HYDRA]" not in proc.stdout + proc.stderr

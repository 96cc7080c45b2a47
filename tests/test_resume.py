"""Interrupt a run (SIGINT, as Ctrl-C sends), resume it, and get the very numbers of a run that
was never interrupted: test metrics and the per-epoch history, to the last digit on CPU."""

from __future__ import annotations

import csv
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import lossbench_cmd, read_metrics

# Dropout draws from torch's RNG, one-cycle steps the scheduler every batch, batch_size=64 makes
# 17 steps per epoch of digits: everything a resumed run must restore is exercised.
RUN = ("trainer.device=cpu", "trainer.batch_size=64", "trainer.early_stopping=false",
       "model.dropout=0.2", "scheduler=onecycle", "print_config=false", "trainer.plots=false")


def history_without_times(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_same_result(resumed: Path, uninterrupted: Path) -> None:
    a, b = read_metrics(resumed), read_metrics(uninterrupted)
    assert a["status"] == b["status"] == "completed"
    assert a["test"] == b["test"]  # exact: floats compared bit for bit through JSON
    for key in ("best_val", "best_epoch", "epochs_run", "choices", "config"):
        assert a[key] == b[key], key
    assert history_without_times(resumed) == history_without_times(uninterrupted)
    model_a = torch.load(resumed / "model.pt", weights_only=True)
    model_b = torch.load(uninterrupted / "model.pt", weights_only=True)
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)


def run_in(compose_cfg, run_dir: Path, *overrides: str):
    from lossbench.experiment.run import run

    cfg = compose_cfg(*overrides)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return run(cfg)


def interrupt_at(monkeypatch, epoch: int, batch: int, signum: int = signal.SIGINT) -> None:
    """Send `signum` to this process just before step `batch` (1-based) of `epoch`."""
    import lossbench.engine.loop as train

    original = train.train_batches
    epochs_seen = [0]

    def batches_with_signal(*args, **kwargs):
        n, batches = original(*args, **kwargs)
        epochs_seen[0] += 1
        this_epoch = epochs_seen[0]

        def signalled():
            for b, item in enumerate(batches, 1):
                if (this_epoch, b) == (epoch, batch):
                    signal.raise_signal(signum)
                yield item
        return n, signalled()

    monkeypatch.setattr(train, "train_batches", batches_with_signal)


@pytest.mark.parametrize("epoch,batch,stopped_at", [
    (2, 5, {"epoch": 2, "step": 5, "steps": 17}),  # mid-epoch: the rest of epoch 2 on resume
    (2, 17, {"epoch": 3, "step": 0, "steps": 17}),  # last step: epoch 2 ends, stops before 3
])
def test_interrupted_run_resumes_to_identical_result(compose_cfg, tmp_path, monkeypatch, epoch,
                                                     batch, stopped_at):
    from lossbench.errors import Interrupted

    overrides = (*RUN, "trainer.epochs=4")
    run_in(compose_cfg, tmp_path / "whole", *overrides)

    interrupt_at(monkeypatch, epoch, batch)
    with pytest.raises(Interrupted) as stopped:
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    assert stopped.value.exit_code == 130
    assert "resume=" in str(stopped.value)
    metrics = read_metrics(tmp_path / "stopped")
    assert metrics["status"] == "interrupted"
    assert {k: metrics["stopped_at"][k] for k in stopped_at} == stopped_at
    assert metrics["checkpoint"] == "checkpoint.pt"
    assert not (tmp_path / "stopped" / "model.pt").exists()  # no test of unfinished training
    state = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert (state["loop"]["epoch"], state["loop"]["batch"]) == (stopped_at["epoch"],
                                                                stopped_at["step"])

    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert not (tmp_path / "ignored").exists()  # a resumed run goes on in its own directory
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")


def test_augmented_images_through_a_dataloader_resume_exactly(compose_cfg, tmp_path,
                                                              monkeypatch):
    """Random crops and flips read through a DataLoader: the skipped batches are drawn again on
    resume, so the augmentation's random draws line up with the uninterrupted run."""
    from lossbench.errors import Interrupted

    overrides = ("dataset=fake_images", "dataset.n_samples=192", "model=cnn",
                 "dataset.augment.crop_padding=2", "dataset.augment.hflip=true",
                 "trainer.batch_size=32", "trainer.epochs=3", "trainer.early_stopping=false",
                 "trainer.device=cpu", "print_config=false", "trainer.plots=false")
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    interrupt_at(monkeypatch, 2, 2)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    assert read_metrics(tmp_path / "stopped")["stopped_at"]["step"] == 2
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")


def test_resume_keeps_early_stopping_and_plateau_state(compose_cfg, tmp_path, monkeypatch):
    """Early stopping's patience count, the best epoch so far and ReduceLROnPlateau's counters
    live in the checkpoint: a resumed run stops at the same epoch with the same learning rates."""
    from lossbench.errors import Interrupted

    overrides = ("trainer.device=cpu", "trainer.batch_size=256", "trainer.epochs=40",
                 "trainer.early_stopping=true", "trainer.patience=3", "trainer.min_steps=0",
                 "scheduler=plateau",
                 "scheduler.patience=1", "trainer.monitor=val_loss", "optimizer.lr=0.05",
                 "print_config=false", "trainer.plots=false")
    run_in(compose_cfg, tmp_path / "whole", *overrides)
    whole = read_metrics(tmp_path / "whole")
    assert whole["stopped_early"], "the setting must make early stopping happen"
    stop_epoch = max(2, whole["epochs_run"] - 2)  # while patience is being counted

    interrupt_at(monkeypatch, stop_epoch, 2)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, tmp_path / "stopped", *overrides)
    monkeypatch.undo()
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'stopped'}")
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")
    assert read_metrics(tmp_path / "stopped")["stopped_early"]


def test_sigterm_stops_like_ctrl_c_with_status_143(compose_cfg, tmp_path, monkeypatch):
    """What a batch scheduler sends before it kills a job: checkpoint, then exit 128 + 15."""
    from lossbench.errors import Interrupted

    interrupt_at(monkeypatch, 1, 3, signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped:
        run_in(compose_cfg, tmp_path / "run", *RUN, "trainer.epochs=2",
               "trainer.checkpoint_interval_s=0")
    assert stopped.value.exit_code == 143 and "SIGTERM" in str(stopped.value)
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "interrupted" and metrics["stopped_at"]["step"] == 3
    # no checkpoints on a clock or by count, but the interruption still writes one
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


class FakeClock:
    """A clock that moves `epoch_s` seconds per training epoch (each `train_batches` call), and
    not at all otherwise: checkpoint intervals are tested without sleeping."""

    def __init__(self, monkeypatch, epoch_s: float, die_in_epoch: int | None = None) -> None:
        import lossbench.engine.checkpoint as checkpoint
        import lossbench.experiment.workflow
        import lossbench.engine.loop as train

        self.t, self.epochs, self.saved = 0.0, 0, []
        original_batches, original_save = train.train_batches, lossbench.experiment.workflow.save_checkpoint

        def batches(*args, **kwargs):
            self.epochs += 1
            if self.epochs == die_in_epoch:
                raise MemoryError("the process is gone")
            self.t += epoch_s
            return original_batches(*args, **kwargs)

        def save(path, **kwargs):
            self.saved.append(kwargs["loop"]["epoch"])  # the epoch a resumed run starts with
            original_save(path, **kwargs)

        monkeypatch.setattr(checkpoint, "monotonic", lambda: self.t)
        monkeypatch.setattr(train, "train_batches", batches)
        monkeypatch.setattr(lossbench.experiment.workflow, "save_checkpoint", save)


def test_checkpoints_follow_the_clock_not_the_epochs(compose_cfg, tmp_path, monkeypatch):
    """25 s epochs, a 60 s interval: checkpoints after epochs 3 (75 s) and 6 (150 s, 75 s after
    the last one), none after the others but the last, whose checkpoint marks the end of
    training (it resumes at epoch 9: nothing left to train) before the results are written;
    the run completes and removes its checkpoint."""
    clock = FakeClock(monkeypatch, epoch_s=25)
    run_in(compose_cfg, tmp_path / "run", *RUN, "trainer.epochs=8",
           "trainer.checkpoint_interval_s=60")
    assert clock.saved == [4, 7, 9]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()

    # an epoch count adds its own checkpoints, and each one restarts the clock: after epoch 5
    # (125 s), epoch 6 ends only 25 s later; the end of training is saved as above
    clock = FakeClock(monkeypatch, epoch_s=25)
    run_in(compose_cfg, tmp_path / "both", *RUN, "trainer.epochs=8",
           "trainer.checkpoint_interval_s=60", "trainer.checkpoint_every=5")
    assert clock.saved == [4, 6, 9]
    # the clock off: no checkpoint during training, only the one that marks its end
    clock = FakeClock(monkeypatch, epoch_s=25)
    run_in(compose_cfg, tmp_path / "never", *RUN, "trainer.epochs=8",
           "trainer.checkpoint_interval_s=0")
    assert clock.saved == [9]
    assert not (tmp_path / "never" / "checkpoint.pt").exists()


def test_a_slow_checkpoint_stretches_the_interval():
    """Writing checkpoints costs at most 2 % of the run: one that took 3 s is next due 150 s
    later, not 60 s later."""
    from lossbench.engine.checkpoint import CheckpointClock

    t = [0.0]
    clock = CheckpointClock(interval_s=60, now=lambda: t[0])
    t[0] = 59.9
    assert not clock.due(1)
    t[0] = 60.0
    assert clock.due(2)

    def slow_write():
        t[0] += 3.0

    clock.save(slow_write)  # ends at 63 s
    t[0] = 63 + 149.9
    assert not clock.due(3)
    t[0] = 63 + 150
    assert clock.due(4)
    assert not CheckpointClock(interval_s=0, now=lambda: 1e9).due(5)


def test_crashed_run_resumes_from_its_last_checkpoint(compose_cfg, tmp_path, monkeypatch):
    """A run that dies without a word (killed, out of memory) in epoch 6 left checkpoint.pt
    from the end of epoch 3 (its clock's last one) and no metrics.json: resume= redoes epochs 4
    to 6 and ends identical to the run that never stopped."""
    overrides = (*RUN, "trainer.epochs=8", "trainer.checkpoint_interval_s=60")
    run_in(compose_cfg, tmp_path / "whole", *overrides)

    clock = FakeClock(monkeypatch, epoch_s=25, die_in_epoch=6)
    with pytest.raises(MemoryError):
        run_in(compose_cfg, tmp_path / "crashed", *overrides)
    monkeypatch.undo()
    assert clock.saved == [4]
    assert not (tmp_path / "crashed" / "metrics.json").exists()
    assert torch.load(tmp_path / "crashed" / "checkpoint.pt",
                      weights_only=True)["loop"]["epoch"] == 4
    run_in(compose_cfg, tmp_path / "ignored", f"resume={tmp_path / 'crashed'}")
    assert_same_result(tmp_path / "crashed", tmp_path / "whole")


def test_second_signal_stops_at_once():
    from lossbench.engine.checkpoint import StopOnSignal

    previous = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested == signal.SIGTERM  # the first one only asks
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    import os

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("LOSSBENCH_DEBUG", None)
    return subprocess.Popen([*lossbench_cmd(), "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_ctrl_c_in_the_cli_then_resume(cli, tmp_path):
    """A real SIGINT to `lossbench train` once its first epoch line is out: exit status 130, one
    line saying how to continue, checkpoint.pt; `resume=` then ends like the uninterrupted run."""
    args = [*RUN, "trainer.epochs=60"]
    stopped = tmp_path / "stopped"
    proc = _start([*args, f"hydra.run.dir={stopped}"], tmp_path)
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "lossbench train resume=stopped" in err  # relative to where it was started
    metrics = read_metrics(stopped)
    assert metrics["status"] == "interrupted"
    assert metrics["stopped_at"]["epoch"] < 60, "the signal came too late to test anything"
    assert (stopped / "checkpoint.pt").is_file()

    resumed = cli("train", f"resume={stopped}", "hydra.run.dir=elsewhere")
    assert resumed.returncode == 0, resumed.stderr
    assert not (tmp_path / "elsewhere").exists()
    whole = cli("train", *args, f"hydra.run.dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    assert_same_result(stopped, tmp_path / "whole")


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_instead_of_going_on(tmp_path):
    """In a sweep the first Ctrl-C checkpoints the running job and ends the sweep (a failed job
    lets the others go on, an interruption does not)."""
    sweep = tmp_path / "sweep"
    proc = _start(["-m", "seed=0,1", *RUN, "trainer.epochs=60", f"hydra.sweep.dir={sweep}"],
                  tmp_path)
    # a sweep's console is one line per job: the first job's epochs show in its train.log
    import time

    # each job's folder is named by its overrides, as Hydra hands them to the job
    from test_sweep import job

    job0, job1 = job(sweep, "seed=0", *RUN, "trainer.epochs=60"), \
        job(sweep, "seed=1", *RUN, "trainer.epochs=60")
    log = job0 / "train.log"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and "epoch {'epoch': 1," in log.read_text():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # the advice continues the whole sweep (resume= of job 0 would never run job 1)
    assert "Traceback" not in err and "resume=" not in err
    assert (f"Continue it with: lossbench train -m seed=0,1 {' '.join(RUN)} trainer.epochs=60 "
            f"hydra.sweep.dir={sweep}") in err
    assert read_metrics(job0)["status"] == "interrupted"
    assert not (job1 / "metrics.json").exists()


@pytest.mark.slow
def test_ctrl_c_over_two_processes_then_resume(cli, tmp_path):
    """trainer.devices=2: a terminal's Ctrl-C reaches every process (here: the whole process
    group); the ranks stop together at the end of an epoch, rank 0 writes the checkpoint, and
    the resumed run (two processes again) ends like the uninterrupted one."""
    import os

    args = ["trainer.devices=2", "trainer.device=cpu", "trainer.epochs=30",
            "trainer.early_stopping=false", "print_config=false", "trainer.plots=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LOSSBENCH_DEBUG", None)
    proc = subprocess.Popen([*lossbench_cmd(), "train", *args, "hydra.run.dir=stopped"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            os.killpg(proc.pid, signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume=stopped" in err
    metrics = read_metrics(tmp_path / "stopped")
    assert metrics["status"] == "interrupted" and metrics["stopped_at"]["step"] == 0

    resumed = cli("train", "resume=stopped")
    assert resumed.returncode == 0, resumed.stderr
    whole = cli("train", *args, "hydra.run.dir=whole")
    assert whole.returncode == 0, whole.stderr
    assert_same_result(tmp_path / "stopped", tmp_path / "whole")


def test_the_last_good_state_kept_in_memory_does_not_follow_training():
    """What a divergence writes is the state at the end of the last good epoch: a copy that the
    following steps (weights, Adam's moments, its step count) leave alone."""
    from lossbench.engine.checkpoint import training_states

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)

    def step():
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
        scheduler.step()

    step()
    kept = training_states(model, torch.nn.Identity(), optimizer, scheduler, clone=True)
    live = training_states(model, torch.nn.Identity(), optimizer, scheduler)
    before = {k: v.clone() for k, v in kept["model"].items()}
    moments = kept["optimizer"]["state"][0]["exp_avg"].clone()
    step()
    assert all(torch.equal(kept["model"][k], before[k]) for k in before)
    assert not torch.equal(live["model"]["weight"], before["weight"])
    assert torch.equal(kept["optimizer"]["state"][0]["exp_avg"], moments)
    assert int(kept["optimizer"]["state"][0]["step"]) == 1
    assert kept["scheduler"]["last_epoch"] == 1 and scheduler.state_dict()["last_epoch"] == 2


def _interrupted(compose_cfg, monkeypatch, run_dir: Path, *overrides: str) -> Path:
    """A run stopped by SIGINT at step 2 of epoch 1, as an interrupted run is left."""
    from lossbench.errors import Interrupted

    interrupt_at(monkeypatch, 1, 2)
    with pytest.raises(Interrupted):
        run_in(compose_cfg, run_dir, *RUN, "trainer.epochs=3", *overrides)
    monkeypatch.undo()
    assert (run_dir / "checkpoint.pt").is_file()
    return run_dir


def test_resume_refuses_a_checkpoint_of_another_run(compose_cfg, tmp_path, monkeypatch, cli):
    """A checkpoint of ce seed 0 copied into a gce seed 1 run folder would train ce seed 0
    under gce's name: resume= says so in one line, and trains nothing."""
    ce = _interrupted(compose_cfg, monkeypatch, tmp_path / "ce", "loss=ce", "seed=0")
    gce = _interrupted(compose_cfg, monkeypatch, tmp_path / "gce", "loss=gce", "seed=1")
    (gce / "checkpoint.pt").write_bytes((ce / "checkpoint.pt").read_bytes())
    before = (gce / "metrics.json").read_bytes()
    proc = cli("train", "resume=gce")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "of another run" in lines[0] and "seed: 0 in the checkpoint, 1 in" in lines[0]
    assert (gce / "metrics.json").read_bytes() == before  # nothing written


def test_resume_refuses_data_that_changed_under_the_run(compose_cfg, tmp_path, monkeypatch,
                                                       cli):
    """The CSV under an interrupted run changed: continuing would mix two datasets."""
    from sklearn.datasets import load_iris

    frame = load_iris(as_frame=True).frame
    data = tmp_path / "iris.csv"
    frame.to_csv(data, index=False)
    run = _interrupted(compose_cfg, monkeypatch, tmp_path / "run", "dataset=csv",
                       f"dataset.path={data}", "dataset.target=target")
    frame.iloc[0, 0] += 1.0  # one value of 600
    frame.to_csv(data, index=False)
    proc = cli("train", "resume=run")
    assert proc.returncode == 2, proc.stderr
    assert "the data changed since checkpoint.pt was written" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert read_metrics(run)["status"] == "interrupted"
    frame.iloc[0, 0] -= 1.0  # the same data again: resume goes on
    frame.to_csv(data, index=False)
    again = cli("train", "resume=run")
    assert again.returncode == 0, again.stderr
    assert read_metrics(run)["status"] == "completed"

"""The scheduler builder: the scheduler's class decides how it is built and when it steps."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import read_metrics
from lossbench.errors import UserError
from lossbench.engine.optim import scheduler_stepping
from lossbench.experiment.builders import build_scheduler

MYSCHEDULERS = '''
import torch


class WarmCycle(torch.optim.lr_scheduler.OneCycleLR):
    """A one-cycle schedule under a name of its own."""


class PatientPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """Plateau detection under a name of its own."""


def plateau(optimizer, patience=2):
    """A factory function, not a class: classified by what it returns."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=patience)
'''


@pytest.fixture
def myschedulers(tmp_path, monkeypatch):
    (tmp_path / "myschedulers.py").write_text(MYSCHEDULERS)
    monkeypatch.syspath_prepend(str(tmp_path))


def optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


@pytest.mark.parametrize("option, steps", [("onecycle", "batch"), ("step", "epoch"),
                                           ("cosine", "epoch"), ("plateau", "metric")])
def test_each_shipped_scheduler_steps_as_its_class_says(compose_cfg, option, steps):
    cfg = compose_cfg(f"scheduler={option}")
    schedule = build_scheduler(cfg.scheduler, optimizer(), total_steps=37)
    assert schedule.steps == steps
    assert type(schedule.scheduler).__name__ == cfg.scheduler._target_.rsplit(".", 1)[-1]
    if steps == "batch":  # sized in steps: the run's batches per epoch × planned epochs
        assert schedule.scheduler.total_steps == 37


def test_no_scheduler_is_a_constant_learning_rate(compose_cfg):
    schedule = build_scheduler(compose_cfg("scheduler=none").scheduler, optimizer(), 37)
    assert schedule.scheduler is None


def test_subclasses_are_classified_by_their_class_not_their_name(myschedulers):
    from myschedulers import PatientPlateau, WarmCycle

    assert scheduler_stepping(WarmCycle) == "batch"
    assert scheduler_stepping(PatientPlateau) == "metric"
    assert scheduler_stepping(torch.optim.lr_scheduler.ExponentialLR) == "epoch"
    cfg = OmegaConf.create({"_target_": "myschedulers.WarmCycle", "_partial_": True,
                            "max_lr": 0.01})
    schedule = build_scheduler(cfg, optimizer(), total_steps=12)
    assert schedule.steps == "batch" and schedule.scheduler.total_steps == 12


def test_a_factory_function_is_classified_by_what_it_returns(myschedulers):
    cfg = OmegaConf.create({"_target_": "myschedulers.plateau", "_partial_": True,
                            "patience": 3})
    schedule = build_scheduler(cfg, optimizer(), total_steps=12)
    assert schedule.steps == "metric" and schedule.scheduler.patience == 3


def test_a_wrong_scheduler_argument_is_the_users_error(compose_cfg):
    cfg = compose_cfg("scheduler=plateau", "scheduler.mode=sideways")
    with pytest.raises(UserError,
                       match=r"scheduler \(torch\.optim\.lr_scheduler\.ReduceLROnPlateau\): .*sideways"):
        build_scheduler(cfg.scheduler, optimizer(), 37)


def test_a_run_with_an_own_one_cycle_class_anneals_over_exactly_its_steps(compose_cfg, tmp_path,
                                                                         myschedulers):
    from lossbench.experiment.run import run

    cfg = compose_cfg("scheduler=onecycle", "dataset=iris", "trainer=smoke",
                      "trainer.plots=false", "trainer.epochs=3")
    with open_dict(cfg):
        cfg.scheduler._target_ = "myschedulers.WarmCycle"
    run(cfg)
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    steps = read_metrics(tmp_path / "run")["budget"]["steps_run"]
    assert len(lrs) == 3 and steps % 3 == 0
    # the same schedule stepped by hand over the run's batches, sized for all of them: the
    # run's own class was told the total and stepped every batch
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer(), max_lr=0.01, pct_start=0.3,
                                                    total_steps=steps)
    expected = []
    for _ in range(3):
        for _ in range(steps // 3):
            reference.optimizer.step()
            reference.step()
        expected.append(reference.get_last_lr()[0])
    assert lrs == pytest.approx(expected)


SCHEDULERS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "conf" / "scheduler")
                    .glob("*.yaml"))


@pytest.mark.parametrize("option", SCHEDULERS)
def test_every_shipped_scheduler_runs_with_the_automatic_budget(compose_cfg, tmp_path, option):
    """`epochs: auto` is resolved before any scheduler is built: an interpolation of
    `${trainer.epochs}` (cosine's T_max) reads the planned number of epochs, never `auto`."""
    from lossbench.experiment.run import run

    cfg = compose_cfg(f"scheduler={option}", "dataset=iris", "trainer=smoke",
                      "trainer.plots=false", "trainer.epochs=auto", "trainer.min_steps=12",
                      "trainer.max_batches=1")
    run(cfg)
    metrics = read_metrics(tmp_path / "run")
    with open(tmp_path / "run" / "history.csv", newline="") as f:
        lrs = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(lrs) == metrics["budget"]["epochs_run"] == 50  # auto: at least 50 epochs
    if option == "cosine":  # annealed over exactly the planned 50 epochs
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=cfg.optimizer.lr)
        reference = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=50)
        expected = []
        for _ in range(50):  # history's lr: the one each epoch trained with
            expected.append(reference.get_last_lr()[0])
            opt.step()
            reference.step()
        assert lrs == pytest.approx(expected, rel=1e-6)


def test_the_readme_cosine_command_trains_with_the_automatic_budget(cli, tmp_path):
    proc = cli("train", "scheduler=cosine", "dataset=iris", "trainer=smoke",
               "trainer.epochs=auto", "trainer.plots=false")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (run_dir,) = [p.parent for p in tmp_path.rglob("metrics.json")]
    assert read_metrics(run_dir)["budget"]["epochs_run"] == 50

"""`fit_replicas` is `fit` for every replica: in float64, each replica's FitResult (history rows,
selected epoch, epochs run, early stop, status), best and last weights and every checkpoint it
saves equal those of `engine.loop.fit` on its separate run, through early stopping at different
epochs, a replica diverging, schedulers, Ctrl-C and resuming; what it cannot make exact is
refused with its reason."""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from rich.console import Console
from torch import nn

import lossbench
from lossbench.data import Split, Splits
from lossbench.data.noise import symmetric_noise
from lossbench.engine.checkpoint import capture_rng, training_states
from lossbench.engine.group_fit import ReplicaRun, fit_replicas
from lossbench.engine.loop import Settings, fit
from lossbench.engine.progress import EpochProgress
from lossbench.engine.replicas import StackError
from lossbench.experiment.builders import seed_everything
from lossbench.models import CNN, MLP

TOLERANCE = 1e-9
# Adam's moments and SGD's momentum are averages of gradients, which rounding moves more, in
# relative terms, than the weights (observed: 1e-10 where the weights agree to 1e-12); a value
# of 1e-13 or less is rounding noise itself (the bias before a BatchNorm has no gradient).
OPTIMIZER_TOLERANCE, NOISE = 1e-7, 1e-13
CONF = Path(lossbench.__file__).parent / "conf"
CPU = torch.device("cpu")
TRAINER = dict(epochs=4, batch_size=64, eval_batch_size=512, grad_clip=None,
               early_stopping=False, patience=2, monitor="auto", mode="auto", min_steps=0,
               keep="best", select_on="noisy", max_batches=None, checkpoint_interval_s=0,
               checkpoint_every=1, precision=32, devices=1, compile=False)


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """1,100 standardised digits: 600 to train, 300 to validate, 200 to test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x[:1100]
    return (x - x.mean(0)) / (x.std(0) + 1e-8), y[:1100]


@dataclass
class Job:
    """One run of a group: what may differ inside a stack."""

    seed: int
    loss: str = "ce"  # a conf/loss option
    noise: float = 0.0  # symmetric label noise on train and validation, drawn from the seed
    lr: float = 1e-2
    optimizer: type = torch.optim.Adam
    options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)  # MLP options (cnn=True: lossbench's CNN)
    trainer: dict = field(default_factory=dict)  # over TRAINER
    scheduler: tuple | None = None  # (class, options)
    make_loss: type | None = None  # a loss of the test's own, in place of conf/loss/<loss>
    data_seed: int | None = None  # a split of its own: the rows shuffled by this seed


def splits_of(job: Job, images: bool) -> Splits:
    x, y = digits()
    if job.data_seed is not None:
        rows = np.random.default_rng(job.data_seed).permutation(len(y))
        x, y = x[rows], y[rows]
    x = torch.tensor(x).view(-1, 1, 8, 8) if images else torch.tensor(x)
    clean = torch.tensor(y)
    noisy = (torch.tensor(symmetric_noise(y, job.noise, 10, np.random.default_rng(job.seed)))
             if job.noise else None)

    def part(a: int, b: int, noisy_labels: bool = True) -> Split:
        if noisy is None:
            return Split(x=x[a:b], y=clean[a:b])
        return Split(x=x[a:b], y=noisy[a:b] if noisy_labels else clean[a:b], y_clean=clean[a:b])

    return Splits(train=part(0, 600), val=part(600, 900), test=part(900, 1100, False),
                  task="multiclass", name="digits", num_classes=10,
                  class_names=[str(k) for k in range(10)], sample_shape=tuple(x.shape[1:]))


def build(job: Job, saves: list | None = None) -> ReplicaRun:
    """The run's parts as `experiment.workflow` makes them: labels from the seed, the global
    generators seeded, the loss, the model, the optimizer, the scheduler; the batch-order
    generator; `rng` where its training starts. `saves` receives its checkpoints."""
    images = bool(job.model.get("cnn"))
    splits = splits_of(job, images)
    seed_everything(job.seed)
    loss_fn = (job.make_loss() if job.make_loss is not None
               else instantiate(OmegaConf.load(CONF / "loss" / f"{job.loss}.yaml")))
    options = {k: v for k, v in job.model.items() if k != "cnn"}
    model = CNN([1, 8, 8], 10, **options) if images else MLP([64], 10, **options)
    optimizer = job.optimizer(model.parameters(), lr=job.lr, **job.options, foreach=False)
    scheduler = job.scheduler[0](optimizer, **job.scheduler[1]) if job.scheduler else None
    generator = torch.Generator().manual_seed(job.seed)
    run = ReplicaRun(model, loss_fn, optimizer, scheduler, splits, "logits",
                     Settings({**TRAINER, **job.trainer}), generator, capture_rng(generator),
                     progress=EpochProgress(Console(quiet=True), 0, "", enabled=False),
                     name=job.loss)
    if saves is not None:
        def save(loop, states=None):
            states = states or training_states(model, loss_fn, optimizer, scheduler, clone=True)
            saves.append(torch_round_trip({"loop": loop, **states}))
        run.save = save
    return run


def torch_round_trip(checkpoint: dict) -> dict:
    """What checkpoint.pt gives back: saved and loaded as `save_checkpoint`/`load_checkpoint`."""
    import io

    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def alone(run: ReplicaRun, stop=None):
    result = fit(run.model, run.loss_fn, run.optimizer, run.scheduler, run.splits, run.head,
                 run.trainer, CPU, run.generator, run.progress, on_epoch=run.on_epoch,
                 resume=run.resume, save=run.save, stop=stop)
    return result, run


def same(ours, theirs, where: str = "") -> None:
    """Equal to 1e-9 relative (floats, tensors; optimizer state OPTIMIZER_TOLERANCE), exactly
    otherwise (RNG states, counters, names); `seconds` is a clock's."""
    if isinstance(theirs, dict):
        assert sorted(ours) == sorted(theirs), where
        for key in theirs:
            if key != "seconds":
                same(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, (list, tuple)):
        assert type(ours) is type(theirs) and len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, where
        if theirs.is_floating_point():
            tolerance = OPTIMIZER_TOLERANCE if "optimizer" in where else TOLERANCE
            scale = theirs.abs().max() if theirs.numel() else 1
            assert bool(((ours - theirs).abs() <= tolerance * scale + NOISE).all()
                        | (ours.isnan() & theirs.isnan()).all()), where
        else:
            assert torch.equal(ours, theirs), where  # RNG states, counters: exactly
    elif isinstance(theirs, float):
        assert isinstance(ours, float), where
        assert (math.isnan(ours) and math.isnan(theirs)) or math.isclose(
            ours, theirs, rel_tol=TOLERANCE, abs_tol=1e-300), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


def assert_same_fit(result, run, reference, reference_run, where: str) -> None:
    for key in ("best_epoch", "epochs_run", "stopped_early", "status", "steps_run",
                "selection"):
        assert getattr(result, key) == getattr(reference, key), (where, key)
    same(result.stopped_at, reference.stopped_at, f"{where}.stopped_at")
    same(result.history, reference.history, f"{where}.history")
    for key in ("best_value", "best_tie"):
        same(getattr(result, key), getattr(reference, key), f"{where}.{key}")
    same(result.last_state, reference.last_state, f"{where}.last_state")
    same(run.model.state_dict(), reference_run.model.state_dict(), f"{where}.best weights")
    same(run.optimizer.state_dict(), reference_run.optimizer.state_dict(),
         f"{where}.optimizer")


def check_group(jobs: list[Job], checkpoints: bool = False):
    """Every replica of a group against its separate run; returns the group's results, runs
    and checkpoints."""
    separate_saves = [[] for _ in jobs]
    references = [alone(build(job, separate_saves[r] if checkpoints else None))
                  for r, job in enumerate(jobs)]
    group_saves = [[] for _ in jobs]
    runs = [build(job, group_saves[r] if checkpoints else None) for r, job in enumerate(jobs)]
    process_rng = torch.get_rng_state()
    results = fit_replicas(runs, CPU)
    assert torch.equal(torch.get_rng_state(), process_rng)  # the replicas' draws are their own
    for r, (result, run) in enumerate(zip(results, runs)):
        assert_same_fit(result, run, *references[r], f"replica {r}")
        if checkpoints:
            assert len(group_saves[r]) == len(separate_saves[r])
            same(group_saves[r], separate_saves[r], f"replica {r} checkpoints")
    return results, runs, group_saves


MIXED = [  # seeds, losses, noise and lr mixed in one group
    Job(seed=0, loss="ce", lr=1e-2),
    Job(seed=1, loss="gce", noise=0.2, lr=3e-3),
    Job(seed=2, loss="sce", noise=0.4, lr=1e-2, trainer=dict(grad_clip=0.5)),
    Job(seed=0, loss="focal", noise=0.2, lr=5e-3),
    Job(seed=3, loss="label_smoothing", lr=2e-2),
]


def test_a_mixed_group_with_dropout_is_its_separate_runs_checkpoints_included():
    jobs = [replace(job, model=dict(dropout=0.3)) for job in MIXED]
    results, runs, saves = check_group(jobs, checkpoints=True)
    assert [r.status for r in results] == ["completed"] * 5
    assert [len(s) for s in saves] == [4] * 5  # epochs 1-3, then the end of training
    assert [s["loop"]["epoch"] for s in saves[0]] == [2, 3, 4, 5]
    # the replicas did differ: a group that mixed them up would not have passed
    assert results[0].history[-1]["val_loss"] != results[3].history[-1]["val_loss"]


def test_replicas_with_splits_of_their_own_train_on_their_own_samples():
    """Data seeds that draw different splits (`-m seed=0,1,2` with `data_seed: null`): each
    replica reads its own training samples and validates on its own split."""
    jobs = [replace(job, data_seed=job.seed + 10, model=dict(dropout=0.2)) for job in MIXED[:4]]
    results, runs, _ = check_group(jobs)
    assert not torch.equal(runs[0].splits.train.x, runs[1].splits.train.x)


@pytest.mark.parametrize("eval_batch_size,chunks", [(64, [5]), (128, [2, 2, 1])])
def test_validation_runs_all_replicas_at_once_or_a_few_at_a_time(eval_batch_size, chunks,
                                                                monkeypatch):
    """The stacked validation forward takes as many replicas at once as keep it within the
    training step's samples (R × batch_size): all five here at 64, two at a time at 128 (at
    the default 512, one by one); each way every row is the separate run's."""
    from lossbench.engine import replicas

    seen, call = [], replicas.StackedModel.__call__

    def counted(self, x, rows=None):
        if not self.training:
            seen.append(x.shape[0])
        return call(self, x, rows)

    monkeypatch.setattr(replicas.StackedModel, "__call__", counted)
    jobs = [replace(job, trainer={**job.trainer, "eval_batch_size": eval_batch_size},
                    data_seed=job.seed + 10 if job.seed % 2 else None) for job in MIXED]
    check_group(jobs)
    assert seen[:len(chunks)] == chunks


def test_a_cnn_with_batchnorm_and_dropout_is_its_separate_runs():
    jobs = [Job(seed=s, loss=loss, noise=noise, lr=lr, optimizer=torch.optim.SGD,
                options=dict(momentum=0.9), model=dict(cnn=True, channels=(4, 8), dropout=0.25),
                trainer=dict(epochs=3))
            for s, loss, noise, lr in [(0, "ce", 0.0, 0.05), (1, "gce", 0.3, 0.02),
                                       (2, "sce", 0.0, 0.05), (3, "focal", 0.2, 0.03)]]
    check_group(jobs)


def test_early_stopping_ends_replicas_at_different_epochs():
    stopping = dict(epochs=12, early_stopping=True, patience=1, monitor="val_loss")
    jobs = [replace(job, lr=job.lr * 3, trainer={**job.trainer, **stopping}) for job in MIXED]
    jobs[4].trainer["patience"] = 3  # its own patience
    results, _, _ = check_group(jobs)
    assert any(r.stopped_early for r in results)
    assert len({r.epochs_run for r in results}) > 1  # they left the stack at different epochs


def test_a_diverging_replica_leaves_and_the_others_go_on_as_their_separate_runs():
    # Adam's first step moves every weight by about lr: 1e200 overflows the next forward
    jobs = [Job(seed=s, loss=loss, lr=lr, model=dict(dropout=0.2))
            for s, loss, lr in [(0, "ce", 1e-2), (1, "gce", 1e200), (2, "focal", 5e-3)]]
    results, _, saves = check_group(jobs, checkpoints=True)
    assert [r.status for r in results] == ["completed", "diverged", "completed"]
    assert results[1].stopped_at["phase"] == "train" and results[1].stopped_at["step"] <= 3
    assert math.isnan(results[1].stopped_at["loss"])
    assert results[0].epochs_run == 4 and results[1].epochs_run == 0
    assert [len(s) for s in saves] == [4, 0, 4]  # it diverged before its first checkpoint


class Switched(nn.Module):
    """Cross-entropy with the epoch hooks lossbench calls: its weights are selectable from
    epoch 3 on (`first_selectable_epoch`), and from epoch `nan_from` on (`on_epoch_start`) its
    loss is NaN, a divergence at a known epoch."""

    def __init__(self, nan_from: int | None = None) -> None:
        super().__init__()
        self.nan_from, self.epoch = nan_from, 0

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch

    def first_selectable_epoch(self, epochs: int) -> int:
        return 3

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(out, y)
        return loss * math.nan if self.nan_from and self.epoch >= self.nan_from else loss


def test_each_replicas_epoch_hooks_and_a_later_divergence_with_its_last_good_checkpoint():
    """Checkpoints kept in memory (none due by the clock) until one replica diverges at epoch
    3: it writes its epoch-2 state, as its separate run does, and the others go on."""
    trainer, model = dict(checkpoint_every=0, epochs=5), dict(dropout=0.2)
    jobs = [Job(seed=0, loss="switched", make_loss=Switched, trainer=trainer, model=model),
            Job(seed=1, loss="nan-at-3", make_loss=functools.partial(Switched, 3),
                trainer=trainer, model=model),
            Job(seed=2, loss="ce", noise=0.2, trainer=trainer, model=model)]
    results, _, saves = check_group(jobs, checkpoints=True)
    assert [r.status for r in results] == ["completed", "diverged", "completed"]
    assert results[1].stopped_at == {"epoch": 3, "step": 1, "steps": 10, "loss": results[1]
                                     .stopped_at["loss"], "phase": "train"}
    assert results[1].epochs_run == 2 and results[1].best_epoch == 0  # none selectable yet
    assert results[0].best_epoch >= 3 and results[2].best_epoch >= 1
    assert [len(s) for s in saves] == [1, 1, 1]  # the end of training; the last good state
    assert saves[1][0]["loop"]["epoch"] == 3 and saves[0][0]["loop"]["epoch"] == 6


@pytest.mark.parametrize("scheduler", [
    "step", "plateau", "one-cycle"])
def test_each_replica_follows_its_own_scheduler(scheduler):
    lr = torch.optim.lr_scheduler
    specs = {"step": [(lr.StepLR, dict(step_size=1, gamma=g)) for g in (0.5, 0.8, 0.3)],
             "plateau": [(lr.ReduceLROnPlateau, dict(patience=0, factor=f, threshold=t))
                         for f, t in ((0.5, 0.3), (0.2, 0.5), (0.7, 0.9))],
             "one-cycle": [(lr.OneCycleLR, dict(max_lr=m, total_steps=40))
                           for m in (0.01, 0.03, 0.02)]}[scheduler]
    jobs = [replace(MIXED[r], scheduler=spec) for r, spec in enumerate(specs)]
    results, _, _ = check_group(jobs)
    for result in results:  # the lr did move, each replica's its own way
        assert len({row["lr"] for row in result.history}) > 1
    assert results[0].history[-1]["lr"] != results[1].history[-1]["lr"]


class StopAt:
    """Ctrl-C while epoch `epoch` is validated (as the signal handler sets it)."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.requested = epoch, None

    def __call__(self, row: dict) -> None:
        if row["epoch"] == self.epoch:
            self.requested = "SIGINT"


def test_ctrl_c_checkpoints_every_replica_and_each_resumes_as_its_separate_run():
    jobs = [replace(job, model=dict(dropout=0.2)) for job in MIXED[:4]]
    # separately: each run stopped after epoch 2, then resumed from its checkpoint with fit
    complete = [alone(build(job)) for job in jobs]
    separate_saves = [[] for _ in jobs]
    stopped = []
    for r, job in enumerate(jobs):
        run, stop = build(job, separate_saves[r]), StopAt(2)
        run.on_epoch = stop
        stopped.append(alone(run, stop))
    # the group: stopped by one replica's epoch 2, every replica checkpointed
    group_saves = [[] for _ in jobs]
    runs, stop = [build(job, group_saves[r]) for r, job in enumerate(jobs)], StopAt(2)
    runs[0].on_epoch = stop
    results = fit_replicas(runs, CPU, stop=stop)
    for r, result in enumerate(results):
        assert result.status == "interrupted" and result.stopped_at["epoch"] == 3
        assert_same_fit(result, runs[r], *stopped[r], f"replica {r}")
        same(group_saves[r], separate_saves[r], f"replica {r} checkpoints")
    # a replica's checkpoint resumes with plain fit as the uninterrupted separate run
    assert_same_fit(*alone(resumed_from(jobs[1], group_saves[1][-1])), *complete[1],
                    "resumed alone")
    # and the group resumes from its checkpoints as the uninterrupted runs
    resumed = [resumed_from(job, saves[-1]) for job, saves in zip(jobs, group_saves)]
    for r, result in enumerate(fit_replicas(resumed, CPU)):
        assert_same_fit(result, resumed[r], *complete[r], f"replica {r} resumed in a group")


def resumed_from(job: Job, checkpoint: dict) -> ReplicaRun:
    """The run built again and loaded from its checkpoint, as `workflow.build` does (from a
    fresh copy: a loaded optimizer trains its state tensors in place)."""
    checkpoint = torch_round_trip(checkpoint)
    run = build(job)
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.resume = checkpoint["loop"]
    return run


def with_loader(run: ReplicaRun) -> None:
    train = run.splits.train
    run.splits.train = Split(y=train.y, dataset=torch.utils.data.TensorDataset(train.x, train.y))


def mid_epoch(run: ReplicaRun) -> None:
    run.resume = {"batch": 3}


def other_shape(run: ReplicaRun) -> None:
    x = run.splits.train.x
    run.splits.train = Split(x=torch.cat([x, x[:, :1]], 1), y=run.splits.train.y)


def composite(run: ReplicaRun) -> None:
    run.loss_fn = instantiate(OmegaConf.create({
        "_target_": "lossbench.losses.MixedLoss",
        "losses": {"ce": {"_target_": "lossbench.losses.CrossEntropyLoss"}}}))


REFUSALS = {
    "several processes": (lambda run: run.trainer.update(devices=2), "several processes"),
    "mixed precision": (lambda run: run.trainer.update(precision="bf16"), "mixed precision"),
    "torch.compile": (lambda run: run.trainer.update(compile=True), "torch.compile"),
    "a DataLoader": (with_loader, "through a DataLoader"),
    "a mid-epoch checkpoint": (mid_epoch, "mid-epoch does not resume in a stack"),
    "a composite loss": (composite, "composite loss's parts"),
    "another batch size": (lambda run: run.trainer.update(batch_size=32),
                           "share trainer.batch_size"),
    "samples of another shape": (other_shape, "as many samples of one shape"),
    "Adagrad (the engine's own)": (
        lambda run: setattr(run, "optimizer", torch.optim.Adagrad(run.model.parameters())),
        "Adagrad has no stacked step"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_fit_replicas_cannot_make_exact_is_refused_with_its_reason(case):
    change, reason = REFUSALS[case]
    runs = [build(Job(seed=s)) for s in range(2)]
    change(runs[1])
    before = {k: v.clone() for k, v in runs[0].model.state_dict().items()}
    with pytest.raises(StackError, match=re.escape(reason)):
        fit_replicas(runs, CPU)
    same(runs[0].model.state_dict(), before)  # refused before any step


def test_a_nan_in_one_replicas_loss_reaches_no_other_replicas_gradient():
    """The sum of the losses backpropagates each one into its own replica's slices only."""
    from lossbench.engine.replicas import ReplicaBatches, Replicas, StackedModel, StackedOptimizer

    runs = [build(Job(seed=s)) for s in range(3)]

    class Poisoned(nn.Module):
        def forward(self, out, y):
            return nn.functional.cross_entropy(out, y) * torch.tensor(float("nan"))

    modules = [r.model for r in runs]
    model = StackedModel(modules, [r.rng["torch"] for r in runs])
    optimizer = StackedOptimizer.from_torch([r.optimizer for r in runs], modules, model.params)
    x = runs[0].splits.train.x
    group = Replicas(model, [runs[0].loss_fn, Poisoned(), runs[2].loss_fn], optimizer,
                     ReplicaBatches(x, torch.stack([r.splits.train.y for r in runs]),
                                    [r.generator for r in runs], 64))
    _, batches = group.batches.epoch()
    xb, yb = next(batches)
    out = model(xb)
    loss = torch.stack([f(out[r], yb[r]) for r, f in enumerate(group.losses)])
    loss.sum().backward()
    for name, p in model.params.items():
        assert p.grad[1].isnan().all(), name
        assert p.grad[[0, 2]].isfinite().all() and p.grad[[0, 2]].abs().sum() > 0, name

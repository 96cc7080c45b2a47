"""Stacked replicas are their separate runs: in float64, every replica's weights, optimizer state
and training losses equal those of the same run trained alone (engine.loop.train_epoch with
torch.optim, foreach=False) to 1e-9 relative; what cannot stack exactly is refused, saying why."""
from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import lossbench
from lossbench.data import Split
from lossbench.data.noise import symmetric_noise
from lossbench.engine.batches import train_batches
from lossbench.engine.loop import train_epoch
from lossbench.engine.replicas import (ReplicaBatches, Replicas, StackError, StackedModel,
                                       StackedOptimizer, loss_refusal, random_state)
from lossbench.experiment.builders import seed_everything
from lossbench.models import MLP

TOLERANCE = 1e-9
BATCH = 64
EPOCHS = 3
CONF = Path(lossbench.__file__).parent / "conf"


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


@functools.cache
def digits() -> tuple[torch.Tensor, np.ndarray]:
    """600 standardised digits (600, 64) and their labels, as a training split."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[:600], y[:600]
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return torch.tensor(x, dtype=torch.float64), y


@dataclass
class Job:
    """One run of a group: what may differ inside a stack."""

    seed: int
    loss: str  # a conf/loss option
    noise: float = 0.0  # symmetric label noise rate, drawn from the seed
    optimizer: type = torch.optim.Adam
    options: dict = field(default_factory=dict)  # the optimizer's hyperparameters
    grad_clip: float | None = None
    model: dict = field(default_factory=dict)  # MLP options, equal inside a stack
    loss_options: dict = field(default_factory=dict)  # overrides of the loss's config


@dataclass
class Built:
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    rng: torch.Tensor  # the global generator's state where the run's training starts
    labels: torch.Tensor


def build(job: Job) -> Built:
    """The run's parts, made as `experiment.workflow` makes them: labels from the data seed,
    then the global generators seeded with the train seed, the loss, the model, the optimizer,
    and the batch-order generator seeded with the train seed."""
    _, y = digits()
    if job.noise:
        y = symmetric_noise(y, job.noise, 10, np.random.default_rng(job.seed))
    seed_everything(job.seed)
    loss_fn = instantiate(OmegaConf.merge(OmegaConf.load(CONF / "loss" / f"{job.loss}.yaml"),
                                          job.loss_options))
    model = MLP([64], 10, **job.model)
    rng = random_state(torch.device("cpu"))
    optimizer = job.optimizer(model.parameters(), **job.options, foreach=False)
    generator = torch.Generator().manual_seed(job.seed)
    return Built(model, loss_fn, optimizer, generator, rng, torch.tensor(y))


def alone(job: Job, epochs: int = EPOCHS) -> tuple[Built, list[torch.Tensor], torch.Tensor]:
    """The run trained on its own: (its parts after training, each epoch's (2,) sums, every
    batch's loss)."""
    run = build(job)
    x, _ = digits()
    sums, batch_losses = [], []
    for _ in range(epochs):
        run.model.train()
        _, batches = train_batches(Split(y=run.labels, x=x), BATCH, run.generator)
        losses: list[torch.Tensor] = []
        sums.append(train_epoch(run.model, run.loss_fn, run.optimizer, batches,
                                grad_clip=job.grad_clip, losses=losses))
        batch_losses += losses
    return run, sums, torch.stack(batch_losses)


def stack(runs: list[Built], jobs: list[Job]) -> Replicas:
    model = StackedModel([r.model for r in runs], [r.rng for r in runs])
    optimizer = StackedOptimizer.from_torch([r.optimizer for r in runs], [r.model for r in runs],
                                            model.params, [j.grad_clip for j in jobs])
    batches = ReplicaBatches(digits()[0], torch.stack([r.labels for r in runs]),
                             [r.generator for r in runs], BATCH)
    return Replicas(model, [r.loss_fn for r in runs], optimizer, batches,
                    [j.loss for j in jobs])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def assert_same_weights(model: nn.Module, reference: nn.Module) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for name in theirs:
        assert relative(ours[name], theirs[name]) <= TOLERANCE, name


def assert_same_optimizer(optimizer: torch.optim.Optimizer, reference: torch.optim.Optimizer
                          ) -> None:
    ours, theirs = optimizer.state_dict(), reference.state_dict()
    assert ours["param_groups"] == theirs["param_groups"]
    assert sorted(ours["state"]) == sorted(theirs["state"]) and theirs["state"]
    for i, state in theirs["state"].items():
        assert sorted(ours["state"][i]) == sorted(state)
        for key, value in state.items():
            if key == "step":
                assert ours["state"][i][key].dtype == value.dtype
                assert float(ours["state"][i][key]) == float(value)
            else:
                assert relative(ours["state"][i][key], value) <= TOLERANCE, (i, key)


MIXED = [  # seeds, losses, noise, lr, weight decay and clipping mixed in one stack
    dict(seed=0, loss="ce", options=dict(lr=1e-2)),
    dict(seed=1, loss="gce", noise=0.2, options=dict(lr=3e-3, weight_decay=1e-3)),
    dict(seed=2, loss="sce", noise=0.4, options=dict(lr=1e-2), grad_clip=0.5),
    dict(seed=0, loss="focal", noise=0.2, options=dict(lr=5e-3, weight_decay=1e-2)),
    dict(seed=3, loss="label_smoothing", options=dict(lr=2e-2)),
]
OPTIMIZERS = {
    "adam": (torch.optim.Adam, dict(betas=(0.9, 0.99), eps=1e-7)),
    "adamw": (torch.optim.AdamW, {}),
    "sgd-nesterov": (torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    "sgd": (torch.optim.SGD, dict(momentum=0.8, dampening=0.1)),
    "rmsprop": (torch.optim.RMSprop, dict(momentum=0.9)),
    "rmsprop-centered": (torch.optim.RMSprop, dict(centered=True, alpha=0.95)),
}


# and one replica with its own momentum (betas and eps for Adam, alpha and eps for RMSprop)
OWN_MOMENTUM = {"adam": dict(betas=(0.8, 0.95), eps=1e-6),
                "adamw": dict(betas=(0.8, 0.95), eps=1e-6),
                "sgd-nesterov": dict(momentum=0.5), "sgd": dict(momentum=0.5),
                "rmsprop": dict(alpha=0.9, eps=1e-6, momentum=0.5),
                "rmsprop-centered": dict(alpha=0.9, eps=1e-6)}


def mixed_jobs(optimizer: str, **model: object) -> list[Job]:
    cls, shared = OPTIMIZERS[optimizer]
    jobs = [Job(**{**spec, "options": {**shared, **spec["options"]}}, optimizer=cls,
                model=dict(model)) for spec in MIXED]
    jobs[3].options.update(OWN_MOMENTUM[optimizer])
    if cls is torch.optim.RMSprop:  # no bias correction: its first steps are ~1/sqrt(1 - alpha)
        for job in jobs:  # times Adam's, and its usual lr (conf/optimizer) a tenth of theirs
            job.options["lr"] /= 10
    return jobs


def train_and_check(jobs: list[Job]) -> Replicas:
    """Stack the jobs, train EPOCHS epochs, and check every replica against its separate run:
    weights, optimizer state, every batch's loss (1e-9) and each epoch's sums (exactly)."""
    references = [alone(job) for job in jobs]
    runs = [build(job) for job in jobs]
    group = stack(runs, jobs)
    batch_losses: list[torch.Tensor] = []
    sums = [group.train_epoch(batch_losses=batch_losses) for _ in range(EPOCHS)]
    batch_losses = torch.stack(batch_losses)  # (steps, R)
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    for r, (reference, reference_sums, reference_losses) in enumerate(references):
        assert_same_weights(runs[r].model, reference.model)
        assert_same_optimizer(runs[r].optimizer, reference.optimizer)
        assert relative(batch_losses[:, r], reference_losses) <= TOLERANCE
        for epoch in range(EPOCHS):  # the (Σ loss × size, count) of engine.loop.train_epoch
            assert torch.equal(sums[epoch][r], reference_sums[epoch])
    return group


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_replica_of_a_mixed_stack_trains_as_its_separate_run(optimizer):
    group = train_and_check(mixed_jobs(optimizer))
    # the replicas did train apart: a stack that mixed them up would not have passed
    weights = group.model.params["net.1.weight"]
    assert relative(weights[1], weights[3]) > 0.1


def test_replicas_with_equal_losses_share_one_call_and_stay_their_separate_runs():
    """Equal losses (class, hyperparameters) out of order in the stack: one vmapped call per
    loss, each replica's value its own (gce at another q is another loss)."""
    specs = [dict(seed=0, loss="ce"), dict(seed=1, loss="gce", noise=0.4),
             dict(seed=2, loss="ce", noise=0.2), dict(seed=3, loss="gce", noise=0.2),
             dict(seed=4, loss="gce", loss_options=dict(q=0.5)), dict(seed=5, loss="sce")]
    group = train_and_check([Job(**spec, options=dict(lr=1e-2)) for spec in specs])
    assert sorted(members for members, _ in group.loss.groups) == [[0, 2], [1, 3], [4], [5]]


class CountingCE(nn.Module):
    """Cross-entropy that keeps something of each call: never grouped."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, out, y):
        self.calls += 1
        return nn.functional.cross_entropy(out, y)


class BranchingCE(nn.Module):
    """Cross-entropy that reads a tensor's value in Python, which vmap cannot run."""

    def __init__(self, tag: int = 0):
        super().__init__()
        self.tag = tag

    def forward(self, out, y):
        return nn.functional.cross_entropy(out, y) * (2.0 if y.max().item() > 5 else 1.0)


def test_a_loss_that_changes_when_called_is_called_once_per_replica():
    group = stack_of(losses=[CountingCE(), CountingCE()])
    for _ in range(2):
        group.train_epoch()
    steps = 2 * -(-600 // BATCH)
    assert [f.calls for f in group.losses] == [steps, steps]
    assert sorted(members for members, _ in group.loss.groups) == [[0], [1]]


def focal_version(version: int) -> type:
    """Two versions of a loss under one class name, with the same attributes."""
    class Focal(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = 2.0

        def forward(self, out, y):
            return nn.functional.cross_entropy(out, y) * (1.0 if version == 1 else 1.5)

    return Focal


def with_hook() -> nn.Module:
    loss = nn.CrossEntropyLoss()
    loss.register_forward_hook(lambda module, args, out: out * 2)
    return loss


@pytest.mark.parametrize("losses,groups", [
    (lambda: [focal_version(1)(), focal_version(2)()], [[0], [1]]),  # another class
    (lambda: [nn.CrossEntropyLoss(label_smoothing=1), nn.CrossEntropyLoss(label_smoothing=1.0)],
     [[0], [1]]),  # 1 and 1.0: equal, but not the same setting
    (lambda: [with_hook(), with_hook()], [[0], [1]]),
    (lambda: [nn.CrossEntropyLoss(), nn.CrossEntropyLoss()], [[0, 1]]),
], ids=["same-name", "int-float", "hooks", "equal"])
def test_only_losses_that_are_the_same_function_share_a_call(losses, groups):
    made = losses()
    group = stack_of(losses=made)
    apart = stack_of(losses=[copy.deepcopy(f) for f in made])
    apart.loss.groups, apart.loss.pure = None, [False, False]  # never grouped
    group.train_epoch(), apart.train_epoch()
    assert sorted(members for members, _ in group.loss.groups) == groups
    assert torch.equal(group.train_epoch(), apart.train_epoch())


class LateCounter(nn.Module):
    """Unchanged by its calls in the first epoch; from the second on, it counts them."""

    def __init__(self):
        super().__init__()
        self.counting, self.calls = False, 0

    def on_epoch_start(self, epoch, epochs):
        self.counting = epoch >= 2

    def forward(self, out, y):
        if self.counting:
            self.calls += 1
        return nn.functional.cross_entropy(out, y)


def test_a_grouped_loss_that_changes_later_stops_the_stack():
    """Grouped after its first step, it then changes when called: once for the group instead
    of once per replica. The stack stops with a StackError (the launcher then runs its jobs
    one by one from their checkpoints) rather than train on wrong losses."""
    group = stack_of(losses=[LateCounter(), LateCounter()])
    for f in group.losses:
        f.on_epoch_start(1, 2)
    group.train_epoch()
    assert sorted(members for members, _ in group.loss.groups) == [[0, 1]]
    for f in group.losses:
        f.on_epoch_start(2, 2)
    with pytest.raises(StackError, match="loss LateCounter changed when it was called"):
        group.train_epoch()


def test_a_loss_vmap_cannot_run_falls_back_to_one_call_per_replica():
    grouped = stack_of(losses=[BranchingCE(), BranchingCE()])
    apart = stack_of(losses=[BranchingCE(0), BranchingCE(1)])  # unequal: never grouped
    for _ in range(2):
        assert torch.equal(grouped.train_epoch(), apart.train_epoch())
    assert grouped.loss.unvmappable and not apart.loss.unvmappable
    assert torch.equal(grouped.model.params["net.1.weight"], apart.model.params["net.1.weight"])


# Under Adam, the bias of a linear layer that feeds a BatchNorm has a gradient that is zero but
# for rounding, which Adam's normalisation turns into steps of size lr: that parameter follows
# rounding noise (a separate run on another thread count would differ as much), so BatchNorm is
# checked under SGD, whose steps scale with the gradient.
@pytest.mark.parametrize("optimizer,model", [
    ("adam", dict(dropout=0.3)), ("sgd", dict(dropout=0.2, batch_norm=True))])
def test_dropout_masks_and_batchnorm_statistics_are_each_replicas_own(optimizer, model):
    jobs = mixed_jobs(optimizer, **model)[:4]
    references = [alone(job) for job in jobs]
    runs = [build(job) for job in jobs]
    group = stack(runs, jobs)
    for _ in range(EPOCHS):
        group.train_epoch()
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    for run, (reference, _, _) in zip(runs, references):
        assert_same_weights(run.model, reference.model)  # and running_mean/var, batches
    if model.get("batch_norm"):
        assert int(runs[0].model.net[2].num_batches_tracked) == EPOCHS * 10
        assert not torch.equal(runs[0].model.net[2].running_mean,
                               runs[1].model.net[2].running_mean)
    # evaluation in one stacked forward: running statistics, no dropout, as each module alone
    x = digits()[0][:50]
    with torch.no_grad():
        out = group.model.eval()(x.expand(len(runs), -1, -1))  # (R, 50, 10)
        for r, run in enumerate(runs):
            assert relative(out[r], run.model.eval()(x)) <= 1e-12


def test_a_replica_taken_out_after_one_epoch_stays_as_it_was_and_the_others_go_on():
    jobs = mixed_jobs("adam", dropout=0.3)[:4]  # each dropout stream follows its replica
    after_one = alone(jobs[2], epochs=1)[0]
    references = [alone(job) for job in jobs]
    runs = [build(job) for job in jobs]
    group = stack(runs, jobs)
    group.train_epoch()
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    left = {k: v.clone() for k, v in runs[2].model.state_dict().items()}
    group.keep([0, 1, 3])  # replica 2 stopped early
    assert group.ids == [0, 1, 3] and len(group.model) == 3
    sums = [group.train_epoch() for _ in range(EPOCHS - 1)]
    assert sums[-1].shape == (3, 2)
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    for name, value in runs[2].model.state_dict().items():
        assert torch.equal(value, left[name])  # untouched since it left
    assert_same_weights(runs[2].model, after_one.model)
    assert_same_optimizer(runs[2].optimizer, after_one.optimizer)
    for r in (0, 1, 3):
        assert_same_weights(runs[r].model, references[r][0].model)
        assert torch.equal(sums[-1][group.ids.index(r)], references[r][1][-1])


def test_a_stack_resumes_from_the_torch_optimizers_it_wrote_back():
    """Each replica's state goes into an ordinary torch optimizer (a job's checkpoint format),
    and a new stack built from those goes on exactly; so does each run trained on alone."""
    jobs = mixed_jobs("adam")[:3]
    references = [alone(job) for job in jobs]
    runs = [build(job) for job in jobs]
    group = stack(runs, jobs)
    group.train_epoch()
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    checkpoints = copy.deepcopy([(r.model.state_dict(), r.optimizer.state_dict()) for r in runs])
    resumed = stack(runs, jobs)  # built again from the written-back modules and optimizers
    for _ in range(EPOCHS - 1):
        resumed.train_epoch()
    resumed.write_back([r.model for r in runs], [r.optimizer for r in runs])
    for run, (reference, _, _) in zip(runs, references):
        assert_same_weights(run.model, reference.model)
    # the last replica's checkpoint loaded into a fresh run, trained on alone
    fresh = build(jobs[2])
    fresh.model.load_state_dict(checkpoints[2][0])
    fresh.optimizer.load_state_dict(checkpoints[2][1])
    torch.randperm(600, generator=fresh.generator)  # epoch 1's order, drawn in the stack
    for _ in range(EPOCHS - 1):
        _, batches = train_batches(Split(y=fresh.labels, x=digits()[0]), BATCH, fresh.generator)
        train_epoch(fresh.model, fresh.loss_fn, fresh.optimizer, batches,
                    grad_clip=jobs[2].grad_clip)
    assert_same_weights(fresh.model, references[2][0].model)


def test_a_replicas_state_is_a_copy_loadable_into_its_module():
    runs = [build(Job(seed=s, loss="ce")) for s in range(2)]
    model = StackedModel([r.model for r in runs])
    state = model.replica_state(1)
    assert list(state) == list(runs[1].model.state_dict())
    state["net.1.weight"] += 1  # a copy: the stack is unchanged
    assert torch.equal(model.params["net.1.weight"][1], runs[1].model.net[1].weight)
    x = digits()[0][:5]
    out = model(torch.stack([x, x]))  # (R, B, outputs)
    assert out.shape == (2, 5, 10)
    assert relative(out[1], runs[1].model(x)) <= 1e-12


class LearnedTemperature(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = nn.Parameter(torch.ones(()))

    def forward(self, out, y):
        return nn.functional.cross_entropy(out / self.t, y)


def stack_of(models=None, losses=None, optimizers=None, rng=True, labels=None):
    """A stack of two digits runs with one part replaced."""
    runs = [build(Job(seed=s, loss="ce")) for s in range(2)]
    models = models or [r.model for r in runs]
    model = StackedModel(models, [r.rng for r in runs] if rng else None)
    optimizers = optimizers or [torch.optim.Adam(m.parameters()) for m in models]
    optimizer = StackedOptimizer.from_torch(optimizers, models, model.params)
    batches = ReplicaBatches(digits()[0], labels if labels is not None else runs[0].labels,
                             [r.generator for r in runs], BATCH)
    return Replicas(model, losses or [r.loss_fn for r in runs], optimizer, batches)


def adversarial() -> nn.Module:
    return instantiate(OmegaConf.load(CONF / "loss" / "adversarial.yaml"))


def mlp(**options):
    return MLP([64], 10, **options)


def adam_then_sgd():
    models = [mlp(), mlp()]
    return dict(models=models, optimizers=[torch.optim.Adam(models[0].parameters()),
                                           torch.optim.SGD(models[1].parameters())])


def optimizers_with(cls, **options):
    models = [mlp(), mlp()]
    return dict(models=models, optimizers=[cls(m.parameters(), **options) for m in models])


def nesterov_mixed():
    models = [mlp(), mlp()]
    return dict(models=models, optimizers=[
        torch.optim.SGD(models[0].parameters(), momentum=0.9, nesterov=True),
        torch.optim.SGD(models[1].parameters(), momentum=0.9)])


def rmsprop_centered_mixed():
    models = [mlp(), mlp()]
    return dict(models=models, optimizers=[
        torch.optim.RMSprop(models[0].parameters(), centered=True),
        torch.optim.RMSprop(models[1].parameters())])


REFUSALS = {
    "a loss that needs the model": (lambda: dict(losses=[adversarial(), nn.CrossEntropyLoss()]),
                                    "loss AdversarialLoss needs the model"),
    "a loss with parameters": (lambda: dict(losses=[LearnedTemperature(), LearnedTemperature()]),
                               "learns parameters of its own"),
    "two architectures": (lambda: dict(models=[mlp(), mlp(hidden=(64, 64))]),
                          "one architecture"),
    "channel dropout": (lambda: dict(models=[nn.Sequential(nn.Linear(64, 10), nn.Dropout1d())
                                             for _ in range(2)]),
                        "layer 1 (Dropout1d) draws masks stacking does not reproduce"),
    "cumulative batch norm": (lambda: dict(models=[nn.Sequential(
        nn.Linear(64, 10), nn.BatchNorm1d(10, momentum=None)) for _ in range(2)]),
        "momentum=None"),
    "dropout without streams": (lambda: dict(models=[mlp(dropout=0.1), mlp(dropout=0.1)],
                                             rng=False), "random stream"),
    "two optimizer classes": (adam_then_sgd, "one optimizer class"),
    "an optimizer without a stacked step": (lambda: optimizers_with(torch.optim.Adagrad),
                                            "Adagrad has no stacked step"),
    "amsgrad": (lambda: optimizers_with(torch.optim.Adam, amsgrad=True), "amsgrad=True"),
    "nesterov in some replicas": (nesterov_mixed, "agree on optimizer nesterov"),
    "centered RMSprop in some replicas": (rmsprop_centered_mixed,
                                          "agree on optimizer centered"),
    "labels of another length": (lambda: dict(labels=torch.zeros(599, dtype=torch.long)),
                                 "fit neither"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_what_cannot_stack_exactly_is_refused_with_its_reason(case):
    parts, reason = REFUSALS[case]
    with pytest.raises(StackError, match=re.escape(reason)):
        stack_of(**parts())


def test_the_refusal_reason_names_the_loss_as_the_launcher_does():
    assert loss_refusal(adversarial(), "adversarial") == "loss adversarial needs the model"
    assert loss_refusal(nn.CrossEntropyLoss(), "ce") is None
    assert issubclass(StackError, ValueError)


def test_a_cnn_with_batchnorm_and_dropout_stacks_exactly():
    """Conv-BatchNorm-ReLU blocks, pooling and dropout (lossbench's CNN) on 8×8 digit images."""
    from lossbench.models import CNN

    images = digits()[0].view(-1, 1, 8, 8)  # (N, C, H, W)
    jobs = [Job(seed=s, loss=loss, noise=noise, optimizer=torch.optim.SGD,
                options=dict(lr=lr, momentum=0.9)) for s, loss, noise, lr in
            [(0, "ce", 0.0, 0.05), (1, "gce", 0.3, 0.02), (2, "sce", 0.0, 0.05)]]

    def cnn_run(job: Job) -> Built:
        run = build(job)  # labels, seeds, loss; then the CNN in place of the MLP
        seed_everything(job.seed)
        run.model = CNN([1, 8, 8], 10, channels=(4, 8), dropout=0.25)
        run.rng = random_state(torch.device("cpu"))
        run.optimizer = torch.optim.SGD(run.model.parameters(), **job.options, foreach=False)
        return run

    references = []
    for job in jobs:
        run = cnn_run(job)
        for _ in range(2):
            run.model.train()
            _, batches = train_batches(Split(y=run.labels, x=images), BATCH, run.generator)
            train_epoch(run.model, run.loss_fn, run.optimizer, batches)
        references.append(run)
    runs = [cnn_run(job) for job in jobs]
    model = StackedModel([r.model for r in runs], [r.rng for r in runs])
    optimizer = StackedOptimizer.from_torch([r.optimizer for r in runs], [r.model for r in runs],
                                            model.params)
    group = Replicas(model, [r.loss_fn for r in runs], optimizer,
                     ReplicaBatches(images, torch.stack([r.labels for r in runs]),
                                    [r.generator for r in runs], BATCH))
    for _ in range(2):
        group.train_epoch()
    group.write_back([r.model for r in runs], [r.optimizer for r in runs])
    for run, reference in zip(runs, references):
        assert_same_weights(run.model, reference.model)

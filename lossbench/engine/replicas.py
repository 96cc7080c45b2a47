"""Stacked replicas: R runs that differ only in what a tensor can carry (seed, loss, label noise,
optimizer hyperparameters) trained as one model whose every tensor has a leading replica axis.

On the small models of loss studies a step's time is mostly overhead (Python, kernel launches,
the optimizer's loop over parameters); stacked, R runs pay it once per step. Each replica stays
exactly its separate run (docs/replicas.md): its own initial weights (the caller builds each
module as its run would), its own batch order and labels (`ReplicaBatches`), dropout masks from
its own random stream (`StackedModel`), its own loss, and its own optimizer hyperparameters and
gradient clipping (`engine.stacked_optim`). Replicas share no parameter, so backpropagating the
sum of their losses gives each one its separate run's gradient.

    model = StackedModel(modules, rng_states)        # modules[r] built as run r builds it
    optimizer = StackedOptimizer.from_torch(optimizers, modules, model.params, grad_clips)
    group = Replicas(model, losses, optimizer, ReplicaBatches(x, labels, generators, 128))
    sums = group.train_epoch()                       # (R, 2): Σ loss × batch size, samples
    group.write_back(modules, optimizers)            # each replica into its ordinary module
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lossbench.engine.batches import epoch_order
from lossbench.engine.stacked_loss import StackedLoss
from lossbench.engine.stacked_optim import StackError, StackedOptimizer
from lossbench.losses.base import hook

__all__ = ["ReplicaBatches", "Replicas", "StackError", "StackedModel", "StackedOptimizer",
           "loss_refusal", "model_refusal", "random_state"]


def loss_refusal(loss_fn: nn.Module, name: str) -> str | None:
    """Why a replica with this loss cannot stack (None: it can), as the launcher prints it."""
    if hook(loss_fn, "model_loss") is not None or hook(loss_fn, "attack") is not None:
        return f"loss {name} needs the model"
    if any(True for _ in loss_fn.parameters()):
        return f"loss {name} learns parameters of its own"
    return None


def model_refusal(model: nn.Module) -> str | None:
    """Why a model cannot stack exactly (None: it can). nn.Dropout's masks and BatchNorm's
    running statistics are reproduced per replica; other random layers are not."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and type(m) is not nn.Dropout:
            return f"layer {name} ({type(m).__name__}) draws masks stacking does not reproduce"
        if isinstance(m, nn.SyncBatchNorm):
            return f"layer {name} (SyncBatchNorm) synchronises over processes"
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None:
            # the cumulative average reads num_batches_tracked on the host: not under vmap
            return f"layer {name} (BatchNorm with momentum=None) cannot stack"
    return None


def random_state(device: torch.device) -> torch.Tensor:
    """The state of the default generator of `device` now: read it right after building a
    replica's model, where its separate run's dropout stream starts."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


@contextmanager
def drawing_from(states: list[torch.Tensor], r: int, device: torch.device) -> Iterator[None]:
    """The device's default generator set to replica r's stream, its advance kept in
    `states[r]`: torch's own dropout then draws exactly the masks of the separate run."""
    cuda = device.type == "cuda"
    saved = random_state(device)
    torch.cuda.set_rng_state(states[r], device) if cuda else torch.set_rng_state(states[r])
    try:
        yield
    finally:
        states[r] = random_state(device)
        torch.cuda.set_rng_state(saved, device) if cuda else torch.set_rng_state(saved)


class MaskedDropout(nn.Module):
    """nn.Dropout of the stacked model: multiplies by a mask drawn outside vmap (a buffer that
    `StackedModel` passes per step), since under vmap all replicas would draw from one stream."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.empty(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask if self.training else x


class StackedModel:
    """R modules of one architecture as one: parameters and buffers stacked to (R, ...)
    (`torch.func.stack_module_state`), forward vmapped over a (R, B, ...) input.

    BatchNorm's running statistics are stacked buffers, updated in place per replica.
    `rng_states` (from `random_state`, one per replica) are needed when the model has dropout.
    """

    def __init__(self, modules: Sequence[nn.Module],
                 rng_states: Sequence[torch.Tensor] | None = None) -> None:
        first = modules[0]
        def shapes(m: nn.Module) -> dict[str, torch.Size]:
            return {k: v.shape for k, v in m.state_dict().items()}

        for m in modules[1:]:
            if type(m) is not type(first) or shapes(m) != shapes(first):
                raise StackError("replicas of one stack must have one architecture")
        if (reason := model_refusal(first)) is not None:
            raise StackError(reason)
        self.params, self.buffers = torch.func.stack_module_state(list(modules))
        self.persistent = list(first.state_dict())
        self.base = copy.deepcopy(first).to("meta")
        self.dropouts = {name: m.p for name, m in first.named_modules() if type(m) is nn.Dropout}
        for name in self.dropouts:
            parent, _, child = name.rpartition(".")
            setattr(self.base.get_submodule(parent) if parent else self.base, child,
                    MaskedDropout())
        if self.dropouts and rng_states is None:
            raise StackError("a model with dropout stacks only with each replica's random "
                             "stream (rng_states)")
        # the architecture, to read the shapes dropout sees (`dropout_inputs`)
        self.template = copy.deepcopy(first) if self.dropouts else None
        self.rng = [s.clone() for s in rng_states] if rng_states is not None else []
        self.mask_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None
        self.training = True
        self.device = next(iter(self.params.values())).device

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def train(self, mode: bool = True) -> StackedModel:
        self.training = mode
        self.base.train(mode)
        return self

    def eval(self) -> StackedModel:
        return self.train(False)

    def __call__(self, x: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """(R, B, ...) -> (R, B, outputs): replica r's forward on x[r]. `rows`: only those
        replicas (evaluation, a few at a time), x then holding theirs."""
        params, buffers = self.params, self.buffers
        if rows is not None:
            assert not (self.dropouts and self.training), "rows: evaluation only"
            params = {k: v[rows] for k, v in params.items()}
            buffers = {k: v[rows] for k, v in buffers.items()}
        elif self.dropouts and self.training:
            buffers = {**buffers, **self.masks(x)}

        def one(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(self.base, (params, buffers), (x,))

        return torch.func.vmap(one)(params, buffers, x)

    def masks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"<layer>.mask": (R, B, ...)}: each replica's masks for this step, drawn by torch's
        dropout on ones from its own stream, layer after layer as its separate run draws them
        (dropout multiplies by the mask it draws, so ones × mask is that mask exactly)."""
        if self.mask_shapes is None:
            self.mask_shapes = self.dropout_inputs(x[0, :1])
        drawn: dict[str, list[torch.Tensor]] = {name: [] for name in self.mask_shapes}
        for r in range(len(self)):
            with drawing_from(self.rng, r, self.device):
                for name, (shape, dtype) in self.mask_shapes.items():
                    ones = torch.ones((x.shape[1], *shape), dtype=dtype, device=x.device)
                    drawn[name].append(nn.functional.dropout(ones, self.dropouts[name], True))
        return {f"{name}.mask": torch.stack(m) for name, m in drawn.items()}

    def dropout_inputs(self, sample: torch.Tensor
                       ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """{dropout layer: (its input's shape less the batch axis, dtype)} in the order the
        forward reaches them, read from an evaluation-mode forward of one sample (evaluation:
        no mask drawn, no running statistic moved)."""
        seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}

        def record(name: str, x: torch.Tensor) -> None:
            seen.setdefault(name, (tuple(x.shape[1:]), x.dtype))

        hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: record(name, args[0]))
                 for name, m in self.template.named_modules() if type(m) is nn.Dropout]
        with torch.no_grad():
            self.template.eval()(sample)
        for h in hooks:
            h.remove()
        return seen

    def replica_state(self, r: int) -> dict[str, torch.Tensor]:
        """Replica r's weights and buffers as a plain state_dict (copies), loadable into one of
        the modules the stack was built from."""
        stacked = {**self.params, **self.buffers}
        return {name: stacked[name][r].detach().clone() for name in self.persistent}

    @torch.no_grad()
    def write_back(self, modules: Sequence[nn.Module]) -> None:
        """Every replica into its own module (`modules[r]` for position r): validation,
        checkpoints and tests then run on ordinary modules. Copied into the module's own
        tensors, as `load_state_dict` does, without its copy of the replica first and its
        per-layer machinery (each epoch, for every replica)."""
        stacked = {**self.params, **self.buffers}
        for r, module in enumerate(modules):
            own = module.state_dict(keep_vars=True)
            for name in self.persistent:
                own[name].copy_(stacked[name][r])

    def keep(self, positions: torch.Tensor) -> None:
        """Only the replicas at `positions` stay: every stacked tensor is index-selected, so
        the others stop changing and stop costing."""
        at = positions.to(self.device)
        self.params = {k: v.detach().index_select(0, at).requires_grad_(v.requires_grad)
                       for k, v in self.params.items()}
        self.buffers = {k: v.index_select(0, at) for k, v in self.buffers.items()}
        self.rng = [self.rng[i] for i in positions.tolist()] if self.rng else []


class ReplicaBatches:
    """Each replica's training batches, stacked: replica r reads the permutation its separate
    run draws from its own generator (`engine.batches.epoch_order`, seeded as that run seeds
    it) and its own labels (noisy labels differ per replica).

    `x`: (N, ...) samples shared by all, or with `shared_x=False` (R, N, ...) each replica's
    own (runs whose data seeds draw different splits of one size); `labels`: (R, N), or (N,)
    for labels shared by all.
    """

    def __init__(self, x: torch.Tensor, labels: torch.Tensor,
                 generators: Sequence[torch.Generator], batch_size: int,
                 max_batches: int | None = None, shared_x: bool = True) -> None:
        self.x, self.generators, self.shared_x = x, list(generators), shared_x
        self.n = len(x) if shared_x else x.shape[1]  # samples per replica
        self.labels = labels.expand(len(self.generators), -1) if labels.dim() == 1 else labels
        if self.labels.shape != (len(self.generators), self.n):
            raise StackError(f"labels {tuple(labels.shape)} fit neither ({self.n},) nor "
                             f"({len(self.generators)}, {self.n})")
        if not shared_x and len(x) != len(self.generators):
            raise StackError(f"samples {tuple(x.shape)} are not one set per replica")
        self.batch_size, self.max_batches = batch_size, max_batches

    def epoch(self) -> tuple[int, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """(number of batches, iterator of (x (R, B, ...), y (R, B))) over one epoch, as
        `engine.batches.train_batches` cuts it for each replica (one process, in memory)."""
        orders = torch.stack([epoch_order(self.n, g).to(self.x.device)
                              for g in self.generators])  # (R, N)
        n = -(-self.n // self.batch_size)
        n = min(n, self.max_batches) if self.max_batches is not None else n
        rows = torch.arange(len(self.generators), device=self.x.device)[:, None]  # (R, 1)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for b in range(n):
                idx = orders[:, b * self.batch_size:(b + 1) * self.batch_size]  # (R, B)
                x = self.x[idx] if self.shared_x else self.x[rows, idx]  # (R, B, ...)
                yield x, self.labels.gather(1, idx)

        return n, batches()

    def keep(self, positions: torch.Tensor) -> None:
        self.generators = [self.generators[i] for i in positions.tolist()]
        self.labels = self.labels.index_select(0, positions.to(self.labels.device))
        if not self.shared_x:
            self.x = self.x.index_select(0, positions.to(self.x.device))


@dataclass
class Replicas:
    """A stack in training: the model, each replica's loss, the stacked optimizer and the
    batches; `ids[i]`: which of the original replicas stands at position i."""

    model: StackedModel
    losses: list[nn.Module]
    optimizer: StackedOptimizer
    batches: ReplicaBatches
    names: list[str] | None = None  # the losses as messages name them (`gce`)

    def __post_init__(self) -> None:
        names = self.names or [type(f).__name__ for f in self.losses]
        for loss_fn, name in zip(self.losses, names):
            if (reason := loss_refusal(loss_fn, name)) is not None:
                raise StackError(reason)
        counts = {len(self.model), len(self.losses), len(self.batches.generators),
                  len(self.optimizer.steps)}
        if len(counts) > 1:
            raise StackError(f"the parts of a stack hold different numbers of replicas: {counts}")
        self.ids = list(range(len(self.losses)))
        self.loss = StackedLoss(self.losses)

    def train_epoch(self, on_batch: Callable[[int, torch.Tensor], None] | None = None,
                    batch_losses: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One epoch of every replica: `engine.loop.train_epoch`'s (2,) sums per replica,
        (R, 2): [Σ batches loss × batch size, samples], float32 as there. `batch_losses`
        receives each step's (R,) losses, detached, in the training dtype."""
        _, batches = self.batches.epoch()
        self.model.train()
        self.loss.begin_epoch()
        losses, sizes = ([] if batch_losses is None else batch_losses), []
        for b, (x, y) in enumerate(batches):
            out = self.model(x)  # (R, B, outputs)
            loss = self.loss(out, y)  # replica r's outputs to replica r's own loss: (R,)
            self.optimizer.zero_grad(self.model.params)
            loss.sum().backward()  # no shared parameter: each gradient is its own run's
            self.optimizer.step(self.model.params)
            losses.append(loss.detach())
            sizes.append(y.shape[1])
            if on_batch is not None:
                on_batch(b, losses[-1])
        if not sizes:
            return torch.zeros(len(self.losses), 2)
        weights = torch.tensor(sizes, dtype=torch.float32).to(losses[0].device)
        per_step = torch.stack(losses[-len(sizes):]).float()  # (steps, R)
        # one fresh (aligned) vector per replica: a dot product's rounding depends on where its
        # vector starts in memory, and these sums must be train_epoch's to the last bit
        sums = torch.stack([torch.dot(per_step[:, r].clone(), weights)
                            for r in range(per_step.shape[1])])
        return torch.stack([sums, weights.sum().expand_as(sums)], 1)

    def keep(self, positions: Sequence[int]) -> None:
        """Only the replicas at `positions` go on (a stopped or diverged one leaves, its
        weights and optimizer state untouched from then on); write them back first."""
        at = torch.tensor(list(positions), dtype=torch.long)
        self.model.keep(at)
        self.optimizer.keep(at)
        self.batches.keep(at)
        self.losses = [self.losses[i] for i in positions]
        self.loss.keep(positions)
        self.ids = [self.ids[i] for i in positions]
        if self.names:
            self.names = [self.names[i] for i in positions]

    def write_back(self, modules: Sequence[nn.Module],
                   optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Each replica still in the stack into its ordinary module and torch optimizer
        (`modules[j]`, `optimizers[j]` for original replica j)."""
        mods = [modules[j] for j in self.ids]
        self.model.write_back(mods)
        self.optimizer.write_back([optimizers[j] for j in self.ids], mods)

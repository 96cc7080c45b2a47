"""Each replica's loss on its own outputs, with one call for every group of replicas whose losses
are the same function.

A stack of R replicas gives each its own loss (`Replicas`): called one replica at a time, a step
costs R small loss graphs forward and backward, which on a small model costs more than the
stacked forward itself. Replicas whose losses are equal (same class, same hyperparameters, same
buffers: `loss_key`) are called once, vmapped over their (G, B, ...) outputs, which gives each
replica the value its own call gives (each replica's reduction is its own row's).

Only a loss whose call leaves it as it was is grouped: the first step calls every replica's loss
on its own and compares the loss before and after (a loss that counts its calls, or keeps
something of the batch, would otherwise change once for the group instead of once per replica).
A grouped loss that changes later all the same (after a warm-up, say) is a `StackError`: the
launcher then runs its jobs one by one from their checkpoints.
A loss that vmap cannot run (data-dependent Python on tensor values) falls back to one call per
replica, for the rest of the training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lossbench.engine.stacked_optim import StackError
from lossbench.losses.base import squeeze_output

__all__ = ["StackedLoss", "loss_key"]


def _value_key(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.device.type,
                value.detach().cpu().numpy().tobytes())
    if isinstance(value, nn.Module):
        return loss_key(value)
    if value is None:
        return None
    if isinstance(value, (bool, int, float, str)):
        return (type(value), value)  # 1, 1.0 and True are equal, but not the same setting
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _value_key(v)) for k, v in sorted(value.items(), key=repr)))
    return ("object", id(value))  # equal only to itself


# what every nn.Module holds for torch itself (hooks, registries): not the loss's own state
_MODULE_INTERNALS = frozenset(vars(nn.Module())) - {"training"}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_pre_hooks_with_kwargs")


def loss_key(loss_fn: nn.Module) -> tuple:
    """What a loss module computes with: its class (the class itself: two versions of a loss
    may share a name), its attributes (hyperparameters with their types, mode, anything it
    keeps), its buffers and submodules. Two losses with equal keys are the same function; a
    loss with forward hooks is equal only to itself."""
    attrs = tuple((name, _value_key(value)) for name, value in sorted(vars(loss_fn).items())
                  if name not in _MODULE_INTERNALS)
    buffers = tuple((name, _value_key(b)) for name, b in loss_fn._buffers.items())
    children = tuple((name, loss_key(m)) for name, m in loss_fn._modules.items()
                     if m is not None)
    hooks = ("hooks", id(loss_fn)) if any(getattr(loss_fn, h, None) for h in _HOOKS) else None
    return (type(loss_fn), attrs, buffers, children, hooks)


def _key_now(loss_fn: nn.Module) -> tuple | None:
    """`loss_key`, or None where it cannot be read (a tensor vmap left behind in it)."""
    try:
        return loss_key(loss_fn)
    except Exception:
        return None


class StackedLoss:
    """`losses[r]` applied to replica r's outputs and targets: (R, B, ...) outputs, (R, B)
    targets -> (R,) losses, replicas with equal pure losses in one vmapped call."""

    def __init__(self, losses: Sequence[nn.Module]) -> None:
        self.losses = list(losses)
        self.pure: list[bool] | None = None  # learnt from the first step
        self.unvmappable: set[tuple] = set()
        # (members, their loss's key) per call, and the permutation putting the calls' values
        # back in replica order (None: they come in order); formed each epoch
        self.groups: list[tuple[list[int], Any]] | None = None
        self.inverse: torch.Tensor | None = None

    def begin_epoch(self) -> None:
        """Form the groups anew: a loss's epoch hook may have changed it."""
        self.groups = None

    def keep(self, positions: Sequence[int]) -> None:
        self.losses = [self.losses[i] for i in positions]
        if self.pure is not None:
            self.pure = [self.pure[i] for i in positions]
        self.groups = None

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.pure is None:  # the first step: each replica on its own, watching its loss
            values, pure = [], []
            for r, f in enumerate(self.losses):
                before = loss_key(f)
                values.append(f(squeeze_output(out[r]), y[r]))
                pure.append(loss_key(f) == before)
            self.pure = pure
            return torch.stack(values)
        if self.groups is None:
            self._form_groups()
        values = torch.cat([self._group_call(group, key, out, y) for group, key in self.groups])
        if self.inverse is None:
            return values
        return values.index_select(0, self.inverse.to(out.device))

    def _form_groups(self) -> None:
        groups: dict[Any, list[int]] = {}
        for r, f in enumerate(self.losses):
            key = loss_key(f) if self.pure[r] else ("alone", r)
            groups.setdefault(key, []).append(r)
        self.groups = [(members, key) for key, members in groups.items()]
        order = [r for members, _ in self.groups for r in members]
        self.inverse = None
        if order != list(range(len(order))):
            self.inverse = torch.empty(len(order), dtype=torch.long)
            self.inverse[torch.tensor(order)] = torch.arange(len(order))

    def _group_call(self, group: list[int], key: Any, out: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
        if len(group) == 1 or key in self.unvmappable:
            return torch.stack([self.losses[r](squeeze_output(out[r]), y[r]) for r in group])
        first, last = group[0], group[-1]
        if last - first + 1 == len(group):  # neighbours: a view
            outs, ys = out[first:last + 1], y[first:last + 1]
        else:
            at = torch.tensor(group, device=out.device)
            outs, ys = out.index_select(0, at), y.index_select(0, at)
        f = self.losses[first]
        try:
            values = torch.func.vmap(lambda o, t: f(squeeze_output(o), t))(outs, ys)
        except RuntimeError:  # vmap cannot run it: one call per replica from now on
            self.unvmappable.add(key)
            return self._group_call(group, key, out, y)
        if _key_now(f) != key:  # it kept something of this call, once for the whole group
            raise StackError(f"loss {type(f).__name__} changed when it was called after its "
                             "first step (it keeps state); its replicas cannot share a call")
        return values

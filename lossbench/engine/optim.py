"""The optimizer of a run, built from its config group, on torch's fused kernel where it has one.

`optimizer.fused: null` (the default in conf/optimizer/{adam,adamw,sgd}.yaml) lets lossbench
choose: torch's fused implementation (one kernel over all parameters per step) when the class
takes `fused` and every parameter is a floating-point tensor on a device torch has fused kernels
for (CPU and CUDA in torch ≥ 2.4), the per-parameter loop otherwise. On the default digits MLP
the fused Adam step makes a training epoch about a fifth faster on a CPU core
(benchmarks/run.py, part `optimizer`). `optimizer.fused=false` keeps the loop, `true` demands the
fused kernel, and `optimizer.foreach=true` (where the class takes it) is passed through as is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Literal

import torch

from lossbench.errors import UserError


def fused_devices() -> tuple[str, ...]:
    """Device types torch has fused optimizer kernels for; none where torch does not say."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        return ()
    return tuple(_get_fused_kernels_supported_devices())


def can_fuse(optimizer_class: type, params: Iterable[torch.Tensor]) -> bool:
    """Whether `optimizer_class(params, fused=True)` is supported for these parameters."""
    try:
        if "fused" not in inspect.signature(optimizer_class).parameters:
            return False
    except (TypeError, ValueError):  # a callable without a readable signature
        return False
    devices = fused_devices()
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in devices
                                for p in params)


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], target: str,
                    params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """`factory` is the `_partial_` instantiated from `cfg.optimizer` (`target` its `_target_`,
    for messages). A `fused` left at null becomes True where `can_fuse`; an invalid argument
    or value is the user's to fix (UserError, one line)."""
    if isinstance(factory, functools.partial):
        keywords = factory.keywords
        if ("fused" in keywords and keywords["fused"] is None and not keywords.get("foreach")
                and not keywords.get("differentiable") and can_fuse(factory.func, params)):
            factory = functools.partial(factory, fused=True)
    try:
        return factory(params=params)
    except (TypeError, ValueError) as err:
        raise UserError(f"optimizer ({target}): {err}") from err
    except RuntimeError as err:  # e.g. fused=true with parameters on a device without the kernel
        if "fused" in str(err):
            raise UserError(f"optimizer ({target}): {err}") from err
        raise


def optimizer_kernel(optimizer: torch.optim.Optimizer) -> str:
    """Which implementation steps the parameters: "fused", "foreach" or "per-parameter loop"
    (torch's own default choice, None, shows as the loop on CPU)."""
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    if group.get("fused"):
        return "fused"
    if group.get("foreach"):
        return "foreach"
    return "per-parameter loop"


Stepping = Literal["batch", "epoch", "metric"]


def scheduler_stepping(cls: type) -> Stepping:
    """When a scheduler of class `cls` (or a subclass of it) is stepped."""
    if issubclass(cls, torch.optim.lr_scheduler.OneCycleLR):
        return "batch"
    if issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "metric"
    return "epoch"

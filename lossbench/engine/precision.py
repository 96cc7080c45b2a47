"""How the model runs: mixed precision, and the wrappers (DistributedDataParallel,
torch.compile) around the module that holds the weights."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from lossbench.engine import distributed
from lossbench.errors import UserError

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}


def autocast_dtype(precision: Any) -> torch.dtype | None:
    """`trainer.precision` (32, bf16 or 16) -> the autocast dtype, None for full precision."""
    key = str(precision).removesuffix("-mixed")
    if key not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} must be 32, bf16 or 16")
    return PRECISIONS[key]


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Mixed precision for the forward pass and the loss (backward runs outside it)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A loss scaler for float16 (its gradients underflow without one); None otherwise."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers: the one whose
    state_dict is saved and which evaluates (no collective calls in its forward)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif type(model).__name__ == "OptimizedModule":  # torch.compile's (no dynamo import)
            model = model._orig_mod
        else:  # a user's model may well have its own `.module`: not a wrapper
            return model


def training_model(model: nn.Module, device: torch.device, compile_model: bool = False
                   ) -> nn.Module:
    """The module the training loop calls: DistributedDataParallel over several processes
    (gradients all-reduced in backward), then torch.compile when asked."""
    if distributed.current().active and any(p.requires_grad for p in model.parameters()):
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        model = torch.compile(model)
    return model

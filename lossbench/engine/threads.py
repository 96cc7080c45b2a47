"""How many intra-op threads torch uses on the CPU: `trainer.threads` (auto, or a count).

Every torch operation on the CPU that is big enough splits its work over the intra-op threads
and waits for the last of them. On an idle machine that is free; beside other busy processes
(a browser, a CI runner's neighbour, a second sweep) one of the threads waits for a core at
every operation, and a small model, whose operations take microseconds, spends its time
waiting: digits' MLP ran 4× slower with torch's default threads beside two busy processes than
with one thread (docs/benchmarks.md). A large model's operations take milliseconds each, so the
threads pay for their waits and then some.

`auto` therefore decides from the work of one training step:
- on a GPU (or MPS) nothing changes: the device does the work;
- on the CPU, a model whose forward pass over one training batch costs less than
  `SMALL_STEP_FLOPS` runs on one thread; a larger one keeps every thread this process was
  given (torch's default, `OMP_NUM_THREADS`, or a joblib sweep's share of the cores).

The work is counted from the model's linear and convolution layers (`step_flops`), by one
forward pass of a single zero sample with hooks: no timing, so the decision is the same on a
busy machine as on an idle one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

# Forward FLOPs of one training batch below which one thread is used: 10^8 FLOPs forward make
# about 3·10^8 with backward, some 10 ms on one core. Below that an operation lasts less than
# the few milliseconds a thread may wait for a busy core, and the waits dominate. digits' MLP
# (batch 128) is 6.6·10^6; a two-block CNN on 32×32 images (batch 128) is 1.4·10^9.
SMALL_STEP_FLOPS = 1e8


def _layer_flops(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds × 2 of one linear or convolution layer for the output it produced."""
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size) * module.in_channels // module.groups
        return 2 * output.numel() * kernel
    return 0


def step_flops(model: nn.Module, sample_shape: Sequence[int], batch_size: int) -> int:
    """Forward FLOPs of `model` on one training batch of `batch_size` samples: its linear and
    convolution layers counted on one zero sample (B=1), times the batch size. The weight
    matrices of other layers (attention through functional calls) count 2 FLOPs per weight and
    sample, as a linear layer's do."""
    total = [0]

    def count(module: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += _layer_flops(module, output)

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    was_training = model.training
    try:
        model.eval()  # batch norm on one sample needs eval mode; no running statistics change
        with torch.no_grad():  # not inference_mode: a lazy layer's weights must stay trainable
            model(torch.zeros(1, *sample_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    counted = {id(p) for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
               for p in m.parameters()}
    # weight matrices of other layers (attention's projections called through F.linear): 2
    # FLOPs per weight and sample, as in a linear layer
    others = sum(p.numel() for p in model.parameters() if p.dim() >= 2 and id(p) not in counted)
    return (total[0] + 2 * others) * batch_size


def auto_threads(flops: int, available: int, device_type: str = "cpu") -> tuple[int, str]:
    """(threads, why) that `trainer.threads=auto` picks for a training step of `flops` forward
    FLOPs when this process may use `available` threads."""
    if device_type != "cpu":
        return available, f"auto: the model runs on {device_type}; {available} available"
    if flops < SMALL_STEP_FLOPS:
        return 1, (f"auto: {flops:.2g} forward FLOPs per training batch, under "
                   f"{SMALL_STEP_FLOPS:.0e}: one thread, since a small model waits for busy "
                   f"cores; {available} available")
    return available, (f"auto: {flops:.2g} forward FLOPs per training batch, at least "
                       f"{SMALL_STEP_FLOPS:.0e}: every thread available ({available})")


# The threads this process was given before any run set its own: torch's default (the cores,
# or OMP_NUM_THREADS), a joblib job's share of the cores, a rank's share. Read once, so that in
# a sweep run in one process a small model's job does not leave one thread to the next job.
_given: int | None = None


def given_threads() -> int:
    global _given
    if _given is None:
        _given = torch.get_num_threads()
    return _given


def set_threads(setting: Any, model: nn.Module, sample_shape: Sequence[int], batch_size: int,
                device: torch.device) -> str:
    """Apply `trainer.threads` (auto or a count) to torch; returns why, for train.log. A count
    is used as given."""
    available = given_threads()
    if setting != "auto":
        torch.set_num_threads(int(setting))
        return f"trainer.threads={setting}; {available} available"
    flops = step_flops(model, sample_shape, batch_size) if device.type == "cpu" else 0
    threads, why = auto_threads(flops, available, device.type)
    torch.set_num_threads(threads)
    return why

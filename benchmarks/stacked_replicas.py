"""What stacking saves: seeds of the digits MLP trained one after another against the same seeds
trained as stacked replicas (lossbench/engine/replicas.py), side by side in one process.

The default experiment (digits, standardised, 60 % training split, MLP 64-128-64-10, Adam lr
1e-3, batch 128, cross-entropy, float32, one thread). Separately: each seed builds its model
and optimizer as `lossbench train` does (Adam on torch's fused kernel where the device has one)
and trains with `engine.loop.train_epoch`; the figure is the time per run, over `--seeds` runs.
Stacked: groups of G replicas (each built as its run builds it, then stacked: that cost is
counted) trained with `Replicas.train_epoch`; the figure is the time per replica. Both train the
same epochs, without validation. Repetitions run in alternating order (forward, then backward);
each round's ratio (stacked per replica / separate per run) is taken, and the median of those
ratios is what counts. The clock is the process's CPU time by default (one thread: on a shared
machine, time spent waiting for a core is not counted), `--clock wall` for wall time.

Against the physical limit: the arithmetic of a training step (forward 2 × multiply-adds of the
linear layers per sample, backward twice that) per second of each side, beside this machine's
measured matmul peak (float32 `torch.mm` of two 1024 × 1024 matrices, the same threads). Memory:
the peak resident memory a stack of the largest group adds while it trains (measured in a fresh
process, one epoch), beside `stacking.replica_bytes`' estimate that the launcher's automatic cap
divides the available memory by.

Run:  python benchmarks/stacked_replicas.py                # about three minutes on 2 cores
      python benchmarks/stacked_replicas.py --epochs 20 --repeats 5 --groups 1,2,5,10,20,50,100
      python benchmarks/stacked_replicas.py --out benchmarks/results-stacked-replicas.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossbench.data import Split
from lossbench.engine.batches import train_batches
from lossbench.engine.loop import train_epoch
from lossbench.engine.optim import can_fuse
from lossbench.engine.replicas import ReplicaBatches, Replicas, StackedModel, StackedOptimizer
from lossbench.losses import CrossEntropyLoss
from lossbench.models import MLP

BATCH = 128
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}
clock = CLOCKS["cpu"]


def digits_train() -> tuple[torch.Tensor, torch.Tensor]:
    """The 60 % training split of digits, standardised with its own statistics."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rows = np.random.default_rng(0).permutation(len(y))[:int(0.6 * len(y))]
    x = (x[rows] - x[rows].mean(0)) / (x[rows].std(0) + 1e-8)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y[rows])


def built(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Generator]:
    torch.manual_seed(seed)
    model = MLP([64], 10, hidden=HIDDEN)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=can_fuse(torch.optim.Adam, params))
    return model, optimizer, torch.Generator().manual_seed(seed)


def separate(seeds: int, epochs: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per run, `seeds` runs one after another."""
    start = clock()
    split, loss_fn = Split(y=y, x=x), CrossEntropyLoss()
    for seed in range(seeds):
        model, optimizer, generator = built(seed)
        model.train()
        for _ in range(epochs):
            _, batches = train_batches(split, BATCH, generator)
            train_epoch(model, loss_fn, optimizer, batches)
    return (clock() - start) / seeds


def stacked(group: int, epochs: int, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per replica, one stack of `group` replicas (building and stacking included)."""
    start = clock()
    runs = [built(seed) for seed in range(group)]
    modules = [m for m, _, _ in runs]
    model = StackedModel(modules)
    optimizer = StackedOptimizer.from_torch([o for _, o, _ in runs], modules, model.params)
    replicas = Replicas(model, [CrossEntropyLoss() for _ in runs], optimizer,
                        ReplicaBatches(x, y, [g for _, _, g in runs], BATCH))
    for _ in range(epochs):
        replicas.train_epoch()
    float(model.params["net.1.weight"].detach().sum())  # the work done
    return (clock() - start) / group


HIDDEN = (128, 64)


def step_flops(features: int = 64, classes: int = 10) -> int:
    """Floating-point operations of one training sample through the MLP: 2 per multiply-add of
    each linear layer forward, twice that backward (input and weight gradients)."""
    widths = [features, *HIDDEN, classes]
    macs = sum(a * b for a, b in zip(widths, widths[1:]))
    return 3 * 2 * macs


def matmul_peak(size: int = 1024, repeats: int = 20) -> float:
    """This machine's float32 matmul rate, FLOP/s (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def _status_bytes(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for row in status:
            if row.startswith(field + ":"):
                return int(row.split()[1]) * 1024  # kB
    raise KeyError(field)


def _peak_memory(group: int, threads: int, queue: Any) -> None:
    torch.set_num_threads(threads)
    x, y = digits_train()
    stacked(1, 1, x, y)  # torch's first-call allocations, not the stack's
    before = _status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")  # Linux: the peak (VmHWM) starts again from now
    stacked(group, 1, x, y)
    queue.put(_status_bytes("VmHWM") - before)


def peak_memory(group: int, threads: int) -> int:
    """Bytes of resident memory a stack of `group` replicas adds at its peak (a fresh process:
    its data loaded and one replica trained first, then the peak reset and one epoch of the
    stack; Linux)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_peak_memory, args=(group, threads, queue))
    child.start()
    added = queue.get(timeout=600)
    child.join()
    return int(added)


def estimated_bytes() -> int:
    """`stacking.replica_bytes` for the default experiment: what the automatic cap assumes."""
    from omegaconf import OmegaConf

    from lossbench.experiment.stacking import replica_bytes

    cfg = OmegaConf.create({"model": {"_target_": "lossbench.models.MLP", "hidden": list(HIDDEN)},
                            "trainer": {"batch_size": BATCH, "precision": 32},
                            "optimizer": {"_target_": "torch.optim.Adam"}})
    return replica_bytes(cfg, [64], 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=10, help="runs trained separately")
    parser.add_argument("--groups", default="1,2,5,10,20,50,100", help="stack sizes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    x, y = digits_train()
    groups = [int(g) for g in args.groups.split(",")]
    sides = [("separate", lambda: separate(args.seeds, args.epochs, x, y))]
    sides += [(f"stacked {g}", lambda g=g: stacked(g, args.epochs, x, y)) for g in groups]
    for _, measure in sides:  # warm-up: first calls, caches
        measure()
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    for rep in range(args.repeats):
        for name, measure in (sides if rep % 2 == 0 else sides[::-1]):
            times[name].append(measure())
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = {name: statistics.median(a / b for a, b in zip(t, times["separate"]))
             for name, t in times.items()}
    peak = matmul_peak()
    flops = step_flops() * len(y) * args.epochs  # one run's training
    rate = {name: flops / seconds for name, seconds in median.items()}
    largest = max(groups)
    memory = peak_memory(largest, args.threads)
    estimate = estimated_bytes()
    load = os.getloadavg()
    print(f"digits MLP 64-128-64-10, Adam, batch {BATCH}, {len(y)} training samples, "
          f"{args.epochs} epochs; median of {args.repeats}, {args.clock} clock, "
          f"{torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  {'':<14}{'s per run':>12}{'/ separate':>12}{'GFLOP/s':>10}{'of peak':>9}"
          "   (stacked: s per replica)")
    for name, seconds in median.items():
        print(f"  {name:<14}{seconds:>12.4f}{ratio[name]:>12.3f}{rate[name] / 1e9:>10.2f}"
              f"{rate[name] / peak:>9.1%}")
    print(f"matmul peak (float32, 1024², {torch.get_num_threads()} thread(s)): "
          f"{peak / 1e9:.1f} GFLOP/s; a run's training: {flops / 1e9:.2f} GFLOP")
    print(f"memory: a stack of {largest} adds {memory / 2**20:.0f} MiB at its peak "
          f"({memory / largest / 2**20:.2f} MiB a replica); the automatic cap assumes "
          f"{estimate / 2**20:.2f} MiB a replica")
    print(f"rerun: python benchmarks/stacked_replicas.py --epochs {args.epochs} "
          f"--repeats {args.repeats} --groups {args.groups} --clock {args.clock}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "epochs": args.epochs, "seeds": args.seeds, "repeats": args.repeats,
            "threads": torch.get_num_threads(), "clock": args.clock,
            "torch": torch.__version__, "load_average": load, "seconds_per_run": median,
            "ratio_to_separate": ratio, "flop_per_second": rate, "matmul_peak_flop_per_second": peak,
            "largest_group": largest, "largest_group_peak_bytes": memory,
            "estimated_bytes_per_replica": estimate,
            "all": times}, indent=2) + "\n")


if __name__ == "__main__":
    main()

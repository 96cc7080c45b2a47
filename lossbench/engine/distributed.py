"""One training over several processes with torch.distributed (DistributedDataParallel).

Two ways in, one code path:
- `trainer.devices=N` inside one Hydra job: `spawn` starts N worker processes that share the job's
  run directory (rank 0 alone writes it), so one command still makes exactly one run directory;
- `torchrun --nproc_per_node=N -m lossbench train ...`: every process finds RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment (`launched_by_torchrun`).
Either way each process calls `init_from_env`: `gloo` for CPU tensors, `nccl` for CUDA ones.

What the rest of lossbench asks of this module:
- `current()`: this process's rank and the world size (rank 0 of 1 without torch.distributed);
- `shard_order`: a rank's share of one epoch's shuffled permutation (equal lengths on every rank,
  so every rank takes the same number of optimizer steps and DDP's all-reduces pair up);
- `eval_range` and `gather_rows`: each rank evaluates a contiguous slice of a split and the slices
  are gathered back in order, so a report covers every sample of the split exactly once;
- `broadcast_object`: rank 0's per-epoch row, so early stopping decides the same on every rank.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as tdist

from lossbench.errors import UserError

ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    """Where this process stands: global rank, world size, rank on this machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 prints, logs and writes files; the others only compute."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def current() -> Dist:
    """This process's place in the process group (rank 0 of 1 when there is none)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    rank = tdist.get_rank()
    return Dist(rank, tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets the env:// variables)."""
    return all(k in os.environ for k in ENV_KEYS) and int(os.environ["WORLD_SIZE"]) > 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device one rank trains on: CUDA rank r takes GPU `local_rank`; CPU ranks share the CPU."""
    if world_size <= 1:
        return device
    if device.type == "cuda":
        if device.index not in (None, 0):
            raise UserError(f"trainer.device={device} with several processes: each process "
                            "takes its own GPU (cuda:0, cuda:1, ...); use trainer.device=cuda")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(f"{world_size} processes per machine need {world_size} GPUs; "
                            f"{count} found")
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise UserError(f"several processes run on cpu (gloo) or cuda (nccl), not {device.type}")
    return device


def init_from_env(device: torch.device) -> Dist:
    """Join the process group described by the env:// variables; returns this process's place.

    On CPU the machine's cores are divided between the ranks, so N processes do not each start
    a full set of intra-op threads and fight over the same cores.
    """
    world_size = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = rank_device(device, local_rank, world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl and broadcast_object_list use the current device
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not tdist.is_initialized():
        tdist.init_process_group(backend_for(device), init_method="env://",
                                 rank=rank, world_size=world_size)
    return Dist(rank, world_size, local_rank)


def shutdown(together: bool = False) -> None:
    """Leave the process group. `together` (after a run that went well) first waits for every
    rank: a rank that tears its connections down while another still uses them makes that one
    abort. After an error there is no waiting, since the others may never arrive."""
    if tdist.is_available() and tdist.is_initialized():
        if together:
            tdist.barrier()
        tdist.destroy_process_group()


def exit_process(code: int = 0) -> NoReturn:
    """End a rank's process at once, once its run is over and its files are written.

    The communication library's C++ threads can abort the interpreter's normal exit
    ("terminate called without an active exception", SIGABRT) after a run that went well,
    which a launcher then reports as a failed run. Flushing and leaving with os._exit skips
    those destructors; nothing is left to save by then.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawned(rank: int, world_size: int, port: int, errors: Any,
             worker: Callable[..., Any], args: tuple) -> None:
    """Entry point of one spawned process: set the env:// variables torchrun would set, run."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    try:
        worker(*args)
    except UserError as err:
        errors.put(str(err))
        shutdown()
        raise  # a non-zero exit makes the parent stop the other ranks instead of waiting
    shutdown(together=True)
    exit_process(0)


def spawn(worker: Callable[..., Any], world_size: int, args: tuple) -> None:
    """Run `worker(*args)` in `world_size` fresh processes forming one process group.

    A `UserError` in any rank is raised again here, as the one line the user should see.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    # "spawn", not "fork": a forked child would inherit this process's CUDA and OpenMP state.
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.start_processes(_spawned, args=(world_size, free_port(), errors, worker, args),
                           nprocs=world_size, join=True, start_method="spawn")
    except ProcessException:
        if not errors.empty():
            raise UserError(errors.get()) from None
        raise


def shard_order(order: torch.Tensor, dist: Dist) -> torch.Tensor:
    """This rank's share of an epoch's permutation (N,) -> (ceil(N / world),).

    The permutation is padded by wrapping around to a multiple of the world size (as
    DistributedSampler does), so every rank gets the same number of samples and batches; the
    ranks then take every world_size-th index from their own offset.
    """
    if not dist.active:
        return order
    total = -(-len(order) // dist.world_size) * dist.world_size
    if total > len(order):
        order = torch.cat([order, order[:total - len(order)]])
    return order[dist.rank::dist.world_size]


def eval_range(n: int, dist: Dist) -> tuple[int, int]:
    """[start, stop) of the first n samples that this rank evaluates: contiguous, disjoint
    slices that cover 0..n-1 exactly once when concatenated in rank order."""
    if not dist.active:
        return 0, n
    chunk = -(-n // dist.world_size)
    return min(dist.rank * chunk, n), min((dist.rank + 1) * chunk, n)


def gather_rows(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Concatenate every rank's (n_r, ...) tensor along dim 0, in rank order, on every rank.

    Ranks may hold different n_r (the last slice is shorter), so each pads to the largest
    before all_gather and the padding is cut off afterwards.
    """
    if not dist.active:
        return t
    size = torch.tensor([t.shape[0]], device=t.device, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(dist.world_size)]
    tdist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    longest = max(counts)
    padded = t
    if t.shape[0] < longest:
        pad = t.new_zeros((longest - t.shape[0], *t.shape[1:]))
        padded = torch.cat([t, pad])
    parts = [torch.empty_like(padded) for _ in range(dist.world_size)]
    tdist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Sum of `t` over the ranks (returned on every rank)."""
    if dist.active:
        t = t.clone()
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def broadcast_object(obj: Any, dist: Dist) -> Any:
    """Rank 0's `obj` on every rank (a small picklable value, e.g. one epoch's metrics row)."""
    if not dist.active:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def training_class_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float64 number of training samples per class, as the loss must see them.

    Under DDP every process holds the whole training split and trains on a shard of it per
    epoch; each counts a fixed stride of the labels (rank r: samples r, r + W, ...) and the
    counts are summed over the processes, so that every rank gets the counts of the whole split
    and a rank that held different data would show in the sum.
    """
    dist = current()
    own = y[dist.rank::dist.world_size] if dist.active else y
    counts = torch.bincount(own.long().flatten(), minlength=num_classes).to(torch.float64)
    return all_reduce_sum(counts.to(y.device), dist).cpu()

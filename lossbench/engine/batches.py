"""Batches of a split: the one reader that training, validation and attacks all go through.

A split's samples are either in-memory tensors (`split.x`, `split.y`, already on the run's
device) or a `Dataset` read per sample (on-disk or augmented images) through a DataLoader.
`read_batches` takes the rows to read, in the order to read them: a `range` (in order, as
evaluation reads) or an index tensor (an epoch's permutation, as training reads); training and
evaluation differ only in which rows they ask for and which DataLoader reads them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch

from lossbench.engine import distributed
from lossbench.data import Split
from lossbench.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]  # (x (B, ...), y (B,))

# The most training samples `read_batches` copies at once: a chunk this small is still in the
# processor's cache when the steps read it (64 MiB chunks read an epoch of CIFAR-sized images
# 2.5x slower than one gather per batch; benchmarks/data_paths.py).
GATHER_BYTES = 4 * 2**20


def read_batches(split: Split, rows: range | torch.Tensor, batch_size: int,
                 loader: torch.utils.data.DataLoader | None = None,
                 device: torch.device | None = None) -> Iterator[Batch]:
    """The (x, y) batches of `rows` of a split, in the order of `rows`.

    With `loader` (a DataLoader already set to read those rows) the batches come from it, moved
    to `device` (by default that of `split.y`). Otherwise they are cut from the split's tensors: a `range` is
    sliced (views, no copy); an index tensor is gathered a run of batches at a time, with one
    index per tensor, and handed out as contiguous slices of that run: two gathers per chunk
    instead of two per step, about 5 % of a small model's epoch. A chunk holds at most
    GATHER_BYTES of samples (at least one batch).
    """
    if loader is not None:
        yield from loader_batches(loader, device or split.y.device)
        return
    if isinstance(rows, range):
        for start in range(rows.start, rows.stop, batch_size):
            stop = min(start + batch_size, rows.stop)
            yield split.x[start:stop], split.y[start:stop]
        return
    rows = rows.to(split.x.device)
    sample_bytes = split.x[:1].numel() * split.x.element_size()
    per_chunk = max(1, GATHER_BYTES // max(batch_size * sample_bytes, 1)) * batch_size
    for first in range(0, len(rows), per_chunk):
        idx = rows[first:first + per_chunk]
        xs, ys = split.x[idx], split.y[idx]  # (≤ per_chunk, ...), the same samples in order
        for b in range(0, len(ys), batch_size):
            yield xs[b:b + batch_size], ys[b:b + batch_size]


def loader_batches(loader: torch.utils.data.DataLoader, device: torch.device
                   ) -> Iterator[Batch]:
    """The (x, y) batches of a DataLoader, moved to `device`. A sample that cannot be read
    (an image file damaged or removed since the run started) stops the run with one line: a
    worker's error reaches this process wrapped with the worker's traceback, which is cut off."""
    try:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    except UserError as err:
        last = str(err).strip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


def loader_options(device: torch.device, num_workers: int | str = "auto") -> dict:
    """DataLoader options for data read per sample (on-disk images): worker processes decode
    while the GPU computes, into pinned memory so host-to-GPU copies can overlap. On CPU the
    cores are busy training, so `auto` reads in the main process."""
    if num_workers == "auto":
        per_rank = (os.cpu_count() or 1) // max(distributed.current().world_size, 1)
        num_workers = min(4, max(per_rank - 1, 0)) if device.type == "cuda" else 0
    return {"num_workers": int(num_workers), "pin_memory": device.type == "cuda"}


# --- training: one shuffled epoch --------------------------------------------------------------

class EpochOrder(torch.utils.data.Sampler):
    """The sample order of the current epoch, replaced before each epoch, so that one DataLoader
    (and its persistent workers) serves every epoch."""

    def __init__(self) -> None:
        self.order: list[int | tuple[int, int]] = []  # dataset keys: (index, epoch seed)

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def epoch_loader(split: Split, batch_size: int, loader_kwargs: dict | None = None
                 ) -> torch.utils.data.DataLoader:
    """The DataLoader of a split read through its `dataset`, built on first use and kept."""
    if split.loader is None or split.loader.batch_size != batch_size:
        # num_workers, pin_memory: as asked, else as the run set them for the split
        kwargs = dict(loader_kwargs or split.loader_options or {})
        split.loader = torch.utils.data.DataLoader(
            split.dataset, batch_size=batch_size, sampler=EpochOrder(),
            persistent_workers=int(kwargs.get("num_workers") or 0) > 0, **kwargs)
    return split.loader


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n,) the order one training epoch reads the samples in, before any sharding: a
    permutation drawn from `generator` on its own device."""
    return torch.randperm(n, generator=generator, device=generator.device)


def train_batches(split: Split, batch_size: int, generator: torch.Generator,
                  max_batches: int | None = None, loader_kwargs: dict | None = None,
                  skip: int = 0) -> tuple[int, Iterator[Batch]]:
    """(number of batches, iterator) over one shuffled epoch of the training split; the
    iterator leaves out the first `skip` batches (an epoch resumed from a checkpoint), and the
    number counts them.

    In-memory tensors are sliced by a random permutation on their own device (no Dataset, no
    per-sample Python); on-disk or augmented data goes through a DataLoader reading the same
    permutation. Over several processes every rank draws the same permutation (same seed) and
    keeps its own shard of it, all shards of equal length.
    """
    order = distributed.shard_order(epoch_order(len(split), generator), distributed.current())
    n = math.ceil(len(order) / batch_size)
    if max_batches is not None:
        n = min(n, max_batches)
    rows = order[skip * batch_size:n * batch_size]  # no sample read for nothing
    if split.dataset is None:
        return n, read_batches(split, rows, batch_size)
    loader = epoch_loader(split, batch_size, loader_kwargs)  # on-disk or augmented samples
    keys = rows.tolist()
    if getattr(split.dataset, "augments", False):
        # one seed per epoch, from the generator a checkpoint holds, travels with every index:
        # the crops and flips depend on (index, seed) only, not on which worker reads them
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        keys = [(i, seed) for i in keys]
    loader.sampler.order = keys
    return n, read_batches(split, rows, batch_size, loader)


# --- evaluation: a split in order --------------------------------------------------------------

def split_loader(split: Split, lo: int, hi: int, batch_size: int, device: torch.device
                 ) -> torch.utils.data.DataLoader:
    """The DataLoader over samples lo..hi-1 of a split, in order, with the run's workers; built
    on first use and kept, so that its workers persist from one validation to the next."""
    if split.eval_loader is None or split.eval_loader[:2] != ((lo, hi), batch_size):
        options = dict(split.loader_options or loader_options(device))
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(split.dataset, range(lo, hi)), batch_size=batch_size,
            shuffle=False, persistent_workers=options["num_workers"] > 0, **options)
        split.eval_loader = ((lo, hi), batch_size, loader)
    return split.eval_loader[2]


def eval_batches(split: Split, batch_size: int, device: torch.device,
                 max_batches: int | None = None, whole: bool = False) -> Iterator[Batch]:
    """Batches of a split in order, sliced from tensors (or read through a DataLoader).

    Over several processes each rank reads only its contiguous slice of the split (see
    `distributed.eval_range`; `model_outputs` gathers the slices back in order), unless
    `whole`: then the calling process reads every row (an attack that only the main process
    reports).
    """
    n = len(split)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    lo, hi = (0, n) if whole else distributed.eval_range(n, distributed.current())
    if lo == hi and not whole:  # more ranks than samples: an empty batch of the right shape
        # keeps the gathers of all ranks alike
        if split.x is not None:
            yield split.x[lo:hi], split.y[lo:hi]
        else:
            x = split.dataset[0][0] if len(split) else torch.zeros(0)
            yield x.new_zeros((0, *x.shape)).to(device), split.y[lo:hi].to(device)
        return
    loader = split_loader(split, lo, hi, batch_size, device) if split.x is None else None
    yield from read_batches(split, range(lo, hi), batch_size, loader, device)

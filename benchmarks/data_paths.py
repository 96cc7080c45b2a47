"""How much the training batches of one epoch cost: tensors sliced in memory versus a DataLoader.

Data that fits in memory and is not augmented keeps the tensor path (a permutation, then
slices); augmented images go through a DataLoader that crops and flips each sample, and an image
folder read from disk (`dataset.in_memory=false`) decodes each PNG file in the DataLoader. This
measures all of them on CIFAR-sized random images, side by side in one process, with no model in
the loop, and prints medians and ratios.

Run: python benchmarks/data_paths.py [--n 10000] [--batch-size 128] [--repeats 5] [--workers 0]
                                     [--threads 1]
(one intra-op thread by default: on a shared machine more threads measure contention instead)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import torch

from lossbench.data import Split
from lossbench.data.augment import AugmentedImages
from lossbench.data.files import ImageFiles
from lossbench.data.prepare import ScaledImages
from lossbench.engine.batches import train_batches


def epoch_seconds(split: Split, batch_size: int, workers: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    _, batches = train_batches(split, batch_size, generator,
                               loader_kwargs={"num_workers": workers, "pin_memory": False})
    for x, _ in batches:
        x.sum()  # touch every batch as a model would
    return time.perf_counter() - start


def write_pngs(folder: Path, n: int) -> list[Path]:
    """n random 32×32 RGB PNG files (in the page cache once written, as after a first epoch)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    files = [folder / f"{i}.png" for i in range(n)]
    for f in files:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(f)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.n, 3, 32, 32)  # (N, C, H, W)
    y = torch.randint(0, 10, (args.n,))
    folder = Path(tempfile.mkdtemp(prefix="lossbench-pngs-"))
    try:
        files = write_pngs(folder, args.n)
        on_disk = AugmentedImages(ScaledImages(ImageFiles(files, (32, 32), "RGB"), 127.5, 64.0), y)
        paths = {
            "tensor slices": Split(y=y, x=x),
            "DataLoader, no augmentation": Split(y=y, x=x, dataset=AugmentedImages(x, y)),
            "DataLoader, crop 4 + flip": Split(y=y, x=x, dataset=AugmentedImages(x, y, 4, True)),
            "PNG files read from disk": Split(y=y, dataset=on_disk),
        }
        times = {}
        for name, split in paths.items():
            epoch_seconds(split, args.batch_size, args.workers, 0)  # warm-up (workers, caches)
            times[name] = statistics.median(epoch_seconds(split, args.batch_size, args.workers, r)
                                            for r in range(1, args.repeats + 1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    base = times["tensor slices"]
    print(f"one epoch of {args.n} images (3, 32, 32), batch {args.batch_size}, "
          f"{args.workers} workers, median of {args.repeats}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for name, seconds in times.items():
        print(f"  {name:<30} {seconds * 1e3:9.1f} ms   ×{seconds / base:7.1f} of tensor slices")


if __name__ == "__main__":
    main()

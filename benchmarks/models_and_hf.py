"""Two costs of the user's own model and data, each measured side by side in one process:

1. Reading: the same CIFAR-sized images as an .npz archive (`dataset=npz`), as a Hugging Face
   `save_to_disk` folder with an Image column (PNG, decoded by `datasets`) and with an array
   column (Arrow, no decoding) (`dataset=hf`): the one-time load (decoding, split, scaling),
   then an epoch of training batches (lossbench's own batch reader, no model), in samples/s;
   target: an HF epoch ≥ 0.8× an npz epoch.
2. A training step (forward, backward, SGD) of ResNet-18 on 32×32 images: the built-in
   `model=resnet18` against `model=torchvision model.name=resnet18` and `model=timm
   model.name=resnet18` (each with the CIFAR stem lossbench gives ResNets on small images).

Medians of --repeats runs; ratios against the first row. Absolute times depend on the machine:
name it when quoting them.

Run: python benchmarks/models_and_hf.py [--n 10000] [--batch-size 128] [--repeats 5]
                                        [--step-batch 32] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def interleaved_medians(work: dict[str, Callable[[], object]], repeats: int
                        ) -> dict[str, float]:
    """Median seconds of each piece of work, run in turn within every repeat, so that a busy
    machine slows them all alike."""
    times: dict[str, list[float]] = {name: [] for name in work}
    for _ in range(repeats):
        for name, run in work.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def write_data(folder: Path, n: int) -> dict[str, str]:
    """The same n random 32×32 RGB images and 10 classes in the three formats."""
    import datasets

    datasets.disable_progress_bars()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
    y = rng.integers(0, 10, n)
    np.savez(folder / "images.npz", x=x.transpose(0, 3, 1, 2), y=y)
    label = datasets.ClassLabel(num_classes=10)
    png = datasets.Features({"image": datasets.Image(), "label": label})
    datasets.Dataset.from_dict({"image": list(x), "label": y}, features=png
                               ).save_to_disk(folder / "hf_png")
    arrays = datasets.Features({"image": datasets.Array3D((32, 32, 3), "uint8"), "label": label})
    datasets.Dataset.from_dict({"image": x, "label": y}, features=arrays
                               ).save_to_disk(folder / "hf_array")
    return {"npz": str(folder / "images.npz"), "hf (PNG Image column)": str(folder / "hf_png"),
            "hf (Array3D column)": str(folder / "hf_array")}


def reading(paths: dict[str, str], batch_size: int, repeats: int
            ) -> list[tuple[str, float, float]]:
    """(format, load seconds, one epoch of training batches in samples/s) per format; loading
    includes decoding (PNG) and lossbench's split and scaling."""
    from lossbench.data.files import npz
    from lossbench.data.hf import hf
    from lossbench.data.prepare import prepare_data
    from lossbench.engine.batches import train_batches

    split = {"train": 0.8, "val": 0.1, "test": 0.1}
    loaded = {}

    def loader(name: str, path: str) -> Callable[[], object]:
        def load():
            loaded[name] = prepare_data(npz(path) if name == "npz" else hf(path), split=split,
                                        seed=0)
        return load

    def epoch(name: str) -> Callable[[], object]:
        def run():
            _, batches = train_batches(loaded[name].train, batch_size,
                                       torch.Generator().manual_seed(0))
            for x, _ in batches:
                x.sum()  # touch every batch as a model would
        return run

    loads = {name: loader(name, path) for name, path in paths.items()}
    for load in loads.values():
        load()  # warm the page cache and the imports
    load_s = interleaved_medians(loads, repeats)
    epoch_s = interleaved_medians({name: epoch(name) for name in paths}, repeats)
    return [(name, load_s[name], len(loaded[name].train) / epoch_s[name]) for name in paths]


def steps(batch: int, repeats: int, device: torch.device) -> list[tuple[str, float]]:
    """(model, training steps per second) for ResNet-18 on (batch, 3, 32, 32)."""
    from lossbench.library_models import timm_model, torchvision_model
    from lossbench.models import resnet18

    builders = {"built-in resnet18": lambda: resnet18((3, 32, 32), 10),
                "torchvision resnet18": lambda: torchvision_model((3, 32, 32), 10, "resnet18")}
    try:
        import timm  # noqa: F401
        builders["timm resnet18"] = lambda: timm_model((3, 32, 32), 10, "resnet18")
    except ImportError:
        pass
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    def stepper(build: Callable[[], torch.nn.Module]) -> Callable[[], object]:
        torch.manual_seed(0)
        model = build().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up
        return step

    seconds = interleaved_medians({name: stepper(b) for name, b in builders.items()}, repeats)
    return [(name, 1.0 / s) for name, s in seconds.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_data(Path(tmp), args.n)
        read = reading(paths, args.batch_size, args.repeats)
    base = read[0][2]
    base_load = read[0][1]
    print(f"Reading {args.n} 32×32 RGB images: loading (decode, split, scale) once, then an "
          f"epoch of batches of {args.batch_size} (medians of {args.repeats}, "
          f"{args.threads} thread(s)):")
    for name, load_s, rate in read:
        print(f"  {name:<24} load {load_s:7.3f} s ({load_s / base_load:5.1f}× npz)   epoch "
              f"{rate:10.0f} samples/s ({rate / base:4.2f}× npz)")
    made = steps(args.step_batch, args.repeats, torch.device(args.device))
    base = made[0][1]
    print(f"\nResNet-18 training step, batch {args.step_batch} × 3×32×32 on {args.device} "
          f"(median of {args.repeats}):")
    for name, rate in made:
        print(f"  {name:<24} {rate:8.2f} steps/s   {rate / base:5.2f}× built-in")
    print("\nrerun: python benchmarks/models_and_hf.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()))


if __name__ == "__main__":
    main()

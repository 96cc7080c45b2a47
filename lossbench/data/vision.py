"""Image benchmarks from torchvision (MNIST, Fashion-MNIST, CIFAR-10/100) and FakeData.

Each keeps its official test split (RawData.x_test / y_test). Images stay uint8 (N, C, H, W)
until `prepare_data` normalises them with the training split's per-channel statistics.

Files live under `root`: by default the folder named by the environment variable LOSSBENCH_DATA,
else ~/.cache/lossbench/data. When they are missing, `download=true` fetches them; when that is
impossible the run stops with one line naming the dataset, the folder and the fix.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import pickle
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lossbench.data.raw import RawData
from lossbench.errors import UserError


def data_root(root: str | None = None) -> Path:
    """The folder datasets are read from and downloaded to."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("LOSSBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lossbench" / "data"


def _missing(name: str, folder: Path, looked_for: Path, reason: str) -> UserError:
    return UserError(
        f"dataset {name}: files not found in {folder} (looked for {looked_for}) and {reason}; "
        f"put the files there, or set dataset.root=<folder> (or LOSSBENCH_DATA) to where they are")


def _fetch(name: str, folder: Path, looked_for: Path, download: bool,
           fetch: Callable[[], object]) -> None:
    """Make sure the files exist: download them with `fetch` if allowed, else explain."""
    if looked_for.exists():
        return
    if not download:
        raise _missing(name, folder, looked_for, "dataset.download=false")
    try:
        # torchvision announces each mirror it tries on stdout; the outcome is what matters
        with contextlib.redirect_stdout(io.StringIO()):
            fetch()
    except Exception as err:  # noqa: BLE001 - network, HTTP and checksum failures all mean "not here"
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise _missing(name, folder, looked_for, f"downloading them failed ({reason})") from None
    if not looked_for.exists():
        raise _missing(name, folder, looked_for, "the download did not produce them")


# --- MNIST and Fashion-MNIST: IDX files --------------------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def _idx_dataset(name: str, folder_name: str, tv_class: str, class_names: list[str],
                 root: str | None, download: bool) -> RawData:
    from torchvision import datasets
    from torchvision.datasets.mnist import read_image_file, read_label_file

    base = data_root(root)
    raw_dir = base / folder_name / "raw"
    for f in MNIST_FILES:  # the files as published are gzipped; unpack any found that way
        packed = raw_dir / f"{f}.gz"
        if not (raw_dir / f).exists() and packed.exists():
            try:
                with gzip.open(packed, "rb") as src, (raw_dir / f).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as err:
                (raw_dir / f).unlink(missing_ok=True)
                raise UserError(f"dataset {name}: {packed} cannot be unpacked ({err}); delete it "
                                "to download it again") from None
    missing = [f for f in MNIST_FILES if not (raw_dir / f).exists()]
    looked_for = raw_dir / (missing[0] if missing else MNIST_FILES[0])
    _fetch(name, base, looked_for, download,
           lambda: getattr(datasets, tv_class)(str(base), train=True, download=True))
    try:
        x, y, x_test, y_test = (read_image_file(str(raw_dir / MNIST_FILES[0])),
                                read_label_file(str(raw_dir / MNIST_FILES[1])),
                                read_image_file(str(raw_dir / MNIST_FILES[2])),
                                read_label_file(str(raw_dir / MNIST_FILES[3])))
    except (OSError, AssertionError, RuntimeError, ValueError) as err:
        raise UserError(f"dataset {name}: the IDX files in {raw_dir} cannot be read ({err}); "
                        "delete them to download them again") from None
    return RawData(x=x.numpy()[:, None], y=y.numpy().astype(np.int64), task="multiclass",
                   name=name, class_names=class_names, x_test=x_test.numpy()[:, None],
                   y_test=y_test.numpy().astype(np.int64))


def mnist(root: str | None = None, download: bool = True) -> RawData:
    """Handwritten digits, 60,000 train / 10,000 test, (1, 28, 28), 10 classes named by digit."""
    return _idx_dataset("mnist", "MNIST", "MNIST", [str(d) for d in range(10)], root, download)


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def fashion_mnist(root: str | None = None, download: bool = True) -> RawData:
    """Zalando's clothing images, 60,000 train / 10,000 test, (1, 28, 28), 10 classes."""
    return _idx_dataset("fashion_mnist", "FashionMNIST", "FashionMNIST", FASHION_CLASSES, root,
                        download)


# --- CIFAR-10 and CIFAR-100: pickled batches -----------------------------------------------------

def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(name: str, folder_name: str, tv_class: str, train_files: Sequence[str],
           test_file: str, meta_file: str, label_key: bytes, names_key: bytes,
           root: str | None, download: bool) -> RawData:
    """Read CIFAR's python batches: dicts with b'data' (N, 3072) uint8 rows in R, G, B planes
    of 32 × 32, the labels under `label_key`, and class names in the meta file."""
    from torchvision import datasets

    base = data_root(root)
    folder = base / folder_name
    needed = [*train_files, test_file, meta_file]
    missing = [f for f in needed if not (folder / f).exists()]
    looked_for = folder / (missing[0] if missing else needed[0])
    _fetch(name, base, looked_for, download,
           lambda: getattr(datasets, tv_class)(str(base), train=True, download=True))

    def read(file: str) -> tuple[np.ndarray, np.ndarray]:
        batch = _unpickle(folder / file)
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # (N, C, H, W)
        return x, np.asarray(batch[label_key], dtype=np.int64)

    try:
        parts = [read(f) for f in train_files]
        x_test, y_test = read(test_file)
        meta = _unpickle(folder / meta_file)
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"dataset {name}: the batch files in {folder} cannot be read "
                        f"({type(err).__name__}: {err}); delete them to download them again"
                        ) from None
    return RawData(x=np.concatenate([p[0] for p in parts]),
                   y=np.concatenate([p[1] for p in parts]), task="multiclass", name=name,
                   class_names=class_names, x_test=x_test, y_test=y_test)


def cifar10(root: str | None = None, download: bool = True) -> RawData:
    """Tiny colour photos, 50,000 train / 10,000 test, (3, 32, 32), 10 classes."""
    return _cifar("cifar10", "cifar-10-batches-py", "CIFAR10",
                  [f"data_batch_{i}" for i in range(1, 6)], "test_batch", "batches.meta",
                  b"labels", b"label_names", root, download)


def cifar100(root: str | None = None, download: bool = True) -> RawData:
    """Tiny colour photos, 50,000 train / 10,000 test, (3, 32, 32), 100 fine classes."""
    return _cifar("cifar100", "cifar-100-python", "CIFAR100", ["train"], "test", "meta",
                  b"fine_labels", b"fine_label_names", root, download)


# --- FakeData ------------------------------------------------------------------------------------

def fake_images(n_samples: int = 256, n_test: int = 64, image_size: Sequence[int] = (3, 32, 32),
                num_classes: int = 10, random_state: int = 0) -> RawData:
    """Random images with random labels (torchvision's FakeData): exercises image models and the
    augmentation path in seconds, with nothing to learn."""
    from torchvision import datasets
    from torchvision.transforms import PILToTensor

    if len(image_size) != 3:
        raise UserError(f"dataset.image_size={list(image_size)} must be [channels, height, width]")
    if num_classes < 2:
        raise UserError(f"dataset.num_classes={num_classes} must be at least 2")

    def draw(size: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        data = datasets.FakeData(size=size, image_size=tuple(image_size), num_classes=num_classes,
                                 transform=PILToTensor(), random_offset=offset)
        xs, ys = zip(*(data[i] for i in range(size)))
        return np.stack([x.numpy() for x in xs]), np.asarray(ys, dtype=np.int64)

    x, y = draw(n_samples, random_state * 1_000_003)
    x_test, y_test = draw(n_test, random_state * 1_000_003 + n_samples)
    return RawData(x=x, y=y, task="binary" if num_classes == 2 else "multiclass",
                   name="fake_images", class_names=[str(k) for k in range(num_classes)],
                   x_test=x_test, y_test=y_test)

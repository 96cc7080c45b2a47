"""The user's own data: a CSV table, an .npz archive of arrays, or a folder of images per class.

Every problem with the data is a `UserError` naming the file and what is wrong, raised before
anything is trained or written.
"""

from __future__ import annotations

import csv as csv_module
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.console import shown_path
from lossbench.data.raw import TASKS, RawData
from lossbench.errors import UserError

# A target with at most this many distinct integer values is taken for class labels.
MAX_INFERRED_CLASSES = 50
MISSING = {"", "na", "nan", "null", "none", "n/a", "?"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm"}


def shown(path: str | Path) -> str:
    """A data location as the user typed it: a run records its relative dataset paths as
    absolute (`absolute_paths`), and messages show them relative to the working directory again
    when they lie inside it (`dataset.path=pics`, not /home/.../pics)."""
    text = str(path)
    return str(shown_path(text)) if Path(text).is_absolute() else text


def _existing(path: str | None, setting: str) -> Path:
    if not path:
        raise UserError(f"{setting} is not set; give the data's location, e.g. {setting}=data/x")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{setting}={shown(path)}: no such file or folder")
    return p


def is_path_key(key: str) -> bool:
    """Whether a dataset config key holds a location: `path`, `*_path`, `root`, `*_dir`."""
    return key in ("path", "root") or key.endswith(("_path", "_dir"))


def absolute_paths(dataset: Any, cwd: str | Path) -> list[str]:
    """Make the dataset config's relative file locations absolute, against `cwd` (the folder
    lossbench was run from), in place; the keys changed. A run's saved config then names the
    same files when it is evaluated or resumed from another folder. Only a value naming a file
    or folder that exists there changes (a hub dataset's name stays a name)."""
    changed = []
    for key in list(dataset.keys()) if hasattr(dataset, "keys") else []:
        value = dataset.get(key)
        if not (is_path_key(str(key)) and isinstance(value, str) and value):
            continue
        path = Path(value).expanduser()
        if path.is_absolute() or "://" in value or not (Path(cwd) / path).exists():
            continue
        dataset[key] = str((Path(cwd) / path).resolve())
        changed.append(str(key))
    return changed


def encode_targets(y: np.ndarray, task: str | None, where: str
                   ) -> tuple[np.ndarray, str, list[str] | None]:
    """Targets as loaded (numbers or text) → (encoded targets, task, class names).

    Text targets are class names (sorted). Numbers are class labels when the task says so, or,
    with no task given, when they are whole numbers with at most MAX_INFERRED_CLASSES values;
    otherwise they are regression targets. Class labels are encoded as 0..K-1 in sorted order.
    """
    if task is not None and task not in TASKS:
        raise UserError(f"{where}: task={task} must be one of {', '.join(TASKS)} (or null to "
                        "infer it from the target)")
    numeric = y.dtype.kind in "biuf"
    if not numeric:
        y = y.astype(str)
        if task == "regression":
            raise UserError(f"{where}: task=regression but the target holds text, e.g. {y[0]!r}")
    if numeric and task is None:
        values = np.unique(y)
        whole = bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))
        task = "multiclass" if whole and len(values) <= MAX_INFERRED_CLASSES else "regression"
    if task == "regression":
        return y.astype(np.float32), task, None
    values, codes = np.unique(y, return_inverse=True)
    if len(values) < 2:
        raise UserError(f"{where}: the target has a single class ({values[0]!r}); "
                        "classification needs at least two")
    if task == "binary" and len(values) != 2:
        raise UserError(f"{where}: task=binary but the target has {len(values)} classes")
    if task is None:
        task = "binary" if len(values) == 2 else "multiclass"
    names = [str(int(v)) if numeric and float(v).is_integer() else str(v) for v in values]
    return codes.astype(np.int64), task, names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv(path: str, target: str, features: Sequence[str] | None = None, task: str | None = None,
        delimiter: str = ",") -> RawData:
    """A table with a header row: one `target` column, numeric feature columns.

    features: the columns to use (default: every other column). task: multiclass, binary or
    regression; null infers it from the target (text → classes).
    """
    p = _existing(path, "dataset.path")
    where = f"dataset.path={shown(path)}"
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv_module.reader(f, delimiter=delimiter) if row]
    except (OSError, UnicodeDecodeError, csv_module.Error) as err:
        raise UserError(f"{where}: cannot read it as CSV ({err})") from None
    if not rows:
        raise UserError(f"{where}: the file is empty; it needs a header row and data rows")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise UserError(f"{where}: the file has a header but no data rows")
    if target not in header:
        raise UserError(f"{where}: no column named {target!r} for dataset.target; the columns "
                        f"are {', '.join(header)} (delimiter {delimiter!r})")
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UserError(f"{where}: line {number} has {len(row)} fields but the header has "
                            f"{len(header)}")
    if isinstance(features, str):  # dataset.features=age: one column
        features = [features]
    names = list(features) if features is not None else [h for h in header if h != target]
    unknown = [n for n in names if n not in header]
    if unknown:
        raise UserError(f"{where}: dataset.features names {', '.join(map(repr, unknown))}, not "
                        f"columns of the file; the columns are {', '.join(header)}")
    if target in names:
        raise UserError(f"{where}: the target column {target!r} is also listed in "
                        "dataset.features")
    if not names:
        raise UserError(f"{where}: no feature columns besides the target {target!r}")
    columns = {h: [row[i].strip() for row in body] for i, h in enumerate(header)}
    for name in [*names, target]:
        gaps = [i for i, v in enumerate(columns[name], start=2) if v.lower() in MISSING]
        if gaps:
            raise UserError(f"{where}: column {name!r} has {len(gaps)} missing value"
                            f"{'s' * (len(gaps) != 1)} (first on line {gaps[0]}); fill them in "
                            "or drop those rows")
    x = np.empty((len(body), len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        try:
            x[:, j] = np.asarray(columns[name], dtype=np.float64)
        except ValueError:  # find the first offender to name it
            i, value = next((i, v) for i, v in enumerate(columns[name]) if not _is_number(v))
            raise UserError(f"{where}: column {name!r} has the non-numeric value {value!r} on "
                            f"line {i + 2}; features must be numbers (encode categories as "
                            "numbers, or leave the column out of dataset.features)") from None
    if not np.all(np.isfinite(x)):
        raise UserError(f"{where}: the features hold infinite values")
    raw_y = np.array(columns[target])
    try:
        raw_y = raw_y.astype(np.float64)
    except ValueError:
        pass  # text: class names
    y, task, class_names = encode_targets(raw_y, task, f"{where}, column {target!r}")
    return RawData(x=x, y=y, task=task, name=p.name, class_names=class_names)


def npz(path: str, task: str | None = None) -> RawData:
    """Arrays `x` (N, *sample_shape) and `y` (N,); optional `x_test`, `y_test` as a fixed test split.

    Any sample shape: vectors (N, F), sequences (N, C, L), images (N, C, H, W); a 1-D `x` is
    one feature per sample.
    """
    p = _existing(path, "dataset.path")
    where = f"dataset.path={shown(path)}"
    try:
        with np.load(p, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{where}: cannot read it as an .npz archive ({err})") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise UserError(f"{where}: no array named {' or '.join(missing)}; it holds "
                        f"{', '.join(sorted(arrays)) or 'no arrays'} (needed: x, y; optional: "
                        "x_test, y_test)")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise UserError(f"{where}: x_test and y_test come together; it holds only one of them")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if "x_test" in arrays else [])
    for xk, yk in pairs:
        xa, ya = arrays[xk], arrays[yk]
        if xa.ndim == 0 or ya.ndim != 1:
            raise UserError(f"{where}: {yk} must be one-dimensional (N,) and {xk} (N, ...); got "
                            f"shapes {xa.shape} and {ya.shape}")
        if len(xa) != len(ya):
            raise UserError(f"{where}: {xk} has {len(xa)} samples but {yk} has {len(ya)}")
        if len(xa) == 0:
            raise UserError(f"{where}: {xk} holds no samples")
        if xa.dtype.kind not in "biuf":
            raise UserError(f"{where}: {xk} holds {xa.dtype} values; features must be numbers")
        if xa.dtype.kind == "f" and not np.all(np.isfinite(xa)):
            raise UserError(f"{where}: {xk} holds missing (NaN) or infinite values")
    x = arrays["x"].reshape(len(arrays["x"]), -1) if arrays["x"].ndim == 1 else arrays["x"]
    x_test = arrays.get("x_test")
    if x_test is not None:
        x_test = x_test.reshape(len(x_test), -1) if x_test.ndim == 1 else x_test
        if x_test.shape[1:] != x.shape[1:]:
            raise UserError(f"{where}: x_test samples have shape {x_test.shape[1:]} but x samples "
                            f"have {x.shape[1:]}")
    y_all = arrays["y"] if x_test is None else np.concatenate([arrays["y"], arrays["y_test"]])
    y_all, task, class_names = encode_targets(y_all, task, f"{where}, array y")
    n = len(x)
    return RawData(x=x, y=y_all[:n], task=task, name=p.name, class_names=class_names,
                   x_test=x_test, y_test=None if x_test is None else y_all[n:])


def _image_files(root: Path) -> dict[str, list[Path]]:
    """{class name: image files} from the sub-folders of root (images in nested folders count)."""
    classes = {}
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[folder.name] = files
    return classes


def _read_images(files: list[Path], size: tuple[int, int], mode: str) -> np.ndarray:
    """Image files → (N, C, H, W) uint8, converted to `mode` and resized to size = (H, W)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for f in files:
        try:
            with Image.open(f) as img:
                img = img.convert(mode)
                if img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(img, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"image file {shown(f)} cannot be read ({err})") from None
        out.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # (C, H, W)
    return np.ascontiguousarray(np.stack(out))  # else laid out (N, H, W, C) in memory


class ImageFiles:
    """Image files read when a sample is asked for: array-like, of shape (N, C, H, W) uint8.

    `files[i]` (an integer) decodes file i into a (C, H, W) uint8 array; `files[idx]` (an index
    array or slice) is the subset, with nothing read, so that splitting, class imbalance and label
    noise handle it as they do an in-memory array. The data then reaches the model through a
    DataLoader (lossbench/data/prepare.py), whose workers do the decoding.
    """

    def __init__(self, files: Sequence[Path | str], size: tuple[int, int], mode: str):
        self.files = np.array([str(f) for f in files], dtype=object)  # (N,)
        self.size, self.mode = size, mode

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.files), 1 if self.mode == "L" else 3, *self.size)

    def __getitem__(self, key: Any) -> np.ndarray | ImageFiles:
        if isinstance(key, (int, np.integer)):
            return _read_images([Path(self.files[key])], self.size, self.mode)[0]  # (C, H, W)
        return ImageFiles(self.files[key], self.size, self.mode)


def _check_images(files: list[Path]) -> None:
    """Every file is a whole image, checked without decoding it, so that a stray or damaged file
    stops the run now, before anything is trained or written."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as img:
                img.verify()  # reads the file through (a truncated one fails), decodes nothing
        except (OSError, UnidentifiedImageError) as err:
            raise UserError(f"image file {shown(f)} cannot be read ({err})") from None


def _listed_images(files: list[Path], size: tuple[int, int], mode: str) -> ImageFiles:
    """The files, each checked to be a whole image, to be decoded when a sample is read."""
    _check_images(files)
    return ImageFiles(files, size, mode)


def imagefolder(path: str, test_path: str | None = None, image_size: Sequence[int] = (32, 32),
                mode: str = "RGB", in_memory: bool = True) -> RawData:
    """Images in one sub-folder per class (`path/<class>/*.png`).

    image_size: (H, W) every image is resized to. mode: a PIL mode, RGB (3 channels) or L (grey).
    test_path: a folder of the same layout used as the fixed test split.
    in_memory: decode every image now into one array (fast epochs, memory N·C·H·W bytes), or
    false: keep the file names (`ImageFiles`) and decode each image when a batch needs it, in
    DataLoader workers on a GPU, for folders larger than memory.
    """
    if mode not in ("RGB", "L"):
        raise UserError(f"dataset.mode={mode} must be RGB or L")
    if not isinstance(in_memory, bool):
        raise UserError(f"dataset.in_memory={in_memory} must be true or false")
    if len(image_size) != 2 or min(image_size) < 1:
        raise UserError(f"dataset.image_size={list(image_size)} must be [height, width]")
    size = (int(image_size[0]), int(image_size[1]))
    root = _existing(path, "dataset.path")
    if not root.is_dir():
        raise UserError(f"dataset.path={shown(path)} is not a folder of class sub-folders")
    classes = _image_files(root)
    if not classes:
        raise UserError(f"dataset.path={shown(path)}: no images found; expected one sub-folder per class "
                        f"holding image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    names = list(classes)
    files = [f for c in names for f in classes[c]]
    y = np.concatenate([np.full(len(classes[c]), k, dtype=np.int64) for k, c in enumerate(names)])
    read = _read_images if in_memory else _listed_images
    x = read(files, size, mode)
    x_test = y_test = None
    if test_path is not None:
        test_root = _existing(test_path, "dataset.test_path")
        test_classes = _image_files(test_root) if test_root.is_dir() else {}
        if not test_classes:
            raise UserError(f"dataset.test_path={shown(test_path)}: no images found in class "
                            "sub-folders")
        unknown = [c for c in test_classes if c not in names]
        if unknown:
            raise UserError(f"dataset.test_path={shown(test_path)}: class folder {unknown[0]!r} is not "
                            f"among the training classes ({', '.join(names)})")
        test_files = [f for c in test_classes for f in test_classes[c]]
        y_test = np.concatenate([np.full(len(fs), names.index(c), dtype=np.int64)
                                 for c, fs in test_classes.items()])
        x_test = read(test_files, size, mode)
    task = "binary" if len(names) == 2 else "multiclass"
    if len(names) < 2:
        raise UserError(f"dataset.path={shown(path)}: only one class folder ({names[0]!r}) holds "
                        "images; classification needs at least two")
    return RawData(x=x, y=y, task=task, name=root.name, class_names=names, x_test=x_test,
                   y_test=y_test)

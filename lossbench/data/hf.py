"""A Hugging Face `datasets` dataset: a `save_to_disk` folder, parquet/csv/json/arrow files, or
a Hub name, with an image column or numeric feature columns and a label column.

Read through the library's own formats: `with_format("numpy")` on the columns used, one call
per split (Arrow columns as arrays, images decoded by `datasets` itself), never a Python loop
over samples here. The dataset's own splits are kept when it has them; its `ClassLabel` names
name the classes in the report and plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data.files import encode_targets, shown
from lossbench.data.raw import RawData
from lossbench.errors import UserError

# The data files `datasets` reads by type, by suffix: the builder `load_dataset` is given.
BUILDERS = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json",
            ".jsonl": "json", ".arrow": "arrow"}
# Names a dataset gives its validation split (the Hub's usage, most common first).
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")


def _datasets_library():
    try:
        import datasets
    except ImportError:
        raise UserError("dataset=hf needs the datasets package: pip install "
                        "'lossbench[hf]'") from None
    datasets.disable_progress_bars()  # lossbench prints its own progress
    return datasets


def _where(path: str | Sequence[str]) -> str:
    """`dataset.path=...` as the user typed it, for messages."""
    return f"dataset.path={shown(path) if isinstance(path, str) else [shown(p) for p in path]}"


def _load(path: str | Sequence[str], name: str | None) -> tuple[Any, str]:
    """(a Dataset or DatasetDict, the name the report gives it) from `dataset.path`."""
    datasets = _datasets_library()
    files = [str(path)] if isinstance(path, str) else [str(p) for p in path]
    where = _where(path)
    first = Path(files[0]).expanduser()
    # a Hub name is `dataset` or `owner/dataset`; anything that names a place here is local
    local = (first.exists() or files[0].startswith(("/", ".", "~")) or files[0].endswith("/")
             or len(files) > 1 or first.suffix.lower() in BUILDERS
             or (first.parent != Path(".") and first.parent.exists()))
    if not local:  # a Hub name: the user's cache and HF_HUB_OFFLINE, as load_dataset does
        try:
            return datasets.load_dataset(files[0], name), files[0]
        except (OSError, ValueError) as err:  # ConnectionError, DatasetNotFoundError
            raise UserError(f"{where}: no such file or folder here, and no Hub dataset it could "
                            f"load ({_first_line(err)})") from None
    try:
        missing = [f for f in files if not Path(f).expanduser().exists()]
        if missing:
            raise UserError(f"{where}: no such file or folder ({shown(missing[0])})")
        if first.is_dir():
            if (first / "dataset_dict.json").exists() or (first / "state.json").exists():
                return datasets.load_from_disk(str(first)), first.resolve().name
            return datasets.load_dataset(str(first)), first.resolve().name  # a folder of files
        suffixes = {Path(f).suffix.lower() for f in files}
        builders = {BUILDERS.get(s) for s in suffixes}
        if None in builders or len(builders) != 1:
            raise UserError(f"{where}: files of one type are needed, one of "
                            f"{', '.join(BUILDERS)}; got {', '.join(sorted(suffixes))}")
        data_files = [str(Path(f).expanduser()) for f in files]
        return datasets.load_dataset(builders.pop(), data_files=data_files), first.stem
    except UserError:
        raise
    except (OSError, ValueError) as err:  # a file datasets cannot read
        raise UserError(f"{where}: cannot load it with datasets ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).strip().split(chr(10))[0].split())}"


def _own_splits(data: Any, where: str) -> tuple[Any, Any, Any]:
    """(train, validation or None, test or None) of the dataset's own splits. A dataset
    without a test split but with a validation split (ImageNet's layout: test labels are
    withheld) is tested on that validation split."""
    if not hasattr(data, "keys"):  # one Dataset: lossbench splits it
        return data, None, None
    names = list(data.keys())
    if "train" not in names:
        if len(names) == 1:
            return data[names[0]], None, None
        raise UserError(f"{where}: no 'train' split among its splits {', '.join(names)}")
    val = next((data[n] for n in VALIDATION_SPLITS if n in names), None)
    test = data["test"] if "test" in names else None
    if test is None:
        return data["train"], None, val
    return data["train"], val, test


def _columns_of(part: Any, columns: list[str]) -> dict[str, Any]:
    """The columns of one split as numpy arrays: one vectorised read through Arrow."""
    return part.with_format("numpy", columns=columns)[:]


def _image_array(column: Any, image: str, where: str) -> np.ndarray:
    """An image column as read (N, H, W), (N, H, W, C) or (N, C, H, W) → (N, C, H, W)."""
    if not isinstance(column, np.ndarray) or column.dtype == object:
        shapes = sorted({tuple(np.shape(a)) for a in column}, key=str)
        raise UserError(f"{where}: column {image!r} holds images of different sizes or modes "
                        f"({', '.join('×'.join(map(str, s)) for s in shapes[:3])}); lossbench "
                        "needs one size: resize them (dataset.mode=RGB or L converts the mode)")
    if column.ndim == 3:  # (N, H, W): grey
        return np.ascontiguousarray(column[:, None])
    if column.ndim != 4:
        raise UserError(f"{where}: column {image!r} holds arrays of shape {column.shape[1:]}, "
                        "not images (H, W), (H, W, C) or (C, H, W)")
    if column.shape[-1] in (1, 3, 4) and column.shape[1] not in (1, 3, 4):  # channels last
        column = column.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(column)


def hf(path: str | Sequence[str] | None, label: str = "label", image: str | None = None,
       features: Sequence[str] | None = None, task: str | None = None, mode: str | None = None,
       name: str | None = None) -> RawData:
    """A Hugging Face dataset: a `save_to_disk` folder, data files, or a Hub name.

    label: the label column (a ClassLabel, integers, or floats for regression). image: the
    image column (null: the dataset's Image, Array2D or Array3D column, if any). features: numeric columns used
    when there is no image column (null: every numeric column but the label). task: as csv's.
    mode: RGB or L converts every image (null: as stored). name: the Hub dataset's config.
    """
    if not path:
        raise UserError("dataset.path is not set; give a save_to_disk folder, data files or a "
                        "Hub name, e.g. dataset.path=my_dataset")
    if mode not in (None, "RGB", "L"):
        raise UserError(f"dataset.mode={mode} must be RGB, L or null")
    data, display = _load(path, name)
    where = _where(path)
    train, val, test = _own_splits(data, where)
    datasets = _datasets_library()
    schema = train.features
    if label not in schema:
        raise UserError(f"{where}: no column {label!r} for dataset.label; the columns are "
                        f"{', '.join(schema)}")
    label_feature = schema[label]
    class_names = None
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = list(label_feature.names)
    elif not (isinstance(label_feature, datasets.Value) and
              label_feature.dtype.startswith(("int", "uint", "float", "bool"))):
        kind = getattr(label_feature, "dtype", type(label_feature).__name__)
        raise UserError(f"{where}: column {label!r} holds {kind} values, not class indices or "
                        "numbers; make it a ClassLabel (dataset.class_encode_column"
                        f"({label!r})) or choose another column with dataset.label")
    if image is None and features is None:
        pictures = (datasets.Image, datasets.Array2D, datasets.Array3D)  # decoded or as arrays
        found = [c for c, f in schema.items() if isinstance(f, pictures)]
        image = found[0] if found else None
    if image is not None:
        if image not in schema:
            raise UserError(f"{where}: no column {image!r} for dataset.image; the columns are "
                            f"{', '.join(schema)}")
        columns = [image]
        if mode is not None and isinstance(schema[image], datasets.Image):
            train, val, test = (p if p is None else p.cast_column(image, datasets.Image(mode=mode))
                                for p in (train, val, test))
    else:
        if isinstance(features, str):
            features = [features]
        columns = list(features) if features is not None else [
            c for c, f in schema.items() if c != label and isinstance(f, datasets.Value)
            and f.dtype.startswith(("int", "uint", "float", "bool"))]
        unknown = [c for c in columns if c not in schema]
        if unknown:
            raise UserError(f"{where}: dataset.features names {', '.join(map(repr, unknown))}, "
                            f"not columns; the columns are {', '.join(schema)}")
        if not columns:
            raise UserError(f"{where}: no image column and no numeric feature columns besides "
                            f"{label!r}; name them with dataset.image or dataset.features")

    def read(part: Any) -> tuple[np.ndarray, np.ndarray]:
        arrays = _columns_of(part, [*columns, label])
        if image is not None:
            x = _image_array(arrays[image], image, where)
        else:
            x = np.column_stack([np.asarray(arrays[c], dtype=np.float32) for c in columns])
        return x, np.asarray(arrays[label])

    parts = [None if p is None else read(p) for p in (train, val, test)]
    (x, y), own_val, own_test = parts
    shapes = {a[0].shape[1:] for a in parts if a is not None}
    if len(shapes) > 1:
        raise UserError(f"{where}: its splits hold samples of different shapes "
                        f"({', '.join(map(str, sorted(shapes)))})")
    ys = [a[1] for a in parts if a is not None]
    y_all = np.concatenate(ys)
    if class_names is not None:
        if y_all.min() < 0:
            raise UserError(f"{where}: column {label!r} has unlabelled samples (-1), as a "
                            "withheld test split has; lossbench needs every label")
        y_all = y_all.astype(np.int64)
        task = "binary" if len(class_names) == 2 else "multiclass"
    else:
        y_all, task, class_names = encode_targets(y_all, task, f"{where}, column {label!r}")
    bounds = np.cumsum([len(v) for v in ys])[:-1]
    y, *rest = np.split(y_all, bounds)
    y_val = rest.pop(0) if own_val is not None else None
    y_test = rest.pop(0) if own_test is not None else None
    return RawData(x=x, y=y, task=task, name=display, class_names=class_names,
                   x_test=None if own_test is None else own_test[0], y_test=y_test,
                   x_val=None if own_val is None else own_val[0], y_val=y_val)

"""`RawData`: what every dataset loader returns, before splitting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lossbench.tasks import TASKS


@dataclass
class RawData:
    """Samples and targets as loaded, with the task they pose.

    x: (N, *sample_shape) features; vectors (N, F), sequences (N, C, L) or images (N, C, H, W).
    y: (N,) integer class indices for classification, floats for regression.
    x_test / y_test: a dataset's own fixed test split, kept as is when present.
    x_val / y_val: its own validation split, kept as is when present (with a test split).
    """

    x: np.ndarray
    y: np.ndarray
    task: str
    name: str
    class_names: list[str] | None = None
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)}")
        if self.x_val is not None and self.x_test is None:
            raise ValueError("a dataset's own validation split comes with its own test split")

    def require_classes(self, setting: str, needs: str = "classes") -> None:
        """UserError unless the data has classes: `setting` (e.g. dataset.noise.kind=symmetric,
        dataset.resample=sqrt) works on them."""
        if self.task == "regression":
            from lossbench.errors import UserError

            raise UserError(f"{setting} needs {needs}, but dataset {self.name} is a regression "
                            "task")

    def content_hash(self) -> str:
        """A short digest of the samples and targets as loaded (shapes, dtypes, values; the
        fixed test split too): a checkpoint records it, so that a run is never continued on
        data that changed under it. Samples that are not an array (images read from disk per
        item) count by their shape and file names."""
        import hashlib

        digest = hashlib.blake2b(digest_size=8)
        for part in (self.x, self.y, self.x_test, self.y_test):
            if part is None:
                digest.update(b"none;")
            elif isinstance(part, np.ndarray) and part.dtype != object:
                array = np.ascontiguousarray(part)
                digest.update(f"{array.dtype}:{array.shape};".encode())
                digest.update(array.view(np.uint8).reshape(-1).data if array.size else b"")
            else:  # read per item: its shape and file names, never the samples themselves
                files = [str(f) for f in getattr(part, "files", [])]
                digest.update(f"{type(part).__name__}:{getattr(part, 'shape', len(part))}:"
                              f"{files}".encode())
        return digest.hexdigest()

    @property
    def num_classes(self) -> int:
        """K for classification (binary counts as 2), 0 for regression."""
        if self.task == "regression":
            return 0
        if self.class_names is not None:
            return len(self.class_names)
        labels = np.concatenate([y for y in (self.y, self.y_test, self.y_val) if y is not None])
        return int(labels.max()) + 1

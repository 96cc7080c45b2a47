"""Files of a run directory, written atomically: a crash leaves the old file or the new one,
never half of one."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, data: bytes, sync: bool = True) -> None:
    """Write `data` to a temporary file beside `path` and rename it into place. `sync` also
    flushes it to the disk first, so that it survives a power cut, not only a process crash
    (the costly part for small files: leave it to files written once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:  # the temporary name is ours: the user knows the file by its own
        raise OSError(err.errno, err.strerror, str(path)) from err
    try:
        # mkstemp makes the file 0600; results are meant to be read by colleagues, so the file
        # gets the mode open() would give it: 0666 less the umask
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None:  # a write to a full disk
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json_atomic(path: str | Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n")


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    """A header and the rows, the columns in the order they first appear."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_csv_atomic(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    write_text_atomic(path, csv_text(rows))


def save_torch_atomic(path: str | Path, obj: Any, sync: bool = True) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue(), sync)


def discard_empty_folders(folder: Path, user_dir: Path) -> None:
    """Remove `folder` and the folders above it while they are empty, up to user_dir."""
    # Hydra made the run directory with mkdir(parents=True), so the empty folders between it and
    # user_dir are Hydra's. A run directory outside user_dir (hydra.run.dir=/elsewhere/...) keeps
    # its parents: they may be the user's. rmdir refuses a folder that holds anything.
    parent, user_dir = folder.resolve(), user_dir.resolve()
    while user_dir in parent.parents:
        try:
            parent.rmdir()
        except OSError:  # not empty (an older run, the user's files) or not ours to remove
            break
        parent = parent.parent

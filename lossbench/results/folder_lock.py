"""One writer at a time per folder: a run directory, a sweep directory, a study directory.

Two lossbench processes writing into the same folder would each "continue" the other's
checkpoint and interleave their files. The first writer holds an `fcntl.flock` on
`<folder>/.lossbench.lock` (which holds its PID); a second one is refused in one line naming
that PID. The kernel releases the lock when the holder's process ends, however it ends
(`kill -9` included), so a stale lock file never blocks anyone: the next writer takes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from lossbench.errors import UserError

LOCK_FILE = ".lossbench.lock"
_HELD: list["FolderLock"] = []  # the locks this process holds, for `release_held`


class FolderLock:
    """An exclusive lock on `folder` for this process; `what` names the folder in messages
    ("run directory", "sweep directory", "study directory"). A context manager, or
    `acquire()` / `release()`. The folder is made if missing."""

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_pid(fd)
                os.close(fd)
                if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                by = f"PID {holder}" if holder else "another process"
                raise UserError(f"{self.folder} is in use: another lossbench process ({by}) is "
                                f"writing this {self.what}; wait for it to end, or write "
                                f"elsewhere") from None
            # A holder that released removed the file: the lock must be on the file still there
            try:
                here, there = os.fstat(fd), os.stat(self.path)
                same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _HELD.append(self)
        return self

    def release(self) -> None:
        """Remove the lock file, then let go (removing first: a waiting writer that then locks
        the removed file sees it is gone and opens the new one)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self in _HELD:
            _HELD.remove(self)
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a read-only folder now: the lock still ends with the descriptor
        os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def release_held() -> None:
    """Release every lock this process holds: before a process ends with `os._exit` (a torchrun
    rank, `engine.distributed.exit_process`), which leaves no `finally` to remove its lock file."""
    for lock in list(reversed(_HELD)):
        lock.release()


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""

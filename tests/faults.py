"""Faults a real machine produces, for tests to inflict on real lossbench processes.

`start_train` starts `lossbench train` in a subprocess, as a user types it. The test then waits
for a named phase and injects the fault:

    run = start_train(tmp_path, "trainer=smoke", run_dir="run")
    run.wait_for_epoch(1)            # training: an epoch line in train.log
    run.signal(signal.SIGTERM)       # a real signal to the real process
    ended = run.finish()             # returncode, stdout, stderr
    assert ended.returncode == 143

Phases a test can wait for:
- start-up: `StalledData` is a CSV dataset behind a named pipe: the run blocks while it loads
  its data (a slow network disk) until the test lets the data through;
- training: `wait_for_epoch(n)`, the epoch line in train.log;
- testing and writing results: `wait_for_file(REPORT)`, report.txt appears after the test
  split's report, before the plots, the weights and metrics.json;
- anything else: `wait_until(predicate)`, `wait_for_output(pattern)`.

Other faults: signals ignored from the parent (a shell's background job ignores SIGINT, `nohup`
ignores SIGHUP), a terminal that closes (`terminal=True`: the run's stdout and stderr are a
pseudo-terminal it controls; `hang_up()` closes it, as a closed ssh session does), the
descendants of a process (`descendants`, to kill a parent and watch its workers) and whether a
process still lives (`alive`).

Faults of the file system: `mounted_tmpfs` (a small file system of its own) with `fill` (a full
disk, or one with only so many KiB left), and `as_user` (run lossbench as `nobody`, to whom a
folder can be read-only; root ignores permissions). A second writer is a second
`start_train` into the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import lossbench_cmd

REPORT = "report.txt"
EPOCH_LOGGED = re.compile(r"INFO epoch \{'epoch': (\d+),")


@dataclass
class Ended:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """stderr's lines that are not a progress bar's leftovers."""
        return [ln for ln in self.stderr.splitlines() if ln.strip()]


class TrainProcess:
    """A running `lossbench train` (see `start_train`); its output is collected as it comes."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, master_fd: int | None = None):
        self.proc, self.run_dir, self.master_fd = proc, run_dir, master_fd
        self._out: list[str] = []
        self._err: list[str] = []
        self._readers = []
        if master_fd is not None:  # one terminal for both streams
            self._readers.append(self._drain_fd(master_fd, self._out))
        else:
            self._readers += [self._drain(proc.stdout, self._out),
                              self._drain(proc.stderr, self._err)]

    @staticmethod
    def _drain(stream, into: list[str]) -> threading.Thread:
        def read() -> None:
            for line in stream:
                into.append(line)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    @staticmethod
    def _drain_fd(fd: int, into: list[str]) -> threading.Thread:
        def read() -> None:
            while True:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO once the terminal is closed or its last writer left
                    return
                if not chunk:
                    return
                into.append(chunk.decode("utf-8", "replace"))

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self._out)

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 120) -> None:
        """Poll `ready` until it holds; fail the test if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                ended = self.finish()
                raise AssertionError(f"lossbench ended (status {ended.returncode}) before {what}:"
                                     f"\n{ended.stdout}\n{ended.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def wait_for_file(self, name: str, timeout: float = 120) -> None:
        self.wait_until(lambda: (self.run_dir / name).exists(), f"{name} to appear", timeout)

    def wait_for_epoch(self, epoch: int, timeout: float = 120) -> None:
        """Until train.log has logged epoch `epoch` (training is under way)."""
        self.wait_until(lambda: any(e >= epoch for e in logged_epochs(self.run_dir)),
                        f"epoch {epoch} in train.log", timeout)

    def wait_for_output(self, pattern: str, timeout: float = 120) -> None:
        self.wait_until(lambda: re.search(pattern, self.output) is not None,
                        f"output matching {pattern!r}", timeout)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def hang_up(self) -> None:
        """Close the terminal (`terminal=True`): the kernel sends SIGHUP to the run, as when an
        ssh session drops, and its writes to the terminal fail from then on."""
        assert self.master_fd is not None, "start_train(..., terminal=True) makes a terminal"
        os.close(self.master_fd)
        self.master_fd = None

    def finish(self, timeout: float = 180) -> Ended:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        for reader in self._readers:
            reader.join(timeout=10)
        if self.master_fd is not None:
            os.close(self.master_fd)
            self.master_fd = None
        return Ended(self.proc.returncode, "".join(self._out), "".join(self._err))


def start_train(cwd: Path, *overrides: str, run_dir: str | Path = "run",
                ignored: Iterable[int] = (), terminal: bool = False,
                env: dict[str, str] | None = None) -> TrainProcess:
    """`lossbench train <overrides> hydra.run.dir=<run_dir>` started in `cwd`.

    `ignored`: signals the process inherits as ignored (a shell's `cmd &` ignores SIGINT,
    `nohup` SIGHUP). `terminal`: stdout and stderr are a new pseudo-terminal that the process
    has as its controlling terminal (its own session), so that `hang_up` can close it.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    full_env.pop("LOSSBENCH_DEBUG", None)
    full_env.update(env or {})
    ignored = tuple(ignored)
    # in Hydra's quotes: a folder name may hold spaces and letters beyond ASCII
    args = [*lossbench_cmd(), "train", *overrides, f"hydra.run.dir='{run_dir}'"]
    master = slave = None
    if terminal:
        master, slave = os.openpty()

    def child_setup() -> None:
        for signum in ignored:
            signal.signal(signum, signal.SIG_IGN)
        if slave is not None:  # a session of its own, whose controlling terminal is ours
            import fcntl
            import termios

            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    streams = ({"stdin": subprocess.DEVNULL, "stdout": slave, "stderr": slave} if terminal
               else {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE})
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, text=not terminal,
                            preexec_fn=child_setup if ignored or terminal else None,
                            restore_signals=True, **streams)
    if slave is not None:
        os.close(slave)
    return TrainProcess(proc, Path(cwd) / run_dir, master)


def logged_epochs(run_dir: Path) -> list[int]:
    """The epochs train.log has logged, in order."""
    log = Path(run_dir) / "train.log"
    try:
        return [int(m) for m in EPOCH_LOGGED.findall(log.read_text(errors="replace"))]
    except FileNotFoundError:
        return []


class StalledData:
    """A CSV dataset behind a named pipe: a run reading it blocks in start-up, as on a
    slow network disk, until `release` lets the data through.

        data = StalledData(tmp_path)
        run = start_train(tmp_path, *data.overrides, ...)
        data.wait_opened(run)   # the run is blocked loading its data
        run.signal(signal.SIGTERM)
        data.release()          # a run that went on gets its data and trains
    """

    def __init__(self, folder: Path, name: str = "data.csv"):
        self.path = Path(folder) / name
        os.mkfifo(self.path)
        self.fd: int | None = None

    @property
    def overrides(self) -> tuple[str, ...]:
        return ("dataset=csv", f"dataset.path={self.path.name}", "dataset.target=target")

    def wait_opened(self, run: TrainProcess, timeout: float = 120) -> None:
        """Until the run has opened the pipe to read its data (it waits for the rest)."""

        def reader_there() -> bool:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                return False
            return True

        run.wait_until(reader_there, "the run to open its data", timeout)

    def release(self) -> None:
        """Write the data and close the pipe (a reader that has gone is no error)."""
        if self.fd is None:
            return
        try:
            os.set_blocking(self.fd, True)
            os.write(self.fd, self.rows().encode())
        except BrokenPipeError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def rows() -> str:
        """Three separable classes of 50 rows each, four features (iris's shape)."""
        import random

        draw = random.Random(0)
        lines = ["f0,f1,f2,f3,target"]
        for label in range(3):
            lines += [",".join([*(f"{label + draw.random():.3f}" for _ in range(4)), str(label)])
                      for _ in range(50)]
        return "\n".join(lines) + "\n"


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a process that still runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@contextlib.contextmanager
def mounted_tmpfs(size: str = "1m") -> Iterator[Path]:
    """A small tmpfs of its own, to fill up (mounting needs root and a kernel that allows it:
    else the test is skipped)."""
    folder = Path(tempfile.mkdtemp(prefix="lossbench-fs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or 'not root'}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()


def fill(folder: Path, leave_kib: int) -> Path:
    """Fill the file system of `folder` up to `leave_kib` KiB free; the filler's path."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    filler.write_bytes(b"\0" * max(0, free - leave_kib * 1024))
    return filler


def as_user(tmp_path: Path) -> tuple[list[str], Path]:
    """(the command prefix that runs as `nobody`, a folder both root and nobody can reach).
    Root ignores permissions, so a read-only folder is only read-only to another user."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run lossbench as an unprivileged user")
    home = Path(tempfile.mkdtemp(prefix="lossbench-user-"))
    home.chmod(0o777)
    prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import lossbench"], cwd=home,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        shutil.rmtree(home)
        pytest.skip(f"nobody cannot run this Python: {probe.stderr.strip()[-200:]}")
    return prefix, home

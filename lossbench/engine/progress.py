"""What the user watches while a run trains: a rich progress bar on a terminal, one plain line
per epoch otherwise (CI logs, files, pipes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_row(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key == "epoch":
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class EpochProgress:
    """Bars over epochs and batches with the running loss and the last validation metric."""

    def __init__(self, console: Console, epochs: int, monitor: str, enabled: bool = True):
        self.console = console
        self.epochs = epochs
        self.monitor = monitor
        # a terminal, or a Jupyter notebook (rich draws the bar in the cell's output)
        self.live = enabled and (console.is_terminal or console.is_jupyter)
        self.last_metric = ""
        self.progress: Progress | None = None

    def __enter__(self) -> EpochProgress:
        if self.live:
            self.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                console=self.console, transient=False)
            self.progress.start()
            self.epoch_task = self.progress.add_task("epochs", total=self.epochs, info="")
            self.batch_task = self.progress.add_task("batches", total=1, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def start_epoch(self, epoch: int, num_batches: int) -> None:
        if self.progress is not None:
            self.progress.reset(self.batch_task, total=num_batches, info="")

    def batch(self, done: int, running_loss: float | None) -> None:
        """Called every few batches (not every one: the bar must not slow the loop)."""
        if self.progress is not None:
            info = f"loss {running_loss:.4f}" if running_loss is not None else ""
            self.progress.update(self.batch_task, completed=done, info=info)

    def end_epoch(self, row: dict[str, Any]) -> None:
        value = row.get(self.monitor)
        self.last_metric = f"{self.monitor} {value:.4f}" if isinstance(value, float) else ""
        if self.progress is not None:
            self.progress.update(self.epoch_task, advance=1, info=self.last_metric)
        elif not self.console.quiet:  # a quiet one (each replica's of a stack) formats nothing
            self.console.print(f"epoch {row['epoch']}/{self.epochs} {format_row(row)}",
                               highlight=False, soft_wrap=True)

"""`lossbench losses`: a table of every shipped loss config, without importing torch.

The rows come from `lossbench.config.catalogue.loss_catalogue` (the YAML files plus the loss classes
read with `ast`), so the command answers about as fast as `lossbench --help`.
"""

from __future__ import annotations

import argparse

from lossbench.config.catalogue import TASK_ORDER, loss_catalogue
from lossbench.errors import UserError


def format_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def losses_table(task: str | None = None):
    """A rich Table of the losses (those fitting `task` when given)."""
    from rich.table import Table

    table = Table(title="Losses (lossbench train loss=<name>)", show_lines=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("tasks")
    table.add_column("head")
    table.add_column("hyperparameters (defaults)")
    table.add_column("reference")
    for entry in loss_catalogue():
        if task is not None and task not in entry.tasks:
            continue
        hyper = ", ".join(f"{k}={format_value(v)}" for k, v in entry.hyperparameters.items())
        table.add_row(entry.name, ", ".join(entry.tasks), entry.head, hyper or "-",
                      entry.reference)
    return table


def func(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lossbench losses",
        description="Table of every loss: the tasks it fits, its hyperparameters with their "
                    "defaults, and its reference. Use a name as `lossbench train loss=<name>`.")
    parser.add_argument("--task", help=f"only losses fitting this task ({', '.join(TASK_ORDER)})")
    args = parser.parse_args(argv)
    if args.task is not None and args.task not in TASK_ORDER:
        raise UserError(f"--task {args.task} is not a task; choose from {', '.join(TASK_ORDER)}")
    from lossbench.console import output_console

    output_console().print(losses_table(args.task))
    return 0

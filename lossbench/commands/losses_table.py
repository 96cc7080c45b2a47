"""`lossbench losses`: the table of every shipped loss, without importing torch.

Built in `lossbench.commands.listing`, from the rows `lossbench list losses` shows; this module
keeps the names importable by their older path.
"""

from lossbench.commands.listing import format_value, loss_rows, losses_command, losses_table

func = losses_command  # the dispatcher's entry point

__all__ = ["format_value", "func", "loss_rows", "losses_command", "losses_table"]

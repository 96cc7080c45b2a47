"""The subcommands `lossbench` dispatches to: each parses its arguments and calls one layer below."""

# `lossbench <command>` -> "module:function (argv) -> exit status"; the dispatcher (cli.py) and
# shell completion (completion.py) both read it, and import a command only when it runs.
COMMANDS = {
    "train": "lossbench.commands.train:train_command",
    "compare": "lossbench.commands.compare:compare_command",
    "study": "lossbench.experiment.study:study_command",
    "eval": "lossbench.commands.eval:eval_command",
    "losses": "lossbench.commands.listing:losses_command",
    "list": "lossbench.commands.listing:func",
    "plot-losses": "lossbench.commands.plot_losses:plot_losses_command",
    "-sc": "lossbench.commands.completion:func",  # what `lossbench train -sc install=bash` calls on <TAB>
}

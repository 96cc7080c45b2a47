"""The subcommands `lossbench` dispatches to: each parses its arguments and calls one layer below."""

"""Shell completion for `lossbench train`, on top of Hydra's bash completion.

`eval "$(lossbench train -sc install=bash)"` installs Hydra's completion function for the
`lossbench` command. On <TAB> that function runs `lossbench -sc query=bash` with the line typed
so far in COMP_LINE; the dispatcher sends that here. Hydra expects the line to start with the
program name alone, so `lossbench train ` is shortened to `lossbench ` before Hydra completes the
overrides; a line still on its first word is completed with the subcommands, and
`lossbench list` with the config groups it lists.
"""

from __future__ import annotations

import os


def subcommands() -> list[str]:
    """The subcommands `lossbench` dispatches to (not the `-sc` query itself)."""
    from lossbench.commands import COMMANDS

    return [name for name in COMMANDS if not name.startswith("-")]


def func(argv: list[str]) -> int:
    """`lossbench -sc query=bash` (from the installed completion function)."""
    words = os.environ.get("COMP_LINE", "").split()
    ends_in_space = os.environ.get("COMP_LINE", "").endswith(" ")
    if len(words) < 2 or (len(words) == 2 and not ends_in_space):
        typed = words[1] if len(words) == 2 else ""
        print(" ".join(name for name in subcommands() if name.startswith(typed)))
        return 0
    if words[1] == "list":
        from lossbench.commands.listing import GROUPS

        typed = "" if ends_in_space else words[-1]
        print(" ".join(name for name in GROUPS if name.startswith(typed)))
        return 0
    if words[1] != "train":  # only `lossbench train` takes Hydra overrides
        return 0
    rest = os.environ["COMP_LINE"].split("train", 1)[1]
    os.environ["COMP_LINE"] = "lossbench" + rest
    from lossbench.commands.train import train_command

    return train_command(["-sc", *argv])

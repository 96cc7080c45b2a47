"""`lossbench list [datasets|models|losses|optimizers|...]`: the options of each config group, one
line each, with the task it fits and what it is; and `lossbench losses`, the losses again as a
table with their hyperparameters, from the same rows (`loss_rows`).

Answers without importing torch: the options come from the packaged YAML files, the tasks and
descriptions from the source of the classes and functions they name, read with `ast`.
"""

from __future__ import annotations

import argparse
import ast
from typing import Any

from lossbench.config.catalogue import LossEntry, group_options, loss_catalogue, module_tree
from lossbench.errors import UserError
from lossbench.tasks import TASKS

# What the user types -> the config group it lists.
GROUPS = {"datasets": "dataset", "models": "model", "losses": "loss", "optimizers": "optimizer",
          "schedulers": "scheduler", "loggers": "logger", "trainers": "trainer"}
# Groups whose options are described by their file's header comment (no `_target_` of their
# own: a study preset, a Hydra launcher).
COMMENTED_GROUPS = {"experiments": "experiment", "launchers": "hydra/launcher"}
GROUPS.update(COMMENTED_GROUPS)
DEFAULT_GROUPS = tuple(GROUPS)  # `lossbench list`: every group, every option
NARROWEST_DESCRIPTION = 24  # below this many columns beside the names, descriptions go below


def _definition(target: str) -> tuple[ast.AST | None, ast.Module | None]:
    """The `def`/`class` node a `_target_` such as `lossbench.data.sklearn_datasets.iris` names."""
    module, _, name = target.rpartition(".")
    tree = module_tree(module)
    if tree is None:
        return None, None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return node, tree
    return None, tree


def summary(target: str | None) -> str:
    """The first sentence of the docstring of what `target` names (or the target itself)."""
    if not target:
        return "-"
    node, _ = _definition(target)
    doc = ast.get_docstring(node) if node is not None else None
    if not doc:
        return target
    return " ".join(doc.strip().split("\n\n")[0].split()).split(". ")[0].rstrip(".")


def header_comment(text: str) -> str:
    """The first sentence of a config file's header comment (after `# @package ...`)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("# ").strip())
    return " ".join(" ".join(lines).split(". ")[0].split()).rstrip(".,:")


def dataset_tasks(target: str | None) -> tuple[str, ...]:
    """The tasks a dataset function can return: the task names written in its body or in the
    functions it calls, of its module or imported from another lossbench module. Several (a
    CSV file, blobs) mean "set by the data"."""
    node, tree = _definition(target or "")
    if node is None:
        return ()
    local = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for imported in tree.body:  # `from lossbench.data.files import encode_targets`
        if isinstance(imported, ast.ImportFrom) and (imported.module or "").startswith(
                "lossbench."):
            for alias in imported.names:
                found_node, _ = _definition(f"{imported.module}.{alias.name}")
                if isinstance(found_node, ast.FunctionDef):
                    local.setdefault(alias.asname or alias.name, found_node)
    found: set[str] = set()
    seen: set[str] = set()
    todo = [node]
    while todo:
        current = todo.pop()
        # `task != "regression"` tests a task, it does not return one
        tested = {id(c) for n in ast.walk(current) if isinstance(n, ast.Compare)
                  for c in ast.walk(n)}
        for sub in ast.walk(current):
            if isinstance(sub, ast.Constant) and sub.value in TASKS and id(sub) not in tested:
                found.add(sub.value)
            elif (isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name)
                  and sub.func.id in local and sub.func.id not in seen):
                seen.add(sub.func.id)
                todo.append(local[sub.func.id])
    return tuple(t for t in TASKS if t in found)


def describe_tasks(tasks: tuple[str, ...]) -> str:
    if not tasks:
        return "?"
    if len(tasks) == len(TASKS):
        return "any (from the data)"
    return ", ".join(tasks)


def group_lines(name: str) -> list[tuple[str, str, str]]:
    """(option, tasks, description) for each option of a group, as `lossbench list` shows."""
    group = GROUPS[name]
    if group == "loss":
        return [(e.name, ", ".join(e.tasks), f"{e.target.rsplit('.', 1)[-1]}"
                 + (f" ({e.head} head)" if e.head != "logits" else "")
                 + (f"; {e.reference}" if e.reference else ""))
                for e in loss_rows()]
    rows = []
    if name in COMMENTED_GROUPS:
        from lossbench.config.catalogue import conf_dir

        rows = [("basic", "any", "one job after the other, in this process (the default)")
                ] if group == "hydra/launcher" else []
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            rows.append((path.stem, "any", header_comment(path.read_text(encoding="utf-8"))))
        return rows
    for option, node in group_options(group).items():
        target = node.get("_target_")
        if group == "dataset":
            rows.append((option, describe_tasks(dataset_tasks(target)), summary(target)))
        elif group == "optimizer":
            lr = node.get("lr")
            rows.append((option, "any", f"{target}" + (f" (lr={lr})" if lr is not None else "")))
        elif group == "trainer":
            rows.append((option, "any", f"{node.get('epochs', '?')} epochs"))
        else:
            rows.append((option, "any", summary(target) if target else "nothing (off)"))
    return rows


def format_group(name: str, width: int | None = None) -> str:
    """One group's options in three columns, the descriptions wrapped (never cut) to `width`,
    the terminal's (80 columns off a terminal, or COLUMNS)."""
    import shutil
    import textwrap

    width = width or shutil.get_terminal_size((80, 24)).columns
    rows = group_lines(name)
    name_width = max([len(r[0]) for r in rows] + [4])
    task_width = max([len(r[1]) for r in rows] + [5])
    indent = 2 + name_width + 2 + task_width + 2
    if width - indent < NARROWEST_DESCRIPTION:  # a narrow terminal: the description below
        indent = 6
    lines = [f"{name} (lossbench train {GROUPS[name]}=<name>):"]
    for option, tasks, description in rows:
        first = f"  {option:<{name_width}}  {tasks:<{task_width}}  "
        wrapped = textwrap.wrap(description, max(width - indent, NARROWEST_DESCRIPTION),
                                break_on_hyphens=False) or [""]
        if indent < len(first):
            lines.append(first.rstrip())
        else:
            lines.append(first + wrapped.pop(0))
        lines += [" " * indent + part for part in wrapped]
    return "\n".join(lines)


# The model libraries `lossbench list models` searches: (config option, the extra installing it).
MODEL_LIBRARIES = {"torchvision": "torchvision", "timm": "timm"}


def matching(names: list[str], pattern: str | None) -> list[str]:
    """The names matching a shell pattern (case-insensitive); a pattern without wildcards
    matches the names that contain it (`resnet` → resnet18, wide_resnet50_2, ...)."""
    import fnmatch

    if not pattern:
        return list(names)
    pattern = pattern.lower()
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern)]


def library_model_names(library: str) -> list[str] | None:
    """The image classifiers `model=<library> model.name=<name>` builds; None when the
    library is not installed."""
    try:
        if library == "torchvision":
            import torchvision.models as tvm

            return tvm.list_models(module=tvm)  # classifiers only, not detection or video
        import timm
    except ImportError:
        return None
    return timm.list_models()


def format_models(pattern: str | None) -> str:
    """`lossbench list models [PATTERN]`: the built-in options, then the names torchvision and
    timm build by name, each matching PATTERN; a pattern matching none is a UserError with the
    closest names."""
    import difflib
    import textwrap

    builtin = [row for row in group_lines("models") if not pattern or matching([row[0]], pattern)]
    blocks, every = [], [row[0] for row in group_lines("models")]
    if builtin:
        width = max(len(r[0]) for r in builtin)
        blocks.append("\n".join(["models (lossbench train model=<name>):"] + [
            f"  {o:<{width}}  {t}  {d}" for o, t, d in builtin]))
    found = bool(builtin)
    for library, extra in MODEL_LIBRARIES.items():
        names = library_model_names(library)
        how = f"lossbench train model={library} model.name=<name>"
        if names is None:
            blocks.append(f"{library} models ({how}): not installed; pip install "
                          f"'lossbench[{extra}]'")
            continue
        every += names
        chosen = matching(names, pattern)
        found = found or bool(chosen)
        if chosen:
            head = f"{library} models{f' matching {pattern!r}' if pattern else ''} ({how}): " \
                   f"{len(chosen)}"
            blocks.append(head + "\n" + textwrap.fill(
                "  ".join(chosen), width=100, initial_indent="  ", subsequent_indent="  ",
                break_on_hyphens=False))
    if not found:
        close = difflib.get_close_matches(pattern.strip("*?[]").lower(), list(dict.fromkeys(every)),
                                        n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"lossbench list models: no model matches {pattern!r}{hint}")
    return "\n\n".join(blocks)


def func(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="lossbench list",
        description="List the options of config groups, one line each: name, the tasks it fits "
                    "(multiclass, binary, regression), and what it is. `lossbench list models "
                    "[PATTERN]` adds the models torchvision and timm build by name.")
    parser.add_argument("groups", nargs="*", metavar="GROUP",
                        help=f"any of {', '.join(GROUPS)} (default: {', '.join(DEFAULT_GROUPS)});"
                             " after models, a name PATTERN (resnet, 'convnext*')")
    args = parser.parse_args(argv)
    names, pattern = [], None
    for given in args.groups or DEFAULT_GROUPS:
        # the group's own name works as well: `lossbench list loss`
        name = given if given in GROUPS else {g: n for n, g in GROUPS.items()}.get(given, given)
        if name not in GROUPS and names[-1:] == ["models"] and pattern is None:
            pattern = given  # `lossbench list models resnet`
            continue
        if name not in GROUPS:
            raise UserError(f"lossbench list: no group '{given}' (choose from {', '.join(GROUPS)})")
        names.append(name)
    # models asked for by name: the libraries' models too (this imports them)
    print("\n\n".join(format_models(pattern) if name == "models" and args.groups
                       else format_group(name) for name in names))
    return 0


def loss_rows(task: str | None = None) -> list[LossEntry]:
    """The shipped losses (those fitting `task` when given), as both `lossbench list losses`
    and `lossbench losses` show them."""
    if task is not None and task not in TASKS:
        raise UserError(f"--task {task} is not a task; choose from {', '.join(TASKS)}")
    return [entry for entry in loss_catalogue() if task is None or task in entry.tasks]


def format_value(value: Any) -> str:
    """A hyperparameter's default as YAML writes it (null, true)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def losses_table(task: str | None = None, width: int | None = None):
    """A rich Table of the losses (those fitting `task` when given), laid out for a console
    `width` columns wide (None: as wide as it needs). Each hyperparameter on a line of its own,
    every cell wrapped or folded, never cut: at 80 columns "learn_alpha=true" was
    "learn_alpha=…" and the references a column of three letters."""
    from rich import box
    from rich.table import Table

    rows = [(entry.name, ", ".join(entry.tasks), entry.head,
             "\n".join(f"{k}={format_value(v)}" for k, v in entry.hyperparameters.items())
             or "-", entry.reference) for entry in loss_rows(task)]
    fixed = [max(len(row[i]) for row in rows) for i in (0, 2)] if rows else [4, 4]
    tasks_width = max(len(t) for row in rows for t in row[1].split()) if rows else 5
    # as wide as a usual hyperparameter ("alpha_range=[0.001, 1.999]"); the rare long one (a
    # composite loss's parts) wraps at its spaces
    hyper_width = max([len(line) for row in rows for line in row[3].splitlines()
                       if len(line) <= 32] + [1])
    if width:
        # what the name, tasks and head leave (two columns between cells), shared by the
        # hyperparameters and a reference of at least 16 columns
        left = width - sum(fixed) - tasks_width - 8
        hyper_width = max(16, min(hyper_width, left - 16))
    table = Table(title="Losses (lossbench train loss=<name>)", box=box.SIMPLE_HEAD,
                  collapse_padding=True, pad_edge=False, show_edge=False)
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("tasks", max_width=tasks_width if width else None)
    table.add_column("head", no_wrap=True)
    table.add_column("hyperparameters (defaults)", overflow="fold",
                     width=hyper_width if width else None)
    table.add_column("reference", overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def losses_command(argv: list[str]) -> int:
    """`lossbench losses [--task TASK]`: the table of every loss."""
    parser = argparse.ArgumentParser(
        prog="lossbench losses",
        description="Table of every loss: the tasks it fits, its hyperparameters with their "
                    "defaults, and its reference. Use a name as `lossbench train loss=<name>`.")
    parser.add_argument("--task", help=f"only losses fitting this task ({', '.join(TASKS)})")
    args = parser.parse_args(argv)
    from lossbench.console import output_console

    console = output_console()
    console.print(losses_table(args.task, console.width))
    return 0

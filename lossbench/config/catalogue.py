"""What the shipped config groups offer, read from the packaged YAML files (`lossbench.conf`).

The loss catalogue (`loss_catalogue`) combines each `conf/loss/<name>.yaml` with the class it
names, read from the source of `lossbench/losses/*.py` with `ast` (class attributes `tasks`,
`head`, `reference`, the constructor's defaults): listing the losses never imports torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from lossbench.tasks import TASKS

LOSS_PACKAGE = "lossbench.losses."
TASK_ORDER = TASKS  # the order the tables list tasks in (lossbench/tasks.py)
# Constructor arguments that are plumbing, not hyperparameters worth listing.
NOT_HYPERPARAMETERS = ("reduction", "num_classes", "embedding_dim")


def conf_dir() -> Path:
    """The packaged config folder (`lossbench.conf`), found without importing that package:
    its import registers Hydra's schemas, which listings have no use for."""
    spec = importlib.util.find_spec("lossbench.conf")
    return Path(next(iter(spec.submodule_search_locations)))


def group_options(group: str) -> dict[str, dict[str, Any]]:
    """{option name: its YAML as a dict} for one config group, e.g. group_options('loss')."""
    folder = conf_dir() / group
    options = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            options[entry.name[:-5]] = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    return options


@lru_cache(maxsize=None)
def module_tree(module: str) -> ast.Module | None:
    """A module's syntax tree, read from its source without importing it (or its package):
    what the listings learn about losses and datasets, torch never imported."""
    parts = module.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return ast.parse(candidate.read_text(encoding="utf-8"), filename=str(candidate))
    return None


def import_target(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass
class LossClass:
    """A loss class as its source declares it."""

    name: str
    tasks: tuple[str, ...] = ()
    head: str = "logits"
    reference: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # constructor argument -> default


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


def _parse_class(node: ast.ClassDef, parent: LossClass | None = None) -> LossClass:
    """A class's attributes and constructor defaults; what it does not set, it inherits from
    `parent` (its base class among the loss files, if any)."""
    info = LossClass(node.name)
    if parent is not None:
        info.tasks, info.head, info.reference = parent.tasks, parent.head, parent.reference
        info.defaults = dict(parent.defaults)
    for item in node.body:
        if isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name):
            key = item.targets[0].id
            if key in ("tasks", "head", "reference"):
                setattr(info, key, _literal(item.value))
        elif isinstance(item, ast.FunctionDef) and item.name == "__init__":
            args = item.args.args[1:]  # drop self
            defaults = [None] * (len(args) - len(item.args.defaults)) + list(item.args.defaults)
            info.defaults = {a.arg: _literal(d) for a, d in zip(args, defaults)}
    info.tasks = tuple(info.tasks)
    return info


def _declares_tasks(node: ast.ClassDef) -> bool:
    return any(isinstance(item, ast.Assign) and any(getattr(t, "id", None) == "tasks"
                                                    for t in item.targets) for item in node.body)


def loss_classes() -> dict[str, LossClass]:
    """{class name: LossClass} for every nn.Module-style class in lossbench/losses/*.py: those
    declaring `tasks`, and their subclasses, which inherit what they do not declare."""
    folder = Path(__file__).resolve().parents[1] / "losses"
    nodes: dict[str, ast.ClassDef] = {}
    for path in sorted(folder.glob("*.py")):
        tree = module_tree(f"{LOSS_PACKAGE}{path.stem}")
        nodes.update({n.name: n for n in tree.body if isinstance(n, ast.ClassDef)})
    classes: dict[str, LossClass] = {}

    def resolve(name: str) -> LossClass | None:
        if name not in classes and name in nodes:
            node = nodes[name]
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            parent = next((p for p in map(resolve, bases) if p is not None), None)
            if parent is not None or _declares_tasks(node):
                classes[name] = _parse_class(node, parent)
        return classes.get(name)

    for name in nodes:
        resolve(name)
    return classes


@dataclass
class LossEntry:
    """One row of the loss catalogue: a config name and what it builds."""

    name: str
    target: str
    tasks: tuple[str, ...]
    head: str
    hyperparameters: dict[str, Any]
    reference: str


def _class_of(node: Any, classes: dict[str, LossClass]) -> LossClass | None:
    target = node.get("_target_", "") if isinstance(node, dict) else ""
    if not target.startswith(LOSS_PACKAGE):
        return None
    return classes.get(target[len(LOSS_PACKAGE):])


def _show(value: Any, classes: dict[str, LossClass]) -> Any:
    """A hyperparameter value as the table shows it: nested losses by their class name."""
    if isinstance(value, dict) and "_target_" in value:
        inner = {k: v for k, v in value.items() if not k.startswith("_")}
        args = ", ".join(f"{k}={v}" for k, v in inner.items())
        return f"{value['_target_'].rsplit('.', 1)[-1]}({args})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v, classes)}" for k, v in value.items()) + "}"
    return value


def loss_catalogue() -> list[LossEntry]:
    """Every `conf/loss/*.yaml`, with the tasks, head, hyperparameters and reference of its loss.

    A composite config (a loss built from other losses: mixed, adversarial) fits the tasks its
    parts share.
    """
    classes = loss_classes()
    entries = []
    for name, node in group_options("loss").items():
        info = _class_of(node, classes)
        if info is None:
            continue
        tasks = set(info.tasks)
        head = info.head
        parts = []
        for key, value in node.items():
            if isinstance(value, dict):
                nested = [value] if "_target_" in value else list(value.values())
                parts += [c for c in (_class_of(v, classes) for v in nested) if c is not None]
        if parts:
            tasks = set(TASKS)
            for part in parts:
                tasks &= set(part.tasks)
            heads = {p.head for p in parts}
            head = "embedding" if "embedding" in heads else heads.pop()
        hyper = {k: v for k, v in info.defaults.items() if k not in NOT_HYPERPARAMETERS}
        for key, value in node.items():
            if key.startswith("_") or key in NOT_HYPERPARAMETERS:
                continue
            hyper[key] = value
        hyper = {k: _show(v, classes) for k, v in hyper.items()}
        entries.append(LossEntry(name=name, target=node["_target_"],
                                 tasks=tuple(t for t in TASKS if t in tasks), head=head,
                                 hyperparameters=hyper, reference=info.reference))
    return entries


def loss_tasks() -> dict[str, tuple[str, ...]]:
    """{loss option name: tasks it fits}."""
    return {entry.name: entry.tasks for entry in loss_catalogue()}


def losses_for_task(task: str) -> list[str]:
    return [name for name, tasks in loss_tasks().items() if task in tasks]

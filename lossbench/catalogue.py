"""What the shipped config groups offer, read from the packaged YAML files (`lossbench.conf`)."""

from __future__ import annotations

import importlib
from importlib import resources
from typing import Any

import yaml


def group_options(group: str) -> dict[str, dict[str, Any]]:
    """{option name: its YAML as a dict} for one config group, e.g. group_options('loss')."""
    folder = resources.files("lossbench.conf").joinpath(group)
    options = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            options[entry.name[:-5]] = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
    return options


def import_target(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def loss_tasks() -> dict[str, tuple[str, ...]]:
    """{loss option name: tasks it fits}."""
    result = {}
    for name, node in group_options("loss").items():
        target = node.get("_target_")
        if target:
            result[name] = tuple(getattr(import_target(target), "tasks", ()))
    return result


def losses_for_task(task: str) -> list[str]:
    return [name for name, tasks in loss_tasks().items() if task in tasks]

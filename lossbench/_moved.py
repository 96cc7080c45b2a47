"""Old module paths, kept importable.

Saved run configs (`.hydra/config.yaml`) and users' scripts name modules by the path they had
before lossbench grew its layer folders, e.g. `_target_: lossbench.tracking.MLflowTracker`.
Importing an old name gives the very module object of its new home (so a monkeypatch through
either name patches the same thing); nothing is imported until an old name is asked for.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "lossbench.app": "lossbench.commands.train",
    "lossbench.eval_command": "lossbench.commands.eval",
    "lossbench.compare": "lossbench.commands.compare",
    "lossbench.listing": "lossbench.commands.listing",
    "lossbench.losses_table": "lossbench.commands.losses_table",
    "lossbench.completion": "lossbench.commands.completion",
    "lossbench.loss_anatomy": "lossbench.commands.plot_losses",
    "lossbench.study": "lossbench.experiment.study",
    "lossbench.run": "lossbench.experiment.run",
    "lossbench.sweep": "lossbench.experiment.sweep",
    "lossbench.sweep_console": "lossbench.experiment.sweep_console",
    "lossbench.train": "lossbench.engine.loop",
    "lossbench.evaluate": "lossbench.engine.predict",
    "lossbench.checkpoint": "lossbench.engine.checkpoint",
    "lossbench.distributed": "lossbench.engine.distributed",
    "lossbench.optim": "lossbench.engine.optim",
    "lossbench.progress": "lossbench.engine.progress",
    "lossbench.threads": "lossbench.engine.threads",
    "lossbench.rundir": "lossbench.results.files",
    "lossbench.report": "lossbench.results.report",
    "lossbench.plots": "lossbench.results.plots",
    "lossbench.tracking": "lossbench.results.tracking",
    "lossbench.imbalance_metrics": "lossbench.results.imbalance_metrics",
    "lossbench.stats": "lossbench.results.stats",
    "lossbench.study_report": "lossbench.experiment.study_report",
    "lossbench.tuning": "lossbench.results.tuning",
    "lossbench.comparison": "lossbench.results.comparison",
    "lossbench.schema": "lossbench.config.schema",
    "lossbench.catalogue": "lossbench.config.catalogue",
}


def new_name(old: str) -> str | None:
    """The current module path for an old one (submodules of a moved package included)."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        module = importlib.import_module(new_name(spec.name))
        self._spec = module.__spec__  # the import system overwrites __spec__; put it back below
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())  # before the path finder, or a moved package's
        # submodule would load a second time under its old name

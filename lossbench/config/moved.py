"""Old module paths in saved run configs.

A run directory keeps the config it was trained with (`.hydra/config.yaml`, and a copy in
checkpoint.pt), and a config names its classes by module path: `_target_:
lossbench.tracking.MLflowTracker`. Modules have moved since such runs were made; the one place
that reads a saved config back (`lossbench eval`, `resume=`, `lossbench.load(...).model`) puts
each old path through `current_targets` first, so old runs still evaluate and resume. New
configs name the current paths: nothing else knows the old ones.
"""
from __future__ import annotations

from typing import Any

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
    """The current path of a module or a name in it (`lossbench.tracking.MLflowTracker` ->
    `lossbench.results.tracking.MLflowTracker`); None when `old` did not move."""
    for prefix, target in MOVED.items():
        if old == prefix or old.startswith(prefix + "."):
            return target + old[len(prefix):]
    return None


def current_targets(cfg: Any) -> Any:
    """Rewrite, in place, every `_target_` of a saved config (an OmegaConf node) that names an
    old path; returns `cfg`."""
    from omegaconf import DictConfig, ListConfig

    if isinstance(cfg, DictConfig):
        for key in list(cfg.keys()):
            if key == "_target_" and isinstance(cfg.get(key), str):
                cfg[key] = new_name(cfg[key]) or cfg[key]
            else:
                child = cfg._get_node(key)
                if isinstance(child, (DictConfig, ListConfig)):
                    current_targets(child)
    elif isinstance(cfg, ListConfig):
        for index in range(len(cfg)):
            child = cfg._get_node(index)
            if isinstance(child, (DictConfig, ListConfig)):
                current_targets(child)
    return cfg

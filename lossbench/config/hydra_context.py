"""The one answer to "is this code running inside a Hydra app, and what did Hydra set up?".

`run(cfg)` is also called without Hydra (tests, notebooks, `lossbench study`'s in-process
trials); every question about Hydra's runtime goes through `hydra_config()` so that the
fallback is decided once.
"""

from __future__ import annotations

from typing import Any


def hydra_config() -> Any | None:
    """Hydra's runtime config (`hydra.*`) when running inside a Hydra app, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
    except ImportError:
        return None
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get()


def in_sweep() -> bool:
    """True inside a job of a Hydra multirun (False for single runs and outside Hydra)."""
    hydra_cfg = hydra_config()
    if hydra_cfg is None:
        return False
    from hydra.types import RunMode

    return hydra_cfg.mode == RunMode.MULTIRUN

"""lossbench: compare loss functions in PyTorch, from the command line or from Python.

    import lossbench as lb
    run = lb.train("loss=gce", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.4", seed=1)
    runs = lb.sweep("loss=ce,gce,sce", "seed=0,1,2")
    table = lb.compare(runs, baseline="ce")

What `__all__` lists is the public API (lossbench/api.py documents it). Importing the package is
cheap on purpose: `lossbench --help` must not import torch, so the API is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Comparison", "LossbenchError", "Run", "Runs", "compare", "load", "sweep", "train"]

if TYPE_CHECKING:
    from lossbench.api import Comparison, LossbenchError, Run, Runs, compare, load, sweep, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lossbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'lossbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

"""The Hydra application behind `lossbench train`: a thin wrapper around `lossbench.run.run`."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lossbench.errors import UserError


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A run stopped by a user error leaves nothing behind: remove the directory Hydra made for
    it, unless it already holds other files."""
    leftovers = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    if set(leftovers) <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _train(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lossbench.run import run

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # a failing job (user errors included) is recorded and the sweep goes on; completed
        # jobs of a resumed sweep are skipped (lossbench/sweep.py)
        from lossbench.run import choices
        from lossbench.sweep import run_sweep_job

        return run_sweep_job(cfg, hydra_cfg, run, choices)
    try:
        return run(cfg)
    except UserError as err:
        if hydra_cfg.verbose or os.environ.get("LOSSBENCH_DEBUG", "") not in ("", "0"):
            raise
        _discard_empty_run_dir(Path(hydra_cfg.runtime.output_dir))
        print(f"lossbench: error: {err}", file=sys.stderr)
        sys.exit(2)


def train_command(argv: list[str]) -> int:
    """`lossbench train [overrides]`: hand the arguments to Hydra as if it were the program."""
    sys.argv = ["lossbench train", *argv]
    _train()
    from lossbench import sweep

    return 1 if sweep.failed_jobs else 0  # the summary line has named them

"""Shared test fixtures: drive the CLI as a user would (a subprocess in a temporary directory),
and compose the real shipped configs for in-process runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def lossbench_cmd() -> list[str]:
    return [sys.executable, "-m", "lossbench"]


@pytest.fixture
def cli(tmp_path):
    """cli(*args, cwd=tmp_path, env=None, timeout=300) -> CompletedProcess with text output."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        full_env.pop("LOSSBENCH_DEBUG", None)
        full_env.update(env or {})
        proc = subprocess.run([*lossbench_cmd(), *args], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"lossbench {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding metrics.json) under root, sorted."""
    return sorted(p.parent for p in Path(root).rglob("metrics.json"))


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(*overrides) -> the real root config, composed as `lossbench train` would,
    with its run directory inside tmp_path."""
    from hydra import compose, initialize_config_module

    def compose_with(*overrides: str):
        with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.run_dir = str(tmp_path / "run")
        return cfg

    return compose_with


@pytest.fixture
def float64():
    """float64 throughout (rounding differences stay near 1e-16), on one thread: these tiny
    steps only contend for a shared machine's cores. Stacked replicas are proven equal to their
    separate runs under it (tests/engine/test_replicas.py, test_group_fit.py)."""
    import torch

    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)

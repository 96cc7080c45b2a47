"""What a sweep prints: one line per job and the summary; everything else goes to the job's files.

A single run shows its config, its epochs and its test report on the console. A sweep of six
jobs would show that six times (about 500 lines), burying which job failed. In a sweep the
run's console is quiet (`in_sweep`), its details stay in the job's train.log, report.txt and
metrics.json, and `job_line` reports each job once it ends:

    lossbench: job 3 [loss=gce seed=1] completed: test accuracy 0.9611 (12.3 s; run directory:
    outputs/multirun/2026-01-01/12-00-00/3)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lossbench.config.hydra_context import in_sweep  # noqa: F401 (imported from here)
from lossbench.console import shown_path  # noqa: F401 (imported from here)
from lossbench.results.record import read_metrics
from lossbench.tasks import headline_metric


def headline(metrics: dict[str, Any]) -> str:
    """'test accuracy 0.9611' from a completed run's metrics.json, '' when it has none."""
    name = headline_metric(metrics.get("task"))  # the one `compare` sorts by first
    value = (metrics.get("test") or {}).get(name)
    return f"test {name} {value:.4f}" if isinstance(value, (int, float)) else ""


def job_line(label: str, run_dir: Path, seconds: float, error: str | None = None) -> str:
    """The one line a finished job prints: what it ran, how it ended, its headline, its time."""
    if error is not None:
        return f"lossbench: {label} failed: {error} ({seconds:.1f} s; see {shown_path(run_dir)})"
    try:
        metrics = read_metrics(run_dir) or {}
    except (OSError, ValueError):
        metrics = {}
    status = str(metrics.get("status", "completed"))
    shown = headline(metrics)
    return (f"lossbench: {label} {status}{': ' + shown if shown else ''} ({seconds:.1f} s; "
            f"run directory: {shown_path(run_dir)})")


JOB_LINE = re.compile(r"^lossbench: job (\d+) ")


def submitit_job_lines(config: DictConfig, since: float) -> list[tuple[str, bool]]:
    """(line, failed) for each line the jobs of this sweep printed, when a submitit launcher
    (submitit_local, slurm) ran them: each job runs in a process of its own whose stdout and
    stderr go to log files under `hydra.launcher.submitit_folder`, so its one line never
    reached the console. Read back from there, in job order; [] for other launchers. `since`
    (when the sweep started) only tells this sweep's log files from older ones."""
    launcher = config.hydra.get("launcher") or {}
    if "submitit" not in str(launcher.get("_target_", "")).lower():
        return []
    folder = Path(str(launcher.get("submitit_folder", ""))).parent  # .../.submitit/%j
    found: list[tuple[int, str, bool]] = []
    for log in sorted(folder.glob("*/*_log.*")):
        if log.suffix not in (".out", ".err") or log.stat().st_mtime < since:
            continue
        for line in log.read_text(errors="replace").splitlines():
            if match := JOB_LINE.match(line):
                found.append((int(match.group(1)), line, log.suffix == ".err"))
    return [(line, failed) for _, line, failed in sorted(found, key=lambda f: f[0])]

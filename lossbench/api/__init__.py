"""lossbench from Python: `train`, `sweep`, `compare` and `load`.

The CLI and these functions are one program: `train` runs the very Hydra application that
`lossbench train` runs, in the caller's process, so every override the CLI takes works here
(`experiment=...`, `-m` sweeps through `sweep`), the same checks refuse the same mistakes and
the run directory holds the same files. What differs is only what a program needs:

- a mistake raises `LossbenchError` (a `ValueError`) whose message is the CLI's one line;
  nothing is printed on stderr, nothing is half-written, and nothing exits the interpreter;
- every call writes to a run directory of its own (`outputs/<date>/<time>`, with a suffix when
  two calls fall in the same second): an earlier run is never overwritten;
- the caller's process is left as it was found: working directory, logging, torch's default
  dtype, thread count and random states, signal handlers, `sys.argv` and the environment;
- the result is an object with plain attributes (`Run`, `Runs`, `Comparison`) that renders as
  a table in Jupyter.

    import lossbench as lb
    run = lb.train("loss=gce", "dataset.noise.kind=symmetric", "dataset.noise.rate=0.4", seed=1)
    runs = lb.sweep("loss=ce,gce,sce", "seed=0,1,2")
    lb.compare(runs, baseline="ce")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lossbench.api.process import _fresh_dir, _hydra_quote, _lossbench_train, _overrides
from lossbench.api.results import Comparison, Run, Runs, load
from lossbench.errors import LossbenchError

__all__ = ["Comparison", "LossbenchError", "Run", "Runs", "compare", "load", "sweep", "train"]


def train(*overrides: str, seed: int | None = None, dir: str | os.PathLike | None = None,
          quiet: bool = False, show_config: bool = False, **options: Any) -> Run:
    """Run one experiment, as `lossbench train OVERRIDES` does, and return its `Run`.

    overrides: Hydra's override strings, e.g. `"loss=gce"`, `"dataset.noise.rate=0.4"`,
        `"experiment=noisy_labels"`. Keyword arguments are a convenience for the common ones:
        `seed=1`, `loss="gce"`, `dataset="wine"`, `epochs=20` (trainer.epochs), `lr=1e-3`
        (optimizer.lr); any other keyword `key=value` is the override `key=value`.
    dir: the run directory (default: a new `outputs/<date>/<time>` under the working
        directory). A directory holding a finished run is not overwritten.
    quiet: print nothing (the run's files are written all the same).
    show_config: print the resolved config first, as the CLI does.

    Raises LossbenchError for a mistake (nothing is left behind), KeyboardInterrupt when
    stopped (checkpoint.pt is written; `train(resume=run.dir)` continues it) and
    lossbench.errors.Diverged when the loss became NaN.
    """
    args = _overrides(overrides, {"seed": seed, **options})
    if any(a in ("-m", "--multirun") or a.startswith("hydra.mode=") for a in args):
        raise LossbenchError("train runs one experiment; use lossbench.sweep for several")
    resuming = any(a.startswith("resume=") for a in args)
    if not (show_config or resuming or any(a.lstrip("+").startswith("print_config=")
                                           for a in args)):
        args.append("print_config=false")
    made = None
    if dir is not None:
        run_dir = Path(dir)
    elif resuming:  # the run goes on in its own directory
        run_dir = None
    else:
        run_dir = made = _fresh_dir(Path("outputs"))
    if run_dir is not None:
        args.append(f"hydra.run.dir={_hydra_quote(run_dir)}")
    try:
        _lossbench_train(args, quiet)
    finally:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()  # a mistake: the directory made for it is not left behind
    if run_dir is None:
        resumed = next(a for a in args if a.startswith("resume="))
        run_dir = Path(resumed.split("=", 1)[1].strip("'\""))
    return load(run_dir)


def sweep(*overrides: str, dir: str | os.PathLike | None = None, quiet: bool = False,
          **options: Any) -> Runs:
    """Run a sweep, as `lossbench train -m OVERRIDES` does (one job per combination of the
    comma-separated values), and return its jobs as `Runs`, failed ones included.

    dir: the sweep directory (default: a new `outputs/multirun/<date>/<time>`); a sweep that
    stopped is continued by the same call with the same `dir` (finished jobs are skipped).
    """
    args = _overrides(overrides, options)
    made = None
    if dir is None:
        sweep_dir = made = _fresh_dir(Path("outputs") / "multirun")
    else:
        sweep_dir = Path(dir)
    args = ["-m", *args, f"hydra.sweep.dir={_hydra_quote(sweep_dir)}"]
    try:
        _lossbench_train(args, quiet)
    finally:
        if made is not None and made.is_dir() and not any(made.iterdir()):
            made.rmdir()
    return Runs.of(sweep_dir)


def compare(runs: Run | Iterable[Run] | str | os.PathLike | Iterable[str | os.PathLike],
            baseline: str | None = None, at: str = "best", metric: str | None = None,
            mode: str | None = None, group_by: Sequence[str] | None = None,
            alpha: float = 0.05, mde: float | None = None) -> Comparison:
    """The table `lossbench compare` prints, for runs or folders of runs: one row per
    configuration (its seeds averaged), tests against `baseline` (e.g. "ce") or between every
    pair, at the epoch selected on validation (`at="best"`) or the last one. Nothing is
    written; `Comparison.plot()` draws the figures."""
    from lossbench.results.comparison.blocks import DEFAULT_IGNORE, build_blocks
    from lossbench.results.comparison.records import find_runs
    from lossbench.results.comparison.tables import Notes

    if at not in ("best", "last"):
        raise LossbenchError(f"at={at!r}: choose 'best' or 'last'")
    if not 0.0 < alpha < 1.0:
        raise LossbenchError(f"alpha={alpha:g} must lie in (0, 1)")
    if isinstance(runs, (Run, str, os.PathLike)):
        runs = [runs]
    paths = [r.dir if isinstance(r, Run) else Path(r) for r in runs]
    if not paths:
        raise LossbenchError("compare needs at least one run or folder")
    from lossbench.errors import UserError

    try:
        found = find_runs(paths)
        blocks = build_blocks(found, metric, mode, alpha, list(group_by) if group_by else None,
                              list(DEFAULT_IGNORE), at=at, baseline=baseline, mde=mde)
    except UserError as err:
        raise LossbenchError(str(err)) from None
    failed = [r for r in found if r.status != "completed"]
    return Comparison(blocks, failed, Notes(alpha=alpha, at=at, baseline=baseline, mde=mde))



"""Whole trainings, validation included: seeds of the default experiment trained one after another
with `engine.loop.fit` against the same seeds as one stack with `engine.group_fit.fit_replicas`,
side by side in one process.

Every run is made by lossbench's own workflow, as a launcher would make it: the default config
composed with `seed=<s> data_seed=0` (one split for all, one copy in the stack: digits, 60/20/20
split, MLP 64-128-64-10, Adam lr 1e-3 on torch's fused kernel where the device has one, batch
128, cross-entropy, float32), then
`experiment.workflow.prepare` and `build`. The budget is the default one (epochs: auto, 50 here;
early stopping after 10 epochs without a better validation accuracy, not before 400 steps), so
both sides validate after every epoch and every run stops where its separate run stops. Timed:
`fit` of each run (separate: the figure is per run), and `fit_replicas` of all of them (stacking
counted: the figure is per replica); building the runs and loading the data are not timed on
either side. Rounds run in alternating order; the median of the per-round ratios (stacked per
replica / separate per run) is what counts. One thread, the process's CPU time by default
(`--clock wall` for wall time). It also prints how many replicas picked the same epoch as their
separate run, and the largest difference of their best validation accuracy (float32: rounding
differs between the stacked and the separate arithmetic, so this is agreement, not identity;
float64 identity is tests/engine/test_group_fit.py's).

Run:  python benchmarks/stacked_fit.py                      # about a minute on 2 cores
      python benchmarks/stacked_fit.py --seeds 10 --repeats 3 --clock wall
      python benchmarks/stacked_fit.py --out benchmarks/results-stacked-fit.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from lossbench.engine.checkpoint import capture_rng
from lossbench.engine.group_fit import ReplicaRun, fit_replicas
from lossbench.engine.loop import fit

CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def compose(seed: int, overrides: list[str]):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        return hydra_compose(config_name="config",
                             overrides=[f"seed={seed}", "trainer.threads=1", *overrides])


def built(seed: int, overrides: list[str], run_dir: Path) -> ReplicaRun:
    """Run `seed` as `experiment.workflow` makes it, up to where it calls `fit`."""
    from lossbench.experiment import workflow

    run = workflow.prepare(compose(seed, overrides), run_dir, Console(quiet=True),
                           time.perf_counter(), None)
    parts = workflow.build(run)
    generator = torch.Generator().manual_seed(run.train_seed)
    return ReplicaRun(parts.model, parts.loss_fn, parts.optimizer, parts.schedule.scheduler,
                      run.splits, parts.head, run.trainer, generator, capture_rng(generator))


def separate(seeds: int, overrides: list[str], run_dir: Path, clock) -> tuple[float, list]:
    """Seconds of `fit` per run, and the results."""
    spent, results = 0.0, []
    for seed in range(seeds):
        r = built(seed, overrides, run_dir)
        start = clock()
        results.append(fit(r.model, r.loss_fn, r.optimizer, r.scheduler, r.splits, r.head,
                           r.trainer, torch.device("cpu"), r.generator, r.progress or quiet()))
        spent += clock() - start
    return spent / seeds, results


def stacked(seeds: int, overrides: list[str], run_dir: Path, clock) -> tuple[float, list]:
    """Seconds of `fit_replicas` per replica, and the results."""
    runs = [built(seed, overrides, run_dir) for seed in range(seeds)]
    start = clock()
    results = fit_replicas(runs, torch.device("cpu"))
    return (clock() - start) / seeds, results


def quiet():
    from lossbench.engine.progress import EpochProgress

    return EpochProgress(Console(quiet=True), 0, "", enabled=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("overrides", nargs="*", default=["data_seed=0"],
                        help="config overrides for every run (default data_seed=0: the seeds "
                             "vary the training only, on one split)")
    args = parser.parse_args()
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    run_dir = Path(tempfile.mkdtemp(prefix="lossbench-stacked-fit-"))
    sides = {"separate": separate, "stacked": stacked}
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, list] = {}
    order = list(sides)
    for rep in range(args.repeats + 1):  # the first round warms up, not counted
        for name in (order if rep % 2 == 0 else order[::-1]):
            seconds, results[name] = sides[name](args.seeds, args.overrides, run_dir, clock)
            if rep:
                times[name].append(seconds)
    ratio = statistics.median(s / p for s, p in zip(times["stacked"], times["separate"]))
    pairs = list(zip(results["stacked"], results["separate"]))
    same_epoch = sum(a.best_epoch == b.best_epoch for a, b in pairs)
    gap = max(abs(a.best_value - b.best_value) for a, b in pairs)
    epochs = [b.epochs_run for b in results["separate"]]
    load = os.getloadavg()
    print(f"default experiment (digits MLP 64-128-64-10, Adam, batch 128, validation every "
          f"epoch), {args.seeds} seeds, epochs run {min(epochs)}-{max(epochs)}; median of "
          f"{args.repeats}, {args.clock} clock, 1 thread, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"  separate fit      {statistics.median(times['separate']):.3f} s per run")
    print(f"  fit_replicas      {statistics.median(times['stacked']):.3f} s per replica   "
          f"ratio {ratio:.3f}")
    print(f"  agreement (float32): {same_epoch}/{len(pairs)} same selected epoch, best "
          f"val metric within {gap:.2g}")
    print(f"rerun: python benchmarks/stacked_fit.py --seeds {args.seeds} --repeats "
          f"{args.repeats} --clock {args.clock} {' '.join(args.overrides)}".rstrip())
    if args.out:
        Path(args.out).write_text(json.dumps({
            "seeds": args.seeds, "repeats": args.repeats, "clock": args.clock,
            "torch": torch.__version__, "load_average": load, "epochs_run": epochs,
            "seconds_per_run": {k: statistics.median(v) for k, v in times.items()},
            "ratio_stacked_to_separate": ratio, "all": times,
            "same_selected_epoch": same_epoch, "best_value_gap": gap}, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""A ten-seed sweep stacked against the same sweep run job by job, and against one run, side by
side: the whole commands a user types, as fresh processes, on the defaults (digits, the MLP,
Adam, `epochs: auto`):

    one       lossbench train
    separate  lossbench train -m seed=0,...,9
    stacked   lossbench train -m hydra/launcher=stacked seed=0,...,9

Each repetition runs the three in a rotated order (so that a load that comes and goes falls on
each in turn) in one temporary folder; the figures are the medians of the wall times and of
the ratios within each repetition. `--no-plots` adds `trainer.plots=false` to all three, to
show how much of a job's time is its three PNGs (written by every job either way).

Targets (docs/benchmarks.md): stacked ≤ 1.5 × one, and ≤ 0.5 × separate.

`--preset noisy_labels` times the 100-run preset instead, against today's best way to run it on
a small machine, Hydra's joblib launcher with two jobs at once:

    parallel  lossbench train -m experiment=noisy_labels hydra/launcher=parallel
    stacked   lossbench train -m experiment=noisy_labels hydra/launcher=stacked [max_replicas]

(target: stacked ≥ 3 × faster). `--max-replicas N` caps the stacks.

Run:  python benchmarks/stacked_sweep.py                       # 3 repetitions
      python benchmarks/stacked_sweep.py --reps 5 --out benchmarks/results-stacked-sweep.json
      python benchmarks/stacked_sweep.py --preset noisy_labels --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS = "seed=" + ",".join(str(s) for s in range(10))
TRAIN = [sys.executable, "-m", "lossbench", "train"]


def commands(folder: str, plots: bool) -> dict[str, list[str]]:
    extra = ["print_config=false"] + ([] if plots else ["trainer.plots=false"])
    return {"one": [*TRAIN, *extra, f"hydra.run.dir={folder}/one"],  # -m comes first
            "separate": [*TRAIN, "-m", SEEDS, *extra, f"hydra.sweep.dir={folder}/separate"],
            "stacked": [*TRAIN, "-m", "hydra/launcher=stacked", SEEDS, *extra,
                        f"hydra.sweep.dir={folder}/stacked"]}


def preset_commands(folder: str, max_replicas: int | None) -> dict[str, list[str]]:
    preset = [*TRAIN, "-m", "experiment=noisy_labels"]
    cap = [] if max_replicas is None else [f"hydra.launcher.max_replicas={max_replicas}"]
    return {"parallel": [*preset, "hydra/launcher=parallel", f"hydra.sweep.dir={folder}/parallel"],
            "stacked": [*preset, "hydra/launcher=stacked", *cap,
                        f"hydra.sweep.dir={folder}/stacked"]}


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--preset", choices=("noisy_labels",))
    parser.add_argument("--max-replicas", type=int)
    args = parser.parse_args()
    names = ["parallel", "stacked"] if args.preset else ["one", "separate", "stacked"]
    times: dict[str, list[float]] = {name: [] for name in names}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timed(commands("warm", True)["one"], work)  # the file cache, for every side
        for rep in range(args.reps):
            cmds = (preset_commands(f"rep{rep}", args.max_replicas) if args.preset
                    else commands(f"rep{rep}", not args.no_plots))
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                times[name].append(timed(cmds[name], work))
            loads.append(os.getloadavg()[0])
            print(f"rep {rep}: " + ", ".join(f"{n} {times[n][-1]:.1f} s" for n in names),
                  flush=True)
    if args.preset:
        ratio = {"parallel/stacked": statistics.median(
            p / s for p, s in zip(times["parallel"], times["stacked"]))}
    else:
        ratio = {
            "stacked/one": statistics.median(s / o for s, o in zip(times["stacked"], times["one"])),
            "stacked/separate": statistics.median(
                s / p for s, p in zip(times["stacked"], times["separate"])),
            "separate/one": statistics.median(
                p / o for p, o in zip(times["separate"], times["one"])),
        }
    result = {"reps": args.reps, "plots": not args.no_plots, "preset": args.preset,
              "max_replicas": args.max_replicas,
              "median_s": {n: statistics.median(t) for n, t in times.items()},
              "times_s": times, "ratios": ratio, "load_1min": loads,
              "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
              "python": platform.python_version()}
    print(json.dumps({k: result[k] for k in ("median_s", "ratios", "load_1min")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

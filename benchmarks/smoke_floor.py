"""A CI smoke run against its floor, side by side: `lossbench train trainer=smoke` and the three
lines every PyTorch training script pays before its first step (import torch and
sklearn.metrics, build one Adam: torch imports its compiler stack on the first optimizer).

Each repetition runs both, in alternating order (AB, BA, ...), as fresh processes in one
temporary folder; the figures are the medians of the wall times, of the paired differences
(smoke − floor) and of each side's peak RSS (ru_maxrss of that child, from os.wait4).
Target: the smoke run's median wall time ≤ the floor's + 0.75 s.

Run:  python benchmarks/smoke_floor.py                 # 5 pairs
      python benchmarks/smoke_floor.py --pairs 9 --out benchmarks/results-smoke-floor.json
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

FLOOR = ("import torch, sklearn.metrics\n"
         "torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])\n")
TARGET_S = 0.75
SMOKE = [sys.executable, "-m", "lossbench", "train", "trainer=smoke", "print_config=false"]


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process; it must exit 0."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {child.returncode}: {child.stderr.read()!r}")
    child.stderr.close()
    # ru_maxrss: KiB on Linux, bytes on macOS
    rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return wall, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    floor_cmd = [sys.executable, "-c", FLOOR]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        timed(floor_cmd, work)  # warm the file cache for both sides
        timed([*SMOKE, "hydra.run.dir=warm"], work)
        floor, smoke = [], []
        for i in range(args.pairs):
            run = [*SMOKE, f"hydra.run.dir=run{i}"]
            if i % 2 == 0:
                floor.append(timed(floor_cmd, work))
                smoke.append(timed(run, work))
            else:
                smoke.append(timed(run, work))
                floor.append(timed(floor_cmd, work))
    median = statistics.median
    floor_s, smoke_s = median(w for w, _ in floor), median(w for w, _ in smoke)
    extra = median(s - f for (s, _), (f, _) in zip(smoke, floor))
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f}",
        "pairs": args.pairs, "floor_wall_s": floor_s, "smoke_wall_s": smoke_s,
        "smoke_minus_floor_s": extra, "target_s": TARGET_S, "met": extra <= TARGET_S,
        "floor_peak_rss_mib": median(r for _, r in floor),
        "smoke_peak_rss_mib": median(r for _, r in smoke),
        "floor_walls_s": [w for w, _ in floor], "smoke_walls_s": [w for w, _ in smoke],
    }
    print(f"machine: {result['machine']}; {args.pairs} pairs, medians")
    print(f"floor (import torch, sklearn.metrics; one Adam): {floor_s:6.2f} s  "
          f"peak RSS {result['floor_peak_rss_mib']:7.0f} MiB")
    print(f"lossbench train trainer=smoke:                   {smoke_s:6.2f} s  "
          f"peak RSS {result['smoke_peak_rss_mib']:7.0f} MiB")
    print(f"smoke - floor (median of paired differences):    {extra:+6.2f} s  "
          f"target <= +{TARGET_S} s: {'met' if result['met'] else 'NOT met'}")
    print("rerun: python benchmarks/smoke_floor.py --pairs", args.pairs)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

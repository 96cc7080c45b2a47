"""`lossbench compare PATH [PATH ...]`: one table that answers "which loss is best here?".

It reads run directories only (metrics.json, .hydra/config.yaml, .hydra/overrides.yaml,
history.csv) and never imports the training code or torch. Runs that differ only in keys that
cannot change a result (the seed, print_config, logger, plots, where files go) form one
configuration (a row): mean ± std over its seeds with a Student-t CI clipped to the metric's
range (lossbench/results/stats.py has the formulas).

Rows are compared inside a *family*: one dataset × condition (every varying key but the loss)
× metric. Against `--baseline ce` the family holds the k − 1 tests against ce; otherwise every
pair, so that the best row is never tested against rows it was picked from without paying for
it. Holm's method adjusts the p-values of each family. Two rows are *paired* when every seed
ran in both with equal pairing hashes (split and noise, initial weights, batch order): then the
paired t-test and a bootstrap CI of the mean difference; else Welch's test. A seed that failed
or diverged stays in the comparison as a loss for that seed.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from lossbench.results import stats
from lossbench.results.comparison.families import build_families, check_last_budgets, parse_baseline
from lossbench.results.comparison.records import Run, find_runs
from lossbench.results.comparison.rows import (IMBALANCE_COLUMNS, Block, block_values,
                                               config_key, describe_row, fmt_value, group_runs,
                                               label_rows, mean_of)
from lossbench.tasks import HEADLINE, lower_is_better, task_kind
from lossbench.errors import UserError
from lossbench.results.files import write_bytes_atomic, write_csv_atomic, write_text_atomic

# Config keys that cannot change a result: the seeds (what is averaged over), whether the config
# is printed, the trackers, plots, checkpoint cadence, where files go. Everything else (device,
# precision, compile, batch sizes, ...) can, and splits rows.
DEFAULT_IGNORE = ("seed", "data_seed", "train_seed", "run_dir", "resume", "print_config",
                  "logger", "trainer.plots", "trainer.checkpoint_every", "hydra")
FORMATS = ("table", "markdown", "csv", "json", "latex")
# The keys whose sweep draws a rate curve (metric against rate, one line per loss).
RATE_KEYS = ("dataset.noise.rate", "dataset.imbalance.ratio")


def build_blocks(runs: Sequence[Run], metric: str | None, mode: str | None, alpha: float,
                 group_by: Sequence[str] | None, ignore: Sequence[str], at: str = "best",
                 baseline: str | None = None, mde: float | None = None,
                 confidence: float = 0.95) -> list[Block]:
    """One block per (dataset, task): its rows sorted by the metric, split into families."""
    completed = [r for r in runs if r.status == "completed" and r.test_metrics(at) is not None]
    if at == "last":
        no_last = [r for r in runs if r.status == "completed" and r.test_metrics(at) is None]
        if no_last:
            raise UserError(f"--at last: {no_last[0].path} records no last-epoch test metrics "
                            "(written before they were); compare it --at best")
    by_block: dict[tuple[str, str], list[Run]] = {}
    for run in completed:
        by_block.setdefault((run.dataset, str(run.task)), []).append(run)

    def has(members: list[Run], name: str) -> bool:
        return any(r.test_metric(name, at) is not None for r in members)

    if metric and by_block and not any(has(m, metric) for m in by_block.values()):
        available = sorted({k for r in completed for k, v in (r.test_metrics(at) or {}).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise UserError(f"--metric {metric}: no run has a test metric of that name; "
                        f"choose from: {', '.join(available)}")
    lost = [r for r in runs if r.lost]
    blocks = []
    for (dataset, task), members in by_block.items():
        headline = list(HEADLINE[task_kind(task)])
        # a metric one task lacks (accuracy of a regression) leaves that block on its headline
        chosen = metric if metric and has(members, metric) else headline[0]
        block_mode = mode if chosen == metric and mode else (
            "min" if lower_is_better(chosen) else "max")
        metrics = [chosen] + [m for m in headline if m != chosen]
        if any({"imbalance", "resample"} & set(r.section("data")) for r in members):
            metrics += [m for m in IMBALANCE_COLUMNS if m not in metrics and has(members, m)]
        # keys that follow the seed (a dataset's `random_state: ${seed}`) vary with it
        keys = {k for r in members for k in r.config}
        ignore_here = list(ignore) + sorted(
            k for k in keys if all(r.config.get(k) == r.config.get("seed") for r in members))
        rows = group_runs(members, group_by, ignore_here)
        by_key = {row.key: row for row in rows}
        for run in lost:  # a failed seed joins the row of its configuration, as a loss
            if run.dataset == dataset and (row := by_key.get(
                    config_key(run, group_by, ignore_here))) is not None:
                row.lost.append(run)
        columns = label_rows(rows, group_by, ignore_here)
        for row in rows:
            for m in metrics:
                row.stats[m] = stats.summarize(block_values(row, m, at), confidence,
                                               stats.metric_range(m))
            epochs = [float(r.metrics["best_epoch"]) for r in row.runs
                      if isinstance(r.metrics.get("best_epoch"), (int, float))]
            times = [float(r.metrics["wall_time_s"]) for r in row.runs
                     if isinstance(r.metrics.get("wall_time_s"), (int, float))]
            row.best_epoch = mean_of(epochs)
            row.train_time_s = mean_of(times)
            describe_row(row, at)
        sign = 1.0 if block_mode == "min" else -1.0
        rows.sort(key=lambda r: (math.isnan(r.stats[chosen].mean),
                                 sign * r.stats[chosen].mean if r.stats[chosen].n else 0.0))
        block = Block(dataset, task, chosen, block_mode, metrics, columns, rows)
        if at == "last":
            check_last_budgets(block)
        rate_keys = [k for k in RATE_KEYS if k in columns]
        block.rate_key = rate_keys[0] if rate_keys and "loss" in columns else None
        blocks.append(block)
    parsed = parse_baseline(baseline)
    if parsed and not any(fmt_value(r.labels.get(parsed[0])) == parsed[1]
                          for b in blocks for r in b.rows):
        choices = sorted({fmt_value(r.labels.get(parsed[0])) for b in blocks for r in b.rows}
                         - {""})
        raise UserError(f"--baseline {baseline}: no configuration has {parsed[0]}={parsed[1]}"
                        + (f"; choose from: {', '.join(choices)}" if choices else
                           f" ({parsed[0]} does not vary between the rows)"))
    for block in blocks:
        build_families(block, parsed, at, alpha, mde, confidence)
    return blocks


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lossbench compare",
        description="Aggregate runs (a multirun folder, several, or single run directories) "
                    "into one table: configurations that differ only in seed are averaged.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="run or multirun directories")
    parser.add_argument("--metric", help="test metric to sort by and plot (any numeric key of "
                        "metrics.json's test metrics; default: accuracy, or rmse for regression)")
    parser.add_argument("--mode", choices=("min", "max"),
                        help="whether lower or higher --metric is better (default: by name)")
    parser.add_argument("--at", choices=("best", "last"), default="best",
                        help="test metrics of the epoch selected on validation (best, default) "
                             "or of the last epoch of the budget (last)")
    parser.add_argument("--baseline", metavar="[KEY=]VALUE",
                        help="compare every row with this one, named in advance (e.g. ce, or "
                             "optimizer=adam); default: all pairs. Holm adjusts either family")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="family-wise significance level (default 0.05)")
    parser.add_argument("--mde", type=float, metavar="DIFF",
                        help="a difference worth detecting (e.g. 0.01 accuracy): the number of "
                             "seeds needed to detect it at power 0.8")
    parser.add_argument("--group-by", metavar="KEYS",
                        help="comma-separated keys that define a configuration, e.g. "
                             "loss,dataset.noise.rate (default: every key that can change a "
                             "result)")
    parser.add_argument("--ignore", metavar="KEYS", default="",
                        help="comma-separated config keys that, like seed, do not tell "
                             "configurations apart (e.g. trainer.device)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="what to print: a rich table (default), markdown, csv, json or a "
                             "LaTeX booktabs table")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write comparison.csv/.md/.tex/.png, curves.png and "
                             "rates.png (default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    from lossbench.results.tuning import add_tune_arguments

    add_tune_arguments(parser)  # --tune KEYS --tune-seeds SEEDS: choose per loss, report the rest
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        raise UserError(f"--alpha {args.alpha:g} must lie in (0, 1)")
    if args.mde is not None and not args.mde > 0:
        raise UserError(f"--mde {args.mde:g} must be a positive difference")
    return args


def _keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def compare_command(argv: list[str]) -> int:
    """`lossbench compare PATH [PATH ...] [--metric M] [--at best|last] [--baseline B]`."""
    from lossbench.results.comparison import plots, tables

    args = parse_args(argv)
    runs = find_runs(args.paths)
    from lossbench.results.tuning import tuned_runs

    runs = tuned_runs(runs, args)  # unchanged without --tune
    group_by = _keys(args.group_by) or None
    ignore = list(DEFAULT_IGNORE) + _keys(args.ignore)
    failed = [r for r in runs if r.status != "completed"]
    blocks = build_blocks(runs, args.metric, args.mode, args.alpha, group_by, ignore,
                          at=args.at, baseline=args.baseline, mde=args.mde)
    out_dir = Path(args.out) if args.out else Path(args.paths[0])
    if out_dir.is_file():
        raise UserError(f"--out {out_dir} is a file, not a directory")
    notes = tables.Notes(alpha=args.alpha, at=args.at, baseline=args.baseline, mde=args.mde)

    written = []
    markdown = tables.to_markdown(blocks, failed, notes)
    if blocks:
        write_csv_atomic(out_dir / "comparison.csv", tables.csv_rows(blocks, args.at))
        written.append(out_dir / "comparison.csv")
        latex = tables.to_latex(blocks, notes)
        write_text_atomic(out_dir / "comparison.tex", latex)
        written.append(out_dir / "comparison.tex")
    write_text_atomic(out_dir / "comparison.md", markdown)
    written.append(out_dir / "comparison.md")
    if blocks and not args.no_plots:
        write_bytes_atomic(out_dir / "comparison.png", plots.comparison_plot(blocks))
        write_bytes_atomic(out_dir / "curves.png", plots.curves_plot(blocks))
        written += [out_dir / "comparison.png", out_dir / "curves.png"]
        if any(b.rate_key for b in blocks):
            write_bytes_atomic(out_dir / "rates.png", plots.rates_plot(blocks, args.at))
            written.append(out_dir / "rates.png")

    if args.format == "table":
        tables.print_table(blocks, failed, notes)
        if not blocks:
            print(f"no completed runs to compare ({len(failed)} failed or unfinished)")
        print("wrote " + " ".join(str(p) for p in written))
    elif args.format == "markdown":
        sys.stdout.write(markdown)
    elif args.format == "csv":
        sys.stdout.write((out_dir / "comparison.csv").read_text() if blocks else "")
    elif args.format == "latex":
        sys.stdout.write(tables.to_latex(blocks, notes) if blocks else "")
    else:
        sys.stdout.write(tables.to_json(blocks, failed, args.at))
    return 0

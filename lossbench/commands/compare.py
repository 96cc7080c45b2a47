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
paired t-test and the t interval of the paired differences; else Welch's test and interval. A seed that failed
or diverged stays in the comparison as a loss for that seed. A run found twice (a copied run
directory, or one run under two folders given) counts once, with a warning; copies whose results
disagree are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lossbench.errors import UserError, tell
from lossbench.results.comparison.blocks import DEFAULT_IGNORE, build_blocks, distinct_runs
from lossbench.results.comparison.records import find_runs
from lossbench.results.files import (csv_text, write_bytes_atomic, write_csv_atomic,
                                     write_text_atomic)

FORMATS = ("table", "markdown", "csv", "json", "latex")


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
    parser.add_argument("--wide", action="store_true",
                        help="the table with every column of comparison.md (std, p (Holm), "
                             "P(better), best epoch, ...), for a wide terminal; default: the "
                             "key columns, which fit 80 columns")
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
    from lossbench.results.comparison import latex, tables

    args = parse_args(argv)
    runs, copies = distinct_runs(find_runs(args.paths))
    for line in copies:  # stderr: stdout may be CSV
        print(f"lossbench: warning: {line}", file=sys.stderr)
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

    markdown = tables.to_markdown(blocks, failed, notes)
    lacking = [line for path in args.paths if (line := incomplete_sweep(Path(path)))]
    lacking += damaged_runs(runs)
    for line in lacking:
        tell(line)
    if lacking and not args.out:  # files that would go stale as the sweep (re)runs
        written: list[Path] = []
        unsaved = None
        tell("comparison files not written into an incomplete folder; pass --out DIR to write "
             "them")
    else:
        written, unsaved = save_comparison(out_dir, blocks, markdown, notes, args)

    if args.format == "table":
        tables.print_table(blocks, failed, notes, wide=args.wide)
        if not blocks:
            print(f"no completed runs to compare ({len(failed)} failed or unfinished)")
        if written:
            print("wrote " + " ".join(str(p) for p in written))
    elif args.format == "markdown":
        sys.stdout.write(markdown)
    elif args.format == "csv":
        sys.stdout.write(csv_text(tables.csv_rows(blocks, args.at)) if blocks else "")
    elif args.format == "latex":
        sys.stdout.write(latex.to_latex(blocks, notes) if blocks else "")
    else:
        sys.stdout.write(tables.to_json(blocks, failed, args.at))
    if unsaved is not None:
        # the table is printed: only the files are missing. Asked for by --out, that is an
        # error (exit 2); beside runs that are only read (a read-only folder), a note
        tell(f"{'error: ' if args.out else ''}comparison files not saved: {unsaved}"
             f"{'' if args.out else '; pass --out DIR to save them elsewhere'}")
        return 2 if args.out else 0
    return 0


def sweep_size(sweep_dir: Path) -> int | None:
    """How many jobs the sweep's command asked for (multirun.yaml: the product of each swept
    key's values), None when that cannot be told (a sweeper that draws its own values)."""
    from omegaconf import OmegaConf

    try:
        hydra = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        if "BasicSweeper" not in str(hydra.sweeper.get("_target_", "")):
            return None
        from hydra.core.override_parser.overrides_parser import OverridesParser

        size = 1
        for override in OverridesParser.create().parse_overrides(list(hydra.overrides.task)):
            if override.is_sweep_override():
                size *= len(list(override.sweep_iterator()))
        return size
    except Exception:  # no multirun.yaml, a damaged one, a range without an end
        return None


def incomplete_sweep(path: Path) -> str:
    """A line naming what a sweep folder lacks (jobs killed or still running: started without
    a record, or not started at all), '' for a complete one or a folder that is no sweep."""
    from lossbench.results.record import has_metrics

    if not (path / "multirun.yaml").is_file():
        return ""
    started = sorted({p.parent.parent for p in path.rglob(".hydra/overrides.yaml")},
                     key=lambda p: (len(p.parts), str(p)))
    unrecorded = [job for job in started if not has_metrics(job)]
    expected = sweep_size(path)
    unstarted = max(0, expected - len(started)) if expected is not None else 0
    if not unrecorded and not unstarted:
        return ""
    total = expected if expected is not None else len(started)
    parts = []
    if unrecorded:
        parts.append(f"{len(unrecorded)} without a record (killed or still running: "
                     f"{' '.join(str(job) for job in unrecorded)})")
    if unstarted:
        parts.append(f"{unstarted} not started")
    return (f"the sweep {path} is incomplete: of its {total} jobs, {' and '.join(parts)}; "
            "the table holds the others")


def damaged_runs(runs: list) -> list[str]:
    """A line per completed run whose files changed since its record was written (a history.csv
    cut short draws its curve short; a zero-byte model.pt cannot be evaluated again)."""
    from lossbench.results.record import damaged_files

    lines = []
    for run in runs:
        if run.status == "completed" and (damaged := damaged_files(run.path, run.metrics)):
            lines.append(f"{run.path}: {', '.join(damaged)} changed since the run completed "
                         "(truncated or removed); its figures come from metrics.json, and a "
                         "sweep rerun into its folder trains it again")
    return lines


def save_comparison(out_dir: Path, blocks: list, markdown: str, notes: object,
                    args: argparse.Namespace) -> tuple[list[Path], str | None]:
    """Write comparison.csv/.tex/.md and the plots into out_dir: (the files written, why the
    rest could not be: a full disk or a read-only folder, else None). The table never depends
    on them."""
    from lossbench.errors import storage_fault
    from lossbench.results.comparison import latex, plots, tables

    written: list[Path] = []
    try:
        if blocks:
            write_csv_atomic(out_dir / "comparison.csv", tables.csv_rows(blocks, args.at))
            written.append(out_dir / "comparison.csv")
            write_text_atomic(out_dir / "comparison.tex", latex.to_latex(blocks, notes))
            written.append(out_dir / "comparison.tex")
        write_text_atomic(out_dir / "comparison.md", markdown)
        written.append(out_dir / "comparison.md")
        if blocks and not args.no_plots:
            write_bytes_atomic(out_dir / "comparison.png",
                               plots.comparison_plot(blocks, args.at))
            write_bytes_atomic(out_dir / "curves.png", plots.curves_plot(blocks))
            written += [out_dir / "comparison.png", out_dir / "curves.png"]
            if any(b.rate_key for b in blocks):
                write_bytes_atomic(out_dir / "rates.png", plots.rates_plot(blocks, args.at))
                written.append(out_dir / "rates.png")
    except OSError as err:
        fault = storage_fault(err)
        if fault is None:
            raise
        return written, fault
    return written, None


"""Blocks: the runs of one (dataset, task), grouped into rows, sorted by the metric and split
into families for the paired tests; what `lossbench compare` prints and the study report reads."""

from __future__ import annotations

import math
from collections.abc import Sequence

from lossbench.errors import UserError
from lossbench.results import stats
from lossbench.results.comparison.families import build_families, check_last_budgets, parse_baseline
from lossbench.results.comparison.records import Run
from lossbench.results.comparison.rows import (IMBALANCE_COLUMNS, Block, block_values,
                                               config_key, describe_row, fmt_value, group_runs,
                                               label_rows, mean_of)
from lossbench.tasks import HEADLINE, lower_is_better, task_kind

# Config keys that cannot change a result: the seeds (what is averaged over), whether the config
# is printed, the trackers, plots, checkpoint cadence, where files go. Everything else (device,
# precision, compile, batch sizes, ...) can, and splits rows.
DEFAULT_IGNORE = ("seed", "data_seed", "train_seed", "run_dir", "resume", "print_config",
                  "logger", "trainer.plots", "trainer.checkpoint_every", "hydra")
# Metrics of the class probabilities' calibration: not comparable between a model's probabilities
# and kNN vote shares (metrics.json's class_scores)
CALIBRATION_METRICS = ("nll", "brier", "ece")
# The keys whose sweep draws a rate curve (metric against rate, one line per loss).
RATE_KEYS = ("dataset.noise.rate", "dataset.imbalance.ratio")


def score_kinds(runs: Sequence[Run]) -> dict[str, list[str]]:
    """{kind of class probabilities: the losses whose runs have it}, where runs record it; kNN
    vote shares are one kind, a model's probabilities (softmax, sigmoids, a loss's own) the
    other."""
    kinds: dict[str, list[str]] = {}
    for run in runs:
        if run.class_scores is None:
            continue
        kind = "knn_votes" if run.class_scores == "knn_votes" else "model"
        losses = kinds.setdefault(kind, [])
        if (loss := str(run.value("loss"))) not in losses:
            losses.append(loss)
    return kinds


def check_score_kinds(runs: Sequence[Run], metric: str, dataset: str) -> None:
    """Refuse to rank calibration across kinds of class probabilities (UserError)."""
    kinds = score_kinds(runs)
    if len(kinds) > 1:
        raise UserError(f"--metric {metric}: the runs of {dataset} have class probabilities of "
                        f"two kinds (kNN vote shares: {', '.join(kinds['knn_votes'])}; model "
                        f"probabilities: {', '.join(kinds['model'])}), whose calibration is not "
                        "comparable; compare each kind apart, or by accuracy")


def distinct_runs(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """The runs with copies counted once: two records of one configuration (every key that can
    change a result, DEFAULT_IGNORE aside) and one replicate (seed, data and training seeds) are
    one run, e.g. a copied run directory or a grid's run found again in another sweep. Returns
    the runs, the first found of each kept, and a line per run left out naming its copy.
    Copies that disagree in their outcome (status, test metrics) are refused (UserError): which
    one to count is the user's to decide. Unreadable and unfinished records are left alone."""
    import json

    kept: dict[tuple, Run] = {}
    out: list[Run] = []
    lines: list[str] = []
    for run in runs:
        if run.status not in ("completed", "failed", "diverged") or not run.config:
            out.append(run)
            continue
        identity = (config_key(run, None, DEFAULT_IGNORE), run.replicate)
        first = kept.setdefault(identity, run)
        if first is run:
            out.append(run)
            continue
        outcome = [json.dumps([r.status, r.metrics.get("test"), r.metrics.get("test_at")],
                              sort_keys=True, default=str) for r in (first, run)]
        if outcome[0] != outcome[1]:
            raise UserError(f"{first.path} and {run.path} are the same run (same config and seed "
                            f"{run.seed}) with different results; compare one of them, or tell "
                            "them apart by a config key")
        lines.append(f"{run.path} is a copy of {first.path} (same config, seed {run.seed} and "
                     "results): counted once")
    return out, lines


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
        if chosen in CALIBRATION_METRICS:
            check_score_kinds(members, chosen, dataset)
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

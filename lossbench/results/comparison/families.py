"""Tests between configurations inside a family (one dataset × condition × metric): paired
or Welch t-tests, Holm's adjustment, probability of improvement and sample-size figures."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from lossbench.results import stats
from lossbench.results.comparison.rows import (Block, Comparison, Family, Row, block_values,
                                              fmt_value, mean_of)
from lossbench.errors import UserError
from lossbench.results.stats import Improvement

POWER = 0.8


def seed_scores(row: Row, metric: str, at: str) -> dict[Any, float | None] | None:
    """{seed: value, or None for a lost seed}; None if a seed appears twice (not pairable)."""
    scores: dict[Any, float | None] = {}
    for run in row.runs + row.lost:
        seed = run.replicate
        if seed in scores:
            return None
        scores[seed] = None if run.lost else run.test_metric(metric, at)
    return scores


def paired_runs(a: Row, b: Row) -> bool:
    """Every seed in both rows, once each, with equal pairing records (a lost run may lack
    one: it failed before writing it), and at least two seeds."""
    seeds_a = {r.replicate: r for r in a.runs + a.lost}
    seeds_b = {r.replicate: r for r in b.runs + b.lost}
    if len(seeds_a) != len(a.runs + a.lost) or len(seeds_b) != len(b.runs + b.lost):
        return False
    if set(seeds_a) != set(seeds_b) or len(seeds_a) < 2:
        return False
    for seed, run_a in seeds_a.items():
        pa, pb = run_a.pairing(), seeds_b[seed].pairing()
        if run_a.lost or seeds_b[seed].lost:
            if pa is not None and pb is not None and pa != pb:
                return False
        elif pa is None or pa != pb:
            return False
    return True


def worst_value(metric: str, mode: str, values: Sequence[float]) -> float:
    """What a lost seed scores in a t-test: the worst value the metric can take where it is
    bounded (accuracy 0), else the worst value any run of the block reached."""
    low, high = stats.metric_range(metric)
    bound = high if mode == "min" else low
    if math.isfinite(bound):
        return bound
    if not values:
        return float("nan")
    return max(values) if mode == "min" else min(values)


def compare_rows(a: Row, b: Row, metric: str, mode: str, at: str, worst: float,
                 confidence: float) -> Comparison:
    sign = -1.0 if mode == "min" else 1.0
    paired = paired_runs(a, b)
    if paired:
        sa, sb = seed_scores(a, metric, at), seed_scores(b, metric, at)
        seeds = sorted(sa)
        xa = [sa[s] for s in seeds]
        xb = [sb[s] for s in seeds]
    else:
        xa = [r.test_metric(metric, at) for r in a.runs] + [None] * len(a.lost)
        xb = [r.test_metric(metric, at) for r in b.runs] + [None] * len(b.lost)
    # P(better) ranks a lost seed below everything; the t-tests need a number: the worst value
    score_a = [-math.inf if x is None else sign * x for x in xa]
    score_b = [-math.inf if x is None else sign * x for x in xb]
    improvement = stats.probability_of_improvement(score_a, score_b, paired, confidence)
    va = [worst if x is None else x for x in xa]
    vb = [worst if x is None else x for x in xb]
    bounds = stats.difference_range(metric)
    if paired:
        diffs = [x - y for x, y in zip(va, vb)]
        # the paired t-test's own interval: it excludes 0 exactly when p < 1 − confidence (a
        # percentile bootstrap of 3 to 10 differences is too narrow and can contradict the test)
        summary = stats.summarize(diffs, confidence, bounds)
        diff, sd, low, high = summary.mean, summary.std, summary.ci_low, summary.ci_high
        return Comparison(a, b, "paired t", str(len(diffs)), len(diffs), diff, low, high,
                          stats.paired_t_p(va, vb), improvement, sd)
    diff = mean_of(va) - mean_of(vb)
    low, high = stats.clip(*stats.mean_difference_ci(va, vb, confidence), bounds)
    sd = float("nan")
    if len(va) >= 2 and len(vb) >= 2:
        var_a = math.fsum((v - mean_of(va)) ** 2 for v in va) / (len(va) - 1)
        var_b = math.fsum((v - mean_of(vb)) ** 2 for v in vb) / (len(vb) - 1)
        sd = math.sqrt((var_a + var_b) / 2)
    return Comparison(a, b, "Welch", f"{len(va)} + {len(vb)}", min(len(va), len(vb)), diff,
                      low, high, stats.welch_p(va, vb), improvement, sd)


def sample_size_figures(comparison: Comparison, alpha: float, mde: float | None) -> None:
    """Detectable difference at this n and the n needed for `mde`, at power 0.8 and the
    family's adjusted α; nothing below 3 pairs (the sd of 2 is too rough to plan with)."""
    if comparison.n_min < 3 or not comparison.sd > 0:
        return
    paired = comparison.test == "paired t"
    comparison.mde = stats.minimum_detectable_difference(comparison.sd, comparison.n_min,
                                                         alpha, POWER, paired)
    if mde:
        comparison.n_needed = stats.sample_size(mde, comparison.sd, alpha, POWER, paired)


def parse_baseline(text: str | None) -> tuple[str, str] | None:
    """`--baseline ce` is loss=ce; `--baseline optimizer=sgd` names another key."""
    if not text:
        return None
    key, sep, value = text.partition("=")
    return (key, value) if sep else ("loss", text)


def condition_order(key: tuple[str, ...]) -> tuple:
    """Noise rates 0, 0.2, 0.4 in that order (numbers by value), names alphabetically."""
    order = []
    for value in key:
        try:
            order.append((0, float(value), ""))
        except ValueError:
            order.append((1, 0.0, value))
    return tuple(order)


def build_families(block: Block, baseline: tuple[str, str] | None, at: str, alpha: float,
                   mde: float | None, confidence: float) -> None:
    """Split the block's rows by condition, and test inside each family (Holm)."""
    treatment = baseline[0] if baseline else ("loss" if "loss" in block.columns else None)
    block.treatment = treatment
    condition_keys = [c for c in block.columns if c != treatment] if treatment else []
    groups: dict[tuple, list[Row]] = {}
    for row in block.rows:  # already sorted best first
        key = tuple(fmt_value(row.labels.get(c)) for c in condition_keys)
        groups.setdefault(key, []).append(row)
    values = [v for r in block.rows for v in block_values(r, block.metric, at)]
    worst = worst_value(block.metric, block.mode, values)
    for key, rows in sorted(groups.items(), key=lambda item: condition_order(item[0])):
        reference = None
        if baseline:
            matches = [r for r in rows if fmt_value(r.labels.get(baseline[0])) == baseline[1]]
            reference = matches[0] if matches else None
            pairs = [(r, reference) for r in rows if r is not reference] if reference else []
        else:
            reference = rows[0] if rows[0].stats[block.metric].n else None
            pairs = list(itertools.combinations(rows, 2))
        comparisons = [compare_rows(a, b, block.metric, block.mode, at, worst, confidence)
                       for a, b in pairs]
        for comparison, p in zip(comparisons, stats.holm([c.p for c in comparisons])):
            comparison.p_holm = p
        adjusted = alpha / max(1, len(comparisons))
        for comparison in comparisons:
            sample_size_figures(comparison, adjusted, mde)
        family = Family(dict(zip(condition_keys, key)), rows, comparisons, adjusted, reference)
        block.families.append(family)
        mark_rows(family, baseline is not None, alpha, block.mode)
    # rows of one family stay together, each family best first
    block.rows = [row for family in block.families for row in family.rows]


def mark_rows(family: Family, against_baseline: bool, alpha: float, mode: str) -> None:
    reference = family.reference
    if reference is None or (not against_baseline and len(family.rows) < 2):
        # alone in its family, the top row was chosen from nothing: no "best"
        for row in family.rows:
            row.mark = "no baseline here" if against_baseline else ""
        return
    reference.mark = "baseline" if against_baseline else "best"
    for comparison in family.comparisons:
        if reference not in (comparison.a, comparison.b):
            continue
        row = comparison.b if comparison.a is reference else comparison.a
        if comparison.a is reference:  # keep "row against reference" as the recorded direction
            comparison = flipped(comparison)
        row.reference = comparison
        better = comparison.diff < 0 if mode == "min" else comparison.diff > 0
        if not comparison.separated(alpha):
            row.mark = f"not separated (n = {comparison.n})"
        elif against_baseline:
            row.mark = "better" if better else "worse"
        else:  # better than the top mean only when the top row lost seeds the other did not
            row.mark = "better than top" if better else "worse than best"
    if not against_baseline and any(r.mark != "worse than best"
                                    for r in family.rows if r is not reference):
        reference.mark = "top"  # highest mean, but not separated from every other row


def flipped(c: Comparison) -> Comparison:
    i = c.improvement
    n = " + ".join(reversed(c.n.split(" + ")))  # Welch's "3 + 4" is a's runs + b's
    return Comparison(c.b, c.a, c.test, n, c.n_min, -c.diff, -c.diff_high, -c.diff_low, c.p,
                      Improvement(1 - i.p, i.n - i.wins, i.n, 1 - i.ci_high, 1 - i.ci_low),
                      c.sd, c.p_holm, c.mde, c.n_needed)


def check_last_budgets(block: Block) -> None:
    """`--at last` compares the last epoch of each run: only fair when every run of the block
    trained for the same budget (early stopping ends a run at its best epoch + patience)."""
    budgets: dict[tuple, list[str]] = {}
    for row in block.rows:
        for run in row.runs:
            budget = run.section("budget")
            if not budget or run.test_metrics("last") is None:
                raise UserError(f"--at last: {run.path} records no last-epoch test metrics and "
                                "budget (written before they were); compare it --at best")
            key = (budget.get("epochs_run"), budget.get("steps_run"))
            budgets.setdefault(key, []).append(row.label)
    if len(budgets) > 1:
        seen = "; ".join(f"{labels[0]}: {epochs} epochs, {steps} steps"
                         for (epochs, steps), labels in budgets.items())
        raise UserError(f"--at last: the runs of {block.dataset} trained for different budgets "
                        f"({seen}), so their last epochs are not comparable (early stopping "
                        "ends a run at best + patience); rerun with trainer.keep=last (or "
                        "trainer.early_stopping=false) or compare --at best")

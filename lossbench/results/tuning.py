"""Choosing each loss's settings on tuning seeds and reporting it on the others.

A lucky seed is lucky on validation and test alike, so the seeds that choose a configuration never
report it. Two users: `lossbench study` (its trials) and `lossbench compare --tune KEYS` (grids a
user already ran). Both read a run's record through `validation_score`, the one place that says
how a run's validation result ranks it; it reads no test metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
from lossbench.results.record import read_history


# How much the tie-break (the validation NLL at the selected epoch) weighs in a score: so little
# that it decides only between equal accuracies. The NLL, capped at TIE_CAP, moves a score by at
# most 1e-7, less than one validation example moves a mean accuracy (1 / (examples × seeds))
# below a million validation examples × seeds.
TIE_WEIGHT = 1e-9
TIE_CAP = 100.0


def selected_tie(metrics: dict[str, Any], run_dir: str | Path | None) -> float | None:
    """The run's tie-break metric (`selection.tie_break`, e.g. val_nll; its clean-label column
    under trainer.select_on=clean) at the selected epoch (`best_epoch`), from
    `run_dir/history.csv`; None when the rule has no tie-break or the record lacks it."""
    selection = metrics.get("selection")
    tie_break = selection.get("tie_break") if isinstance(selection, dict) else None
    epoch = metrics.get("best_epoch")
    if not tie_break or run_dir is None or not isinstance(epoch, int):
        return None
    column = tie_break + ("_clean" if selection.get("labels") == "clean" else "")
    try:
        history = read_history(run_dir)
    except ValueError:  # not UTF-8 text: no tie-break
        return None
    for row in history:
        if math.isfinite(row.get("epoch", math.nan)) and int(row["epoch"]) == epoch:
            value = row.get(column, math.nan)  # an empty cell counts as missing
            return None if math.isnan(value) else value
    return None


def validation_score(metrics: dict[str, Any], run_dir: str | Path | None = None) -> float:
    """How good a finished run looked on validation, higher is better, by the rule that picked
    its epoch (lossbench.engine.selection.selection_rule): the monitored metric at the selected epoch
    (`best_val`, validation accuracy by default), negated when lower is better; where the rule
    breaks ties (`selection.tie_break`: the validation NLL, lower wins), minus TIE_WEIGHT times
    that epoch's value from `run_dir/history.csv` (capped at TIE_CAP). So two runs, or two
    trials' means, equal in accuracy rank by validation NLL, as two epochs of one run do, while
    any difference in accuracy still decides. Without `run_dir` (or history.csv) no tie-break.
    A run that did not complete (failed, diverged) scores -inf: it still used its share of the
    budget. It reads no test metric."""
    value = metrics.get("best_val")
    if metrics.get("status") != "completed" or not isinstance(value, (int, float)) or (
            isinstance(value, bool) or math.isnan(value)):
        return -math.inf
    score = -float(value) if metrics.get("mode") == "min" else float(value)
    tie = selected_tie(metrics, run_dir)
    if tie is not None:
        score -= TIE_WEIGHT * min(tie, TIE_CAP)
    return score


def mean_score(scores: Iterable[float]) -> float:
    """The mean of a configuration's validation scores over its tuning seeds (-inf if one
    failed, or if there is none)."""
    scores = list(scores)
    if not scores or any(math.isinf(s) for s in scores):
        return -math.inf
    return math.fsum(scores) / len(scores)


def parse_seeds(text: str) -> set[int]:
    """`0,1` or `0-2` (inclusive) or a mix: the tuning seeds of `compare --tune-seeds`."""
    seeds: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part:
                low, high = part.split("-", 1)
                seeds.update(range(int(low), int(high) + 1))
            else:
                seeds.add(int(part))
        except ValueError:
            raise UserError(f"--tune-seeds {text}: expected seeds like 0,1 or 0-2") from None
    if not seeds:
        raise UserError("--tune-seeds is empty: name the seeds that choose each loss's settings")
    return seeds


def select_on_tuning_seeds(runs: Sequence[Any], keys: Sequence[str], tune_seeds: set[int],
                           allow_unequal: bool = False) -> tuple[list[Any], list[str]]:
    """For each (dataset, task, loss): the configuration (its values of `keys`) with the best mean
    validation score over the runs whose seed is in `tune_seeds`, and that configuration's runs
    on every other seed. Returns (the runs to compare, one line per choice).

    Refuses (UserError) when losses of one dataset had different numbers of configurations (an
    unequal tuning budget) unless `allow_unequal`, when a loss has no run on a tuning seed, and
    when the chosen configuration has no run left to report."""
    # failed runs stay: a configuration that failed used its share of the budget too
    completed = [r for r in runs if r.status != "unreadable"]
    groups: dict[tuple[str, str, str], dict[str, list[Any]]] = {}
    for run in completed:
        loss = str(run.value("loss"))
        config = json.dumps({k: run.value(k) for k in keys}, sort_keys=True, default=str)
        groups.setdefault((run.dataset, str(run.task), loss), {}).setdefault(config, []).append(run)
    if not groups:
        raise UserError("--tune: no completed runs to choose from")
    budgets: dict[tuple[str, str], dict[str, int]] = {}
    for (dataset, task, loss), configs in groups.items():
        budgets.setdefault((dataset, task), {})[loss] = len(configs)
    for (dataset, _), per_loss in budgets.items():
        if len(set(per_loss.values())) > 1 and not allow_unequal:
            counts = ", ".join(f"{loss} {n}" for loss, n in sorted(per_loss.items()))
            raise UserError(f"--tune {','.join(keys)}: unequal tuning budgets on {dataset} "
                            f"(configurations per loss: {counts}); run the same number for every "
                            "loss, or pass --allow-unequal-budget")
    chosen: list[Any] = []
    lines: list[str] = []
    for (dataset, _, loss), configs in sorted(groups.items()):
        scored = []
        for config, members in configs.items():
            tuning = [validation_score(r.metrics, r.path) for r in members
                      if r.metrics.get("seed") in tune_seeds]
            if tuning:
                scored.append((mean_score(tuning), config, members))
        if not scored:
            raise UserError(f"--tune-seeds: loss {loss} on {dataset} has no run on seeds "
                            f"{sorted(tune_seeds)}")
        # ties go to the first configuration in the order the runs were found (deterministic)
        score, config, members = max(scored, key=lambda item: item[0])
        report = [r for r in members if r.metrics.get("seed") not in tune_seeds]
        if not report:
            raise UserError(f"--tune: the configuration chosen for {loss} on {dataset} ({config})"
                            f" has no run outside the tuning seeds to report")
        chosen += report
        values = ", ".join(f"{k}={v}" for k, v in json.loads(config).items())
        lines.append(f"{dataset} {loss}: chose {values} of {len(configs)} (validation "
                     f"{abs(score):.4f} over tuning seeds {sorted(tune_seeds)}); reporting "
                     f"{len(report)} other seed{'s' if len(report) != 1 else ''}")
    return chosen, lines


def add_tune_arguments(parser: Any) -> None:
    """`compare`'s options for choosing each loss's settings on tuning seeds."""
    parser.add_argument("--tune", metavar="KEYS",
                        help="comma-separated config keys a grid varied (e.g. optimizer.lr,loss.q):"
                             " per loss, keep the values with the best validation score over "
                             "--tune-seeds and compare only the runs on the other seeds")
    parser.add_argument("--tune-seeds", metavar="SEEDS",
                        help="the seeds that choose (e.g. 0,1 or 0-2); never reported")
    parser.add_argument("--allow-unequal-budget", action="store_true",
                        help="with --tune, accept losses that had different numbers of "
                             "configurations")


def tuned_runs(runs: Sequence[Any], args: Any) -> list[Any]:
    """The runs `compare --tune` reports; says what it chose on stderr (stdout may be CSV)."""
    import sys

    if not args.tune:
        if args.tune_seeds:
            raise UserError("--tune-seeds needs --tune KEYS (the keys to choose per loss)")
        return list(runs)
    if not args.tune_seeds:
        raise UserError("--tune needs --tune-seeds: the seeds that choose, never reported")
    keys = [k.strip() for k in args.tune.split(",") if k.strip()]
    chosen, lines = select_on_tuning_seeds(runs, keys, parse_seeds(args.tune_seeds),
                                           args.allow_unequal_budget)
    for line in lines:
        print(f"lossbench: {line}", file=sys.stderr)
    return chosen

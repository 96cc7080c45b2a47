"""The report of a study (`<dir>/study.md`, `study.json`, plots): how fair it was, and what won.

- Fairness, per dataset and loss: the budget (trials, of which failed; runs per trial), the chosen
  values, and a warning for each chosen value at the edge of its search space.
- Sensitivity: per dataset, one panel per loss, each trial's validation score against its
  learning rate (`sensitivity_<dataset>.png`).
- The comparison of the winners on the report seeds only (lossbench.commands.compare's blocks, rendered
  by lossbench.results.comparison.tables), per dataset: test metrics at the epoch each run selected.
- Across datasets: each loss's mean rank, with a stratified bootstrap CI (Agarwal et al. 2021,
  rliable): within each dataset every loss's report seeds are resampled with replacement, the
  losses ranked by their resampled means, the ranks averaged over datasets; the 2.5% and 97.5%
  percentiles of B such mean ranks bound it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.results.files import (write_bytes_atomic, write_csv_atomic, write_json_atomic,
                                     write_text_atomic)
from lossbench.results.record import METRICS, read_metrics


# --------------------------------------------------------------------------------------------
# aggregate over datasets


def ranks(means: Mapping[str, float], higher_is_better: bool) -> dict[str, float]:
    """Rank 1 for the best mean; tied means share the average of their ranks."""
    sign = -1.0 if higher_is_better else 1.0
    ordered = sorted(means, key=lambda name: sign * means[name])
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and means[ordered[j + 1]] == means[ordered[i]]:
            j += 1
        for name in ordered[i:j + 1]:
            out[name] = (i + j) / 2 + 1  # positions i..j hold ranks i+1..j+1
        i = j + 1
    return out


def mean_ranks(table: Mapping[str, Mapping[str, Sequence[float]]], higher_is_better: bool
               ) -> dict[str, float]:
    """table[condition][loss] = test values over seeds -> each loss's rank averaged over the
    conditions (every loss must appear in every condition)."""
    per_condition = [ranks({loss: float(np.mean(v)) for loss, v in losses.items()},
                           higher_is_better) for losses in table.values()]
    names = list(next(iter(table.values())))
    return {name: float(np.mean([r[name] for r in per_condition])) for name in names}


def bootstrap_mean_rank_ci(table: Mapping[str, Mapping[str, Sequence[float]]],
                           higher_is_better: bool, reps: int = 2000, seed: int = 0,
                           confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Stratified bootstrap (percentile) CI of each loss's mean rank: each replicate resamples,
    within every condition and for every loss separately, its seeds with replacement."""
    rng = np.random.default_rng(seed)
    names = list(next(iter(table.values())))
    samples = {name: np.empty(reps) for name in names}
    conditions = [{loss: np.asarray(v, dtype=float) for loss, v in losses.items()}
                  for losses in table.values()]
    for b in range(reps):
        rank_sum = dict.fromkeys(names, 0.0)
        for losses in conditions:
            means = {loss: float(v[rng.integers(0, len(v), len(v))].mean())
                     for loss, v in losses.items()}
            for loss, r in ranks(means, higher_is_better).items():
                rank_sum[loss] += r
        for name in names:
            samples[name][b] = rank_sum[name] / len(conditions)
    tail = (1 - confidence) / 2 * 100
    return {name: (float(np.percentile(s, tail)), float(np.percentile(s, 100 - tail)))
            for name, s in samples.items()}


# --------------------------------------------------------------------------------------------
# gathering the study's records


def trial_records(settings: Any, study_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """records[dataset][loss]: trials (number, state, value, params), budget and chosen values."""
    from optuna.trial import TrialState

    from lossbench.experiment.study_settings import load_trials, search_space

    records: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset, _ in settings.strata():
        for loss in settings.losses:
            space = {p.key: p for p in search_space(loss, settings.search_spaces)}
            trials = load_trials(study_dir, dataset, loss)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            best = max(done, key=lambda t: (t.value, -t.number)) if done else None
            chosen = dict(best.params) if best else {}
            edges = [key for key, value in chosen.items()
                     if key in space and space[key].at_edge(value, settings.sampler)]
            # what the trials cost: equal trial counts can still hide unequal training
            runs = [read_metrics(p.parent) for p in (study_dir / "tune" / dataset / loss).glob(
                f"trial*/seed*/{METRICS}")]
            records.setdefault(dataset, {})[loss] = {
                "trials": len(trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials),
                "unfinished": sum(t.state not in (TrialState.COMPLETE, TrialState.FAIL)
                                  for t in trials),
                "runs_per_trial": len(settings.tune_seeds()),
                "epochs": sum(int(m.get("epochs_run") or 0) for m in runs),
                "train_s": sum(float(m.get("wall_time_s") or 0.0) for m in runs),
                "monitor": next((m["monitor"] for m in runs if m.get("monitor")), None),
                "chosen_trial": best.number if best else None,
                "chosen": chosen,
                "validation": abs(best.value) if best else None,
                "at_edge": edges,
                "space": {k: {"low": p.low, "high": p.high, "log": p.log, "grid": p.grid}
                          for k, p in space.items()},
                "history": [{"number": t.number, "state": t.state.name, "value": t.value,
                             "params": dict(t.params)} for t in trials],
            }
    return records


def sensitivity_plot(dataset: str, per_loss: Mapping[str, Mapping[str, Any]],
                     key: str = "optimizer.lr") -> bytes:
    """One panel per loss: each completed trial's validation score against `key` (log x)."""
    import io

    from matplotlib.figure import Figure

    names = list(per_loss)
    fig = Figure(figsize=(3.2 * len(names), 3.4))
    first = None
    for i, loss in enumerate(names):
        # one y scale for every loss: the panels compare how flat each loss's optimum is
        ax = fig.add_subplot(1, len(names), i + 1, sharey=first)
        first = first or ax
        points = [(t["params"][key], abs(t["value"])) for t in per_loss[loss]["history"]
                  if t["state"] == "COMPLETE" and key in t["params"]]
        if points:
            ax.scatter(*zip(*points), s=18, color="tab:blue", label="trial")
        chosen = per_loss[loss]["chosen"]
        if key in chosen and per_loss[loss]["validation"] is not None:
            ax.scatter([chosen[key]], [per_loss[loss]["validation"]], s=70, marker="*",
                       color="tab:red", label="chosen")
        space = per_loss[loss]["space"].get(key)
        if space:
            ax.set_xlim(space["low"], space["high"])
            if space["log"]:
                ax.set_xscale("log")
        ax.set_title(loss)
        ax.set_xlabel(key)
        if i == 0:
            ax.set_ylabel("validation\n(mean over tuning seeds)")  # fits the short axes
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{dataset}: sensitivity to {key}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(settings: Any, study_dir: Path) -> Path:
    """study.md, study.json, sensitivity_<dataset>.png and the comparison's files."""
    from lossbench.results.comparison.blocks import DEFAULT_IGNORE, build_blocks
    from lossbench.results.comparison import tables
    from lossbench.results.comparison.records import find_runs

    records = trial_records(settings, study_dir)
    lines = ["# Study", "",
             f"Losses {', '.join(settings.losses)} on {', '.join(settings.datasets)}; "
             f"{settings.trials} trials per loss and dataset ({settings.sampler} sampler), each "
             f"trial {len(settings.tune_seeds())} runs (tuning seeds "
             f"{', '.join(map(str, settings.tune_seeds()))}); the chosen settings rerun on seeds "
             f"{', '.join(map(str, settings.report_seeds()))}, the only runs compared. Run "
             f"overrides: `{' '.join(settings.train) or 'none'}`.", ""]
    warnings = []
    for dataset, per_loss in records.items():
        monitor = next((r["monitor"] for r in per_loss.values() if r["monitor"]), "validation")
        lines += [f"## Budget and chosen settings: {dataset}", "",
                  "| loss | trials | failed | runs per trial | epochs | train s | chosen trial | "
                  f"{monitor} | chosen values |", "|---|---|---|---|---|---|---|---|---|"]
        for loss, rec in per_loss.items():
            values = ", ".join(f"{k}={_fmt(v)}" + (" (edge)" if k in rec["at_edge"] else "")
                               for k, v in rec["chosen"].items()) or "–"
            number = "–" if rec["chosen_trial"] is None else rec["chosen_trial"] + 1
            validation = "–" if rec["validation"] is None else f"{rec['validation']:.4f}"
            lines.append(f"| {loss} | {rec['trials']} | {rec['failed']} | "
                         f"{rec['runs_per_trial']} | {rec['epochs']} | {rec['train_s']:.0f} | "
                         f"{number} | {validation} | {values} |")
            warnings += [f"{dataset} {loss}: {k}={_fmt(rec['chosen'][k])} lies at the edge of "
                         f"its search space {_space_text(rec['space'][k], settings.sampler)}; "
                         "widen it in a search space of your own (search_spaces=<folder>)"
                         for k in rec["at_edge"]]
        budgets = {rec["trials"] for rec in per_loss.values()}
        if len(budgets) > 1:
            warnings.append(f"{dataset}: unequal budgets {sorted(budgets)} (an unfinished study)")
        png = f"sensitivity_{dataset}.png"
        write_bytes_atomic(study_dir / png, sensitivity_plot(dataset, per_loss))
        lines += ["", f"![sensitivity]({png})", ""]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in warnings] + [""]

    blocks, failed, aggregate = [], [], {}
    for stratum, _ in settings.strata():
        report_dir = study_dir / "report" / stratum
        if not (report_dir.is_dir() and any(report_dir.rglob(METRICS))):
            continue
        runs = find_runs([report_dir])
        failed += [r for r in runs if r.status != "completed"]
        # one block per stratum: two conditions of one dataset are never averaged together;
        # the test metrics of the epoch each run selected on validation, all pairs compared
        for block in build_blocks(runs, settings.metric, None, settings.alpha, ["loss"],
                                  list(DEFAULT_IGNORE), at="best"):
            block.dataset = stratum
            blocks.append(block)
    if blocks or failed:
        notes = tables.Notes(alpha=settings.alpha, at="best", baseline=None, mde=None)
        text = tables.to_markdown(blocks, failed, notes)
        lines += ["## Comparison on the report seeds", ""]
        lines += [ln.replace("## ", "### ", 1) if ln.startswith("## ") else ln
                  for ln in text.splitlines()[2:]]
        if blocks:
            write_csv_atomic(study_dir / "comparison.csv", tables.csv_rows(blocks, "best"))
        aggregate = aggregate_section(blocks, settings, lines)
    write_json_atomic(study_dir / "study.json", {
        "settings": {k: v for k, v in vars(settings).items() if k != "seeds"}
        | {"seeds": vars(settings.seeds)},
        "tune_seeds": settings.tune_seeds(), "report_seeds": settings.report_seeds(),
        "losses": records, "warnings": warnings, "aggregate": aggregate,
        "failed_report_runs": [str(r.path) for r in failed]})
    write_text_atomic(study_dir / "study.md", "\n".join(lines) + "\n")
    for warning in warnings:
        print(f"study: warning: {warning}", flush=True)
    return study_dir / "study.md"


def _space_text(space: Mapping[str, Any], sampler: str) -> str:
    if sampler == "grid":
        return "grid " + json.dumps(space["grid"])
    return f"[{space['low']:g}, {space['high']:g}]" + (" (log)" if space["log"] else "")


def aggregate_section(blocks: Sequence[Any], settings: Any, lines: list[str]) -> dict[str, Any]:
    """Mean rank over datasets with its stratified bootstrap CI, and the per-dataset table."""
    if len(blocks) < 2:
        return {}
    metric = blocks[0].metric
    higher = blocks[0].mode == "max"
    table: dict[str, dict[str, list[float]]] = {}
    for block in blocks:
        if block.metric != metric:
            continue
        table[block.dataset] = {str(row.runs[0].value("loss")): row.stats[metric].values
                                for row in block.rows if row.stats[metric].n}
    common = set.intersection(*(set(t) for t in table.values())) if table else set()
    table = {c: {loss: v for loss, v in t.items() if loss in common} for c, t in table.items()}
    if len(table) < 2 or not common:
        return {}
    avg = mean_ranks(table, higher)
    ci = bootstrap_mean_rank_ci(table, higher, reps=settings.bootstrap, seed=settings.sampler_seed)
    conditions = list(table)
    lines += ["", f"## Across {len(conditions)} datasets: mean rank by test {metric}", "",
              f"Rank 1 is best within a dataset; the CI is a stratified bootstrap "
              f"({settings.bootstrap} resamples of each loss's report seeds within each dataset).",
              "", "| loss | mean rank | 95% CI | " + " | ".join(conditions) + " |",
              "|---|---|---|" + "---|" * len(conditions)]
    for loss in sorted(avg, key=avg.get):
        cells = [f"{np.mean(table[c][loss]):.4f}" for c in conditions]
        lines.append(f"| {loss} | {avg[loss]:.2f} | [{ci[loss][0]:.2f}, {ci[loss][1]:.2f}] | "
                     + " | ".join(cells) + " |")
    return {"metric": metric, "conditions": conditions,
            "mean_rank": avg, "ci95": {k: list(v) for k, v in ci.items()},
            "per_condition": {c: {loss: float(np.mean(v)) for loss, v in t.items()}
                              for c, t in table.items()}}

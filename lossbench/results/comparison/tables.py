"""What `compare` prints and writes: the terminal table, comparison.csv/.md and JSON (the
LaTeX table: latex.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lossbench.results import stats
from lossbench.results.comparison.blocks import score_kinds
from lossbench.results.comparison.families import Comparison, Family
from lossbench.results.comparison.records import Run
from lossbench.results.comparison.rows import (Block, Row, corruption_text, fmt_value,
                                               has_corruption)
from lossbench.results.stats import Stat


@dataclass
class Notes:
    """The options a reader needs to read the numbers."""
    alpha: float
    at: str
    baseline: str | None
    mde: float | None
    confidence: float = 0.95


def _num(value: float | None, digits: int = 4, sign: bool = False) -> str:
    """value at `digits` decimals, "–" for none; a value that rounds to zero prints as 0, never
    as "-0.000" (a difference of nothing has no direction)."""
    if value is None or math.isnan(value):
        return "–"
    value = round(value, digits) + 0.0  # -0.0 + 0.0 is +0.0
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def mean_std(stat: Stat, digits: int = 4) -> str:
    if stat.n == 0:
        return "–"
    if stat.n == 1:
        return _num(stat.mean, digits)
    return f"{_num(stat.mean, digits)} ± {_num(stat.std, digits)}"


def ci_text(stat: Stat, digits: int = 4) -> str:
    return "–" if stat.n < 2 else f"[{_num(stat.ci_low, digits)}, {_num(stat.ci_high, digits)}]"


def selection_labels(row: Row) -> str:
    """The validation labels that picked the row's epoch: clean (privileged), noisy, or the
    dataset's own where no noise was injected."""
    if row.privileged:
        return "clean (privileged)"
    return "noisy" if row.corruption.get("noise_kind") not in (None, "none") else "given"


def improvement_text(c: Comparison, digits: int = 2) -> str:
    i = c.improvement
    if math.isnan(i.p):
        return "–"
    return f"{i.p:.{digits}f} [{i.ci_low:.{digits}f}, {i.ci_high:.{digits}f}]"


def diff_text(c: Comparison, digits: int = 4) -> str:
    ci = "" if math.isnan(c.diff_low) else \
        f" [{_num(c.diff_low, digits)}, {_num(c.diff_high, digits)}]"
    return f"{_num(c.diff, digits, sign=True)}{ci}"


def extras(block: Block) -> dict[str, bool]:
    """Optional columns, shown only where some row has something to show."""
    return {"corruption": has_corruption(block),
            "memorised": any(not math.isnan(r.memorised) for r in block.rows),
            "warnings": any(r.warnings for r in block.rows),
            "selection": any(r.privileged for r in block.rows),
            "lost": any(r.lost for r in block.rows),
            "mde": any(not math.isnan(r.reference.mde) for r in block.rows if r.reference),
            "n_needed": any(r.reference and r.reference.n_needed for r in block.rows)}


def reference_name(block: Block, notes: Notes) -> str:
    return f"vs {notes.baseline}" if notes.baseline else "vs top"


def table_header(block: Block, notes: Notes, compact: bool = False) -> list[str]:
    """compact (the terminal): the 95% CI of the sort metric only."""
    show = extras(block)
    header = [""] + block.columns + (["corruption"] if show["corruption"] else [])
    for m in block.metrics:
        header += [f"{m} mean ± std"] + (
            [f"{m} 95% CI"] if not compact or m == block.metric else [])
    ref = reference_name(block, notes)
    header += [f"{ref}: test", f"Δ {block.metric} [95% CI]", "p (Holm)", "P(better) [95% CI]"]
    if show["mde"]:
        header.append("detectable Δ")
    if show["n_needed"]:
        header.append(f"n for Δ={notes.mde:g}")
    if show["memorised"]:
        header.append(f"memorised ({notes.at})")
    header += ["n"] + (["lost"] if show["lost"] else []) + ["best epoch", "train s"]
    if show["warnings"]:
        header.append("warnings")
    if show["selection"]:
        header.append("selection")
    return header


def table_cells(block: Block, row: Row, notes: Notes, digits: int = 4, compact: bool = False
                ) -> list[str]:
    show = extras(block)
    cells = [row.mark] + [fmt_value(row.labels.get(c)) for c in block.columns]
    if show["corruption"]:
        cells.append(corruption_text(row, compact))
    for m in block.metrics:
        cells += [mean_std(row.stats[m], digits)] + (
            [ci_text(row.stats[m], digits)] if not compact or m == block.metric else [])
    c = row.reference
    if c is None:
        cells += ["", "", "", ""]
    else:
        cells += [c.test, diff_text(c, digits), _num(c.p_holm, 3), improvement_text(c)]
    if show["mde"]:
        cells.append(_num(c.mde, digits) if c else "")
    if show["n_needed"]:
        cells.append(str(c.n_needed) if c and c.n_needed else "")
    if show["memorised"]:
        cells.append(_num(row.memorised, 3))
    cells.append(str(len(row.runs)))
    if show["lost"]:
        cells.append(str(len(row.lost)))
    cells += [_num(row.best_epoch, 1), _num(row.train_time_s, 1)]
    if show["warnings"]:
        cells.append(("⚠ " + row.warning_text()) if row.warnings else "")
    if show["selection"]:
        cells.append("clean labels (privileged)" if row.privileged
                     else f"{selection_labels(row)} labels")
    return cells


def footnotes(blocks: Sequence[Block], notes: Notes) -> list[str]:
    """What the marks and columns mean, the tests used, and what n can and cannot show."""
    at = ("the epoch selected on validation (not the oracle maximum on test)"
          if notes.at == "best" else "the last epoch of the training budget")
    lines = [f"Test metrics at {at}. Mean ± sample std over seeds; 95% CI from Student's t, "
             "clipped to the metric's range."]
    tests = sorted({t for b in blocks for t in b.tests})
    if tests:
        used = " and ".join({"paired t": "paired t-test (runs paired by seed: same split, "
                             "noise, initial weights and batch order; 95% CI of Δ: Student's "
                             "t of the paired differences, the test's own interval)",
                             "Welch": "Welch's t-test (unpaired; 95% CI of Δ: Welch's t)"}[t]
                            for t in tests)
        family = (f"the k − 1 tests against {notes.baseline}" if notes.baseline
                  else "all pairs")
        lines.append(f"Tests: {used}; p adjusted by Holm over {family} of each family "
                     f"(dataset × condition × metric), α = {notes.alpha:g}. "
                     "*not separated*: no significant difference at this n, which is not a tie. "
                     "Δ = row − reference; a failed or diverged seed counts as a loss.")
        lines.append("P(better): share of seeds where the row beats the reference (paired) or "
                     "Mann–Whitney share over all pairs (unpaired), ties ½; exact "
                     "Clopper–Pearson interval.")
        need = stats.smallest_n_to_show_improvement(notes.confidence)
        small = sorted({c.improvement.n for b in blocks for f in b.families
                        for c in f.comparisons if c.improvement.n < need})
        if small:
            n = small[-1]
            bound = ((1 - notes.confidence) / 2) ** (1 / n)
            lines.append(f"n = {', '.join(map(str, small))} is too small to show P(better) > "
                         f"0.5 at all: even {n} of {n} gives a lower bound of {bound:.3f}; "
                         f"{need} seeds can.")
        if any(not math.isnan(c.mde) for b in blocks for f in b.families for c in f.comparisons):
            lines.append("Detectable Δ: the true difference found with power 0.8 at this n and "
                         "the family's α / m (noncentral t), from the spread of the runs; not "
                         "shown below 3 pairs" + (f"; n for Δ={notes.mde:g}: seeds needed for "
                                                  "that difference" if notes.mde else "") + ".")
    for block in blocks:
        kinds = score_kinds([run for row in block.rows for run in row.runs])
        if len(kinds) > 1:
            lines.append(f"{block.dataset}: nll, brier and ece of kNN vote shares "
                         f"({', '.join(kinds['knn_votes'])}) are not comparable with those of "
                         f"model probabilities ({', '.join(kinds['model'])}).")
    if any(r.privileged for b in blocks for r in b.rows):
        lines.append("Selection on clean validation labels uses privileged information a "
                     "real noisy dataset does not have.")
    if any(r.warnings for b in blocks for r in b.rows):
        lines.append("⚠: runs whose report carries a warning (e.g. accuracy near chance or the "
                     "majority-class rate).")
    return lines


def rate_table(block: Block, digits: int = 4) -> tuple[list[str], list[list[str]]]:
    """loss × rate: the metric's mean ± std for each rate of a sweep over noise or imbalance."""
    key = block.rate_key
    rates = sorted({row.labels.get(key) for row in block.rows}, key=lambda v: float(v or 0))
    lines: dict[str, dict[Any, Row]] = {}
    for row in block.rows:
        name = ", ".join(f"{fmt_value(v)}" for k, v in row.labels.items() if k != key)
        lines.setdefault(name, {})[row.labels.get(key)] = row
    header = [", ".join(k for k in block.columns if k != key) or "configuration"] + [
        f"{key.rsplit('.', 1)[-1]} {fmt_value(r)}" for r in rates]
    body = [[name] + [mean_std(by_rate[r].stats[block.metric], digits) if r in by_rate else "–"
                      for r in rates] for name, by_rate in lines.items()]
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
                    for cells in body]


def to_markdown(blocks: Sequence[Block], failed: Sequence[Run], notes: Notes) -> str:
    lines = ["# Comparison", ""]
    for block in blocks:
        lines += [f"## {block.title}", ""]
        body = []
        for row in block.rows:
            cells = table_cells(block, row, notes)
            if row.mark == "best":
                cells[0] = "**best**"
            body.append(cells)
        lines += _md_table(table_header(block, notes), body) + [""]
        if block.rate_key:
            lines += [f"Test {block.metric} (mean ± std) against {block.rate_key}:", ""]
            lines += _md_table(*rate_table(block)) + [""]
    lines += footnotes(blocks, notes) if blocks else []
    if failed:
        lines += ["", "## Failed or unfinished runs (not averaged)", ""]
        lines += [f"- `{run.path}`: {run.status}" + (f": {run.error}" if run.error else "")
                  for run in failed]
    return "\n".join(lines) + "\n"


def csv_rows(blocks: Sequence[Block], at: str) -> list[dict[str, Any]]:
    columns = []
    for block in blocks:
        columns += [c for c in block.columns if c not in columns]
    rows = []
    for block in blocks:
        for row in block.rows:
            out: dict[str, Any] = {"dataset": block.dataset, "task": block.task}
            out.update({c: fmt_value(row.labels[c] if c in row.labels else row.runs[0].value(c))
                        for c in columns})
            out.update(n_runs=len(row.runs), n_lost=len(row.lost), at=at)
            for m in block.metrics:
                s = row.stats[m]
                out.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_ci95_low": s.ci_low,
                            f"{m}_ci95_high": s.ci_high})
            c = row.corruption
            if c.get("pooled"):  # no one kind or rate: every corruption the row pools
                c = {"noise_kind": "pooled", "noise_rate": corruption_text(row),
                     "noise_realised": float("nan"), "imbalance_kind": "pooled"}
            out.update(noise_kind=c.get("noise_kind"), noise_rate=c.get("noise_rate"),
                       noise_realised_rate=c.get("noise_realised"),
                       imbalance_kind=c.get("imbalance_kind"),
                       imbalance_ratio=c.get("imbalance_ratio"), memorised=row.memorised,
                       warnings=row.warning_text(),
                       selection=selection_labels(row),
                       best_epoch_mean=row.best_epoch, train_time_s_mean=row.train_time_s,
                       sort_metric=block.metric, mark=row.mark)
            out.update(comparison_fields(row.reference))
            out["runs"] = " ".join(str(r.path) for r in row.runs)
            rows.append(out)
    return rows


# Which interval of Δ each test comes with (the CSV's and JSON's `diff_ci`)
DIFF_INTERVALS = {"paired t": "t of the paired differences", "Welch": "Welch t"}


def comparison_fields(c: Comparison | None) -> dict[str, Any]:
    nan = float("nan")
    if c is None:
        return dict(reference="", test="", n_compared="", diff=nan, diff_ci95_low=nan,
                    diff_ci95_high=nan, diff_ci="", p_value=nan, p_holm=nan, p_better=nan,
                    p_better_ci95_low=nan, p_better_ci95_high=nan, detectable_diff="",
                    n_needed="")
    i = c.improvement
    return dict(reference=c.b.label, test=c.test, n_compared=c.n, diff=c.diff,
                diff_ci95_low=c.diff_low, diff_ci95_high=c.diff_high,
                diff_ci=DIFF_INTERVALS[c.test], p_value=c.p,
                p_holm=c.p_holm, p_better=i.p, p_better_ci95_low=i.ci_low,
                p_better_ci95_high=i.ci_high,
                detectable_diff="" if math.isnan(c.mde) else c.mde,
                n_needed="" if c.n_needed is None else c.n_needed)


def family_json(family: Family) -> dict[str, Any]:
    return {"condition": {k: v for k, v in family.condition.items()},
            "alpha_adjusted": family.alpha_adjusted,
            "comparisons": [{"a": c.a.label, "b": c.b.label, **comparison_fields(c)}
                            for c in family.comparisons]}


def to_json(blocks: Sequence[Block], failed: Sequence[Run], at: str) -> str:
    return json.dumps({"configurations": csv_rows(blocks, at),
                       "families": [{"dataset": b.dataset, "metric": b.metric, **family_json(f)}
                                    for b in blocks for f in b.families],
                       "failed": [{"run": str(r.path), "status": r.status, "error": r.error}
                                  for r in failed]}, indent=2, default=str) + "\n"


def key_header(block: Block, notes: Notes) -> list[str]:
    """The terminal's table: what answers "which loss is best here?", in reading order."""
    return [*block.columns, "n", f"{block.metric} [95% CI]",
            f"Δ {reference_name(block, notes)} [95% CI]", "verdict"]


def key_cells(block: Block, row: Row, digits: int = 3) -> list[str]:
    stat = row.stats[block.metric]
    mean = _num(stat.mean, digits) if stat.n else "–"
    if stat.n >= 2:
        mean += f" {ci_text(stat, digits)}"
    lost = f" ({len(row.lost)} lost)" if row.lost else ""
    diff = diff_text(row.reference, digits) if row.reference else ""
    verdict = row.mark + (" ⚠" if row.warnings else "")
    return [*(fmt_value(row.labels.get(c)) for c in block.columns), f"{len(row.runs)}{lost}",
            mean, diff, verdict]


def print_table(blocks: Sequence[Block], failed: Sequence[Run], notes: Notes, wide: bool = False,
                console: Any = None) -> None:
    """Each block as a table for the terminal it has: the key columns (key_header), numbers
    never cut or broken (labels and verdicts wrap at spaces when the terminal is narrow), the
    title as a line of its own so that it wraps at the terminal's width, not the table's. `wide`:
    every column of comparison.md instead."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from lossbench.console import output_console, shown_path

    console = console or output_console()
    for block in blocks:
        console.print(block.title, style="bold", highlight=False, markup=False)
        if wide:
            header = table_header(block, notes, compact=True)
            body = [table_cells(block, row, notes, digits=3, compact=True) for row in block.rows]
            text_columns = len(block.columns) + 1
        else:
            header = key_header(block, notes)
            body = [key_cells(block, row) for row in block.rows]
            text_columns = len(block.columns)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                      collapse_padding=True)
        for i, name in enumerate(header):
            text = i < text_columns or (not wide and i == len(header) - 1)  # labels, verdict
            if wide:  # as wide as it is: cut where the terminal is narrower
                table.add_column(name, justify="left" if text else "right", no_wrap=i == 0)
            else:
                table.add_column(name, justify="left" if text else "right", no_wrap=not text,
                                 overflow="fold")
        for row, cells in zip(block.rows, body):
            style = "bold green" if row.mark in ("best", "better") else None
            table.add_row(*map(Text, cells), style=style)  # Text: a "[" is not markup
        console.print(table)
        if block.rate_key:
            header, body = rate_table(block, digits=3)
            console.print(f"test {block.metric} against {block.rate_key}", style="bold",
                          highlight=False, markup=False)
            rates = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
            for name in header:
                rates.add_column(name, overflow="fold")
            for cells in body:
                rates.add_row(*map(Text, cells))
            console.print(rates)
    for line in footnotes(blocks, notes) if blocks else []:
        console.print(line, highlight=False, markup=False)
    if blocks and not wide:
        console.print("More columns (std, p (Holm), P(better), best epoch, train time, ...): "
                      "--wide, or comparison.md.", highlight=False, markup=False)
    if failed:
        word = "run" if len(failed) == 1 else "runs"
        console.print(f"{len(failed)} failed or unfinished {word} (not averaged)", style="bold",
                      highlight=False, markup=False)
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        table.add_column("run", overflow="fold")
        table.add_column("status")
        table.add_column("error", overflow="fold")
        for run in failed:
            table.add_row(*map(Text, (str(shown_path(run.path)), run.status, run.error or "")))
        console.print(table)

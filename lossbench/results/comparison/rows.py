"""Configurations: runs grouped by every config key that can change a result, one row each,
with the mean ± std of each test metric and what their run records say about corruption,
memorisation, warnings and model selection; and what a family's tests leave on them
(`Comparison`, `Family`: computed in families.py, which reads the rows)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lossbench.results.comparison.records import Run
from lossbench.results.stats import Improvement, Stat

# Columns added for runs trained on an imbalanced or re-sampled split
IMBALANCE_COLUMNS = ("balanced_accuracy", "worst_class_recall", "few_shot_accuracy",
                     "prior_accuracy")


def ignored(key: str, ignore: Sequence[str]) -> bool:
    """`logger` ignores logger._target_ and every other key under it."""
    return any(key == k or key.startswith(k + ".") for k in ignore)


@dataclass
class Row:
    key: tuple
    runs: list[Run]  # completed
    lost: list[Run] = field(default_factory=list)  # failed or diverged: a loss for their seed
    labels: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    best_epoch: float = float("nan")
    train_time_s: float = float("nan")
    corruption: dict[str, Any] = field(default_factory=dict)
    memorised: float = float("nan")
    warnings: dict[str, int] = field(default_factory=dict)  # kind -> runs that carry it
    privileged: bool = False
    mark: str = ""
    reference: Comparison | None = None  # against the baseline, or the family's top row

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.labels.items()) or "all runs"

    def warning_text(self) -> str:
        n = len(self.runs)
        return ", ".join(f"{kind} ({count}/{n})" for kind, count in self.warnings.items())


@dataclass
class Block:
    dataset: str
    task: str
    metric: str
    mode: str
    metrics: list[str]
    columns: list[str]
    rows: list[Row]
    families: list[Family] = field(default_factory=list)
    treatment: str | None = None
    rate_key: str | None = None

    @property
    def title(self) -> str:
        better = "lower" if self.mode == "min" else "higher"
        runs = sum(len(r.runs) for r in self.rows)
        return (f"{self.dataset} ({self.task}): {len(self.rows)} configurations, {runs} runs; "
                f"sorted by test {self.metric} ({better} is better)")

    @property
    def tests(self) -> list[str]:
        return sorted({c.test for f in self.families for c in f.comparisons})


@dataclass
class Comparison:
    """Row a against row b on one metric; differences are a − b in the metric's own sign."""
    a: Row
    b: Row
    test: str  # "paired t" or "Welch"
    n: str     # "5" pairs, or "3 + 4" runs
    n_min: int
    diff: float
    diff_low: float
    diff_high: float
    p: float
    improvement: Improvement  # P(a better than b)
    sd: float  # of the paired differences, or pooled
    p_holm: float = float("nan")
    mde: float = float("nan")
    n_needed: int | None = None

    def separated(self, alpha: float) -> bool:
        return self.p_holm < alpha  # NaN (too few runs) compares False


@dataclass
class Family:
    """The rows one Holm adjustment covers: one dataset × condition × metric."""
    condition: dict[str, Any]
    rows: list[Row]
    comparisons: list[Comparison]
    alpha_adjusted: float  # α / m: Holm's first, strictest step, for the sample-size figures
    reference: Row | None


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def varying(keys: Iterable[str], rows: Sequence[Row]) -> list[str]:
    out = []
    for key in keys:
        values = {json.dumps(r.runs[0].value(key), sort_keys=True, default=str) for r in rows}
        if len(values) > 1:
            out.append(key)
    return out


def config_key(run: Run, group_by: Sequence[str] | None, ignore: Sequence[str]) -> tuple:
    if group_by:
        return tuple(json.dumps(run.value(k), default=str) for k in group_by)
    return tuple(sorted((k, json.dumps(v, default=str)) for k, v in run.config.items()
                        if not ignored(k, ignore)))


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None, ignore: Sequence[str]
               ) -> list[Row]:
    """Configurations: runs equal in every config key but the ignored ones (or in `group_by`)."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        key = config_key(run, group_by, ignore)
        rows.setdefault(key, Row(key=key, runs=[])).runs.append(run)
    return list(rows.values())


def label_rows(rows: list[Row], group_by: Sequence[str] | None, ignore: Sequence[str]
               ) -> list[str]:
    """The columns that tell the configurations apart: the overrides that vary (config-group
    choices shown by name), then, if rows still look alike, the config keys that vary."""
    if group_by:
        columns = list(group_by)
    else:
        keys: list[str] = []
        for row in rows:
            for run in row.runs:
                keys += [k for k in run.overrides if k not in keys and not ignored(k, ignore)]
        columns = varying(keys, rows)
        shown = {tuple(fmt_value(r.runs[0].value(c)) for c in columns) for r in rows}
        if len(shown) < len(rows):
            config_keys = sorted({k for r in rows for k in r.runs[0].config
                                  if not ignored(k, ignore) and not k.endswith("_target_")})
            columns += [k for k in varying(config_keys, rows) if k not in columns]
    for row in rows:
        row.labels = {c: row.runs[0].value(c) for c in columns}
    return columns


def mean_of(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


def describe_row(row: Row, at: str) -> None:
    """The corruption, memorisation, warnings and selection the row's runs record."""
    first = row.runs[0]
    noise = first.section("data").get("noise") or {}
    imbalance = first.section("data").get("imbalance") or {}
    realised = []
    for run in row.runs:
        rate = (run.section("data").get("noise") or {}).get("realised_rate")
        if isinstance(rate, dict):
            rate = rate.get("train_and_val", rate.get("train"))
        if isinstance(rate, (int, float)):
            realised.append(float(rate))
    kind = noise.get("kind", first.value("dataset.noise.kind"))
    imbalance_kind = imbalance.get("kind", first.value("dataset.imbalance.kind"))
    row.corruption = {
        "noise_kind": kind or "none",
        "noise_rate": noise.get("rate", first.value("dataset.noise.rate")) if kind not in (
            None, "none") else 0.0,
        "noise_realised": mean_of(realised),
        "imbalance_kind": imbalance_kind or "none",
        "imbalance_ratio": imbalance.get("ratio", first.value("dataset.imbalance.ratio"))
        if imbalance_kind not in (None, "none") else None,
    }
    memorised = [float(m[at]["memorised"]) for r in row.runs
                 if isinstance(m := r.metrics.get("memorisation"), dict)
                 and isinstance(m.get(at), dict)
                 and isinstance(m[at].get("memorised"), (int, float))]
    row.memorised = mean_of(memorised)
    row.warnings = {}
    for run in row.runs:
        for kind in dict.fromkeys(run.warnings()):
            row.warnings[kind] = row.warnings.get(kind, 0) + 1
    row.privileged = any(r.section("selection").get("labels") == "clean"
                         or r.section("selection").get("privileged") is True for r in row.runs)


def block_values(row: Row, metric: str, at: str) -> list[float]:
    return [v for r in row.runs if (v := r.test_metric(metric, at)) is not None]

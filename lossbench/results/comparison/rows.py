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

from lossbench.console import counted
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
        return (f"{self.dataset} ({self.task}): {counted(len(self.rows), 'configuration')}, "
                f"{counted(runs, 'run')}; "
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
                # `loss._target_=my_pkg.MyLoss` replaced the loss option: the loss column
                # (its choice names the class) tells it apart
                named = [k.removesuffix("._target_") if k.removesuffix("._target_") in
                         run.choices else k for k in run.overrides]
                keys += [k for k in named if k not in keys and not ignored(k, ignore)]
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
    realised = []
    for run in row.runs:
        rate = (run.section("data").get("noise") or {}).get("realised_rate")
        if isinstance(rate, dict):
            rate = rate.get("train_and_val", rate.get("train"))
        if isinstance(rate, (int, float)):
            realised.append(float(rate))
    pooled = [run_corruption(run) for run in row.runs]
    kind, rate, imbalance_kind, ratio = pooled[0]
    row.corruption = {"noise_kind": kind, "noise_rate": rate, "noise_realised": mean_of(realised),
                      "imbalance_kind": imbalance_kind, "imbalance_ratio": ratio}
    # a row that pools corruptions (`--group-by loss` over a rate sweep) names them all
    if any(c != pooled[0] for c in pooled):
        row.corruption["pooled"] = sorted(set(pooled), key=lambda c: json.dumps(c, default=str))
    memorised = [float(m[at]["memorised"]) for r in row.runs
                 if isinstance(m := r.metrics.get("memorisation"), dict)
                 and isinstance(m.get(at), dict)
                 and isinstance(m[at].get("memorised"), (int, float))]
    row.memorised = mean_of(memorised)
    row.warnings = {}
    for run in row.runs:
        for kind in dict.fromkeys(run.warnings(at)):
            row.warnings[kind] = row.warnings.get(kind, 0) + 1
    row.privileged = any(r.section("selection").get("labels") == "clean"
                         or r.section("selection").get("privileged") is True for r in row.runs)


def run_corruption(run: Run) -> tuple[str, Any, str, Any]:
    """(noise kind, rate, imbalance kind, ratio) as the run's record or config gives them."""
    noise = run.section("data").get("noise") or {}
    imbalance = run.section("data").get("imbalance") or {}
    kind = noise.get("kind", run.value("dataset.noise.kind")) or "none"
    rate = noise.get("rate", run.value("dataset.noise.rate")) if kind != "none" else 0.0
    imbalance_kind = imbalance.get("kind", run.value("dataset.imbalance.kind")) or "none"
    ratio = imbalance.get("ratio", run.value("dataset.imbalance.ratio")) if (
        imbalance_kind != "none") else None
    return (str(kind), rate, str(imbalance_kind), ratio)


def has_corruption(block: Block) -> bool:
    return any(r.corruption.get("noise_kind") != "none" or r.corruption.get("imbalance_kind")
               != "none" or r.corruption.get("pooled") for r in block.rows)


def corruption_text(row: Row, compact: bool = False) -> str:
    """"symmetric 0.4 (realised 0.394); longtail ratio 10"; compact drops the word realised.
    A row pooling runs of several corruptions names each, without a realised rate:
    "pooled: symmetric 0 / symmetric 0.2 / symmetric 0.4"."""
    c = row.corruption
    if c.get("pooled"):
        return "pooled: " + " / ".join(pooled_text(p) for p in c["pooled"])
    parts = []
    if c.get("noise_kind") != "none":
        realised = c.get("noise_realised")
        word = "" if compact else "realised "
        real = "" if realised is None or math.isnan(realised) else f" ({word}{realised:.3f})"
        parts.append(f"{c['noise_kind']} {fmt_value(c.get('noise_rate'))}{real}")
    if c.get("imbalance_kind") != "none":
        parts.append(f"{c['imbalance_kind']} ratio {fmt_value(c.get('imbalance_ratio'))}")
    return "; ".join(parts) or "clean"


def pooled_text(corruption: tuple) -> str:
    noise_kind, rate, imbalance_kind, ratio = corruption
    parts = [f"{noise_kind} {fmt_value(rate)}"] if noise_kind != "none" else []
    if imbalance_kind != "none":
        parts.append(f"{imbalance_kind} ratio {fmt_value(ratio)}")
    return "; ".join(parts) or "clean"


def block_values(row: Row, metric: str, at: str) -> list[float]:
    return [v for r in row.runs if (v := r.test_metric(metric, at)) is not None]

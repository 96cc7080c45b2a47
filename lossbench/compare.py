"""`lossbench compare PATH [PATH ...]`: one table that answers "which loss is best here?".

It reads run directories only (metrics.json, .hydra/config.yaml, .hydra/overrides.yaml,
history.csv) and never imports the training code or torch. Runs that differ only in `seed` form
one configuration; for each configuration and test metric over its n seeds:

    mean  x̄ = Σ xᵢ / n,   std  s = sqrt(Σ (xᵢ − x̄)² / (n − 1)),
    95% CI  x̄ ± t₀.₉₇₅,ₙ₋₁ · s / √n    (Student's t; none for n = 1).

The best configuration (by `--metric`) is marked, and every other configuration whose runs are
not significantly different from the best's by Welch's t-test (p ≥ α) is marked tied. Runs of
different datasets or tasks are never averaged together: each (dataset, task) is its own block.
Failed or unfinished runs are listed, never averaged.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
from lossbench.rundir import read_json, write_bytes_atomic, write_csv_atomic, write_text_atomic

HEADLINE = {"classification": ("accuracy", "macro_f1"), "regression": ("rmse", "r2")}
# Test metrics where lower is better; any other metric is taken as higher-is-better.
LOWER_IS_BETTER = {"rmse", "mse", "mae", "loss", "nll", "brier", "ece", "error"}
# Keys that never distinguish configurations: the seed, and where a run lives.
DEFAULT_IGNORE = ("seed", "run_dir")
FORMATS = ("table", "markdown", "csv", "json")


def task_kind(task: str | None) -> str:
    return "regression" if task == "regression" else "classification"


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.rsplit("_", 1)[-1] in LOWER_IS_BETTER


# --------------------------------------------------------------------------------------------
# reading run directories


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become JSON text so values stay hashable."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(tree, list):
        return {prefix[:-1]: json.dumps(tree)}
    return {prefix[:-1]: tree}


def parse_overrides(lines: Iterable[str]) -> dict[str, str]:
    """Hydra's override strings (`loss=ce`, `+loss.q=0.7`, `~x`) as {key: value}."""
    parsed = {}
    for line in lines:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if sep and not key.startswith("hydra.") and not key.startswith("hydra/"):
            parsed[key] = value
    return parsed


@dataclass
class Run:
    path: Path
    status: str
    metrics: dict[str, Any]
    config: dict[str, Any]  # flattened, resolved where possible
    choices: dict[str, str]
    overrides: dict[str, str]
    error: str = ""

    @property
    def task(self) -> str | None:
        return self.metrics.get("task")

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset") or self.choices.get("dataset") or "?")

    def value(self, key: str) -> Any:
        """What this run used for `key`: a config-group choice (loss=gce), else a config value."""
        if key in self.choices:
            return self.choices[key]
        if key in self.config:
            return self.config[key]
        return self.overrides.get(key)

    def test_metric(self, name: str) -> float | None:
        value = (self.metrics.get("test") or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)


def _load_yaml(path: Path, resolve: bool = True) -> Any:
    from omegaconf import OmegaConf

    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    try:
        return OmegaConf.to_container(node, resolve=resolve)
    except Exception:  # e.g. ${hydra:...} or ${oc.env:...} outside the job that wrote it
        return OmegaConf.to_container(node, resolve=False)


def load_run(run_dir: Path) -> Run:
    try:
        metrics = read_json(run_dir / "metrics.json")
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        metrics = {"status": "unreadable", "error": f"metrics.json: {err}"}
    config = metrics.get("config")
    if not isinstance(config, dict):
        config = _load_yaml(run_dir / ".hydra" / "config.yaml") or {}
    overrides = _load_yaml(run_dir / ".hydra" / "overrides.yaml", resolve=False) or []
    choices = metrics.get("choices")
    if not isinstance(choices, dict):
        hydra_yaml = _load_yaml(run_dir / ".hydra" / "hydra.yaml", resolve=False) or {}
        choices = hydra_yaml.get("hydra", {}).get("runtime", {}).get("choices", {}) or {}
        choices = {k: v for k, v in choices.items() if not k.startswith("hydra") and v}
    return Run(path=run_dir, status=str(metrics.get("status", "unfinished")), metrics=metrics,
               config=flatten(config), choices={k: str(v) for k, v in choices.items()},
               overrides=parse_overrides(overrides), error=str(metrics.get("error", "")))


def find_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Every run directory (one holding metrics.json) at or under each path, each once."""
    seen: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist")
        if (path / "metrics.json").is_file():
            seen[path.resolve()] = None
            continue
        for found in sorted(path.rglob("metrics.json"), key=lambda p: _natural(p.parent)):
            seen[found.parent.resolve()] = None
    if not seen:
        raise UserError(f"no runs under {', '.join(map(str, paths))}: no metrics.json found "
                        "(pass run directories or a multirun folder)")
    return [load_run(p) for p in seen]


def _natural(path: Path) -> tuple:
    """Sort sweep/2 before sweep/10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts)


# --------------------------------------------------------------------------------------------
# statistics


@dataclass
class Stat:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    values: list[float]


def summarize(values: Sequence[float], confidence: float = 0.95) -> Stat:
    """Mean, sample std (n − 1) and the Student-t confidence interval of the mean."""
    from scipy import stats

    n = len(values)
    if n == 0:
        nan = float("nan")
        return Stat(0, nan, nan, nan, nan, [])
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(1, mean, float("nan"), float("nan"), float("nan"), list(values))
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half, list(values))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); NaN below two runs a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    if max(a) == min(a) and max(b) == min(b):  # no spread at all: equal means or certainly not
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


# --------------------------------------------------------------------------------------------
# grouping into configurations


@dataclass
class Row:
    key: tuple
    runs: list[Run]
    labels: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Stat] = field(default_factory=dict)
    best_epoch: float = float("nan")
    train_time_s: float = float("nan")
    mark: str = ""
    p_value: float = float("nan")

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in self.labels.items()) or "all runs"


@dataclass
class Block:
    dataset: str
    task: str
    metric: str
    mode: str
    metrics: list[str]
    columns: list[str]
    rows: list[Row]

    @property
    def title(self) -> str:
        better = "lower" if self.mode == "min" else "higher"
        runs = sum(len(r.runs) for r in self.rows)
        return (f"{self.dataset} ({self.task}): {len(self.rows)} configurations, {runs} runs; "
                f"sorted by test {self.metric} ({better} is better)")


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def _varying(keys: Iterable[str], rows: Sequence[Row]) -> list[str]:
    out = []
    for key in keys:
        values = {json.dumps(r.runs[0].value(key), sort_keys=True, default=str) for r in rows}
        if len(values) > 1:
            out.append(key)
    return out


def group_runs(runs: Sequence[Run], group_by: Sequence[str] | None, ignore: Sequence[str]
               ) -> list[Row]:
    """Configurations: runs equal in every config key but the ignored ones (or in `group_by`)."""
    rows: dict[tuple, Row] = {}
    for run in runs:
        if group_by:
            key = tuple(json.dumps(run.value(k), default=str) for k in group_by)
        else:
            key = tuple(sorted((k, json.dumps(v, default=str)) for k, v in run.config.items()
                               if k not in ignore))
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
                keys += [k for k in run.overrides if k not in keys and k not in ignore]
        columns = _varying(keys, rows)
        shown = {tuple(_fmt_value(r.runs[0].value(c)) for c in columns) for r in rows}
        if len(shown) < len(rows):
            config_keys = sorted({k for r in rows for k in r.runs[0].config
                                  if k not in ignore and not k.endswith("_target_")})
            columns += [k for k in _varying(config_keys, rows) if k not in columns]
    for row in rows:
        row.labels = {c: row.runs[0].value(c) for c in columns}
    return columns


def build_blocks(runs: Sequence[Run], metric: str | None, mode: str | None, alpha: float,
                 group_by: Sequence[str] | None, ignore: Sequence[str]) -> list[Block]:
    completed = [r for r in runs if r.status == "completed"]
    by_block: dict[tuple[str, str], list[Run]] = {}
    for run in completed:
        by_block.setdefault((run.dataset, str(run.task)), []).append(run)
    def has(members: list[Run], name: str) -> bool:
        return any(r.test_metric(name) is not None for r in members)

    if metric and by_block and not any(has(m, metric) for m in by_block.values()):
        available = sorted({k for r in completed for k, v in (r.metrics.get("test") or {}).items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise UserError(f"--metric {metric}: no run has a test metric of that name; "
                        f"choose from: {', '.join(available)}")
    blocks = []
    for (dataset, task), members in by_block.items():
        headline = list(HEADLINE[task_kind(task)])
        # a metric one task lacks (accuracy of a regression) leaves that block on its headline
        chosen = metric if metric and has(members, metric) else headline[0]
        block_mode = mode if chosen == metric and mode else (
            "min" if lower_is_better(chosen) else "max")
        metrics = [chosen] + [m for m in headline if m != chosen]
        # keys that follow the seed (a dataset's `random_state: ${seed}`) vary with it
        keys = {k for r in members for k in r.config}
        ignored = list(ignore) + sorted(
            k for k in keys if all(r.config.get(k) == r.config.get("seed") for r in members))
        rows = group_runs(members, group_by, ignored)
        columns = label_rows(rows, group_by, ignored)
        for row in rows:
            for m in metrics:
                row.stats[m] = summarize([v for r in row.runs
                                          if (v := r.test_metric(m)) is not None])
            epochs = [float(r.metrics["best_epoch"]) for r in row.runs
                      if isinstance(r.metrics.get("best_epoch"), (int, float))]
            times = [float(r.metrics["wall_time_s"]) for r in row.runs
                     if isinstance(r.metrics.get("wall_time_s"), (int, float))]
            row.best_epoch = math.fsum(epochs) / len(epochs) if epochs else float("nan")
            row.train_time_s = math.fsum(times) / len(times) if times else float("nan")
        sign = 1.0 if block_mode == "min" else -1.0
        rows.sort(key=lambda r: (math.isnan(r.stats[chosen].mean),
                                 sign * r.stats[chosen].mean if r.stats[chosen].n else 0.0))
        best = rows[0]
        if best.stats[chosen].n:
            best.mark = "best"
            for row in rows[1:]:
                row.p_value = welch_p(best.stats[chosen].values, row.stats[chosen].values)
                if row.p_value >= alpha:  # NaN (too few runs to test) compares False
                    row.mark = "tied"
        blocks.append(Block(dataset, task, chosen, block_mode, metrics, columns, rows))
    return blocks


# --------------------------------------------------------------------------------------------
# output: table, CSV, Markdown, JSON, plots


def _num(value: float, digits: int = 4) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def mean_std(stat: Stat, digits: int = 4) -> str:
    if stat.n == 0:
        return "–"
    if stat.n == 1:
        return _num(stat.mean, digits)
    return f"{_num(stat.mean, digits)} ± {_num(stat.std, digits)}"


def ci_text(stat: Stat, digits: int = 4) -> str:
    return "–" if stat.n < 2 else f"[{_num(stat.ci_low, digits)}, {_num(stat.ci_high, digits)}]"


def mark_text(row: Row) -> str:
    if row.mark == "tied":
        return f"tied (p={row.p_value:.2f})"
    return row.mark


def csv_rows(blocks: Sequence[Block]) -> list[dict[str, Any]]:
    columns = []
    for block in blocks:
        columns += [c for c in block.columns if c not in columns]
    rows = []
    for block in blocks:
        for row in block.rows:
            out: dict[str, Any] = {"dataset": block.dataset, "task": block.task}
            out.update({c: _fmt_value(row.labels[c] if c in row.labels else row.runs[0].value(c))
                        for c in columns})
            out["n_runs"] = len(row.runs)
            for m in block.metrics:
                s = row.stats[m]
                out.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_ci95_low": s.ci_low,
                            f"{m}_ci95_high": s.ci_high})
            out.update(best_epoch_mean=row.best_epoch, train_time_s_mean=row.train_time_s,
                       sort_metric=block.metric, mark=row.mark, p_value_vs_best=row.p_value,
                       runs=" ".join(str(r.path) for r in row.runs))
            rows.append(out)
    return rows


def table_cells(block: Block, row: Row, digits: int = 4) -> list[str]:
    cells = [mark_text(row)] + [_fmt_value(row.labels.get(c)) for c in block.columns]
    for m in block.metrics:
        cells += [mean_std(row.stats[m], digits), ci_text(row.stats[m], digits)]
    return cells + [str(len(row.runs)), _num(row.best_epoch, 1), _num(row.train_time_s, 1)]


def table_header(block: Block) -> list[str]:
    header = [""] + block.columns
    for m in block.metrics:
        header += [f"{m} mean ± std", f"{m} 95% CI"]
    return header + ["n", "best epoch", "train s"]


def to_markdown(blocks: Sequence[Block], failed: Sequence[Run], alpha: float) -> str:
    lines = ["# Comparison", ""]
    for block in blocks:
        lines += [f"## {block.title}", ""]
        header = table_header(block)
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for row in block.rows:
            cells = [c.replace("|", "\\|") for c in table_cells(block, row)]
            if row.mark == "best":
                cells[0] = "**best**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(f"Mean ± sample std over seeds; 95% CI from Student's t. *tied*: not "
                 f"significantly different from the best (Welch's t-test, α={alpha:g}).")
    if failed:
        lines += ["", "## Failed or unfinished runs (not averaged)", ""]
        lines += [f"- `{run.path}`: {run.status}" + (f": {run.error}" if run.error else "")
                  for run in failed]
    return "\n".join(lines) + "\n"


def to_json(blocks: Sequence[Block], failed: Sequence[Run]) -> str:
    return json.dumps({"configurations": csv_rows(blocks),
                       "failed": [{"run": str(r.path), "status": r.status, "error": r.error}
                                  for r in failed]}, indent=2) + "\n"


def print_table(blocks: Sequence[Block], failed: Sequence[Run], alpha: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for block in blocks:
        table = Table(title=block.title)
        for i, name in enumerate(table_header(block)):
            table.add_column(name, justify="left" if i <= len(block.columns) else "right")
        for row in block.rows:
            style = "bold green" if row.mark == "best" else ("green" if row.mark else None)
            table.add_row(*table_cells(block, row, digits=3), style=style)
        console.print(table)
    console.print(f"mean ± sample std over seeds; 95% CI from Student's t; tied: not "
                  f"significantly different from the best (Welch's t-test, α={alpha:g})",
                  highlight=False)
    if failed:
        table = Table(title=f"{len(failed)} failed or unfinished runs (not averaged)")
        table.add_column("run")
        table.add_column("status")
        table.add_column("error")
        for run in failed:
            table.add_row(str(run.path), run.status, run.error)
        console.print(table)


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def comparison_plot(blocks: Sequence[Block]) -> bytes:
    """The sort metric per configuration: mean with its 95% CI as error bars."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no display needed

    height = max(2.5, 0.45 * max(len(b.rows) for b in blocks) + 1.2)
    fig = Figure(figsize=(7, height * len(blocks)))
    for i, block in enumerate(blocks):
        ax = fig.add_subplot(len(blocks), 1, i + 1)
        ys = list(range(len(block.rows)))[::-1]  # best on top
        for y, row in zip(ys, block.rows):
            s = row.stats[block.metric]
            err = 0.0 if s.n < 2 else s.ci_high - s.mean
            color = "tab:green" if row.mark == "best" else (
                "tab:olive" if row.mark == "tied" else "tab:blue")
            ax.errorbar([s.mean], [y], xerr=[[err], [err]], fmt="o", color=color, capsize=4)
        ax.set_yticks(ys)
        ax.set_yticklabels([row.label for row in block.rows])
        ax.set_xlabel(f"test {block.metric} (mean, 95% CI over seeds)")
        ax.set_title(f"{block.dataset} ({block.task})")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png_bytes(fig)


def read_history(run_dir: Path) -> list[dict[str, float]]:
    try:
        with open(run_dir / "history.csv", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []
    out = []
    for row in rows:
        parsed = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value)
            except (TypeError, ValueError):
                continue
        out.append(parsed)
    return out


def curve_column(block: Block, histories: Sequence[list[dict[str, float]]], runs: Sequence[Run]
                 ) -> str | None:
    """val_<metric> when history.csv has it, else the monitored metric of the runs."""
    wanted = [f"val_{block.metric}", str(runs[0].metrics.get("monitor", ""))]
    for name in wanted:
        if any(name in row for hist in histories for row in hist):
            return name
    return None


def curves_plot(blocks: Sequence[Block]) -> bytes:
    """Validation metric per epoch, mean over seeds, one line per configuration."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6 * len(blocks)))
    for i, block in enumerate(blocks):
        ax = fig.add_subplot(len(blocks), 1, i + 1)
        column = None
        for row in block.rows:
            histories = [read_history(r.path) for r in row.runs]
            column = column or curve_column(block, histories, row.runs)
            if column is None:
                continue
            per_epoch: dict[float, list[float]] = {}
            for hist in histories:
                for entry in hist:
                    if column in entry and "epoch" in entry and not math.isnan(entry[column]):
                        per_epoch.setdefault(entry["epoch"], []).append(entry[column])
            epochs = sorted(per_epoch)
            means = [math.fsum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
            ax.plot(epochs, means, marker="o", markersize=3, label=row.label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{column or 'validation metric'} (mean over seeds)")
        ax.set_title(f"{block.dataset} ({block.task})")
        ax.grid(alpha=0.3)
        if block.rows:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return _png_bytes(fig)


# --------------------------------------------------------------------------------------------
# the command


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
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the Welch t-test for ties (default 0.05)")
    parser.add_argument("--group-by", metavar="KEYS",
                        help="comma-separated keys that define a configuration, e.g. "
                             "loss,dataset.noise.rate (default: every key but seed)")
    parser.add_argument("--ignore", metavar="KEYS", default="",
                        help="comma-separated config keys that, like seed, do not tell "
                             "configurations apart (e.g. trainer.device)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="what to print: a rich table (default), markdown, csv or json")
    parser.add_argument("--out", metavar="DIR",
                        help="where to write comparison.csv/.md/.png and curves.png "
                             "(default: the first PATH)")
    parser.add_argument("--no-plots", action="store_true", help="skip the two PNG plots")
    from lossbench.tuning import add_tune_arguments

    add_tune_arguments(parser)  # --tune KEYS --tune-seeds SEEDS: choose per loss, report the rest
    args = parser.parse_args(argv)
    if not 0.0 < args.alpha < 1.0:
        raise UserError(f"--alpha {args.alpha:g} must lie in (0, 1)")
    return args


def _keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def compare_command(argv: list[str]) -> int:
    """`lossbench compare PATH [PATH ...] [--metric M] [--group-by K,..] [--format F]`."""
    args = parse_args(argv)
    runs = find_runs(args.paths)
    from lossbench.tuning import tuned_runs

    runs = tuned_runs(runs, args)  # unchanged without --tune
    group_by = _keys(args.group_by) or None
    ignore = list(DEFAULT_IGNORE) + _keys(args.ignore)
    failed = [r for r in runs if r.status != "completed"]
    blocks = build_blocks(runs, args.metric, args.mode, args.alpha, group_by, ignore)
    out_dir = Path(args.out) if args.out else Path(args.paths[0])
    if out_dir.is_file():
        raise UserError(f"--out {out_dir} is a file, not a directory")

    written = []
    if blocks:
        write_csv_atomic(out_dir / "comparison.csv", csv_rows(blocks))
        written.append(out_dir / "comparison.csv")
    write_text_atomic(out_dir / "comparison.md", to_markdown(blocks, failed, args.alpha))
    written.append(out_dir / "comparison.md")
    if blocks and not args.no_plots:
        write_bytes_atomic(out_dir / "comparison.png", comparison_plot(blocks))
        write_bytes_atomic(out_dir / "curves.png", curves_plot(blocks))
        written += [out_dir / "comparison.png", out_dir / "curves.png"]

    if args.format == "table":
        print_table(blocks, failed, args.alpha)
        if not blocks:
            print(f"no completed runs to compare ({len(failed)} failed or unfinished)")
        print("wrote " + " ".join(str(p) for p in written))
    elif args.format == "markdown":
        sys.stdout.write(to_markdown(blocks, failed, args.alpha))
    elif args.format == "csv":
        sys.stdout.write((out_dir / "comparison.csv").read_text() if blocks else "")
    else:
        sys.stdout.write(to_json(blocks, failed))
    return 0

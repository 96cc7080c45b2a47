"""The plots `compare` writes: comparison.png (the metric per configuration with its CI),
curves.png (validation metric per epoch) and rates.png (the metric against the noise rate or
imbalance ratio of a sweep, one line per loss, with CIs)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from lossbench.results.comparison.records import Run
from lossbench.results.comparison.rows import Block, fmt_value
from lossbench.results.record import read_history
from lossbench.results.stats import clip, metric_range


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _plot_label(label: str, width: int = 38) -> str:
    """A configuration's label on lines of at most `width` characters, broken between its
    overrides: a mixed folder's labels run to 150 characters."""
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_long_words=False,
                                    break_on_hyphens=False)) or label


def _row_colour(index: int) -> str:
    """The colour of a block's index-th configuration, the same in comparison.png and
    curves.png (matplotlib's default cycle)."""
    return f"C{index % 10}"


# marker of a row by its mark: the best (or better than the baseline), and those not separated
MARKERS = (("best", "*", "best, or better than the baseline"),
           ("not separated", "D", "not separated from the reference"))


def _marker(mark: str) -> str:
    if mark in ("best", "better"):
        return "*"
    return "D" if mark.startswith("not separated") else "o"


def comparison_plot(blocks: Sequence[Block]) -> bytes:
    """The sort metric per configuration: mean with its 95% CI (inside the metric's range);
    each configuration in its curves.png colour, its mark by marker."""
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no display needed
    from matplotlib.lines import Line2D

    lines = max(sum(_plot_label(row.label).count("\n") + 1 for row in b.rows) for b in blocks)
    height = max(2.5, 0.35 * lines + 1.6)
    fig = Figure(figsize=(8, height * len(blocks)), layout="constrained")
    for i, block in enumerate(blocks):
        ax = fig.add_subplot(len(blocks), 1, i + 1)
        ys = list(range(len(block.rows)))[::-1]  # best on top
        lo, hi = metric_range(block.metric)
        for index, (y, row) in enumerate(zip(ys, block.rows)):
            s = row.stats[block.metric]
            low, high = (s.mean, s.mean) if s.n < 2 else clip(s.ci_low, s.ci_high, (lo, hi))
            marker = _marker(row.mark)
            ax.errorbar([s.mean], [y], xerr=[[s.mean - low], [high - s.mean]], fmt=marker,
                        color=_row_colour(index), capsize=4, markersize=11 if marker == "*" else 7)
        if math.isfinite(lo) and math.isfinite(hi):  # no axis past the metric's range
            left, right = ax.get_xlim()
            pad = 0.02 * (hi - lo)
            ax.set_xlim(max(left, lo - pad), min(right, hi + pad))
        ax.set_yticks(ys)
        ax.set_yticklabels([_plot_label(row.label) for row in block.rows], fontsize="small")
        ax.set_xlabel(f"test {block.metric} (mean, 95% CI over seeds)")
        ax.set_title(f"{block.dataset} ({block.task})")
        ax.grid(axis="x", alpha=0.3)
        shown = {_marker(row.mark) for row in block.rows}
        handles = [Line2D([], [], color="grey", linestyle="none", marker=marker, label=label)
                   for _, marker, label in MARKERS if marker in shown]
        if handles:
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      fontsize="small", frameon=False)
    return _png_bytes(fig)


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
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.6 * len(blocks)), layout="constrained")
    for i, block in enumerate(blocks):
        ax = fig.add_subplot(len(blocks), 1, i + 1)
        column = None
        for index, row in enumerate(block.rows):
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
            ax.plot(epochs, means, marker="o", markersize=3, label=_plot_label(row.label),
                    color=_row_colour(index))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{column or 'validation metric'} (mean over seeds)")
        ax.set_title(f"{block.dataset} ({block.task})")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        if block.rows:  # beside the axes, never over the curves
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      frameon=False)
    return _png_bytes(fig)


def rates_plot(blocks: Sequence[Block], at: str = "best") -> bytes:
    """Test metric against the swept rate (noise rate or imbalance ratio), one line per loss
    (and other varying keys), mean with its 95% CI as error bars. Lines are ordered (and
    coloured) by name, so a loss keeps its colour in the plots of `--at best` and `--at last`."""
    from matplotlib.figure import Figure

    swept = [b for b in blocks if b.rate_key]
    fig = Figure(figsize=(7, 4 * len(swept)))
    for i, block in enumerate(swept):
        ax = fig.add_subplot(len(swept), 1, i + 1)
        key = block.rate_key
        lines: dict[str, list[tuple[float, Any]]] = {}
        for row in block.rows:
            name = ", ".join(fmt_value(v) for k, v in row.labels.items() if k != key)
            lines.setdefault(name, []).append((float(row.labels.get(key) or 0), row))
        rates = [x for points in lines.values() for x, _ in points]
        span = (max(rates) - min(rates)) or 1.0
        for j, (name, points) in enumerate(sorted(lines.items())):
            points.sort(key=lambda p: p[0])
            # lines side by side by 1.5% of the axis, so that overlapping intervals stay apart
            dodge = (j - (len(lines) - 1) / 2) * 0.015 * span
            xs = [x + dodge for x, _ in points]
            stats = [row.stats[block.metric] for _, row in points]
            means = [s.mean for s in stats]
            low = [0.0 if s.n < 2 else s.mean - s.ci_low for s in stats]
            high = [0.0 if s.n < 2 else s.ci_high - s.mean for s in stats]
            ax.errorbar(xs, means, yerr=[low, high], marker="o", capsize=3, label=name)
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {block.metric} (mean, 95% CI over seeds)")
        what = " ".join(key.split(".")[-2:])  # "noise rate", "imbalance ratio"
        epoch = "last epoch" if at == "last" else "selected epoch"
        ax.set_title(f"{block.dataset} ({block.task}): test {block.metric} at the {epoch} "
                     f"against {what}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _png_bytes(fig)

"""The plots `compare` writes: comparison.png (the metric per configuration with its CI),
curves.png (validation metric per epoch) and rates.png (the metric against the noise rate or
imbalance ratio of a sweep, one line per loss, with CIs)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from lossbench.results.comparison.records import Run
from lossbench.results.plots import MAX_MARKED_EPOCHS
from lossbench.results.comparison.rows import Block, Row, fmt_value
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


# A row's marker by its role against its family's reference: (role, marker, legend text); the
# reference's legend text names it (`reference_text`).
MARKERS = (("reference", "s", ""),
           ("better", "*", "better than the reference"),
           ("not separated", "D", "not separated from the reference"),
           ("worse", "v", "worse than the reference"),
           ("untested", "o", "not tested (no reference in its family)"))


def role(mark: str) -> str:
    """A row's mark (families.mark_rows) read as its role in comparison.png."""
    if mark in ("baseline", "best", "top"):
        return "reference"
    if mark.startswith("not separated"):
        return "not separated"
    if mark.startswith("better"):
        return "better"
    return "worse" if mark.startswith("worse") else "untested"


def _marker(mark: str) -> str:
    return dict((r, m) for r, m, _ in MARKERS)[role(mark)]


def reference_text(block: Block, rows: Sequence[Row]) -> str:
    """What the reference marker stands for: the baseline named with --baseline, or the
    highest (lowest) mean of its family."""
    baseline = next((r for r in rows if r.mark == "baseline"), None)
    if baseline is not None:
        value = fmt_value(baseline.labels.get(block.treatment)) if block.treatment else ""
        return f"baseline {block.treatment}={value} (the reference)" if value else "baseline"
    return f"{'lowest' if block.mode == 'min' else 'highest'} mean (the reference)"


def setting_text(rows: Sequence[Row]) -> str:
    """The corruption its rows share ("symmetric 0.2 (0.200)", "clean"), as compare's table
    shows it; "mixed" when they differ."""
    from lossbench.results.comparison.tables import corruption_text

    texts = sorted({corruption_text(row, compact=True) for row in rows if row.corruption})
    return texts[0] if len(texts) == 1 else ("mixed" if texts else "")


def panels(block: Block) -> list[tuple[dict[str, Any], list[Row]]]:
    """(condition, rows) of each panel: one per family of the block (the conditions of a rate
    sweep side by side, each against its own reference), or one for the whole block."""
    families = [f for f in block.families if f.rows]
    if len(families) > 1:
        return [(f.condition, f.rows) for f in families]
    return [({}, block.rows)]


def _x_limits(block: Block) -> tuple[float, float]:
    """Limits that hold every mean and interval with room for a marker on either side, never
    more than 5% of its range past the metric's range (accuracy: no axis beyond 1.05)."""
    lo, hi = metric_range(block.metric)
    ends = []
    for row in block.rows:
        s = row.stats[block.metric]
        low, high = (s.mean, s.mean) if s.n < 2 else clip(s.ci_low, s.ci_high, (lo, hi))
        ends += [v for v in (low, s.mean, high) if math.isfinite(v)]
    if not ends:
        return (0.0, 1.0)
    left, right = min(ends), max(ends)
    span = right - left or max(abs(right), 1.0) * 0.02
    margin = 0.06 * span  # a marker is at most ~2.5% of the axis width
    if math.isfinite(lo) and math.isfinite(hi):
        past = 0.05 * (hi - lo)
        return max(left - margin, lo - past), min(right + margin, hi + past)
    return left - margin, right + margin


def comparison_plot(blocks: Sequence[Block], at: str = "best") -> bytes:
    return _png_bytes(comparison_figure(blocks, at))


def comparison_figure(blocks: Sequence[Block], at: str = "best"):
    """The sort metric per configuration: mean with its 95% CI (inside the metric's range);
    each configuration in its curves.png colour, its role against the reference by marker.
    A block of several families (a rate sweep) gets one panel per family on a shared axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # Agg canvas; no pyplot, no display needed
    from matplotlib.lines import Line2D

    layout = [(block, condition, rows) for block in blocks for condition, rows in panels(block)]
    heights = [0.3 * sum(_plot_label(_panel_label(row, condition)).count("\n") + 1
                         for row in rows) + 0.9 for _, condition, rows in layout]
    fig = Figure(figsize=(8, sum(heights) + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(layout), 1, height_ratios=heights)
    epoch = "the last epoch" if at == "last" else "the selected epoch"
    legend: dict[tuple[int, str], Line2D] = {}
    first_axes: dict[int, Any] = {}
    for i, (block, condition, rows) in enumerate(layout):
        ax = fig.add_subplot(grid[i], sharex=first_axes.get(id(block)))
        first = id(block) not in first_axes
        first_axes.setdefault(id(block), ax)
        ys = list(range(len(rows)))[::-1]  # best on top
        lo, hi = metric_range(block.metric)
        colour = {id(row): index for index, row in enumerate(block.rows)}  # as in curves.png
        for y, row in zip(ys, rows):
            s = row.stats[block.metric]
            low, high = (s.mean, s.mean) if s.n < 2 else clip(s.ci_low, s.ci_high, (lo, hi))
            marker = _marker(row.mark)
            ax.errorbar([s.mean], [y], xerr=[[s.mean - low], [high - s.mean]], fmt=marker,
                        color=_row_colour(colour[id(row)]), capsize=4,
                        markersize=11 if marker == "*" else 7,
                        markeredgecolor="black" if marker == "s" else None)
        ax.set_xlim(*_x_limits(block))
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_yticks(ys)
        ax.set_yticklabels([_plot_label(_panel_label(row, condition)) for row in rows],
                           fontsize="small")
        ax.grid(axis="x", alpha=0.3)
        against = reference_text(block, rows).removesuffix(" (the reference)")
        where = ", ".join(f"{k}={fmt_value(v)}" for k, v in condition.items())
        detail = "; ".join(part for part in (where, f"data: {setting_text(rows)}",
                                             f"against {against}") if part)
        head = f"{block.dataset} ({block.task}): test {block.metric} at {epoch}\n" if first else ""
        ax.set_title(head + detail, fontsize="medium")
        last = i + 1 == len(layout) or layout[i + 1][0] is not block
        if last:
            ax.set_xlabel(f"test {block.metric} (mean, 95% CI over seeds)")
        else:
            ax.tick_params(labelbottom=False)
        for order, (role_name, marker, text) in enumerate(MARKERS):
            if role_name in {role(row.mark) for row in rows}:
                text = text or reference_text(block, rows)
                legend.setdefault((order, text), Line2D(
                    [], [], color="grey", linestyle="none", marker=marker,
                    markeredgecolor="black" if marker == "s" else "grey", label=text))
    if legend:  # below the panels: the axes keep the figure's whole width
        fig.legend(handles=[legend[key] for key in sorted(legend)], loc="outside lower center",
                   ncol=min(3, len(legend)), fontsize="small", frameon=False)
    return fig


def _panel_label(row: Row, condition: dict[str, Any]) -> str:
    """A row's label less the keys its panel's title already names."""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in row.labels.items()
                     if k not in condition) or row.label


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
            # points only where they can be told apart (a 400-epoch line is a line)
            ax.plot(epochs, means, marker="o" if len(epochs) <= MAX_MARKED_EPOCHS else None,
                    markersize=3, label=_plot_label(row.label), color=_row_colour(index))
        # injected noise flips validation labels too: say so unless the column is the clean one
        noisy = column is not None and not column.endswith("_clean") and any(
            row.corruption.get("noise_kind", "none") != "none"
            and float(row.corruption.get("noise_rate") or 0) > 0 for row in block.rows)
        ax.set_xlabel("epoch")
        labels = "on NOISY validation labels, " if noisy else ""
        ax.set_ylabel(_plot_label(f"{column or 'validation metric'} ({labels}mean over seeds)",
                                  32))
        ax.set_title(f"{block.dataset} ({block.task})" + (
            ": validation scored against the noisy labels the runs were given (the test split "
            "is clean)" if noisy else ""))
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

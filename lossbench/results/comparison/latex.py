"""comparison.tex: `compare --format latex`, one booktabs table per dataset for a paper."""

from __future__ import annotations

from collections.abc import Sequence

from lossbench.results.comparison.rows import Block, fmt_value
from lossbench.results.comparison.tables import Notes, corruption_text, extras, has_corruption
from lossbench.tasks import lower_is_better

LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                 "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                 "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(blocks: Sequence[Block], notes: Notes, digits: int = 3) -> str:
    """One booktabs table per dataset: mean ± std per metric, the best mean of each family in
    bold, the tests used in a footnote. Needs \\usepackage{booktabs} in the preamble."""
    out = ["% lossbench compare --format latex; needs \\usepackage{booktabs}"]
    for block in blocks:
        show_corruption = has_corruption(block)
        head = [latex_escape(c) for c in block.columns] + (
            ["corruption"] if show_corruption else []) + [latex_escape(m) for m in block.metrics]
        # --mde: the seeds each row needs to detect that difference, as comparison.md says
        show_n = bool(notes.mde) and extras(block)["n_needed"]
        if show_n:
            head.append(rf"n for $\Delta={notes.mde:g}$")
        best: dict[tuple[int, str], float] = {}  # (family, metric) -> best mean
        for i, family in enumerate(block.families):
            for m in block.metrics:
                means = [r.stats[m].mean for r in family.rows if r.stats[m].n]
                if means:
                    low = block.mode == "min" if m == block.metric else lower_is_better(m)
                    best[(i, m)] = min(means) if low else max(means)
        at = "selected (validation) epoch" if notes.at == "best" else "last epoch"
        lines = [r"\begin{table}[t]", r"\centering",
                 rf"\caption{{{latex_escape(block.dataset)}: test metrics at the {at}, "
                 rf"mean $\pm$ std over seeds.}}",
                 r"\begin{tabular}{" + "l" * (len(head) - len(block.metrics) - show_n)
                 + "r" * (len(block.metrics) + show_n) + "}", r"\toprule",
                 " & ".join(head) + r" \\",
                 r"\midrule"]
        for i, family in enumerate(block.families):
            if i:
                lines.append(r"\midrule")
            for row in family.rows:
                cells = [latex_escape(fmt_value(row.labels.get(c))) for c in block.columns]
                if show_corruption:
                    cells.append(latex_escape(corruption_text(row, compact=True)))
                for m in block.metrics:
                    s = row.stats[m]
                    if not s.n:
                        cells.append("--")
                        continue
                    mean = f"{s.mean:.{digits}f}"
                    if best.get((i, m)) == s.mean:
                        mean = rf"\textbf{{{mean}}}"
                    cells.append(mean if s.n < 2 else rf"{mean} $\pm$ {s.std:.{digits}f}")
                if show_n:
                    c = row.reference
                    cells.append(str(c.n_needed) if c and c.n_needed else "--")
                if row.warnings:
                    cells[0] += r"$^\dagger$"
                lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        tests = {"paired t": "paired $t$-test (runs paired by seed)",
                 "Welch": "Welch's $t$-test"}
        used = " and ".join(tests[t] for t in block.tests) or "no test (one configuration)"
        against = f"against {latex_escape(notes.baseline)}" if notes.baseline else "all pairs"
        sizes = sorted({len(r.runs) for r in block.rows})
        seeds = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}--{sizes[-1]}"
        foot = (rf"\par\smallskip{{\footnotesize Bold: best mean in its group. Test: {used}, "
                rf"{against}, Holm-adjusted, $\alpha={notes.alpha:g}$; n = {seeds} seeds.")
        if show_n:
            foot += (rf" n for $\Delta={notes.mde:g}$: seeds needed to detect that difference "
                     r"with power 0.8 at the family's $\alpha / m$.")
        if any(r.warnings for r in block.rows):
            foot += r" $^\dagger$: a run carries a warning (near chance or majority rate)."
        lines += [foot + "}", r"\end{table}", ""]
        out += lines
    return "\n".join(out) + "\n"

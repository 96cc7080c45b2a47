"""`lossbench plot-losses ce,gce,mae,sce --out anatomy.png`: the anatomy of the losses.

Each loss, and the size of its gradient, drawn against what it sees of one sample:

- classification: the probability p the model gives the labelled class. The K logits are
  z = (log p, log q, ..., log q) − their mean, q = (1 − p) / (K − 1), so softmax(z) puts p on
  the label and spreads the rest evenly (taking the mean off fixes the one freedom softmax
  leaves, for the losses that see logits directly: MSE on logits); one-logit (sigmoid-head) losses get z = log(p / (1 − p)) and target 1.
  The gradient is ‖∂ℓ/∂z‖₂, with respect to the logits: what reaches the network.
- regression: the residual r = ŷ − y (y = 0), the gradient |∂ℓ/∂ŷ|.

Values and gradients come from the loss modules themselves (built from conf/loss/<name>.yaml,
as `train` builds them) through autograd, so the picture is of the code, not of a formula.
Where p → 0 the model is sure the label is wrong, the case of a confidently mislabelled sample:
cross-entropy pushes hardest there, while bounded losses (MAE, GCE with large q, the reverse
cross-entropy in SCE) hardly push at all. That is why they resist label noise, and why they
learn slowly from samples the model gets wrong.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lossbench.errors import UserError
from lossbench.losses.base import hook
from lossbench.tasks import CLASSIFICATION as CLASSIFICATION_TASKS
from lossbench.tasks import KINDS

CLASSIFICATION, REGRESSION = KINDS  # one picture per kind of task
POINTS = 400
SCALES = ("auto", "linear", "log", "normalised")
# Curves whose sizes differ by this factor flatten the smaller ones into a band on one linear
# axis (nce_rce's value runs to ~90 beside cross-entropy's ~5): auto normalises each instead.
SCALE_RATIO = 10.0


@dataclass
class Curve:
    """One loss drawn: its label, x (p or r), the loss value and the gradient size per x."""

    label: str
    x: Any
    value: Any
    grad: Any


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lossbench plot-losses",
        description="Draw losses and the size of their gradients against the true-class "
                    "probability (classification) or the residual (regression), computed by "
                    "autograd from the loss modules. Hyperparameters as NAME.KEY=VALUE, e.g. "
                    "gce.q=0.3.")
    parser.add_argument("losses", metavar="LOSSES",
                        help="comma-separated loss names (lossbench losses lists them)")
    parser.add_argument("overrides", nargs="*", metavar="NAME.KEY=VALUE",
                        help="a hyperparameter of one of the losses, e.g. sce.beta=0.5")
    parser.add_argument("--out", default="anatomy.png", metavar="FILE",
                        help="the PNG to write (default: anatomy.png)")
    parser.add_argument("--classes", type=int, default=10, metavar="K",
                        help="number of classes for classification losses (default: 10)")
    parser.add_argument("--range", type=float, default=3.0, metavar="R", dest="residual_range",
                        help="regression: residuals from -R to R (default: 3)")
    parser.add_argument("--scale", choices=SCALES, default="auto",
                        help="y axes: linear, log, normalised (each curve divided by its "
                             "largest value) or auto: normalised where the curves' sizes "
                             f"differ by {SCALE_RATIO:g}x or more, else linear (default: auto)")
    return parser.parse_intermixed_args(argv)


def split_overrides(names: Sequence[str], overrides: Sequence[str]) -> dict[str, list[str]]:
    """{'gce': ['loss.q=0.3']} from ['gce.q=0.3']: Hydra overrides of each loss's config."""
    per_loss: dict[str, list[str]] = {name: [] for name in names}
    for item in overrides:
        key, eq, value = item.partition("=")
        name, dot, rest = key.partition(".")
        if not eq or not dot or not rest:
            raise UserError(f"{item}: give a hyperparameter as NAME.KEY=VALUE, e.g. gce.q=0.3")
        if name not in per_loss:
            raise UserError(f"{item}: {name} is not one of the losses drawn "
                            f"({', '.join(names)})")
        per_loss[name].append(f"loss.{rest}={value}")
    return per_loss


def build_losses(names: Sequence[str], overrides: dict[str, list[str]]) -> dict[str, Any]:
    """{name: loss module}, each composed from its config as `lossbench train loss=<name>`
    would, with its overrides; a typo or a bad value is a UserError."""
    from hydra import compose, initialize_config_module
    from hydra.utils import instantiate

    from lossbench.errors import config_mistake, instantiation_mistake
    from lossbench.config.catalogue import loss_tasks
    from lossbench.config.schema import register_schemas

    known = loss_tasks()
    register_schemas()
    modules = {}
    with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
        for name in names:
            if name not in known:
                import difflib

                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(f"no loss named {name}{hint}; lossbench losses lists them")
            try:
                cfg = compose(config_name="config", overrides=[f"loss={name}", *overrides[name]])
                modules[name] = instantiate(cfg.loss)
            except Exception as err:
                message = config_mistake(err) or instantiation_mistake(err)
                if message is None:
                    raise
                raise UserError(f"{name}: {' '.join(message.split())}") from None
    return modules


def task_of(modules: dict[str, Any]) -> str:
    """Regression when every loss fits it and some fit nothing else; classification when every
    loss fits a classification task; else the losses cannot share one picture."""
    tasks = {name: set(getattr(m, "tasks", ())) for name, m in modules.items()}
    if all(t & set(CLASSIFICATION_TASKS) for t in tasks.values()) and not any(
            t == {"regression"} for t in tasks.values()):
        return CLASSIFICATION
    if all("regression" in t for t in tasks.values()):
        return REGRESSION
    regression = sorted(n for n, t in tasks.items() if t == {"regression"})
    other = sorted(n for n, t in tasks.items() if "regression" not in t)
    raise UserError(f"one picture per task: {', '.join(regression)} "
                    f"{'is' if len(regression) == 1 else 'are'} for regression, "
                    f"{', '.join(other)} for classification")


def label_of(name: str, module: Any, overrides: Sequence[str]) -> str:
    shown = ", ".join(o.removeprefix("loss.") for o in overrides)
    return f"{name} ({shown})" if shown else name


def classification_curve(name: str, module: Any, k: int, label: str) -> Curve:
    """Value and ‖∂ℓ/∂z‖ of one loss over p ∈ (0, 1), one sample per p."""
    import torch

    head = hook(module, "head")
    if head == "embedding":
        raise UserError(f"{name} is a loss of embeddings (pairs of samples), not of one "
                        "sample's class probability: it has no such picture")
    hook(module, "setup")("multiclass", k)
    p = torch.linspace(1e-3, 1 - 1e-3, POINTS, dtype=torch.float64)
    if head == "sigmoid":  # its own probability is σ(z) of one logit, target 1
        z = torch.log(p / (1 - p)).clone().requires_grad_(True)  # (N,)
        target = torch.ones(POINTS, dtype=torch.long)
    else:
        rest = torch.log((1 - p) / (k - 1)).unsqueeze(1).expand(POINTS, k - 1)
        z = torch.cat([torch.log(p).unsqueeze(1), rest], dim=1)  # (N, K)
        z = (z - z.mean(dim=1, keepdim=True)).requires_grad_(True)
        target = torch.zeros(POINTS, dtype=torch.long)  # (N,): class 0 carries p
    return _curve(name, module, z, target, p, label)


def regression_curve(name: str, module: Any, r_max: float, label: str) -> Curve:
    import torch

    r = torch.linspace(-r_max, r_max, POINTS, dtype=torch.float64)
    pred = r.clone().requires_grad_(True)  # ŷ = r, y = 0: (N,)
    return _curve(name, module, pred, torch.zeros(POINTS, dtype=torch.float64), r, label)


def _curve(name: str, module: Any, inp: Any, target: Any, x: Any, label: str) -> Curve:
    """Per-sample values and gradient norms: with reduction 'none' each sample's loss depends
    on its own row only, so the gradient of their sum is every sample's own gradient."""
    import torch

    module = module.double()
    if hasattr(module, "reduction"):
        module.reduction = "none"
    try:
        values = module(inp, target)
    except Exception as err:
        raise UserError(f"{name} cannot be drawn for one sample at a time "
                        f"({type(err).__name__}: {err})") from None
    values = values.reshape(-1)
    if values.shape[0] != x.shape[0]:
        raise UserError(f"{name} returns one value per batch, not per sample: no picture")
    (grad,) = torch.autograd.grad(values.sum(), inp)
    size = grad.abs() if grad.dim() == 1 else grad.norm(dim=1)
    return Curve(label, x.numpy(), values.detach().numpy(), size.numpy())


def curve_size(values: Any) -> float:
    """How tall a curve stands: its 98th percentile of |value| (cross-entropy's tail to ~7 at
    p = 0.001 is a few points, not its size)."""
    import numpy as np

    finite = np.abs(values[np.isfinite(values)])
    return float(np.percentile(finite, 98)) if finite.size else 0.0


def pick_scale(series: Sequence[Any], scale: str = "auto") -> str:
    """The view of one panel: `scale` as asked, or for auto, normalised when the tallest curve
    stands SCALE_RATIO times above the shortest (curves that are zero throughout aside)."""
    if scale != "auto":
        return scale
    sizes = [size for size in map(curve_size, series) if size > 0]
    return "normalised" if sizes and max(sizes) >= SCALE_RATIO * min(sizes) else "linear"


def _draw_panel(ax, series: Sequence[Any], xs: Sequence[Any], styles, labels, view: str,
                name: str) -> None:
    """Curves of one panel in its view; the y label says which view it is."""
    import numpy as np

    for x, y, style, label in zip(xs, series, styles, labels):
        if view == "normalised":
            top = float(np.nanmax(np.abs(y))) if np.isfinite(y).any() else 0.0
            y = y / top if top > 0 else y
        ax.plot(x, y, label=label, **style)
    if view == "normalised":
        ax.set_ylabel(f"{name} / its largest value (each curve)")
    elif view == "log":
        ax.set_yscale("symlog", linthresh=1e-2)  # zeros (hinge past its margin) stay drawable
        ax.set_ylabel(f"{name} (log scale)")
    else:
        ax.set_ylabel(name)


def anatomy_figure(curves: Sequence[Curve], task: str, k: int, scale: str = "auto"):
    """Two panels on shared x: the loss (left) and the size of its gradient (right), each in a
    linear, log or per-curve normalised view (`pick_scale`)."""
    import numpy as np

    from lossbench.results.plots import _figure, wrap_title

    fig = _figure(11, 4.6)
    value_ax, grad_ax = fig.subplots(1, 2, sharex=True)
    styles = [{"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--", "lw": 2}
              for i in range(len(curves))]
    xs, labels = [c.x for c in curves], [c.label for c in curves]
    value_view = pick_scale([c.value for c in curves], scale)
    grad_view = pick_scale([c.grad for c in curves], scale)
    if task == CLASSIFICATION:
        xlabel = "p: probability the model gives the labelled class"
        grad_label = "‖∂ℓ/∂z‖"
        title = (f"Anatomy of the losses ({k} classes): where p → 0 the model is sure the "
                 "label is wrong (a confidently mislabelled sample)")
    else:
        xlabel = "residual r = ŷ − y"
        grad_label = "|∂ℓ/∂ŷ|"
        title = "Anatomy of the losses (regression): value and gradient against the residual"
    _draw_panel(value_ax, [c.value for c in curves], xs, styles, labels, value_view, "ℓ")
    _draw_panel(grad_ax, [c.grad for c in curves], xs, styles, labels, grad_view, grad_label)
    if task == CLASSIFICATION:
        # the band is named in the legend, where no curve can run over its name
        for ax in (value_ax, grad_ax):
            ax.axvspan(0, 0.1, color="tab:red", alpha=0.08, lw=0,
                       label="p < 0.1: confidently\nmislabelled" if ax is value_ax else None)
        value_ax.set_xlim(0, 1)
    if value_view == "linear":  # cross-entropy's value runs to ~7 at p = 0.001: clip the view
        top = float(np.nanpercentile(np.concatenate([c.value for c in curves]), 98))
        value_ax.set_ylim(bottom=min(0.0, float(np.nanmin([c.value.min() for c in curves]))),
                          top=top * 1.1 if top > 0 else None)
    if grad_view != "log":
        grad_ax.set_ylim(bottom=0)
    value_ax.set_title("loss ℓ")
    grad_ax.set_title("gradient size" + (" w.r.t. the logits" if task == CLASSIFICATION
                                         else ""))
    value_ax.set_xlabel(xlabel)
    grad_ax.set_xlabel(xlabel)
    for ax in (value_ax, grad_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(wrap_title(title, 11))
    fig.legend(*value_ax.get_legend_handles_labels(), loc="outside right center",
               fontsize="small", frameon=False)
    return fig


def plot_losses(names: Sequence[str], overrides: Sequence[str], out: str | Path, k: int = 10,
                r_max: float = 3.0, scale: str = "auto") -> tuple[Path, list[Curve], str]:
    """Draw `names` into `out`; returns (path, curves, task)."""
    if k < 2:
        raise UserError(f"--classes {k}: a classification needs at least 2 classes")
    if not r_max > 0:
        raise UserError(f"--range {r_max:g}: give a positive residual range")
    per_loss = split_overrides(names, overrides)
    modules = build_losses(names, per_loss)
    task = task_of(modules)
    curves = []
    for name, module in modules.items():
        label = label_of(name, module, per_loss[name])
        curves.append(classification_curve(name, module, k, label) if task == CLASSIFICATION
                      else regression_curve(name, module, r_max, label))
    from lossbench.results.plots import save_png

    return save_png(anatomy_figure(curves, task, k, scale), out), curves, task


def plot_losses_command(argv: list[str]) -> int:
    """`lossbench plot-losses LOSSES [NAME.KEY=VALUE ...] [--out FILE] [--classes K]
    [--scale auto|linear|log|normalised]`."""
    args = parse_args(argv)
    names = [n.strip() for n in args.losses.split(",") if n.strip()]
    if not names:
        raise UserError("name at least one loss, e.g. lossbench plot-losses ce,gce,mae,sce")
    if len(set(names)) != len(names):
        raise UserError(f"{args.losses}: each loss once (vary a hyperparameter in two runs)")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: plot-losses writes a PNG; name it *.png")
    path, _, task = plot_losses(names, args.overrides, out, args.classes, args.residual_range,
                                args.scale)
    print(f"wrote {path} ({task}: {', '.join(names)})")
    return 0

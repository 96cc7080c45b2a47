"""What a run leaves behind: the test reports of its weights, the report's lines, the metrics
dict, and the run record's files; and the record of a run that stopped early.

`write_record` is where a run writes history.csv, its weights and metrics.json, through the
run record (lossbench/results/record.py; a failed sweep job's record is written by sweep.py).
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.tree import Tree

from lossbench.console import shown_path
from lossbench.data import Splits
from lossbench.engine import distributed
from lossbench.engine.checkpoint import CHECKPOINT
from lossbench.engine.signals import resume_command
from lossbench.engine.predict import predict, robust_accuracy, score_source
from lossbench.errors import Diverged, Interrupted, stop_name
from lossbench.losses.base import hook, needs_class_counts
from lossbench.results import report as rep
from lossbench.results.files import save_torch_atomic
from lossbench.results.record import (LOSS_STATE, MODEL, resolved_config, write_history,
                                      write_metrics)

log = logging.getLogger("lossbench")


def test_report(model: torch.nn.Module, loss_fn: torch.nn.Module, splits: Splits, head: str,
                trainer: DictConfig, device: torch.device, amp: Any, console: Console,
                title: str, split: str = "test") -> tuple[Any, dict[str, Any]]:
    """Predict one split with the model as it is, print the report (`train` and `eval` print
    the same one) and return (predictions, metrics)."""
    with amp:
        pred = predict(model, splits, split, head, trainer.eval_batch_size, device, loss_fn,
                       trainer.get("max_batches"))
    # a quiet console (a sweep's job, the weights not kept) shows nothing, so nothing is drawn
    # for it: rich draws a table even for a quiet console (half of a sweep job's testing)
    show = (lambda *what, **how: None) if console.quiet else console.print
    if splits.task == "regression":
        test = rep.regression_metrics(pred)
        show(rep.regression_table(test, title))
    else:
        test = rep.classification_metrics(pred, splits.class_names, splits.num_classes,
                                          splits.info.get("train_class_counts"))
        show(rep.classification_report_table(test["classification_report"], title))
        show(rep.confusion_matrix_table(test["confusion_matrix"], test["class_names"],
                                        f"Confusion matrix ({split} split)"))
        if "balanced_accuracy" in test:
            from lossbench.results.imbalance_metrics import imbalance_summary

            show(imbalance_summary(test), highlight=False)
        if "ece" in test:
            show(rep.calibration_summary(test), highlight=False)
        if "pair_roc_auc" in test:
            show(f"pair verification ROC-AUC: {test['pair_roc_auc']:.4f}")
    if pred.loss is not None:
        test["loss"] = pred.loss
    # a loss trained against an attack (the loss contract's `attack`) is tested under it too
    if hook(loss_fn, "attack") is not None and splits.task != "regression":
        test["robust_accuracy"] = robust_accuracy(model, splits, split, head,
                                                  trainer.eval_batch_size, device, loss_fn,
                                                  trainer.get("max_batches"))
        show(robust_line(loss_fn, test), highlight=False)
    return pred, test


def robust_line(loss_fn: torch.nn.Module, test: dict[str, Any]) -> str:
    """The adversarial-training line of the report (console and report.txt); the attack is
    named by the loss's `describe()`, by its class for a loss that says nothing."""
    attack = hook(loss_fn, "describe")() or type(loss_fn).__name__
    return (f"robust accuracy under {attack}: {test['robust_accuracy']:.4f} "
            f"(clean: {test['accuracy']:.4f})")


def loss_params_line(loss_fn: torch.nn.Module) -> str | None:
    """The report's line on a loss's own parameters (learned, or from the class counts)."""
    params = hook(loss_fn, "report")()
    if not params:
        return None
    learned = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
    # margins and class weights are computed from the counts, not learned
    label = ("loss parameters from the class counts" if needs_class_counts(loss_fn)
             else "learned loss parameters")
    return f"{label}: {learned}"


def memorisation_summary(splits: Splits, result: Any) -> dict[str, Any] | None:
    """With label noise: how many training labels were flipped and, at the selected and the
    last epoch, the shares of them predicted as the noisy label and as the true one."""
    if not (splits.info.get("noise") and "flipped_memorised" in result.history[-1]):
        return None
    history_at = {row["epoch"]: row for row in result.history}
    return {"flipped": int((splits.train.y != splits.train.y_clean).sum()),
            **{at: {"memorised": history_at[epoch]["flipped_memorised"],
                    "true": history_at[epoch]["flipped_true"]}
               for at, epoch in (("best", result.best_epoch), ("last", result.epochs_run))}}


def report_notes(splits: Splits, result: Any, tested: dict[str, tuple[Any, dict[str, Any]]],
                 test_at: dict[str, dict[str, Any]], keep: str, selection: dict[str, Any],
                 memorised: dict[str, Any] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """(the report's lines under the tables, the warnings about suspicious results): best
    against last, memorisation of flipped labels, then the warnings."""
    pred, test = tested[keep]
    last_epoch = result.epochs_run
    warnings = rep.suspicious_results(splits.task, test, pred.y_true, splits.num_classes, keep)
    other = "last" if keep == "best" else "best"
    if not warnings and last_epoch != result.best_epoch:
        warnings += rep.suspicious_results(splits.task, test_at[other], tested[other][0].y_true,
                                           splits.num_classes, other)
    notes = rep.best_and_last_lines(test_at, keep, result.best_epoch, last_epoch, selection)
    if memorised:
        notes += [f"flipped training labels ({memorised['flipped']}) predicted as the noisy label "
                  f"/ the true one: {memorised['best']['memorised']:.3f} / "
                  f"{memorised['best']['true']:.3f} at the selected epoch, "
                  f"{memorised['last']['memorised']:.3f} / {memorised['last']['true']:.3f} at "
                  "the last"]
    notes += [f"warning: {w['message']}" for w in warnings]
    return notes, warnings


def write_plots(run_dir: Path, console: Console, **kwargs: Any) -> list[Path]:
    """The run's PNG plots (see `lossbench.results.plots.save_run_plots`). Pictures are a view of
    results already on disk, so a failure to draw one is logged and the run still completes."""
    try:
        from lossbench.results.plots import save_run_plots

        return save_run_plots(run_dir, **kwargs)
    except Exception as err:
        log.exception("plots failed")
        console.print(f"[yellow]warning:[/] plots not written ({type(err).__name__}: {err}); "
                      "see train.log", highlight=False)
        return []


def loss_record(loss_fn: torch.nn.Module, head: str) -> dict[str, Any]:
    """What metrics.json records of the loss beyond its config: the head it asked for, what it
    configured from the data (`describe`) and its own parameters (`report`)."""
    record: dict[str, Any] = {}
    if head == "cosine":
        record["head"] = "cosine classifier (asked for by the loss)"
    description = hook(loss_fn, "describe")()
    if description is not None:
        record["loss_description"] = description
    params = hook(loss_fn, "report")()
    if params is not None:
        record["loss_params"] = params
    return record


def write_record(run_dir: Path, history: list[dict[str, Any]], metrics: dict[str, Any],
                 model: torch.nn.Module | None = None,
                 loss_fn: torch.nn.Module | None = None) -> None:
    """The run record's files: history.csv, the weights (model.pt, and loss.pt for a loss with
    layers or learned parameters of its own) when given, then metrics.json, written last: a
    run directory with metrics.json holds the rest."""
    write_history(run_dir, history)
    if model is not None:
        save_torch_atomic(run_dir / MODEL, model.state_dict())
    if loss_fn is not None and loss_fn.state_dict():  # the loss's own layers, as kept
        save_torch_atomic(run_dir / LOSS_STATE, loss_fn.state_dict())
    write_metrics(run_dir, metrics)


def stop_early(result: Any, run_dir: Path, signum: int | None, cfg: DictConfig,
               picked: dict[str, str], dataset: str, task: str, monitor: str, mode: str,
               wall_time_s: float, lr: Any, main: bool,
               pairing: dict[str, Any] | None = None) -> None:
    """A run that diverged or was interrupted: write history.csv and metrics.json (status, epoch
    and step), keep checkpoint.pt, and raise `Diverged` or `Interrupted` with the line the user
    reads: what happened and what to do."""
    at = result.stopped_at
    run_dir = shown_path(run_dir)  # as the user would type it, as every line shows it
    checkpoint = run_dir / CHECKPOINT
    if result.status == "diverged":
        kept = (f"the last good checkpoint ({checkpoint}) holds the state before epoch "
                f"{_checkpoint_epoch(checkpoint)}" if checkpoint.is_file()
                else "no checkpoint was written before it")
        # both in one notation (.3g, as the epoch lines print lr): "optimizer.lr=100000" beside
        # "lr=1e+06" read as a larger rate
        lower = (f"optimizer.lr={lr / 10:.3g}, a tenth of {lr:.3g}"
                 if isinstance(lr, (int, float)) else "optimizer.lr")
        message = (f"training diverged at epoch {at['epoch']}, step {at['step']} of "
                   f"{at['steps']} ({at['phase']} loss {at['loss']}); {kept}. Try a lower "
                   f"learning rate ({lower}) or gradient clipping (trainer.grad_clip=1.0)")
        error: BaseException = Diverged(message)
    else:
        name = signal.Signals(signum).name if signum else "a signal"
        where = (f"at epoch {at['epoch']}, step {at['step']} of {at['steps']}" if at["step"]
                 else f"before epoch {at['epoch']}")
        message = (f"interrupted by {name} {where}; checkpoint saved in {checkpoint}. Continue "
                   f"with: {resume_command(run_dir)}")
        error = Interrupted(message, 128 + signum if signum else 130)
    if main:
        write_record(run_dir, result.history, {
            "status": result.status, "stopped_at": at, "message": message, "task": task,
            "dataset": dataset, "choices": picked, "seed": cfg.seed, "monitor": monitor,
            "mode": mode, "best_epoch": result.best_epoch, "best_val": result.best_value,
            "epochs_run": result.epochs_run, "wall_time_s": wall_time_s,
            "checkpoint": CHECKPOINT if checkpoint.is_file() else None,
            "pairing": pairing, "config": resolved_config(cfg)})
        log.info("%s: %s", result.status, message)
    dist = distributed.current()
    if dist.active:  # no rank exits (and has the others stopped) before rank 0 has written
        distributed.broadcast_object(None, dist)
    raise error


def stopped_after_completing(run_dir: Path, signum: int) -> Interrupted:
    """What a run says when a stop signal came once training was over: it completed and wrote
    every file first (exit status 128 + the signal: it did stop when asked)."""
    return Interrupted(f"stopped by {stop_name(signum)} after the run completed; its results are "
                       f"all in {shown_path(run_dir)}", 128 + signum)


def _checkpoint_epoch(path: Path) -> int:
    from lossbench.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["loop"]["epoch"])


def config_tree(cfg: DictConfig, picked: dict[str, str] | None = None) -> Tree:
    """The resolved config as a rich tree, one branch per group named with the option picked
    (`loss (ce)`); values that cannot be resolved yet are shown as written."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves later; show it unresolved
        data = OmegaConf.to_container(cfg, resolve=False)

    def add(branch: Tree, node: Any, top: bool = False) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                option = (picked or {}).get(key) if top else None
                label = f"[bold]{key}[/]" + (f" ({option})" if option else "")
                add(branch.add(label), value)
            else:
                branch.add(f"{key}: {value!r}" if isinstance(value, str) else f"{key}: {value}")

    tree = Tree("[bold]config[/]", guide_style="dim")
    add(tree, data, top=True)
    return tree


def run_metrics(run: Any, parts: Any, result: Any, test_at: dict[str, dict[str, Any]],
                n_test: int, memorised: dict[str, Any] | None,
                warnings: list[dict[str, Any]]) -> dict[str, Any]:
    """metrics.json of a completed run: what ran (choices, seeds, budget, selection), its
    results on the test split for both weights, and what the loss recorded of itself."""
    splits, trainer, keep = run.splits, run.trainer, run.trainer.get("keep", "best")
    return {
        "status": "completed",
        "task": splits.task,
        "dataset": splits.name,
        "choices": run.picked,
        "seed": run.cfg.seed,
        "monitor": run.monitor,
        "mode": run.mode,
        "best_epoch": result.best_epoch,
        "best_val": result.best_value,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "wall_time_s": run.wall_time(),
        "num_outputs": parts.num_outputs,
        "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": n_test},
        "test": test_at[keep],  # the headline: the weights model.pt holds
        "test_at": test_at,
        "keep": keep,
        "last_epoch": result.epochs_run,
        "budget": {"epochs": trainer.epochs, "epochs_run": result.epochs_run,
                   "steps_run": result.steps_run,
                   "early_stopping": run.selection["patience"] is not None},
        "selection": {k: v for k, v in run.selection.items()
                      if k not in ("column", "tie_column")},
        "memorisation": memorised,
        "warnings": warnings,
        "pairing": run.pairing,
        "class_scores": None if splits.task == "regression" else score_source(
            parts.loss_fn, parts.head, parts.num_outputs),
        "data": splits.info,
        "config": resolved_config(run.cfg),  # what a resumed sweep compares to skip this job
        **loss_record(parts.loss_fn, parts.head),
    }

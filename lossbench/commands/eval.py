"""`lossbench eval RUN_DIR [overrides]`: a finished run's best weights, evaluated again.

The run's saved config (`.hydra/config.yaml`) is rebuilt with the same functions `train` uses
(same seed, so the same split), `model.pt` is loaded with `weights_only=True`, and the same
report is printed. Overrides change what is evaluated, not what was learned, e.g.

    lossbench eval outputs/2026-01-01/12-00-00 --split val dataset.noise.kind=none

scores the model on the validation split with its labels left clean, and

    lossbench eval outputs/2026-01-01/12-00-00 --logit-adjust 1.0

scores it with post-hoc logit adjustment (Menon et al. 2021): its logits minus τ·log π, π the
class prior of its training split, for a model trained on long-tailed data with any softmax loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lossbench.errors import UserError
from lossbench.results.files import write_json_atomic
from lossbench.results.record import MODEL, has_metrics, read_metrics

SPLITS = ("test", "val", "train")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lossbench eval",
        description="Evaluate a finished run's best weights (model.pt) on its test split, or on "
                    "another split or dataset given as Hydra-style overrides.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by train")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="changes to the run's config, e.g. dataset.noise.kind=none")
    parser.add_argument("--split", choices=SPLITS, default="test",
                        help="which split to evaluate (default: test)")
    parser.add_argument("--out", metavar="FILE", help="also write the metrics as JSON")
    parser.add_argument("--logit-adjust", type=float, metavar="TAU", default=None,
                        help="post-hoc logit adjustment: subtract TAU * log(training class "
                             "prior) from the logits before predicting (softmax heads only)")
    return parser.parse_intermixed_args(argv)


def saved_config(run_dir: Path) -> DictConfig:
    """The config the run was trained with: .hydra/config.yaml, else metrics.json's copy."""
    from lossbench.config.moved import current_targets

    path = run_dir / ".hydra" / "config.yaml"
    if path.is_file():
        try:
            cfg = current_targets(OmegaConf.load(path))
        except Exception as err:  # yaml's parser errors, OmegaConf's: the file is damaged
            detail = " ".join(str(err).split())[:200]
            raise UserError(f"{path} cannot be read as a config ({type(err).__name__}: "
                            f"{detail})") from None
        missing = [key for key in ("trainer", "dataset", "model", "loss")
                   if not isinstance(cfg, DictConfig) or key not in cfg]
        if missing:  # a zero-byte file reads as an empty config
            size = path.stat().st_size
            what = "is empty (0 bytes)" if size == 0 else f"lacks {', '.join(missing)}"
            raise UserError(f"{path} {what}: it is not the config of a lossbench run (damaged "
                            "or truncated?)")
        original_cwd(run_dir, cfg)
        return cfg
    try:
        config = (read_metrics(run_dir) or {}).get("config")
    except (OSError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise UserError(f"{run_dir} holds no saved config (.hydra/config.yaml): is it a "
                        "lossbench run directory?")
    return current_targets(OmegaConf.create(config))


def original_cwd(run_dir: Path, cfg: DictConfig) -> None:
    """A run saved before lossbench recorded absolute paths names the user's files relative to
    the folder it was run from (.hydra/hydra.yaml's hydra.runtime.cwd): make them absolute."""
    from lossbench.data.files import absolute_paths

    try:
        cwd = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.cwd
    except Exception:  # no hydra.yaml (hydra.output_subdir=null), or a damaged one
        return
    if cfg.get("dataset") is not None and isinstance(cwd, str):
        absolute_paths(cfg.dataset, cwd)


def sweep_folder_jobs(folder: Path) -> list[Path]:
    """The job folders of a sweep folder (those holding model.pt), else []."""
    if (folder / MODEL).exists() or (folder / ".hydra" / "config.yaml").exists():
        return []
    jobs = sorted((p.parent for p in folder.rglob(MODEL)),
                  key=lambda p: (len(p.parts), str(p)))
    return jobs if jobs or (folder / "multirun.yaml").is_file() else []


def saved_choices(run_dir: Path) -> dict[str, str]:
    try:
        picked = (read_metrics(run_dir) or {}).get("choices")
    except (OSError, ValueError):
        picked = None
    return dict(picked) if isinstance(picked, dict) else {}


def config_groups() -> set[str]:
    """Names of the config groups (dataset, model, loss, ...): folders of lossbench/conf."""
    conf = Path(__file__).parents[1] / "conf"
    return {p.name for p in conf.iterdir() if p.is_dir() and any(p.glob("*.yaml"))}


def apply_overrides(cfg: DictConfig, overrides: list[str], run_dir: Path,
                    picked: dict[str, str]) -> DictConfig:
    """`key=value` sets a value of the saved config; `group=option` (dataset=wine) takes that
    group's config as `train` would compose it with the run's own overrides."""
    if not overrides:
        return cfg
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise UserError(f"cannot parse the overrides {' '.join(overrides)}: "
                        f"{' '.join(str(err).split())[:200]}") from None
    groups = config_groups()
    group_changes = [o for o in parsed if o.key_or_group in groups]
    for o in parsed:
        if o.is_sweep_override() or o.is_delete():
            raise UserError(f"{o.input_line}: eval takes one value per key (no sweeps, no ~)")
    if group_changes:
        composed = compose_with(run_dir, overrides)
        for o in group_changes:
            cfg[o.key_or_group] = composed[o.key_or_group]
            picked[o.key_or_group] = str(o.value())
    for o in parsed:
        if o.key_or_group in groups:
            continue
        if not o.is_add() and OmegaConf.select(cfg, o.key_or_group, default="<absent>") == \
                "<absent>":
            raise UserError(f"{o.key_or_group} is not in the run's config; "
                            f"add a new key with +{o.key_or_group}=...")
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True, force_add=True)
    return cfg


def switch_off_corruption(cfg: DictConfig) -> None:
    """`dataset.noise.kind=none` on a noisy run means "score against the clean labels": the
    run's own rate (or imbalance ratio) is left over, not a setting that would do nothing, so it
    goes with its kind. (train refuses a rate without a kind; see data/noise.py.)"""
    data = cfg.get("dataset") or {}
    noise, imbalance = data.get("noise"), data.get("imbalance")
    if noise is not None and noise.get("kind", "none") == "none":
        for key, off in (("rate", 0.0), ("preset", None), ("mapping", None)):
            if key in noise:
                noise[key] = off
    if imbalance is not None and imbalance.get("kind", "none") == "none" and "ratio" in imbalance:
        imbalance.ratio = None


def compose_with(run_dir: Path, overrides: list[str]) -> DictConfig:
    """The root config composed as `train` would from the run's overrides plus these."""
    from hydra import compose, initialize_config_module

    from lossbench.config.schema import register_schemas

    register_schemas()
    path = run_dir / ".hydra" / "overrides.yaml"
    saved = [str(o) for o in OmegaConf.load(path)] if path.is_file() else []
    try:
        with initialize_config_module(config_module="lossbench.conf", version_base="1.3"):
            return compose(config_name="config", overrides=saved + list(overrides))
    except Exception as err:
        raise UserError(" ".join(str(err).split("Config search path")[0].split())) from None


def evaluate_run(run_dir: Path, overrides: list[str], split: str = "test",
                 logit_adjust: float | None = None) -> tuple[dict[str, Any], Any]:
    """Rebuild the run's data and model, load model.pt, print the report; (metrics, splits).
    `logit_adjust` τ: predict from the logits minus τ·log(training prior) (post-hoc)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory")
    weights = run_dir / MODEL
    jobs = sweep_folder_jobs(run_dir)
    if jobs or (run_dir / "multirun.yaml").is_file() and not weights.exists():
        example = f"lossbench eval {jobs[0]}" if jobs else "lossbench eval <its job folder>"
        raise UserError(f"{run_dir} is a sweep folder ({len(jobs)} completed job"
                        f"{'' if len(jobs) == 1 else 's'} with weights in it), not a run: eval "
                        f"one job at a time, e.g. {example}; lossbench compare {run_dir} "
                        "tabulates them all")
    if not weights.is_file():
        record = ("see its metrics.json" if has_metrics(run_dir)
                  else "it stopped before writing any result")
        raise UserError(f"{run_dir} has no model.pt: the run did not complete ({record})")
    picked = saved_choices(run_dir)
    cfg = apply_overrides(saved_config(run_dir), overrides, run_dir, picked)
    switch_off_corruption(cfg)

    import pickle

    import torch

    from lossbench.experiment import run as workflow
    from lossbench.console import output_console
    from lossbench.config.schema import check_config
    from lossbench.engine.precision import autocast, autocast_dtype

    check_config(cfg, saved=True)
    trainer = cfg.trainer
    workflow.seed_everything(cfg.seed, trainer.deterministic)  # the same seed: the same split
    device = workflow.pick_device(trainer.device)
    try:
        splits = workflow.load_data(cfg)
        workflow.data_to_device(splits, device, trainer.get("num_workers", "auto"))
        loss_fn, model, head, _ = workflow.build_loss_and_model(cfg, splits, device,
                                                                picked.get("loss", "?"))
    except Exception as err:  # a saved config naming a target that cannot or may not be built
        from lossbench.errors import instantiation_mistake

        mistake = instantiation_mistake(err)
        if mistake is None:
            raise
        raise UserError(f"{run_dir}'s config: {mistake}") from None
    try:
        state = torch.load(weights, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise UserError(f"{weights} cannot be read as weights: {unreadable_reason(weights, err)}"
                        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise UserError(f"{weights} does not fit the model built from the config ({first}); "
                        "overrides may change the data, not the model's shape") from None
    console = output_console()
    loss_weights = run_dir / "loss.pt"
    if loss_weights.is_file():  # the loss's own layers or learned parameters (train saves them)
        try:
            loss_fn.load_state_dict(torch.load(loss_weights, map_location=device,
                                               weights_only=True))
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
            raise UserError(f"{loss_weights} does not fit the loss built from the config "
                            f"({' '.join(str(err).split())[:160]})") from None
    elif loss_fn.state_dict():
        console.print("[yellow]note:[/] this run saved no loss.pt; the loss's own parameters "
                      "start from their initial values", highlight=False)
    if logit_adjust is not None:
        model = posthoc_adjusted(model, loss_fn, splits, head, logit_adjust, picked)
    amp = autocast(device, autocast_dtype(trainer.get("precision", 32)))
    changed = f" with {' '.join(overrides)}" if overrides else ""
    if logit_adjust is not None:
        changed += f", post-hoc logit adjustment tau={logit_adjust:g}"
    title = (f"{split.capitalize()} split: loss={picked.get('loss')} dataset={splits.name}, "
             f"weights of {run_dir}{changed}")
    _, metrics = workflow.test_report(model, loss_fn, splits, head, trainer, device, amp,
                                      console, title, split)
    if logit_adjust is not None:
        metrics.pop("loss", None)  # the training loss of adjusted logits means nothing
        metrics["posthoc_logit_adjustment"] = {"tau": logit_adjust}
    return metrics, splits


def unreadable_reason(path: Path, err: BaseException) -> str:
    """Why torch could not load `path`, in words: the file's size against the one its run
    record wrote down, else torch's own message (some of which are empty)."""
    size = path.stat().st_size
    try:
        recorded = ((read_metrics(path.parent) or {}).get("files") or {}).get(path.name)
    except (OSError, ValueError):
        recorded = None
    if size == 0:
        reason = "the file is empty (0 bytes)"
    elif isinstance(recorded, int) and recorded != size:
        reason = f"the file has {size} bytes"
    else:
        detail = " ".join(str(err).split())[:160]
        return f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    if isinstance(recorded, int) and recorded != size:
        reason += f" where the run wrote {recorded}: it was truncated or damaged since"
    return reason


def posthoc_adjusted(model: Any, loss_fn: Any, splits: Any, head: str, tau: float,
                     picked: dict[str, str]) -> Any:
    """The model with its logits adjusted by −τ·log π (π: the training split's class prior)."""
    from lossbench.engine.distributed import training_class_counts
    from lossbench.losses.base import hook
    from lossbench.losses.imbalance import PosthocLogitAdjustment

    if not tau >= 0:
        raise UserError(f"--logit-adjust {tau:g} must be a number >= 0")
    if splits.task == "regression" or head != "logits" or hook(loss_fn, "scores") is not None:
        raise UserError(f"--logit-adjust needs a softmax classifier; loss="
                        f"{picked.get('loss', '?')} on the {splits.task} task has head {head}")
    counts = training_class_counts(splits.train.y, splits.num_classes)
    return PosthocLogitAdjustment(model, counts, tau)


def eval_command(argv: list[str]) -> int:
    """`lossbench eval RUN_DIR [overrides] [--split test|val|train] [--out FILE]`."""
    args = parse_args(argv)
    run_dir = Path(args.run_dir)
    metrics, splits = evaluate_run(run_dir, list(args.overrides), args.split, args.logit_adjust)
    if args.out:
        write_json_atomic(args.out, {
            "run": str(run_dir), "split": args.split, "overrides": list(args.overrides),
            "dataset": splits.name, "task": splits.task,
            args.split: {k: v for k, v in metrics.items() if k != "classification_report_text"},
        })
    return 0

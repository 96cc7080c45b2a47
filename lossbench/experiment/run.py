"""`run(cfg)`: the whole workflow of one experiment, from a composed config to a run directory.

seed → data (split, noise, imbalance) → model (sized from the data and the loss) → loss →
optimizer/scheduler → epochs of train/validate → best weights → test → report → files.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import signal
import time
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.tree import Tree

from lossbench import distributed
from lossbench import report as rep
from lossbench import tracking
from lossbench.data import RawData, Splits, prepare_data
from lossbench.data.noise import describe_corruption
from lossbench.engine.checkpoint import CHECKPOINT, StopOnSignal, resume_state, save_checkpoint
from lossbench.console import output_console
from lossbench.errors import Diverged, Interrupted, UserError
from lossbench.data.imbalance import training_class_counts
from lossbench.engine.predict import loader_options, predict, robust_accuracy
from lossbench.losses.base import needs_class_counts
from lossbench.models import with_cosine_head
from lossbench.engine.optim import build_optimizer, optimizer_kernel
from lossbench.engine.progress import EpochProgress
from lossbench.results.files import save_torch_atomic, write_csv_atomic, write_json_atomic, write_text_atomic
from lossbench.config.schema import check_config
from lossbench.experiment.sweep import resolved_config
from lossbench.experiment.sweep_console import in_sweep
from lossbench.engine.threads import set_threads
from lossbench.engine.loop import (Settings, autocast, autocast_dtype, describe_selection, fit,
                             planned_epochs, resolve_monitor, selection_rule, steps_per_epoch,
                             training_model)

log = logging.getLogger("lossbench")

# Keys of a dataset config that lossbench applies to any dataset; the rest go to its `_target_`.
DATA_PREP_KEYS = ("split", "noise", "imbalance", "resample", "scale", "augment")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"trainer.device={name} is not a device (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name} but CUDA is not available here; use trainer.device=auto or cpu")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()  # else the run fails later on "invalid device ordinal"
        if device.index >= count:
            present = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise UserError(f"trainer.device={name} but this machine has {count} CUDA "
                            f"GPU{'s' if count != 1 else ''} ({present})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name} but MPS is not available here; use trainer.device=auto or cpu")
    return device


def choices(cfg: DictConfig) -> dict[str, str]:
    """The config-group options this run was composed from (dataset=..., loss=..., ...)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        picked = HydraConfig.get().runtime.choices
        return {k: v for k, v in picked.items() if not k.startswith("hydra") and v is not None}
    except ValueError:  # called without Hydra (tests, notebooks)
        names = {}
        for group in ("dataset", "model", "loss", "optimizer", "scheduler"):
            target = (cfg.get(group) or {}).get("_target_") or "none"
            names[group] = str(target).rsplit(".", 1)[-1]
        return names


def run_directory(cfg: DictConfig) -> Path:
    if cfg.get("run_dir"):  # set by tests, and by `resume=` (a run goes on in its own directory)
        return Path(cfg.run_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return Path(cfg.get("run_dir") or "outputs/run")


def dataset_source(data_cfg: DictConfig) -> dict:
    """The dataset config without the keys lossbench applies itself: what its `_target_` takes."""
    resolved = OmegaConf.to_container(data_cfg, resolve=True)  # ${seed} lives at the root
    return {k: v for k, v in resolved.items() if k not in DATA_PREP_KEYS}


def run_seeds(cfg: DictConfig) -> tuple[int, int]:
    """(data seed, train seed): `data_seed` draws the split, noise and imbalance, `train_seed`
    the initial weights, batch order and dropout; each falls back on `seed`."""
    data_seed, train_seed = cfg.get("data_seed"), cfg.get("train_seed")
    return (int(cfg.seed if data_seed is None else data_seed),
            int(cfg.seed if train_seed is None else train_seed))


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """A short hex digest of a state_dict's names, shapes, dtypes and values: equal for runs
    that start from the same weights (a paired comparison) whatever device they train on."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def order_hash(generator: torch.Generator, n_train: int) -> str:
    """The digest of the first epoch's sample order, drawn from a copy of the freshly seeded
    generator exactly as `train.train_batches` draws it (before any sharding)."""
    import hashlib

    copy_ = torch.Generator(device=generator.device)
    copy_.set_state(generator.get_state())
    order = torch.randperm(n_train, generator=copy_, device=generator.device).cpu()
    return hashlib.sha256(order.numpy().tobytes()).hexdigest()[:16]


def load_data(cfg: DictConfig) -> Splits:
    from hydra.errors import InstantiationException

    data_cfg = cfg.dataset
    try:
        raw = instantiate(dataset_source(data_cfg))
    except InstantiationException as err:  # Hydra wraps what the loader raised
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise UserError(f"dataset {data_cfg._target_}: {cause}") from None
        raise
    if not isinstance(raw, RawData):
        raise TypeError(f"dataset {data_cfg._target_} returned {type(raw).__name__}, not RawData")
    return prepare_data(raw, split=data_cfg.split, noise=data_cfg.get("noise"),
                        imbalance=data_cfg.get("imbalance"), scale=data_cfg.get("scale", True),
                        seed=run_seeds(cfg)[0], augment=data_cfg.get("augment"),
                        resample=data_cfg.get("resample"))


def check_loss_fits(loss_fn: torch.nn.Module, loss_name: str, splits: Splits) -> None:
    tasks = getattr(loss_fn, "tasks", None)
    if tasks is None or splits.task in tasks:
        return
    from lossbench.config.catalogue import losses_for_task

    raise UserError(f"loss={loss_name} does not fit the {splits.task} task of dataset "
                    f"{splits.name}; losses that do: {', '.join(losses_for_task(splits.task))}")


def output_size(head: str, splits: Splits, embedding_dim: int) -> int:
    """How many outputs the model needs for this loss head on this data."""
    if head == "embedding":
        return embedding_dim
    if splits.task == "regression":
        return 1
    if head == "sigmoid" and splits.task == "binary":
        return 1
    return splits.num_classes


def resumed_config(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """`resume=<run dir>`: the run's own saved config (pointing at its directory) and its
    checkpoint. Nothing else may change: the run must end as if it had never stopped."""
    run_dir = Path(cfg.resume)
    try:
        from hydra.core.hydra_config import HydraConfig

        others = [o for o in HydraConfig.get().overrides.task
                  if not o.lstrip("+~").startswith("resume=")]
    except ValueError:  # called without Hydra
        others = []
    if others:
        raise UserError(f"resume={run_dir} continues that run with its own saved config; "
                        f"drop the other overrides ({' '.join(others)})")
    state = resume_state(run_dir)
    saved = OmegaConf.create(state["config"])
    saved.run_dir = str(run_dir)
    return saved, state


def run(cfg: DictConfig, resume: dict[str, Any] | None = None) -> float:
    """Run one experiment; returns the best value of the monitored validation metric.

    `resume`: a checkpoint of this very config to continue from (a sweep's job that was killed,
    see `sweep.run_sweep_job`); `resume=<run dir>` in the config loads the run's own.

    `trainer.devices=N` (N > 1) runs it in N processes started from here, which share this run
    directory (see `lossbench.engine.distributed`); under torchrun this process is one of them already.

    A run that stops early raises once its files are written: `Diverged` (NaN/inf loss;
    metrics.json status "diverged", the last good checkpoint.pt kept) or `Interrupted` (Ctrl-C or
    SIGTERM; checkpoint.pt written, status "interrupted"; `resume=<run dir>` continues it).
    """
    check_config(cfg)
    if cfg.get("resume"):
        cfg, resume = resumed_config(cfg)
    if resume is not None:
        if distributed.launched_by_torchrun():
            raise UserError("resume= under torchrun is not supported; use trainer.devices=N")
        devices = int(cfg.trainer.get("devices", 1) or 1)
        return _spawn_ranks(cfg, devices, resume) if devices > 1 else _run_in(cfg, resume)
    if distributed.current().active:
        return _run_in(cfg)
    if distributed.launched_by_torchrun():
        return _torchrun_rank(cfg)
    devices = int(cfg.trainer.get("devices", 1) or 1)
    if devices < 1:
        raise UserError(f"trainer.devices={devices} must be at least 1")
    if devices > 1:
        return _spawn_ranks(cfg, devices)
    return _run_in(cfg)


def _run_in(cfg: DictConfig, resume: dict[str, Any] | None = None) -> float:
    """One process's run: rank 0 (or the only process) prints, logs and writes the run dir."""
    started = time.perf_counter()
    run_dir = run_directory(cfg)
    main = distributed.current().is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # a sweep's console shows one line per job (lossbench/experiment/sweep_console.py): details go to files
    console = output_console(quiet=not main or in_sweep())
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    if main:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the console shows the progress bar and the report, not log lines
    try:
        return _run(cfg, run_dir, console, started, resume)
    except BaseException as err:
        tracking.fail_open_runs(err)
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _spawn_ranks(cfg: DictConfig, devices: int, resume: dict[str, Any] | None = None) -> float:
    """`trainer.devices=N`: N processes from inside this one job, one run directory.

    Ctrl-C in a terminal reaches every process: the ranks stop together at the end of the epoch
    and rank 0 writes the checkpoint, while this process waits for them and then reports what
    rank 0 wrote (interrupted or diverged) instead of a failed child process.
    """
    device = pick_device(cfg.trainer.device)  # a wrong device stops before any process starts
    distributed.rank_device(device, devices - 1, devices)
    run_dir = run_directory(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:  # the ranks see the same Hydra runtime (run directory, choices) as this job
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.instance().cfg
    except ImportError:
        hydra_cfg = None
    import json

    stop, started = StopOnSignal(announce=False), time.time()  # rank 0 announces it
    try:
        with stop:
            distributed.spawn(_rank_main, devices, (cfg, hydra_cfg, resume))
        failure = None
    except Exception as err:  # a rank that raised Diverged exits non-zero
        failure = err
    metrics_file = run_dir / "metrics.json"
    written = metrics_file.is_file() and metrics_file.stat().st_mtime >= started
    metrics = json.loads(metrics_file.read_text()) if written else {}
    if metrics.get("status") == "diverged":
        raise Diverged(metrics["message"]) from None
    if metrics.get("status") == "interrupted":  # the ranks exit quietly on KeyboardInterrupt
        raise Interrupted(metrics["message"], 128 + (stop.requested or signal.SIGINT)) from None
    if failure is not None:
        raise failure
    return float(metrics["best_val"])


def _rank_main(cfg: DictConfig, hydra_cfg: DictConfig | None,
               resume: dict[str, Any] | None = None) -> None:
    """Body of one spawned rank (see `distributed.spawn`)."""
    if hydra_cfg is not None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(hydra_cfg)
    distributed.init_from_env(pick_device(cfg.trainer.device))
    # `resume` arrived in memory shared with the other ranks; the optimizer would keep its
    # tensors as its own state and every rank would update the same moments: copy them.
    _run_in(cfg, copy.deepcopy(resume))


def _torchrun_rank(cfg: DictConfig) -> NoReturn:
    """One process of `torchrun --nproc_per_node=N -m lossbench train ...`; ends the process."""
    dist = distributed.init_from_env(pick_device(cfg.trainer.device))
    try:
        value = _run_in(cfg)
        # Each torchrun process composed its own Hydra job; only rank 0's directory is the run.
        main_dir = Path(distributed.broadcast_object(str(run_directory(cfg).resolve()), dist))
        own = run_directory(cfg).resolve()
        if not dist.is_main and own != main_dir and own.is_dir() and {
                p.name for p in own.iterdir()} <= {".hydra"}:
            import shutil

            shutil.rmtree(own, ignore_errors=True)
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(together=True)
    distributed.exit_process(0)  # the run is complete and written: see exit_process


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


def shows_config(cfg: DictConfig) -> bool:
    """`print_config`: every single run prints its config; a sweep's jobs do not (their
    console is one line each, and each job's config is in its .hydra/config.yaml)."""
    return bool(cfg.get("print_config", True)) and not in_sweep()


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


def data_to_device(splits: Splits, device: torch.device, num_workers: int | str = "auto"
                   ) -> None:
    """Small data lives on the device once (batches are slices); loader-backed splits keep
    only their labels there, and are read by `num_workers` DataLoader workers."""
    for part in (splits.train, splits.val, splits.test):
        if part.x is not None:
            part.x, part.y = part.x.to(device), part.y.to(device)
        else:
            part.y = part.y.to(device)
        if part.y_clean is not None:
            part.y_clean = part.y_clean.to(device)
        part.loader_options = loader_options(device, num_workers)


def build_loss_and_model(cfg: DictConfig, splits: Splits, device: torch.device, loss_name: str
                         ) -> tuple[torch.nn.Module, torch.nn.Module, str, int]:
    """(loss, model sized for its head on this data, head, number of outputs), on device."""
    loss_fn = instantiate(cfg.loss)
    check_loss_fits(loss_fn, loss_name, splits)
    if hasattr(loss_fn, "setup"):  # layers the loss owns, sized by the data (mixed's classifier)
        loss_fn.setup(splits.task, splits.num_classes)
    if needs_class_counts(loss_fn):  # before the first step (lossbench/losses/base.py)
        if splits.task == "regression":
            raise UserError(f"loss={loss_name} needs the class counts of the training split, "
                            f"but dataset {splits.name} is a regression task")
        loss_fn.set_class_counts(training_class_counts(splits.train.y, splits.num_classes))
    head = getattr(loss_fn, "head", "logits")
    num_outputs = output_size(head, splits, cfg.embedding_dim)
    model = instantiate(cfg.model, input_shape=list(splits.sample_shape), num_outputs=num_outputs)
    if head == "cosine":  # the loss asks for a cosine classifier as the last layer (LDAM)
        model = with_cosine_head(model)
    model.to(device)
    loss_fn.to(device)
    return loss_fn, model, head, num_outputs


def test_report(model: torch.nn.Module, loss_fn: torch.nn.Module, splits: Splits, head: str,
                trainer: DictConfig, device: torch.device, amp: Any, console: Console,
                title: str, split: str = "test") -> tuple[Any, dict[str, Any]]:
    """Predict one split with the model as it is, print the report (`train` and `eval` print
    the same one) and return (predictions, metrics)."""
    with amp:
        pred = predict(model, splits, split, head, trainer.eval_batch_size, device, loss_fn,
                       trainer.get("max_batches"))
    if splits.task == "regression":
        test = rep.regression_metrics(pred)
        console.print(rep.regression_table(test, title))
    else:
        test = rep.classification_metrics(pred, splits.class_names, splits.num_classes,
                                          splits.info.get("train_class_counts"))
        console.print(rep.classification_report_table(test["classification_report"],
                                                       title))
        console.print(rep.confusion_matrix_table(test["confusion_matrix"], test["class_names"],
                                                 f"Confusion matrix ({split} split)"))
        if "balanced_accuracy" in test:
            from lossbench.results.imbalance_metrics import imbalance_summary

            console.print(imbalance_summary(test), highlight=False)
        if "ece" in test:
            console.print(rep.calibration_summary(test), highlight=False)
        if "pair_roc_auc" in test:
            console.print(f"pair verification ROC-AUC: {test['pair_roc_auc']:.4f}")
    if pred.loss is not None:
        test["loss"] = pred.loss
    if hasattr(loss_fn, "attack") and splits.task != "regression":  # adversarial training
        test["robust_accuracy"] = robust_accuracy(model, splits, split, head,
                                                  trainer.eval_batch_size, device, loss_fn,
                                                  trainer.get("max_batches"))
        console.print(robust_line(loss_fn, test), highlight=False)
    return pred, test


def robust_line(loss_fn: torch.nn.Module, test: dict[str, Any]) -> str:
    """The adversarial-training line of the report (console and report.txt)."""
    return (f"robust accuracy under {loss_fn.describe()}: {test['robust_accuracy']:.4f} "
            f"(clean: {test['accuracy']:.4f})")


def loss_params_line(loss_fn: torch.nn.Module) -> str | None:
    """The report's line on a loss's own parameters (learned, or from the class counts)."""
    params = loss_fn.report() if hasattr(loss_fn, "report") else None
    if not params:
        return None
    learned = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
    # margins and class weights are computed from the counts, not learned
    label = ("loss parameters from the class counts" if needs_class_counts(loss_fn)
             else "learned loss parameters")
    return f"{label}: {learned}"


def stop_early(result: Any, run_dir: Path, signum: int | None, cfg: DictConfig,
               picked: dict[str, str], dataset: str, task: str, monitor: str, mode: str,
               wall_time_s: float, lr: Any, main: bool,
               pairing: dict[str, Any] | None = None) -> None:
    """A run that diverged or was interrupted: write history.csv and metrics.json (status, epoch
    and step), keep checkpoint.pt, and raise `Diverged` or `Interrupted` with the line the user
    reads: what happened and what to do."""
    at = result.stopped_at
    try:  # the paths as the user would type them: relative to where they ran lossbench
        run_dir = run_dir.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        pass
    checkpoint = run_dir / CHECKPOINT
    if result.status == "diverged":
        kept = (f"the last good checkpoint ({checkpoint}) holds the state before epoch "
                f"{_checkpoint_epoch(checkpoint)}" if checkpoint.is_file()
                else "no checkpoint was written before it")
        lower = f"optimizer.lr={lr / 10:g}" if isinstance(lr, (int, float)) else "optimizer.lr"
        message = (f"training diverged at epoch {at['epoch']}, step {at['step']} of "
                   f"{at['steps']} ({at['phase']} loss {at['loss']}); {kept}. Try a lower "
                   f"learning rate ({lower}) or gradient clipping (trainer.grad_clip=1.0)")
        error: BaseException = Diverged(message)
    else:
        name = signal.Signals(signum).name if signum else "a signal"
        where = (f"at epoch {at['epoch']}, step {at['step']} of {at['steps']}" if at["step"]
                 else f"before epoch {at['epoch']}")
        message = (f"interrupted by {name} {where}; checkpoint saved in {checkpoint}. Continue "
                   f"with: lossbench train resume={run_dir}")
        error = Interrupted(message, 128 + signum if signum else 130)
    if main:
        write_csv_atomic(run_dir / "history.csv", result.history)
        write_json_atomic(run_dir / "metrics.json", {
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


def _checkpoint_epoch(path: Path) -> int:
    from lossbench.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(path)["loop"]["epoch"])


def _run(cfg: DictConfig, run_dir: Path, console: Console, started: float,
         resume: dict[str, Any] | None = None) -> float:
    trainer = cfg.trainer
    picked = resume["choices"] if resume is not None else choices(cfg)
    data_seed, train_seed = run_seeds(cfg)
    # the global generators serve initial weights and dropout: the training side of the seeds
    seed_everything(train_seed, trainer.deterministic)
    dist = distributed.current()
    device = distributed.rank_device(pick_device(trainer.device), dist.local_rank,
                                     dist.world_size)
    precision = autocast_dtype(trainer.get("precision", 32))

    # 1. data: split, corrupt on purpose if asked, scale with training statistics only
    splits = load_data(cfg)
    monitor, mode = resolve_monitor(splits.task, trainer.monitor, trainer.mode)
    selection = selection_rule(splits.task, trainer, splits.val.y_clean is not None)
    per_epoch = steps_per_epoch(len(splits.train), trainer.batch_size, dist.world_size,
                                trainer.get("max_batches"))
    epochs = planned_epochs(trainer.epochs, selection["min_steps"], per_epoch)
    # the loop reads its settings from a plain dict, with `epochs: auto` resolved
    trainer = Settings({**Settings.of(trainer), "epochs": epochs})
    data_to_device(splits, device, trainer.get("num_workers", "auto"))

    # 2. loss, and the model sized for it
    loss_fn, model, head, num_outputs = build_loss_and_model(cfg, splits, device,
                                                             picked.get("loss", "?"))
    pairing: dict[str, Any] = {"data_seed": data_seed, "train_seed": train_seed,
                               "init_hash": state_hash(model.state_dict())}
    threads = set_threads(trainer.get("threads", "auto"), model, splits.sample_shape,
                          trainer.batch_size, device)

    # 3. optimizer over the model's and the loss's own parameters (learnable losses)
    params = list(model.parameters()) + list(loss_fn.parameters())
    # `_partial_` factory: a wrong or invalid argument shows only when it is called
    optimizer = build_optimizer(instantiate(cfg.optimizer), cfg.optimizer._target_, params)
    scheduler = None
    if cfg.scheduler.get("_target_"):
        factory = instantiate(cfg.scheduler)
        try:
            if "OneCycleLR" in cfg.scheduler._target_:
                scheduler = factory(optimizer, total_steps=per_epoch * epochs)
            else:
                scheduler = factory(optimizer)
        except (TypeError, ValueError) as err:
            raise UserError(f"scheduler ({cfg.scheduler._target_}): {err}") from err
    if resume is not None:  # continue from checkpoint.pt (fit restores the loop and the RNGs)
        model.load_state_dict(resume["model"])
        loss_fn.load_state_dict(resume["loss"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(resume["scheduler"])

    # a tracker whose package is missing is the user's to install: checked before any file
    tracker = tracking.build_tracker(cfg.get("logger")) if dist.is_main else tracking.NoTracker()

    # Everything the user could have got wrong has been checked: from here on, files are written.
    # The config tree comes only now, so that a user error is all the console shows.
    if shows_config(cfg):
        console.print(config_tree(cfg, picked), highlight=False)
    log.info("run directory %s, device %s, torch threads %d, choices %s", run_dir, device,
             torch.get_num_threads(), picked)
    log.info("torch threads: %s", threads)
    log.info("optimizer %s, %s", type(optimizer).__name__, optimizer_kernel(optimizer))
    tracker.start(run_dir, OmegaConf.to_container(cfg, resolve=True), picked)
    corruption = describe_corruption(splits.info)  # noise, imbalance: '' for clean data
    generator = torch.Generator(device=device if device.type == "cuda" else "cpu")
    generator.manual_seed(train_seed)
    pairing["order_hash"] = order_hash(generator, len(splits.train))
    console.print(f"[bold]lossbench[/] loss={picked.get('loss')} dataset={splits.name} "
                  f"({splits.task}, {len(splits.train)}/{len(splits.val)}/{len(splits.test)} "
                  f"train/val/test) model={picked.get('model')} device={device}"
                  f"{', ' + corruption if corruption else ''}", highlight=False)
    selection["noise_injected"] = splits.val.y_clean is not None
    console.print(f"{describe_selection(selection)}; budget {epochs} epochs × {per_epoch} "
                  f"steps", highlight=False)

    # 4. train and validate, keeping the best weights; checkpoint.pt lets a stopped run go on
    saved_config = resolved_config(cfg)
    elapsed_before = resume["elapsed_s"] if resume is not None else 0.0

    stop = StopOnSignal(announce=dist.is_main)

    def save(loop: dict[str, Any], states: dict[str, Any] | None = None) -> None:
        if dist.is_main:  # flushed to the disk when it is the last one (Ctrl-C, SIGTERM)
            save_checkpoint(run_dir / CHECKPOINT, model=model, loss_fn=loss_fn,
                            optimizer=optimizer, scheduler=scheduler, loop=loop,
                            config=saved_config, choices=picked,
                            elapsed_s=elapsed_before + time.perf_counter() - started,
                            sync=stop.requested is not None or states is not None,
                            states=states)

    with stop, EpochProgress(console, epochs, monitor,
                             enabled=dist.is_main) as progress:  # no hidden bars on other ranks
        result = fit(training_model(model, device, trainer.get("compile", False)), loss_fn,
                     optimizer, scheduler, splits, head, trainer, device, generator, progress,
                     on_epoch=lambda row: (log.info("epoch %s", row), tracker.log_epoch(row)),
                     resume=resume["loop"] if resume is not None else None, save=save,
                     stop=stop)
    if result.status != "completed":
        stop_early(result, run_dir, stop.requested, cfg, picked, splits.name, splits.task,
                   monitor, mode, elapsed_before + time.perf_counter() - started,
                   cfg.optimizer.get("lr"), dist.is_main, pairing)
    amp = autocast(device, precision)
    keep = trainer.get("keep", "best")
    last_epoch = result.epochs_run
    history_at = {row["epoch"]: row for row in result.history}
    sel = f"{selection['column']}={result.best_value:.4f}"
    titles = {"best": (f"Test split: loss={picked.get('loss')} dataset={splits.name}, selected "
                       f"epoch {result.best_epoch} ({sel}, chosen on validation, not on test)"),
              "last": (f"Test split: loss={picked.get('loss')} dataset={splits.name}, last "
                       f"epoch {last_epoch} of {epochs} planned")}
    if corruption:
        titles = {at: f"{title}; {corruption}" for at, title in titles.items()}
    quiet = Console(quiet=True)

    # 5. test the selected weights and the last ones; `trainer.keep` picks the headline and
    # model.pt. Every rank predicts both (its share of the gathers), in the same order.
    best_state = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                  {k: v.detach().clone() for k, v in loss_fn.state_dict().items()})
    tested: dict[str, tuple[Any, dict[str, Any]]] = {}
    for at in ("best", "last"):
        if at == "last":
            if last_epoch == result.best_epoch:  # the same weights: the same predictions
                if dist.is_main:
                    tested["last"] = tested["best"]
                continue
            model.load_state_dict(result.last_state)
            loss_fn.load_state_dict(result.last_loss_state)
        if not dist.is_main:
            with amp:
                predict(model, splits, "test", head, trainer.eval_batch_size, device, loss_fn,
                        trainer.get("max_batches"))
            continue
        tested[at] = test_report(model, loss_fn, splits, head, trainer, device, amp,
                                 console if at == keep else quiet, titles[at])
    if keep == "best":
        model.load_state_dict(best_state[0])
        loss_fn.load_state_dict(best_state[1])
    if not dist.is_main:
        return float(result.best_value)
    pred, test = tested[keep]
    test_at = {at: {k: v for k, v in metrics.items() if k != "classification_report_text"}
               for at, (_, metrics) in tested.items()}
    write_csv_atomic(run_dir / "history.csv", result.history)
    save_torch_atomic(run_dir / "model.pt", model.state_dict())
    if loss_fn.state_dict():  # a loss's own layers or learned parameters, as kept
        save_torch_atomic(run_dir / "loss.pt", loss_fn.state_dict())

    flipped = splits.info.get("noise") and "flipped_memorised" in result.history[-1]
    memorised = None
    if flipped:
        memorised = {"flipped": int((splits.train.y != splits.train.y_clean).sum()),
                     **{at: {"memorised": history_at[epoch]["flipped_memorised"],
                             "true": history_at[epoch]["flipped_true"]}
                        for at, epoch in (("best", result.best_epoch), ("last", last_epoch))}}
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
    for line in notes:
        style = "[yellow]" if line.startswith("warning:") else ""
        console.print(f"{style}{line}", highlight=False, soft_wrap=True)
    # the lines the console shows besides the tables go to report.txt too (a sweep's console
    # shows one line per job: report.txt is where its job's report is read)
    params_line = loss_params_line(loss_fn)
    details = [robust_line(loss_fn, test)] if "robust_accuracy" in test else []
    details += [params_line] if params_line else []
    write_text_atomic(run_dir / "report.txt",
                      rep.report_text(splits.task, test, "test", titles[keep],
                                      [*details, *notes]))
    if trainer.get("plots", True):
        write_plots(run_dir, console, task=splits.task,
                    label=f"loss={picked.get('loss')} dataset={splits.name}"
                          f"{', ' + corruption if corruption else ''}",
                    history=result.history, monitor=selection["column"],
                    best_epoch=result.best_epoch, y_true=pred.y_true, y_pred=pred.y_pred,
                    scores=pred.scores, test_metrics=test)

    metrics: dict[str, Any] = {
        "status": "completed",
        "task": splits.task,
        "dataset": splits.name,
        "choices": picked,
        "seed": cfg.seed,
        "monitor": monitor,
        "mode": mode,
        "best_epoch": result.best_epoch,
        "best_val": result.best_value,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "wall_time_s": elapsed_before + time.perf_counter() - started,
        "num_outputs": num_outputs,
        "split_sizes": {"train": len(splits.train), "val": len(splits.val),
                        "test": len(pred.y_true)},
        "test": test_at[keep],  # the headline: the weights model.pt holds
        "test_at": test_at,
        "keep": keep,
        "last_epoch": last_epoch,
        "budget": {"epochs": epochs, "epochs_run": result.epochs_run,
                   "steps_run": result.steps_run,
                   "early_stopping": bool(trainer.early_stopping)},
        "selection": {k: v for k, v in selection.items() if k not in ("column", "tie_column")},
        "memorisation": memorised,
        "warnings": warnings,
        "pairing": pairing,
        "data": splits.info,
        "config": resolved_config(cfg),  # what a resumed sweep compares to skip this job
    }
    if head == "cosine":
        metrics["head"] = "cosine classifier (asked for by the loss)"
    if hasattr(loss_fn, "describe"):
        metrics["loss_description"] = loss_fn.describe()
    if hasattr(loss_fn, "report"):
        metrics["loss_params"] = loss_fn.report()
        if params_line:
            console.print(params_line, highlight=False)
    write_json_atomic(run_dir / "metrics.json", metrics)
    # a completed run is not resumed: model.pt keeps its best weights, the checkpoint (optimizer
    # moments, a second copy of the weights) would only take disk space in every run of a sweep
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    tracker.finish(run_dir, metrics)
    console.print(f"run directory: {run_dir}", highlight=False)
    log.info("completed: %s", {k: v for k, v in test.items() if isinstance(v, float)})
    return float(result.best_value)

"""Builders: what one run is made of, built from its config.

seeds and device → data (split, noise, imbalance, on the device) → loss → the model sized for
it → optimizer → scheduler. `lossbench eval` rebuilds the same parts from a saved config with
these functions, so that training and evaluation cannot disagree on them.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lossbench.data import RawData, Splits, prepare_data
from lossbench.data.prepare import dataset_arguments
from lossbench.engine.batches import epoch_order
from lossbench.engine.distributed import training_class_counts
from lossbench.engine.optim import Stepping, build_optimizer, scheduler_stepping
from lossbench.engine.predict import loader_options
from lossbench.errors import UserError
from lossbench.config.hydra_context import hydra_config
from lossbench.losses.base import declared_tasks, hook, needs_class_counts
from lossbench.models import with_cosine_head

# Keys of a dataset config that lossbench applies to any dataset; the rest go to its `_target_`.


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


def run_seeds(cfg: DictConfig) -> tuple[int, int]:
    """(data seed, train seed): `data_seed` draws the split, noise and imbalance, `train_seed`
    the initial weights, batch order and dropout; each falls back on `seed`."""
    data_seed, train_seed = cfg.get("data_seed"), cfg.get("train_seed")
    return (int(cfg.seed if data_seed is None else data_seed),
            int(cfg.seed if train_seed is None else train_seed))


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """A short hex digest of a state_dict's names, shapes, dtypes and values: equal for runs
    that start from the same weights (a paired comparison) whatever device they train on."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def order_hash(generator: torch.Generator, n_train: int) -> str:
    """The digest of the first epoch's sample order, drawn from a copy of the freshly seeded
    generator exactly as `engine.batches.train_batches` draws it (before any sharding)."""
    copy_ = torch.Generator(device=generator.device)
    copy_.set_state(generator.get_state())
    order = epoch_order(n_train, copy_).cpu()
    return hashlib.sha256(order.numpy().tobytes()).hexdigest()[:16]


def load_data(cfg: DictConfig) -> Splits:
    from hydra.errors import InstantiationException

    data_cfg = cfg.dataset
    try:
        # the loader's signature is checked against its config keys first (dataset_arguments)
        raw = instantiate(dataset_arguments(data_cfg))
    except InstantiationException as err:  # Hydra wraps what the loader raised
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise
    if not isinstance(raw, RawData):
        raise TypeError(f"dataset {data_cfg._target_} returned {type(raw).__name__}, not RawData")
    splits = prepare_data(raw, split=data_cfg.split, noise=data_cfg.get("noise"),
                          imbalance=data_cfg.get("imbalance"), scale=data_cfg.get("scale", True),
                          seed=run_seeds(cfg)[0], augment=data_cfg.get("augment"),
                          resample=data_cfg.get("resample"))
    splits.data_hash = raw.content_hash()
    return splits


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


def user_loss_options(task: str) -> list[str]:
    """Loss options from the user's own config folders (`--config-dir`) whose class declares
    that it fits `task`: the shipped catalogue cannot know them. Outside Hydra: none."""
    runtime = hydra_config()
    if runtime is None:
        return []
    import yaml

    from lossbench.config.catalogue import import_target

    found = []
    for source in runtime.runtime.config_sources:
        if source.schema != "file":  # the packaged configs and Hydra's own
            continue
        folder = os.path.join(source.path.removeprefix("file://"), "loss")
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not entry.endswith(".yaml"):
                continue
            with open(os.path.join(folder, entry), encoding="utf-8") as file:
                target = (yaml.safe_load(file) or {}).get("_target_")
            try:
                tasks = declared_tasks(import_target(target)) if target else None
            except (ImportError, AttributeError, ValueError):  # a broken option is not a hint
                continue
            if tasks is not None and task in tasks:
                found.append(entry[:-len(".yaml")])
    return found


def check_loss_fits(loss_fn: torch.nn.Module, loss_name: str, splits: Splits) -> None:
    """Refuse a loss that declares tasks (the loss contract's `tasks`) other than the data's,
    naming the losses that fit: the shipped ones and those of the user's config folders."""
    tasks = declared_tasks(loss_fn)
    if tasks is None or splits.task in tasks:
        return
    from lossbench.config.catalogue import losses_for_task

    fitting = losses_for_task(splits.task)
    fitting += [name for name in user_loss_options(splits.task) if name not in fitting]
    raise UserError(f"loss={loss_name} does not fit the {splits.task} task of dataset "
                    f"{splits.name}; losses that do: {', '.join(fitting)}")


def replaced_targets() -> set[str]:
    """The config groups whose `_target_` the command line replaced (`loss._target_=
    mylosses.SquaredHingeLoss` gives {"loss"}): their option's name no longer says what runs."""
    runtime = hydra_config()
    if runtime is None:
        return set()
    keys = (o.lstrip("+~").split("=", 1)[0] for o in runtime.overrides.task)
    return {key.removesuffix("._target_") for key in keys if key.endswith("._target_")}


def loss_name(cfg: DictConfig, option: str) -> str:
    """How messages name the loss (`loss=<name>`): its option (`ce`), or, when `loss._target_`
    was overridden on the command line, the class put in the option's place
    (`mylosses.SquaredHingeLoss`): the option's name would point at the wrong loss."""
    return str(cfg.loss._target_) if "loss" in replaced_targets() else option


def output_size(head: str, splits: Splits, embedding_dim: int) -> int:
    """How many outputs the model needs for this loss head on this data."""
    if head == "embedding":
        return embedding_dim
    if splits.task == "regression":
        return 1
    if head == "sigmoid" and splits.task == "binary":
        return 1
    return splits.num_classes


def build_loss_and_model(cfg: DictConfig, splits: Splits, device: torch.device, loss_name: str
                         ) -> tuple[torch.nn.Module, torch.nn.Module, str, int]:
    """(loss, model sized for its head on this data, head, number of outputs), on device."""
    loss_fn = instantiate(cfg.loss)
    check_loss_fits(loss_fn, loss_name, splits)
    # layers the loss owns, sized by the data (mixed's classifier)
    hook(loss_fn, "setup")(splits.task, splits.num_classes)
    if needs_class_counts(loss_fn):  # before the first step (lossbench/losses/base.py)
        if splits.task == "regression":
            raise UserError(f"loss={loss_name} needs the class counts of the training split, "
                            f"but dataset {splits.name} is a regression task")
        loss_fn.set_class_counts(training_class_counts(splits.train.y, splits.num_classes))
    head = hook(loss_fn, "head")
    num_outputs = output_size(head, splits, cfg.embedding_dim)
    model = instantiate(cfg.model, input_shape=list(splits.sample_shape), num_outputs=num_outputs)
    if head == "cosine":  # the loss asks for a cosine classifier as the last layer (LDAM)
        model = with_cosine_head(model)
    model.to(device)
    loss_fn.to(device)
    return loss_fn, model, head, num_outputs


def build_training_optimizer(cfg: DictConfig, model: torch.nn.Module, loss_fn: torch.nn.Module
                             ) -> torch.optim.Optimizer:
    """The optimizer over the model's and the loss's own parameters (learnable losses)."""
    params = list(model.parameters()) + list(loss_fn.parameters())
    # `_partial_` factory: a wrong or invalid argument shows only when it is called
    return build_optimizer(instantiate(cfg.optimizer), cfg.optimizer._target_, params)


@dataclass
class Schedule:
    """A learning-rate scheduler and when the loop steps it: after every `batch` (one-cycle
    schedules, sized in steps), every `epoch`, or every epoch on the validation loss
    (`metric`: ReduceLROnPlateau). `scheduler` None: a constant learning rate."""

    scheduler: Any = None
    steps: Stepping = "epoch"


# LOSSBENCH_SMOKE=1 (CI, the README's own test): every run, sweep job and study trial trains
# at most SMOKE_LIMIT epochs of at most SMOKE_LIMIT batches per split, whatever its command
# says, so that commands are checked exactly as a user types them.
SMOKE_ENV = "LOSSBENCH_SMOKE"
SMOKE_LIMIT = 2


def smoke_limits(epochs: int, max_batches: int | None) -> dict[str, int]:
    """The budget under LOSSBENCH_SMOKE=1: `epochs` (already resolved from `auto`) and
    `max_batches` capped at SMOKE_LIMIT; {} when the variable is unset or 0."""
    if os.environ.get(SMOKE_ENV, "0") in ("", "0"):
        return {}
    return {"epochs": min(epochs, SMOKE_LIMIT),
            "max_batches": min(max_batches or SMOKE_LIMIT, SMOKE_LIMIT)}


def scheduler_config(cfg: DictConfig, epochs: int) -> DictConfig:
    """`cfg.scheduler` resolved against the run's planned budget: an interpolation such as
    cosine's `T_max: ${trainer.epochs}` reads the number of epochs the run trains (`prepare`
    resolves `epochs: auto` first), never the word `auto`."""
    planned = copy.deepcopy(cfg)
    with open_dict(planned):
        planned.trainer.epochs = int(epochs)
    return OmegaConf.create(OmegaConf.to_container(planned.scheduler, resolve=True))


def build_scheduler(scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> Schedule:
    """The scheduler of `scheduler_cfg` (a `_partial_` factory) on `optimizer`.

    Its class decides how it is built and stepped: one that steps per batch is told the run's
    `total_steps` (batches per epoch × planned epochs). A `_target_` that is a function rather
    than a class is classified by what it returns."""
    if not scheduler_cfg.get("_target_"):
        return Schedule()
    factory = instantiate(scheduler_cfg)
    made = factory.func if isinstance(factory, functools.partial) else factory
    try:
        if isinstance(made, type):
            steps = scheduler_stepping(made)
            scheduler = (factory(optimizer, total_steps=total_steps) if steps == "batch"
                         else factory(optimizer))
        else:
            scheduler = factory(optimizer)
            steps = scheduler_stepping(type(scheduler))
    except (TypeError, ValueError) as err:
        raise UserError(f"scheduler ({scheduler_cfg._target_}): {err}") from err
    return Schedule(scheduler, steps)

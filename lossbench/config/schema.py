"""Typed schemas of lossbench's config, so that mistakes stop the run before any work.

Two layers:
- dataclasses registered in Hydra's ConfigStore as `lossbench_schema`, the first entry of
  `conf/config.yaml`'s defaults list. Every YAML file and command-line override is merged onto
  them, so a misspelt key (`trainer.epohcs=3`) or a wrong type (`trainer.epochs=abc`) fails at
  composition, with the key's full name;
- `check_config(cfg)`: values that have the right type but cannot work (`trainer.epochs=0`,
  `optimizer.lr=-1`, split fractions summing over 1, ...) raise `UserError` before data is read.

Typed: the root keys, the whole `trainer` group (closed: every key is declared here) and
`dataset.split`. The other groups (dataset, model, loss, optimizer, scheduler, logger) take any
keys, since each option maps onto its own `_target_`'s arguments; the root stays open while the
YAML files are merged, so config groups may add root keys, and Hydra closes it before the
command-line overrides (an unknown key then needs `+key=value`).

Nothing here imports torch: `lossbench train trainer.epochs=0` answers at Hydra's speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING

from lossbench.errors import UserError, unknown_key_hint

# The trainer's defaults have one home: conf/trainer/default.yaml, the file a user reads (each key
# documented beside its value), overrides and builds on (trainer=smoke). Here each key only has
# its type; MISSING makes the YAML the sole source of values, and a key declared here without a
# value there fails tests/test_trainer_defaults.py. The schema is closed: a key added to
# conf/trainer/*.yaml must be declared here too.


@dataclass
class TrainerConfig:
    """`trainer`: how long and how to train (conf/trainer/default.yaml documents each key)."""

    epochs: Any = MISSING  # auto or a count (OmegaConf has no Union[int, str])
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    device: str = MISSING
    devices: int = MISSING
    precision: str = MISSING  # 32, bf16 or 16
    compile: bool = MISSING
    num_workers: Any = MISSING  # auto or a count
    threads: Any = MISSING  # auto or a count (lossbench/engine/threads.py)
    grad_clip: Optional[float] = MISSING
    early_stopping: bool = MISSING
    monitor: str = MISSING
    mode: str = MISSING
    patience: int = MISSING
    min_steps: int = MISSING
    keep: str = MISSING  # best | last
    select_on: str = MISSING  # noisy | clean
    deterministic: bool = MISSING
    max_batches: Optional[int] = MISSING
    checkpoint_interval_s: float = MISSING
    checkpoint_every: int = MISSING
    plots: bool = MISSING


@dataclass
class SplitConfig:
    """`dataset.split`: fractions of the samples in each split (the rest is left unused)."""

    train: float = 0.6
    val: float = 0.2
    test: float = 0.2


def _dataset_defaults() -> dict[str, Any]:
    # `dataset` itself stays an open mapping (each dataset has its own arguments); only its
    # `split` is typed.
    return {"split": SplitConfig()}


@dataclass
class RootConfig:
    """The root of lossbench's config: its typed keys and the groups under it."""

    seed: int = 0
    # The seed of the split, label noise and imbalance (null: `seed`) ...
    data_seed: Optional[int] = None
    # ... and of the initial weights, batch order and dropout (null: `seed`).
    train_seed: Optional[int] = None
    embedding_dim: int = 32
    print_config: bool = True
    # A run directory to continue from its checkpoint (see lossbench/engine/checkpoint.py).
    resume: Optional[str] = None
    dataset: Any = field(default_factory=_dataset_defaults)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


TRAINER_KEYS = frozenset(f.name for f in fields(TrainerConfig))


def register_schemas() -> None:
    """Store the root schema as `lossbench_schema` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(RootConfig)
    # Open while the defaults list is merged (groups may add root keys such as `logger`);
    # Hydra sets the root to struct mode before it applies the command-line overrides.
    OmegaConf.set_struct(node, False)
    ConfigStore.instance().store(name="lossbench_schema", node=node)
    # `${coalesce:${data_seed},${seed}}`: the first value that is not null (a dataset generated
    # from a seed follows data_seed when it is set)
    if not OmegaConf.has_resolver("coalesce"):
        OmegaConf.register_new_resolver(
            "coalesce", lambda *values: next((v for v in values if v is not None), None))


# The root keys something reads: the schema's, the config groups of conf/config.yaml's defaults
# list, and run_dir (where a run writes, set by `resume=`, `lossbench study` and tests).
GROUPS = ("dataset", "model", "loss", "optimizer", "scheduler", "trainer", "logger")
ROOT_KEYS = tuple(dict.fromkeys([f.name for f in fields(RootConfig)] + list(GROUPS)
                                 + ["run_dir"]))
# dataset mappings that lossbench reads itself (data.prepare): their keys are the ones
# conf/config.yaml declares
PREPARED_MAPPINGS = ("noise", "imbalance", "augment")


def _first_leaf(key: str, node: Any) -> str:
    """`optimzer` holding {lr: 0.1} -> "optimzer.lr": the key as it was typed."""
    while hasattr(node, "keys") and len(node):
        child = next(iter(node.keys()))
        key, node = f"{key}.{child}", node[child]
    return key


def _declared_dataset_keys() -> dict[str, list[str]]:
    import yaml

    from lossbench.config.catalogue import conf_dir

    root = yaml.safe_load((conf_dir() / "config.yaml").read_text(encoding="utf-8"))
    return {name: list(root["dataset"][name]) for name in PREPARED_MAPPINGS}


def check_keys_are_read(cfg: Any) -> None:
    """A key that nothing reads is a mistake, not a no-op: Hydra's hint for a misspelt key is to
    add it with `+`, after which `+optimzer.lr=0.1` ran with the default learning rate. Keys of
    a config with a `_target_` go to its constructor, which refuses one it does not take (a
    dataset's, to its loader: `data.prepare.dataset_arguments`); trainer and dataset.split are
    checked against the schema; here: the root, the groups set to none, and the dataset's
    noise, imbalance and augment."""
    for key in cfg:
        if key not in ROOT_KEYS:
            typed = _first_leaf(str(key), cfg[key])
            hint = unknown_key_hint(str(key), ROOT_KEYS[:-1], typed)  # run_dir: internal
            raise UserError(f"{typed}: nothing in lossbench reads this key"
                            + (f"; {hint}" if hint else ""))
    for group in GROUPS:
        node = cfg.get(group)
        if hasattr(node, "keys") and "_target_" in node and node.get("_target_") is None:
            extra = [str(k) for k in node if k != "_target_"]
            if extra:
                raise UserError(f"{group}.{extra[0]}: {group}=none reads no settings; choose a "
                                f"{group} (lossbench list {group}s)")
    dataset = cfg.get("dataset")
    if not hasattr(dataset, "keys"):
        return
    declared = None
    for name in PREPARED_MAPPINGS:
        node = dataset.get(name)
        if not hasattr(node, "keys"):
            continue
        declared = declared or _declared_dataset_keys()
        for key in node:
            if key not in declared[name]:
                hint = unknown_key_hint(f"dataset.{name}.{key}", declared[name])
                raise UserError(f"dataset.{name}.{key}: nothing in lossbench reads this key"
                                + (f"; {hint}" if hint else ""))


def _positive_int(value: Any, name: str, minimum: int = 1) -> None:
    if value < minimum:
        raise UserError(f"{name}={value} must be at least {minimum}")


def _check_optimizer(optimizer: Any) -> None:
    """Hyperparameters every torch optimizer shares: no negative learning rate, weight decay or
    momentum (lr=0 is allowed: frozen weights, a baseline). The optimizer itself checks the rest
    when it is built."""
    if optimizer is None:
        return
    for key, low, strict in (("lr", 0.0, False), ("weight_decay", 0.0, False),
                             ("momentum", 0.0, False)):
        value = optimizer.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"optimizer.{key}={value} must be a number")
        if math.isnan(value) or value < low or (strict and value == low):
            relation = "greater than" if strict else "at least"
            raise UserError(f"optimizer.{key}={value} must be {relation} {low:g}")


def check_config(cfg: Any, saved: bool = False) -> None:
    """Raise `UserError` for keys nothing reads (`check_keys_are_read`), values of the right
    type that cannot work, and a dataset config its loader cannot take
    (`data.prepare.dataset_arguments`). Runs before any data is read or model built; the
    monitor is checked against the task once the data is loaded
    (`engine.selection.resolve_monitor`). saved: a finished run's own config (`eval`), whose
    keys an older lossbench may have read."""
    if not saved:
        check_keys_are_read(cfg)
    trainer = cfg.trainer
    for key in trainer:  # `+trainer.key=...` adds a key the schema does not know
        if key not in TRAINER_KEYS:
            hint = unknown_key_hint(f"trainer.{key}", [f.name for f in fields(TrainerConfig)])
            raise UserError(f"trainer.{key} is not a trainer setting; {hint}")
    if trainer.epochs != "auto":
        if isinstance(trainer.epochs, bool) or not isinstance(trainer.epochs, int):
            raise UserError(f"trainer.epochs={trainer.epochs} must be auto or a whole number")
        _positive_int(trainer.epochs, "trainer.epochs")
    _positive_int(trainer.min_steps, "trainer.min_steps", minimum=0)
    if trainer.keep not in ("best", "last"):
        raise UserError(f"trainer.keep={trainer.keep} must be best or last")
    if trainer.select_on not in ("noisy", "clean"):
        raise UserError(f"trainer.select_on={trainer.select_on} must be noisy or clean")
    _positive_int(trainer.batch_size, "trainer.batch_size")
    _positive_int(trainer.eval_batch_size, "trainer.eval_batch_size")
    _positive_int(trainer.patience, "trainer.patience")
    _positive_int(trainer.devices, "trainer.devices")
    _positive_int(trainer.checkpoint_every, "trainer.checkpoint_every", minimum=0)
    interval = trainer.get("checkpoint_interval_s", 0)
    if not interval >= 0 or math.isinf(interval):
        raise UserError(f"trainer.checkpoint_interval_s={interval} must be a number of seconds "
                        "of at least 0 (0: no checkpoints on a clock)")
    if trainer.max_batches is not None:
        _positive_int(trainer.max_batches, "trainer.max_batches")
    if trainer.grad_clip is not None and not trainer.grad_clip > 0:
        raise UserError(f"trainer.grad_clip={trainer.grad_clip} must be greater than 0 (or null "
                        "for no clipping)")
    if trainer.mode not in ("auto", "min", "max"):
        raise UserError(f"trainer.mode={trainer.mode} must be auto, min or max")
    threads = trainer.get("threads", "auto")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int)
                              or threads < 1):
        raise UserError(f"trainer.threads={threads} must be auto or a count of at least 1")
    workers = trainer.num_workers
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int)
                              or workers < 0):
        raise UserError(f"trainer.num_workers={workers} must be auto or a count of at least 0")
    _positive_int(cfg.embedding_dim, "embedding_dim")
    split = cfg.dataset.get("split") if cfg.get("dataset") is not None else None
    if split is not None:
        if not hasattr(split, "keys") or set(split.keys()) != {"train", "val", "test"}:
            raise UserError(f"dataset.split={split} must be a mapping of train, val and test "
                            "fractions, e.g. dataset.split.train=0.7 dataset.split.val=0.1")
    _check_optimizer(cfg.get("optimizer"))
    # last: the data layer's checks import torch with it, which the checks above spare
    if split is not None:
        from lossbench.data.split import check_split

        check_split(split.train, split.val, split.test)
    dataset = cfg.get("dataset")
    if dataset is not None and dataset.get("_target_"):
        from lossbench.data.prepare import dataset_arguments

        dataset_arguments(dataset)  # a loader that cannot take its config: UserError now

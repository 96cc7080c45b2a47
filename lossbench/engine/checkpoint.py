"""Checkpoints of a run in progress, from which a stopped run continues.

`checkpoint.pt` (in the run directory) holds everything needed to continue a run so that it
ends exactly as if it had never stopped (bit for bit on CPU):
- `model`, `loss` (learnable losses), `optimizer`, `scheduler`: their `state_dict()`s;
- `loop`: the training loop's own state (`engine.loop.fit`): the epoch in progress and how many of its
  batches are done, their losses, the history, the best weights so far, early stopping's count,
  the RNG states at the start of that epoch (its data order) and at the moment of saving;
- `config`: the resolved config and the config-group choices the run was composed from: the
  run's identity, which `resume_state` checks against the run directory's own record;
- `data_hash`: the digest of the data as loaded (`RawData.content_hash`), which
  `check_same_data` compares with the data a resumed run loads;
- `elapsed_s`: training time spent before the checkpoint.

When: `CheckpointClock` says when a periodic checkpoint is due (every
`trainer.checkpoint_interval_s` seconds of training, or every `trainer.checkpoint_every` epochs);
one is always written when a stop signal (Ctrl-C, SIGTERM, SIGHUP, ...: `engine.signals`) stops
the run in training, and when the loss diverges the state
at the end of the last good epoch is written (kept in memory meanwhile, `training_states`).

Only tensors, numbers, strings, lists, tuples and dicts go in, so the file loads with
`torch.load(..., weights_only=True)`: loading a checkpoint can never run code (a crafted pickle
is refused, see `load_checkpoint`). Written atomically: a crash while saving leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Callable
from pathlib import Path
from time import monotonic
from typing import Any

import numpy as np
import torch

from lossbench.errors import UserError
# stopping on a signal lives in engine/signals.py (no torch there); importable from here too
from lossbench.engine.signals import EXTRA_STOP_SIGNALS, StopOnSignal  # noqa: F401
from lossbench.results.files import save_torch_atomic
from lossbench.results.record import CHECKPOINT, metrics_path, read_metrics

FORMAT = 1  # bumped when the layout changes; an older file is refused with a clear message


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random number generator a run draws from: Python's, NumPy's, torch's (CPU and each
    CUDA device) and the run's own data-order `generator`."""
    np_state = np.random.get_state()  # ('MT19937', key (624,) uint32, pos, has_gauss, gauss)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put every generator back where `capture_rng` found it."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointClock:
    """When the periodic checkpoint is due, asked at the end of each epoch.

    Due once `interval_s` seconds have passed since the last checkpoint (0: never by time), and
    after every `every`-th epoch (0: never by count). The interval is stretched to at least
    `1 / max_cost` times what the last checkpoint took to write, so that writing checkpoints
    never costs more than that fraction of the run (a model whose checkpoint takes 3 s is saved
    every 150 s at most, not every 60 s). `now` is the clock (tests pass a fake one).
    """

    def __init__(self, interval_s: float = 0.0, every: int = 0, max_cost: float = 0.02,
                 now: Callable[[], float] | None = None) -> None:
        self.interval_s, self.every, self.max_cost = float(interval_s or 0), int(every or 0), max_cost
        self.now = now or monotonic
        self.last = self.now()  # the run's start counts as a checkpoint: nothing to lose yet
        self.cost = 0.0  # seconds the last checkpoint took to write

    def due(self, epoch: int) -> bool:
        if self.every and epoch % self.every == 0:
            return True
        if not self.interval_s:
            return False
        return self.now() - self.last >= max(self.interval_s, self.cost / self.max_cost)

    def save(self, write: Callable[..., None], *args: Any) -> None:
        """Call `write(*args)`, timing it; the next interval starts when it ends."""
        start = self.now()
        write(*args)
        self.last = self.now()
        self.cost = self.last - start


def training_states(model: torch.nn.Module, loss_fn: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, clone: bool = False
                    ) -> dict[str, Any]:
    """The `state_dict()`s a checkpoint holds; `clone=True` copies them (tensors included), to
    keep the last good state in memory while training goes on changing the live ones."""
    states = {"model": model.state_dict(), "loss": loss_fn.state_dict(),
              "optimizer": optimizer.state_dict(),
              "scheduler": scheduler.state_dict() if scheduler is not None else None}
    return _copy_tree(states) if clone else states


def _copy_tree(node: Any) -> Any:
    """Tensors cloned, dicts, lists and tuples rebuilt, anything else shared. It runs after
    every epoch: 65 µs for digits' MLP with Adam, where copy.deepcopy takes 350 µs (6 % of the
    epoch)."""
    if isinstance(node, torch.Tensor):
        return node.detach().clone()
    if isinstance(node, dict):
        return {k: _copy_tree(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(_copy_tree(v) for v in node)
    return node


def save_checkpoint(path: str | Path, *, model: torch.nn.Module, loss_fn: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, loop: dict[str, Any],
                    config: dict[str, Any], choices: dict[str, str], elapsed_s: float,
                    sync: bool = True, states: dict[str, Any] | None = None,
                    data_hash: str = "", extra: dict[str, Any] | None = None) -> None:
    """Write checkpoint.pt atomically (a temporary file renamed into place), from the live
    modules or from `states` kept earlier (`training_states`). Periodic checkpoints pass
    `sync=False`: flushing to the disk costs several times the write itself, and a process
    crash leaves the old file or the new one either way. `extra`: plain keys besides (a
    stacked group's `unlogged_from`: the first history row no log has seen)."""
    save_torch_atomic(path, {
        "format": FORMAT,
        **(states or training_states(model, loss_fn, optimizer, scheduler)),
        "loop": loop,
        "config": config,
        "choices": choices,
        "elapsed_s": elapsed_s,
        "data_hash": data_hash,
        **(extra or {}),
    }, sync=sync)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; anything that is not a lossbench checkpoint
    (a file that would run code when unpickled, a truncated or foreign file) is a UserError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: nothing to resume from") from None
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):  # it holds objects besides plain data
            raise UserError(f"{path} is refused: it holds objects that would run code when "
                            "loaded, so it is not a lossbench checkpoint") from None
        raise UserError(f"{path} cannot be read as a checkpoint; it may be truncated or from "
                        "another program") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:160]
        raise UserError(f"{path} cannot be read as a checkpoint ({reason}); it may be truncated "
                        "or from another program") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a lossbench checkpoint of format {FORMAT}")
    return state


def check_writable_run(run_dir: str | Path) -> None:
    """A run to continue is one this user may write: the resumed run goes on writing there (its
    lock, log, checkpoints, results). A UserError naming `resume=` before training, else."""
    run_dir = Path(run_dir)
    for path in (run_dir, run_dir / "train.log"):
        if path.exists() and not os.access(path, os.W_OK):
            raise UserError(f"resume={run_dir}: {path} is read-only for this user, and the "
                            "resumed run writes there; make it writable (chmod u+w) or copy the "
                            "run directory elsewhere and resume the copy")


def resume_state(run_dir: str | Path) -> dict[str, Any]:
    """The checkpoint of a run that can be continued: it stopped (interrupted, or killed before
    metrics.json), it did not complete or diverge."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"resume={run_dir}: no such run directory")
    try:  # a record of a newer schema: its UserError goes up
        metrics = read_metrics(run_dir) or {}
    except ValueError:  # not a record (not JSON, not an object): nothing says it ended
        metrics = {}
    status = metrics.get("status")
    if status == "completed":
        raise UserError(f"resume={run_dir}: this run has completed already; nothing to continue")
    # a sweep records a diverged job as failed, keeping "stopped": "diverged"
    if "diverged" in (status, metrics.get("stopped")):
        raise UserError(f"resume={run_dir}: this run diverged, and continuing it would diverge "
                        "again; start a new run with a lower optimizer.lr or trainer.grad_clip")
    if not (run_dir / CHECKPOINT).is_file():
        raise UserError(f"resume={run_dir}: no {CHECKPOINT} in it (checkpoints are written every "
                        "trainer.checkpoint_interval_s seconds of training and on Ctrl-C)")
    check_writable_run(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT)
    check_identity(run_dir, state, metrics)
    return state


def run_dir_identity(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    """(where, the resolved config) the run directory says it ran: its record's `config`, else
    Hydra's `.hydra/config.yaml`; None when neither can be read."""

    from lossbench.results.record import resolved_config

    saved = run_dir / ".hydra" / "config.yaml"
    try:
        from omegaconf import OmegaConf

        return str(saved), resolved_config(OmegaConf.load(saved))
    except Exception:  # absent, damaged, or an interpolation only Hydra resolves
        return None


def check_identity(run_dir: Path, state: dict[str, Any], metrics: dict[str, Any]) -> None:
    """UserError unless the checkpoint belongs to the run of run_dir: its config equals the one
    the directory's record (metrics.json) and Hydra's config (.hydra/config.yaml) say ran there.
    A checkpoint copied from another run would otherwise train that other run under this one's
    name."""
    config = state.get("config")
    recorded = [(str(metrics_path(run_dir)), metrics.get("config"))]
    recorded.append(run_dir_identity(run_dir) or ("", None))
    for where, other in recorded:
        if not isinstance(other, dict) or config == other:
            continue
        # the top-level keys first (seed), then the groups' (loss._target_)
        differ = sorted(differing_keys(config or {}, other), key=lambda k: (k.count("."), k))
        shown = ", ".join(f"{k}: {_value(config, k)} in the checkpoint, {_value(other, k)} in "
                          f"{Path(where).name}" for k in differ[:3])
        raise UserError(f"resume={run_dir}: its {CHECKPOINT} is of another run than the one "
                        f"{where} records ({shown}{', ...' if len(differ) > 3 else ''}); "
                        "resume refuses to mix two runs")


def differing_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    keys = []
    for key in dict.fromkeys([*a, *b]):
        x, y = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(x, dict) and isinstance(y, dict):
            keys += differing_keys(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(f"{prefix}{key}")
    return keys


def _value(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part, "<absent>") if isinstance(config, dict) else "<absent>"
    return config


def check_same_data(state: dict[str, Any], data_hash: str, run_dir: str | Path) -> None:
    """UserError when the data loaded now is not the data the checkpoint was trained on (a
    file changed under an interrupted run): the result would mix two datasets. Checkpoints
    written before the hash was recorded pass."""
    saved = state.get("data_hash")
    if saved and data_hash and saved != data_hash:
        raise UserError(f"resume={run_dir}: the data changed since {CHECKPOINT} was written "
                        f"(its digest was {saved}, the data loaded now gives {data_hash}); "
                        "continuing would mix two datasets: start a new run instead")


def resume_point(state: dict[str, Any]) -> str:
    """Where a checkpoint goes on: "epoch 4", or "epoch 4, step 3" inside an epoch."""
    loop = state["loop"]
    return f"epoch {loop['epoch']}" + (f", step {loop['batch'] + 1}" if loop["batch"] else "")

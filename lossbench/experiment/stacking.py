"""Which jobs of a sweep can train together as stacked replicas, and the line the sweep prints
for each group (docs/replicas.md, "Which jobs stack").

Jobs that differ only in what each replica of one stacked model can keep as its own (its
seeds, its loss, its label noise, its optimizer and scheduler settings: `MAY_DIFFER`) can
train as one model whose parameters have a leading replica axis. Before anything trains:

- `stack_key(cfg)`: a job's resolved config less `MAY_DIFFER`, plus what its loss asks the
  model to output; jobs of equal keys stack. The list names what *may* differ, so a config key
  added later must be equal until someone says otherwise;
- `group_jobs(jobs, configs, ...)`: the sweep's jobs as `Group`s, each stacked (two or more
  jobs, cut to a cap) or one job alone with why; `Group.line()` is what the sweep prints:

      lossbench: 10 jobs stacked: loss × seed (jobs 0-9)
      lossbench: job 10 runs alone: loss adversarial needs the model

- `replicas_that_fit`: the automatic cap, from `replica_bytes` against the memory available.

Training a group is the engine's (lossbench/engine/replicas.py); a launcher joins the two.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lossbench.results.record import resolved_config

# What may differ between the replicas of one group, as dotted keys of the resolved config:
# each is left out of the stack key with everything under it; `x.*` leaves out everything
# under `x` but how it is built, `_target_` and `_partial_` (one optimizer class, one
# scheduler class per group, their settings per replica). Every other key must be equal, a
# key added later included.
MAY_DIFFER = (
    "seed", "data_seed", "train_seed",  # each replica its own generators (run_seeds)
    "loss",  # each replica its own loss module (the model output it needs: in the key)
    "dataset.noise",  # each replica its own noisy labels, as many as the others
    "optimizer.*", "scheduler.*",  # per-replica settings, tensors of shape (R,)
    "trainer.grad_clip",  # each replica's own global norm
    # early stopping and selection, per replica (not min_steps: it sets `epochs: auto`)
    "trainer.early_stopping", "trainer.monitor", "trainer.mode", "trainer.patience",
    "trainer.keep", "trainer.select_on",
    # what is written, not what is trained
    "trainer.plots", "logger", "print_config",
)

LINE_WIDTH = 80  # a terminal's; a group's job numbers are cut to fit it
# Replicas take at most this share of the memory available: the estimate leaves out the data
# (shared by the group), evaluation batches, the allocator's slack and cuDNN's workspaces.
MEMORY_SHARE = 0.5


def _leave_out(config: dict[str, Any], name: str) -> None:
    *parents, last = name.split(".")
    node: Any = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return
    if last == "*":
        for key in [k for k in node if k not in ("_target_", "_partial_")]:
            del node[key]
    else:
        node.pop(last, None)


def loss_head(cfg: DictConfig) -> str:
    """The head the job's loss asks of the model (`logits`, `sigmoid`, `embedding`, `cosine`).
    The loss is built (no data needed): some set their head from their parts (mixed)."""
    from hydra.utils import instantiate

    from lossbench.losses.base import hook

    return str(hook(instantiate(cfg.loss), "head"))


def model_outputs(head: str, task: str | None) -> str:
    """What the model must output for this head: K class scores for `logits` and `sigmoid`
    alike, but on binary data two logits against one sigmoid logit; a task not known
    (None) keeps the two apart."""
    if head in ("logits", "sigmoid") and task not in (None, "binary"):
        return "scores"  # K of them either way (one on regression data)
    return head


def stack_key(cfg: DictConfig, task: str | None = None) -> str:
    """What every job of a group shares: the job's resolved config less `MAY_DIFFER`, with
    what its loss asks the model to output (`model_outputs` on the data's `task`, where the
    caller knows it); a JSON string, so that keys compare and hash."""
    config = resolved_config(cfg)
    for name in MAY_DIFFER:
        _leave_out(config, name)
    config["(model outputs)"] = model_outputs(loss_head(cfg), task)
    return json.dumps(config, sort_keys=True, default=str)


def override_values(job: Sequence[str]) -> dict[str, str | None]:
    """{key: value} of a job's overrides as the sweep lists them (`+key=v` and `~key` under
    `key`; a deletion has no value)."""
    pairs: dict[str, str | None] = {}
    for override in job:
        key, sign, value = override.partition("=")
        pairs[key.lstrip("+~")] = value if sign else None
    return pairs


def varied_keys(jobs: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """The override keys whose values differ between these jobs, in the order the sweep names
    them: `('loss', 'seed')` for `loss=ce,gce seed=0,1,2,3,4`."""
    pairs = [override_values(job) for job in jobs]
    keys = dict.fromkeys(key for one in pairs for key in one)
    return tuple(key for key in keys if len({one.get(key) for one in pairs}) > 1)


def loss_label(job: Sequence[str], cfg: DictConfig) -> str:
    """The loss as the user named it: its option (`adversarial`), else its class's name."""
    return override_values(job).get("loss") or str(cfg.loss._target_).rpartition(".")[2]


def alone_reason(job: Sequence[str], cfg: DictConfig,
                 refuse: Callable[[DictConfig], str | None] | None = None) -> str | None:
    """Why this job cannot be a replica whatever the other jobs are; None when it can be one.
    `refuse(cfg)`: the engine's own refusals (a layer it cannot stack), one clause or None."""
    from lossbench.config.catalogue import import_target
    from lossbench.errors import error_line
    from lossbench.losses.base import hook

    name = loss_label(job, cfg)
    try:
        loss_class = import_target(str(cfg.loss._target_))
        loss_head(cfg)  # a loss that cannot be built fails its own run, not its group's
    except Exception as err:
        return f"loss {name} cannot be built ({error_line(err)})"
    # hook 5 trains through the model itself, hook 7 attacks it: not one loss per replica
    if hook(loss_class, "model_loss") is not None or hook(loss_class, "attack") is not None:
        return f"loss {name} needs the model"
    devices = int(cfg.trainer.get("devices") or 1)
    if devices > 1:
        return f"trainer.devices={devices} trains on several processes"
    return refuse(cfg) if refuse is not None else None


@dataclass(frozen=True)
class Group:
    """Jobs of a sweep that train together: their numbers (as the sweep numbers them, in its
    order) and the override keys they differ in; or one job alone, `alone` saying why."""

    jobs: tuple[int, ...]
    varies: tuple[str, ...] = ()
    alone: str | None = None

    @property
    def stacked(self) -> bool:
        return self.alone is None

    def line(self) -> str:
        """`lossbench: 10 jobs stacked: loss × seed (jobs 0-9)`, or `lossbench: job 7 runs
        alone: loss adversarial needs the model`."""
        if self.alone is not None:
            return f"lossbench: job {self.jobs[0]} runs alone: {self.alone}"
        along = f": {' × '.join(self.varies)}" if self.varies else ""
        start = f"lossbench: {len(self.jobs)} jobs stacked{along} (jobs "
        return f"{start}{job_ranges(self.jobs, LINE_WIDTH - len(start) - 1)})"


def job_ranges(numbers: Sequence[int], width: int | None = None) -> str:
    """`0-4, 7, 9, 10` for job numbers in the sweep's order; longer than `width` characters,
    the numbers that fit and `…`."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    parts: list[str] = []
    for first, last in runs:
        parts += ([f"{first}-{last}"] if last > first + 1
                  else [str(first)] + ([str(last)] if last > first else []))
    if width is not None and len(", ".join(parts)) > width:
        while len(parts) > 1 and len(", ".join(parts)) + len(", …") > width:
            parts.pop()
        parts.append("…")
    return ", ".join(parts)


def _cut(numbers: list[int], cap: int) -> list[list[int]]:
    """`numbers` in runs of at most `cap`; 4+4+1 becomes 4+3+2, leaving no job alone."""
    chunks = [numbers[i:i + cap] for i in range(0, len(numbers), cap)]
    if len(chunks) > 1 and len(chunks[-1]) == 1 and cap > 2:
        chunks[-1].insert(0, chunks[-2].pop())
    return chunks


def group_jobs(jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig],
               max_replicas: int | None = None,
               refuse: Callable[[DictConfig], str | None] | None = None,
               fits: Callable[[DictConfig], int | None] | None = None,
               task: Callable[[DictConfig], str | None] | None = None) -> list[Group]:
    """A sweep's jobs (their overrides, as `sweep_checks.planned_jobs` gives them) and their
    configs (resolved, less `hydra`: `job_configs`) as groups in the order of their first job.

    A group holds the jobs of one `stack_key`, cut into runs of at most the cap: the smaller
    of `max_replicas` (the user's) and `fits(cfg)` (how many replicas of the group's model fit
    in memory, e.g. `replicas_that_fit`; None: no limit known). `task(cfg)`: the task of
    the job's data where the caller knows it (`model_outputs`). A job runs alone when
    `alone_reason` says so (its loss needs the model, several devices, `refuse(cfg)`), when
    no other job has its key, or when the cap leaves it over."""
    if len(jobs) != len(configs):
        raise ValueError(f"{len(jobs)} jobs but {len(configs)} configs")
    groups: list[Group] = []
    same_key: dict[str, list[int]] = {}
    for number, (job, cfg) in enumerate(zip(jobs, configs)):
        why = alone_reason(job, cfg, refuse)
        if why is not None:
            groups.append(Group((number,), alone=why))
        else:
            key = stack_key(cfg, task(cfg) if task is not None else None)
            same_key.setdefault(key, []).append(number)
    for numbers in same_key.values():
        if len(numbers) == 1:
            groups.append(Group(tuple(numbers), alone="no other job shares its dataset, "
                                                       "model and training settings"))
            continue
        cap, source = _group_cap([configs[n] for n in numbers], max_replicas, fits)
        for chunk in _cut(numbers, max(1, cap)) if cap is not None else [numbers]:
            if len(chunk) > 1:
                groups.append(Group(tuple(chunk), varied_keys([jobs[n] for n in chunk])))
            else:
                groups.append(Group(tuple(chunk), alone=_cap_reason(cap, source)))
    return sorted(groups, key=lambda group: group.jobs[0])


def _group_cap(configs: Sequence[DictConfig], max_replicas: int | None,
               fits: Callable[[DictConfig], int | None] | None) -> tuple[int | None, str]:
    """(the cap, where it comes from: `max_replicas` or `memory`); the user's wins ties.
    Memory is asked once per optimizer setting of the group (the only settings it may differ
    in that change a replica's size: SGD's momentum buffer), the least that fit kept."""
    settings = {json.dumps(resolved_config(cfg.optimizer), sort_keys=True): cfg
                for cfg in configs}
    fit = [fits(cfg) for cfg in settings.values()] if fits is not None else []
    memory = min((n for n in fit if n is not None), default=None)
    if memory is not None and (max_replicas is None or memory < max_replicas):
        return max(1, memory), "memory"
    return max_replicas, "max_replicas"


def _cap_reason(cap: int | None, source: str) -> str:
    none_stack = cap is not None and cap <= 1
    if source == "max_replicas":
        return f"max_replicas={cap}" if none_stack else f"left over by max_replicas={cap}"
    return "memory holds one replica" if none_stack else f"left over: memory fits {cap} replicas"


def job_configs(config: DictConfig, jobs: Sequence[Sequence[str]]) -> list[DictConfig]:
    """Each job's config composed as its launcher will (`sweep_checks.compose_job`), resolved
    while ${hydra:...} reads that job's values, less `hydra`: what `group_jobs` compares."""
    from lossbench.experiment.sweep_checks import compose_job, hydra_config_kept

    with hydra_config_kept():
        return [OmegaConf.create(OmegaConf.to_container(compose_job(config, list(job)),
                                                        resolve=True)) for job in jobs]


def optimizer_moments(optimizer: Any) -> int:
    """Tensors of the parameters' size the optimizer of this config keeps per parameter."""
    name = str(optimizer.get("_target_") or "").rpartition(".")[2]
    if name in ("Adam", "AdamW", "NAdam", "RAdam", "Adamax"):
        return 2 + bool(optimizer.get("amsgrad"))
    if name == "RMSprop":
        return 1 + bool(optimizer.get("momentum")) + bool(optimizer.get("centered"))
    if name == "SGD":
        return int(bool(optimizer.get("momentum")))
    if name == "Adagrad":
        return 1
    return 2  # an optimizer not known here: as many as Adam


def model_elements(cfg: DictConfig, sample_shape: Sequence[int], num_outputs: int,
                   batch: int) -> tuple[int, int, int]:
    """(parameters, buffers, layer outputs for a batch of `batch` samples) of cfg's model.

    The model is built on the meta device (shapes, no initialisation), given uninitialised
    CPU memory and run on one sample, a hook on every leaf module adding up the elements of
    what it returns (× `batch`): a forward pass on the meta device itself would first import
    torch's decompositions, seconds. A model that cannot be built on the meta device (weights
    to load) is built on the CPU."""
    import torch
    from hydra.utils import instantiate

    def build(device: str) -> torch.nn.Module:
        with torch.device(device):
            return instantiate(cfg.model, input_shape=list(sample_shape),
                               num_outputs=num_outputs)

    try:
        model = build("meta").to_empty(device="cpu")
    except Exception:
        model = build("cpu")
    outputs = [0]

    def count(module: Any, inputs: Any, output: Any) -> None:
        tensors = output if isinstance(output, (tuple, list)) else [output]
        outputs[0] += sum(t.numel() for t in tensors if isinstance(t, torch.Tensor))

    for module in model.modules():
        if not any(module.children()):
            module.register_forward_hook(count)
    with torch.no_grad():
        model.eval()(torch.zeros(1, *sample_shape))
    return (sum(p.numel() for p in model.parameters()),
            sum(b.numel() for b in model.buffers()), outputs[0] * batch)


def replica_bytes(cfg: DictConfig, sample_shape: Sequence[int], num_outputs: int) -> int:
    """An estimate of the memory one replica of cfg's model takes while it trains, in bytes:

        bytes × (P × (2 + m) + S + 2 × A + B × F)

    P, S: the model's parameters and buffers (BatchNorm's statistics); 2 + m: weights,
    gradients and the m moments the optimizer keeps per parameter (`optimizer_moments`: Adam
    2, SGD with momentum 1); A: the elements its layers output for one batch of
    B = `trainer.batch_size` samples (`model_elements`), twice: what autograd keeps for the
    backward pass and the gradients flowing back through it; B × F: the replica's batch of
    F = prod(`sample_shape`) features. bytes: 8 under `trainer.precision=64`, else 4 (mixed
    precision keeps float32 weights; its half-precision activations are counted at 4).
    Operations that are no module (a residual sum) are not counted: `MEMORY_SHARE` leaves
    room for them, and for the data the group shares."""
    batch = int(cfg.trainer.batch_size)
    params, buffers, outputs = model_elements(cfg, sample_shape, num_outputs, batch)
    features = math.prod(int(size) for size in sample_shape)
    per_element = 8 if str(cfg.trainer.get("precision")) == "64" else 4
    moments = optimizer_moments(cfg.optimizer)
    return per_element * (params * (2 + moments) + buffers + 2 * outputs + batch * features)


def available_bytes(device_name: str) -> int | None:
    """Memory free for training on the device `trainer.device` names: CUDA's free memory
    (torch.cuda.mem_get_info), else MemAvailable of /proc/meminfo; None where neither is
    known (MPS, a CPU that is not Linux)."""
    import torch

    from lossbench.experiment.builders import pick_device

    device = pick_device(str(device_name))
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for row in meminfo:
                if row.startswith("MemAvailable:"):
                    return int(row.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None


def replicas_that_fit(cfg: DictConfig, sample_shape: Sequence[int], num_outputs: int,
                      available: int | None = None) -> int | None:
    """How many replicas of cfg's model fit in `MEMORY_SHARE` of `available` bytes (default:
    what `available_bytes` finds on its device), at least one; None when that is unknown."""
    if available is None:
        available = available_bytes(str(cfg.trainer.device))
    if available is None:
        return None
    per_replica = replica_bytes(cfg, sample_shape, num_outputs)
    return max(1, int(available * MEMORY_SHARE // per_replica))

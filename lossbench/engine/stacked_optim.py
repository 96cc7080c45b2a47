"""The optimizer step of stacked replicas: Adam, AdamW, SGD and RMSprop over tensors with a
leading replica axis (R, ...), each replica with its own hyperparameters.

One torch optimizer over stacked tensors cannot give replicas their own learning rate or
weight decay (param groups split tensors, not slices of them), so the step is written here,
functionally, following torch's single-tensor implementations (`foreach=False`,
torch/optim/adam.py `_single_tensor_adam`, sgd.py `_single_tensor_sgd`, rmsprop.py
`_single_tensor_rmsprop`) operation for
operation: a scalar there is a (R, 1, ..., 1) tensor here, and the per-step scalars (bias
corrections, step sizes) are computed on the host in Python floats exactly as torch computes
them. In float64 a replica's weights then agree with its separate run's to rounding.

Each replica's state comes from, and goes back to, an ordinary torch optimizer over that
replica's own module (`from_torch`, `write_back`), so a job's checkpoint keeps today's format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ADAM_STATE = ("exp_avg", "exp_avg_sq")
KINDS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd",
         torch.optim.RMSprop: "rmsprop"}


class StackError(ValueError):
    """What asked to be stacked cannot be trained as stacked replicas exactly as it would be
    trained alone; the message says why (the launcher prints it and runs the job alone)."""


def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """"adam" (Adam and AdamW: AdamW is Adam with decoupled weight decay), "sgd" or "rmsprop";
    StackError for an optimizer or an option the stacked step does not reproduce."""
    if type(optimizer) not in KINDS:
        raise StackError(f"optimizer {type(optimizer).__name__} has no stacked step "
                         "(Adam, AdamW, SGD and RMSprop have)")
    if len(optimizer.param_groups) != 1:
        raise StackError("an optimizer with several parameter groups cannot be stacked")
    group = optimizer.param_groups[0]
    for option in ("amsgrad", "maximize", "capturable", "differentiable"):
        if group.get(option):
            raise StackError(f"optimizer option {option}=True has no stacked step")
    return KINDS[type(optimizer)]


def per_replica(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """(R,) host floats -> (R, 1, ..., 1) on `like`'s device and dtype, to broadcast over
    a stacked tensor of `like`'s shape."""
    t = torch.tensor(list(values), dtype=torch.float64).to(like.device, like.dtype)
    return t.view(-1, *([1] * (like.dim() - 1)))


class StackedOptimizer:
    """The optimizer state of R replicas, stacked: `state[name][key]` is (R, ...) like the
    stacked parameter `name`; `hyper[key]` holds one host float per replica (lr, betas, eps,
    weight decay, momentum, dampening, RMSprop's alpha, gradient-clipping norm).

    `step(params)` updates the stacked parameters (leaf tensors whose `.grad` is set) in place.
    """

    def __init__(self, kind: str, hyper: dict[str, list[float]], flags: dict[str, bool],
                 state: dict[str, dict[str, torch.Tensor]], steps: list[int]) -> None:
        self.kind, self.hyper, self.flags, self.state, self.steps = (kind, hyper, flags, state,
                                                                    steps)
        self.columns: dict[tuple, torch.Tensor] = {}

    def column(self, key: str, like: torch.Tensor) -> torch.Tensor:
        """`per_replica` of a hyperparameter, or of a host float torch derives from them
        (`1 - beta1`, `-lr`, ...), made once: a step would otherwise spend more time building
        these small tensors than updating a small model."""
        at = (key, like.dim(), like.dtype, like.device)
        if at not in self.columns:
            h = self.hyper
            derived = {
                "1 - beta1": lambda: [1 - b for b in h["beta1"]],
                "1 - beta2": lambda: [1 - b for b in h["beta2"]],
                "1 - lr * weight_decay": lambda: [1 - lr * wd for lr, wd in
                                                  zip(h["lr"], h["weight_decay"])],
                "1 - dampening": lambda: [1 - d for d in h["dampening"]],
                "1 - alpha": lambda: [1 - a for a in h["alpha"]],
                "-lr": lambda: [-lr for lr in h["lr"]]}
            values = derived[key]() if key in derived else h[key]
            self.columns[at] = per_replica(values, like)
        return self.columns[at]

    def set_hyper(self, key: str, values: Sequence[float]) -> None:
        """Replica r's `key` (lr, say, as its scheduler set it) becomes `values[r]`."""
        self.hyper[key] = [float(v) for v in values]
        self.columns.clear()

    @classmethod
    def from_torch(cls, optimizers: Sequence[torch.optim.Optimizer],
                   modules: Sequence[nn.Module], params: dict[str, torch.Tensor],
                   grad_clip: Sequence[float | None] | None = None) -> StackedOptimizer:
        """The stacked form of R torch optimizers, optimizer r over exactly the parameters of
        `modules[r]` in their `named_parameters` order (as `build_training_optimizer` builds
        it), fresh or loaded from a checkpoint; `params` the stacked parameters."""
        kinds = {optimizer_kind(o) for o in optimizers}
        types = {type(o).__name__ for o in optimizers}
        if len(types) > 1:
            raise StackError("replicas of one stack share one optimizer class, not "
                             f"{sorted(types)}")
        kind = kinds.pop()
        groups = [o.param_groups[0] for o in optimizers]
        for o, module in zip(optimizers, modules):
            if [id(p) for p in o.param_groups[0]["params"]] != [id(p) for p in module.parameters()]:
                raise StackError("each replica's optimizer must hold exactly its model's "
                                 "parameters (a loss with parameters of its own cannot stack)")
        hyper = torch_hyper(kind, groups)
        if kind == "adam":
            flags = {"decoupled": same_flag(groups, "decoupled_weight_decay")}
        elif kind == "rmsprop":
            flags = {"momentum": same_flag(groups, "momentum"),
                     "centered": same_flag(groups, "centered")}
        else:
            flags = {"momentum": same_flag(groups, "momentum"),
                     "nesterov": same_flag(groups, "nesterov")}
        clip = grad_clip if grad_clip is not None else [None] * len(optimizers)
        hyper["max_norm"] = [float(c) if c else float("inf") for c in clip]
        state, steps = torch_state(kind, flags, optimizers, params)
        return cls(kind, hyper, flags, state, steps)

    def state_keys(self) -> tuple[str, ...]:
        return state_keys(self.kind, self.flags)

    def follow(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Each replica's hyperparameters as its torch optimizer holds them now
        (`optimizers[r]` for position r): a torch scheduler stepped on that optimizer moved its
        lr (OneCycleLR its momentum too), and the stack steps with the new values."""
        hyper = torch_hyper(self.kind, [o.param_groups[0] for o in optimizers])
        for key, values in hyper.items():
            if values != self.hyper[key]:
                self.set_hyper(key, values)

    def zero_grad(self, params: dict[str, torch.Tensor]) -> None:
        for p in params.values():
            p.grad = None

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor]) -> None:
        """One step of every replica: each one's gradients clipped to its own global norm,
        then Adam's, SGD's or RMSprop's update with its own hyperparameters."""
        grads = {name: p.grad for name, p in params.items() if p.grad is not None}
        if any(n != float("inf") for n in self.hyper["max_norm"]):
            clip_stacked(grads, self.hyper["max_norm"])
        getattr(self, self.kind)(params, grads)

    def adam(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        """torch's `_single_tensor_adam` (amsgrad, maximize, capturable off), replica-wise."""
        h, col = self.hyper, self.column
        self.steps = [s + 1 for s in self.steps]
        # the scalars torch computes per step in Python floats, one per replica
        step_size = torch.tensor([-lr / (1 - b1 ** s) for lr, b1, s in
                                  zip(h["lr"], h["beta1"], self.steps)], dtype=torch.float64)
        bc2_sqrt = torch.tensor([(1 - b2 ** s) ** 0.5 for b2, s in zip(h["beta2"], self.steps)],
                                dtype=torch.float64)
        first = next(iter(params.values()))
        step_size, bc2_sqrt = step_size.to(first), bc2_sqrt.to(first)
        decay = any(h["weight_decay"])
        for name, g in grads.items():
            p, st = params[name], self.state[name]
            shape = (-1, *([1] * (p.dim() - 1)))
            if decay:
                if self.flags["decoupled"]:
                    p.mul_(col("1 - lr * weight_decay", p))
                else:
                    g = g + col("weight_decay", p) * p  # grad.add(param, alpha=wd)
            st["exp_avg"].lerp_(g, col("1 - beta1", p))
            # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            st["exp_avg_sq"].mul_(col("beta2", p)).add_(col("1 - beta2", p) * g * g)
            denom = (st["exp_avg_sq"].sqrt() / bc2_sqrt.view(shape)).add_(col("eps", p))
            # param.addcdiv_(exp_avg, denom, value=-step_size)
            p.add_(step_size.view(shape) * st["exp_avg"] / denom)

    def sgd(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        """torch's `_single_tensor_sgd` (maximize off), replica-wise."""
        h, col = self.hyper, self.column
        for name, g in grads.items():
            p, st = params[name], self.state[name]
            if any(h["weight_decay"]):
                g = g + col("weight_decay", p) * p  # grad.add(param, alpha=wd)
            if self.flags["momentum"]:
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = g.detach().clone()
                else:  # buf.mul_(momentum).add_(grad, alpha=1 - dampening)
                    buf.mul_(col("momentum", p)).add_(col("1 - dampening", p) * g)
                g = g + col("momentum", p) * buf if self.flags["nesterov"] else buf
            p.add_(col("-lr", p) * g)  # param.add_(grad, alpha=-lr)

    def rmsprop(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> None:
        """torch's `_single_tensor_rmsprop` (maximize, capturable off), replica-wise."""
        h, col = self.hyper, self.column
        self.steps = [s + 1 for s in self.steps]
        for name, g in grads.items():
            p, st = params[name], self.state[name]
            if any(h["weight_decay"]):
                g = g + col("weight_decay", p) * p  # grad.add(param, alpha=wd)
            # square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
            st["square_avg"].mul_(col("alpha", p)).add_(col("1 - alpha", p) * g * g)
            if self.flags["centered"]:
                st["grad_avg"].lerp_(g, col("1 - alpha", p))
                # square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
                avg = (st["square_avg"] - st["grad_avg"] * st["grad_avg"]).sqrt_()
            else:
                avg = st["square_avg"].sqrt()
            avg = avg.add_(col("eps", p))
            if self.flags["momentum"]:
                # buf.mul_(momentum).addcdiv_(grad, avg); param.add_(buf, alpha=-lr)
                buf = st["momentum_buffer"]
                buf.mul_(col("momentum", p)).add_(g / avg)
                p.add_(col("-lr", p) * buf)
            else:
                p.add_(col("-lr", p) * g / avg)  # param.addcdiv_(grad, avg, value=-lr)

    def keep(self, positions: torch.Tensor) -> None:
        """Only the replicas at `positions` (a (R',) index tensor) stay, in that order."""
        at = positions.tolist()
        self.hyper = {k: [v[i] for i in at] for k, v in self.hyper.items()}
        self.steps = [self.steps[i] for i in at]
        self.columns.clear()
        for st in self.state.values():
            for key, t in st.items():
                st[key] = t.index_select(0, positions.to(t.device))

    def write_back(self, optimizers: Sequence[torch.optim.Optimizer],
                   modules: Sequence[nn.Module]) -> None:
        """Replica r's state into `optimizers[r]`, keyed by `modules[r]`'s parameters, in the
        layout torch's own optimizer keeps (so that its `state_dict()` is today's)."""
        from torch.optim.optimizer import _get_scalar_dtype

        for r, (optimizer, module) in enumerate(zip(optimizers, modules)):
            for name, p in module.named_parameters():
                st = self.state[name]
                if self.kind in ("adam", "rmsprop"):  # in the order torch makes its state
                    optimizer.state[p] = {
                        "step": torch.tensor(float(self.steps[r]), dtype=_get_scalar_dtype()),
                        **{key: st[key][r].clone() for key in self.state_keys() if key in st}}
                elif self.flags["momentum"] and "momentum_buffer" in st:
                    optimizer.state[p] = {"momentum_buffer": st["momentum_buffer"][r].clone()}


def torch_hyper(kind: str, groups: Sequence[dict]) -> dict[str, list[float]]:
    """{hyperparameter: one host float per replica} of torch optimizers' param groups."""
    if kind == "rmsprop":
        return {key: [float(g[key]) for g in groups]
                for key in ("lr", "alpha", "eps", "weight_decay", "momentum")}
    if kind == "adam":
        return {"lr": [float(g["lr"]) for g in groups],
                "beta1": [float(g["betas"][0]) for g in groups],
                "beta2": [float(g["betas"][1]) for g in groups],
                "eps": [float(g["eps"]) for g in groups],
                "weight_decay": [float(g["weight_decay"]) for g in groups]}
    return {key: [float(g[key]) for g in groups]
            for key in ("lr", "momentum", "dampening", "weight_decay")}


def same_flag(groups: list[dict], key: str) -> bool:
    """A switch that changes which operations the step runs (decoupled weight decay, momentum
    on or off, Nesterov): one value for the whole stack."""
    values = {bool(g.get(key)) for g in groups}
    if len(values) > 1:
        raise StackError(f"replicas of one stack must agree on optimizer {key} being used")
    return values.pop()


def state_keys(kind: str, flags: dict[str, bool]) -> tuple[str, ...]:
    """The tensors of a parameter's size an optimizer keeps for it, in torch's order."""
    if kind == "adam":
        return ADAM_STATE
    if kind == "rmsprop":
        return ("square_avg", *(("momentum_buffer",) if flags["momentum"] else ()),
                *(("grad_avg",) if flags["centered"] else ()))
    return ("momentum_buffer",)


def torch_state(kind: str, flags: dict[str, bool], optimizers: Sequence[torch.optim.Optimizer],
                params: dict[str, torch.Tensor]
                ) -> tuple[dict[str, dict[str, torch.Tensor]], list[int]]:
    """The stacked state of R torch optimizers: zeros for fresh ones (as their first step would
    make; SGD's momentum buffer is its first gradient instead), their own tensors stacked once
    they have stepped; a mix cannot stack."""
    names = list(params)
    per = [[o.state.get(p, {}) for p in o.param_groups[0]["params"]] for o in optimizers]
    started = {bool(s[0]) for s in per}
    if len(started) > 1:
        raise StackError("replicas of one stack must all start fresh or all resume")
    state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    if not started.pop():
        if kind != "sgd":
            for name in names:
                state[name] = {key: torch.zeros_like(params[name])
                               for key in state_keys(kind, flags)}
        return state, [0] * len(optimizers)
    for i, name in enumerate(names):
        for key in state_keys(kind, flags):
            values = [s[i].get(key) for s in per]
            if all(v is not None for v in values):
                state[name][key] = torch.stack([v.detach() for v in values]).to(params[name])
    steps = [int(s[0]["step"]) if "step" in s[0] else 0 for s in per]
    return state, steps


def clip_stacked(grads: dict[str, torch.Tensor], max_norm: list[float]) -> None:
    """`torch.nn.utils.clip_grad_norm_` for each replica over its own slices: the norm of the
    per-parameter norms, scaled by min(max_norm / (norm + 1e-6), 1); an infinite max_norm
    (no clipping) scales by exactly 1."""
    grads = list(grads.values())
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], 1)
    total = torch.linalg.vector_norm(norms, 2, dim=1)  # (R,)
    coef = torch.clamp(per_replica(max_norm, total) / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

"""Hyperparameter checks shared by the losses: a bad value raises ValueError naming it."""

from __future__ import annotations

import torch

REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_range(name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """Raise ValueError unless low <= value <= high (strict where *_open)."""
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high or value != value:  # value != value catches NaN
        left = "(" if low_open or low is None else "["
        right = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}, got {value:g}")
    return value


def reduce(values, reduction: str):
    """Apply 'none' / 'mean' / 'sum' to per-sample (or per-pair) loss values."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values


def check_choice(name: str, value: str, options: tuple[str, ...]) -> str:
    """Raise ValueError unless value is one of options."""
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_bool(name: str, value: bool) -> bool:
    """Raise ValueError unless value is true or false (not a string such as 'no')."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_int(name: str, value: int, low: int) -> int:
    """Raise ValueError unless value is an integer >= low."""
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name} must be an integer in [{low}, inf), got {value!r}")
    return int(value)


def check_same_shape(input, target) -> None:
    """Raise ValueError unless a regression target has the prediction's shape. Broadcasting a
    (N, 1) target against (N,) predictions would compare every prediction with every target,
    an (N, N) loss that trains without complaint and learns the mean."""
    if input.shape != target.shape:
        raise ValueError(f"input and target must have the same shape, got input "
                         f"{tuple(input.shape)} and target {tuple(target.shape)}")


def check_binary_target(target) -> None:
    """Raise ValueError unless every target of a one-logit (binary) loss is 0 or 1: another value
    is no label of a binary task, and the focal formula turns it into a negative loss."""
    if torch.compiler.is_compiling():  # a data-dependent check would break the graph
        return
    bad = (target != 0) & (target != 1)
    if bool(bad.any()):
        value = target[bad][0].item()
        raise ValueError(f"target of a one-logit (binary) loss must be 0 or 1, got {value:g}")

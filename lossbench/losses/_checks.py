"""Hyperparameter checks shared by the losses: a bad value raises ValueError naming it."""

from __future__ import annotations

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


def squeeze_output(out):
    """(B, 1) model output -> (B,): one logit or one regression value per sample, as `fit` does."""
    return out.squeeze(-1) if out.shape[-1] == 1 else out

"""Class imbalance on purpose: subsample the training split so that some classes become rare.

Kinds (`dataset.imbalance.kind`, with `ratio` ρ = largest / smallest class size ≥ 1):
- `longtail`: class k keeps n_k = ⌊n_max · ρ^(−k / (K−1))⌋ samples, an exponential decay from
  class 0 (n_max, the size of the largest class) to class K−1 (n_max / ρ).
- `step`: the last ⌊K / 2⌋ classes keep ⌊n_max / ρ⌋ samples, the others keep all of theirs.

A class never keeps more samples than it has, nor fewer than one. Validation and test splits are
left balanced, so their per-class report rows show what the loss did for the rare classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lossbench.data.raw import RawData
from lossbench.errors import UserError

KINDS = ("none", "longtail", "step")


def target_counts(counts: np.ndarray, kind: str, ratio: float) -> np.ndarray:
    """Per-class sizes (K,) to keep, given the sizes (K,) available."""
    k = len(counts)
    n_max = int(counts.max())
    if kind == "longtail":
        wanted = np.array([math.floor(n_max * ratio ** (-c / max(k - 1, 1))) for c in range(k)])
    else:  # step
        wanted = np.full(k, n_max)
        wanted[k - k // 2:] = math.floor(n_max / ratio)
    return np.clip(np.minimum(wanted, counts), 1, None)


# The ratio a kind uses when the config gives none (`ratio: null`, the default).
DEFAULT_RATIO = 10.0


def check_imbalance_used(cfg: Any) -> None:
    """A ratio without a kind would do nothing: a mistake, named with its fix."""
    if cfg is None:
        return
    if cfg.get("kind", "none") == "none" and cfg.get("ratio") is not None:
        raise UserError(f"dataset.imbalance.ratio={cfg.get('ratio')} does nothing with "
                        f"dataset.imbalance.kind=none; add dataset.imbalance.kind=longtail "
                        f"(or step)")


def describe_imbalance(info: dict[str, Any]) -> str:
    """'imbalance=longtail ratio=20 (realised 20.0)' for headers, reports and plot titles."""
    return (f"imbalance={info['kind']} ratio={info['ratio']:g} "
            f"(realised {info['realised_ratio']:.1f})")


def apply_imbalance(parts: dict[str, tuple[np.ndarray, np.ndarray]], raw: RawData, cfg: Any,
                    seed: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Subsample the training part to an imbalanced class distribution; returns the new parts and
    the class counts before and after."""
    kind = cfg.get("kind", "none")
    if kind not in KINDS:
        raise UserError(f"dataset.imbalance.kind={kind} is not a kind of imbalance; choose from "
                        f"{', '.join(KINDS)}")
    if raw.task == "regression":
        raise UserError(f"dataset.imbalance.kind={kind} needs classes, but dataset {raw.name} is "
                        "a regression task")
    try:
        ratio = float(DEFAULT_RATIO if cfg.get("ratio") is None else cfg.get("ratio"))
    except (TypeError, ValueError):
        raise UserError(f"dataset.imbalance.ratio={cfg.get('ratio')} is not a number") from None
    if not ratio >= 1.0:
        raise UserError(f"dataset.imbalance.ratio={ratio:g} must be at least 1 "
                        "(largest class size / smallest class size)")
    x, y = parts["train"]
    num_classes = raw.num_classes
    before = np.bincount(y.astype(np.int64), minlength=num_classes)
    wanted = np.minimum(target_counts(before, kind, ratio), before)  # absent classes stay absent
    rng = np.random.default_rng([seed, 104729])
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int(wanted[c]), replace=False)
                           for c in range(num_classes)])
    keep.sort()
    out = dict(parts)
    out["train"] = (x[keep], y[keep])
    after = np.bincount(y[keep].astype(np.int64), minlength=num_classes)
    info = {"kind": kind, "ratio": ratio, "class_counts_before": before.tolist(),
            "class_counts": after.tolist(),
            "realised_ratio": float(after.max() / max(after[after > 0].min(), 1))}
    return out, info

"""Class imbalance on purpose: subsample the training split so that some classes become rare.

Kinds (`dataset.imbalance.kind`, with `ratio` ρ = largest / smallest class size ≥ 1):
- `longtail`: class k keeps n_k = ⌊n_max · ρ^(−k / (K−1))⌋ samples, an exponential decay from
  class 0 (n_max, the size of the largest class) to class K−1 (n_max / ρ).
- `step`: the last ⌊K / 2⌋ classes keep ⌊n_max / ρ⌋ samples, the others keep all of theirs.

`order` says which class gets which size: `index` (default) gives the k-th size to class k, so
class K−1 is the rarest; `random` gives the sizes to a permutation of the classes drawn from the
run's seed, so that rarity is not confounded with whatever makes the last classes hard (the
permutation is recorded as `size_order` in metrics.json's data.imbalance).

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
ORDERS = ("index", "random")


def target_counts(counts: np.ndarray, kind: str, ratio: float,
                  order: np.ndarray | None = None) -> np.ndarray:
    """Per-class sizes (K,) to keep, given the sizes (K,) available. `order` (a permutation of
    the K classes) lists the classes from the largest size to the smallest; default 0..K−1."""
    k = len(counts)
    n_max = int(counts.max())
    if kind == "longtail":
        wanted = np.array([math.floor(n_max * ratio ** (-c / max(k - 1, 1))) for c in range(k)])
    else:  # step
        wanted = np.full(k, n_max)
        wanted[k - k // 2:] = math.floor(n_max / ratio)
    if order is not None:  # the i-th size goes to class order[i]
        placed = np.empty_like(wanted)
        placed[np.asarray(order)] = wanted
        wanted = placed
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
    raw.require_classes(f"dataset.imbalance.kind={kind}")
    try:
        ratio = float(DEFAULT_RATIO if cfg.get("ratio") is None else cfg.get("ratio"))
    except (TypeError, ValueError):
        raise UserError(f"dataset.imbalance.ratio={cfg.get('ratio')} is not a number") from None
    if not ratio >= 1.0:
        raise UserError(f"dataset.imbalance.ratio={ratio:g} must be at least 1 "
                        "(largest class size / smallest class size)")
    order_kind = cfg.get("order", "index") or "index"
    if order_kind not in ORDERS:
        raise UserError(f"dataset.imbalance.order={order_kind} is not an order; choose from "
                        f"{', '.join(ORDERS)}")
    x, y = parts["train"]
    num_classes = raw.num_classes
    before = np.bincount(y.astype(np.int64), minlength=num_classes)
    order = (np.random.default_rng([seed, 7919]).permutation(num_classes)
             if order_kind == "random" else None)
    # absent classes stay absent
    wanted = np.minimum(target_counts(before, kind, ratio, order), before)
    rng = np.random.default_rng([seed, 104729])
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int(wanted[c]), replace=False)
                           for c in range(num_classes)])
    keep.sort()
    out = dict(parts)
    out["train"] = (x[keep], y[keep])
    after = np.bincount(y[keep].astype(np.int64), minlength=num_classes)
    info = {"kind": kind, "ratio": ratio, "order": order_kind,
            "size_order": (order if order is not None else np.arange(num_classes)).tolist(),
            "class_counts_before": before.tolist(),
            "class_counts": after.tolist(),
            "realised_ratio": float(after.max() / max(after[after > 0].min(), 1))}
    return out, info

"""Re-sampling of the training split, the other classic baseline against class imbalance.

`dataset.resample` (applied after imbalance and label noise, before scaling):
- `none`: the split as it is;
- `class_balanced`: every class drawn equally often, q_c = 1/K (Kang et al. 2020,
  "Decoupling representation and classifier for long-tailed recognition");
- `sqrt`: classes drawn in proportion to the square root of their size, q_c ∝ √n_c (Mahajan et
  al. 2018; Kang et al. 2020).

The split keeps its size N: class c gets round(N · q_c) samples, drawn with replacement from
its own samples, once per run (seeded), not per epoch. Classes absent from the split stay absent.
The class counts a loss receives, and the training prior of the metrics, are those of the split
as it is trained on: after re-sampling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lossbench.errors import UserError

RESAMPLING = {"none": None, "class_balanced": 0.0, "sqrt": 0.5}  # q_c ∝ n_c^power


def resampled_counts(counts: np.ndarray, power: float) -> np.ndarray:
    """(K,) samples per class after re-sampling to q_c ∝ n_c^power, total sum(counts)."""
    present = counts > 0
    q = np.where(present, np.power(np.maximum(counts, 1), power), 0.0)
    q = q / q.sum()
    wanted = np.floor(q * counts.sum()).astype(np.int64)
    # largest remainders first, so the total stays N exactly
    short = int(counts.sum() - wanted.sum())
    remainders = np.where(present, q * counts.sum() - wanted, -1.0)
    wanted[np.argsort(-remainders, kind="stable")[:short]] += 1
    return np.where(present, np.maximum(wanted, 1), 0)


def resample_indices(y: np.ndarray, kind: str, num_classes: int, seed: int
                     ) -> tuple[np.ndarray, dict[str, Any]]:
    """(indices of the training samples to keep, in order, with repeats; what was done)."""
    if kind not in RESAMPLING:
        raise UserError(f"dataset.resample={kind} is not a re-sampling; choose from "
                        f"{', '.join(RESAMPLING)}")
    before = np.bincount(y.astype(np.int64), minlength=num_classes)
    wanted = resampled_counts(before, RESAMPLING[kind])
    rng = np.random.default_rng([seed, 65537])
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int(wanted[c]), replace=True)
                           for c in range(num_classes) if wanted[c] > 0])
    keep.sort()
    return keep, {"kind": kind, "class_counts_before": before.tolist(),
                  "class_counts": wanted.tolist()}

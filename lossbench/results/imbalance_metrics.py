"""Test metrics that show what a loss does for the rare classes of an imbalanced training split.

With recall_c the recall of class c on the evaluated split (over the classes it holds) and
π_c = n_c / Σ_k n_k the training prior:
- `balanced_accuracy` = mean_c recall_c (scikit-learn's balanced_accuracy_score);
- `worst_class_recall` = min_c recall_c;
- `prior_accuracy` = Σ_c π_c · recall_c (π renormalised over the classes present): the accuracy
  a deployment whose class mix is the training mix would see. Losses that balance the classes
  (logit adjustment) raise balanced accuracy and give some of this away;
- `many_shot_accuracy`, `medium_shot_accuracy`, `few_shot_accuracy`: mean recall_c within each
  group of classes by training count. Liu et al. (2019, "Large-scale long-tailed recognition in
  an open world") cut at > 100, 20–100 and < 20 training samples. On small datasets those
  cut-offs leave a group with fewer than two classes (digits at ratio 10 has one "many"
  class), so then the classes ranked by training count are cut into thirds instead. The rule
  used (`liu` or `thirds`) and the groups are recorded in `shot_groups`. Only for an imbalanced
  training split of three classes or more (`has_shot_groups`): on balanced data the "few-shot"
  classes are those with 107 samples against 108, and two classes make no three groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

MANY_ABOVE, FEW_BELOW = 100, 20  # Liu et al. 2019
MIN_GROUP = 2  # fewer classes in a group than this and the groups are thirds instead
# many/medium/few-shot groups need a largest training class at least this many times the smallest
IMBALANCED_RATIO = 2.0


def has_shot_groups(train_counts: Sequence[int]) -> bool:
    """Three classes or more, and the largest at least IMBALANCED_RATIO × the smallest."""
    counts = np.asarray(train_counts, dtype=np.float64)
    return len(counts) >= 3 and counts.max() >= IMBALANCED_RATIO * max(counts.min(), 1.0)


def shot_groups(train_counts: Sequence[int]) -> dict[str, Any]:
    """{'rule': 'liu' | 'thirds', 'many': [classes], 'medium': [...], 'few': [...]}."""
    counts = np.asarray(train_counts, dtype=np.int64)
    classes = np.arange(len(counts))
    liu = {"many": classes[counts > MANY_ABOVE], "medium":
           classes[(counts >= FEW_BELOW) & (counts <= MANY_ABOVE)], "few": classes[counts < FEW_BELOW]}
    if all(len(v) >= MIN_GROUP for v in liu.values()):
        return {"rule": "liu", **{k: v.tolist() for k, v in liu.items()}}
    # largest count first; ties by class index, so the groups do not depend on the sort
    ranked = sorted(classes.tolist(), key=lambda c: (-counts[c], c))
    third = len(ranked) // 3
    return {"rule": "thirds", "many": sorted(ranked[:third]),
            "medium": sorted(ranked[third:len(ranked) - third]),
            "few": sorted(ranked[len(ranked) - third:])}


def imbalance_metrics(y_true: np.ndarray, y_pred: np.ndarray, train_counts: Sequence[int]
                      ) -> dict[str, Any]:
    """The metrics above from (N,) true and predicted classes and the (K,) training counts."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_pred = np.asarray(y_pred).astype(np.int64)
    counts = np.asarray(train_counts, dtype=np.float64)
    present = np.unique(y_true)  # recall is defined for classes the split holds
    recall = skm.recall_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    by_class = dict(zip(present.tolist(), recall.tolist()))
    prior = counts[present] / counts[present].sum() if counts[present].sum() > 0 else \
        np.full(len(present), 1.0 / len(present))
    out: dict[str, Any] = {
        "balanced_accuracy": float(np.mean(recall)),
        "worst_class_recall": float(np.min(recall)),
        "prior_accuracy": float(np.dot(prior, recall)),
        "per_class_recall": {str(c): float(r) for c, r in by_class.items()},
    }
    if not has_shot_groups(train_counts):
        return out
    out["shot_groups"] = groups = shot_groups(train_counts)
    for name in ("many", "medium", "few"):
        values = [by_class[c] for c in groups[name] if c in by_class]
        out[f"{name}_shot_accuracy"] = float(np.mean(values)) if values else None
    return out


def imbalance_summary(metrics: dict[str, Any]) -> str:
    """Two lines for the console and report.txt (one without shot groups)."""
    def num(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    first = (f"Imbalance: balanced accuracy {num(metrics['balanced_accuracy'])}, worst-class "
             f"recall {num(metrics['worst_class_recall'])}, accuracy under the training prior "
             f"{num(metrics['prior_accuracy'])}")
    groups = metrics.get("shot_groups")
    if groups is None:  # balanced or binary training data: no shot groups
        return first
    sizes = "/".join(str(len(groups[g])) for g in ("many", "medium", "few"))
    return (f"{first}\n"
            f"Many/medium/few-shot accuracy {num(metrics['many_shot_accuracy'])} / "
            f"{num(metrics['medium_shot_accuracy'])} / {num(metrics['few_shot_accuracy'])} "
            f"({groups['rule']} groups of {sizes} classes by training count)")

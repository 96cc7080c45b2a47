"""Label noise on purpose: corrupt the training and validation labels, never the test labels.

Kinds (`dataset.noise.kind`):
- `symmetric`: exactly round(rate · n) labels of a split, chosen uniformly without replacement,
  each moved to a uniformly chosen *other* class, so `rate` is the true fraction of wrong labels.
- `asymmetric`: class-pair flips s → t from a mapping (`preset: mnist|cifar10` or `mapping`);
  round(rate · n_s) samples of each source class s, chosen among its clean labels, become t.
- `pairflip`: the asymmetric flip k → (k + 1) mod K for every class k.

The transition counts T (K, K) hold T[i, j] = number of samples whose clean label is i and whose
given label is j; the realised rate is 1 − trace(T) / sum(T).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lossbench.data.raw import RawData
from lossbench.errors import UserError

KINDS = ("none", "symmetric", "asymmetric", "pairflip")

# Class-pair flips that mimic the confusions of human annotators. MNIST names classes by digit,
# so its preset uses class indices; CIFAR-10's uses its class names.
PRESETS: dict[str, dict[Any, Any]] = {
    "mnist": {7: 1, 2: 7, 5: 6, 6: 5, 3: 8},
    "cifar10": {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog",
                "dog": "cat"},
}

# Which splits carry noise: the model is selected on noisy validation labels, as it would be on
# a real noisy dataset; the test split measures against the truth.
NOISY_SPLITS = ("train", "val")


def _class_index(key: Any, class_names: list[str], num_classes: int, where: str) -> int:
    """A class given by name, or by index when no class has that name."""
    if str(key) in class_names:
        return class_names.index(str(key))
    try:
        index = int(key)
    except (TypeError, ValueError):
        index = -1
    if 0 <= index < num_classes and str(index) == str(key).strip():
        return index
    raise UserError(f"{where} names class {key!r}, which this dataset does not have; its classes "
                    f"are {', '.join(class_names)} (or indices 0..{num_classes - 1})")


def flip_mapping(cfg: Any, raw: RawData) -> dict[int, int]:
    """The source → target class indices of an asymmetric or pairflip noise config."""
    k = raw.num_classes
    names = list(raw.class_names) if raw.class_names else [str(i) for i in range(k)]
    if cfg.get("kind") == "pairflip":
        return {i: (i + 1) % k for i in range(k)}
    preset, mapping = cfg.get("preset"), cfg.get("mapping")
    if preset is not None and mapping is not None:
        raise UserError("dataset.noise: give either preset or mapping, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"dataset.noise.preset={preset} is not a preset; choose from "
                            f"{', '.join(PRESETS)} or give dataset.noise.mapping")
        mapping, where = PRESETS[preset], f"dataset.noise.preset={preset}"
    elif mapping:
        where = "dataset.noise.mapping"
    else:
        raise UserError("dataset.noise.kind=asymmetric needs dataset.noise.preset (mnist or "
                        "cifar10) or dataset.noise.mapping, e.g. 'dataset.noise.mapping={cat: dog}'")
    flips = {}
    for source, target in dict(mapping).items():
        s = _class_index(source, names, k, where)
        t = _class_index(target, names, k, where)
        if s == t:
            raise UserError(f"{where} maps class {source!r} onto itself")
        flips[s] = t
    return flips


def check_noise_config(cfg: Any, raw: RawData) -> tuple[str, float]:
    kind = cfg.get("kind", "none")
    if kind not in KINDS:
        raise UserError(f"dataset.noise.kind={kind} is not a kind of label noise; choose from "
                        f"{', '.join(KINDS)}")
    raw.require_classes(f"dataset.noise.kind={kind}", needs="class labels")
    try:
        rate = float(cfg.get("rate", 0.0))
    except (TypeError, ValueError):
        raise UserError(f"dataset.noise.rate={cfg.get('rate')} is not a number") from None
    if not 0.0 <= rate < 1.0:
        raise UserError(f"dataset.noise.rate={rate:g} must lie in [0, 1)")
    return kind, rate


def check_noise_used(cfg: Any) -> None:
    """A noise setting that would do nothing is a mistake, not a clean run: `rate: 0.4` with
    `kind: none`, or a preset or mapping without a kind that flips by it. `rate: 0` with a kind
    is the clean point of a rate sweep, and fine."""
    if cfg is None:
        return
    kind = cfg.get("kind", "none")
    try:
        rate = float(cfg.get("rate") or 0.0)
    except (TypeError, ValueError):
        return  # check_noise_config names the bad rate
    if kind == "none" and rate != 0.0:
        raise UserError(f"dataset.noise.rate={rate:g} does nothing with dataset.noise.kind=none; "
                        f"add dataset.noise.kind=symmetric (or asymmetric, pairflip)")
    for key in ("preset", "mapping"):
        if cfg.get(key) is not None and kind != "asymmetric":
            raise UserError(f"dataset.noise.{key} does nothing with dataset.noise.kind={kind}; "
                            f"add dataset.noise.kind=asymmetric")


def describe_noise(info: dict[str, Any]) -> str:
    """'noise=symmetric rate=0.4 (realised 0.401)': the label noise a run used, as the header
    line, report.txt and the plot titles name it. Asymmetric rates apply per source class, so
    the realised overall rate (train and val) is the number to read."""
    realised = info.get("realised_rate", {}).get("train_and_val")
    text = f"noise={info['kind']} rate={info['rate']:g}"
    if info["kind"] == "asymmetric":
        text += " per mapped class"
    return text + (f" (realised {realised:.3f})" if realised is not None else "")


def describe_corruption(info: dict[str, Any]) -> str:
    """The corruption applied on purpose (noise, imbalance) in one phrase, '' when none."""
    parts = []
    if info.get("noise"):
        parts.append(describe_noise(info["noise"]))
    if info.get("imbalance"):
        from lossbench.data.imbalance import describe_imbalance

        parts.append(describe_imbalance(info["imbalance"]))
    return ", ".join(parts)


def symmetric_noise(y: np.ndarray, rate: float, num_classes: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Exactly round(rate · n) labels moved to a uniformly drawn other class."""
    noisy = y.copy()
    n_flip = int(round(rate * len(y)))
    idx = rng.choice(len(y), size=n_flip, replace=False)
    # an offset in 1..K-1 (mod K) never lands on the clean class and is uniform over the others
    noisy[idx] = (y[idx] + rng.integers(1, num_classes, size=n_flip)) % num_classes
    return noisy


def flip_noise(y: np.ndarray, rate: float, flips: dict[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """round(rate · n_s) samples of each source class s (by clean label) moved to flips[s]."""
    noisy = y.copy()
    for source in sorted(flips):
        members = np.flatnonzero(y == source)
        n_flip = int(round(rate * len(members)))
        noisy[rng.choice(members, size=n_flip, replace=False)] = flips[source]
    return noisy


def transition_counts(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts of clean label i given as label j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (clean.astype(np.int64), noisy.astype(np.int64)), 1)
    return counts


def apply_label_noise(parts: dict[str, tuple[np.ndarray, np.ndarray]], raw: RawData,
                      noise_cfg: Any, seed: int
                      ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Corrupt the labels of the train and val parts; returns the new parts and statistics.

    Each split draws from its own generator seeded by (seed, split), so the same seed gives the
    same corrupted labels whatever else the run does.
    """
    kind, rate = check_noise_config(noise_cfg, raw)
    k = raw.num_classes
    flips = flip_mapping(noise_cfg, raw) if kind in ("asymmetric", "pairflip") else None
    out = dict(parts)
    info: dict[str, Any] = {"kind": kind, "rate": rate}
    if flips is not None:
        info["mapping"] = {str(s): int(t) for s, t in sorted(flips.items())}
    realised, counts = {}, {}
    total_wrong = total = 0
    for number, name in enumerate(NOISY_SPLITS):
        x, y = parts[name]
        rng = np.random.default_rng([seed, 7919, number])
        noisy = (symmetric_noise(y, rate, k, rng) if flips is None
                 else flip_noise(y, rate, flips, rng))
        out[name] = (x, noisy)
        wrong = int((noisy != y).sum())
        realised[name] = wrong / len(y) if len(y) else 0.0
        counts[name] = transition_counts(y, noisy, k).tolist()
        total_wrong, total = total_wrong + wrong, total + len(y)
    info["realised_rate"] = {**realised, "train_and_val": total_wrong / total if total else 0.0}
    info["transition_counts"] = counts
    return out, info

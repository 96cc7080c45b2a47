"""The statistics `lossbench compare` reports, as pure functions of lists of numbers.

For one configuration over its n seeds (values x₁..xₙ of a test metric):

    mean x̄ = Σ xᵢ / n,   std s = sqrt(Σ (xᵢ − x̄)² / (n − 1)),
    CI     x̄ ± t₀.₉₇₅,ₙ₋₁ · s / √n, clipped to the metric's range (accuracy never above 1).

Two configurations A and B (higher is better after the sign of the metric is applied):

- paired (same seeds, same split/noise/initial weights/batch order): dᵢ = aᵢ − bᵢ, paired
  t-test t = d̄ / (s_d / √n) on n − 1 degrees of freedom, and its interval d̄ ± t · s_d / √n
  (`summarize` of the dᵢ), which excludes 0 exactly when the test's p is below 1 − confidence;
- unpaired: Welch's t-test, t = (ā − b̄) / sqrt(s_a²/n_a + s_b²/n_b), Welch–Satterthwaite df;
- probability of improvement P(A > B) (Bouthillier et al. 2021; Agarwal et al. 2021):
  paired, the share of seeds where A beats B; unpaired, the Mann–Whitney share U / (n_a·n_b);
  ties count ½. Its interval is Clopper–Pearson on the win count;
- Holm's step-down adjustment over a family of m tests;
- sample size from the noncentral t: the smallest difference detectable at power 0.8 with the
  present n, and the n needed for a difference the user names. The effect size is never the
  observed one (that would be post-hoc power, a function of the p-value alone).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

INF = float("inf")
NAN = float("nan")

# The values a test metric can take; a confidence interval is clipped to them.
UNIT = (0.0, 1.0)
METRIC_RANGE = {
    "accuracy": UNIT, "macro_f1": UNIT, "f1": UNIT, "precision": UNIT, "recall": UNIT,
    "ece": UNIT, "auroc": UNIT, "roc_auc": UNIT, "pair_roc_auc": UNIT, "weighted_f1": UNIT,
    "balanced_accuracy": UNIT, "robust_accuracy": UNIT, "worst_class_recall": UNIT,
    "few_shot_accuracy": UNIT, "prior_accuracy": UNIT, "memorised": UNIT,
    "brier": (0.0, 2.0),  # multiclass Brier score Σ_k (p_k − y_k)², at most 2
    "nll": (0.0, INF), "loss": (0.0, INF), "rmse": (0.0, INF), "mse": (0.0, INF),
    "mae": (0.0, INF), "r2": (-INF, 1.0),
}


def metric_range(metric: str) -> tuple[float, float]:
    """(low, high) of a metric by name (`val_accuracy` as accuracy); unbounded if unknown."""
    if metric in METRIC_RANGE:
        return METRIC_RANGE[metric]
    for name, bounds in METRIC_RANGE.items():
        if metric.endswith("_" + name):
            return bounds
    return (-INF, INF)


def difference_range(metric: str) -> tuple[float, float]:
    """The range of a − b for two values of the metric: [lo − hi, hi − lo]."""
    lo, hi = metric_range(metric)
    return (lo - hi, hi - lo)


def clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    return (min(max(low, bounds[0]), bounds[1]), min(max(high, bounds[0]), bounds[1]))


@dataclass
class Stat:
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    values: list[float]


def summarize(values: Sequence[float], confidence: float = 0.95,
              bounds: tuple[float, float] = (-INF, INF)) -> Stat:
    """Mean, sample std (n − 1) and the Student-t CI of the mean, clipped to `bounds`."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Stat(0, NAN, NAN, NAN, NAN, [])
    mean = math.fsum(values) / n
    if n == 1:
        return Stat(1, mean, NAN, NAN, NAN, list(values))
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    low, high = clip(mean - half, mean + half, bounds)
    return Stat(n, mean, std, low, high, list(values))


# --------------------------------------------------------------------------------------------
# tests of a difference


# Metrics that differ only in their last bits (0.1 + 0.2 against 0.3: one sum in float32, one
# in float64) are equal. Kept as they are, scipy's t-tests found "significance" in rounding
# noise and printed a RuntimeWarning (catastrophic cancellation) on the console.
SIGNIFICANT_DECIMALS = 12


def _denoised(values: Sequence[float]) -> list[float]:
    return [round(float(v), SIGNIFICANT_DECIMALS) for v in values]


@contextlib.contextmanager
def _quiet_constant_samples() -> Iterator[None]:
    """scipy warns of "catastrophic cancellation" for a sample of equal values, whose mean is not
    exactly representable (0.3, 0.3, 0.3); denoised, equal values are exactly that, and the
    test's answer is right. Only that warning is silenced, only around the test."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation",
                                category=RuntimeWarning)
        yield


def paired_t_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of the paired t-test on aᵢ − bᵢ; NaN below two pairs."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} and {len(b)}")
    if len(a) < 2:
        return NAN
    diffs = _denoised([x - y for x, y in zip(a, b)])
    if max(diffs) == min(diffs):  # no spread: the same difference every seed
        return 1.0 if diffs[0] == 0 else 0.0
    with _quiet_constant_samples():  # the paired t-test: the one-sample t of the differences
        return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances); NaN below two runs a side."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return NAN
    a, b = _denoised(a), _denoised(b)
    if max(a) == min(a) and max(b) == min(b):  # no spread at all: equal means or certainly not
        return 1.0 if a[0] == b[0] else 0.0
    with _quiet_constant_samples():
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean; NaN below 2. Too narrow for a few values: compare's
    paired differences use the t interval instead."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (NAN, NAN)
    rng = np.random.default_rng(seed)  # fixed: the same runs always print the same interval
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)  # (B,)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return (float(low), float(high))


def mean_difference_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95
                       ) -> tuple[float, float]:
    """Welch's CI of ā − b̄ for unpaired samples; NaN below two runs a side."""
    from scipy import stats

    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return (NAN, NAN)
    va, vb = np.var(a, ddof=1) / na, np.var(b, ddof=1) / nb
    diff = float(np.mean(a) - np.mean(b))
    if va + vb == 0:
        return (diff, diff)
    df = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(va + vb)
    return (diff - half, diff + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values: sorted p₍ᵢ₎ · (m − i + 1), running max, capped at 1.
    NaN (a test that could not run) stays NaN and does not count in m."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(indexed)
    adjusted = [NAN] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, p * (m - rank)))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------------------------
# probability of improvement


@dataclass
class Improvement:
    p: float        # estimated P(A beats B)
    wins: float     # win count (ties ½) on the n the interval uses
    n: int
    ci_low: float
    ci_high: float


def clopper_pearson(wins: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for `wins` successes in n: Beta quantiles. A half win (a tie)
    enters through the same Beta form, which is continuous in the count."""
    from scipy import stats

    if n == 0:
        return (NAN, NAN)
    tail = (1 - confidence) / 2
    low = 0.0 if wins <= 0 else float(stats.beta.ppf(tail, wins, n - wins + 1))
    high = 1.0 if wins >= n else float(stats.beta.ppf(1 - tail, wins + 1, n - wins))
    return (low, high)


def _beats(x: float, y: float) -> float:
    return 1.0 if x > y else (0.5 if x == y else 0.0)


def probability_of_improvement(a: Sequence[float], b: Sequence[float], paired: bool,
                               confidence: float = 0.95) -> Improvement:
    """P(A > B) for scores where higher is better (a failed seed scores −inf: a loss).
    Paired: share of seeds with aᵢ > bᵢ over n seeds. Unpaired: Mann–Whitney U / (n_a·n_b),
    whose interval is Clopper–Pearson with n = min(n_a, n_b): the pairs are not independent,
    so only as many independent comparisons as the smaller side are claimed."""
    if paired:
        if len(a) != len(b):
            raise ValueError("paired samples differ in length")
        wins = math.fsum(_beats(x, y) for x, y in zip(a, b))
        n = len(a)
        p = wins / n if n else NAN
    else:
        total = len(a) * len(b)
        p = math.fsum(_beats(x, y) for x in a for y in b) / total if total else NAN
        n = min(len(a), len(b))
        wins = p * n if n else 0.0
    low, high = clopper_pearson(wins, n, confidence)
    return Improvement(p, wins, n, low, high)


def smallest_n_to_show_improvement(confidence: float = 0.95) -> int:
    """The least n at which even n wins of n lifts the Clopper–Pearson lower bound above ½:
    that bound is (tail)^(1/n), e.g. 5 of 5 gives 0.025^(1/5) = 0.478 at 95%."""
    tail = (1 - confidence) / 2
    return math.floor(math.log(tail) / math.log(0.5)) + 1


# --------------------------------------------------------------------------------------------
# sample size from the noncentral t


def t_test_power(effect: float, sd: float, n: int, alpha: float, paired: bool = True) -> float:
    """Power of the two-sided t-test to detect a true difference `effect`.
    Paired: n pairs, df = n − 1, noncentrality δ = effect / sd_d · √n.
    Unpaired: n per side, df = 2n − 2, δ = effect / (sd · √(2/n))."""
    from scipy import stats

    if n < 2 or sd <= 0:
        return NAN
    if paired:
        df, nc = n - 1, effect / sd * math.sqrt(n)
    else:
        df, nc = 2 * n - 2, effect / (sd * math.sqrt(2.0 / n))
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    power = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(power):  # scipy's nct gives up far in the tail: all or nothing there
        return 1.0 if abs(nc) > crit else 0.0
    return power


def minimum_detectable_difference(sd: float, n: int, alpha: float, power: float = 0.8,
                                  paired: bool = True) -> float:
    """The true difference the t-test detects with `power` at this n (solved on the
    noncentral t); NaN below 2 or without spread."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return NAN
    high = sd
    while t_test_power(high, sd, n, alpha, paired) < power:
        high *= 2
    return float(brentq(lambda e: t_test_power(e, sd, n, alpha, paired) - power, 0.0, high,
                        xtol=sd * 1e-10))


def sample_size(effect: float, sd: float, alpha: float, power: float = 0.8,
                paired: bool = True, limit: int = 100_000) -> int | None:
    """The least n (pairs, or runs per side) at which a true difference `effect` is detected
    with `power`; None if more than `limit` or no spread to judge by."""
    if not sd > 0 or effect <= 0:
        return None
    n = 2
    while t_test_power(effect, sd, n, alpha, paired) < power:
        n = n * 2 if n < 64 else n + max(1, n // 8)
        if n > limit:
            return None
    low = max(2, n // 2)  # the least n in (n/2, n] that reaches the power
    while low < n:
        mid = (low + n) // 2
        if t_test_power(effect, sd, mid, alpha, paired) >= power:
            n = mid
        else:
            low = mid + 1
    return n

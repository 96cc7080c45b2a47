"""lossbench/results/stats.py against scipy.stats on hand-made data: paired and Welch t-tests, the
bootstrap, Mann–Whitney, the exact binomial interval, Holm, and sample sizes from the noncentral
t (with the textbook values of Cohen's tables as a second reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from lossbench.results import stats

A = [0.91, 0.93, 0.90, 0.94, 0.92]
B = [0.90, 0.915, 0.905, 0.925, 0.90]


def test_summary_matches_student_t_and_stays_in_the_metric_range():
    s = stats.summarize(A, bounds=stats.metric_range("accuracy"))
    half = sp.t.ppf(0.975, 4) * np.std(A, ddof=1) / math.sqrt(5)
    assert s.mean == pytest.approx(np.mean(A)) and s.std == pytest.approx(np.std(A, ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx((np.mean(A) - half, np.mean(A) + half))
    # two seeds far apart: the raw t interval is [-2.5, 3.0]; accuracy stays in [0, 1]
    wide = stats.summarize([0.0, 0.5], bounds=stats.metric_range("accuracy"))
    assert (wide.ci_low, wide.ci_high) == (0.0, 1.0)
    assert stats.summarize([0.1, 0.9], bounds=stats.metric_range("nll")).ci_low == 0.0
    assert stats.metric_range("val_macro_f1") == (0.0, 1.0)
    assert stats.metric_range("r2") == (-math.inf, 1.0)
    assert stats.difference_range("ece") == (-1.0, 1.0)


def test_paired_and_welch_p_values_are_scipys():
    assert stats.paired_t_p(A, B) == pytest.approx(sp.ttest_rel(A, B).pvalue)
    assert stats.welch_p(A, B) == pytest.approx(sp.ttest_ind(A, B, equal_var=False).pvalue)
    # the paired test sees the shared seed effect that Welch's cannot
    assert stats.paired_t_p(A, B) < stats.welch_p(A, B)
    assert stats.paired_t_p([0.5, 0.6, 0.7], [0.4, 0.5, 0.6]) == 0.0  # constant difference
    assert stats.paired_t_p([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert math.isnan(stats.paired_t_p([0.5], [0.4]))


def test_welch_interval_of_the_difference_matches_scipy():
    low, high = stats.mean_difference_ci(A, B)
    ref = sp.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high))


def test_paired_bootstrap_interval_agrees_with_scipy_bootstrap():
    diffs = np.array(A) - np.array(B)
    low, high = stats.bootstrap_mean_ci(diffs, n_resamples=20_000)
    ref = sp.bootstrap((diffs,), np.mean, method="percentile", n_resamples=20_000,
                       random_state=np.random.default_rng(1)).confidence_interval
    spread = diffs.max() - diffs.min()
    assert low == pytest.approx(ref.low, abs=0.05 * spread)
    assert high == pytest.approx(ref.high, abs=0.05 * spread)
    assert low < diffs.mean() < high
    assert stats.bootstrap_mean_ci(diffs) == stats.bootstrap_mean_ci(diffs)  # reproducible


def test_clopper_pearson_is_binomtests_exact_interval():
    for wins, n in [(5, 5), (4, 5), (0, 5), (7, 10), (10, 10), (1, 3)]:
        ref = sp.binomtest(wins, n).proportion_ci(confidence_level=0.95, method="exact")
        assert stats.clopper_pearson(wins, n) == pytest.approx((ref.low, ref.high))
    # 5 of 5 cannot show P > 0.5: its lower bound is 0.025^(1/5) = 0.478; 6 seeds can
    assert stats.clopper_pearson(5, 5)[0] == pytest.approx(0.478, abs=5e-4)
    assert stats.smallest_n_to_show_improvement() == 6
    assert stats.clopper_pearson(6, 6)[0] > 0.5
    # a tie (half a win) lies between its neighbours
    assert stats.clopper_pearson(3, 5)[0] < stats.clopper_pearson(3.5, 5)[0] < \
        stats.clopper_pearson(4, 5)[0]


def test_probability_of_improvement_paired_and_mann_whitney():
    paired = stats.probability_of_improvement(A, B, paired=True)
    wins = sum(a > b for a, b in zip(A, B)) + 0.5 * sum(a == b for a, b in zip(A, B))
    assert paired.p == wins / 5 and paired.n == 5
    a, b = [3.0, 1.0, 4.0, 1.0], [1.0, 5.0, 0.5]
    unpaired = stats.probability_of_improvement(a, b, paired=False)
    u = sp.mannwhitneyu(a, b, alternative="two-sided").statistic  # U of a, ties counted ½
    assert unpaired.p == pytest.approx(u / (len(a) * len(b)))
    assert unpaired.n == 3  # the interval claims no more independent comparisons than min side
    # a failed seed scores -inf: a loss against anything, a tie against another failure
    lost = stats.probability_of_improvement([-math.inf, 0.9, -math.inf], [0.5, 0.8, -math.inf],
                                            paired=True)
    assert lost.p == pytest.approx(1.5 / 3)


def test_holm_adjusted_p_values():
    # hand computation: sorted 0.01, 0.03, 0.04 -> 0.03, 0.06, max(0.06, 0.04) = 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.01]) == pytest.approx([0.5, 0.02])
    assert stats.holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])  # 0.3·2, then max(0.6, 0.9·1)
    adjusted = stats.holm([0.02, float("nan")])
    assert adjusted[0] == 0.02 and math.isnan(adjusted[1])  # an untested pair is not counted


def power_by_nct(effect: float, sd: float, n: int, alpha: float, paired: bool) -> float:
    """Two-sided t-test power written out from scipy's noncentral t."""
    df = n - 1 if paired else 2 * n - 2
    nc = effect / sd * math.sqrt(n) if paired else effect / (sd * math.sqrt(2 / n))
    crit = sp.t.ppf(1 - alpha / 2, df)
    return sp.nct.sf(crit, df, nc) + sp.nct.cdf(-crit, df, nc)


@pytest.mark.parametrize("paired", [True, False])
def test_sample_size_and_detectable_difference_from_the_noncentral_t(paired):
    sd, alpha = 0.012, 0.05 / 3
    mde = stats.minimum_detectable_difference(sd, 5, alpha, paired=paired)
    assert power_by_nct(mde, sd, 5, alpha, paired) == pytest.approx(0.8, abs=1e-6)
    n = stats.sample_size(0.01, sd, alpha, paired=paired)
    assert power_by_nct(0.01, sd, n, alpha, paired) >= 0.8
    assert power_by_nct(0.01, sd, n - 1, alpha, paired) < 0.8
    # a smaller family-wise alpha needs more seeds
    assert stats.sample_size(0.01, sd, 0.05, paired=paired) < n


def test_sample_sizes_match_cohens_tables():
    # d = 0.5 at alpha 0.05, power 0.8: 34 pairs (paired), 64 per group (two samples)
    assert stats.sample_size(0.5, 1.0, 0.05, paired=True) == 34
    assert stats.sample_size(0.5, 1.0, 0.05, paired=False) == 64
    assert stats.sample_size(0.01, 0.0, 0.05) is None  # no spread: nothing to plan with
    assert math.isnan(stats.minimum_detectable_difference(0.01, 1, 0.05))


def test_metrics_equal_but_for_rounding_are_equal_and_scipy_stays_quiet():
    """0.1 + 0.2 against 0.3: the same accuracy summed two ways. Kept as they were, scipy's
    t-tests printed a RuntimeWarning (catastrophic cancellation) and found a difference."""
    import warnings

    from lossbench.results.stats import paired_t_p, welch_p

    noisy = [0.1 + 0.2, 0.3, 0.3]
    spread = [0.3, 0.4, 0.1 + 0.2]  # a real spread beside a constant sample
    a, b = [0.35, 0.41, 0.45, 0.5], [0.3, 0.3, 0.1 + 0.2, 0.31]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's own warning for the reference below
        welch = sp.ttest_ind([0.3, 0.4, 0.3], [0.3, 0.3, 0.3], equal_var=False).pvalue
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert paired_t_p([0.3, 0.3, 0.3], noisy) == 1.0
        assert welch_p([0.3, 0.3, 0.3], noisy) == 1.0
        assert welch_p(spread, noisy) == pytest.approx(welch)
        assert paired_t_p(a, b) == pytest.approx(sp.ttest_rel(a, b).pvalue)

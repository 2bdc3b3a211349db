"""Statistics of timing samples (tritonlab/measure/stats.py) on synthetic samples with known answers."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from tritonlab.measure.stats import (
    StopRule,
    StopTracker,
    median_ci,
    ratio_of_medians_ci,
    summarize,
)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 999])
def test_median_quartiles_iqr_match_the_statistics_module(n):
    rng = np.random.default_rng(n)
    x = list(rng.lognormal(0.0, 0.5, size=n))
    s = summarize(x)
    assert s.n == n
    assert s.median == pytest.approx(statistics.median(x), rel=1e-12)
    if n >= 2:
        q1, _, q3 = statistics.quantiles(x, n=4, method="inclusive")
        assert s.q1 == pytest.approx(q1, rel=1e-12)
        assert s.q3 == pytest.approx(q3, rel=1e-12)
        assert s.iqr == pytest.approx(q3 - q1, rel=1e-12)
        assert s.std == pytest.approx(statistics.stdev(x), rel=1e-9)
    assert s.mean == pytest.approx(statistics.fmean(x), rel=1e-12)
    assert (s.min, s.max) == (min(x), max(x))


def test_median_and_iqr_ignore_outliers_that_move_the_mean():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.median, s.q1, s.q3, s.iqr) == (3.0, 2.0, 4.0, 2.0)
    assert s.mean == 22.0


def test_ci_brackets_the_median_and_is_reproducible():
    x = np.random.default_rng(1).normal(10.0, 1.0, size=200)
    s = summarize(x)
    lo, hi = s.ci
    assert lo <= s.median <= hi
    assert median_ci(x) == median_ci(x)
    assert s.rel_ci == pytest.approx(max(s.median - lo, hi - s.median) / s.median)


def test_ci_narrows_like_one_over_sqrt_n():
    rng = np.random.default_rng(2)
    widths = {}
    for n in (400, 6400):
        lo, hi = median_ci(rng.normal(5.0, 1.0, size=n))
        widths[n] = hi - lo
    # 16x the samples: 1/4 of the width (sampling noise allows a margin).
    assert 0.15 < widths[6400] / widths[400] < 0.4


def test_ci_covers_the_true_median_about_95_percent_of_the_time():
    # Lognormal(mu, 0.5) has median exp(mu) exactly; skewed like real timings.
    rng = np.random.default_rng(3)
    true_median = math.exp(1.0)
    trials, hits = 300, 0
    for t in range(trials):
        x = rng.lognormal(1.0, 0.5, size=51)
        lo, hi = median_ci(x, resamples=400, seed=t)
        hits += lo <= true_median <= hi
    assert 0.88 <= hits / trials <= 0.99


def test_ci_agrees_with_the_distribution_free_order_statistic_interval():
    # For n samples the exact ~95% CI of the median is [x_(j), x_(k)] with
    # j, k = n/2 -+ 1.96 sqrt(n)/2 (normal approximation of Binomial(n, 1/2)).
    n = 2001
    x = np.sort(np.random.default_rng(4).normal(0.0, 1.0, size=n))
    half = 1.96 * math.sqrt(n) / 2
    lo_exact, hi_exact = x[int(n / 2 - half)], x[int(math.ceil(n / 2 + half))]
    lo, hi = median_ci(x, resamples=2000)
    width = hi_exact - lo_exact
    assert abs(lo - lo_exact) < 0.25 * width
    assert abs(hi - hi_exact) < 0.25 * width


def test_no_ci_from_one_sample_and_bad_samples_rejected():
    s = summarize([3.0])
    assert s.ci is None and s.rel_ci == math.inf and s.iqr == 0.0
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, float("nan")])


def test_stop_rule_stops_on_ci_as_soon_as_tight_samples_allow():
    rule = StopRule(rel_ci=0.01, budget_s=10.0, min_samples=10)
    tracker = StopTracker(rule)
    rng = np.random.default_rng(5)
    samples = []
    reason = None
    while reason is None:
        samples.append(1.0 + rng.normal(0, 0.001))
        reason = tracker.reason(samples, elapsed_s=0.0)
    assert reason == "ci"
    assert len(samples) == rule.min_samples
    assert tracker.last_rel_ci <= 0.01


def test_stop_rule_goes_on_while_noisy_then_stops_on_budget():
    rule = StopRule(rel_ci=0.01, budget_s=1.0, min_samples=10)
    tracker = StopTracker(rule)
    rng = np.random.default_rng(6)
    samples = list(rng.uniform(0.5, 1.5, size=40))
    assert tracker.reason(samples, elapsed_s=0.5) is None
    assert tracker.last_rel_ci > 0.01
    samples += list(rng.uniform(0.5, 1.5, size=5))
    assert tracker.reason(samples, elapsed_s=1.0) == "budget"


def test_budget_never_stops_below_the_floor():
    tracker = StopTracker(StopRule(budget_s=0.1, min_samples=10))
    assert tracker.reason([5.0], elapsed_s=9.0) is None
    assert tracker.reason([5.0, 6.0], elapsed_s=9.0) is None
    assert tracker.reason([5.0, 6.0, 7.0], elapsed_s=9.0) == "budget"


def test_stop_rule_max_samples_and_growth_schedule():
    rule = StopRule(rel_ci=1e-9, budget_s=100.0, min_samples=4, max_samples=50, growth=2.0)
    tracker = StopTracker(rule)
    evaluated = []
    samples: list[float] = []
    for i in range(60):
        samples.append(1.0 + (i % 7) * 0.1)
        before = tracker.last_rel_ci
        why = tracker.reason(samples, elapsed_s=0.0)
        if tracker.last_rel_ci != before:
            evaluated.append(len(samples))
        if why:
            break
    assert why == "max_samples" and len(samples) == 50
    # The CI is recomputed at min_samples, then each time the count has doubled.
    assert evaluated[:3] == [4, 8, 16]


@pytest.mark.parametrize("bad", [dict(min_samples=1), dict(rel_ci=0), dict(budget_s=0),
                                 dict(min_samples=10, max_samples=5), dict(growth=1.0)])
def test_invalid_stop_rules_are_refused(bad):
    with pytest.raises(ValueError):
        StopRule(**bad)


def test_ratio_ci_of_a_doubled_run_brackets_two():
    rng = np.random.default_rng(7)
    base = rng.normal(2.0, 0.02, size=100)
    new = rng.normal(1.0, 0.01, size=100)
    lo, hi = ratio_of_medians_ci(base, new)
    assert lo < np.median(base) / np.median(new) < hi
    assert 1.97 < lo and hi < 2.03
    assert ratio_of_medians_ci([1.0], new) is None


def test_ratio_ci_of_identical_distributions_contains_one():
    rng = np.random.default_rng(8)
    lo, hi = ratio_of_medians_ci(rng.lognormal(0, 0.3, 80), rng.lognormal(0, 0.3, 80))
    assert lo < 1.0 < hi

"""Numbers across seeds, against hand computations and scipy's own tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from neuroplastic.analysis.intervals import (
    censored_interval,
    detectable_difference,
    equivalence,
    interval,
    paired,
)


def test_a_bounded_interval_never_leaves_its_range() -> None:
    # The README once showed 0.926 [0.848, 1.004] for an F1.
    values = [0.99, 0.98, 0.81]
    unbounded = interval(values)
    assert unbounded["ci_high"] > 1 and unbounded["method"] == "t"
    bounded = interval(values, bounds=(0.0, 1.0))
    assert bounded["method"] == "seed range"
    assert (bounded["ci_low"], bounded["ci_high"]) == (0.81, 0.99)
    assert bounded["mean"] == pytest.approx(np.mean(values))
    # Inside the range the t-interval stays.
    inside = interval([0.5, 0.55, 0.6], bounds=(0.0, 1.0))
    half = stats.t.ppf(0.975, 2) * np.std([0.5, 0.55, 0.6], ddof=1) / math.sqrt(3)
    assert inside["method"] == "t" and inside["ci_low"] == pytest.approx(0.55 - half)


def test_censored_runs_are_counted_and_make_the_mean_a_lower_bound() -> None:
    # Two seeds recover at 10 and 14 steps; one never does within its 90 steps.
    result = censored_interval([10.0, None, 14.0], [90.0, 90.0, 90.0])
    assert result["reached"] == 2 and result["censored"] == 1
    assert result["mean"] is None and result["ci_low"] is None  # no mean over survivors
    assert result["lower_bound"] == pytest.approx((10 + 90 + 14) / 3)
    assert result["at_least"] == [None, 90.0, None]
    assert result["method"] == "censored"
    # Nothing censored: an ordinary interval.
    plain = censored_interval([10.0, 12.0, 14.0], [90.0, 90.0, 90.0])
    assert plain["mean"] == 12 and plain["censored"] == 0 and plain["method"] == "t"


def test_equivalence_is_two_one_sided_t_tests() -> None:
    values = [0.004, -0.006, 0.001, 0.003, -0.002]
    margin = 0.02
    result = equivalence(values, margin)
    lower = stats.ttest_1samp(values, -margin, alternative="greater").pvalue
    upper = stats.ttest_1samp(values, margin, alternative="less").pvalue
    assert result["p"] == pytest.approx(max(lower, upper))
    assert result["equivalent"] is True
    # The README's -0.013 [-0.091, 0.066] from 3 seeds cannot claim "no difference" at 0.02.
    wide = equivalence([-0.09, 0.04, 0.011], margin)
    assert wide["equivalent"] is False and wide["admits"] > 0.05


def test_the_detectable_difference_matches_the_power_formula() -> None:
    values = [0.1, -0.05, 0.02, 0.07, -0.01]
    sd, n = np.std(values, ddof=1), len(values)
    expected = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert detectable_difference(values) == pytest.approx(expected)
    assert detectable_difference([0.1]) is None
    both = paired(values, margin=0.02, bounds=(-1.0, 1.0))
    assert both["detectable_80"] == pytest.approx(expected)
    assert both["equivalence"]["margin"] == 0.02


def test_steps_to_recover_keep_their_interval_inside_zero_to_the_budget() -> None:
    # The README's 1e-3 cell: a t-interval [-1.4, 18.7] would say recovery can take negative
    # steps; inside [0, budget] it gives way to the seeds' range.
    values = [1.9, 2.0, 21.6, 3.1, 2.5]
    loose = censored_interval(values, [90.0] * 5)
    assert loose["method"] == "t" and loose["ci_low"] < 0
    kept = censored_interval(values, [90.0] * 5, range_=(0.0, 90.0))
    assert kept["method"] == "seed range"
    assert (kept["ci_low"], kept["ci_high"]) == (1.9, 21.6)
    assert kept["mean"] == pytest.approx(np.mean(values))

"""Numbers across seeds, against hand computations and scipy's own tests."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from neuroplastic.analysis.intervals import (
    as_text,
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


def test_the_detectable_difference_has_the_power_it_claims() -> None:
    """At the returned difference a two-sided t-test rejects with probability 0.8: scipy's
    noncentral t where it is defined, and a simulation at 2 seeds (where the normal shortcut
    (t(0.975) + t(0.8)) x sd / sqrt(n) would have given only 0.73)."""
    values = [0.1, -0.05, 0.02, 0.07, -0.01]
    sd, n = np.std(values, ddof=1), len(values)
    found = detectable_difference(values)
    critical = stats.t.ppf(0.975, n - 1)
    shift = found / sd * math.sqrt(n)
    power = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
    assert power == pytest.approx(0.8, abs=1e-6)
    shortcut = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert found > shortcut  # the shortcut understates it
    assert detectable_difference([0.1]) is None
    assert detectable_difference([0.5, 0.5, 0.5]) == 0.0
    both = paired(values, margin=0.02, bounds=(-1.0, 1.0))
    assert both["detectable_80"] == found and both["equivalence"]["margin"] == 0.02
    # Two seeds: one degree of freedom, checked by simulation (200,000 pairs: +-0.003).
    two = detectable_difference([0.0, 1.0])
    draws = np.random.default_rng(0).normal(two, math.sqrt(0.5), size=(200_000, 2))
    t = draws.mean(1) / (draws.std(1, ddof=1) / math.sqrt(2))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 1)) == pytest.approx(0.8, abs=0.005)


def test_censored_differences_are_bounded_the_way_their_censoring_points() -> None:
    """treated - control per seed: a censored treated run is at least budget - control, a
    censored control at most treated - budget; both censored bound nothing, and bounds both
    ways leave the mean undetermined (never a mean over the rest)."""
    # Budget 100: the treated arm 10, 12; the control never got there in either seed.
    upper = censored_interval([None, None], [None, None], at_most=[10 - 100, 12 - 100])
    assert upper["method"] == "censored" and upper["upper_bound"] == pytest.approx(-89)
    assert upper["lower_bound"] is None and upper["censored_above"] == 2
    exact_and_upper = censored_interval([-29.0, None], [None, None], at_most=[None, -88.0])
    assert exact_and_upper["upper_bound"] == pytest.approx((-29 - 88) / 2)
    mixed = censored_interval([None, None, 5.0], [30.0, None, None], at_most=[None, -40.0, None])
    assert mixed["method"] == "undetermined" and mixed["mean"] is None
    assert mixed["lower_bound"] is None and mixed["upper_bound"] is None
    both = censored_interval([None, 3.0, 4.0], [90.0, None, None], at_most=[None, None, None])
    assert both["lower_bound"] == pytest.approx((90 + 3 + 4) / 3)
    neither = censored_interval(
        [None, None, 4.0], [90.0, None, None], unbounded=[False, True, False]
    )
    assert neither["method"] == "undetermined" and neither["undetermined"] == 1
    assert as_text(neither) == (
        "undetermined (1 of 3 seeds reached, 1 at least a bound, 1 with no bound (both censored))"
    )
    assert as_text(upper).startswith("≤ -89 (reached by 0 of 2 seeds; 2 censored")
    # A seed with no number, no bound and not unbounded lacks the measure (a round it never
    # ran): left out, as the ordinary interval leaves it.
    plain = censored_interval([10.0, 12.0, None], [None, None, None])
    assert plain["method"] == "t" and plain["missing"] == 1
    without = censored_interval([None, None, 4.0], [90.0, None, None])
    assert without["lower_bound"] == pytest.approx((90 + 4) / 2) and without["undetermined"] == 0


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

"""Numbers across seeds: intervals that stay in their measure's range, censored runs counted,
and claims of no difference made only with a margin.

Seeds are the unit of replication: every function here takes one number per seed (an
independent run), never one per neuron.

* :func:`interval` -- mean and 95% t-interval. For a bounded measure (an F1, an AUC, a share)
  a t-interval that leaves the range is replaced by the range of the seeds (``method``
  ``"seed range"``): with n seeds, [min, max] holds the median with probability 1 - 2^(1-n)
  (94% at 5 seeds, 75% at 3), and it never leaves the range.
* :func:`censored_interval` -- a measure some runs never reach (steps to recover, with runs
  that never recover): how many reached it and a bound on the mean (lower, or upper for a
  difference whose control never recovered), or "undetermined" where no bound holds; never
  a mean over the survivors alone.
* :func:`equivalence` -- two one-sided t-tests (TOST) against a margin: "no difference" is said
  only when the difference is shown to be inside the margin; otherwise the interval says how
  large a difference it still admits.
* :func:`detectable_difference` -- the smallest paired difference n seeds would detect with 80%
  power at this spread: a null result says nothing about effects below it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from scipy.integrate import quad
from scipy.optimize import brentq

#: the range of a measure, for those that have one
Bounds = tuple[float, float]


def _finite(values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray([math.nan if v is None else v for v in values], dtype=float)
    return array, array[np.isfinite(array)]


def _listed(array: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in array]


def t_half_width(finite: np.ndarray, confidence: float = 0.95) -> float:
    """Half the width of the t-interval of the mean of ``finite`` (two or more values)."""
    quantile = scipy_stats.t.ppf(0.5 + confidence / 2, len(finite) - 1)
    return float(quantile * finite.std(ddof=1) / math.sqrt(len(finite)))


def interval(
    values: Sequence[float | None], confidence: float = 0.95, bounds: Bounds | None = None
) -> dict[str, Any]:
    """Mean and t-interval of the finite values; ``n`` counts them, ``missing`` the others.

    With ``bounds``, a t-interval that would leave them gives way to the seeds' range
    (``method`` says which). None, not NaN, where there is no number: the result is valid JSON.
    """
    array, finite = _finite(values)
    result: dict[str, Any] = {
        "mean": float(finite.mean()) if len(finite) else None,
        "ci_low": None,
        "ci_high": None,
        "method": None,
        "n": int(len(finite)),
        "missing": int(len(array) - len(finite)),
        "values": _listed(array),
    }
    if len(finite) >= 2:
        half = t_half_width(finite, confidence)
        low, high = result["mean"] - half, result["mean"] + half
        result["method"] = "t"
        if bounds is not None and (low < bounds[0] or high > bounds[1]):
            low, high = float(finite.min()), float(finite.max())
            result["method"] = "seed range"
        result["ci_low"], result["ci_high"] = low, high
    return result


def censored_interval(
    values: Sequence[float | None],
    at_least: Sequence[float | None],
    confidence: float = 0.95,
    range_: Bounds | None = None,
    at_most: Sequence[float | None] | None = None,
    unbounded: Sequence[bool] | None = None,
) -> dict[str, Any]:
    """A measure that some runs never reached within their budget.

    ``values[i]`` is run i's number, or None when it is censored; ``at_least[i]`` is then what
    the run shows it is at least (its budget), or ``at_most[i]`` what it is at most (a
    difference treated - control whose control never got there); ``unbounded[i]`` marks a run
    censored both ways (both arms of a difference). A run with no number, no bound and not
    unbounded does not have the measure (a chase round it never ran) and is left out, as
    :func:`interval` leaves it (``missing``). With no run censored this is :func:`interval`.
    Otherwise ``mean`` and the interval are None (a mean over the runs that got there would be
    biased), and with bounds all one way ``lower_bound`` (or ``upper_bound``) is the mean with
    every censored run at its bound: the true mean is at least (at most) that. With bounds both
    ways, or an unbounded run, nothing bounds the mean: ``method`` "undetermined".
    ``reached``, ``censored``, ``censored_above`` and ``undetermined`` count the runs.
    ``range_``: the measure's range (steps: 0 to the budget), which a t-interval is kept
    inside as :func:`interval` does."""
    array, _ = _finite(values)
    lows, _ = _finite(at_least)
    highs, _ = _finite(at_most if at_most is not None else [None] * len(array))
    absent = ~np.isfinite(array)
    below = absent & np.isfinite(lows)
    above = absent & ~below & np.isfinite(highs)
    neither = absent & ~below & ~above & np.asarray(unbounded or [False] * len(array), bool)
    result = interval(values, confidence, bounds=range_)
    result.update(
        reached=int((~absent).sum()),
        censored=int(below.sum()),
        censored_above=int(above.sum()),
        undetermined=int(neither.sum()),
        lower_bound=None,
        upper_bound=None,
        at_least=_listed(np.where(below, lows, np.nan)),
        at_most=_listed(np.where(above, highs, np.nan)),
    )
    if not (below.any() or above.any() or neither.any()):
        return result
    result.update(mean=None, ci_low=None, ci_high=None, method="censored")
    if neither.any() or (below.any() and above.any()):
        result["method"] = "undetermined"
        return result
    filled = np.where(below, lows, np.where(above, highs, array))
    kept = filled[np.isfinite(filled)]
    result["lower_bound" if below.any() else "upper_bound"] = float(kept.mean())
    return result


def equivalence(
    values: Sequence[float | None], margin: float, alpha: float = 0.05
) -> dict[str, Any]:
    """Two one-sided t-tests of |mean| < ``margin`` across seeds (Schuirmann's TOST).

    ``equivalent`` is True only when both one-sided tests reject at ``alpha`` (p = the larger of
    the two); ``admits`` is the largest |difference| inside the (1 - 2 alpha) interval, what the
    data cannot yet rule out. None where fewer than two seeds have a number."""
    _, finite = _finite(values)
    result: dict[str, Any] = {
        "margin": margin,
        "alpha": alpha,
        "p": None,
        "equivalent": None,
        "admits": None,
    }
    if len(finite) < 2:
        return result
    mean = float(finite.mean())
    se = float(finite.std(ddof=1) / math.sqrt(len(finite)))
    dof = len(finite) - 1
    if se == 0:
        p = 0.0 if abs(mean) < margin else 1.0
        admits = abs(mean)
    else:
        p_lower = 1 - scipy_stats.t.cdf((mean + margin) / se, dof)
        p_upper = scipy_stats.t.cdf((mean - margin) / se, dof)
        p = float(max(p_lower, p_upper))
        half = t_half_width(finite, 1 - 2 * alpha)
        admits = max(abs(mean - half), abs(mean + half))
    result.update(p=p, equivalent=bool(p < alpha), admits=float(admits))
    return result


def detectable_difference(
    values: Sequence[float | None], power: float = 0.8, alpha: float = 0.05
) -> float | None:
    """The smallest true paired difference a two-sided t-test at ``alpha`` over these seeds
    would find with probability ``power``, at their observed spread: the noncentrality that
    gives the test that power (:func:`_detectable_shift`) x sd / sqrt(n). Exact for normal
    differences; the normal shortcut (t(1 - alpha/2) + t(power)) x sd / sqrt(n) understates it
    by 16% at 2 seeds. None below two seeds."""
    _, finite = _finite(values)
    if len(finite) < 2:
        return None
    n = len(finite)
    return float(_detectable_shift(n - 1, power, alpha) * finite.std(ddof=1) / math.sqrt(n))


@functools.cache
def _detectable_shift(dof: int, power: float, alpha: float) -> float:
    """The noncentrality at which a two-sided t-test with ``dof`` degrees of freedom rejects
    with probability ``power``: T = (Z + shift) / sqrt(V / dof), V chi-squared, integrated over
    V (scipy's nct is NaN at one degree of freedom and a large shift). It depends on the
    seeds' count alone, so it is solved once per count."""
    critical = scipy_stats.t.ppf(1 - alpha / 2, dof)
    chi2 = scipy_stats.chi2(dof)

    def shortfall(shift: float) -> float:
        def rejects(v: float) -> float:
            scale = critical * math.sqrt(v / dof)
            return float(
                (scipy_stats.norm.cdf(shift - scale) + scipy_stats.norm.cdf(-shift - scale))
                * chi2.pdf(v)
            )

        return quad(rejects, 0, math.inf, limit=200)[0] - power

    upper = critical + scipy_stats.norm.ppf(power) + 1.0
    while shortfall(upper) < 0:
        upper *= 2
    return float(brentq(shortfall, 0.0, upper, xtol=1e-9))


def paired(
    values: Sequence[float | None],
    margin: float | None = None,
    bounds: Bounds | None = None,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """A paired difference across seeds: its :func:`interval`, the difference 80% power would
    detect (``detectable_80``) and, with a ``margin``, the :func:`equivalence` test."""
    result = interval(values, confidence, bounds)
    result["detectable_80"] = detectable_difference(values)
    if margin is not None:
        result["equivalence"] = equivalence(values, margin)
    return result


# -- as text ---------------------------------------------------------------------------------
def number_text(value: float) -> str:
    """Three significant digits; whole numbers from 100 up (neuron counts, not 1.84e+03)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def as_text(value: dict[str, Any]) -> str:
    """A measure across seeds as text: mean [interval]; a censored measure as its bound and how
    many seeds reached it; '(seed range)' where a t-interval would have left the measure's
    range; a paired difference with what its equivalence test and power say."""
    mean, low, high = value["mean"], value["ci_low"], value["ci_high"]
    if value.get("method") in ("censored", "undetermined"):
        return _censored_text(value)
    if mean is None:
        text = "n/a"
    elif low is None:
        text = number_text(mean)
    else:
        text = f"{number_text(mean)} [{number_text(low)}, {number_text(high)}]"
        if value.get("method") == "seed range":
            text += " (seed range)"
    if value.get("missing"):
        text += f" (n/a in {value['missing']} of {value['n'] + value['missing']} seeds)"
    test = value.get("equivalence")
    if test and test.get("p") is not None:
        margin = number_text(test["margin"])
        if test["equivalent"]:
            text += f"; within ±{margin} (TOST p = {test['p']:.3f})"
        else:
            text += f"; not shown within ±{margin}: admits up to {number_text(test['admits'])}"
    if value.get("detectable_80") is not None:
        text += f"; 80% power detects ±{number_text(value['detectable_80'])}"
    return text


def _censored_text(value: dict[str, Any]) -> str:
    reached, below = value["reached"], value["censored"]
    above, neither = value.get("censored_above", 0), value.get("undetermined", 0)
    n = reached + below + above + neither
    if value["method"] == "undetermined":
        parts = [f"{reached} of {n} seeds reached", f"{below} at least a bound"]
        parts += [f"{above} at most a bound", f"{neither} with no bound (both censored)"]
        kept = [p for p in parts[1:] if not p.startswith("0 ")]
        return f"undetermined ({', '.join([parts[0], *kept])})"
    if below:
        return (
            f"≥ {number_text(value['lower_bound'])} (reached by {reached} of {n} seeds; "
            f"{below} censored at their budget)"
        )
    return (
        f"≤ {number_text(value['upper_bound'])} (reached by {reached} of {n} seeds; {above} "
        "censored: at most their bound)"
    )

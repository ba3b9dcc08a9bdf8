"""A chase's rounds (``--rounds``) and a pre-emption's arms (``--preempt``) across seeds: per
round or arm, mean and interval of each measure, a round that never recovered censored at its
budget, and the paired differences against the control."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from neuroplastic.analysis.intervals import censored_interval, interval, paired
from neuroplastic.analysis.measures import (
    CHASE_MEASURES,
    PREEMPT_MEASURES,
    ROUND_BOUNDS,
    STEPS_MEASURES,
    _difference_bounds,
    _minus,
    _nan,
)
from neuroplastic.config import (
    CONCEPT_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
)


def chase_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per round of a chase, per arm, mean and 95% t-interval across seeds of every
    :data:`CHASE_MEASURES`, and of the per-seed concept-minus-random difference (paired).

    A seed whose chase stopped before round r (``--stop-below``) has no number there: it counts
    as missing (``missing`` of the interval; ``seeds_reached`` lists the seeds that ran the
    round), so a later round's mean is over the seeds where the concept still came back
    enough to go on: compare rounds with that in mind."""
    seeds = [r["seed"] for r in runs]
    n_rounds = max(r["chase"]["rounds"] for r in runs if "chase" in r)
    by_seed = [
        {rec["round"]: rec["arms"] for rec in r["chase"]["per_round"]} if "chase" in r else {}
        for r in runs
    ]
    arms = list(dict.fromkeys(a for rounds in by_seed for arms in rounds.values() for a in arms))
    result = []
    one_shot = [(r.get("chase") or {}).get("one_shot") for r in runs]
    for round_ in range(1, n_rounds + 1):
        per_seed = [rounds.get(round_, {}) for rounds in by_seed]
        entry: dict[str, Any] = {
            "round": round_,
            "seeds_reached": [s for s, arms_ in zip(seeds, per_seed, strict=True) if arms_],
            "arms": {
                arm: {m: _across_rounds(m, [a.get(arm) for a in per_seed]) for m in CHASE_MEASURES}
                for arm in arms
            },
        }
        if {CONCEPT_ARM, RANDOM_ARM} <= set(arms):
            pair = (CONCEPT_ARM, RANDOM_ARM)
            pairs = [(a[pair[0]], a[pair[1]]) if set(pair) <= set(a) else None
                     for a in per_seed]  # fmt: skip
            entry["concept_minus_random"] = {m: _chase_difference(m, pairs) for m in CHASE_MEASURES}
        result.append(entry)
    once = {}
    if any(one_shot):
        once = {
            "one_shot": {
                m: paired([o[m] if o else None for o in one_shot])
                if m == "one_shot_minus_chase"
                else _across_rounds(m, one_shot)
                for m in ("retrained", "drop", "steps_to_recover", "one_shot_minus_chase")
            }
        }
    return {
        **once,
        "rounds": n_rounds,
        "stopped_early": {
            str(r["seed"]): r["chase"]["stopped_early"]
            for r in runs
            if "chase" in r and r["chase"]["stopped_early"]
        },
        "per_round": result,
    }


def _across_rounds(measure: str, per_seed: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """One arm's ``measure`` across seeds (None: the seed did not run it); a round that never
    recovered is censored at its budget, never dropped (runs from before budgets were
    recorded count as missing)."""
    values = [a[measure] if a else None for a in per_seed]
    if measure not in STEPS_MEASURES:
        return interval(values, bounds=ROUND_BOUNDS.get(measure))
    at_least = [
        a.get("budget") if a and not math.isfinite(_nan(a[measure])) else None for a in per_seed
    ]
    return censored_interval(values, at_least)


def _chase_difference(measure: str, pairs: Sequence[tuple[dict, dict] | None]) -> dict[str, Any]:
    """concept - random of ``measure`` per seed (None: a seed without both arms); of a steps
    measure, a censored arm's seed bounded as :func:`_censored_differences` says."""
    values = [_minus(p[0][measure], p[1][measure]) if p else None for p in pairs]
    if measure not in STEPS_MEASURES:
        return interval(values, bounds=_difference_bounds(ROUND_BOUNDS.get(measure)))
    return censored_interval(values, **_censored_differences(measure, pairs))


def _censored_differences(
    measure: str, pairs: Sequence[tuple[dict, dict] | None]
) -> dict[str, list]:
    """:func:`censored_interval`'s bounds of treated - control of a steps measure, per seed:
    at least the treated budget minus the control's steps when the treated arm never
    recovered, at most the treated steps minus the control's budget when the control never
    did, unbounded when neither did (None: a seed without the pair)."""

    def censored(arm: dict) -> bool:
        return not math.isfinite(_nan(arm[measure]))

    at_least = [
        _minus(p[0].get("budget"), p[1][measure]) if p and censored(p[0]) else None for p in pairs
    ]
    at_most = [
        _minus(p[0][measure], p[1].get("budget"))
        if p and censored(p[1]) and not censored(p[0])
        else None
        for p in pairs
    ]
    unbounded = [bool(p and censored(p[0]) and censored(p[1])) for p in pairs]
    return {"at_least": at_least, "at_most": at_most, "unbounded": unbounded}


def _paired_steps(measure: str, pairs: Sequence[tuple[dict, dict]]) -> dict[str, Any]:
    """A paired difference across seeds (:func:`paired`, with its power and equivalence test);
    of a steps measure with a censored seed in either arm, the censored interval instead."""
    values = [_minus(t[measure], c[measure]) for t, c in pairs]
    if measure in STEPS_MEASURES and any(
        not math.isfinite(_nan(arm[measure])) for pair in pairs for arm in pair
    ):
        return censored_interval(values, **_censored_differences(measure, pairs))
    return paired(values, bounds=_difference_bounds(ROUND_BOUNDS.get(measure)))


def preempt_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% t-interval across seeds of every :data:`PREEMPT_MEASURES` per arm, of the
    per-seed preempt-minus-control difference (paired: same batches, same count per layer)
    and of the overlap of the two arms' extra neurons."""
    present = [r["preempt"] for r in runs if "preempt" in r]
    arms = list(present[0]["arms"])

    def control(p: dict[str, Any]) -> dict[str, Any]:
        return p["arms"][PREEMPT_RANDOM_ARM]

    return {
        "predictor": present[0]["predictor"],
        "count": present[0]["count"],
        "seeds": [r["seed"] for r in runs if "preempt" in r],
        "overlap": interval([p["overlap"] for p in present]),
        "arms": {
            arm: {m: _across_rounds(m, [p["arms"][arm] for p in present]) for m in PREEMPT_MEASURES}
            for arm in arms
        },
        # paired per seed, with the difference 80% power would detect: a null result says
        # nothing about effects smaller than that (a censored seed: a bound instead)
        "preempt_minus_control": {
            m: _paired_steps(m, [(p["arms"][PREEMPT_ARM], control(p)) for p in present])
            for m in PREEMPT_MEASURES
        },
        **_oracle_across(present),
    }


def _oracle_across(present: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The oracle minus the control across seeds, and the predictor's share of it: the mean
    paired difference over the mean oracle difference (a ratio of means: a per-seed ratio
    explodes where one seed's oracle bought almost nothing).

    The share is only defined where the oracle's own change is shown: with its interval
    across seeds containing 0, the denominator is noise and any ratio (9.2 on a real sweep)
    reads as a finding; it is then None, and ``share_undefined`` says why."""
    if not all("oracle_minus_control" in p for p in present):
        return {}
    pairs = [(p["arms"][PREEMPT_ORACLE_ARM], p["arms"][PREEMPT_RANDOM_ARM]) for p in present]
    oracle = {m: _paired_steps(m, pairs) for m in PREEMPT_MEASURES}
    bought = interval([p["preempt_minus_control"]["recovery_auc"] for p in present])["mean"]
    bound = oracle["recovery_auc"]
    shown = bound["ci_low"] is not None and (bound["ci_low"] > 0 or bound["ci_high"] < 0)
    result: dict[str, Any] = {"oracle_minus_control": oracle}
    if bought is not None and shown:
        result["share_of_oracle_auc"] = bought / bound["mean"]
    else:
        result["share_of_oracle_auc"] = None
        result["share_undefined"] = (
            "the oracle's recovery-AUC change over random survivors is not distinguishable "
            "from 0 across seeds (its 95% interval contains 0): hindsight bought nothing "
            "shown, so no share of it is defined"
            if bound["ci_low"] is not None
            else "fewer than two seeds with the oracle arm: no interval to show its change"
        )
    return result

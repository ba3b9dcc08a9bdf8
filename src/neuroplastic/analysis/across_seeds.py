"""Across seeds, a sweep cell's runs as one (:func:`aggregate`): mean and 95% interval of every
measure and stage score per arm, the paired concept-minus-random differences, readability,
savings; a chase's rounds, a pre-emption's arms and the predictors' scores
(:mod:`~neuroplastic.analysis.across_rounds`, :mod:`~neuroplastic.analysis.across_predictions`).
Seeds are the unit of replication: every interval is over independent runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from neuroplastic.analysis.across_predictions import causal_across_seeds, prediction_across_seeds
from neuroplastic.analysis.across_rounds import chase_across_seeds, preempt_across_seeds
from neuroplastic.analysis.intervals import censored_interval, interval, paired
from neuroplastic.analysis.measures import (
    F1_BOUNDS,
    MARGINS,
    STAGE_SCORE,
    MeasureTable,
    _difference_bounds,
    _minus,
    measure_table,
)
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, RANDOM_ARM
from neuroplastic.core.curves import (
    NEITHER_REACHED,
)


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and 95% interval across runs (seeds) of every measure and stage score, per arm, and
    of the per-seed concept-minus-random difference (paired, with the difference 80% power
    would detect and an equivalence test against :data:`MARGINS`). Runs that never recovered
    are censored (:func:`~neuroplastic.analysis.intervals.censored_interval`), never dropped.
    The measures are the runs' task's (:func:`~neuroplastic.analysis.measures.measure_table`),
    and so are the stage scores: entity F1, or next-token loss per kind of token."""
    arms = list(runs[0]["arms"])
    task = runs[0].get("task", "ner")
    table, score = measure_table(task), STAGE_SCORE[task]
    score_bounds = F1_BOUNDS if score == "f1" else None  # a loss has no ceiling
    result: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "arms": {}}
    endings = [(r.get("base") or {}).get("stopped") for r in runs]
    result["base_stopped"] = {str(e): endings.count(e) for e in dict.fromkeys(endings)}
    for arm in arms:
        per_arm = [r["arms"][arm] for r in runs]
        stages = list(per_arm[0][score])
        result["arms"][arm] = {
            **{m: _across(m, per_arm, table) for m in table.descriptions},
            score: {
                stage: {
                    entity: interval(
                        [a[score][stage][entity] for a in per_arm], bounds=score_bounds
                    )
                    for entity in per_arm[0][score][stage]
                }
                for stage in stages
            },
            "grid": _grid(per_arm),
            "curves": [a["curve"] for a in per_arm],
        }
        readable = _readable_across(per_arm)
        if readable:
            result["arms"][arm]["readable"] = readable
        readability = _readability_across(per_arm)
        if readability:
            result["arms"][arm]["readability"] = readability
        kinds = sorted({a["control"] for a in per_arm if "control" in a})
        if kinds:
            result["arms"][arm]["control"] = kinds[0] if len(kinds) == 1 else kinds
    if RANDOM_ARM in arms:
        result["concept_minus_random"] = {
            m: _paired_across(
                m,
                [r["arms"][CONCEPT_ARM] for r in runs],
                [r["arms"][RANDOM_ARM] for r in runs],
                table,
            )
            for m in table.descriptions
        }
    prediction = prediction_across_seeds(runs)
    if prediction:
        result["prediction"] = prediction
    causal = causal_across_seeds(runs)
    if causal:
        result["causal"] = causal
    if any("chase" in r for r in runs):
        result["chase"] = chase_across_seeds(runs)
    if any("preempt" in r for r in runs):
        result["preempt"] = preempt_across_seeds(runs)
    if any("savings" in r for r in runs):
        result["savings"] = savings_across_seeds(runs)
    return result


def _readable_across(per_arm: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage and layer, the concept probe's validation AUC across the seeds (an AUC: its
    interval kept in [0, 1]); the stages and layers every seed has."""
    tables = [a.get("readable") or {} for a in per_arm]
    stages = [s for s in tables[0] if all(s in t for t in tables)]
    return {
        stage: {
            layer: interval([t[stage][layer] for t in tables], bounds=F1_BOUNDS)
            for layer in tables[0][stage]
            if all(layer in t[stage] for t in tables)
        }
        for stage in stages
    }


def _readability_across(per_arm: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per point, stage and layer across the seeds: the sign-free readability
    (max(AUC, 1 - AUC)) and the raw AUC, each mean and interval (kept in [0, 1]), how many
    seeds' own interval holds 0.5, and ``at_chance``: the raw AUC's interval across seeds
    holds 0.5 and so does every seed's own. Only where every seed has the point, stage and
    layer; empty when a seed predates the readings."""
    tables = [a.get("probes") or {} for a in per_arm]
    if not all(tables):
        return {}
    result: dict[str, Any] = {}
    for point, stages in tables[0].items():
        if not all(point in t for t in tables):
            continue
        result[point] = {}
        for stage, layers in stages.items():
            if not all(stage in t[point] for t in tables):
                continue
            result[point][stage] = {}
            for layer in layers:
                if not all(layer in t[point][stage] for t in tables):
                    continue
                readings = [t[point][stage][layer] for t in tables]
                raw = interval([r["auc"] for r in readings], bounds=F1_BOUNDS)
                own = sum(r["low"] <= 0.5 <= r["high"] for r in readings)
                spans = raw["ci_low"] is None or raw["ci_low"] <= 0.5 <= raw["ci_high"]
                result[point][stage][layer] = {
                    "sign_free": interval([r["sign_free"] for r in readings], bounds=F1_BOUNDS),
                    "auc": raw,
                    "seeds_at_chance": own,
                    "at_chance": bool(spans and own == len(readings)),
                }
    return result


def _budget(arm: dict[str, Any]) -> float | None:
    """The last retraining step a run's arm was evaluated at (a censored run's lower bound)."""
    return (arm.get("recovery") or {}).get("budget")


def _across(
    measure: str, per_arm: Sequence[dict[str, Any]], table: MeasureTable | None = None
) -> dict[str, Any]:
    table = table or measure_table()
    values = [a[measure] for a in per_arm]
    if measure in table.censored:
        budgets = [_budget(a) for a in per_arm]
        known = [b for b in budgets if b is not None]
        # steps lie in [0, budget]: a t-interval leaving them is replaced by the seeds' range
        bounds = (0.0, float(max(known))) if known else None
        return censored_interval(values, budgets, range_=bounds)
    return interval(values, bounds=table.bounds.get(measure))


def _paired_across(
    measure: str,
    treated: Sequence[dict[str, Any]],
    control: Sequence[dict[str, Any]],
    table: MeasureTable | None = None,
) -> dict[str, Any]:
    """The per-seed difference treated - control of ``measure``, across seeds. Of a censored
    measure: a seed whose treated run never got there differs by at least its budget minus the
    control's number, one whose control never did by at most the treated number minus the
    control's budget, one where neither did by anything (the mean is then undetermined)."""
    table = table or measure_table()
    pairs = list(zip(treated, control, strict=True))
    values = [_minus(t[measure], c[measure]) for t, c in pairs]
    if measure in table.censored and any(
        t[measure] is None or c[measure] is None for t, c in pairs
    ):
        result = censored_interval(
            values,
            [_minus(_budget(t), c[measure]) if t[measure] is None else None for t, c in pairs],
            at_most=[
                _minus(t[measure], _budget(c)) if c[measure] is None else None for t, c in pairs
            ],
            unbounded=[t[measure] is None and c[measure] is None for t, c in pairs],
        )
        result["margin"] = table.margins.get(measure)
        return result
    return paired(values, table.margins.get(measure), _difference_bounds(table.bounds.get(measure)))


def _grid(per_arm: Sequence[dict[str, Any]]) -> list[float] | list[list[float]]:
    """The retraining steps the arm was evaluated at: one list when every seed had the same."""
    grids = [list((a.get("recovery") or {}).get("grid") or a["curve"]["step"]) for a in per_arm]
    return grids[0] if all(g == grids[0] for g in grids) else grids


def savings_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """:data:`SAVINGS_MEASURES` across the seeds that have them, at
    :data:`~neuroplastic.config.RECOVERY_TARGET` of base and at every share of
    :data:`~neuroplastic.core.curves.SAVINGS_TARGETS` (``targets``); censored seeds
    are counted at their bound, never dropped
    (:func:`~neuroplastic.analysis.intervals.censored_interval`): a naive arm that never
    learned makes a seed's savings at least its value at the naive budget, a concept arm that
    never relearned at most its value at its own budget. ``naive_minus_concept_base``: per
    other entity type, the naive base's F1 minus the concept arm's base's, paired per seed."""
    present = [r["savings"] for r in runs if "savings" in r]
    result = {
        "seeds": [r["seed"] for r in runs if "savings" in r],
        **_savings_at(present),
        "naive_base_f1": interval([s["naive_base_f1"] for s in present], bounds=F1_BOUNDS),
        "naive_first_stage_f1": interval([s["first_stage_f1"] for s in present], bounds=F1_BOUNDS),
        "naive_curves": [s["curve"] for s in present],
    }
    if all("targets" in s for s in present):
        result["targets"] = {
            share: _savings_at([s["targets"][share] for s in present])
            for share in present[0]["targets"]
        }
        result["targets_reached"] = {
            share: {
                CONCEPT_ARM: sum(
                    s["targets"][share]["steps_relearned"] is not None for s in present
                ),
                NAIVE_ARM: sum(s["targets"][share]["steps_naive"] is not None for s in present),
                "of": len(present),
            }
            for share in present[0]["targets"]
        }
    if all("naive_minus_concept_base" in s for s in present):
        entities = [e for e in present[0]["naive_minus_concept_base"]]
        result["naive_minus_concept_base"] = {
            e: paired(
                [s["naive_minus_concept_base"].get(e) for s in present],
                MARGINS["drop_at_pruning"],  # an F1 margin
                bounds=(-1.0, 1.0),
            )
            for e in entities
        }
    return result


def _savings_at(present: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Savings, each arm's steps and the area between the curves at one target, across seeds."""

    def bounded(kind: str) -> list[float | None]:
        return [s["savings"] if s["bound"] == kind else None for s in present]

    return {
        "savings": censored_interval(
            bounded("exact"),
            bounded("lower"),
            range_=(-math.inf, 1.0),
            at_most=bounded("upper"),
            unbounded=[s.get("why_none") == NEITHER_REACHED for s in present],
        ),
        "steps_relearned": censored_interval(
            [s["steps_relearned"] for s in present],
            [
                (s.get("relearn_budget") or s["naive_budget"])
                if s["steps_relearned"] is None
                else None
                for s in present
            ],
        ),
        "steps_naive": censored_interval(
            [s["steps_naive"] for s in present],
            [None if s["naive_reached"] else s["naive_budget"] for s in present],
        ),
        "area_between": interval([s["area_between"] for s in present], bounds=(-1.0, 1.0)),
    }

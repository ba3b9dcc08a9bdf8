"""Along one axis of a sweep's grid: the retrainer's best case per seed (:func:`best_cases`)
and the paired differences each value makes against the grid's first
(:func:`axis_differences`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from neuroplastic.analysis.across_seeds import _budget, _paired_across
from neuroplastic.analysis.intervals import censored_interval, interval, paired
from neuroplastic.analysis.measures import (
    F1_BOUNDS,
    MEASURES,
    RECOVERY_STEPS,
    _minus,
)
from neuroplastic.config import CONCEPT_ARM


def _along(settings: dict[str, dict[str, Any]], axis: str) -> list[list[str]]:
    """The cells grouped by every setting but ``axis``, each group in grid order: cells that
    differ in ``axis`` alone."""
    groups: dict[tuple, list[str]] = {}
    for cell, values in settings.items():
        rest = tuple((k, repr(v)) for k, v in values.items() if k != axis)
        groups.setdefault(rest, []).append(cell)
    return list(groups.values())


def best_cases(
    measured: dict[str, dict[int, dict[str, Any]]],
    settings: dict[str, dict[str, Any]],
    axis: str,
) -> list[dict[str, Any]]:
    """The retrainer's best case over ``axis``, as the tamper-resistance literature reports a
    defence's worst case: for each group of cells that differ in ``axis`` alone, per seed the
    value that recovered the concept fastest (fewest steps to lasting recovery at
    :data:`~neuroplastic.config.RECOVERY_TARGET` of base, :data:`RECOVERY_STEPS`; a seed where
    none got there is censored at the smallest budget) and the one that ended with the highest
    concept F1, then both across seeds. The choice is made per seed, after the fact: an upper
    bound on what a retrainer who tunes ``axis`` gets."""
    cases = []
    for cells in _along(settings, axis):
        if len(cells) < 2:
            continue
        seeds = sorted(set.intersection(*(set(measured[c]) for c in cells)))
        fastest, at_least, highest = [], [], []
        chosen_fastest, chosen_highest = [], []
        for seed in seeds:
            concept = {c: measured[c][seed]["arms"][CONCEPT_ARM] for c in cells}
            reached = {
                c: a[RECOVERY_STEPS] for c, a in concept.items() if a[RECOVERY_STEPS] is not None
            }
            # A cell that never got there within a budget shorter than the best steps may
            # still have been the fastest: then only a bound (its budget) is known.
            shorter = [
                _budget(a)
                for c, a in concept.items()
                if c not in reached
                and _budget(a) is not None
                and _budget(a) < min(reached.values(), default=math.inf)
            ]
            if reached and not shorter:
                best = min(reached, key=reached.__getitem__)
                fastest.append(reached[best])
                at_least.append(None)
                chosen_fastest.append(settings[best][axis])
            else:
                fastest.append(None)
                at_least.append(
                    min(shorter)
                    if reached
                    else min(_budget(a) or math.inf for a in concept.values())
                )
                chosen_fastest.append(None)
            finals = {c: _last_f1(measured[c][seed], a) for c, a in concept.items()}
            top = max(finals, key=finals.__getitem__)
            highest.append(finals[top])
            chosen_highest.append(settings[top][axis])
        cases.append(
            {
                "fixed": {k: v for k, v in settings[cells[0]].items() if k != axis},
                "values": [settings[c][axis] for c in cells],
                "cells": cells,
                "seeds": seeds,
                "fastest_recovery": censored_interval(fastest, at_least),
                "fastest_value": chosen_fastest,
                "highest_final_f1": interval(highest, bounds=F1_BOUNDS),
                "highest_value": chosen_highest,
            }
        )
    return cases


def axis_differences(
    measured: dict[str, dict[int, dict[str, Any]]],
    settings: dict[str, dict[str, Any]],
    axis: str,
) -> list[dict[str, Any]]:
    """Does ``axis`` move the measures beyond seed noise? For each group of cells that differ
    in ``axis`` alone, each other value's cell against the first value's (the reference, the
    grid's first value), per seed first and then across the seeds both have: every arm's
    :data:`MEASURES` and its F1 per stage and entity, as paired differences (value - reference;
    interval, the difference 80% power would detect and, for a measure with one, the
    equivalence test against :data:`MARGINS`). Seeds pair because a seed fixes the data, the
    split and the order of the batches in every cell."""
    cases = []
    for cells in _along(settings, axis):
        reference = cells[0]
        for cell in cells[1:]:
            seeds = sorted(set(measured[reference]) & set(measured[cell]))
            if not seeds:
                continue
            treated = [measured[cell][s]["arms"] for s in seeds]
            control = [measured[reference][s]["arms"] for s in seeds]
            arms = [a for a in control[0] if all(a in every for every in (*treated, *control))]
            cases.append(
                {
                    "fixed": {k: v for k, v in settings[cell].items() if k != axis},
                    "reference": settings[reference][axis],
                    "value": settings[cell][axis],
                    "cells": [reference, cell],
                    "seeds": seeds,
                    # base fine-tuning's steps to its plateau (a setting that changes training
                    # can change when the base stops)
                    "base_steps": paired(
                        [
                            _minus(
                                measured[cell][s]["base"].get("steps"),
                                measured[reference][s]["base"].get("steps"),
                            )
                            for s in seeds
                        ]
                    ),
                    "arms": {
                        arm: _arm_difference([t[arm] for t in treated], [c[arm] for c in control])
                        for arm in arms
                    },
                }
            )
    return cases


def _arm_difference(
    treated: Sequence[dict[str, Any]], control: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One arm's paired differences treated - control across seeds: every measure, and its F1
    at every stage and entity both have."""
    stages = [s for s in control[0]["f1"] if all(s in a["f1"] for a in (*treated, *control))]
    return {
        **{m: _paired_across(m, treated, control) for m in MEASURES},
        "f1": {
            stage: {
                entity: paired(
                    [
                        t["f1"][stage][entity] - c["f1"][stage][entity]
                        for t, c in zip(treated, control, strict=True)
                    ],
                    bounds=(-1.0, 1.0),
                )
                for entity in control[0]["f1"][stage]
            }
            for stage in stages
        },
    }


def _last_f1(run: dict[str, Any], arm: dict[str, Any]) -> float:
    """The concept F1 an arm ended round 1 with."""
    return float(list(arm["f1"].values())[-1][run["concept"]])

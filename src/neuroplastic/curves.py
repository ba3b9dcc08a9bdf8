"""How fast a score comes back: the measures of a recovery curve (concept F1 against step)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: ``{"step": [...], "f1": [...]}`` in step order (a DataFrame with those columns will do)
Curve = Mapping[str, Any]


def steps_to_recover(curve: Curve, target: float) -> float:
    """The first step at which the curve reaches ``target``, linearly interpolated between the
    evaluations around it; 0 if it never fell below; NaN if it never gets there."""
    steps, values = np.asarray(curve["step"], float), np.asarray(curve["f1"], float)
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value >= target:
            if i == 0:
                return float(step)
            before, at = values[i - 1], value
            return float(steps[i - 1] + (target - before) / (at - before) * (step - steps[i - 1]))
    return math.nan


def recovery_auc(curve: Curve, base: float) -> float:
    """Mean of F1 / base over the retraining steps (trapezoids between evaluations); NaN when
    the base F1 is 0 (nothing to recover)."""
    if base <= 0:
        return math.nan
    steps = np.asarray(curve["step"], float)
    values = np.asarray(curve["f1"], float) / base
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float(values[-1]) if len(values) else math.nan
    area = float(((values[1:] + values[:-1]) / 2 * np.diff(steps)).sum())
    return area / float(steps[-1] - steps[0])


#: retraining steps at which the share of the drop recovered is reported
SHARE_STEPS = (5, 10, 30)
#: below this drop (as a share of base F1) there is nothing to recover: the share is undefined
MIN_DROP = 0.1


def share_recovered(curve: Curve, base: float, step: float) -> float:
    """(F1_t - F1_pruned) / (F1_base - F1_pruned) at ``step`` (linear between evaluations),
    as the unlearning literature reports recovery; F1_pruned is the curve's first point. NaN
    when ``step`` is beyond the last evaluation or the drop is under ``MIN_DROP`` of base (a
    control that barely fell has no drop to take a share of)."""
    steps, values = np.asarray(curve["step"], float), np.asarray(curve["f1"], float)
    if not len(steps) or step > steps[-1] or step < steps[0]:
        return math.nan
    drop = base - values[0]
    if base <= 0 or drop < MIN_DROP * base:
        return math.nan
    return float((np.interp(step, steps, values) - values[0]) / drop)


def recovery(curve: Curve, base: float, target_share: float = 0.9) -> dict[str, Any]:
    """Every recovery measure of one curve, with the grid it was read from.

    ``steps_to_recover`` is None when the curve never reaches ``target_share`` x ``base``
    within its last evaluation (``budget``): the run is censored (``reached`` False), and its
    steps are at least the budget. Never drop such a run from an average: count it."""
    steps = [float(s) for s in curve["step"]]
    target = target_share * base
    to_target = steps_to_recover(curve, target) if base > 0 else math.nan
    return {
        "grid": steps,
        "target": target,
        "budget": steps[-1] if steps else None,
        "reached": bool(math.isfinite(to_target)),
        "steps_to_recover": to_target if math.isfinite(to_target) else None,
        "auc": _finite_or_none(recovery_auc(curve, base)),
        "share_recovered": {
            str(step): _finite_or_none(share_recovered(curve, base, step)) for step in SHARE_STEPS
        },
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None

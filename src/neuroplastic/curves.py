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

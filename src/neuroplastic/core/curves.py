"""How fast a score comes back: the measures of a recovery curve (concept F1 against step, or
for a language model the share of the concept's loss rise recovered, :func:`rise_recovered`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# owned by config (text stating it needs no torch); still importable from here
from neuroplastic.config import RECOVERY_TARGET

#: ``{"step": [...], "f1": [...]}`` in step order (a DataFrame with those columns will do); for
#: a language model ``"recovered"`` instead of ``"f1"`` (:func:`rise_recovered`)
Curve = Mapping[str, Any]


def scores(curve: Curve) -> np.ndarray:
    """The curve's scores, higher is better: its F1, or its share of the loss rise recovered."""
    return np.asarray(curve["f1"] if "f1" in curve else curve["recovered"], float)


def rise_recovered(
    steps: Sequence[float], losses: Sequence[float], base: float, min_rise: float
) -> Curve | None:
    """A language model's recovery curve: at each evaluation, the share of the removal's rise
    in the concept's next-token loss recovered, (loss_pruned - loss_t) / (loss_pruned -
    loss_base), where the first evaluation is the pruned one. 1 is back at base, 0 no
    recovery; a loss has no ceiling to take a share of, as F1 has, so the rise is the scale.
    None when the rise is under ``min_rise`` (a control that barely moved: nothing to
    recover, and a share of almost nothing is noise)."""
    losses = np.asarray(losses, float)
    rise = float(losses[0] - base) if len(losses) else math.nan
    if not rise >= min_rise:
        return None
    return {"step": [float(s) for s in steps], "recovered": list((losses[0] - losses) / rise)}


def control_gap_closed(
    treated: Curve, control: Curve, step: float, min_gap: float, column: str
) -> float:
    """The share of the treated arm's gap to its paired control at the first evaluation
    (the removal) closed by ``step``: 1 - gap(step) / gap(0), with gap = treated - control
    in ``column`` (a loss: the removal raised it; each curve interpolated at ``step``).
    Retraining that moves both arms alike (drift) cancels in the gap, as it does not in a
    share of the distance back to base. NaN when ``step`` is past either curve's last
    evaluation or the gap at the removal is under ``min_gap``."""
    t_steps, t_values = np.asarray(treated["step"], float), np.asarray(treated[column], float)
    c_steps, c_values = np.asarray(control["step"], float), np.asarray(control[column], float)
    if not len(t_steps) or not len(c_steps) or step > min(t_steps[-1], c_steps[-1]):
        return math.nan
    first = t_values[0] - c_values[0]
    if not first >= min_gap:
        return math.nan
    now = np.interp(step, t_steps, t_values) - np.interp(step, c_steps, c_values)
    return float(1 - now / first)


def steps_to_recover(curve: Curve, target: float) -> float:
    """The **first crossing**: the first step at which the curve reaches ``target``, linearly
    interpolated between the evaluations around it; the first step if it never fell below;
    NaN if it never gets there. A curve may cross and fall back below (a learning-rate peak
    does it): :func:`steps_to_lasting_recovery` is the recovery that holds."""
    steps, values = np.asarray(curve["step"], float), scores(curve)
    for i, (step, value) in enumerate(zip(steps, values, strict=True)):
        if value >= target:
            if i == 0:
                return float(step)
            before, at = values[i - 1], value
            return float(steps[i - 1] + (target - before) / (at - before) * (step - steps[i - 1]))
    return math.nan


def steps_to_lasting_recovery(curve: Curve, target: float) -> float:
    """**Lasting recovery**: the first step after which every evaluation stays at or above
    ``target``, linearly interpolated between the last evaluation below it and the next; the
    first step if no evaluation is below; NaN if the last evaluation is below (censored: not
    back, or not staying back, within the grid). "Lasting" means within the evaluated steps."""
    steps, values = np.asarray(curve["step"], float), scores(curve)
    below = np.flatnonzero(values < target)
    if not len(steps):
        return math.nan
    if not len(below):
        return float(steps[0])
    last = int(below[-1])
    if last == len(steps) - 1:
        return math.nan
    before, at = values[last], values[last + 1]
    return float(steps[last] + (target - before) / (at - before) * (steps[last + 1] - steps[last]))


def recovery_auc(curve: Curve, base: float) -> float:
    """Mean of F1 / base over the retraining steps (trapezoids between evaluations); NaN when
    the base F1 is 0 (nothing to recover)."""
    if base <= 0:
        return math.nan
    steps = np.asarray(curve["step"], float)
    values = scores(curve) / base
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
    steps, values = np.asarray(curve["step"], float), scores(curve)
    if not len(steps) or step > steps[-1] or step < steps[0]:
        return math.nan
    drop = base - values[0]
    if base <= 0 or drop < MIN_DROP * base:
        return math.nan
    return float((np.interp(step, steps, values) - values[0]) / drop)


def recovery(curve: Curve, base: float, target_share: float = RECOVERY_TARGET) -> dict[str, Any]:
    """Every recovery measure of one curve, with the grid it was read from.

    ``steps_to_recover`` (the first crossing) is None when the curve never reaches
    ``target_share`` x ``base`` within its last evaluation (``budget``): the run is censored
    (``reached`` False), and its steps are at least the budget. ``steps_to_lasting_recovery``
    is None when the last evaluation is below the target (``lasting`` False). Never drop such a
    run from an average: count it."""
    steps = [float(s) for s in curve["step"]]
    target = target_share * base
    to_target = steps_to_recover(curve, target) if base > 0 else math.nan
    lasting = steps_to_lasting_recovery(curve, target) if base > 0 else math.nan
    return {
        "grid": steps,
        "target": target,
        "budget": steps[-1] if steps else None,
        "reached": bool(math.isfinite(to_target)),
        "steps_to_recover": to_target if math.isfinite(to_target) else None,
        "lasting": bool(math.isfinite(lasting)),
        "steps_to_lasting_recovery": _finite_or_none(lasting),
        "auc": _finite_or_none(recovery_auc(curve, base)),
        "share_recovered": {
            str(step): _finite_or_none(share_recovered(curve, base, step)) for step in SHARE_STEPS
        },
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


#: why a seed's savings is None when both arms are censored (bounded neither way)
NEITHER_REACHED = "neither arm reached the target"


#: the shares of the concept arm's base F1 savings are reported at
SAVINGS_TARGETS = (0.5, 0.8, RECOVERY_TARGET)


def savings(
    relearned: Curve, naive: Curve, target: float, until: float, lasting: bool = True
) -> dict[str, Any]:
    """Is relearning faster than first learning? ``relearned``: the concept arm's curve after
    the removal; ``naive``: the naive arm's (the same neurons held in a model never taught the
    concept, retrained on the same batches); ``target``: the absolute F1 both must reach (a
    share of the concept arm's base F1, :data:`SAVINGS_TARGETS`); ``until``: the last step of
    the first stage. ``lasting``: steps are each arm's lasting recovery
    (:func:`steps_to_lasting_recovery`), else its first crossing; both are in the result
    (``first_crossing``).

    ``savings`` is 1 - steps(relearned) / steps(naive), Ebbinghaus's savings: 1 when relearning
    is immediate, 0 when it is no faster than learning from nothing, negative when slower.
    An arm that never reaches the target within its last evaluation is censored: its steps are
    at least that budget. A censored naive arm makes ``savings`` a lower bound (``bound``
    "lower"); a censored concept arm, beside a naive arm that got there, an upper bound
    ("upper": relearning took longer than the budget). None when both are censored (nothing
    bounds it) or the naive arm starts at the target (nothing to learn). ``area_between`` is
    the mean over steps 0..``until`` of F1(relearned) - F1(naive) (trapezoids on the union of
    both grids)."""
    steps_to = steps_to_lasting_recovery if lasting else steps_to_recover
    relearn_steps = steps_to(relearned, target)
    naive_steps = steps_to(naive, target)
    naive_budget = float(np.asarray(naive["step"], float)[-1])
    relearn_budget = float(np.asarray(relearned["step"], float)[-1])
    result: dict[str, Any] = {
        "target": target,
        "steps_relearned": _finite_or_none(relearn_steps),
        "steps_naive": _finite_or_none(naive_steps),
        "naive_reached": bool(math.isfinite(naive_steps)),
        "naive_budget": naive_budget,
        "relearn_budget": relearn_budget,
        "savings": None,
        "bound": None,
        "area_between": _finite_or_none(area_between(relearned, naive, until)),
        "lasting": lasting,
        "first_crossing": {
            "steps_relearned": _finite_or_none(steps_to_recover(relearned, target)),
            "steps_naive": _finite_or_none(steps_to_recover(naive, target)),
        },
    }
    relearned_in = relearn_steps if math.isfinite(relearn_steps) else relearn_budget
    naive_in = naive_steps if math.isfinite(naive_steps) else naive_budget
    if not (math.isfinite(relearn_steps) or math.isfinite(naive_steps)):
        result["why_none"] = NEITHER_REACHED
        return result
    if naive_in <= 0:
        result["why_none"] = "the naive arm was at the target before retraining"
        return result
    result["savings"] = 1 - relearned_in / naive_in
    result["bound"] = (
        "exact"
        if math.isfinite(relearn_steps) and math.isfinite(naive_steps)
        else "lower"
        if math.isfinite(relearn_steps)
        else "upper"
    )
    return result


def area_between(upper: Curve, lower: Curve, until: float) -> float:
    """Mean over steps [first, ``until``] of ``upper`` - ``lower`` F1, both linear between
    their evaluations, on the union of their grids (NaN if they share no span)."""
    steps_a, values_a = np.asarray(upper["step"], float), np.asarray(upper["f1"], float)
    steps_b, values_b = np.asarray(lower["step"], float), np.asarray(lower["f1"], float)
    start = max(steps_a[0], steps_b[0])
    end = min(until, steps_a[-1], steps_b[-1])
    if end <= start:
        return math.nan
    grid = np.union1d(steps_a, steps_b)
    grid = np.union1d(grid[(grid >= start) & (grid <= end)], [start, end])
    gap = np.interp(grid, steps_a, values_a) - np.interp(grid, steps_b, values_b)
    return float(((gap[1:] + gap[:-1]) / 2 * np.diff(grid)).sum() / (end - start))

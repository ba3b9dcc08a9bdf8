"""The predictors of where the concept goes, and their causal truth, across seeds: each
predictor's AUC, precision at k and lift per ground truth on the concept arm and on its control
(the predictor's null), and each candidate set's damage beyond the random floor."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from neuroplastic.analysis.intervals import interval, paired
from neuroplastic.analysis.measures import (
    CAUSAL_MARGIN,
    PREDICTION_BOUNDS,
    PREDICTION_MARGIN,
    _difference_bounds,
    _minus,
)
from neuroplastic.config import CONCEPT_ARM, RANDOM_ARM


def prediction_across_seeds(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% interval across seeds of each predictor's AUC, precision at k and precision
    lift (precision minus the base rate), per ground truth, for the concept arm and for its
    paired control (``arm`` random: nothing concept-specific removed there, so its numbers are
    each predictor's null), and of their per-seed difference (``arm`` "concept - random", with
    an equivalence test and the difference 80% power would detect). ``n_seeds`` counts the runs
    where the measure is defined, ``missing`` the others (a ground truth with no positive
    neuron). Runs without predictions are left out."""
    per_arm: dict[str, dict[int, pd.DataFrame]] = {}
    for run in runs:
        frame = pd.DataFrame(run.get("prediction", []))
        if frame.empty:
            continue
        if "arm" not in frame:
            frame["arm"] = CONCEPT_ARM
        # None (no number in the summary's JSON) back to NaN: a measure not defined.
        frame = frame.astype({"auc": float, "precision_at_k": float, "base_rate": float})
        frame["precision_lift"] = frame["precision_at_k"] - frame["base_rate"]
        for arm, rows in frame.groupby("arm", sort=False):
            per_arm.setdefault(str(arm), {})[run["seed"]] = rows.set_index(["predictor", "truth"])
    if CONCEPT_ARM not in per_arm:
        return []
    result = []
    concept = per_arm[CONCEPT_ARM]
    keys = list(dict.fromkeys(k for frame in concept.values() for k in frame.index))
    for predictor, truth in keys:
        for measure, bounds in PREDICTION_BOUNDS.items():
            for arm, seeds in per_arm.items():
                values = [_cell(seeds.get(s), predictor, truth, measure) for s in concept]
                result.append(
                    _prediction_row(arm, predictor, truth, measure, interval(values, bounds=bounds))
                )
            if RANDOM_ARM in per_arm:
                control = per_arm[RANDOM_ARM]
                values = [
                    _minus(
                        _cell(concept[s], predictor, truth, measure),
                        _cell(control.get(s), predictor, truth, measure),
                    )
                    for s in concept
                ]
                difference = paired(values, PREDICTION_MARGIN, _difference_bounds(bounds))
                result.append(
                    _prediction_row("concept - random", predictor, truth, measure, difference)
                )
    return result


def causal_across_seeds(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per arm with a causal truth (:mod:`neuroplastic.analysis.causal`), across seeds: the damage
    of each candidate set (concept F1 lost, or loss gained) and, paired within each seed, the
    damage beyond the random floor (the set minus ``matched_random``, the same count per
    layer), with an equivalence test and the difference 80% power would detect. A set ``k``
    neurons wide that costs no more than random survivors did not pick what the model uses."""
    result: dict[str, Any] = {}
    arms = dict.fromkeys(arm for run in runs for arm in run.get("causal") or {})
    for arm in arms:
        per_seed = [(run.get("causal") or {}).get(arm) for run in runs]
        present = [c for c in per_seed if c]
        names = list(dict.fromkeys(n for c in present for n in c["lost"]))

        def lost(record: dict | None, name: str) -> float:
            value = (record or {}).get("lost", {}).get(name)
            return math.nan if value is None else float(value)

        result[arm] = {
            "task": present[0]["task"],
            "k": [c["k"] if c else None for c in per_seed],
            "score": interval([c["score"] if c else math.nan for c in per_seed]),
            "lost": {name: interval([lost(c, name) for c in per_seed]) for name in names},
            # the other types' F1 lost (unweighted mean over them), where the run recorded it
            "others_lost": {
                name: interval([_others_lost(c, name) for c in per_seed]) for name in names
            },
            "beyond_random": {
                name: paired(
                    [_minus(lost(c, name), lost(c, "matched_random")) for c in per_seed],
                    CAUSAL_MARGIN,
                )
                for name in names
                if name != "matched_random"
            },
            # The concept's loss beyond the other types' (paired within each seed): a set the
            # concept has moved into costs it more than the others; a set every type shares
            # (general-purpose neurons) costs the others as much or more.
            "specific": {
                name: paired(
                    [_minus(lost(c, name), _others_lost(c, name)) for c in per_seed],
                    CAUSAL_MARGIN,
                )
                for name in names
            },
        }
    return result


def _others_lost(record: dict | None, name: str) -> float:
    values = list(((record or {}).get("others_lost") or {}).get(name, {}).values())
    return sum(values) / len(values) if values else math.nan


def _cell(frame: pd.DataFrame | None, predictor: str, truth: str, measure: str) -> float:
    if frame is None or (predictor, truth) not in frame.index:
        return math.nan
    value = frame.loc[(predictor, truth), measure]
    return float(value) if value is not None else math.nan


def _prediction_row(
    arm: str, predictor: str, truth: str, measure: str, summary: dict[str, Any]
) -> dict[str, Any]:
    return {
        "arm": arm,
        "predictor": predictor,
        "truth": truth,
        "measure": measure,
        "n_seeds": summary["n"],
        **{k: v for k, v in summary.items() if k not in ("n", "values")},
        "values": summary["values"],
    }

"""F1 (or LM loss) per entity type over training, both arms (:func:`recovery_curves`), and each
stage's gap to base and to the control arm (:func:`stage_gaps`), from a run's metrics and
summary.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.summary import ArmSummary

__all__ = ["recovery_curves", "stage_gaps"]


def recovery_curves(metrics: pd.DataFrame, metric: str = "f1") -> pd.DataFrame:
    """``metric`` per entity type against training step, one row per (evaluation, type).

    ``metrics`` is ``RunDir.metrics()`` (``f1`` flattened to ``f1_overall``, ``f1_LOC``...;
    ``metric="lm_loss"`` for the language-modelling task, ``lm_loss_concept`` and
    ``lm_loss_other``). Steps are monotone within an arm: base fine-tuning evaluations have
    negative steps, retraining steps count from 0 at pruning. Evaluations inside a stage are
    named ``retrain-1@10`` and belong to ``retrain-1``. Columns: arm, stage, step, entity,
    value (and ``metric`` as a copy of value), in order of arm and step.
    """
    columns = ["arm", "stage", "step", "entity", "value", metric]
    if metrics.empty:
        return pd.DataFrame(columns=columns)
    value_columns = [c for c in metrics.columns if c.startswith(f"{metric}_")]
    if not value_columns or not {"arm", "stage", "step"} <= set(metrics.columns):
        raise NeuroplasticError(
            f"metrics need arm, stage, step and {metric} columns; got " + ", ".join(metrics.columns)
        )
    from neuroplastic.store.rundir import stage_key

    frame = metrics.copy()
    # Pruning takes no step: at equal steps the stage order decides (base before pruned).
    frame["_order"] = frame["stage"].map(lambda s: stage_key(str(s)))
    frame = frame.sort_values(["arm", "step", "_order"], kind="stable")
    long = frame.melt(
        id_vars=["arm", "stage", "step"],
        value_vars=value_columns,
        var_name="entity",
        value_name="value",
    )
    long["entity"] = long["entity"].str.removeprefix(f"{metric}_")
    long[metric] = long["value"]
    return long.dropna(subset=["value"]).reset_index(drop=True)[columns]


def stage_gaps(arms: Mapping[str, ArmSummary]) -> pd.DataFrame:
    """Every stage's score and its gaps, as the experiment recorded them in ``summary.json``
    (``Summary.arms``): ``gap_to_base`` (score - the base score, every arm) and
    ``gap_to_control`` (concept arm score - random arm score at the same stage: the paired
    control).

    One row per (arm, stage, entity); columns arm, stage, step, entity, value, gap_to_base,
    gap_to_control (NaN where not recorded). ``attrs["metric"]`` is ``f1`` or ``lm_loss``.
    """
    entries = [(arm, entry) for arm, data in arms.items() for entry in data.stages]
    lm = entries and not any("f1" in entry.scores for _, entry in entries)
    metric = "lm_loss" if lm else "f1"
    rows = []
    for arm, entry in entries:
        to_base, to_control = entry.gap_to_base or {}, entry.gap_to_control or {}
        for entity, value in entry.scores.get(metric, {}).items():
            rows.append(
                {
                    "arm": arm,
                    "stage": entry.stage,
                    "step": entry.step,
                    "entity": str(entity),
                    "value": value,
                    "gap_to_base": to_base.get(entity, np.nan),
                    "gap_to_control": to_control.get(entity, np.nan),
                }
            )
    columns = ["arm", "stage", "step", "entity", "value", "gap_to_base", "gap_to_control"]
    frame = pd.DataFrame(rows, columns=columns)
    frame[["value", "gap_to_base", "gap_to_control"]] = frame[
        ["value", "gap_to_base", "gap_to_control"]
    ].astype(float)
    frame.attrs["metric"] = metric
    return frame

"""One finished run's measures, as a sweep aggregates them (:func:`measures_of_run`): per arm
the :data:`~neuroplastic.analysis.measures.MEASURES`, its stage scores and curves; a chase's
rounds and a pre-emption's arms from the run's summary."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from neuroplastic.analysis.measures import (
    PREEMPT_MEASURES,
    SAVINGS_FIELDS,
    _minus,
    _nan,
)
from neuroplastic.config import (
    CONCEPT_ARM,
    NAIVE_ARM,
    PREEMPT_ARM,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
)
from neuroplastic.core.curves import (
    MIN_DROP,
    RECOVERY_TARGET,
    SAVINGS_TARGETS,
    SHARE_STEPS,
    control_gap_closed,
    recovery,
    rise_recovered,
    savings,
)
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.rundir import RunDir, stage_round
from neuroplastic.store.summary import Summary

#: The smallest loss rise that makes lm recovery a share: as F1's MIN_DROP asks 10% of base
#: F1, a loss must rise by ln 1.1 nats, perplexity +10%.
MIN_LOSS_RISE = math.log1p(MIN_DROP)


def measures_of_run(run: RunDir, top: int | float = 0.01) -> dict[str, Any]:
    """The sweep's measures of one finished run, per arm, plus its stage scores and curves;
    of a chase (``--rounds``) these are round 1's, the paper's experiment, and ``chase`` has
    every round's; of a pre-emption (``--preempt``), ``preempt`` its arms' recovery."""
    from neuroplastic.analysis.arm_run import ArmRun, concept_token_ids
    from neuroplastic.analysis.layers import relocation
    from neuroplastic.analysis.polysemantic import control_pair_population
    from neuroplastic.analysis.reappearance import primed_neurons

    summary = Summary.read(run)
    concept = summary.concept
    task = summary.config.get("task", "ner")
    metrics = run.metrics()
    embeddings = run.embeddings()
    arms: dict[str, Any] = {}
    # it never knew the concept: no recovery, its savings below
    compared = [arm for arm in summary.arms if arm != NAIVE_ARM]
    loaded_arms = {arm: ArmRun.load(run, arm) for arm in compared}
    # primed: each arm correlated over the same neurons as its control
    population = control_pair_population(loaded_arms)
    for arm, data in summary.arms.items():
        if arm == NAIVE_ARM:
            continue
        # Later rounds of a chase start from another model: they have their own measures.
        entries = [e for e in data.stages if stage_round(e.stage) in (0, 1)]
        scored = (
            _lm_scores(metrics, arm, entries)
            if task == "lm"
            else _ner_scores(metrics, arm, entries, concept)
        )
        loaded = loaded_arms[arm]
        moved = relocation(loaded.rankings(), loaded.ablated, top, loaded.start)
        can_prime = concept_token_ids(loaded.stages[loaded.first].stats, concept).numel() > 0
        primed = primed_neurons(loaded, embeddings, population=population) if can_prime else None
        blended = _polysemantic_gainers(loaded, population, top)
        arms[arm] = {
            **scored,
            "relocation": moved.shift,
            "removal_shift": moved.removal_shift,
            "primed_rho": primed.rho if primed else math.nan,
            "primed_partial_rho": primed.partial_rho if primed else math.nan,
            "gainers_polysemantic": blended.get("gainers_share", math.nan),
            "gainers_polysemantic_excess": blended.get("excess", math.nan),
            "polysemantic_gainers": blended,
            # per stage, per layer: where a linear probe reads the concept (none in older runs)
            "readable": {e.stage: e.readable for e in entries if e.readable},
            # per point, stage and layer: raw and sign-free AUC with the run's interval, the
            # probe fitted apart from the eraser's and the ranking's sentences (none in older
            # runs, whose probes were fitted on the probe sentences)
            "probes": _probes_by_point(entries),
        }
        if data.control is not None:
            arms[arm]["control"] = data.control
    if task == "lm":
        _add_control_gap(arms)
    measures = {
        "seed": summary.config["seed"],
        "task": task,
        "concept": concept,
        # how base fine-tuning ended: a retraining that measures recovery needs a converged base
        "base": {k: (summary.base or {}).get(k) for k in ("steps", "stopped")},
        "arms": arms,
        # per predictor and truth, as the run's summary evaluated them (none in older runs)
        "prediction": summary.prediction or [],
        # per arm: the concept's score, and what ablating each candidate set costs it
        "causal": summary.causal or {},
    }
    if summary.chase is not None:
        measures["chase"] = chase_measures(summary)
    if summary.preempt is not None:
        measures["preempt"] = preempt_measures(summary)
    saved = summary.savings
    if saved is not None and "savings" in saved:  # (none while the naive arm has not retrained)
        # Recomputed from the curves (lasting recovery, every target), not read from the
        # summary: a run made before these measures gives the same numbers as a new one.
        relearned, naive = (
            _curve(metrics, CONCEPT_ARM, concept),
            _curve(metrics, NAIVE_ARM, concept),
        )
        base_f1 = arms[CONCEPT_ARM]["f1"]["base"][concept]
        until = summary.arms[CONCEPT_ARM].stage("retrain-1").step
        targets = {
            str(share): savings(relearned, naive, share * base_f1, until)
            for share in SAVINGS_TARGETS
        }
        naive_base = saved["naive_base"]["f1"]
        measures["savings"] = {
            **{k: targets[str(RECOVERY_TARGET)].get(k) for k in SAVINGS_FIELDS},
            "targets": {
                share: {k: result.get(k) for k in (*SAVINGS_FIELDS, "first_crossing")}
                for share, result in targets.items()
            },
            # the arms must be equally good at everything but the concept
            "naive_minus_concept_base": {
                entity: naive_base[entity] - arms[CONCEPT_ARM]["f1"]["base"][entity]
                for entity in naive_base
                if entity not in (concept, "overall") and entity in arms[CONCEPT_ARM]["f1"]["base"]
            },
            "naive_base_f1": saved["naive_base"]["f1"][concept],
            "first_stage_f1": summary.arms[NAIVE_ARM].stage("retrain-1").f1[concept],
            "curve": _curve(metrics, NAIVE_ARM, concept).to_dict(orient="list"),
        }
    return measures


def chase_measures(summary: Summary) -> dict[str, Any]:
    """:data:`CHASE_MEASURES` of every round a chase ran, per arm, from its ``summary.json``;
    ``rounds`` the rounds asked for, ``rounds_run`` those run (fewer: stopped early)."""
    concept, chase = summary.concept, summary.chase
    # A round's retraining steps: what a round that never recovers is censored at.
    budget = float(summary.retraining_steps)
    rounds = []
    for record in chase["rounds"]:
        arms = {}
        for arm, entry in record["arms"].items():
            arms[arm] = {
                "before": (entry.get("before") or {}).get(concept, math.nan),
                "removed": entry["removed"][concept],
                "drop": entry.get("drop", math.nan),
                "retrained": entry["retrained"][concept],
                "steps_to_recover": _nan(entry["steps_to_recover"]),
                "recovery_auc": _nan(entry["recovery_auc"]),
                "held": entry["held"],
                "others_retrained": _others_mean(entry["retrained"], concept),
                "budget": budget,
            }
        rounds.append({"round": record["round"], "arms": arms})
    measures = {
        "rounds": summary.config.get("rounds", chase["rounds_run"]),
        "rounds_run": chase["rounds_run"],
        "stopped_early": chase.get("stopped_early"),
        "per_round": rounds,
    }
    once = chase.get("one_shot")
    if once:  # the same neurons removed at once from base: concept F1 after, minus the chase's
        measures["one_shot"] = {
            "retrained": once["one_shot"]["retrained"][concept],
            "drop": once["one_shot"]["drop"],
            "steps_to_recover": _nan(once["one_shot"]["steps_to_recover"]),
            "one_shot_minus_chase": once["one_shot_minus_chase"][concept],
            "budget": budget,
        }
    return measures


def preempt_measures(summary: Summary) -> dict[str, Any]:
    """:data:`PREEMPT_MEASURES` per arm of a pre-emption, from its ``summary.json``, and the
    preempt arm minus its control (``preempt-random``) in this run."""
    concept, preempt = summary.concept, summary.preempt
    budget = float(summary.retraining_steps)
    arms = {
        arm: {
            "steps_to_recover_90": _nan(data["steps_to_recover_90"]),
            "recovery_auc": _nan(data["recovery_auc"]),
            "pruned_f1": data["pruned"][concept],
            "last_f1": data["last"][concept],
            "others_pruned": _others_mean(data["pruned"], concept),
            "others_last": _others_mean(data["last"], concept),
            "budget": budget,  # what an arm that never recovers is censored at
        }
        for arm, data in preempt["recovery"].items()
    }
    treated, control = arms[PREEMPT_ARM], arms[PREEMPT_RANDOM_ARM]
    measures = {
        "predictor": preempt["predictor"],
        "count": preempt["count"],
        "overlap": preempt["overlap"],
        "arms": arms,
        "preempt_minus_control": {m: _minus(treated[m], control[m]) for m in PREEMPT_MEASURES},
    }
    if PREEMPT_ORACLE_ARM in arms:
        oracle = arms[PREEMPT_ORACLE_ARM]
        measures["oracle_minus_control"] = {
            m: _minus(oracle[m], control[m]) for m in PREEMPT_MEASURES
        }
    return measures


def _polysemantic_gainers(loaded: Any, population: Any, top: int | float) -> dict[str, Any]:
    """:func:`~neuroplastic.analysis.polysemantic.polysemantic_gainers`, or nothing where the
    concept has no mixing band or no neuron is counted (its measures are then missing)."""
    from neuroplastic.analysis.polysemantic import polysemantic_gainers

    try:
        return polysemantic_gainers(loaded, population, top)
    except NeuroplasticError:
        return {}


def _others_mean(f1: dict[str, float], concept: str) -> float:
    """Unweighted mean F1 of the entity types other than ``concept`` (and not ``overall``)."""
    others = [v for e, v in f1.items() if e not in (concept, "overall")]
    return float(np.mean(others)) if others else math.nan


def _ner_scores(
    metrics: pd.DataFrame, arm: str, entries: Sequence[Any], concept: str
) -> dict[str, Any]:
    """An arm's measures of the concept's F1 (:data:`~neuroplastic.analysis.measures.
    RUN_MEASURES`), its recovery, its stage scores and its curve."""
    stages = {entry.stage: entry for entry in entries}
    base_f1, pruned_f1 = stages["base"].f1[concept], stages["pruned"].f1[concept]
    last_f1 = entries[-1].f1[concept]
    curve = _curve(metrics, arm, concept)
    recovered = recovery(curve, base_f1, RECOVERY_TARGET)
    return {
        "drop_at_pruning": base_f1 - pruned_f1,
        **_recovery_measures(recovered),
        "final_gap_to_base": last_f1 - base_f1,
        "drift_after_pruning": last_f1 - pruned_f1,
        "recovery": recovered,
        "f1": {entry.stage: entry.f1 for entry in entries},
        "curve": curve.to_dict(orient="list"),
    }


def _lm_scores(metrics: pd.DataFrame, arm: str, entries: Sequence[Any]) -> dict[str, Any]:
    """An arm's measures of the concept's next-token loss (:data:`~neuroplastic.analysis.
    measures.LM_RUN_MEASURES`): its rise at the removal beside the other tokens', and recovery
    as the share of that rise recovered (:func:`~neuroplastic.core.curves.rise_recovered`;
    undefined, not censored, when the perplexity rose by less than ``MIN_DROP``)."""
    losses = {entry.stage: entry.scores["lm_loss"] for entry in entries}
    base, pruned, last = losses["base"], losses["pruned"], losses[entries[-1].stage]
    rows = metrics[(metrics["arm"] == arm) & (metrics["step"] >= 0)]
    rows = rows[rows["stage"].map(lambda s: stage_round(str(s)) == 1)].sort_values(
        "step", kind="stable"
    )
    steps, concept_loss = rows["step"].astype(float), rows["lm_loss_concept"].astype(float)
    curve = rise_recovered(steps, concept_loss, base["concept"], MIN_LOSS_RISE)
    recovered = recovery(curve, 1.0, RECOVERY_TARGET) if curve is not None else None
    rise = {kind: pruned[kind] - base[kind] for kind in ("concept", "other")}
    return {
        "drop_at_pruning": rise["concept"],
        "other_rise_at_pruning": rise["other"],
        "specificity_at_pruning": rise["concept"] - rise["other"],
        **_recovery_measures(recovered),
        "final_gap_to_base": last["concept"] - base["concept"],
        "drift_after_pruning": pruned["concept"] - last["concept"],
        "recovery": recovered,
        "lm_loss": losses,
        "curve": {
            "step": steps.tolist(),
            "lm_loss": concept_loss.tolist(),
            **({"recovered": curve["recovered"]} if curve is not None else {}),
        },
    }


def _add_control_gap(arms: dict[str, Any]) -> None:
    """Each arm's ``control_gap_closed_{step}``: the concept arm's against the random arm of
    the same seed (:func:`~neuroplastic.core.curves.control_gap_closed`); NaN for the random
    arm, which is its own control, and for every arm of a run without one."""
    for arm, measured in arms.items():
        for step in SHARE_STEPS:
            closed = math.nan
            if arm == CONCEPT_ARM and RANDOM_ARM in arms:
                closed = control_gap_closed(
                    measured["curve"], arms[RANDOM_ARM]["curve"], step, MIN_LOSS_RISE,
                    column="lm_loss",
                )  # fmt: skip
            measured[f"control_gap_closed_{step}"] = closed


def _recovery_measures(recovered: dict[str, Any] | None) -> dict[str, Any]:
    """The recovery measures of :func:`~neuroplastic.core.curves.recovery`'s result, or all
    NaN when the arm has no recovery to measure (``None``)."""
    if recovered is None:
        return {
            "steps_to_recover_90": math.nan,
            "lasting_recovery_90": math.nan,
            **{f"share_recovered_{step}": math.nan for step in SHARE_STEPS},
            "recovery_auc": math.nan,
        }
    return {
        "steps_to_recover_90": recovered["steps_to_recover"],
        "lasting_recovery_90": recovered["steps_to_lasting_recovery"],
        **{
            f"share_recovered_{step}": recovered["share_recovered"][str(step)]
            for step in SHARE_STEPS
        },
        "recovery_auc": recovered["auc"],
    }


def _curve(metrics: pd.DataFrame, arm: str, concept: str) -> pd.DataFrame:
    """Concept F1 against retraining step (pruning is step 0), one row per evaluation, of
    round 1 (a chase's later rounds have their own measures)."""
    rows = metrics[(metrics["arm"] == arm) & (metrics["step"] >= 0)]
    rows = rows[rows["stage"].map(lambda s: stage_round(str(s)) == 1)]
    curve = pd.DataFrame({"step": rows["step"].astype(float), "f1": rows[f"f1_{concept}"]})
    return curve.sort_values("step", kind="stable").reset_index(drop=True)


def _probes_by_point(entries: Sequence[Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """A run's stage-end probe readings regrouped per point (``resid_post``, ``mlp_out``), then
    stage, then layer; empty for a run made before they were recorded."""
    by_point: dict[str, dict[str, dict[str, Any]]] = {}
    for entry in entries:
        for point, layers in (getattr(entry, "probes", None) or {}).items():
            if point != "split":
                by_point.setdefault(point, {})[entry.stage] = layers
    return by_point

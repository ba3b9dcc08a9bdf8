"""What a sweep measures, declared once: each run's measures (:data:`RUN_MEASURES`, with their
ranges, censoring and equivalence margins), a chase's and a pre-emption's per-round measures,
the savings measures, and the bounds and margins the intervals across seeds use."""

from __future__ import annotations

import math
from dataclasses import dataclass

from neuroplastic.config import RECOVERY_TARGET
from neuroplastic.core.curves import (
    SHARE_STEPS,
)


@dataclass(frozen=True)
class Measure:
    """One per-run measure of a sweep, declared once: its ``name``, what it means
    (``description``), its range (``bounds``: its intervals never leave it), whether some runs
    may never reach it (``censored``: such runs are counted, never dropped) and the equivalence
    margin of its paired differences (``margin``: "no difference" means inside it, TOST)."""

    name: str
    description: str
    bounds: tuple[float, float] | None = None
    censored: bool = False
    margin: float | None = None


#: the per-run measures, in reading order
RUN_MEASURES: tuple[Measure, ...] = (
    Measure(
        "drop_at_pruning",
        "concept F1 lost at pruning (base - pruned)",
        bounds=(-1.0, 1.0),
        margin=0.02,
    ),
    Measure(
        "steps_to_recover_90",
        "first crossing: retraining steps until concept F1 first reaches "
        f"{RECOVERY_TARGET:.0%} of base (interpolated between the evaluations of the run's grid), "
        "whether or not it stays there; a run that never gets there is censored: counted, and "
        "the mean becomes a lower bound (the budget for that run)",
        censored=True,
        margin=3.0,
    ),
    Measure(
        "lasting_recovery_90",
        "lasting recovery: retraining steps after which every evaluation "
        f"of the run's grid stays at or above {RECOVERY_TARGET:.0%} of base (interpolated from the "
        "last evaluation below); a run whose last evaluation is below is censored at its budget",
        censored=True,
        margin=3.0,
    ),
    *(
        Measure(
            f"share_recovered_{step}",
            f"share of the drop at pruning recovered after {step} "
            "retraining steps, (F1 - F1 pruned) / (F1 base - F1 pruned), interpolated between "
            "evaluations; undefined for an arm whose drop is under 10% of base (a control)",
            margin=0.05,
        )
        for step in SHARE_STEPS
    ),
    Measure(
        "recovery_auc",
        "mean of concept F1 / base F1 over the retraining steps (1 = never lost)",
        margin=0.02,
    ),
    Measure(
        "final_gap_to_base",
        "concept F1 after the last stage minus base",
        bounds=(-1.0, 1.0),
        margin=0.02,
    ),
    Measure(
        "drift_after_pruning",
        "concept F1 after the last stage minus at the pruned stage: on the "
        "control, where nothing concept-specific was removed, what retraining alone adds (the "
        "yardstick a converged base keeps near zero)",
        bounds=(-1.0, 1.0),
        margin=0.02,
    ),
    Measure(
        "relocation",
        "change of the top 1% neurons' saliency-weighted mean layer from the pruned "
        "stage to the last, every stage's top set drawn from one fixed population (alive at every "
        "stage, outside the removed set): movement while retraining (negative: earlier layers)",
        margin=0.25,
    ),
    Measure(
        "removal_shift",
        "change of the top 1%'s mean layer from base to pruned, each stage taking "
        "its own top set: what removing the top tier does to 'the top neurons' with no training "
        "at all (not movement)",
        margin=0.25,
    ),
    Measure(
        "primed_rho",
        "Spearman rho between a neuron's similarity to the concept before pruning "
        "and its saliency gain while retraining (partly mechanical: gain is measured from the "
        "pruned saliency that similarity also correlates with)",
        bounds=(-1.0, 1.0),
        margin=0.1,
    ),
    Measure(
        "primed_partial_rho",
        "partial Spearman rho of similarity to the concept with saliency at "
        "the last stage, given saliency at the pruned stage: priming without the mechanical part",
        bounds=(-1.0, 1.0),
        margin=0.1,
    ),
    Measure(
        "gainers_polysemantic",
        "share of the top 1% saliency gainers (pruned to last stage, over "
        "the neurons the arm and its control share) whose top tokens blend the concept with other "
        "labels at the last stage: the paper's polysemantic neurons",
        bounds=(0.0, 1.0),
        margin=0.05,
    ),
    Measure(
        "gainers_polysemantic_excess",
        "that share minus the share among all the neurons counted: "
        "what being a top gainer adds to being polysemantic",
        bounds=(-1.0, 1.0),
        margin=0.05,
    ),
)
#: the measures of the concept's neurons that mean the same under either task
_NEURON_MEASURES = tuple(
    m
    for m in RUN_MEASURES
    if m.name.startswith(("relocation", "removal_shift", "primed", "gainers"))
)

#: ``--task lm``'s per-run measures, in reading order: the concept's score is its next-token
#: loss (lower is better; in nats), and recovery is read on the share of the removal's rise
#: in it recovered (:func:`~neuroplastic.core.curves.rise_recovered`)
LM_RUN_MEASURES: tuple[Measure, ...] = (
    Measure(
        "drop_at_pruning",
        "rise of the next-token loss on the concept's tokens at the removal (pruned - base, nats)",
        margin=0.05,
    ),
    Measure(
        "other_rise_at_pruning",
        "rise of the next-token loss on every other token at the removal (pruned - base, "
        "nats): what the removal costs the rest of the model",
        margin=0.05,
    ),
    Measure(
        "specificity_at_pruning",
        "the concept's rise minus the other tokens' rise (nats): above 0, the removal hits the "
        "concept more than everything else",
        margin=0.05,
    ),
    Measure(
        "steps_to_recover_90",
        f"first crossing: retraining steps until {RECOVERY_TARGET:.0%} of the concept loss's "
        "rise at the removal "
        "is first recovered (interpolated), whether or not it stays so; censored at the budget "
        "when it never is; undefined for an arm whose perplexity on the concept rose by less than "
        "10% (a rise under ln 1.1 nats: a control)",
        censored=True,
        margin=3.0,
    ),
    Measure(
        "lasting_recovery_90",
        "lasting recovery: retraining steps after which every evaluation has recovered at "
        f"least {RECOVERY_TARGET:.0%} of the rise (interpolated from the last evaluation below); "
        "censored at the budget when the last evaluation is below; undefined as above",
        censored=True,
        margin=3.0,
    ),
    *(
        Measure(
            f"share_recovered_{step}",
            f"share of the concept loss's rise recovered after {step} retraining steps, "
            "(loss pruned - loss) / (loss pruned - loss base), interpolated between "
            "evaluations; undefined for an arm whose perplexity on the concept rose by less "
            "than 10%",
            margin=0.05,
        )
        for step in SHARE_STEPS
    ),
    *(
        Measure(
            f"control_gap_closed_{step}",
            f"share of the concept arm's gap to the random arm at the removal closed after "
            f"{step} retraining steps, 1 - gap / gap at the removal, gap = the concept arm's "
            "loss on the concept's tokens minus the random arm's (paired within the seed, so "
            "what retraining does to both cancels); undefined for the random arm and where the "
            "gap at the removal is under ln 1.1 nats",
            margin=0.05,
        )
        for step in SHARE_STEPS
    ),
    Measure(
        "recovery_auc",
        "mean share of the rise recovered over the retraining steps (1 = back at once)",
        margin=0.05,
    ),
    Measure(
        "final_gap_to_base",
        "the concept's next-token loss after the last stage minus base (nats; above 0: still "
        "worse than base)",
        margin=0.05,
    ),
    Measure(
        "drift_after_pruning",
        "the concept's loss at the pruned stage minus after the last stage (nats): on the "
        "control, what retraining alone improves",
        margin=0.05,
    ),
    *_NEURON_MEASURES,
)


@dataclass(frozen=True)
class MeasureTable:
    """A task's per-run measures as the aggregation across seeds reads them."""

    measures: tuple[Measure, ...]

    @property
    def descriptions(self) -> dict[str, str]:
        return {m.name: m.description for m in self.measures}

    @property
    def bounds(self) -> dict[str, tuple[float, float]]:
        return {m.name: m.bounds for m in self.measures if m.bounds is not None}

    @property
    def censored(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.measures if m.censored)

    @property
    def margins(self) -> dict[str, float]:
        return {m.name: m.margin for m in self.measures if m.margin is not None}


def measure_table(task: str = "ner") -> MeasureTable:
    """The per-run measures of ``task`` (``ner``: on entity F1; ``lm``: on next-token loss)."""
    return MeasureTable(LM_RUN_MEASURES if task == "lm" else RUN_MEASURES)


#: the stage score each task's measures read: entity F1, or next-token loss per kind of token
STAGE_SCORE = {"ner": "f1", "lm": "lm_loss"}


#: the per-run measures, in reading order, with what each one means
MEASURES = {m.name: m.description for m in RUN_MEASURES}
#: the range of the measures that have one (their intervals never leave it)
BOUNDS = {m.name: m.bounds for m in RUN_MEASURES if m.bounds is not None}
#: measures some runs may never reach (their censored runs are counted, never dropped)
CENSORED = tuple(m.name for m in RUN_MEASURES if m.censored)
#: the equivalence margin of each paired difference: "no difference" means inside it (TOST)
MARGINS = {m.name: m.margin for m in RUN_MEASURES if m.margin is not None}


#: the steps a retrainer's best case minimises: to a recovery that lasts, not a first crossing
RECOVERY_STEPS = "lasting_recovery_90"


F1_BOUNDS = (0.0, 1.0)


def _difference_bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """The range of a difference of two measures with range ``bounds``."""
    return None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0])


#: a chase's (``--rounds``) per-run measures of every round, per arm
CHASE_MEASURES = {
    "before": "concept F1 just before the round's removal (base in round 1, else after the "
    "previous round's retraining)",
    "removed": "concept F1 right after the round's neurons were removed",
    "drop": "concept F1 lost at the round's removal: before - removed",
    "retrained": "concept F1 after the round's retraining",
    "steps_to_recover": "retraining steps from the round's start until concept F1 is back to "
    f"{RECOVERY_TARGET:.0%} of its F1 just before the removal (interpolated); a seed whose round "
    "never gets there is censored: counted at the round's budget, and the mean becomes a lower "
    "bound",
    "recovery_auc": "mean of concept F1 / its F1 before the removal over the round's steps",
    "held": "neurons held after the round's removal (all rounds so far)",
    "others_retrained": "unweighted mean F1 of the other entity types (not the concept, not "
    "overall) after the round's retraining",
}


#: a pre-emption's (``--preempt``) per-run measures, per arm
PREEMPT_MEASURES = {
    "steps_to_recover_90": f"retraining steps until concept F1 is back to {RECOVERY_TARGET:.0%} "
    "of base "
    "(interpolated); a seed that never gets there is censored at its budget",
    "recovery_auc": "mean of concept F1 / base F1 over the retraining steps",
    "pruned_f1": "concept F1 right after pruning",
    "last_f1": "concept F1 after the last stage",
    "others_pruned": "unweighted mean F1 of the other entity types (not the concept, not "
    "overall) right after pruning",
    "others_last": "the same after the last stage: what the removal costs the other types",
}


#: what a run's summary ``savings`` gives the sweep (:func:`neuroplastic.core.curves.savings`)
SAVINGS_FIELDS = (
    "target",
    "steps_relearned",
    "steps_naive",
    "naive_reached",
    "naive_budget",
    "savings",
    "bound",
    "area_between",
    "relearn_budget",
    "why_none",
)


#: the savings measures across seeds, with what each one means
SAVINGS_MEASURES = {
    "savings": "1 - steps(concept arm) / steps(naive arm) to lasting recovery at "
    f"{RECOVERY_TARGET:.0%} of the concept arm's base F1 (``targets``: at 50%, 80% and 90%): 1 "
    "when relearning is immediate, 0 when no faster than learning from nothing; a seed whose "
    "naive arm never got there for good is censored (at least its value at the naive arm's "
    "budget), one whose concept arm never got back there for good too (at most its value at "
    "that arm's budget)",
    "steps_relearned": "retraining steps of the concept arm to lasting recovery at that target",
    "steps_naive": "retraining steps of the naive arm (never taught the concept nor to refuse "
    "it, the same neurons held, the same batches) to lasting recovery at that target; "
    "censored at its budget",
    "area_between": "mean over the first stage of the concept arm's F1 minus the naive arm's",
    "naive_base_f1": "concept F1 of the naive base (fine-tuned with the concept's tokens out "
    "of its loss and its classes out of its softmax)",
    "naive_first_stage_f1": "concept F1 of the naive arm after the first retraining stage",
}


#: the per-round measures a seed may never reach (censored at the round's budget)
STEPS_MEASURES = ("steps_to_recover", "steps_to_recover_90")


#: the range of the chase's and the pre-emption's F1 measures (their intervals never leave it)
ROUND_BOUNDS = {
    **{m: F1_BOUNDS for m in ("before", "removed", "retrained", "others_retrained")},
    **{m: F1_BOUNDS for m in ("pruned_f1", "last_f1", "others_pruned", "others_last")},
    "drop": (-1.0, 1.0),
}


#: the range of each prediction measure, and of its concept-minus-random difference
PREDICTION_BOUNDS = {"auc": (0.0, 1.0), "precision_at_k": (0.0, 1.0), "precision_lift": (-1.0, 1.0)}


#: the margin a predictor's concept-minus-null difference must be shown inside to be "none"
PREDICTION_MARGIN = 0.05


#: the margin within which a set's damage beyond the random floor counts as none
CAUSAL_MARGIN = 0.05


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _minus(a: float | None, b: float | None) -> float:
    return math.nan if a is None or b is None else a - b

"""The run's :class:`~neuroplastic.store.summary.Summary`, built once every stage is done.

:func:`arm_summaries` is the part that needs only the evaluation rows, the settings and the held
neuron sets (a hand-made run directory in the tests builds its summary with it); the other
builders read the run's files for the sections a run's settings add: the chase's rounds, the
pre-emption's comparison, savings against the naive arm, the predictors against what happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.causal import CAUSAL_FILE
from neuroplastic.analysis.predict import Predictions, evaluate_arm, paired_population
from neuroplastic.config import (
    CONCEPT_ARM,
    NAIVE_ARM,
    ONE_SHOT_ARM,
    PREEMPT_ARM,
    PREEMPT_ARMS,
    PREEMPT_ORACLE_ARM,
    PREEMPT_RANDOM_ARM,
    RANDOM_ARM,
    ExperimentConfig,
)
from neuroplastic.core.curves import (
    RECOVERY_TARGET,
    SAVINGS_TARGETS,
    recovery,
    recovery_auc,
    savings,
    steps_to_recover,
)
from neuroplastic.core.erasure import LinearErasure
from neuroplastic.core.neurons import NeuronSet, control_kind
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.relearn import describe as describe_relearn
from neuroplastic.core.relearn import mentions
from neuroplastic.experiment.chase import chase_stop, round_measures, rounds_run
from neuroplastic.store.rundir import RunDir, json_of, read_run_file, stage_key, stage_round
from neuroplastic.store.summary import ArmSummary, StageRecord, Steps, Summary

if TYPE_CHECKING:
    from neuroplastic.experiment.setup import HeldSets, Setup

#: each arm's paired control: the same batches, schedule and dropout, other neurons held
CONTROLS = {CONCEPT_ARM: RANDOM_ARM, PREEMPT_ARM: PREEMPT_RANDOM_ARM}


def build_summary(setup: Setup, held: HeldSets, processes: list[int]) -> Summary:
    """Per arm and stage: the scores, their gap to base and (concept and preempt arms) to the
    paired control arm at the same step; how much of the evaluation data training had seen;
    how the base fine-tuning ended; ``processes``, every process count the stages were computed
    with (recorded only when not one); a chase's rounds and a pre-emption's comparison."""
    config, store = setup.config, setup.store
    rows = store.rows(config.arms, config.stages, config.rounds)
    neuron_sets = {arm: held.local(arm, 1) for arm in held.arms}
    predicted = _prediction(setup.run, list(neuron_sets))
    return Summary(
        config=config.to_dict(),
        data={
            "train_sentences": len(setup.train_data),
            "probe_sentences": len(setup.probe_data),
            "validation_sentences": len(setup.validation_data),
            "probe_halves": setup.probe_split.sizes if setup.probe_split else None,
            **setup.data_overlap,
        },
        steps=Steps(base_cap=setup.base_steps, per_stage=setup.stage_steps),
        base=store.marker(CONCEPT_ARM, "base")["base"],
        arms=arm_summaries(config, rows, neuron_sets, setup.erasures),
        prediction=predicted.get("prediction"),
        causal=predicted.get("causal"),
        # launched: how many processes computed the stages (several if resumed)
        processes=processes if processes != [1] else None,
        chase=_chase_summary(setup, held, rows) if config.rounds > 1 else None,
        preempt=_preempt_summary(setup, neuron_sets, rows) if config.preempt else None,
        relearn=_relearn_summary(setup),
        savings=(
            _savings_summary(setup, rows)
            if config.naive and store.done(NAIVE_ARM, "base")
            else None
        ),
    )


def arm_summaries(
    config: ExperimentConfig,
    rows: Sequence[dict[str, Any]],
    neuron_sets: dict[str, NeuronSet],
    erasures: dict[str, LinearErasure] | None = None,
) -> dict[str, ArmSummary]:
    """Each arm of ``neuron_sets`` from the run's evaluation ``rows`` (metrics.jsonl's): its
    stage ends with their gaps, what it held, and (NER, an arm that knew the concept at base)
    its round-1 recovery; ``erasures`` per arm when the removal is not neurons."""
    metric = "f1" if config.task == "ner" else "lm_loss"
    ends = {
        arm: [
            {k: v for k, v in row.items() if k != "arm"}
            for row in rows
            if row["arm"] == arm and "@" not in row["stage"]
        ]
        for arm in neuron_sets
    }
    for arm, entries in ends.items():
        paired = {entry["stage"]: entry for entry in ends.get(CONTROLS.get(arm, ""), [])}
        for entry in entries:
            entry["gap_to_base"] = _difference(entry[metric], entries[0][metric])
            if entry["stage"] in paired:
                entry["gap_to_control"] = _difference(entry[metric], paired[entry["stage"]][metric])
    arms = {}
    for arm, neurons in neuron_sets.items():
        removal = overlap = control = recovered = None
        if config.removal != "neurons":
            erasure = (erasures or {})[arm]
            removal = {
                "kind": erasure.kind,
                "layers": erasure.layers,
                "rank": erasure.rank,
                "what": erasure.describe(),
            }
            if erasure.removed:  # the share of each layer's variance it removes (fit sentences)
                removal["removed_variance"] = {
                    str(k): v for k, v in sorted(erasure.removed.items())
                }
            if arm == RANDOM_ARM:  # matched in removed variance, or (older runs) not
                control = "matched-projection" if erasure.removed else "random-projection"
        else:
            if arm != CONCEPT_ARM:
                overlap = neurons.overlap(neuron_sets[CONCEPT_ARM])
            if arm == RANDOM_ARM:
                control = control_kind(config.baseline, neurons, neuron_sets[CONCEPT_ARM])
        if metric == "f1" and ends[arm] and arm != NAIVE_ARM:  # (the naive base never knew it)
            base_f1 = ends[arm][0]["f1"][config.concept]
            recovered = recovery(round_one_curve(rows, arm, config.concept), base_f1)
        arms[arm] = ArmSummary(
            neurons=len(neurons),
            per_layer={str(k): v for k, v in sorted(neurons.per_layer_counts().items())},
            stages=[StageRecord.from_dict(entry) for entry in ends[arm]],
            removal=removal,
            overlap_with_concept=overlap,
            control=control,
            recovery=recovered,
        )
    return arms


def _relearn_summary(setup: Setup) -> dict[str, Any] | None:
    """What the retraining learned from, when not the base's own sentences and loss."""
    config = setup.config
    if config.relearn == "same" and not config.relearn_sentences:
        return None
    relearned = setup.relearn_data or setup.train_data
    return {
        "mode": config.relearn,
        "sentences": len(relearned),
        "mention_concept": sum(
            mentions(relearned, i, config.concept) for i in range(len(relearned))
        ),
        "what": describe_relearn(config, len(relearned)),
    }


def _savings_summary(setup: Setup, rows: list[dict]) -> dict[str, Any]:
    """Relearning against first learning (:func:`neuroplastic.core.curves.savings`): the concept
    arm's round-1 curve and the naive arm's, each arm's lasting recovery to
    :data:`~neuroplastic.config.RECOVERY_TARGET` (and to every share of
    :data:`~neuroplastic.core.curves.SAVINGS_TARGETS`) of the concept arm's base F1,
    the area between them over the first stage, and the naive base as fine-tuned without the
    concept (its F1 for every type: the arms must be equally good at everything else)."""
    config, store = setup.config, setup.store
    concept = config.concept
    base_f1 = next(
        r["f1"][concept] for r in rows if r["arm"] == CONCEPT_ARM and r["stage"] == "base"
    )
    curves = {arm: round_one_curve(rows, arm, concept) for arm in (CONCEPT_ARM, NAIVE_ARM)}
    if not curves[NAIVE_ARM]["step"]:
        return {"naive_base": store.marker(NAIVE_ARM, "base")["base"]}
    first_stage_end = curves[CONCEPT_ARM]["step"][0] + setup.stage_steps
    naive_base = next(r for r in rows if r["arm"] == NAIVE_ARM and r["stage"] == "base")
    return {
        **savings(
            curves[CONCEPT_ARM], curves[NAIVE_ARM], RECOVERY_TARGET * base_f1, first_stage_end
        ),
        "target_share_of_base": RECOVERY_TARGET,
        # several targets: at RECOVERY_TARGET the target may sit on the naive arm's plateau
        "targets": {
            str(share): savings(
                curves[CONCEPT_ARM], curves[NAIVE_ARM], share * base_f1, first_stage_end
            )
            for share in SAVINGS_TARGETS
        },
        "naive_base": {
            **store.marker(NAIVE_ARM, "base")["base"],
            "f1": naive_base["f1"],
        },
    }


def _chase_summary(setup: Setup, held: HeldSets, rows: list[dict]) -> dict[str, Any]:
    """The rounds the chase ran (:func:`neuroplastic.experiment.chase.round_measures`) and why it
    ended."""
    config = setup.config
    rounds = rounds_run(setup.store, config)
    stop = chase_stop(setup.store, config, rounds) if rounds < config.rounds else None
    chased = [arm for arm in held.arms if arm != ONE_SHOT_ARM]
    base = setup.run.stage(CONCEPT_ARM, "base").ranking
    per_round = round_measures(
        rows,
        {arm: [held.local(arm, r) for r in range(1, rounds + 1)] for arm in chased},
        base,
        config.concept,
        config.stages,
        config.stages * setup.stage_steps,
        branches={arm: CONCEPT_ARM for arm in chased if arm != CONCEPT_ARM},
    )
    summary = {"rounds_run": rounds, "stopped_early": stop, "rounds": per_round}
    if ONE_SHOT_ARM in held.arms:
        summary["one_shot"] = _one_shot_summary(setup, held, rows, per_round, base)
    return summary


def _one_shot_summary(
    setup: Setup, held: HeldSets, rows: list[dict], per_round: list[dict], base: Ranking
) -> dict[str, Any] | None:
    """The one-shot arm's round (every chased neuron from base at once) beside the chase's
    end: the same neurons held, removed in rounds or at once. None until it has run."""
    config = setup.config
    measured = round_measures(
        rows, {ONE_SHOT_ARM: [held.local(ONE_SHOT_ARM, 1)]}, base, config.concept,
        config.stages, config.stages * setup.stage_steps,
    )  # fmt: skip
    if not measured or ONE_SHOT_ARM not in measured[0]["arms"]:
        return None
    once = measured[0]["arms"][ONE_SHOT_ARM]
    chase_end = per_round[-1]["arms"][CONCEPT_ARM]
    return {
        "neurons": len(held.local(ONE_SHOT_ARM, 1)),
        "rounds": len(per_round),
        "one_shot": once,
        "chase_retrained": chase_end["retrained"],
        # the same neurons held at the end: F1 after removing them at once minus in rounds
        "one_shot_minus_chase": _difference(once["retrained"], chase_end["retrained"]),
        "retraining_steps": {
            "one_shot": config.stages * setup.stage_steps,
            "chase": len(per_round) * config.stages * setup.stage_steps,
        },
    }


def _preempt_summary(
    setup: Setup, neuron_sets: dict[str, NeuronSet], rows: list[dict]
) -> dict[str, Any]:
    """Recovery of every arm from its pruned stage (steps to
    :data:`~neuroplastic.config.RECOVERY_TARGET` of the base F1, mean recovered share) and the
    pre-empting arm minus its control, at the last stage and in recovery."""
    config, concept = setup.config, setup.config.concept
    base = next(r["f1"][concept] for r in rows if r["stage"] == "base")
    recovery = {}
    for arm in neuron_sets:
        mine = [r for r in rows if r["arm"] == arm and r["stage"] != "base"]
        curve = {"step": [r["step"] for r in mine], "f1": [r["f1"][concept] for r in mine]}
        steps = steps_to_recover(curve, RECOVERY_TARGET * base) if base > 0 else math.nan
        recovery[arm] = {
            "steps_to_recover_90": _number(steps),
            "recovery_auc": _number(recovery_auc(curve, base)),
            "pruned": mine[0]["f1"],
            "last": mine[-1]["f1"],
        }
    extra = {
        arm: set(neuron_sets[arm].neurons) - set(neuron_sets[CONCEPT_ARM].neurons)
        for arm in PREEMPT_ARMS
        if arm in neuron_sets
    }
    summary = {
        "predictor": config.preempt,
        "count": config.preempt_count,
        "overlap": len(extra[PREEMPT_ARM] & extra[PREEMPT_RANDOM_ARM]),
        "recovery": recovery,
        "preempt_minus_control": _arm_minus(recovery[PREEMPT_ARM], recovery[PREEMPT_RANDOM_ARM]),
    }
    if PREEMPT_ORACLE_ARM in recovery:
        oracle = _arm_minus(recovery[PREEMPT_ORACLE_ARM], recovery[PREEMPT_RANDOM_ARM])
        summary["oracle_overlap"] = len(extra[PREEMPT_ARM] & extra[PREEMPT_ORACLE_ARM])
        summary["oracle_minus_control"] = oracle
        # Where the predictor sits between random (0) and hindsight (1), in recovery AUC.
        bought, bound = summary["preempt_minus_control"]["recovery_auc"], oracle["recovery_auc"]
        summary["share_of_oracle"] = (
            bought / bound if bought is not None and bound not in (None, 0) else None
        )
    return summary


def _arm_minus(treated: dict[str, Any], control: dict[str, Any]) -> dict[str, Any]:
    return {
        "steps_to_recover_90": _minus(
            treated["steps_to_recover_90"], control["steps_to_recover_90"]
        ),
        "recovery_auc": _minus(treated["recovery_auc"], control["recovery_auc"]),
        "last": _difference(treated["last"], control["last"]),
    }


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def round_one_curve(rows: Sequence[dict], arm: str, concept: str) -> dict[str, list[float]]:
    """Concept F1 of ``arm`` against retraining step over round 1 (pruning is step 0), every
    evaluation of the grid included; a chase's later rounds have their own measures."""
    mine = [r for r in rows if r["arm"] == arm and r["step"] >= 0 and stage_round(r["stage"]) == 1]
    mine.sort(key=lambda r: (r["step"], stage_key(r["stage"])))
    return {"step": [float(r["step"]) for r in mine], "f1": [r["f1"][concept] for r in mine]}


def _prediction(run: RunDir, arms: list[str]) -> dict[str, Any]:
    """``{"prediction": rows}``: every predictor against every ground truth
    (:func:`neuroplastic.analysis.predict.evaluate_arm`), per predicted arm that has retrained,
    every arm scored on the same neurons (:func:`~neuroplastic.analysis.predict.
    paired_population`: the concept arm and its control differ in what was removed, not in
    which neurons are judged; ``population`` "paired"), or, where they share none (a
    complement control), each on its own survivors ("own arm"); nothing for a run without
    predictions (made before they existed) or without retraining."""
    predicted = {}
    for arm in arms:
        path = run.predictions_path(arm)
        if not path.is_file():  # (written for the predicted arms only)
            continue
        run.manifest.verify(path)  # the file the run wrote, not another
        loaded = ArmRun.load(run, arm)
        if loaded.last == loaded.start:
            continue  # no retraining: nothing happened to predict
        rankings = truth_rankings(run, arm, loaded) or (
            loaded.stages[loaded.start].ranking,
            loaded.stages[loaded.last].ranking,
        )
        predicted[arm] = (loaded, Predictions.load(path), rankings)
    if not predicted:
        return {}
    population = paired_population(
        [(*rankings, loaded.ablated) for loaded, _, rankings in predicted.values()]
    )
    # A complement control (a 50% removal) shares no survivor with the concept arm: then each
    # arm is scored on its own, and its rows say so.
    shared = bool(population.any())
    rows: list[dict] = []
    causal: dict[str, Any] = {}
    for arm, (loaded, predictions, rankings) in predicted.items():
        frame = evaluate_arm(
            loaded, predictions, rankings=rankings, population=population if shared else None
        )
        frame.insert(0, "arm", arm)
        frame.insert(1, "population", "paired" if shared else "own arm")
        # None, not NaN, where a measure is undefined: summary.json stays valid JSON.
        rows += [{k: _number(v) for k, v in row.items()} for row in frame.to_dict("records")]
        causal_path = run.stage_dir(arm, loaded.last) / CAUSAL_FILE
        if causal_path.is_file() or run.manifest.lists(causal_path):
            run.manifest.verify(causal_path)
            causal[arm] = read_run_file(
                causal_path, json_of(dict), partial(run.stage_remedy, arm, loaded.last)
            )
    return {"prediction": rows, **({"causal": causal} if causal else {})}


def truth_rankings(run: RunDir, arm: str, loaded: ArmRun) -> tuple[Ranking, Ranking] | None:
    """The arm's rankings at its pruned and last stages on the truth half of the probe
    sentences, which no predictor reads; None for a run made before the split."""
    config = run.config()
    rankings = []
    for stage in (loaded.start, loaded.last):
        halves = run.stage_halves(arm, stage)
        if halves is None:
            return None
        rankings.append(Ranking.from_stats(halves["truth"], config["concept"], config["method"]))
    return rankings[0], rankings[1]


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value.item() if hasattr(value, "item") else value


def _difference(values: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    return {k: values[k] - reference[k] for k in values if k in reference}

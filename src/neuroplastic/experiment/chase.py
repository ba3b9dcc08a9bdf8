"""Chase a removed concept round after round (``neuroplastic run --rounds R``).

Round 1 is the paper's experiment: hold the concept's most salient neurons and retrain. Every
later round ranks the model the last round left (its live neurons only: the held ones are
exactly zero and have no saliency), adds the next most salient neurons, chosen by the same rule
as round 1 (``--fraction`` of all neurons, ``--count``, or ``--count`` per layer), to the held
set, and retrains again. From round 2 on, the control branches from the same model as the
concept arm's round (the concept model round r-1 left): it holds that model's neurons plus as
many random survivors per layer as the concept arm adds (in total with ``--baseline
random-global``), drawn outside the concept arm's round-r set, so the two differ in which
neurons are added and in nothing else. (A control that were its own lineage would compare two
models: the concept intact in one, removed in the other.)

Sets only ever grow: a neuron held in one round is held in every later one.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from neuroplastic.config import CONCEPT_ARM, ExperimentConfig
from neuroplastic.core.curves import RECOVERY_TARGET, recovery_auc, steps_to_recover
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError
from neuroplastic.io import atomic_write_json
from neuroplastic.store.rundir import RunDir, round_stages, stage_round

if TYPE_CHECKING:
    from neuroplastic.store.checkpoint import Checkpointer


def select(ranking: Ranking, config: ExperimentConfig) -> NeuronSet:
    """The neurons ``config``'s selection rule takes from ``ranking`` (live neurons only)."""
    if config.selection == "fraction":
        return NeuronSet.top_fraction(ranking, config.fraction)
    if config.selection == "count":
        return NeuronSet.top_k(ranking, config.count)
    return NeuronSet.per_layer_top_k(ranking, config.count)


def next_concept_set(held: NeuronSet, ranking: Ranking, config: ExperimentConfig) -> NeuronSet:
    """``held`` and the next most salient live neurons outside it, by ``config``'s rule."""
    outside = Ranking(ranking.concept, ranking.method, ranking.scores, ranking.alive & ~held.mask())
    try:
        added = select(outside, config)
    except NeuroplasticError as error:
        raise NeuroplasticError(
            f"the chase cannot add another round of neurons outside the {len(held)} held: "
            f"{error}. Use fewer --rounds or a smaller --fraction/--count"
        ) from error
    return NeuronSet(
        held.n_layers,
        held.d_mlp,
        held.neurons + added.neurons,
        f"{held.description}; then {added.description} among the rest",
    )


class ControlCapacityError(NeuroplasticError):
    """No random control can match the concept arm's additions this round (too few neurons
    are held by neither arm): the chase stops before the round (:func:`chase_stop`)."""


#: the file (under the run's ``neurons/``) that records a chase stopped for want of a control
CAPACITY_STOP = "chase-stop.json"


def next_random_set(
    held: NeuronSet,
    concept_before: NeuronSet,
    concept_now: NeuronSet,
    seed: int,
    per_layer: bool = True,
) -> NeuronSet:
    """``held`` (the random arm's last set) and as many random neurons as the concept arm added
    from ``concept_before`` to ``concept_now``: per layer (``per_layer``) or in total, drawn
    outside ``held`` and ``concept_now``."""
    added = _added(concept_before, concept_now)
    taken = set(held.neurons) | set(concept_now.neurons)
    rng = random.Random(seed)
    if per_layer:
        pairs: list[tuple[int, int]] = []
        for layer, count in sorted(added.per_layer_counts().items()):
            free = [n for n in range(held.d_mlp) if (layer, n) not in taken]
            if len(free) < count:
                raise ControlCapacityError(
                    f"layer {layer}: the concept arm added {count} neurons this round, but only "
                    f"{len(free)} of the layer's {held.d_mlp} are held by neither arm, too few "
                    "for a random control matching per layer (in a new --out: --baseline "
                    "random-global, fewer --rounds or a smaller --fraction/--count)"
                )
            pairs += [(layer, n) for n in rng.sample(free, count)]
    else:
        free_pairs = [
            (layer, n)
            for layer in range(held.n_layers)
            for n in range(held.d_mlp)
            if (layer, n) not in taken
        ]
        if len(free_pairs) < len(added):
            raise ControlCapacityError(
                f"the concept arm added {len(added)} neurons this round, but only "
                f"{len(free_pairs)} are held by neither arm (in a new --out: fewer --rounds or "
                "a smaller --fraction/--count)"
            )
        pairs = rng.sample(free_pairs, len(added))
    how = "per layer" if per_layer else "in total"
    return NeuronSet(
        held.n_layers,
        held.d_mlp,
        held.neurons + tuple(pairs),
        f"{held.description}; then as many random neurons {how} as the concept arm added "
        f"(seed {seed})",
    )


def _added(before: NeuronSet, now: NeuronSet) -> NeuronSet:
    """The neurons of ``now`` not in ``before``."""
    old = set(before.neurons)
    return NeuronSet(now.n_layers, now.d_mlp, tuple(p for p in now.neurons if p not in old))


def rounds_run(store: Checkpointer, config: ExperimentConfig) -> int:
    """How many rounds the concept arm runs: all of ``--rounds``, or fewer when one left the
    concept below ``--stop-below`` of its base F1 (read from the stage markers; rank 0)."""
    for round_ in range(1, config.rounds):
        if chase_stop(store, config, round_):
            return round_
    return config.rounds


def chase_stop(store: Checkpointer, config: ExperimentConfig, round_: int) -> str | None:
    """Why the chase stops after ``round_`` (None: it goes on, or the round is not done): its
    concept F1 fell below ``--stop-below``, or no control could be drawn for the next round
    (recorded by :func:`record_capacity_stop`)."""
    recorded = store.run.path / "neurons" / CAPACITY_STOP
    if recorded.is_file():
        stop = json.loads(recorded.read_text(encoding="utf-8"))
        if stop["after_round"] == round_:
            return stop["reason"]
    last = round_stages(config.stages, round_)[-1]
    if not config.stop_below or not store.done(CONCEPT_ARM, last):
        return None
    base = store.marker(CONCEPT_ARM, "base")["rows"][-1]["f1"][config.concept]
    after = store.marker(CONCEPT_ARM, last)["rows"][-1]["f1"][config.concept]
    if after >= config.stop_below * base:
        return None
    return (
        f"{config.concept} F1 {after:.3f} after retraining is below --stop-below "
        f"{config.stop_below:g} x its base F1 {base:.3f}"
    )


def record_capacity_stop(run: RunDir, after_round: int, error: ControlCapacityError) -> str:
    """Record that the chase stops after ``after_round`` because no control can match the next
    round; returns the reason (what the summary's ``stopped_early`` says)."""
    reason = f"no random control can match round {after_round + 1}: {error}"
    atomic_write_json(
        run.path / "neurons" / CAPACITY_STOP, {"after_round": after_round, "reason": reason}
    )
    return reason


def mean_layer(neurons: NeuronSet) -> float:
    """The mean layer of ``neurons`` (each neuron counts once); NaN for none."""
    if not len(neurons):
        return math.nan
    return sum(layer for layer, _ in neurons.neurons) / len(neurons)


def share_salient_at_base(added: NeuronSet, held: NeuronSet, base: Ranking) -> float:
    """The share of ``added`` that ranked, at base, among the ``len(held)`` most salient live
    neurons: the part of a round's new home a removal that large at the start would have
    caught. NaN for none added."""
    if not len(added):
        return math.nan
    top = set(base.top(min(len(held), base.n_alive)))
    return sum(pair in top for pair in added.neurons) / len(added)


def salient_at_base_chance(before: NeuronSet | None, held: NeuronSet, base: Ranking) -> float:
    """What :func:`share_salient_at_base` would be for neurons drawn at random from those the
    round could add (alive at base, not held before it): the share of them among the base's
    ``len(held)`` most salient. Round 1 under a global rule takes exactly those: 1 by
    construction there, and the chance level is what the share must be read against."""
    held_before = set(before.neurons) if before is not None else set()
    candidates = int(base.alive.sum()) - sum(bool(base.alive[a, b]) for a, b in held_before)
    if candidates <= 0:
        return math.nan
    top = set(base.top(min(len(held), base.n_alive)))
    return len(top - held_before) / candidates


def round_measures(
    rows: Sequence[Mapping[str, Any]],
    sets: Mapping[str, Sequence[NeuronSet]],
    base: Ranking,
    concept: str,
    n_stages: int,
    steps_per_round: int,
    recovery_target: float = RECOVERY_TARGET,
    branches: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """One record per round run: per arm, the concept's F1 just before the round's removal
    (``before``: base in round 1, else the arm's F1 after the previous round), right after it
    and after its retraining, the drop, steps (from the round's start) until the concept is
    back to ``recovery_target`` of ``before`` (interpolated between evaluations; None if never)
    and the mean share of ``before`` recovered over the round, the neurons added and held (in
    all and per layer) and the added neurons' mean layer; for the concept arm, the share of its
    added neurons already among the base's most salient (:func:`share_salient_at_base`) beside
    its chance level (:func:`salient_at_base_chance`), for the others how many neurons they
    hold in common with it. Measuring a later round against base would give 0 steps whenever
    the concept never falls below ``recovery_target`` of base, by construction.

    ``rows``: the run's evaluations (``metrics.jsonl``); ``sets``: each arm's held set per
    round, round 1 first; ``branches``: arms whose later rounds start from another arm's model
    (the control from the concept arm's), which is then what ``before`` is read from."""
    branches = branches or {}
    base_f1 = next(r["f1"] for r in rows if r["stage"] == "base" and r["arm"] == CONCEPT_ARM)
    records = []
    for index in range(max(len(s) for s in sets.values())):
        round_ = index + 1
        first, last = round_stages(n_stages, round_)[0], round_stages(n_stages, round_)[-1]
        offset = index * steps_per_round
        record: dict[str, Any] = {"round": round_, "arms": {}}
        for arm, per_round in sets.items():
            if index >= len(per_round):
                continue
            mine = [r for r in rows if r["arm"] == arm and stage_round(r["stage"]) == round_]
            at = {r["stage"]: r for r in mine}
            if last not in at:
                continue  # the round is not done
            held = per_round[index]
            lineage = branches.get(arm, arm)
            # A branch's round adds to the set of the model it branched from.
            added = _added(sets[lineage][index - 1], held) if index else held
            curve = {
                "step": [float(r["step"] - offset) for r in mine],
                "f1": [r["f1"][concept] for r in mine],
            }
            lineage = branches.get(arm, arm)
            before = base_f1 if index == 0 else _retrained_f1(rows, lineage, round_ - 1, n_stages)
            if before is None:  # the previous round's end is missing (an arm from older runs)
                before = base_f1
            target = recovery_target * before[concept]
            steps = steps_to_recover(curve, target) if before[concept] > 0 else math.nan
            entry = {
                "before": before,
                "removed": at[first]["f1"],
                "retrained": at[last]["f1"],
                "drop": before[concept] - at[first]["f1"][concept],
                "steps_to_recover": None if math.isnan(steps) else steps,
                "recovery_auc": _none_if_nan(recovery_auc(curve, before[concept])),
                "added": len(added),
                "held": len(held),
                "added_per_layer": _per_layer(added),
                "held_per_layer": _per_layer(held),
                "added_mean_layer": _none_if_nan(mean_layer(added)),
            }
            if arm != CONCEPT_ARM and CONCEPT_ARM in sets and index < len(sets[CONCEPT_ARM]):
                # The concept arm picks by its own ranking alone: it may take up neurons the
                # control held in an earlier round (the control's picks avoid the concept's).
                entry["overlap_with_concept"] = held.overlap(sets[CONCEPT_ARM][index])
            if arm == CONCEPT_ARM:
                entry["already_salient_at_base"] = _none_if_nan(
                    share_salient_at_base(added, held, base)
                )
                entry["already_salient_chance"] = _none_if_nan(
                    salient_at_base_chance(per_round[index - 1] if index else None, held, base)
                )
            record["arms"][arm] = entry
        if record["arms"]:
            records.append(record)
    return records


def _retrained_f1(
    rows: Sequence[Mapping[str, Any]], arm: str, round_: int, n_stages: int
) -> dict[str, float] | None:
    """The arm's F1 after round ``round_``'s retraining (its last stage)."""
    last = round_stages(n_stages, round_)[-1]
    return next((r["f1"] for r in rows if r["arm"] == arm and r["stage"] == last), None)


def _per_layer(neurons: NeuronSet) -> dict[str, int]:
    return {str(k): v for k, v in sorted(neurons.per_layer_counts().items())}


def _none_if_nan(value: float) -> float | None:
    return None if isinstance(value, float) and math.isnan(value) else value

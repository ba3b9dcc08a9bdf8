"""Recomputation on resumption: the files of stages that could not be read again, taken anew
from the weights saved after each (no training repeated), with the same numbers."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from neuroplastic import distributed
from neuroplastic.config import CONCEPT_ARM, NAIVE_ARM, ONE_SHOT_ARM
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.stats import NeuronStats
from neuroplastic.experiment.predicting import (
    _causal_truth,
    _half_ranking,
    _has_causal_truth,
    _predict_at_base,
    _predict_at_pruned,
    _predicted,
)
from neuroplastic.experiment.removals import _base_neuron_sets, _naive_set, _preempt_sets, _removal
from neuroplastic.experiment.setup import HeldSets, Setup
from neuroplastic.experiment.stages import _load_on_main, _probe_stats, _write_stage_files
from neuroplastic.store.repair import Recompute
from neuroplastic.store.rundir import stage_round


def _recompute_stage_files(setup: Setup, stages: list[Recompute]) -> None:
    """Take the statistics of stages whose files could not be read again, from the weights
    saved after each (with the arm's neurons of the stage's round held, as when it ran): no
    training is repeated. ``stages`` lists the base first, whose ranking the neuron sets come
    from."""
    held = None
    for each in stages:
        _load_on_main(setup.module, each.weights)
        setup.module.eval()  # as after training: no dropout in the statistics
        hold = None
        if each.stage != "base" and held is None:
            held = _held_sets(setup)
        if each.stage != "base":
            neurons = held(each.arm, stage_round(each.stage))
            hold = _removal(setup, each.arm, neurons).hold(setup.model)
        try:
            stats, halves = _probe_stats(setup)
            _rewrite_stage(setup, each, stats, halves)
            if _has_causal_truth(setup, each.arm, each.stage):  # with the removal still held
                causal = partial(_causal_truth, setup, each.arm, held(each.arm, 1))
                _record(setup, causal, each.stage, halves)
        finally:
            if hold is not None:
                hold.remove()
        if each.stage == "pruned" and _predicted(setup, each.arm):
            _repredict(setup, each, held(each.arm, 1))


@distributed.rank_zero
def _record(setup: Setup, write: Callable[..., Path], *args: Any) -> None:
    """Write a file (``write(*args)`` returns its path) and list it in the manifest."""
    setup.store.record([write(*args)])


def _held_sets(setup: Setup) -> HeldSets:
    """Every arm's sets, as the run chose them (the base ranking's, the predictions')."""
    neuron_sets = _base_neuron_sets(setup)
    one_shot = setup.run.neurons_path(ONE_SHOT_ARM)
    if setup.config.rounds > 1 and distributed.on_main(one_shot.is_file):
        neuron_sets[ONE_SHOT_ARM] = setup.main_run.neurons(ONE_SHOT_ARM)
    if setup.config.naive:
        neuron_sets[NAIVE_ARM] = _naive_set(setup, neuron_sets[CONCEPT_ARM])
    if setup.config.preempt and distributed.on_main(
        lambda: setup.run.predictions_path(CONCEPT_ARM).is_file()
    ):
        neuron_sets |= _preempt_sets(setup, neuron_sets[CONCEPT_ARM])
    return HeldSets(setup, neuron_sets)


def _repredict(setup: Setup, each: Recompute, neurons: NeuronSet) -> None:
    """The predictions saved with a recomputed pruned stage, computed again as the run did:
    on the base weights (kept until the run is complete), then on the weights after the stage
    with the removal held. The same numbers, so a damaged file comes back as it was."""
    base = setup.main_run.saved_weights(CONCEPT_ARM, "base")
    if base is None:
        return  # a complete run keeps no weights: recovery refused it before any of this
    _load_on_main(setup.module, base)
    at_base = _predict_at_base(setup, neurons)
    _load_on_main(setup.module, each.weights)
    hold = _removal(setup, each.arm, neurons).hold(setup.model)
    try:

        def write() -> None:
            ranking = _half_ranking(setup, each.arm, "pruned", "predict")  # as just rewritten
            path = setup.run.predictions_path(each.arm)
            _predict_at_pruned(setup, neurons, at_base, ranking).save(path)
            setup.store.record([path])

        distributed.on_main(write)
    finally:
        if hold is not None:
            hold.remove()


@distributed.rank_zero
def _rewrite_stage(
    setup: Setup, each: Recompute, stats: NeuronStats, halves: dict[str, NeuronStats]
) -> None:
    setup.store.record(_write_stage_files(setup, (each.arm,), each.stage, stats, halves)[1])

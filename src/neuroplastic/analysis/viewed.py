"""Which neurons a run's report draws as neuron views: the same choice the report makes, so
that a run can store their whole-sentence activations before its weights are released."""

from __future__ import annotations

from collections.abc import Mapping

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.polysemantic import arm_polysemanticity, common_population
from neuroplastic.analysis.reappearance import reappearance

#: neurons per list the report can show views of with the stored activations (its tables list
#: ``n_neurons``, 20 by default, and draw views of the first ``n_views`` of each)
VIEWED = 20


def viewed_neurons(
    loaded: Mapping[str, ArmRun], n: int = VIEWED
) -> dict[str, list[tuple[int, int]]]:
    """Per arm: the ``n`` neurons that took most saliency from the pruned stage to the last
    (the report's "where the concept reappeared") and its first ``n`` polysemantic neurons at
    the last stage, counted over the population common to every arm (as the report counts
    them), in that order, each once."""
    common = common_population(loaded)
    chosen = {}
    for arm, data in loaded.items():
        gained = reappearance(data, n=n)
        mixed = arm_polysemanticity(data, common).examples(data.last, n)
        pairs = [
            *zip(gained["layer"], gained["neuron"], strict=True),
            *zip(mixed["layer"], mixed["neuron"], strict=True),
        ]
        chosen[arm] = list(dict.fromkeys((int(layer), int(neuron)) for layer, neuron in pairs))
    return chosen


def top_sentences(arm: ArmRun, stage: str, layer: int, neuron: int, n: int = 5) -> list[int]:
    """The first ``n`` distinct sentences of a neuron's top-k tokens at ``stage``, in order of
    ``k`` (its top values first): the sentences its view there shows
    (:func:`neuroplastic.report.views.examples_from_top_k`)."""
    table = arm.stages[stage].top_tokens
    rows = table[(table["layer"] == layer) & (table["neuron"] == neuron)]
    return list(dict.fromkeys(int(s) for s in rows.sort_values("k", kind="stable")["sentence"]))[:n]


__all__ = ["VIEWED", "top_sentences", "viewed_neurons"]

"""Pre-empt the concept's new home (``neuroplastic run --preempt PREDICTOR --preempt-count N``).

Two more arms start from the same base weights as the others and retrain on the same batches:

- ``preempt`` holds the concept's neurons and the N survivors ``PREDICTOR`` scores highest at
  the pruned stage (:mod:`neuroplastic.analysis.predict`: the concept arm's predictions);
- ``preempt-random`` holds the concept's neurons and N random survivors with the same count
  in every layer, drawn from the same candidates (the survivors the predictor scored).

So the two differ in which N survivors are held, and in nothing else (not how many, nor in
which layers): a slower recovery of ``preempt`` is what the prediction bought.

- ``preempt-oracle`` holds the concept's neurons and the N survivors that gained the most
  saliency in the concept arm, which ran first on the same batches (:func:`realised_gain`):
  hindsight, what no predictor read before retraining can beat. The predictor's arm is read
  between the two: its share of the oracle's slowdown over random. ``--preempt oracle`` holds
  the oracle's neurons in ``preempt`` itself (and runs no third arm).
"""

from __future__ import annotations

import random

import torch

from neuroplastic.analysis.predict import Predictions, ground_truth
from neuroplastic.config import PREEMPT_ARM, PREEMPT_RANDOM_ARM
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError


def preempt_sets(
    concept: NeuronSet, predictions: Predictions, predictor: str, count: int, seed: int
) -> dict[str, NeuronSet]:
    """``{PREEMPT_ARM: ..., PREEMPT_RANDOM_ARM: ...}`` (see the module's docstring)."""
    if predictor not in predictions.scores:
        raise NeuroplasticError(
            f"--preempt {predictor}: the run has no {predictor!r} scores (it had "
            f"{', '.join(predictions.scores)}); similarity is left out when no base top token "
            "is labelled with the concept. Choose another predictor"
        )
    scores = predictions.scores[predictor].double()
    candidates = torch.isfinite(scores)
    n_candidates = int(candidates.sum())
    if count > n_candidates // 2:
        raise NeuroplasticError(
            f"--preempt-count {count} is more than half of the {n_candidates} surviving neurons "
            f"{predictor} scored, so the preempt and preempt-random arms would hold mostly the "
            f"same neurons; give --preempt-count {n_candidates // 2} or less"
        )
    n_layers, d_mlp = scores.shape
    flat = scores.flatten().masked_fill(~candidates.flatten(), float("-inf"))
    order = torch.argsort(-flat, stable=True)[:count]  # ties: the lower index first
    predicted = [divmod(int(i), d_mlp) for i in order]
    rng = random.Random(f"neuroplastic-preempt-{seed}")
    matched: list[tuple[int, int]] = []
    per_layer = NeuronSet(n_layers, d_mlp, tuple(predicted)).per_layer_counts()
    for layer, n in sorted(per_layer.items()):
        pool = torch.nonzero(candidates[layer]).flatten().tolist()
        matched += [(layer, neuron) for neuron in rng.sample(pool, n)]
    return {
        PREEMPT_ARM: _with(concept, predicted, f"the {count} survivors {predictor} scores highest"),
        PREEMPT_RANDOM_ARM: _with(
            concept, matched, f"{count} random survivors matching those per layer (seed {seed})"
        ),
    }


def realised_gain(pruned: Ranking, last: Ranking, concept: NeuronSet) -> Predictions:
    """The concept arm's saliency gain from its pruned to its last stage, as a predictor's
    scores (``oracle``; NaN outside the survivors alive at both stages)."""
    truth = ground_truth(pruned, last, concept)
    return Predictions({"oracle": truth.gain})


def oracle_set(
    concept: NeuronSet, pruned: Ranking, last: Ranking, count: int, seed: int
) -> NeuronSet:
    """The ``preempt-oracle`` arm's set: the concept's neurons and the ``count`` survivors of
    largest realised gain."""
    sets = preempt_sets(concept, realised_gain(pruned, last, concept), "oracle", count, seed)
    return sets[PREEMPT_ARM]


def _with(concept: NeuronSet, extra: list[tuple[int, int]], what: str) -> NeuronSet:
    return NeuronSet(
        concept.n_layers,
        concept.d_mlp,
        concept.neurons + tuple(extra),
        f"{concept.description}; and {what}",
    )

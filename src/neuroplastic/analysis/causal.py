"""A causal ground truth for the predictors: what the retrained model loses when a set of
survivors is ablated as well.

The rank-based truths (:func:`neuroplastic.analysis.predict.ground_truth`) say which neurons became
*salient* for the concept; none says which ones the retrained model *uses* for it. Here, in
the model at the end of retraining (the arm's removal still held), the concept's score is
measured again with ``k`` more survivors zero-ablated, once per candidate set:

==================  ========================================================================
``<predictor>``     the ``k`` survivors each predictor scored highest at the pruned stage
``gainers``         the realised top gainers (the ``gain`` truth): what hindsight picks
``last_top``        the ``k`` most salient survivors at the last stage
``matched_random``  ``k`` random survivors with the gainers' count in every layer: the floor
==================  ========================================================================

``k`` is the size of the rank truths (the top 1% of survivors), so the sets are as large as
each other and differ in which neurons they hold (the gainers, and so the random floor, are
fewer only if fewer than ``k`` survivors gained at all). The damage is the concept F1 lost (``ner``)
or the concept's next-token loss gained (``lm``); the validation sentences, which neither the
predictors nor the rankings read, are the ones scored. One run's numbers: seeds replicate.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch

from neuroplastic.analysis.predict import GroundTruth
from neuroplastic.core.ablation import Ablation
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.training import evaluate
from neuroplastic.data.concept import ConceptDataset
from neuroplastic.errors import NeuroplasticError

#: the reference sets besides the predictors' own, in reading order
REFERENCE_SETS = ("gainers", "last_top", "matched_random")
CAUSAL_FILE = "causal.json"


def candidate_sets(
    scores: Mapping[str, torch.Tensor], truth: GroundTruth, seed: int
) -> dict[str, NeuronSet]:
    """Every set to ablate (see the module's docstring), each of the truth's size ``k``.

    A predictor's set is its ``k`` highest finite scores among ``truth.candidates`` (ties: the
    lower index first); the gainers are cut to ``k`` the same way when ties made the truth
    larger."""
    candidates = truth.candidates
    n_layers, d_mlp = candidates.shape
    k = max(1, round(truth.top * truth.n_candidates))

    def top(values: torch.Tensor, among: torch.Tensor) -> NeuronSet:
        flat = values.double().flatten()
        flat = flat.masked_fill(~among.flatten() | flat.isnan(), -math.inf)
        n = min(k, int(torch.isfinite(flat).sum()))
        order = torch.argsort(-flat, stable=True)[:n]
        return NeuronSet.of(n_layers, d_mlp, sorted(divmod(int(i), d_mlp) for i in order))

    sets = {name: top(values.cpu(), candidates) for name, values in scores.items()}
    sets["gainers"] = top(truth.gain, truth.positives["gain"])
    sets["last_top"] = top(truth.positives["last_top"].double(), truth.positives["last_top"])
    rng = random.Random(f"neuroplastic-causal-{seed}")
    matched: list[tuple[int, int]] = []
    for layer, n in sorted(sets["gainers"].per_layer_counts().items()):
        pool = torch.nonzero(candidates[layer]).flatten().tolist()
        matched += [(layer, neuron) for neuron in rng.sample(pool, min(n, len(pool)))]
    sets["matched_random"] = NeuronSet.of(n_layers, d_mlp, sorted(matched))
    return sets


def concept_score(scores: Mapping[str, Any], task: str, concept: str) -> float:
    """The concept's number in an evaluation: its F1 (``ner``) or next-token loss (``lm``)."""
    return float(scores["f1"][concept] if task == "ner" else scores["lm_loss"]["concept"])


def damage(
    module: torch.nn.Module,
    model: Any,
    data: ConceptDataset,
    task: str,
    concept: str,
    sets: Mapping[str, NeuronSet],
    progress: bool = False,
) -> dict[str, Any]:
    """The concept's score as the model is, then with each set also ablated.

    ``{"task", "k", "score", "lost": {set: damage}}``: damage is F1 lost for ``ner`` (score
    minus ablated score) and loss gained for ``lm`` (ablated minus score), so larger always
    means the set mattered more; for ``ner``, ``others_lost`` gives every other type's F1 lost
    per set (a set that costs every type alike is not the concept's). The model's own hooks (a
    held removal) stay as they are."""
    if not sets:
        raise NeuroplasticError("no candidate sets to ablate")

    def score() -> dict[str, Any]:
        return evaluate(module, data, task, concept, progress=progress).scores

    was_training = module.training
    try:
        plain = score()
        lost, collateral = {}, {}
        for name, neurons in sets.items():
            with Ablation(model, neurons):
                ablated = score()
            before, after = (concept_score(s, task, concept) for s in (plain, ablated))
            lost[name] = before - after if task == "ner" else after - before
            if task == "ner":  # what the set costs every other type: is it the concept's?
                collateral[name] = {
                    entity: plain["f1"][entity] - ablated["f1"][entity]
                    for entity in plain["f1"]
                    if entity not in (concept, "overall")
                }
    finally:
        module.train(was_training)
    sizes = {len(neurons.neurons) for neurons in sets.values()}
    result = {
        "task": task,
        "k": max(sizes),
        "score": concept_score(plain, task, concept),
        "lost": lost,
    }
    if collateral:
        result["others_lost"] = collateral
    return result

"""Predict, at the pruned stage, which surviving neurons will take a removed concept over.

Right after the concept's neurons are removed, and before any retraining, every *surviving*
neuron (live at the stage, not in the removed set) gets a score from each predictor; once
retraining is done the scores are checked against what happened. The predictors:

====================  =======================================================================
``saliency_pruned``   the neuron's saliency for the concept at the pruned stage
``saliency_base``     its saliency at base, before anything was removed
``similarity``        concept similarity of its base top tokens to the concept's tokens (the
                      "primed neurons" of Lo et al.; :mod:`neuroplastic.core.similarity`)
``gradient``          mean |activation x gradient of the concept's loss| over concept tokens, at
                      the pruned stage with the removal held (:func:`gradient_attribution`)
``coactivation``      |correlation| over concept tokens, at base, with the removed neurons'
                      standardized mean activation (:func:`coactivation_score`)
``random``            a seeded uniform score: the floor every predictor must beat
====================  =======================================================================

Every predictor returns a ``[layer, neuron]`` float tensor with NaN for the neurons that are not
candidates. The ground truth (:func:`ground_truth`) comes from the rankings at the pruned and the
last stage; :func:`evaluate_predictions` gives ROC AUC and precision at k per predictor and
truth, one run at a time, and :func:`across_seeds` the mean and 95% t-interval over seeds.

The neurons of one model are not independent samples: an AUC over them describes one run, and
no interval is ever taken over neurons. Seeds are the unit of replication.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool
from torch import Tensor, nn

# The split of issue 39 moved this module's pieces to predictors, predictions and predict_truth;
# every name it held is still here (``X as X``: re-exported), private ones included.
from neuroplastic.analysis.predict_truth import _TIE as _TIE
from neuroplastic.analysis.predict_truth import SEED_MEASURES as SEED_MEASURES
from neuroplastic.analysis.predict_truth import (
    GroundTruth,
    across_seeds,
    evaluate_arm,
    evaluate_predictions,
    ground_truth,
    precision_at_k,
    roc_auc,
)
from neuroplastic.analysis.predict_truth import _as_arrays as _as_arrays
from neuroplastic.analysis.predict_truth import _top_mask as _top_mask
from neuroplastic.analysis.predict_truth import paired_population as paired_population
from neuroplastic.analysis.predictions import PREDICTORS, Predictions
from neuroplastic.analysis.predictors import Mask as Mask
from neuroplastic.analysis.predictors import Scores as Scores
from neuroplastic.analysis.predictors import _attribution_positions as _attribution_positions
from neuroplastic.analysis.predictors import _bare_model as _bare_model
from neuroplastic.analysis.predictors import _batches as _batches
from neuroplastic.analysis.predictors import _concept_activations as _concept_activations
from neuroplastic.analysis.predictors import _concept_loss as _concept_loss
from neuroplastic.analysis.predictors import _eval_mode as _eval_mode
from neuroplastic.analysis.predictors import _keep_into as _keep_into
from neuroplastic.analysis.predictors import _Moments as _Moments
from neuroplastic.analysis.predictors import _only as _only
from neuroplastic.analysis.predictors import (
    coactivation_score,
    gradient_attribution,
    random_score,
    readable_concept_tokens,
    saliency_score,
    similarity_score,
    survivors,
)
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats
from neuroplastic.data.concept import ConceptDataset

__all__ = [
    "PREDICTORS",
    "GroundTruth",
    "Predictions",
    "across_seeds",
    "coactivation_score",
    "evaluate_arm",
    "evaluate_predictions",
    "gradient_attribution",
    "ground_truth",
    "precision_at_k",
    "predict_at_base",
    "predict_at_pruned",
    "random_score",
    "readable_concept_tokens",
    "roc_auc",
    "saliency_score",
    "similarity_score",
    "survivors",
]


# ---------------------------------------------------------------------------------------------
# All predictors of one arm
# ---------------------------------------------------------------------------------------------


def predict_at_base(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    base: Ranking,
    base_stats: NeuronStats,
    removed: NeuronSet,
    embeddings: TokenEmbeddings | None = None,
    batch_size: int = 32,
    progress: bool = False,
    readable: Bool[Tensor, "layer neuron k"] | None = None,
) -> Predictions:
    """The predictors read at base: ``saliency_base``, ``similarity`` (needs ``embeddings``) and
    ``coactivation``. Call it on the base model with no ablation hook attached (in ``hold`` mode
    before the hold is attached, in ``regrow`` mode before the weights are pruned). Without
    ``embeddings``, or when no base top token is labelled ``concept``, ``similarity`` is left
    out. ``data``, ``base`` and ``readable`` (the base top-token entries similarity may read)
    should all come from the predict half of the probe sentences (:mod:`neuroplastic.core.halves`),
    so that no predictor shares the ground truth's sentences."""
    candidates = survivors(base.alive, removed)
    scores = {"saliency_base": saliency_score(base, candidates)}
    if readable is None:
        readable = torch.ones_like(base_stats.top_token, dtype=torch.bool)
    # Like the primed-neuron analysis, similarity is left out (not scored NaN, which would pass
    # for a chance-level predictor) when no base top token is labelled with the concept.
    if embeddings is not None and readable_concept_tokens(base_stats, concept, readable).numel():
        scores["similarity"] = similarity_score(
            base_stats, embeddings, concept, candidates, readable=readable
        )
    scores["coactivation"] = coactivation_score(
        module, data, concept, removed, candidates, batch_size, progress
    )
    return Predictions(scores)


def predict_at_pruned(
    module: nn.Module,
    data: ConceptDataset,
    concept: str,
    pruned: Ranking,
    removed: NeuronSet,
    seed: int,
    hold: bool = True,
    batch_size: int = 16,
    progress: bool = False,
) -> Predictions:
    """The predictors read at the pruned stage: ``saliency_pruned``, ``gradient`` and the
    seeded ``random`` floor. The model holds the pruned weights; a hold already attached may
    stay (a second zero-ablation of the same neurons changes nothing). ``hold``: as retraining
    runs, with the removed neurons zero-ablated (``hold`` mode) or without hooks (``regrow``
    mode, weights pruned)."""
    candidates = survivors(pruned.alive, removed)
    return Predictions(
        {
            "saliency_pruned": saliency_score(pruned, candidates),
            "gradient": gradient_attribution(
                module, data, concept, removed, candidates, hold, batch_size, progress
            ),
            "random": random_score(candidates, seed),
        }
    )

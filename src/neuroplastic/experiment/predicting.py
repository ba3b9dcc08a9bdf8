"""The concept arm's predictions of where the concept goes (read at base and at the pruned
stage, :mod:`neuroplastic.analysis.predict`) and their causal truth at the round's last stage
(:mod:`neuroplastic.analysis.causal`)."""

from __future__ import annotations

from pathlib import Path

from neuroplastic import distributed
from neuroplastic.analysis.causal import CAUSAL_FILE, candidate_sets, damage
from neuroplastic.analysis.predict import (
    Predictions,
    ground_truth,
    predict_at_base,
    predict_at_pruned,
)
from neuroplastic.config import CONCEPT_ARM, RANDOM_ARM
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError
from neuroplastic.experiment.loading import _token_embeddings
from neuroplastic.experiment.setup import Setup
from neuroplastic.io import atomic_write_json
from neuroplastic.store.rundir import round_stages

#: the arms whose removal is predicted: the concept's, and its paired control, where nothing
#: concept-specific was removed, so that every predictor's score there is its null
PREDICTED_ARMS = (CONCEPT_ARM, RANDOM_ARM)


#: the arms whose predictors also get a causal truth (ablating each one's picks in the
#: retrained model): the concept arm, where there is something to have taken over
CAUSAL_ARMS = (CONCEPT_ARM,)


def _predicted(setup: Setup, arm: str) -> bool:
    """Whether ``arm``'s removal is predicted: the neuron predictors need removed neurons."""
    return arm in PREDICTED_ARMS and setup.config.removal == "neurons"


def _has_causal_truth(setup: Setup, arm: str, stage: str) -> bool:
    """Whether ``stage`` is where ``arm``'s causal truth is taken: the last stage of round 1
    of a predicted arm that retrained."""
    last = round_stages(setup.config.stages, 1)[-1]
    return arm in CAUSAL_ARMS and _predicted(setup, arm) and stage == last and last != "pruned"


def _causal_truth(
    setup: Setup, arm: str, neurons: NeuronSet, stage: str, halves: dict[str, NeuronStats]
) -> Path:
    """On rank 0: the causal truth (:mod:`neuroplastic.analysis.causal`) of ``arm``'s predictions,
    in the model as it is now (the removal held), written with ``stage``; returns the file."""
    config, run = setup.config, setup.run
    last = Ranking.from_stats(halves["truth"], config.concept, config.method)
    truth = ground_truth(_half_ranking(setup, arm, "pruned", "truth"), last, neurons)
    predictions = Predictions.load(run.predictions_path(arm))
    sets = candidate_sets(predictions.scores, truth, config.seed)
    result = damage(
        setup.module, setup.model, setup.validation_data, config.task, config.concept, sets,
        progress=setup.progress,
    )  # fmt: skip
    path = run.stage_dir(arm, stage) / CAUSAL_FILE
    atomic_write_json(path, result)
    return path


@distributed.rank_zero
def _predict_at_base(setup: Setup, neurons: NeuronSet) -> Predictions:
    """Base saliency, concept similarity (the base model's own input embeddings, as the report
    uses) and co-activation with ``neurons``: on the base weights, no ablation held."""
    config, split = setup.config, setup.probe_split
    base = setup.run.stage(CONCEPT_ARM, "base")  # verified against the manifest
    embeddings = TokenEmbeddings.from_vectors(*_token_embeddings(setup.model, setup.probe_data))
    # Every predictor reads the predict half only: its saliency, its share of the base top
    # tokens (each entry records its sentence), its sentences for co-activation.
    return predict_at_base(
        setup.module, setup.predict_data, config.concept,
        _half_ranking(setup, CONCEPT_ARM, "base", "predict"), base.stats, neurons, embeddings,
        progress=setup.progress, readable=split.in_predict(base.stats.top_sentence),
    )  # fmt: skip


def _half_ranking(setup: Setup, arm: str, stage: str, half: str) -> Ranking:
    """A stage's ranking on one half of the probe sentences (as saved with the stage)."""
    halves = setup.run.stage_halves(arm, stage)
    if halves is None:
        raise NeuroplasticError(
            f"{setup.run.path}: stage {stage} of the {arm} arm was made before the probe "
            "sentences were split in halves (predictors / ground truths); rerun into a new --out"
        )
    return Ranking.from_stats(halves[half], setup.config.concept, setup.config.method)


def _predict_at_pruned(
    setup: Setup, neurons: NeuronSet, at_base: Predictions, ranking: Ranking
) -> Predictions:
    """``at_base`` with the predictors read at the pruned stage (``ranking``: on the predict
    half of the probe sentences): the model holds the removal as retraining will (hooks in
    ``hold`` mode, pruned weights in ``regrow``)."""
    config = setup.config
    at_pruned = predict_at_pruned(
        setup.module, setup.predict_data, config.concept, ranking, neurons, seed=config.seed,
        hold=config.mode == "hold", progress=setup.progress,
    )  # fmt: skip
    return at_base.merged(at_pruned)

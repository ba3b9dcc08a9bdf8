"""Predictors against their null: a planted case where nothing moves (stable ranks, noise only)
and one where a known set of neurons takes the concept over.

Scored against truths built from the pruned saliency, the pruned saliency itself looks like a
predictor (or an anti-predictor) with nothing happening at all. Scored on the control arm, the
same artefact appears there, so the paired difference is what a predictor finds beyond it.
"""

from __future__ import annotations

import numpy as np
import torch

from neuroplastic.analysis.predict import evaluate_predictions, ground_truth
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking

N_LAYERS, D_MLP = 4, 1000
PLANTED = [(1, n) for n in range(40)]  # the neurons that take the concept over, when planted


def _arm(seed: int, relocate: bool) -> dict[str, float]:
    """One arm: a latent concept score per neuron, stable across stages, read with noise at the
    pruned and last stages; the top 10 removed. Predictors: the pruned saliency, a noisy
    reading of the latent score from another pass (saliency at base), a score that flags the
    planted neurons (as a good predictor would) and noise. Returns each predictor's AUC
    against each truth."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(N_LAYERS, D_MLP))
    removed_flat = np.argsort(-latent.flatten())[:40]
    removed = NeuronSet.of(N_LAYERS, D_MLP, [divmod(int(i), D_MLP) for i in removed_flat])
    alive = ~removed.mask()
    pruned_scores = latent + rng.normal(scale=0.5, size=latent.shape)
    last_scores = latent + rng.normal(scale=0.5, size=latent.shape)
    flag = rng.normal(size=latent.shape)
    if relocate:
        for layer, neuron in PLANTED:
            last_scores[layer, neuron] += 6.0
            flag[layer, neuron] += 3.0
    pruned = Ranking("LOC", "probeless", torch.tensor(pruned_scores, dtype=torch.float32), alive)
    last = Ranking("LOC", "probeless", torch.tensor(last_scores, dtype=torch.float32), alive)
    base_reading = latent + rng.normal(scale=0.5, size=latent.shape)
    predictions = {
        "saliency_pruned": pruned.saliency.double(),
        "saliency_base": torch.tensor(base_reading),
        "flag": torch.tensor(flag),
        "random": torch.tensor(rng.normal(size=latent.shape)),
    }
    truth = ground_truth(pruned, last, removed, top=0.01)
    frame = evaluate_predictions(predictions, truth)
    return {(r.predictor, r.truth): r.auc for r in frame.itertuples()}


def test_a_planted_null_gives_no_predictor_a_difference_to_its_null() -> None:
    seeds = range(8)
    concept = [_arm(seed, relocate=False) for seed in seeds]
    control = [_arm(100 + seed, relocate=False) for seed in seeds]
    # Scored alone, the pruned saliency looks informative with nothing moving: far below chance
    # against the gain (regression to the mean) and far above it against the last top set.
    mean = {key: np.mean([c[key] for c in concept]) for key in concept[0]}
    assert mean["saliency_pruned", "gain"] < 0.35
    assert mean["saliency_pruned", "last_top"] > 0.9
    # Against its null (the same measure on the control arm), every predictor is within noise.
    for key in concept[0]:
        differences = np.array([c[key] - n[key] for c, n in zip(concept, control, strict=True)])
        # Within noise: 4 standard errors (12 predictor-truth pairs are tested at once), and
        # far from the raw artefact above.
        se = differences.std(ddof=1) / np.sqrt(len(differences))
        assert abs(differences.mean()) <= max(4 * se, 0.05), key


def test_a_planted_relocation_is_still_found_beyond_the_null() -> None:
    seeds = range(8)
    concept = [_arm(seed, relocate=True) for seed in seeds]
    control = [_arm(100 + seed, relocate=False) for seed in seeds]
    for truth in ("gain", "last_top"):
        differences = [
            c["flag", truth] - n["flag", truth] for c, n in zip(concept, control, strict=True)
        ]
        assert np.mean(differences) > {"gain": 0.15, "last_top": 0.3}[truth], truth
        noise = [
            c["random", truth] - n["random", truth] for c, n in zip(concept, control, strict=True)
        ]
        assert abs(np.mean(noise)) < 0.15, truth


def _pruned_saliency_against_gain(seed: int, split: bool) -> float:
    """AUC of the pruned saliency against the gain truth, nothing moving, when the predictor
    reads the same pass as the truth (``split`` False) or the other half's (True)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(N_LAYERS, D_MLP))
    alive = torch.ones(N_LAYERS, D_MLP, dtype=torch.bool)
    removed = NeuronSet.of(N_LAYERS, D_MLP, [])

    def reading() -> Ranking:
        noisy = latent + rng.normal(scale=0.5, size=latent.shape)
        return Ranking("LOC", "probeless", torch.tensor(noisy, dtype=torch.float32), alive)

    truth_pruned, truth_last = reading(), reading()
    predictor = reading() if split else truth_pruned
    truth = ground_truth(truth_pruned, truth_last, removed, top=0.01)
    frame = evaluate_predictions({"saliency_pruned": predictor.saliency.double()}, truth)
    return float(frame.set_index("truth").loc["gain", "auc"])


def test_disjoint_halves_remove_the_predictors_coupling_to_the_truth() -> None:
    # One pass for both: regression to the mean makes the pruned saliency an anti-predictor of
    # the gain with nothing moving. Another half's reading shares no noise with the truth.
    shared = np.mean([_pruned_saliency_against_gain(s, split=False) for s in range(8)])
    split = np.mean([_pruned_saliency_against_gain(s, split=True) for s in range(8)])
    assert shared < 0.35
    assert abs(split - 0.5) < 0.08

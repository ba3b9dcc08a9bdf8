"""Relocation is measured on one fixed population, apart from what the removal does by itself.

Planted cases with known answers: removing the top tier of a layer moves "the top neurons" of
every later stage with no training at all; a measure of movement must not read that as the
concept relocating.
"""

from __future__ import annotations

import pytest
import torch
from fake_run import PLANTED, PRIMED

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.layers import concept_depth, fixed_population, layer_saliency, relocation
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking

N_LAYERS, D_MLP = 4, 10


def _removed() -> NeuronSet:
    return NeuronSet.of(N_LAYERS, D_MLP, [(3, n) for n in range(4)])


def _base_scores() -> torch.Tensor:
    """Layer 3's neurons 0-3 are the top tier (the concept, removed); layer 1 holds the next
    tier; everything else is background ordered by a fixed pattern."""
    scores = torch.arange(N_LAYERS * D_MLP, dtype=torch.float32).reshape(N_LAYERS, D_MLP) / 100
    scores[3, :4] = torch.tensor([10.0, 9.5, 9.0, 8.5])
    scores[1, :4] = torch.tensor([5.0, 4.5, 4.0, 3.5])
    return scores


def _pruned(scores: torch.Tensor) -> Ranking:
    alive = ~_removed().mask()
    return Ranking("LOC", "probeless", scores.clone(), alive)


def test_nothing_moves_after_pruning_gives_zero_relocation_and_a_nonzero_removal_shift() -> None:
    scores = _base_scores()
    pruned = _pruned(scores)
    rankings = {
        "base": Ranking("LOC", "probeless", scores.clone()),
        "pruned": pruned,
        "retrain-1": _pruned(scores),
        "retrain-2": _pruned(scores),
    }
    moved = relocation(rankings, _removed(), top=4)
    assert moved.shift == 0.0  # exactly: nothing changed after pruning
    # The removal alone moves each stage's own top 4 from layer 3 to layer 1: -2 layers, by hand.
    assert moved.removal_shift == pytest.approx(1.0 - 3.0)
    # On the fixed population (the removed tier excluded), base and last have the same top set.
    assert moved.fixed_base_to_last == 0.0
    assert moved.n_population == N_LAYERS * D_MLP - 4
    # The old measure (each stage's own top set) reports the removal as movement.
    own = concept_depth(rankings, top=4).set_index("stage")["mean_layer"]
    assert own["retrain-2"] - own["base"] == pytest.approx(-2.0)
    assert moved.depth.set_index("stage")["mean_layer_fixed"].tolist() == pytest.approx([1.0] * 4)


def test_a_planted_move_after_pruning_is_found_on_the_fixed_population() -> None:
    scores = _base_scores()
    later = scores.clone()
    later[0, 5:9] = torch.tensor([6.0, 5.9, 5.8, 5.7])  # layer 0 overtakes layer 1
    rankings = {
        "base": Ranking("LOC", "probeless", scores.clone()),
        "pruned": _pruned(scores),
        "retrain-1": _pruned(later),
    }
    moved = relocation(rankings, _removed(), top=4)
    assert moved.shift == pytest.approx(0.0 - 1.0)
    assert moved.removal_shift == pytest.approx(-2.0)


def test_the_population_excludes_neurons_dead_at_any_stage() -> None:
    scores = _base_scores()
    alive = torch.ones(N_LAYERS, D_MLP, dtype=torch.bool)
    alive[0, 0] = False  # a neuron that stops firing at one stage only
    rankings = {
        "base": Ranking("LOC", "probeless", scores.clone()),
        "pruned": _pruned(scores),
        "retrain-1": Ranking("LOC", "probeless", scores.clone(), alive & ~_removed().mask()),
    }
    population = fixed_population(rankings, _removed())
    assert not population[0, 0] and not population[3, :4].any()
    assert int(population.sum()) == N_LAYERS * D_MLP - 5
    shares = layer_saliency(rankings, top=4, population=population)
    base = shares[shares["stage"] == "base"].set_index("layer")["top_share"]
    assert base.tolist() == [0, 1, 0, 0]  # the removed tier of layer 3 is not in the population


def test_the_fake_run_relocates_to_layer_1_on_its_survivors(tmp_path) -> None:
    """The planted run: the primed neurons of layer 1 take over after pruning."""
    from fake_run import make_fake_run

    fake = make_fake_run(tmp_path / "run")
    for arm, expected_end in (("concept", 1.0), ("random", None)):
        loaded = ArmRun.load(fake.path, arm)
        moved = relocation(loaded.rankings(), loaded.ablated, top=6)
        depth = moved.depth.set_index("stage")["mean_layer_fixed"]
        if expected_end is not None:
            assert depth["retrain-2"] == pytest.approx(expected_end)
            assert moved.shift < 0
            assert set(PRIMED).isdisjoint(PLANTED)
        else:  # nothing moves in the random arm: the planted neurons stay on top, in layer 3
            assert moved.shift == pytest.approx(0.0)


def test_partial_correlation_takes_out_the_mechanical_part_of_priming() -> None:
    """Similarity goes with the pruned saliency; the last saliency depends on the pruned one
    only (regression to the mean): the raw rho with gain is strongly negative, the partial rho
    given the pruned saliency is about 0. With real priming it is clearly positive."""
    import numpy as np
    from scipy import stats

    from neuroplastic.analysis.reappearance import partial_spearman

    rng = np.random.default_rng(0)
    n = 4000
    pruned = rng.normal(size=n)
    similarity = pruned + rng.normal(size=n)
    last = 0.5 * pruned + rng.normal(size=n)
    raw = stats.spearmanr(similarity, last - pruned).statistic
    assert raw < -0.2
    assert abs(partial_spearman(similarity, last, pruned)) < 0.05
    primed = last + 0.8 * (similarity - pruned)
    assert partial_spearman(similarity, primed, pruned) > 0.3
    # By hand on ranks: the residual correlation formula.
    rx, ry, rz = (stats.rankdata(v) for v in (similarity, primed, pruned))
    r = np.corrcoef([rx, ry, rz])
    expected = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert partial_spearman(similarity, primed, pruned) == pytest.approx(expected)

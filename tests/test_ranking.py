import json

import numpy as np
import pytest
import torch

from neuroplastic.errors import NeuroplasticError
from neuroplastic.neurons import NeuronSet
from neuroplastic.ranking import Ranking
from neuroplastic.stats import NeuronStats

LABELS = ("O", "LOC", "PER")
# A toy activation table: 1 layer x 3 neurons, six tokens.
TOKENS = torch.tensor(
    [
        [0.0, 1.0, 2.0],  # O
        [2.0, 1.0, 0.0],  # O
        [5.0, 1.0, 1.0],  # LOC
        [3.0, 3.0, 1.0],  # LOC
        [1.0, 0.0, 4.0],  # PER
        [1.0, 2.0, 4.0],  # PER
    ]
)
TOKEN_LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def toy_stats(table: torch.Tensor = TOKENS) -> NeuronStats:
    stats = NeuronStats.empty(LABELS, n_layers=1, d_mlp=table.shape[1], k=2)
    n = len(table)
    stats.update(
        table[None],
        TOKEN_LABELS,
        torch.arange(n),
        torch.zeros(n, dtype=torch.long),
        torch.arange(n),
        k=2,
    )
    return stats


def test_probeless_matches_hand_computation():
    # q(O) = [1, 1, 1], q(LOC) = [4, 2, 1], q(PER) = [1, 1, 4]
    # r(LOC) = |q(LOC)-q(O)| + |q(LOC)-q(PER)| = [3,1,0] + [3,1,3] = [6, 2, 3]
    ranking = Ranking.from_stats(toy_stats(), "LOC", "probeless")
    torch.testing.assert_close(ranking.scores, torch.tensor([[6.0, 2.0, 3.0]]))
    assert ranking.top(3) == [(0, 0), (0, 2), (0, 1)]
    torch.testing.assert_close(ranking.saliency, torch.tensor([[1.0, 0.0, 0.5]]))
    assert ranking.global_rank.tolist() == [[0, 2, 1]]


def test_smd_matches_numpy():
    table = TOKENS.numpy()
    inside, outside = table[TOKEN_LABELS == 1], table[TOKEN_LABELS != 1]
    pooled = np.sqrt((len(inside) * inside.var(0) + len(outside) * outside.var(0)) / len(table))
    expected = np.abs(inside.mean(0) - outside.mean(0)) / (pooled + 1e-8)
    ranking = Ranking.from_stats(toy_stats(), "LOC", "smd")
    np.testing.assert_allclose(ranking.scores[0].numpy(), expected, rtol=1e-5)


def test_top_k_buffer_is_dataset_wide():
    stats = toy_stats()
    assert stats.top_values[0, 0].tolist() == [5.0, 3.0]
    assert stats.top_sentence[0, 0].tolist() == [2, 3]
    assert stats.top_label[0, 2].tolist() == [2, 2]


def test_unknown_and_empty_concepts_are_explained():
    with pytest.raises(NeuroplasticError, match="labels present: O, LOC, PER"):
        Ranking.from_stats(toy_stats(), "ORG")
    stats = NeuronStats.empty(("O", "LOC"), 1, 3, 2)
    stats.update(
        TOKENS[None, :2],
        torch.tensor([0, 0]),
        torch.arange(2),
        torch.arange(2),
        torch.arange(2),
        k=2,
    )
    with pytest.raises(NeuroplasticError, match="no tokens"):
        Ranking.from_stats(stats, "LOC")
    with pytest.raises(NeuroplasticError, match="unknown ranking method"):
        Ranking.from_stats(toy_stats(), "LOC", "magic")


def layered_ranking() -> Ranking:
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0], [8.0, 7.0, 0.5, 0.1], [6.0, 5.0, 4.0, 0.0]])
    return Ranking("LOC", "probeless", scores)


def test_ranks_per_layer_and_frame_round_trip():
    ranking = layered_ranking()
    assert ranking.layer_rank[1].tolist() == [0, 1, 2, 3]
    assert ranking.layer_rank[0].tolist() == [0, 3, 2, 1]
    frame = ranking.to_frame()
    assert list(frame[["layer", "neuron"]].iloc[0]) == [0, 0]
    again = Ranking.from_frame(frame, "LOC", "probeless")
    assert torch.equal(again.scores, ranking.scores)


def test_neuron_sets():
    ranking = layered_ranking()
    assert NeuronSet.top_k(ranking, 3).neurons == ((0, 0), (1, 0), (1, 1))
    assert len(NeuronSet.top_fraction(ranking, 0.25)) == 3
    per_layer = NeuronSet.per_layer_top_k(ranking, 1)
    assert per_layer.neurons == ((0, 0), (1, 0), (2, 0))
    chosen = NeuronSet.top_k(ranking, 5)
    baseline = chosen.random_matching(seed=7)
    assert baseline.per_layer_counts() == chosen.per_layer_counts()
    assert baseline == chosen.random_matching(seed=7)
    assert chosen.mask().sum() == 5 and chosen.mask()[1, 1]


def test_random_baseline_is_not_the_first_units():
    ranking = Ranking(
        "LOC", "probeless", torch.rand(4, 200, generator=torch.Generator().manual_seed(0))
    )
    chosen = NeuronSet.top_k(ranking, 80)
    baselines = {chosen.random_matching(seed=s).neurons for s in range(3)}
    assert len(baselines) == 3
    first_units = NeuronSet.of(
        4,
        200,
        [(layer, i) for layer, count in chosen.per_layer_counts().items() for i in range(count)],
    )
    assert first_units.neurons not in baselines


def test_neuron_set_json_round_trip_and_errors(tmp_path):
    chosen = NeuronSet.top_k(layered_ranking(), 4)
    chosen.save(tmp_path / "n.json")
    assert NeuronSet.load(tmp_path / "n.json") == chosen
    assert json.loads((tmp_path / "n.json").read_text())["neurons"][0] == [0, 0]
    with pytest.raises(NeuroplasticError, match=r"out of range.*layers 0\.\.2"):
        NeuronSet.of(3, 4, [(3, 0)])
    with pytest.raises(NeuroplasticError, match=r"neurons 0\.\.3"):
        NeuronSet.parse("1:4", 3, 4)
    with pytest.raises(NeuroplasticError, match="LAYER:NEURON"):
        NeuronSet.parse("1-4", 3, 4)
    assert NeuronSet.parse("2:3, 0:1", 3, 4).neurons == ((0, 1), (2, 3))
    with pytest.raises(NeuroplasticError, match="choose between 1 and 12"):
        NeuronSet.top_k(layered_ranking(), 13)


def test_selectivity_by_hand():
    # Per-label variances: neuron 0: O 1, LOC 1, PER 0; neuron 1: O 0, LOC 1, PER 1.
    # Neuron 0 margins: vs O (4-1)/sqrt(1) = 3, vs PER (4-1)/sqrt(0.5) = 4.24 -> 3.
    # Neuron 1 margins: vs O (2-1)/sqrt(0.5) = 1.41, vs PER (2-1)/sqrt(1) = 1 -> 1.
    # Neuron 2 fires less on LOC than on PER: negative, least selective.
    scores = Ranking.from_stats(toy_stats(), "LOC", "selectivity").scores[0]
    assert scores[0].item() == pytest.approx(3.0, rel=1e-5)
    assert scores[1].item() == pytest.approx(1.0, rel=1e-5)
    assert scores[2].item() < 0


def test_dead_neurons_rank_last_with_every_method():
    stats = toy_stats()
    # Neuron 3 never fires.
    silent = toy_stats(torch.cat([TOKENS, torch.zeros(len(TOKENS), 1)], dim=1))
    for method in ("probeless", "smd", "selectivity"):
        ranking = Ranking.from_stats(silent, "LOC", method)
        assert ranking.saliency[0, 3] == 0.0, method
        assert ranking.top(3) == Ranking.from_stats(stats, "LOC", method).top(3)


def test_random_baseline_avoids_the_chosen_neurons():
    ranking = Ranking(
        "LOC", "probeless", torch.rand(2, 40, generator=torch.Generator().manual_seed(1))
    )
    chosen = NeuronSet.top_k(ranking, 30)
    for seed in range(5):
        baseline = chosen.random_matching(seed)
        assert not set(baseline.neurons) & set(chosen.neurons)
        assert baseline.per_layer_counts() == chosen.per_layer_counts()

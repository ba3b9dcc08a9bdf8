import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import rankdata

from neuroplastic.config import RANKER_NAMES
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.stats import NeuronStats
from neuroplastic.errors import NeuroplasticError

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


def test_ratio_by_hand():
    # Neuron 0: LOC rows 5, 3 -> (25 + 9) / 2 = 17; the rest 0, 2, 1, 1 -> 6 / 4 = 1.5.
    table = TOKENS.numpy().astype(float)
    inside, outside = table[TOKEN_LABELS == 1], table[TOKEN_LABELS != 1]
    expected = (inside**2).mean(0) / (outside**2).mean(0)
    assert expected[0] == pytest.approx(17 / 1.5)
    ranking = Ranking.from_stats(toy_stats(), "LOC", "ratio")
    np.testing.assert_allclose(ranking.scores[0].numpy(), expected, rtol=1e-5)
    assert ranking.top(1) == [(0, int(expected.argmax()))]


def test_selectivity_by_hand():
    # Per-label variances: neuron 0: O 1, LOC 1, PER 0; neuron 1: O 0, LOC 1, PER 1.
    # Neuron 0 margins: vs O (4-1)/sqrt(1) = 3, vs PER (4-1)/sqrt(0.5) = 4.24 -> 3.
    # Neuron 1 margins: vs O (2-1)/sqrt(0.5) = 1.41, vs PER (2-1)/sqrt(1) = 1 -> 1.
    # Neuron 2 fires less on LOC than on PER: negative, least selective.
    scores = Ranking.from_stats(toy_stats(), "LOC", "selectivity").scores[0]
    assert scores[0].item() == pytest.approx(3.0, rel=1e-5)
    assert scores[1].item() == pytest.approx(1.0, rel=1e-5)
    assert scores[2].item() < 0


def test_dead_neurons_are_not_ranked_with_every_method():
    stats = toy_stats()
    # Neuron 3 never fires.
    silent = toy_stats(torch.cat([TOKENS, torch.zeros(len(TOKENS), 1)], dim=1))
    for method in RANKER_NAMES:
        ranking = Ranking.from_stats(silent, "LOC", method)
        live = Ranking.from_stats(stats, "LOC", method)
        assert ranking.alive.tolist() == [[True, True, True, False]], method
        assert ranking.n_alive == 3
        for values in (ranking.saliency, ranking.global_rank, ranking.layer_rank):
            assert values[0, 3].isnan(), method
        # The live neurons keep exactly the saliency they have without the dead one.
        torch.testing.assert_close(ranking.saliency[:, :3], live.saliency)
        assert ranking.top(3) == live.top(3)
        assert ranking.order().tolist() == live.order().tolist()
        with pytest.raises(NeuroplasticError, match="only 3 of 4 neurons are alive"):
            ranking.top(4)


def random_stats(n_layers: int, d_mlp: int, dead: torch.Tensor, seed: int = 0) -> NeuronStats:
    """Statistics with random per-label means and variances; ``dead`` neurons exactly zero."""
    generator = torch.Generator().manual_seed(seed)
    count = torch.tensor([400, 100, 80, 60])
    shape = (len(count), n_layers, d_mlp)
    mean = torch.rand(shape, generator=generator, dtype=torch.float64)
    variance = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.1
    mean[:, dead], variance[:, dead] = 0, 0
    weight = count.double()[:, None, None]
    empty = torch.zeros(n_layers, d_mlp, 0, dtype=torch.long)
    return NeuronStats(
        ("O", "LOC", "PER", "ORG"),
        count,
        mean * weight,
        (mean**2 + variance) * weight,
        empty.float(),
        empty,
        empty,
        empty,
        empty,
    )


@pytest.mark.parametrize("method", RANKER_NAMES)
def test_ablated_neurons_cannot_fake_a_move_to_earlier_layers(method):
    # Random statistics carry no concept anywhere: every layer's live neurons should sit at a
    # mean saliency of 0.5. Half of the last two layers are ablated (exactly zero). Ranking
    # them last, ties in index order, used to lift the live neurons to ~0.58 and rank dead
    # layer-4 neurons above dead layer-5 ones.
    n_layers, d_mlp = 6, 512
    dead = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    dead[4:, ::2] = True
    ranking = Ranking.from_stats(random_stats(n_layers, d_mlp, dead), "LOC", method)
    saliency = ranking.saliency.double()
    means = [float(saliency[layer][~dead[layer]].mean()) for layer in range(n_layers)]
    assert means == pytest.approx([0.5] * n_layers, abs=0.05), means
    assert saliency[dead].isnan().all() and ranking.global_rank[dead].isnan().all()
    assert torch.equal(ranking.alive, ~dead)
    # The live neurons' saliencies are the normalized ranks 0 .. 1 of the live neurons alone.
    live = saliency[~dead].sort().values
    n_live = int((~dead).sum())
    torch.testing.assert_close(live, torch.arange(n_live, dtype=torch.float64) / (n_live - 1))


def test_ties_get_their_average_rank():
    # Four neurons with equal scores: no index order can make one more salient than another.
    scores = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    ranking = Ranking("LOC", "probeless", scores)
    # Descending ranks: 2.0 -> 0, the four 1.0 share (1+2+3+4)/4 = 2.5, 0.0 -> 5.
    assert ranking.global_rank.tolist() == [[0.0, 2.5, 2.5], [2.5, 2.5, 5.0]]
    torch.testing.assert_close(ranking.saliency, torch.tensor([[1.0, 0.5, 0.5], [0.5, 0.5, 0.0]]))
    assert ranking.layer_rank.tolist() == [[0.0, 1.5, 1.5], [0.5, 0.5, 2.0]]
    # Computed independently with scipy's average ranks (ascending, 1-based).
    expected = len(scores.flatten()) - rankdata(scores.flatten().numpy(), method="average")
    np.testing.assert_allclose(ranking.global_rank.flatten().numpy(), expected)


def test_dead_neurons_round_trip_through_the_frame(tmp_path):
    scores = torch.tensor([[3.0, float("-inf"), 1.0], [float("-inf"), 2.0, 0.5]])
    ranking = Ranking("LOC", "smd", scores)
    assert ranking.alive.tolist() == [[True, False, True], [False, True, True]]
    frame = ranking.to_frame()
    assert list(frame.columns) == ["layer", "neuron", "score", "saliency", "rank", "layer_rank"]
    # Most salient first, the dead last with NaN everywhere but their position.
    assert frame[["layer", "neuron"]].values.tolist() == [
        [0, 0],
        [1, 1],
        [0, 2],
        [1, 2],
        [0, 1],
        [1, 0],
    ]
    assert frame["rank"].tolist()[:4] == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(frame["saliency"][:4], [1.0, 2 / 3, 1 / 3, 0.0], rtol=1e-6)
    assert frame.iloc[4:][["score", "saliency", "rank", "layer_rank"]].isna().all().all()
    frame.to_parquet(tmp_path / "ranking.parquet", index=False)
    again = Ranking.from_frame(pd.read_parquet(tmp_path / "ranking.parquet"), "LOC", "smd")
    assert torch.equal(again.alive, ranking.alive)
    assert torch.equal(again.scores, ranking.scores)
    torch.testing.assert_close(again.saliency, ranking.saliency, equal_nan=True)
    # An explicit mask marks neurons dead whatever their score.
    masked = Ranking(
        "LOC", "smd", torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[True, False, True]])
    )
    assert masked.top(2) == [(0, 0), (0, 2)] and masked.saliency[0, 1].isnan()


def test_neuron_sets_never_pick_a_dead_neuron():
    # The two most "salient" scores belong to neurons that are dead.
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0], [8.0, 7.0, 0.5, 0.1]])
    alive = torch.tensor([[False, True, True, True], [True, False, True, True]])
    ranking = Ranking("LOC", "probeless", scores, alive)
    assert NeuronSet.top_k(ranking, 3).neurons == ((0, 2), (0, 3), (1, 0))
    assert NeuronSet.top_k(ranking, 6).mask().equal(alive)
    with pytest.raises(NeuroplasticError, match="there are 6 live neurons"):
        NeuronSet.top_k(ranking, 7)
    assert NeuronSet.per_layer_top_k(ranking, 2).neurons == ((0, 2), (0, 3), (1, 0), (1, 2))
    with pytest.raises(NeuroplasticError, match="there are 3 live neurons in every layer"):
        NeuronSet.per_layer_top_k(ranking, 4)


def test_random_baseline_avoids_the_chosen_neurons():
    ranking = Ranking(
        "LOC", "probeless", torch.rand(2, 40, generator=torch.Generator().manual_seed(1))
    )
    chosen = NeuronSet.top_k(ranking, 30)
    for seed in range(5):
        baseline = chosen.random_matching(seed)
        assert not set(baseline.neurons) & set(chosen.neurons)
        assert baseline.per_layer_counts() == chosen.per_layer_counts()


@pytest.mark.parametrize("method", RANKER_NAMES)
def test_a_ranking_from_statistics_equals_its_disk_copy(tiny_bert, corpus, tmp_path, method):
    """The pipeline takes the base neuron sets from the ranking it just computed and reads the
    parquet copy only on resumption: the two must be the same ranking to the bit."""
    from neuroplastic.core.stats import collect_stats
    from neuroplastic.data.load import encode_split

    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=24)
    stats = collect_stats(tiny_bert, data, batch_size=8, top_k=4, progress=False)
    ranking = Ranking.from_stats(stats, "LOC", method)
    ranking.to_frame().to_parquet(tmp_path / "ranking.parquet", index=False)
    again = Ranking.from_frame(pd.read_parquet(tmp_path / "ranking.parquet"), "LOC", method)
    assert torch.equal(again.alive, ranking.alive)
    assert torch.equal(again.scores, ranking.scores)
    for fraction in (0.01, 0.1):
        assert NeuronSet.top_fraction(again, fraction) == NeuronSet.top_fraction(ranking, fraction)

"""Analyses against hand-made run directories with known answers (see fake_run.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fake_run import (
    CONCEPT,
    D_MLP,
    EVALUATIONS,
    N_LAYERS,
    PLANTED,
    POLY_BASE,
    PRIMED,
    RANDOM_ABLATED,
    STAGES,
    FakeRun,
    make_fake_run,
)
from scipy.stats import rankdata

from neuroplastic.analysis.arm_analysis import analyse_arm
from neuroplastic.analysis.arm_run import ArmRun, concept_share, concept_token_ids
from neuroplastic.analysis.layers import concept_depth, layer_saliency
from neuroplastic.analysis.polysemantic import polysemanticity
from neuroplastic.analysis.reappearance import primed_neurons, pruned_trace, reappearance
from neuroplastic.analysis.scores import recovery_curves, stage_gaps
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking, alive_neurons
from neuroplastic.core.similarity import TokenEmbeddings, clean_token_text
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.summary import ArmSummary, StageRecord, Summary


@pytest.fixture(scope="module")
def hold(tmp_path_factory: pytest.TempPathFactory) -> FakeRun:
    return make_fake_run(tmp_path_factory.mktemp("hold"), mode="hold")


@pytest.fixture(scope="module")
def regrow(tmp_path_factory: pytest.TempPathFactory) -> FakeRun:
    return make_fake_run(tmp_path_factory.mktemp("regrow"), mode="regrow")


@pytest.fixture(scope="module")
def concept_arm(hold: FakeRun) -> ArmRun:
    return ArmRun.load(hold.path, "concept")


@pytest.fixture(scope="module")
def random_arm(hold: FakeRun) -> ArmRun:
    return ArmRun.load(hold.path, "random")


@pytest.fixture(scope="module")
def embeddings(hold: FakeRun) -> TokenEmbeddings:
    return hold.run.embeddings()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_arm_run_loads_stages_in_order(concept_arm: ArmRun) -> None:
    assert concept_arm.stage_names == list(STAGES)
    assert (concept_arm.first, concept_arm.start, concept_arm.last) == (
        "base",
        "pruned",
        "retrain-2",
    )
    assert concept_arm.concept == CONCEPT
    assert concept_arm.ablated.neurons == tuple(PLANTED)
    assert concept_arm.tokens("base", *PLANTED[0])[0] == " Paris"
    with pytest.raises(NeuroplasticError, match="no stage 'retrain-9'"):
        reappearance(concept_arm, end="retrain-9")


def test_dead_neurons_are_recognised(concept_arm: ArmRun) -> None:
    pruned = concept_arm.stages["pruned"].stats
    dead = ~alive_neurons(pruned)
    assert sorted(map(tuple, dead.nonzero().tolist())) == PLANTED
    share = concept_share(pruned, CONCEPT)
    assert share[PLANTED[0]].isnan() and share[POLY_BASE[0]] == 0.5


# ---------------------------------------------------------------------------------------------
# Similarity
# ---------------------------------------------------------------------------------------------


def test_similarity_ordering_follows_the_planted_geometry(
    hold: FakeRun, embeddings: TokenEmbeddings
) -> None:
    loc = hold.groups["LOC"]
    scores = {label: embeddings.similarity(ids, loc) for label, ids in hold.groups.items()}
    assert scores["LOC"] == pytest.approx(1.0)
    assert scores["LOC"] > scores["PER"] > scores["ORG"] > scores["MISC"] > scores["O"]
    assert scores["O"] < 0  # centering: unrelated words point away from the concept
    # A set against itself is 1, and the measure is symmetric.
    per = hold.groups["PER"]
    assert embeddings.similarity(per, per) == pytest.approx(1.0)
    assert embeddings.similarity(per, loc) == pytest.approx(embeddings.similarity(loc, per))
    # Half the concept's tokens are closer to it than none.
    half = loc[:3] + hold.groups["O"][:3]
    assert scores["LOC"] > embeddings.similarity(half, loc) > scores["O"]


def test_similarity_handles_unknown_tokens_and_batches(
    hold: FakeRun, embeddings: TokenEmbeddings
) -> None:
    loc, per = hold.groups["LOC"], hold.groups["PER"]
    assert math.isnan(embeddings.similarity([10_000], loc))
    assert math.isnan(embeddings.similarity([], loc))
    # Unknown ids are dropped from a set, known ones still count.
    assert embeddings.similarity([10_000, *loc], loc) == pytest.approx(1.0)
    batch = embeddings.similarity_many(torch.tensor([loc[:4], per[:4]]), torch.tensor(loc))
    assert batch[0] == pytest.approx(embeddings.similarity(loc[:4], loc), abs=1e-6)
    assert batch[1] == pytest.approx(embeddings.similarity(per[:4], loc), abs=1e-6)
    assert loc[0] in embeddings and 10_000 not in embeddings


def test_token_embeddings_center_and_dedupe() -> None:
    ids = torch.tensor([5, 3, 5])
    vectors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]])
    raw = TokenEmbeddings.from_vectors(ids, vectors, center=False)
    assert raw.token_ids.tolist() == [3, 5]  # sorted, first occurrence of 5 kept
    assert raw.similarity([3], [5]) == pytest.approx(0.0, abs=1e-6)
    centered = TokenEmbeddings.from_vectors(ids, vectors)
    assert centered.similarity([3], [5]) == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(NeuroplasticError):
        TokenEmbeddings.from_vectors(torch.tensor([1]), torch.zeros(2, 3))


def test_clean_token_text() -> None:
    assert clean_token_text(" Paris") == "Paris"
    assert clean_token_text("##ing") == "ing"
    assert clean_token_text("ĠLondon") == "London"
    assert clean_token_text("  ") == ""


@pytest.mark.slow
def test_sentence_model_similarity_runs_offline() -> None:
    embeddings = TokenEmbeddings.from_sentence_model(
        {1: " Paris", 2: " London", 3: " the", 4: "##", 5: " Berlin"}
    )
    assert 4 not in embeddings  # no text left to embed
    assert embeddings.d_model == 384
    assert embeddings.similarity([1], [2]) > embeddings.similarity([1], [3])
    assert embeddings.similarity([1, 2], [5]) > embeddings.similarity([3], [5])


# ---------------------------------------------------------------------------------------------
# (1) Saliency per layer and depth: the concept moves from layer 3 to layer 1
# ---------------------------------------------------------------------------------------------


def test_concept_moves_to_layer_1_in_the_concept_arm_only(
    concept_arm: ArmRun, random_arm: ArmRun
) -> None:
    depth = concept_depth(concept_arm.rankings(), top=6).set_index("stage")
    assert list(depth.columns) == ["n_alive", "n_top", "mean_layer"]  # no interval from neurons
    assert depth.loc["base", "mean_layer"] == pytest.approx(3.0)
    assert depth.loc["retrain-2", "mean_layer"] == pytest.approx(1.0)
    assert depth["n_top"].eq(6).all()
    assert depth["n_alive"].tolist() == [96, 90, 90, 90]
    control = concept_depth(random_arm.rankings(), top=6).set_index("stage")
    assert control["mean_layer"].tolist() == pytest.approx([3.0] * len(STAGES))


def test_depth_is_the_weighted_mean_layer_of_the_live_top_neurons(
    hold: FakeRun, concept_arm: ArmRun
) -> None:
    # At "pruned" the planted layer-3 neurons are dead: the top 6 are the next six live
    # neurons, read here straight from the stored parquet (dead rows have NaN rank).
    frame = pd.read_parquet(hold.run.stage_dir("concept", "pruned") / "ranking.parquet")
    dead = frame[frame["rank"].isna()]
    assert sorted(zip(dead["layer"], dead["neuron"], strict=True)) == PLANTED
    assert dead[["score", "saliency", "layer_rank"]].isna().all().all()
    live = frame.dropna(subset=["rank"]).sort_values("rank", kind="stable").head(6)
    weights = 1 - np.arange(6) / 6
    expected = float((live["layer"].to_numpy() * weights).sum() / weights.sum())
    depth = concept_depth(concept_arm.rankings(), top=6).set_index("stage")
    assert depth.loc["pruned", "mean_layer"] == pytest.approx(expected)
    assert 0 < expected < 3


def test_layer_saliency_describes_the_live_neurons(concept_arm: ArmRun) -> None:
    frame = layer_saliency(concept_arm.rankings(), top=6)
    assert len(frame) == len(STAGES) * N_LAYERS
    assert not {"ci_low", "ci_high"} & set(frame.columns)  # descriptions, not intervals
    assert (frame["q25"] <= frame["median"]).all() and (frame["median"] <= frame["q75"]).all()
    shares = frame.pivot(index="stage", columns="layer", values="top_share")
    assert shares.loc["base"].tolist() == [0, 0, 0, 1]
    assert shares.loc["retrain-2"].tolist() == [0, 1, 0, 0]
    assert frame.groupby("stage")["top_count"].sum().eq(6).all()
    # The ablated layer-3 neurons are dead after pruning: left out, and counted.
    alive = frame.pivot(index="stage", columns="layer", values="n_alive")
    assert alive.loc["base"].tolist() == [24, 24, 24, 24]
    assert alive.loc["pruned"].tolist() == [24, 24, 24, 18]
    # Saliency is the normalized rank among the live neurons: over them it averages 1/2.
    for stage, group in frame.groupby("stage"):
        overall = (group["mean"] * group["n_alive"]).sum() / group["n_alive"].sum()
        assert overall == pytest.approx(0.5), stage
    # Each layer's mean, recomputed from the live neurons' scores with scipy's ranks.
    ranking = concept_arm.stages["pruned"].ranking
    scores = ranking.scores[ranking.alive].double().numpy()
    ranks = (rankdata(scores) - 1) / (len(scores) - 1)
    layers = ranking.alive.nonzero()[:, 0].numpy()
    pruned = frame[frame["stage"] == "pruned"].set_index("layer")["mean"]
    for layer in range(N_LAYERS):
        assert pruned[layer] == pytest.approx(ranks[layers == layer].mean())
    # Layer 3 loses the concept after pruning, layer 1 gains it.
    means = frame.pivot(index="stage", columns="layer", values="mean")
    assert means.loc["retrain-2", 1] > means.loc["base", 1]
    assert means.loc["retrain-2", 3] < means.loc["base", 3]
    # A fraction means that share of all neurons.
    assert layer_saliency(concept_arm.rankings(), top=0.0625)["top_count"].sum() == 6 * len(STAGES)
    with pytest.raises(NeuroplasticError):
        layer_saliency(concept_arm.rankings(), top=0)


def test_saliency_analyses_work_on_in_memory_rankings() -> None:
    scores = torch.zeros(3, 10)
    scores[2, :4] = torch.tensor([9.0, 8.0, 7.0, 6.0])
    moved = torch.zeros(3, 10)
    moved[0, 5:9] = torch.tensor([9.0, 8.0, 7.0, 6.0])
    rankings = {
        "base": Ranking("LOC", "probeless", scores),
        "retrain-1": Ranking("LOC", "probeless", moved),
    }
    depth = concept_depth(rankings, top=4).set_index("stage")["mean_layer"]
    assert depth.tolist() == pytest.approx([2.0, 0.0])
    frame = layer_saliency(rankings, top=4)
    assert frame.query("stage == 'retrain-1' and layer == 0")["top_share"].item() == 1.0
    # The 26 tied neurons share one average rank: each layer's tied neurons sit at the same
    # saliency, whatever their index (no fake gradient from tie order).
    base = rankings["base"].saliency
    assert base[0].unique().numel() == 1 and base[1].unique().numel() == 1
    assert base[0, 0] == base[1, 9] == pytest.approx(1 - (4 + 12.5) / 29)


# ---------------------------------------------------------------------------------------------
# (2) Where it reappears
# ---------------------------------------------------------------------------------------------


def test_reappearance_finds_the_primed_neurons(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    frame = reappearance(concept_arm, n=6, embeddings=embeddings)
    assert sorted(zip(frame["layer"], frame["neuron"], strict=True)) == PRIMED
    assert (frame["gain"] > 0.8).all()
    assert (frame["saliency_end"] > frame["saliency_start"]).all()
    assert frame["concept_share_base"].eq(0).all() and frame["concept_share_end"].eq(0.5).all()
    first = frame.iloc[0]
    assert all(
        t.strip() in {"Alice", "Bob", "Carol", "Dave", "Erin", "Frank"}
        for t in first["tokens_base"]
    )
    assert (
        sum(
            t.strip() in {"Paris", "London", "Berlin", "Rome", "Madrid", "Tokyo", "Cairo", "Lima"}
            for t in first["tokens_end"]
        )
        == 3
    )
    assert frame["similarity"].between(0, 1).all()
    # The ablated neurons are never candidates, however many rows are asked for.
    everything = reappearance(concept_arm, n=10_000)
    assert len(everything) == N_LAYERS * D_MLP - len(PLANTED)
    assert not set(PLANTED) & set(zip(everything["layer"], everything["neuron"], strict=True))
    assert everything["similarity"].isna().all()  # no embeddings given


# ---------------------------------------------------------------------------------------------
# (3) The pruned neurons
# ---------------------------------------------------------------------------------------------


def test_pruned_neurons_stay_dead_in_hold_mode(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    trace = pruned_trace(concept_arm, embeddings)
    stages = trace.stages.set_index("stage")
    assert stages["n_alive"].tolist() == [6, 0, 0, 0]
    assert stages.loc["base", "similarity_mean"] == pytest.approx(1.0)
    assert stages.loc[["pruned", "retrain-1", "retrain-2"], "similarity_mean"].isna().all()
    # Dead neurons have no saliency: no mean over them either (and no interval over neurons).
    assert stages.loc["base", "saliency_mean"] > 0.9
    assert stages.loc[["pruned", "retrain-1", "retrain-2"], "saliency_mean"].isna().all()
    assert not any("ci" in column for column in trace.stages.columns)
    assert trace.neurons.query("stage != 'base'")["saliency"].isna().all()
    assert len(trace.neurons) == len(PLANTED) * len(STAGES)


def test_pruned_neurons_regrow_with_their_old_meaning(regrow: FakeRun) -> None:
    arm = ArmRun.load(regrow.path, "concept")
    trace = pruned_trace(arm, regrow.run.embeddings()).stages.set_index("stage")
    assert trace["n_alive"].tolist() == [6, 0, 6, 6]
    similarity = trace["similarity_mean"]
    assert math.isnan(similarity["pruned"])
    assert similarity["retrain-2"] == pytest.approx(1.0)  # the same tokens as at base
    assert 0 < similarity["retrain-1"] < similarity["retrain-2"]  # half the old tokens
    assert trace.loc["retrain-1", "concept_share_mean"] == pytest.approx(0.5)
    assert math.isnan(trace.loc["pruned", "saliency_mean"])
    # Regrown at a LOC mean of 1.0, below only the six primed neurons (3.0): ranks 6-11 of 96.
    assert trace.loc["retrain-2", "saliency_mean"] == pytest.approx(1 - 8.5 / 95)


# ---------------------------------------------------------------------------------------------
# (4) Primed neurons
# ---------------------------------------------------------------------------------------------


def test_concept_tokens_are_the_loc_labelled_top_tokens(hold: FakeRun, concept_arm: ArmRun) -> None:
    ids = concept_token_ids(concept_arm.stages["base"].stats, CONCEPT)
    assert sorted(ids.tolist()) == sorted(hold.groups["LOC"])


def test_similarity_to_the_concept_goes_with_saliency_gain(
    concept_arm: ArmRun, random_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    primed = primed_neurons(concept_arm, embeddings)
    assert primed.n == N_LAYERS * D_MLP - len(PLANTED)
    assert (primed.start, primed.end) == ("pruned", "retrain-2")
    assert primed.rho > 0.5
    # A description of one run: no p-value, no interval resampling neurons.
    assert not {"p_value", "ci_low", "ci_high"} & set(vars(primed))
    # rho is Spearman's over the listed neurons, recomputed from their ranks.
    frame = primed.neurons
    rx, ry = rankdata(frame["similarity"]), rankdata(frame["gain"])
    assert primed.rho == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    # The primed neurons: among the most similar to the concept, and the largest gains.
    indexed = frame.set_index(["layer", "neuron"])
    assert indexed.loc[PRIMED, "gain"].min() == indexed["gain"].max()
    # The random arm: retraining drifts at random, so no such relation.
    control = primed_neurons(random_arm, embeddings)
    assert abs(control.rho) < 0.2 < primed.rho


def test_primed_reads_similarity_and_gain_from_disjoint_halves(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    """With probe halves, gain comes from the truth half's rankings and similarity from the
    predict half's top tokens only. Planted: truth rankings with start and end swapped give
    exactly the opposite rho; a predict half without a neuron's top-token sentences leaves it
    no similarity (dropped); a predict half of every sentence changes no similarity."""
    from dataclasses import replace

    from neuroplastic.analysis.arm_run import ProbeHalves
    from neuroplastic.core.halves import ProbeSplit

    plain = primed_neurons(concept_arm, embeddings)
    assert not plain.halves
    stats = concept_arm.stages[concept_arm.first].stats
    n_sentences = int(stats.top_sentence.max()) + 1
    rankings = concept_arm.rankings()
    start, end = concept_arm.start, concept_arm.last
    every = ProbeSplit(tuple(range(n_sentences)), ())
    swapped = replace(
        concept_arm, halves=ProbeHalves(every, {start: rankings[end], end: rankings[start]})
    )
    flipped = primed_neurons(swapped, embeddings)
    assert flipped.halves and flipped.n == plain.n
    assert flipped.rho == pytest.approx(-plain.rho)
    assert flipped.neurons["similarity"].tolist() == pytest.approx(
        plain.neurons["similarity"].tolist()
    )
    # A predict half without any of one compared neuron's top-token sentences: that neuron
    # has nothing readable, so no similarity, and it is not compared; the others still are.
    layer, neuron = int(plain.neurons["layer"].iloc[0]), int(plain.neurons["neuron"].iloc[0])
    unseen = set(stats.top_sentence[layer, neuron].tolist())
    split = ProbeSplit(
        tuple(i for i in range(n_sentences) if i not in unseen), tuple(sorted(unseen))
    )
    halved = replace(
        concept_arm, halves=ProbeHalves(split, {start: rankings[start], end: rankings[end]})
    )
    result = primed_neurons(halved, embeddings)
    compared = set(zip(result.neurons["layer"], result.neurons["neuron"], strict=True))
    assert (layer, neuron) not in compared and 0 < result.n < plain.n


def test_primed_correlation_among_neurons_with_room_to_gain(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    everyone = primed_neurons(concept_arm, embeddings)
    unsalient = primed_neurons(concept_arm, embeddings, start_saliency_below=0.5)
    start = concept_arm.stages["pruned"].ranking.saliency
    keep = everyone.neurons.set_index(["layer", "neuron"]).index
    expected = sum(float(start[layer, neuron]) < 0.5 for layer, neuron in keep)
    assert unsalient.n == expected < everyone.n
    assert (unsalient.neurons.set_index(["layer", "neuron"]).index.isin(keep)).all()


def test_neurons_dead_outside_the_ablated_set_have_no_gain(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    # Forget which neurons were ablated: the planted ones are still dead from "pruned" on, so
    # they have no saliency and no gain, and no analysis may count them.
    unknown = ArmRun(
        concept_arm.arm,
        concept_arm.concept,
        NeuronSet.of(N_LAYERS, D_MLP, []),
        concept_arm.stages,
        concept_arm.vocabulary,
    )
    primed = primed_neurons(unknown, embeddings)
    assert primed.n == N_LAYERS * D_MLP - len(PLANTED)
    assert primed.neurons["gain"].notna().all()
    moved = reappearance(unknown, n=10_000)
    assert len(moved) == N_LAYERS * D_MLP - len(PLANTED)
    assert not set(PLANTED) & set(zip(moved["layer"], moved["neuron"], strict=True))


def test_a_regrown_neuron_moves_no_compared_neurons_gain(regrow: FakeRun) -> None:
    """Regrow mode: the planted neurons come back at the last stage, above most others. Gains
    are re-ranked among the neurons compared (scipy's ranks by hand), so that return moves no
    one's gain; over all live neurons it would have moved every neuron below them."""
    arm = ArmRun.load(regrow.path, "concept")
    primed = primed_neurons(arm, regrow.run.embeddings())
    frame = primed.neurons.set_index(["layer", "neuron"])
    keep = list(frame.index)
    assert not set(PLANTED) & set(keep)

    def among(stage: str) -> np.ndarray:
        scores = arm.stages[stage].ranking.scores
        ranks = rankdata([-float(scores[layer, neuron]) for layer, neuron in keep])
        return 1 - (ranks - 1) / (len(ranks) - 1)

    expected = among("retrain-2") - among("pruned")
    assert frame["gain"].to_numpy() == pytest.approx(expected)
    over_all = arm.stages["retrain-2"].ranking.saliency - arm.stages["pruned"].ranking.saliency
    assert not np.allclose([float(over_all[layer, neuron]) for layer, neuron in keep], expected)
    # A population narrows the neurons compared (an arm and its control on the same ones).
    population = torch.ones(N_LAYERS, D_MLP, dtype=torch.bool)
    population[0] = False
    narrowed = primed_neurons(arm, regrow.run.embeddings(), population=population)
    assert narrowed.n == len([k for k in keep if k[0] != 0])
    assert (narrowed.neurons["layer"] != 0).all()


def test_primed_correlation_is_undefined_without_any_gain(
    concept_arm: ArmRun, embeddings: TokenEmbeddings
) -> None:
    same = primed_neurons(concept_arm, embeddings, start="base", end="base")
    assert math.isnan(same.rho) and same.n == N_LAYERS * D_MLP - len(PLANTED)
    with pytest.raises(NeuroplasticError, match="no token labelled"):
        primed_neurons(concept_arm, embeddings, concept_tokens=[])


# ---------------------------------------------------------------------------------------------
# (5) Polysemanticity
# ---------------------------------------------------------------------------------------------


def test_polysemantic_counts_before_and_after(concept_arm: ArmRun, random_arm: ArmRun) -> None:
    band = {"low": 0.2, "high": 0.8}  # a fixed band: the counting itself
    poly = polysemanticity(concept_arm.stats(), CONCEPT, vocabulary=concept_arm.vocabulary, **band)
    counts = poly.counts.set_index("stage")
    assert counts["n_polysemantic"].tolist() == [2, 2, 8, 8]
    assert counts["n_new"].tolist() == [0, 0, 6, 6]
    assert counts["n_alive"].tolist() == [96, 90, 90, 90]  # the ablated are dead after pruning
    # Counted over the neurons alive at every stage: the planted ones (dead from pruning on)
    # are not in it, even at base, where they were the concept neurons.
    assert poly.n_population == 90 and counts["n_population"].eq(90).all()
    assert counts["n_concept"].tolist() == [0, 0, 0, 0]
    examples = poly.examples("retrain-2", n=10)
    assert len(examples) == 8
    assert sorted(zip(examples["layer"][:6], examples["neuron"][:6], strict=True)) == PRIMED
    assert examples["new"].tolist() == [True] * 6 + [False] * 2
    assert examples.iloc[0]["labels"] == {"LOC": 3, "PER": 3}
    assert examples.iloc[0]["mixed_with"] == "PER"  # the most common label besides LOC
    assert len(examples.iloc[0]["tokens"]) == 6
    base = poly.examples("base")
    assert sorted(zip(base["layer"], base["neuron"], strict=True)) == POLY_BASE

    control = polysemanticity(random_arm.stats(), CONCEPT, **band).counts
    assert control["n_polysemantic"].tolist() == [2, 2, 2, 2]
    # A stricter band, and leaving neurons out.
    strict = polysemanticity(concept_arm.stats(), CONCEPT, low=0.4, high=0.45).counts
    assert strict["n_polysemantic"].tolist() == [0, 0, 0, 0]
    excluded = polysemanticity(
        concept_arm.stats(), CONCEPT, exclude=concept_arm.ablated, **band
    ).counts
    assert excluded["n_alive"].tolist() == [90, 90, 90, 90]
    assert excluded["n_population"].eq(90).all()
    with pytest.raises(NeuroplasticError):
        polysemanticity(concept_arm.stats(), CONCEPT, low=0.9, high=0.1)


def test_the_top_gainers_are_the_planted_polysemantic_neurons(
    concept_arm: ArmRun, random_arm: ArmRun
) -> None:
    """Planted: the six primed neurons gain the most and end half LOC, half PER. Their arm's
    top six gainers are exactly them, all polysemantic; the control's gainers are not."""
    from neuroplastic.analysis.polysemantic import (
        arm_polysemanticity,
        common_population,
        polysemantic_gainers,
    )

    arms = {"concept": concept_arm, "random": random_arm}
    population = common_population(arms)
    blended = polysemantic_gainers(concept_arm, population, top=6)
    poly = arm_polysemanticity(concept_arm, population)
    last = poly.counts.set_index("stage").loc[concept_arm.last]
    assert blended["n_gainers"] == 6 and blended["n_counted"] == poly.n_population
    assert blended["gainers_share"] == 1.0
    assert blended["population_share"] == pytest.approx(last["n_polysemantic"] / poly.n_population)
    assert blended["excess"] == pytest.approx(1.0 - blended["population_share"])
    control = polysemantic_gainers(random_arm, population, top=6)
    assert control["gainers_share"] < 0.5 < blended["gainers_share"]
    # A share: 1% of the counted neurons, at least one.
    assert polysemantic_gainers(concept_arm, population)["n_gainers"] == 1


def test_polysemantic_shares_have_one_denominator(concept_arm: ArmRun) -> None:
    # Two neurons are polysemantic at base and at pruned; between the two, six neurons die.
    # The share must not change: only the neurons alive at every stage are counted.
    poly = polysemanticity(concept_arm.stats(), CONCEPT, low=0.2, high=0.8)
    shares = poly.counts.set_index("stage")["polysemantic_share"]
    assert shares["base"] == shares["pruned"] == pytest.approx(2 / 90)
    assert shares["retrain-2"] == pytest.approx(8 / 90)
    expected = torch.ones(N_LAYERS, D_MLP, dtype=torch.bool)
    for layer, neuron in PLANTED:
        expected[layer, neuron] = False
    assert torch.equal(poly.population, expected)


# ---------------------------------------------------------------------------------------------
# (6) Recovery curves
# ---------------------------------------------------------------------------------------------


def test_recovery_curves_from_metrics(hold: FakeRun) -> None:
    curves = recovery_curves(hold.run.metrics())
    assert set(curves["arm"]) == {"concept", "random"}
    assert set(curves["entity"]) == {"overall", "LOC", "PER", "ORG", "MISC"}
    assert len(curves) == 2 * len(EVALUATIONS) * 5  # arms x evaluations x entity types
    loc = curves[(curves["entity"] == "LOC") & (curves["arm"] == "concept")]
    # The recorded steps, in order: base fine-tuning below 0, pruning at 0, retraining after.
    assert loc["stage"].tolist() == [name for _, _, name in EVALUATIONS]
    assert loc["step"].tolist() == [step for _, step, _ in EVALUATIONS]
    assert loc["value"].tolist() == [0.7, 0.95, 0.05, 0.55, 0.8, 0.88, 0.91]
    assert loc.set_index("stage")["f1"]["pruned"] == pytest.approx(0.05)
    assert "training_step" not in curves.columns
    # Language modelling: losses on concept tokens and on the others.
    lm = pd.DataFrame(
        {
            "arm": ["a"] * 4,
            "stage": ["base", "pruned", "retrain-1@10", "retrain-1"],
            "step": [0, 0, 10, 20],
            "lm_loss_concept": [3.0, 6.0, 4.0, 3.5],
            "lm_loss_other": [2.0, 2.1, 2.0, 2.0],
        }
    )
    curves = recovery_curves(lm, metric="lm_loss")
    concept = curves[curves["entity"] == "concept"]
    assert concept["stage"].tolist() == lm["stage"].tolist()
    assert concept["lm_loss"].tolist() == [3.0, 6.0, 4.0, 3.5]
    assert recovery_curves(pd.DataFrame()).empty
    with pytest.raises(NeuroplasticError, match="f1"):
        recovery_curves(pd.DataFrame({"arm": ["a"], "stage": ["base"], "step": [0]}))


def _arm(*stages: StageRecord) -> ArmSummary:
    """An arm that records only its stages (as a run's summary before the other keys)."""
    return ArmSummary(neurons=0, per_layer={}, stages=list(stages))


def test_stage_gaps_to_base_and_to_the_paired_control(hold: FakeRun) -> None:
    gaps = stage_gaps(Summary.read(hold.run).arms).set_index(["arm", "stage", "entity"])
    assert gaps.attrs["metric"] == "f1"
    # Concept arm LOC F1 retrain-2 = 0.91, base 0.95, random arm at retrain-2 0.97.
    row = gaps.loc[("concept", "retrain-2", "LOC")]
    assert (row["value"], row["step"]) == (pytest.approx(0.91), 40)
    assert row["gap_to_base"] == pytest.approx(0.91 - 0.95)
    assert row["gap_to_control"] == pytest.approx(0.91 - 0.97)
    assert gaps.loc[("concept", "pruned", "LOC"), "gap_to_control"] == pytest.approx(0.05 - 0.93)
    # The random arm has a gap to base, and no control of its own.
    assert gaps.loc[("random", "retrain-2", "LOC"), "gap_to_base"] == pytest.approx(0.97 - 0.95)
    assert gaps.xs("random")["gap_to_control"].isna().all()
    # Not recorded (an older summary): NaN, not made up.
    concept = gaps.xs("concept")
    assert (
        concept.loc[("pruned", "LOC"), "step"] == 0
        and concept.loc[("retrain-2", "LOC"), "step"] == 40
    )
    lm = stage_gaps(
        {"concept": _arm(StageRecord("base", 0, {"lm_loss": {"concept": 4.0, "other": 3.0}}))}
    )
    assert lm.attrs["metric"] == "lm_loss" and lm["entity"].tolist() == ["concept", "other"]
    bare = {"concept": _arm(StageRecord("base", 0, {"f1": {"LOC": 0.9}}))}
    old = stage_gaps(bare)
    assert (
        old["value"].tolist() == [0.9] and old[["gap_to_base", "gap_to_control"]].isna().all().all()
    )


def test_the_mixing_band_is_relative_to_the_concepts_share_of_tokens(
    concept_arm: ArmRun, random_arm: ArmRun
) -> None:
    from neuroplastic.analysis.polysemantic import common_population, concept_base_rate, mixing_band

    base = concept_arm.stages["base"].stats
    rate = concept_base_rate(base, CONCEPT)
    assert rate == pytest.approx(float(base.count[1] / base.count.sum()))  # LOC, by hand
    assert mixing_band(0.12) == pytest.approx((0.24, 0.88))
    with pytest.raises(NeuroplasticError, match="no mixing band"):
        mixing_band(0.4)
    # Here LOC is 24% of tokens: a mix needs at least 49% LOC top tokens. The primed neurons'
    # 2 of 6 at retrain-1 is no longer a mix; their 3 of 6 at retrain-2 and the two always
    # half-LOC neurons are.
    poly = polysemanticity(concept_arm.stats(), CONCEPT)
    assert (poly.low, poly.high) == pytest.approx((2 * rate, 1 - rate))
    assert poly.counts["n_polysemantic"].tolist() == [2, 2, 2, 8]
    # Over one population common to both arms (outside both removed sets): 96 - 6 - 6.
    common = common_population({"concept": concept_arm, "random": random_arm})
    assert int(common.sum()) == N_LAYERS * D_MLP - len(PLANTED) - len(RANDOM_ABLATED)
    both = {
        arm.arm: polysemanticity(arm.stats(), CONCEPT, population=common).counts
        for arm in (concept_arm, random_arm)
    }
    assert both["concept"]["n_population"].eq(84).all()
    assert both["random"]["n_polysemantic"].tolist() == [2, 2, 2, 2]


# ---------------------------------------------------------------------------------------------
# Everything together
# ---------------------------------------------------------------------------------------------


def test_analyse_arm_runs_every_analysis(random_arm: ArmRun, embeddings: TokenEmbeddings) -> None:
    analysis = analyse_arm(random_arm, embeddings, top=6, n_reappeared=5)
    assert analysis.depth["mean_layer"].tolist() == pytest.approx([3.0] * len(STAGES))
    assert len(analysis.reappearance) == 5
    assert not set(RANDOM_ABLATED) & set(
        zip(analysis.reappearance["layer"], analysis.reappearance["neuron"], strict=True)
    )
    assert analysis.primed is not None
    assert analysis.pruned.stages["n_alive"].tolist() == [6, 0, 0, 0]
    assert np.isfinite(analysis.layer_saliency["mean"]).all()
    # Polysemanticity leaves the ablated set out (here dead from pruning on anyway).
    assert analysis.polysemanticity.n_population == N_LAYERS * D_MLP - len(RANDOM_ABLATED)
    without = analyse_arm(random_arm, None, top=6)
    assert without.primed is None and without.reappearance["similarity"].isna().all()


def test_loading_an_empty_directory_fails_clearly(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"concept": "LOC", "method": "probeless"}')
    with pytest.raises(NeuroplasticError, match="no stage artifacts"):
        ArmRun.load(tmp_path, "concept")

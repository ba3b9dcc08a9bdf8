"""The causal ground truth (neuroplastic.analysis.causal): every candidate set of the truth's size,
and the damage each does, on a planted case where one neuron carries the concept."""

import math

import pytest
import torch

import neuroplastic.analysis.causal as causal
from neuroplastic.analysis.predict import ground_truth
from neuroplastic.core.models import mlp_hook_name, run_forward
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.training import Evaluation
from neuroplastic.data.load import encode_split

N_LAYERS, D_MLP = 3, 200


def planted_truth():
    """Stable saliency except 4 survivors in layer 2 that rise to the top; 10 removed."""
    generator = torch.Generator().manual_seed(0)
    before = torch.rand(N_LAYERS, D_MLP, generator=generator)
    after = before.clone()
    risers = [(2, 10), (2, 11), (2, 12), (2, 13)]
    for layer, neuron in risers:
        after[layer, neuron] = 5.0
    removed = NeuronSet.of(N_LAYERS, D_MLP, [(0, n) for n in range(10)])
    alive = torch.ones(N_LAYERS, D_MLP, dtype=torch.bool)
    truth = ground_truth(
        Ranking("LOC", "probeless", before, alive),
        Ranking("LOC", "probeless", after, alive),
        removed,
        top=0.01,
    )
    return truth, risers, removed


def test_every_set_has_the_truths_size_and_holds_only_candidates():
    truth, risers, removed = planted_truth()
    k = round(0.01 * (N_LAYERS * D_MLP - 10))  # 6
    good = torch.zeros(N_LAYERS, D_MLP, dtype=torch.float64)
    good[2, 10:16] = torch.arange(6, 0, -1, dtype=torch.float64)  # picks the risers first
    partial = torch.full((N_LAYERS, D_MLP), math.nan, dtype=torch.float64)
    partial[1, :3] = 1.0  # only 3 scored: its set has 3
    sets = causal.candidate_sets({"good": good, "partial": partial}, truth, seed=7)
    assert list(sets) == ["good", "partial", *causal.REFERENCE_SETS]
    assert sets["good"].neurons == tuple((2, n) for n in range(10, 16))
    assert sets["partial"].neurons == ((1, 0), (1, 1), (1, 2))
    # Only the risers gained (every other survivor slid down one place per riser): the gainers
    # are those 4, fewer than k; in a real run thousands of survivors gain.
    assert sets["gainers"].neurons == tuple(risers)
    assert len(sets["last_top"].neurons) == k and set(risers) <= set(sets["last_top"].neurons)
    # The floor: as many random survivors as the gainers in each layer, none removed.
    assert sets["matched_random"].per_layer_counts() == sets["gainers"].per_layer_counts()
    for neurons in sets.values():
        assert not (neurons.mask() & removed.mask()).any()
        assert (neurons.mask() <= truth.candidates).all()
    again = causal.candidate_sets({"good": good, "partial": partial}, truth, seed=7)
    other = causal.candidate_sets({"good": good, "partial": partial}, truth, seed=8)
    assert (
        again["matched_random"] == sets["matched_random"]
        and other["matched_random"] != sets["matched_random"]
    )


def carrier_fires(model, dataset) -> bool:
    """Whether neuron (1, 5), the planted concept's carrier, fires on the dataset's sentences
    as the model now runs (its own activations: only ablation hooks can silence it)."""
    captured = {}
    name = mlp_hook_name(1)
    hook = (name, lambda act, hook: captured.setdefault("act", act.detach()))
    batch = dataset.collate(list(range(len(dataset))))
    with model.hooks(fwd_hooks=[hook]):
        run_forward(model, batch.tokens, batch.attention_mask, stop_at=name)
    return bool(captured["act"][..., 5].abs().sum() > 0)


def test_the_damage_is_the_score_lost_with_each_set_ablated(tiny_model, corpus, monkeypatch):
    """A planted concept: the evaluation's F1 is 0.9 while neuron (1, 5) fires and 0.3 once it
    is zeroed, read from the model's own activations, so only the ablation hooks can move it."""
    data = encode_split(corpus, tiny_model.tokenizer, "validation", limit=4)

    def fake_evaluate(module, dataset, task, concept, progress=False, **_):
        fires = carrier_fires(tiny_model, dataset)
        return Evaluation({"f1": {concept: 0.9 if fires else 0.3, "PER": 0.8, "overall": 0.85}})

    monkeypatch.setattr(causal, "evaluate", fake_evaluate)
    n_layers, d_mlp = tiny_model.cfg.n_layers, tiny_model.cfg.d_mlp
    sets = {
        "carrier": NeuronSet.of(n_layers, d_mlp, [(1, 5), (0, 2)]),
        "bystanders": NeuronSet.of(n_layers, d_mlp, [(1, 6), (0, 2)]),
    }
    result = causal.damage(tiny_model, tiny_model, data, "ner", "LOC", sets)
    assert result["score"] == 0.9 and result["k"] == 2 and result["task"] == "ner"
    assert result["lost"] == pytest.approx({"carrier": 0.6, "bystanders": 0.0})
    assert result["others_lost"] == {"carrier": {"PER": 0.0}, "bystanders": {"PER": 0.0}}
    # No hook is left behind: the model scores as before.
    assert fake_evaluate(tiny_model, data, "ner", "LOC").scores["f1"]["LOC"] == 0.9


def test_for_language_modelling_the_damage_is_the_loss_gained(tiny_gpt2, corpus, monkeypatch):
    scores = {"lm_loss": {"concept": 2.5, "other": 1.0}}
    assert causal.concept_score(scores, "lm", "LOC") == 2.5
    assert causal.concept_score({"f1": {"LOC": 0.7}}, "ner", "LOC") == 0.7
    # A planted concept loss: 2.0 while neuron (1, 5) fires, 3.5 once it is zeroed. Ablating
    # it gains 1.5 of loss: a positive damage, as F1 lost is for tagging.
    data = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=4)

    def fake_evaluate(module, dataset, task, concept, progress=False, **_):
        assert task == "lm"
        fires = carrier_fires(tiny_gpt2, dataset)
        return Evaluation({"lm_loss": {"concept": 2.0 if fires else 3.5, "other": 1.0}})

    monkeypatch.setattr(causal, "evaluate", fake_evaluate)
    n_layers, d_mlp = tiny_gpt2.cfg.n_layers, tiny_gpt2.cfg.d_mlp
    sets = {
        "carrier": NeuronSet.of(n_layers, d_mlp, [(1, 5), (0, 2)]),
        "bystanders": NeuronSet.of(n_layers, d_mlp, [(1, 6), (0, 2)]),
    }
    result = causal.damage(tiny_gpt2, tiny_gpt2, data, "lm", "LOC", sets)
    assert result["score"] == 2.0 and result["task"] == "lm"
    assert result["lost"] == pytest.approx({"carrier": 1.5, "bystanders": 0.0})
    assert "others_lost" not in result


def test_the_sweep_pairs_each_sets_damage_with_the_random_floor_seed_by_seed():
    from neuroplastic.experiment.sweep import causal_across_seeds

    def run(seed, gradient, gainers, floor):
        lost = {"gradient": gradient, "gainers": gainers, "matched_random": floor}
        return {
            "seed": seed,
            "causal": {"concept": {"task": "ner", "k": 9, "score": 0.8, "lost": lost}},
        }

    runs = [run(0, 0.10, 0.30, 0.02), run(1, 0.06, 0.25, 0.00), run(2, 0.08, 0.35, 0.04)]
    result = causal_across_seeds(runs)["concept"]
    assert result["k"] == [9, 9, 9] and result["task"] == "ner"
    assert result["lost"]["gainers"]["mean"] == pytest.approx(0.30)
    beyond = result["beyond_random"]["gradient"]
    assert beyond["values"] == pytest.approx([0.08, 0.06, 0.04])
    differences = torch.tensor([0.08, 0.06, 0.04], dtype=torch.float64)
    half = 4.302652729911275 * differences.std() / math.sqrt(3)  # t(0.975, 2)
    assert beyond["ci_low"] == pytest.approx(float(differences.mean() - half))
    assert "matched_random" not in result["beyond_random"] and "equivalence" in beyond
    # A run without a causal truth (made before it existed) is missing, not zero.
    runs.append({"seed": 3})
    again = causal_across_seeds(runs)["concept"]
    assert again["lost"]["gainers"]["n"] == 3 and again["lost"]["gainers"]["missing"] == 1


def test_a_set_every_type_shares_is_not_specific_to_the_concept():
    from neuroplastic.experiment.sweep import causal_across_seeds

    def run(seed, loc, per, org):
        return {
            "seed": seed,
            "causal": {
                "concept": {
                    "task": "ner", "k": 9, "score": 0.8,
                    "lost": {"gradient": loc, "matched_random": 0.0},
                    "others_lost": {"gradient": {"PER": per, "ORG": org},
                                    "matched_random": {"PER": 0.0, "ORG": 0.0}},
                }
            },
        }  # fmt: skip

    # Gradient's picks cost LOC 0.1 but PER and ORG more: shared neurons, not LOC's home.
    runs = [run(0, 0.10, 0.30, 0.10), run(1, 0.08, 0.20, 0.20), run(2, 0.12, 0.40, 0.20)]
    specific = causal_across_seeds(runs)["concept"]["specific"]["gradient"]
    assert specific["values"] == pytest.approx([0.10 - 0.20, 0.08 - 0.20, 0.12 - 0.30])
    assert specific["ci_high"] < 0
    # The sweep report shows it beside the loss itself.
    from neuroplastic.report.html import HtmlPage
    from neuroplastic.report.sweep_report import _causal

    page = HtmlPage("t")
    _causal(page, {"causal": causal_across_seeds(runs)}, "LOC")
    text = page.to_html()
    mean = (0.10 - 0.20 + 0.08 - 0.20 + 0.12 - 0.30) / 3
    assert "LOC lost - others lost" in text and f"{mean:.3g} [" in text

"""Predicting where a removed concept goes: the measures by hand, the candidates, the ground
truth, a planted relocation, and the gradient attribution against full autograd."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
from fake_run import PRIMED, make_fake_run
from planted import CONCEPT, classifier, removed_of
from scipy.stats import mannwhitneyu

from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.predict import (
    PREDICTORS,
    Predictions,
    across_seeds,
    coactivation_score,
    evaluate_arm,
    evaluate_predictions,
    gradient_attribution,
    ground_truth,
    paired_population,
    precision_at_k,
    predict_at_base,
    predict_at_pruned,
    random_score,
    roc_auc,
    saliency_score,
    similarity_score,
    survivors,
)
from neuroplastic.core.ablation import Ablation
from neuroplastic.core.models import mlp_hook_name
from neuroplastic.core.neurons import NeuronSet
from neuroplastic.core.ranking import Ranking
from neuroplastic.core.similarity import TokenEmbeddings
from neuroplastic.core.stats import NeuronStats, collect_stats
from neuroplastic.data.concept import IGNORE_TAG
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError

NAN = math.nan


@pytest.fixture
def probe(tiny_model, corpus):
    return encode_split(corpus, tiny_model.tokenizer, "validation", limit=12)


# ---------------------------------------------------------------------------------------------
# AUC and precision at k
# ---------------------------------------------------------------------------------------------

# Seven candidates; the NaN one is a neuron the predictor could not score (ranks last).
SCORES = [0.9, 0.8, 0.7, 0.7, 0.4, 0.2, NAN]
LABELS = [True, False, True, False, False, True, False]


def test_auc_by_hand():
    # Positives 0.9, 0.7, 0.2 against negatives 0.8, 0.7, 0.4, NaN (lowest):
    # 0.9 beats all 4; 0.7 beats 0.4 and NaN and ties 0.7 (half); 0.2 beats NaN.
    assert roc_auc(SCORES, LABELS) == pytest.approx((4 + 2.5 + 1) / 12)
    scores = np.nan_to_num(np.array(SCORES), nan=-1.0)
    positives, negatives = scores[np.array(LABELS)], scores[~np.array(LABELS)]
    u = mannwhitneyu(positives, negatives).statistic
    assert roc_auc(SCORES, LABELS) == pytest.approx(u / (len(positives) * len(negatives)))


def test_auc_agrees_with_pair_counting_on_random_tied_scores():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=30).astype(float)  # many ties
        labels = rng.random(30) < 0.3
        if labels.all() or not labels.any():
            continue
        pairs = [
            1.0 if p > n else 0.5 if p == n else 0.0
            for p, n in itertools.product(scores[labels], scores[~labels])
        ]
        assert roc_auc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(np.mean(pairs))


def test_auc_agrees_with_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores, labels = rng.integers(0, 7, size=50).astype(float), rng.random(50) < 0.2
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))


def brute_precision(scores, labels, k):
    """Precision at k averaged over every order of the tied scores (NaN ranks last)."""
    scores = [-math.inf if math.isnan(s) else s for s in scores]
    values = []
    for order in itertools.permutations(range(len(scores))):
        if any(scores[a] < scores[b] for a, b in itertools.pairwise(order)):
            continue  # not a descending order
        values.append(sum(labels[i] for i in order[:k]) / k)
    return np.mean(values)


@pytest.mark.parametrize(
    "k, expected",
    [(1, 1.0), (2, 0.5), (3, 0.5), (4, 0.5), (5, 0.4), (7, 3 / 7)],
)
def test_precision_at_k_by_hand(k, expected):
    # Top 3: 0.9 (hit), 0.8 (miss), then one of the tied 0.7s: a hit half the time.
    assert precision_at_k(SCORES, LABELS, k) == pytest.approx(expected)
    assert precision_at_k(SCORES, LABELS, k) == pytest.approx(brute_precision(SCORES, LABELS, k))


def test_precision_at_k_defaults_to_the_number_of_positives():
    assert precision_at_k(SCORES, LABELS) == precision_at_k(SCORES, LABELS, 3)


def test_measures_without_both_classes_are_nan_and_bad_k_is_refused():
    assert math.isnan(roc_auc([1.0, 2.0], [False, False]))
    assert math.isnan(roc_auc([1.0, 2.0], [True, True]))
    assert math.isnan(precision_at_k([1.0, 2.0], [False, False]))
    with pytest.raises(NeuroplasticError, match="k must be between 1 and the 2"):
        precision_at_k([1.0, 2.0], [True, False], k=3)
    with pytest.raises(NeuroplasticError, match="3 scores but 2 labels"):
        roc_auc([1.0, 2.0, 3.0], [True, False])


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def ranking(values: list[list[float]]) -> Ranking:
    """NaN marks a dead neuron."""
    return Ranking(CONCEPT, "probeless", torch.tensor(values, dtype=torch.float32))


def hand_rankings():
    """2 layers x 5 neurons. Removed: (0, 0) and (1, 4), dead at both stages; (1, 0) never
    fired at the pruned stage (dead there), fires at the last one: not a candidate either.

    Saliency among the 7 candidates (1 - rank/6), pruned: (0,1) 1, (0,2) 5/6, (0,3) 4/6,
    (0,4) 3/6, (1,1) 2/6, (1,2) 1/6, (1,3) 0; last: (1,3) 1, (0,1) 5/6, (1,2) 4/6, (0,2) 3/6,
    (0,3) 2/6, (0,4) 1/6, (1,1) 0. (1,0), live at the last stage only, ranks above (1,2) there
    but is no candidate: it moves no candidate's saliency, where ranks over all 8 live neurons
    would have moved (1,2), (0,2) ... down by it.
    """
    pruned = ranking([[NAN, 7, 6, 5, 4], [NAN, 3, 2, 1, NAN]])
    last = ranking([[NAN, 9, 6, 5, 4], [8, 3, 7, 10, NAN]])
    removed = NeuronSet.of(2, 5, [(0, 0), (1, 4)])
    return pruned, last, removed


def as_set(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(pair) for pair in mask.nonzero().tolist()}


def test_ground_truth_by_hand():
    pruned, last, removed = hand_rankings()
    truth = ground_truth(pruned, last, removed, top=0.3)  # round(0.3 * 7) = 2 neurons
    assert as_set(truth.candidates) == {(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3)}
    expected_gain = {
        (0, 1): 5 / 6 - 1,
        (0, 2): 3 / 6 - 5 / 6,
        (0, 3): 2 / 6 - 4 / 6,
        (0, 4): 1 / 6 - 3 / 6,
        (1, 1): 0 - 2 / 6,
        (1, 2): 4 / 6 - 1 / 6,
        (1, 3): 1 - 0,
    }
    for (layer, neuron), gain in expected_gain.items():
        assert truth.gain[layer, neuron].item() == pytest.approx(gain, abs=1e-6)
    assert truth.gain.isnan().sum() == 3
    # The two largest gains (the only positive ones); (1, 0) gained most of all but was dead at
    # the pruned stage.
    assert as_set(truth.positives["gain"]) == {(1, 3), (1, 2)}
    # Top 2 of the candidates at last: (1,3), (0,1); at pruned: (0,1), (0,2).
    assert as_set(truth.positives["entered"]) == {(1, 3)}
    one = ground_truth(pruned, last, removed)  # 1% of 7: at least one
    assert as_set(one.positives["gain"]) == {(1, 3)}
    assert as_set(one.positives["entered"]) == {(1, 3)}


def test_a_paired_population_scores_a_treatment_and_its_control_on_the_same_neurons():
    """The control still holds the concept's neurons (removed in the treatment only): scored
    over its own survivors, its truths would be about them; over the paired population, both
    arms' candidates are the same neurons, and a neuron regrowing in one arm moves no one's
    saliency."""
    pruned, last, removed = hand_rankings()
    control_removed = NeuronSet.of(2, 5, [(0, 4)])
    control_pruned = ranking([[9, 7, 6, 5, 4], [8, 3, 2, 1, 0.5]])  # everything alive
    control_last = ranking([[9, 7, 6, 5, 4], [8, 3, 2, 1, 0.5]])
    population = paired_population(
        [(pruned, last, removed), (control_pruned, control_last, control_removed)]
    )
    assert as_set(population) == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)}
    treated = ground_truth(pruned, last, removed, top=0.3, population=population)
    control = ground_truth(control_pruned, control_last, control_removed, 0.3, population)
    assert torch.equal(treated.candidates, control.candidates)
    assert torch.equal(treated.candidates, population)
    # Nothing moved in the control: every gain is 0, so no positive gain; its last top is the
    # candidates' own top, not (0, 0) and (1, 0), the treatment's removed and unborn neurons.
    assert not control.positives["gain"].any()
    assert as_set(control.positives["last_top"]) == {(0, 1), (0, 2)}


def test_ground_truth_keeps_ties_and_only_positive_gains():
    # Saliency pruned [1, 2/3, 1/3, 0], last [0, 1/3, 1, 2/3]: gains -1, -1/3, 2/3, 2/3.
    pruned, last = ranking([[4, 3, 2, 1]]), ranking([[1, 2, 4, 3]])
    nothing = NeuronSet.of(1, 4, [])
    assert as_set(ground_truth(pruned, last, nothing).positives["gain"]) == {(0, 2), (0, 3)}
    # Everyone loses saliency relative to the leader, who stays put: no positive gain at all.
    flat = ground_truth(ranking([[2, 1, 0, 0]]), ranking([[2, 1, 0, 0]]), nothing)
    assert not flat.positives["gain"].any()


def test_ground_truth_refuses_bad_input():
    pruned, last, removed = hand_rankings()
    with pytest.raises(NeuroplasticError, match="top must be a fraction"):
        ground_truth(pruned, last, removed, top=1.5)
    with pytest.raises(NeuroplasticError, match="different shapes"):
        ground_truth(pruned, ranking([[1.0, 2.0]]), removed)
    with pytest.raises(NeuroplasticError, match="removed set is for 3 layers"):
        ground_truth(pruned, last, NeuronSet.of(3, 5, []))


# ---------------------------------------------------------------------------------------------
# Evaluation frames, and intervals across seeds
# ---------------------------------------------------------------------------------------------


def test_evaluation_frame_by_hand():
    pruned, last, removed = hand_rankings()
    truth = ground_truth(pruned, last, removed, top=0.3)
    perfect = truth.gain.clone()  # the truth's own gain, NaN outside the candidates
    blind = torch.where(truth.candidates, 0.0, NAN).double()
    frame = evaluate_predictions({"perfect": perfect, "blind": blind}, truth)
    assert list(frame.columns) == [
        "predictor", "truth", "auc", "precision_at_k", "k", "n_candidates", "n_positive",
        "n_unscored", "base_rate",
    ]  # fmt: skip
    rows = frame.set_index(["predictor", "truth"])
    assert rows.loc[("perfect", "gain"), "auc"] == 1.0
    assert rows.loc[("perfect", "gain"), "precision_at_k"] == 1.0
    assert rows.loc[("perfect", "gain"), "n_positive"] == 2
    assert (frame["n_candidates"] == 7).all()
    # A constant score: AUC one half, precision the base rate (every tie-break averaged).
    assert rows.loc[("blind", "gain"), "auc"] == 0.5
    assert rows.loc[("blind", "gain"), "precision_at_k"] == pytest.approx(2 / 7)
    assert rows.loc[("blind", "gain"), "base_rate"] == pytest.approx(2 / 7)
    with pytest.raises(NeuroplasticError, match="predictor 'short' scores shape"):
        evaluate_predictions({"short": torch.zeros(2, 4)}, truth)


def seed_frame(auc: float, precision: float) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"predictor": "gradient", "truth": "gain", "auc": auc,
             "precision_at_k": precision, "base_rate": 0.1},
        ]
    )  # fmt: skip


def test_across_seeds_by_hand():
    frames = {0: seed_frame(0.6, 0.5), 1: seed_frame(0.8, 0.3), 2: seed_frame(0.7, NAN)}
    table = across_seeds(frames).set_index("measure")
    # AUC: mean 0.7, sd 0.1 over 3 seeds, t(0.975, 2) = 4.302652729911275.
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert table.loc["auc", "mean"] == pytest.approx(0.7)
    assert table.loc["auc", "ci_low"] == pytest.approx(0.7 - half)
    assert table.loc["auc", "ci_high"] == pytest.approx(0.7 + half)
    assert (table.loc["auc", "n_seeds"], table.loc["auc", "missing"]) == (3, 0)
    # Precision: the NaN seed is left out and counted; two seeds 0.5, 0.3: sd sqrt(0.02),
    # t(0.975, 1) = 12.706204736174698.
    half = 12.706204736174698 * math.sqrt(0.02) / math.sqrt(2)
    assert (table.loc["precision_at_k", "n_seeds"], table.loc["precision_at_k", "missing"]) == (
        2,
        1,
    )
    assert table.loc["precision_at_k", "ci_high"] == pytest.approx(0.4 + half)
    assert table.loc["precision_lift", "mean"] == pytest.approx(0.3)
    one = across_seeds([seed_frame(0.6, 0.5)]).set_index("measure")
    assert one.loc["auc", "mean"] == 0.6 and math.isnan(one.loc["auc", "ci_low"])


def test_across_seeds_refuses_frames_that_are_not_evaluations():
    with pytest.raises(NeuroplasticError, match="lacks columns auc"):
        across_seeds([pd.DataFrame({"predictor": ["x"], "truth": ["gain"]})])
    with pytest.raises(NeuroplasticError, match="appear twice"):
        across_seeds([pd.concat([seed_frame(0.5, 0.5)] * 2)])
    with pytest.raises(NeuroplasticError, match="no per-seed"):
        across_seeds([])


# ---------------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------------


def test_random_score_is_seeded_and_only_on_candidates():
    candidates = torch.tensor([[True, False, True], [True, True, False]])
    a, b = random_score(candidates, 3), random_score(candidates, 3)
    assert torch.equal(a.isnan(), ~candidates)
    assert torch.equal(a.nan_to_num(-1), b.nan_to_num(-1))
    assert not torch.equal(a.nan_to_num(-1), random_score(candidates, 4).nan_to_num(-1))


def test_similarity_score_by_hand():
    # Tokens 10 (LOC), 11 (LOC), 12 (O), 13 (O); vectors not centered, so cosines read directly.
    embeddings = TokenEmbeddings.from_vectors(
        torch.tensor([10, 11, 12, 13]),
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        center=False,
    )
    top_token = torch.tensor([[[10, 12], [12, 12], [13, 13], [99, 99]]])  # 1 layer, 4 neurons
    top_label = torch.tensor([[[1, 0], [0, 0], [0, 0], [0, 0]]])
    stats = NeuronStats(
        label_names=("O", "LOC"),
        count=torch.tensor([5, 5]),
        sum=torch.ones(2, 1, 4, dtype=torch.float64),
        sum_sq=torch.ones(2, 1, 4, dtype=torch.float64),
        top_values=torch.ones(1, 4, 2),
        top_sentence=torch.zeros(1, 4, 2, dtype=torch.long),
        top_position=torch.zeros(1, 4, 2, dtype=torch.long),
        top_token=top_token,
        top_label=top_label,
    )
    candidates = torch.tensor([[True, True, True, True]])
    score = similarity_score(stats, embeddings, CONCEPT, candidates)
    # Concept tokens: {10} -> direction (1, 0). Neuron 0: centroid of (1,0), (0,1) -> 45 degrees;
    # neuron 1: (0, 1) -> 0; neuron 2: (1,1)/sqrt2 -> cos 45; neuron 3: unknown tokens -> NaN.
    expected = torch.tensor([[1 / math.sqrt(2), 0.0, 1 / math.sqrt(2), NAN]], dtype=torch.float64)
    torch.testing.assert_close(score, expected, equal_nan=True)
    only_two = similarity_score(
        stats, embeddings, CONCEPT, torch.tensor([[True, True, False, False]])
    )
    assert only_two[0, 2:].isnan().all()


def test_candidates_exclude_removed_and_dead_neurons(tiny_model, probe):
    """Every predictor scores exactly the survivors: not removed, alive at its stage."""
    module = classifier(tiny_model, probe)
    removed = removed_of(tiny_model)
    hooks_before = hook_count(tiny_model)
    base_stats = collect_stats(tiny_model, probe, top_k=5, progress=False)
    with Ablation(tiny_model, removed):
        pruned_stats = collect_stats(tiny_model, probe, top_k=5, progress=False)
    base = Ranking.from_stats(base_stats, CONCEPT)
    pruned = Ranking.from_stats(pruned_stats, CONCEPT)
    assert torch.equal(~pruned.alive, removed.mask())  # zero-ablated: dead at the pruned stage
    # Mark one more neuron dead (as a ReLU neuron that never fires would be).
    dead = torch.zeros_like(pruned.alive)
    dead[1, 10] = True
    pruned = Ranking(CONCEPT, "probeless", pruned.scores, pruned.alive & ~dead)
    base = Ranking(CONCEPT, "probeless", base.scores, base.alive & ~dead)
    token_ids = torch.tensor(sorted({t for e in probe.encoded for t in e.token_ids}))
    embeddings = TokenEmbeddings.from_vectors(token_ids, tiny_model.W_E[token_ids].detach())
    predictions = predict_at_base(
        module, probe, CONCEPT, base, base_stats, removed, embeddings
    ).merged(predict_at_pruned(module, probe, CONCEPT, pruned, removed, seed=0))
    assert list(predictions.scores) == [
        "saliency_base", "similarity", "coactivation", "saliency_pruned", "gradient", "random",
    ]  # fmt: skip
    survivors = ~removed.mask() & ~dead
    for name, scores in predictions.scores.items():
        assert torch.equal(scores.isnan(), ~survivors), name
    assert hook_count(tiny_model) == hooks_before  # the predictors' hooks are all gone


def hook_count(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


def test_predictions_save_and_load(tmp_path):
    candidates = torch.tensor([[True, False], [True, True]])
    predictions = Predictions(
        {"random": random_score(candidates, 1), "gradient": random_score(candidates, 2)}
    )
    predictions.save(tmp_path / "predictions.safetensors")
    loaded = Predictions.load(tmp_path / "predictions.safetensors")
    assert list(loaded.scores) == ["gradient", "random"]  # PREDICTORS order
    for name in predictions.scores:
        torch.testing.assert_close(loaded.scores[name], predictions.scores[name], equal_nan=True)
    frame = loaded.to_frame()
    assert list(frame.columns) == ["layer", "neuron", "gradient", "random"]
    assert frame["random"].isna().sum() == 1
    with pytest.raises(NeuroplasticError, match="predictions file not found"):
        Predictions.load(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(NeuroplasticError, match="not a readable predictions file"):
        Predictions.load(tmp_path / "bad.safetensors")
    with pytest.raises(NeuroplasticError, match="no predictor scores"):
        Predictions({})
    with pytest.raises(NeuroplasticError, match="different shapes"):
        Predictions({"a": torch.zeros(2, 2), "b": torch.zeros(2, 3)})


# ---------------------------------------------------------------------------------------------
# Gradient attribution against full autograd and finite differences
# ---------------------------------------------------------------------------------------------


def gated_loss(module, batch, concept_id, keep, gates, lm: bool):
    """The concept's summed loss with every MLP activation multiplied by ``keep * gate``.

    With the gates at 1, dL/dgate = (ablated activation) x dL/d(activation): the attribution
    without any of predict.py's machinery. The loss is written out with log-softmax.
    """
    model = module.model if not lm else module
    hooks = [
        (mlp_hook_name(layer), lambda act, hook, layer=layer: act * keep[layer] * gates[layer])
        for layer in range(len(gates))
    ]
    concept = batch.concept_labels == concept_id
    with model.hooks(fwd_hooks=hooks):
        if lm:
            logits = model(batch.tokens, attention_mask=batch.attention_mask, return_type="logits")
            log_p = logits[:, :-1].log_softmax(-1)
            chosen = concept[:, 1:] & batch.attention_mask[:, 1:].bool()
            return -log_p.gather(-1, batch.tokens[:, 1:, None])[..., 0][chosen].sum()
        log_p = module(batch.tokens, batch.attention_mask).log_softmax(-1)
    chosen = concept & (batch.tag_labels != IGNORE_TAG)
    return -log_p[chosen].gather(-1, batch.tag_labels[chosen][:, None]).sum()


def autograd_attribution(module, data, removed, lm=False, hold=True):
    model = module.model if not lm else module
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    concept_id = data.label_id(CONCEPT)
    keep = (~removed.mask()).float() if hold else torch.ones(n_layers, d_mlp)
    total, count = torch.zeros(n_layers, d_mlp, dtype=torch.float64), 0
    for index in range(len(data)):  # one sentence at a time: no padding at all
        batch = data.collate([index])
        width = batch.tokens.shape[1]
        gates = [torch.ones(1, width, d_mlp, requires_grad=True) for _ in range(n_layers)]
        loss = gated_loss(module, batch, concept_id, keep, gates, lm)
        grads = torch.autograd.grad(loss, gates)
        positions = batch.concept_labels[0] == concept_id
        if lm:  # the position before each concept token predicts it
            positions = torch.cat([positions[1:], torch.tensor([False])])
            positions &= batch.attention_mask[0].bool()
        for layer in range(n_layers):
            total[layer] += grads[layer][0][positions].abs().sum(0).double()
        count += int(positions.sum())
    return torch.where(removed.mask(), NAN, total / count)


def test_gradient_attribution_matches_full_autograd(tiny_model, probe):
    module = classifier(tiny_model, probe)
    removed = removed_of(tiny_model)
    module.train()  # it must switch dropout off itself, and restore the mode
    module.zero_grad(set_to_none=True)
    scores = gradient_attribution(module, probe, CONCEPT, removed, batch_size=5)
    assert module.training
    assert all(p.grad is None for p in module.parameters())
    module.eval()
    expected = autograd_attribution(module, probe, removed)
    torch.testing.assert_close(scores, expected, rtol=2e-4, atol=1e-9, equal_nan=True)
    assert (expected.nan_to_num(0) > 0).sum() > 0.9 * (~removed.mask()).sum()
    # The batch only pads: one batch of all sentences gives the same numbers.
    whole = gradient_attribution(module, probe, CONCEPT, removed, batch_size=len(probe))
    torch.testing.assert_close(whole, scores, rtol=2e-4, atol=1e-9, equal_nan=True)
    # Regrow mode holds no hook: every path through the removed neurons stays open.
    open_paths = gradient_attribution(module, probe, CONCEPT, removed, hold=False)
    expected = autograd_attribution(module, probe, removed, hold=False)
    torch.testing.assert_close(open_paths, expected, rtol=2e-4, atol=1e-9, equal_nan=True)
    survivors = ~removed.mask()
    assert not torch.allclose(open_paths[survivors], scores[survivors], rtol=1e-3)


def test_gradient_attribution_for_language_modelling(tiny_gpt2, corpus):
    data = encode_split(corpus, tiny_gpt2.tokenizer, "validation", limit=6)
    removed = removed_of(tiny_gpt2)
    scores = gradient_attribution(tiny_gpt2, data, CONCEPT, removed, batch_size=3)
    expected = autograd_attribution(tiny_gpt2, data, removed, lm=True)
    torch.testing.assert_close(scores, expected, rtol=2e-4, atol=1e-9, equal_nan=True)


def test_the_gate_gradient_is_the_finite_difference(tiny_bert, corpus):
    """Checks the reference itself: dL/dgate at one token and neuron against a central
    difference of the loss (float32 model: eps 1e-2 keeps round-off ~1e-5 of the slope)."""
    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=12)
    module = classifier(tiny_bert, data)
    removed = removed_of(tiny_bert)
    concept_id = data.label_id(CONCEPT)
    keep = (~removed.mask()).float()
    index = next(i for i in range(len(data)) if concept_id in data.encoded[i].concept_labels)
    batch = data.collate([index])
    position = int((batch.concept_labels[0] == concept_id).nonzero()[0])
    width, d_mlp = batch.tokens.shape[1], tiny_bert.cfg.d_mlp
    gates = [torch.ones(1, width, d_mlp, requires_grad=True) for _ in range(2)]
    grads = torch.autograd.grad(gated_loss(module, batch, concept_id, keep, gates, False), gates)
    layer, neuron = 0, int(grads[0][0, position].abs().argmax())
    eps = 1e-2
    with torch.no_grad():
        losses = []
        for sign in (1, -1):
            moved = [torch.ones(1, width, d_mlp) for _ in range(2)]
            moved[layer][0, position, neuron] += sign * eps
            losses.append(float(gated_loss(module, batch, concept_id, keep, moved, False)))
    slope = (losses[0] - losses[1]) / (2 * eps)
    assert slope == pytest.approx(float(grads[layer][0, position, neuron]), rel=2e-2)


def test_gradient_attribution_refuses_bad_input(tiny_bert, corpus):
    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=4)
    module = classifier(tiny_bert, data)
    with pytest.raises(NeuroplasticError, match="unknown concept label 'CITY'"):
        gradient_attribution(module, data, "CITY", removed_of(tiny_bert))
    with pytest.raises(NeuroplasticError, match="batch size must be at least 1"):
        gradient_attribution(module, data, CONCEPT, removed_of(tiny_bert), batch_size=0)
    with pytest.raises(NeuroplasticError, match="removed set is for 3 layers"):
        predict_at_pruned(
            module,
            data,
            CONCEPT,
            Ranking(CONCEPT, "x", torch.rand(2, 64)),
            NeuronSet.of(3, 64, []),
            0,
        )


# ---------------------------------------------------------------------------------------------
# Co-activation against numpy
# ---------------------------------------------------------------------------------------------


def test_coactivation_matches_numpy(tiny_model, probe):
    removed = removed_of(tiny_model)
    module = classifier(tiny_model, probe).train()  # dropout must not reach the two passes
    scores = coactivation_score(module, probe, CONCEPT, removed, batch_size=5)
    assert module.training
    module.eval()
    concept_id = probe.label_id(CONCEPT)
    rows = []
    for index in range(len(probe)):
        batch = probe.collate([index])
        _, cache = tiny_model.run_with_cache(
            batch.tokens, attention_mask=batch.attention_mask,
            names_filter=lambda name: name.endswith("mlp.hook_post"),
        )  # fmt: skip
        concept = batch.concept_labels[0] == concept_id
        rows.append(
            np.stack([cache[mlp_hook_name(layer)][0][concept].numpy() for layer in range(2)], 1)
        )
    acts = np.concatenate(rows).astype(np.float64)  # [token, layer, neuron]
    flat = acts.reshape(len(acts), -1)
    removed_flat = removed.mask().flatten().numpy()
    z = (flat[:, removed_flat] - flat[:, removed_flat].mean(0)) / flat[:, removed_flat].std(0)
    signal = z.mean(1)
    expected = np.array([abs(np.corrcoef(flat[:, i], signal)[0, 1]) for i in range(flat.shape[1])])
    expected[removed_flat] = np.nan
    np.testing.assert_allclose(scores.flatten().numpy(), expected, rtol=1e-6, atol=1e-9)


def test_coactivation_needs_the_base_model(tiny_bert, corpus):
    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=4)
    removed = removed_of(tiny_bert)
    with Ablation(tiny_bert, removed), pytest.raises(NeuroplasticError, match="never vary"):
        coactivation_score(tiny_bert, data, CONCEPT, removed)
    with pytest.raises(NeuroplasticError, match="at least one removed neuron"):
        coactivation_score(tiny_bert, data, CONCEPT, NeuronSet.of(2, 64, []))


# ---------------------------------------------------------------------------------------------
# A planted relocation
# ---------------------------------------------------------------------------------------------


def test_the_planted_truth_is_the_planted_neurons(planted):
    *_, truth, planted_mask = planted
    assert torch.equal(truth.positives["gain"], planted_mask)
    assert torch.equal(truth.positives["entered"], planted_mask)


def test_gradient_finds_the_planted_relocation(planted):
    module, data, removed, pruned, truth, planted_mask = planted
    predictions = predict_at_pruned(module, data, CONCEPT, pruned, removed, seed=0)
    gradient = predictions.scores["gradient"]
    assert (gradient[planted_mask] > 0).all()
    assert (gradient[truth.candidates & ~planted_mask] == 0).all()
    frame = evaluate_predictions(predictions, truth).set_index(["predictor", "truth"])
    for truth_name in ("gain", "entered"):
        assert frame.loc[("gradient", truth_name), "auc"] > 0.99
        assert frame.loc[("gradient", truth_name), "precision_at_k"] == 1.0
        # The planted neurons were the least salient survivors: saliency says the opposite.
        assert frame.loc[("saliency_pruned", truth_name), "auc"] < 0.01


def test_random_is_at_chance_on_the_planted_relocation(planted):
    """Mean AUC of the random predictor over 200 seeds. Under the null an AUC with n1 = 8
    positives and n0 = 116 negatives has variance (n1 + n0 + 1) / (12 n1 n0) = 0.0112 (sd 0.106);
    the mean of 200 independent seeds has sd 0.0075, so +-0.03 is four standard deviations.
    Precision at 8 has expectation 8/124 = 0.065 and sd 0.087 per seed: mean +-0.025 is four."""
    *_, truth, _ = planted
    frames = [
        evaluate_predictions({"random": random_score(truth.candidates, seed)}, truth)
        for seed in range(200)
    ]
    table = across_seeds(frames).set_index(["truth", "measure"])
    assert table.loc[("gain", "auc"), "mean"] == pytest.approx(0.5, abs=0.03)
    assert table.loc[("gain", "precision_at_k"), "mean"] == pytest.approx(8 / 124, abs=0.025)
    # The interval is across seeds and covers chance.
    assert table.loc[("gain", "auc"), "ci_low"] < 0.5 < table.loc[("gain", "auc"), "ci_high"]


def test_predictors_are_listed_in_reading_order():
    # The saliency predictors first (pruned, the paper's reading, then base), then similarity,
    # gradient and co-activation, chance last: the order the evaluation tables and the report
    # read in (not the order they are computed in, above).
    assert tuple(PREDICTORS) == (
        "saliency_pruned", "saliency_base", "similarity", "gradient", "coactivation", "random",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# One arm of a (hand-made) run directory
# ---------------------------------------------------------------------------------------------


def test_evaluate_arm_on_the_fake_run(tmp_path):
    """fake_run.py plants the story: the PRIMED neurons (layer 1, 0-5) are the least salient
    survivors at base and at the pruned stage and the most salient at the last stage, and they
    fire on person names, whose embeddings share a "name" direction with location names."""
    fake = make_fake_run(tmp_path, mode="hold")
    arm = ArmRun.load(fake.path, "concept")
    base, pruned = arm.stages["base"], arm.stages["pruned"].ranking
    at_base = survivors(base.ranking.alive, arm.ablated)
    at_pruned = survivors(pruned.alive, arm.ablated)
    n = int(at_pruned.sum())  # 4 x 24 neurons, 6 removed
    assert n == 90
    predictions = Predictions(
        {
            "saliency_pruned": saliency_score(pruned, at_pruned),
            "saliency_base": saliency_score(base.ranking, at_base),
            "similarity": similarity_score(base.stats, fake.run.embeddings(), CONCEPT, at_base),
        }
    )
    frame = evaluate_arm(arm, predictions, top=6 / n)
    truth = ground_truth(pruned, arm.stages[arm.last].ranking, arm.ablated, top=6 / n)
    assert as_set(truth.positives["gain"]) == set(PRIMED) == as_set(truth.positives["entered"])
    pd.testing.assert_frame_equal(frame, evaluate_predictions(predictions, truth))
    rows = frame.set_index(["predictor", "truth"])
    assert rows.loc[("saliency_base", "gain"), "auc"] == 0.0  # the least salient, every one
    assert rows.loc[("saliency_pruned", "gain"), "auc"] == 0.0
    # Three quarters of the other neurons fire on O, ORG or MISC, further from LOC than PER.
    assert rows.loc[("similarity", "gain"), "auc"] > 0.7
    with pytest.raises(NeuroplasticError, match="has no stage 'retrain-9'"):
        evaluate_arm(arm, predictions, end="retrain-9")


def test_similarity_is_left_out_without_concept_tokens(tiny_bert, corpus):
    data = encode_split(corpus, tiny_bert.tokenizer, "validation", limit=4)
    module = classifier(tiny_bert, data)
    removed = removed_of(tiny_bert)
    stats = collect_stats(tiny_bert, data, top_k=1, progress=False)
    stats.top_label = torch.zeros_like(stats.top_label)  # no top token labelled LOC
    token_ids = torch.tensor(sorted({t for e in data.encoded for t in e.token_ids}))
    embeddings = TokenEmbeddings.from_vectors(token_ids, tiny_bert.W_E[token_ids].detach())
    ranking = Ranking.from_stats(stats, CONCEPT)
    predictions = predict_at_base(module, data, CONCEPT, ranking, stats, removed, embeddings)
    assert list(predictions.scores) == ["saliency_base", "coactivation"]
    with pytest.raises(NeuroplasticError, match="no token labelled 'LOC'"):
        similarity_score(stats, embeddings, CONCEPT, ~removed.mask())

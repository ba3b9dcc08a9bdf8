"""The per-layer probes' residual stream kept by taps on passes a stage runs anyway.

Expectations come from a separate path: :func:`residual_tokens` (the erasures' own capture, one
batch at a time in corpus order) and :func:`probe_auc` running passes of its own.
"""

from __future__ import annotations

import pytest
import torch

from neuroplastic.core.erasure import residual_tokens
from neuroplastic.core.probes import (
    Residuals,
    ResidualTap,
    probe_auc,
    probe_auc_of,
    tapped_residuals,
)
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import TokenClassifier, evaluate
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError

CONCEPT = "LOC"


@pytest.fixture(scope="module")
def splits(tiny_bert, corpus):
    fit = encode_split(corpus, tiny_bert.tokenizer, "train", limit=120, max_length=48)
    held_out = encode_split(corpus, tiny_bert.tokenizer, "validation", max_length=48)
    return fit, held_out


def layers_of(model) -> list[int]:
    return list(range(int(model.cfg.n_layers)))


def by_hand(model, data) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers_of(model)}
    labels = []
    for residual, batch_labels in residual_tokens(model, data, layers_of(model)):
        for layer, x in residual.items():
            parts[layer].append(x)
        labels.append(batch_labels)
    return {layer: torch.cat(xs) for layer, xs in parts.items()}, torch.cat(labels)


def test_a_tap_on_its_own_pass_keeps_what_the_erasures_capture_keeps(tiny_bert, splits):
    fit, _ = splits
    expected, labels = by_hand(tiny_bert, fit)
    kept = tapped_residuals(tiny_bert, fit, layers_of(tiny_bert))
    assert torch.equal(kept.labels, labels)
    for layer in layers_of(tiny_bert):  # the same batches: the same bits
        assert torch.equal(kept.layers[layer], expected[layer]), layer


def test_a_tap_on_the_statistics_halves_gives_corpus_order_and_leaves_the_stats_alone(
    tiny_bert, splits
):
    fit, _ = splits
    expected, labels = by_hand(tiny_bert, fit)
    tap = ResidualTap(layers_of(tiny_bert), len(fit))
    odd, even = list(range(1, len(fit), 2)), list(range(0, len(fit), 2))
    tapped = [
        collect_stats(tiny_bert, fit, indices=half, progress=False, taps=[tap])
        for half in (odd, even)
    ]
    plain = [collect_stats(tiny_bert, fit, indices=half, progress=False) for half in (odd, even)]
    for with_tap, without in zip(tapped, plain, strict=True):
        for field in ("count", "sum", "sum_sq", "top_values", "top_sentence", "top_token"):
            assert torch.equal(getattr(with_tap, field), getattr(without, field)), field
    kept = tap.residuals()
    assert torch.equal(kept.labels, labels)
    for layer in layers_of(tiny_bert):  # other batches, other padding: a float's last bits
        torch.testing.assert_close(kept.layers[layer], expected[layer], rtol=1e-5, atol=1e-5)


def test_a_tap_on_the_evaluation_keeps_the_validation_residuals(tiny_bert, splits):
    _, held_out = splits
    expected, labels = by_hand(tiny_bert, held_out)
    module = TokenClassifier(tiny_bert, len(held_out.tag_names))
    tap = ResidualTap(layers_of(tiny_bert), len(held_out))
    scores = evaluate(module, held_out, "ner", CONCEPT, progress=False, taps=[tap]).scores
    assert scores == evaluate(module, held_out, "ner", CONCEPT, progress=False).scores
    kept = tap.residuals()
    assert torch.equal(kept.labels, labels)
    for layer in layers_of(tiny_bert):  # batched by length there, in corpus order here
        torch.testing.assert_close(kept.layers[layer], expected[layer], rtol=1e-5, atol=1e-5)


def test_probes_from_taps_score_what_probes_with_passes_of_their_own_score(tiny_bert, splits):
    fit, held_out = splits
    layers = layers_of(tiny_bert)
    module = TokenClassifier(tiny_bert, len(held_out.tag_names))
    train_tap, test_tap = ResidualTap(layers, len(fit)), ResidualTap(layers, len(held_out))
    evaluate(module, held_out, "ner", CONCEPT, progress=False, taps=[test_tap])
    half = len(fit) // 2
    for indices in (range(half), range(half, len(fit))):
        collect_stats(tiny_bert, fit, indices=list(indices), progress=False, taps=[train_tap])
    tapped = probe_auc_of(
        train_tap.residuals(), test_tap.residuals(), fit.label_id(CONCEPT), concept=CONCEPT
    )
    own = probe_auc(tiny_bert, fit, held_out, CONCEPT, layers)
    assert set(tapped) == set(own) == set(layers)
    for layer in layers:
        assert tapped[layer] == pytest.approx(own[layer], abs=1e-4), (layer, tapped, own)
    assert max(abs(value - 0.5) for value in own.values()) > 0.05  # something was read


def test_a_tap_says_what_it_missed(tiny_bert, splits):
    fit, _ = splits
    tap = ResidualTap([0, 1], len(fit))
    collect_stats(tiny_bert, fit, indices=list(range(10)), progress=False, taps=[tap])
    with pytest.raises(NeuroplasticError, match="saw 10 of 120 sentences"):
        tap.residuals()
    with pytest.raises(NeuroplasticError, match="sentence 0 went through the residual tap twice"):
        collect_stats(tiny_bert, fit, indices=[0], progress=False, taps=[tap])
    short = ResidualTap([0], len(fit))
    with pytest.raises(NeuroplasticError, match="never reached blocks.0.hook_resid_post"):
        short.record(next(fit.batches(4)))
    with pytest.raises(NeuroplasticError, match="needs at least one layer"):
        ResidualTap([], len(fit))


def test_a_probe_reads_a_planted_direction_as_well_as_the_best_possible_rule():
    """Concept tokens shifted by d along one of 16 unit-variance dimensions: the best any rule
    can do is the shift's own test, AUC = Phi(d / sqrt(2)) (two normals, d apart); a probe
    of pure noise reads nothing (0.5), and a shift far beyond the noise is read perfectly."""
    generator = torch.Generator().manual_seed(0)

    def residuals(n: int) -> Residuals:
        labels = (torch.rand(n, generator=generator) < 0.2).long()  # 1: the concept
        shift = torch.zeros(n, 16)
        shift[:, 3] = labels.float()
        noise = [torch.randn(n, 16, generator=generator) for _ in range(3)]
        return Residuals({0: noise[0] + 1.5 * shift, 1: noise[1], 2: noise[2] + 20 * shift}, labels)

    auc = probe_auc_of(residuals(4000), residuals(4000), concept_id=1)
    best = float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1.5 / 2**0.5)))
    assert best == pytest.approx(0.8556, abs=1e-4)
    # ~800 concept tokens against ~3200: the AUC's sampling error is about 0.008.
    assert auc[0] == pytest.approx(best, abs=0.025)
    assert auc[1] == pytest.approx(0.5, abs=0.035)
    assert auc[2] == 1.0

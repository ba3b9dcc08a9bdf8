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
    at_chance,
    auc_interval,
    fixed_readings_of,
    point_readings,
    probe_auc,
    probe_auc_of,
    probe_readings,
    probe_readings_of,
    readings_and_probes,
    readings_and_probes_of,
    tapped_residuals,
)
from neuroplastic.core.stats import collect_stats
from neuroplastic.core.training import TokenClassifier, evaluate
from neuroplastic.data.concept import IGNORE_CONCEPT
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


# -- readability without its sign, its interval, and a split disjoint from the eraser's ----------
def planted(n: int, sign: float, generator: torch.Generator, shift: float = 1.5) -> Residuals:
    """Tokens in sentences of 8, 16 unit-variance dimensions, the concept's (1 in 5) shifted by
    ``sign * shift`` along dimension 3."""
    labels = (torch.rand(n, generator=generator) < 0.2).long()
    x = torch.randn(n, 16, generator=generator)
    x[:, 3] += sign * shift * labels.float()
    return Residuals({0: x}, labels, torch.arange(n) // 8)


def test_an_anti_correlated_probe_is_readable_without_its_sign():
    """Fitted where the concept lies along +d, scored where it lies along -d: the raw AUC is the
    best rule's mirror, 1 - Phi(1.5 / sqrt 2) = 0.144; readable all the same, and its interval
    says so (far from holding 0.5)."""
    generator = torch.Generator().manual_seed(1)
    reading = probe_readings_of(planted(4000, 1, generator), planted(4000, -1, generator), 1)[0]
    best = float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1.5 / 2**0.5)))
    assert reading["auc"] == pytest.approx(1 - best, abs=0.025)
    assert reading["sign_free"] == pytest.approx(best, abs=0.025)
    assert reading["sign_free"] == max(reading["auc"], 1 - reading["auc"])
    assert reading["low"] <= reading["auc"] <= reading["high"] < 0.5
    assert not at_chance(reading)
    # the same probe scored where the sign agrees
    same = probe_readings_of(planted(4000, 1, generator), planted(4000, 1, generator), 1)[0]
    assert same["auc"] == pytest.approx(best, abs=0.025) and not at_chance(same)


def test_a_probe_of_pure_noise_is_at_chance_and_the_interval_covers_it():
    generator = torch.Generator().manual_seed(2)
    noise = probe_readings_of(planted(2000, 0, generator), planted(2000, 0, generator), 1)[0]
    assert at_chance(noise) and noise["sign_free"] >= 0.5


def test_the_auc_interval_is_clustered_by_sentence():
    """Scores sharing a sentence's random offset, labels shared within a sentence too: tokens
    are not independent. Over 300 null draws (50 sentences of 16) the clustered 95% interval
    holds 0.5 about 95% of the time; the token-level one (each token its own) much less often."""
    generator = torch.Generator().manual_seed(3)
    covered = {"sentence": 0, "token": 0}
    draws = 300
    for _ in range(draws):
        sentences = torch.arange(800) // 16
        offset = torch.randn(50, generator=generator)[sentences]
        concept = (torch.rand(50, generator=generator) < 0.5)[sentences]
        labels = concept & (torch.rand(800, generator=generator) < 0.5)
        labels[0], labels[1] = True, False
        scores = (3 * offset + torch.randn(800, generator=generator)).numpy()
        for name, clusters in (("sentence", sentences), ("token", None)):
            _, low, high = auc_interval(scores, labels, clusters)
            covered[name] += low <= 0.5 <= high
    assert 0.90 <= covered["sentence"] / draws <= 0.99, covered
    assert covered["token"] / draws < 0.7, covered


def test_a_probe_fitted_apart_from_the_erasers_sentences_reads_the_concept_that_survives():
    """LEACE fitted on 60 tokens in 16 dimensions equalises the class means of those tokens
    only. On new tokens the concept survives along what the eraser missed: the best any rule
    can read there is Phi(Delta / 2), Delta the Mahalanobis distance of the erased class means
    (known from the eraser's algebra). A probe fitted on half the new tokens and scored on the
    other half reads it; one fitted on the eraser's own tokens does not."""
    from concept_erasure import LeaceFitter

    generator = torch.Generator().manual_seed(5)
    d = 16
    delta = torch.zeros(d, dtype=torch.float64)
    delta[0], delta[1] = 1.5, 1.0

    def tokens(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = (torch.arange(n) % 4 == 0).long()  # 1 in 4 the concept
        x = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return x + labels[:, None] * delta, labels

    x_fit, y_fit = tokens(60)
    fitter = LeaceFitter(d, 1, dtype=torch.float64)
    fitter.update(x_fit, y_fit[:, None].double())
    eraser = fitter.eraser
    # the eraser as an affine map: x -> x - P (x - b)
    projection = eraser.proj_left @ eraser.proj_right
    keep = torch.eye(d, dtype=torch.float64) - projection

    def erased(x: torch.Tensor) -> torch.Tensor:
        return eraser(x)

    moved = keep @ delta
    covariance = keep @ keep.T
    distance = float(moved @ torch.linalg.pinv(covariance, hermitian=True) @ moved) ** 0.5
    best = float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(distance / 2**0.5)))
    assert best > 0.65  # the concept survives on new tokens (the eraser's estimate is off)

    x_a, y_a = tokens(6000)
    x_b, y_b = tokens(6000)
    fitted_apart = probe_readings_of(
        Residuals({0: erased(x_a).float()}, y_a), Residuals({0: erased(x_b).float()}, y_b), 1
    )[0]
    assert fitted_apart["auc"] == pytest.approx(best, abs=0.03)
    assert not at_chance(fitted_apart)
    # on the eraser's own tokens the class means are equal: a probe fitted there learns nothing
    # about the concept (chance on those tokens, by construction)
    own = probe_auc_of(
        Residuals({0: erased(x_fit).float()}, y_fit),
        Residuals({0: erased(x_fit).float()}, y_fit),
        1,
    )[0]
    assert abs(own - 0.5) < abs(fitted_apart["auc"] - 0.5)


def test_a_tap_keeps_the_mlp_output_and_gives_any_sentences_in_corpus_order(tiny_bert, splits):
    fit, _ = splits
    layers = layers_of(tiny_bert)
    tap = ResidualTap(layers, len(fit), ("resid_post", "mlp_out"))
    names = [name for name, _ in tap.hooks]
    assert names == [f"blocks.{n}.hook_resid_post" for n in layers] + [
        f"blocks.{n}.hook_mlp_out" for n in layers
    ]
    with torch.no_grad(), tiny_bert.hooks(fwd_hooks=tap.hooks):
        for batch in fit.batches(16):
            tiny_bert(batch.tokens, attention_mask=batch.attention_mask)
            tap.record(batch)
    whole = tap.residuals("resid_post")
    assert torch.equal(whole.layers[0], tapped_residuals(tiny_bert, fit, layers).layers[0])
    # the MLP output, by hand
    captured = {}
    some = [5, 1, 9]
    subset = fit.subset(sorted(some))
    hooks = [
        (f"blocks.{n}.hook_mlp_out", lambda a, hook, n=n: captured.setdefault(n, a)) for n in layers
    ]
    with torch.no_grad(), tiny_bert.hooks(fwd_hooks=hooks):
        batch = next(subset.batches(8))
        tiny_bert(batch.tokens, attention_mask=batch.attention_mask)
    real = batch.concept_labels != IGNORE_CONCEPT
    kept = tap.residuals("mlp_out", some)
    for layer in layers:
        assert torch.allclose(kept.layers[layer], captured[layer][real], atol=1e-5)
    assert kept.sentences.unique().tolist() == sorted(some)
    with pytest.raises(NeuroplasticError, match="not mlp_out"):
        ResidualTap(layers, len(fit)).residuals("mlp_out")


def test_readings_from_taps_and_from_passes_of_their_own_agree(tiny_bert, splits):
    fit, held_out = splits
    layers = layers_of(tiny_bert)
    own = probe_readings(tiny_bert, fit, held_out, CONCEPT, layers)
    assert set(own) == {"resid_post", "mlp_out"}
    plain = probe_auc(tiny_bert, fit, held_out, CONCEPT, layers)
    for layer in layers:
        assert own["resid_post"][layer]["auc"] == pytest.approx(plain[layer], abs=1e-12)
        for reading in (own["resid_post"][layer], own["mlp_out"][layer]):
            assert reading["low"] <= reading["auc"] <= reading["high"]
            assert reading["sign_free"] == max(reading["auc"], 1 - reading["auc"])


# -- a probe held fixed: moved or removed ----------------------------------------------------------
def along(n: int, dimension: int, generator: torch.Generator, shift: float = 1.5) -> Residuals:
    """:func:`planted`'s tokens with the concept shifted along ``dimension`` (None: nowhere)."""
    labels = (torch.rand(n, generator=generator) < 0.2).long()
    x = torch.randn(n, 16, generator=generator)
    if dimension is not None:
        x[:, dimension] += shift * labels.float()
    return Residuals({0: x}, labels, torch.arange(n) // 8)


def test_a_probe_held_fixed_tells_a_concept_moved_from_one_removed():
    """Fitted where the concept lies along dimension 3. Where it still lies there, the fixed
    probe reads what the best rule reads, Phi(1.5 / sqrt 2); where it moved to dimension 5, a
    probe fitted anew still reads it all, the fixed one reads chance; where it is gone, both
    read chance. Only the fixed probe tells the move from the stay."""
    generator = torch.Generator().manual_seed(7)
    best = float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1.5 / 2**0.5)))
    base = along(4000, 3, generator)
    _, probes = readings_and_probes_of(base, along(4000, 3, generator), 1)
    stayed = fixed_readings_of(probes, along(4000, 3, generator), 1)[0]
    assert stayed["auc"] == pytest.approx(best, abs=0.025) and not at_chance(stayed)
    moved = along(4000, 5, generator)
    assert fixed_readings_of(probes, moved, 1)[0]["auc"] == pytest.approx(0.5, abs=0.035)
    assert at_chance(fixed_readings_of(probes, moved, 1)[0])
    refit = probe_readings_of(along(4000, 5, generator), moved, 1)[0]
    assert refit["auc"] == pytest.approx(best, abs=0.025)
    gone = along(4000, None, generator)
    assert at_chance(fixed_readings_of(probes, gone, 1)[0])
    assert at_chance(probe_readings_of(along(4000, None, generator), gone, 1)[0])


def test_a_probe_folded_to_be_held_scores_what_the_probe_it_came_from_scores():
    """The folded direction (standardisation folded in, offset dropped) ranks tokens as the
    fitted probe does: scored on the very tokens the readings came from, the same AUC and
    interval to rounding."""
    generator = torch.Generator().manual_seed(8)
    fit, score = planted(3000, 1, generator), planted(3000, 1, generator)
    for x in (fit.layers[0], score.layers[0]):  # spreads and means to fold in, the concept's
        x[:, 2] = x[:, 2] * 40 + 7  # dimension (3) among them
        x[:, 3] = x[:, 3] * 0.05 - 3
    readings, probes = readings_and_probes_of(fit, score, 1)
    assert readings[0]["auc"] > 0.8  # the concept is read (folding matters to something)
    held = fixed_readings_of(probes, score, 1)
    for key in ("auc", "sign_free", "low", "high"):
        assert held[0][key] == pytest.approx(readings[0][key], abs=1e-9), key
    # per point: the fits, and the held probes' readings under the point's name + "_fixed"
    both, again = point_readings(
        {"resid_post": fit}, {"resid_post": score}, 1, {"resid_post": probes}
    )
    assert both["resid_post"] == readings and both["resid_post_fixed"] == held
    assert torch.equal(again["resid_post"][0].direction, probes[0].direction)
    with pytest.raises(NeuroplasticError, match="fitted on another model"):
        fixed_readings_of(probes, Residuals({0: torch.randn(50, 8)}, torch.arange(50) % 2), 1)


def test_probes_held_fixed_on_a_model_read_as_they_read_where_they_were_fitted(tiny_bert, splits):
    """With passes of their own: probes fitted on the model and held fixed on the same model
    read what they read when fitted."""
    fit, held_out = splits
    layers = layers_of(tiny_bert)
    readings, probes = readings_and_probes(tiny_bert, fit, held_out, CONCEPT, layers)
    assert readings == probe_readings(tiny_bert, fit, held_out, CONCEPT, layers)
    again, _ = readings_and_probes(tiny_bert, fit, held_out, CONCEPT, layers, fixed=probes)
    for point in ("resid_post", "mlp_out"):
        for layer in layers:
            assert again[point + "_fixed"][layer]["auc"] == pytest.approx(
                readings[point][layer]["auc"], abs=1e-9
            )

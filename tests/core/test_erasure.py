"""Linear removals held by hooks (LEACE, a direction) and the per-layer probe that traces them.

Expectations are computed independently of the code under test: class-conditional means taken
by hand from captured activations, a probe trained from scratch, the erasure's own algebra.
"""

from __future__ import annotations

import contextlib
import json
import os

import pytest
import torch

from neuroplastic.core.erasure import (
    LinearErasure,
    erase,
    fit_direction,
    fit_leace,
    fit_matched_control,
    matched_directions,
    resid_hook_name,
    residual_tokens,
)
from neuroplastic.core.probes import probe_auc
from neuroplastic.data.load import encode_split
from neuroplastic.errors import NeuroplasticError

if not os.environ.get("CI"):  # under CI the [erasure] extra is installed: a missing one fails
    pytest.importorskip("concept_erasure", reason='pip install "neuroplastic[erasure]" for LEACE')

CONCEPT = "LOC"
LAYERS = [0, 1]


@pytest.fixture(scope="module")
def splits(tiny_bert, corpus):
    fit = encode_split(corpus, tiny_bert.tokenizer, "train", limit=160, max_length=48)
    held_out = encode_split(corpus, tiny_bert.tokenizer, "validation", max_length=48)
    return fit, held_out


@pytest.fixture(scope="module")
def leace(tiny_bert, splits) -> LinearErasure:
    return fit_leace(tiny_bert, splits[0], CONCEPT, LAYERS)


def class_means(model, data, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The concept tokens' and the other tokens' mean residual at ``layer``, by hand."""
    concept_id = data.label_id(CONCEPT)
    xs, ys = [], []
    for residual, labels in residual_tokens(model, data, [layer]):
        xs.append(residual[layer].double())
        ys.append(labels == concept_id)
    x, y = torch.cat(xs), torch.cat(ys)
    return x[y].mean(0), x[~y].mean(0)


def test_leace_leaves_the_concepts_tokens_no_mean_difference_at_any_layer(tiny_bert, splits, leace):
    fit, _ = splits
    gaps = {layer: class_means(tiny_bert, fit, layer) for layer in LAYERS}
    assert min(float((c - o).norm()) for c, o in gaps.values()) > 0.1  # something to erase
    with erase(tiny_bert, leace):
        for layer in LAYERS:
            concept, other = class_means(tiny_bert, fit, layer)
            # LEACE's guarantee on the data it was fitted on, with every layer's eraser held
            # (each fitted with the earlier ones in place): the classes' means coincide.
            assert torch.allclose(concept, other, atol=1e-4), (layer, (concept - other).norm())
    assert leace.rank == 1 and leace.describe().startswith("LEACE erasure of LOC")


@pytest.mark.slow  # the embedded pretrained model: a concept a probe reads well
def test_after_leace_no_linear_probe_beats_the_constant_predictor(embedded_model, corpus):
    fit = encode_split(corpus, embedded_model.tokenizer, "train", limit=160, max_length=48)
    held_out = encode_split(corpus, embedded_model.tokenizer, "validation", max_length=48)
    layers = [0, embedded_model.cfg.n_layers - 1]
    before = probe_auc(embedded_model, fit, held_out, CONCEPT, layers)
    assert min(before.values()) > 0.9, before
    eraser = fit_leace(embedded_model, fit, CONCEPT, layers)
    with erase(embedded_model, eraser):
        after = probe_auc(embedded_model, fit, held_out, CONCEPT, layers)
        in_sample = probe_auc(embedded_model, fit, fit, CONCEPT, layers)
    for layer in layers:
        assert abs(after[layer] - 0.5) < 0.15, after  # the constant predictor's AUC
        assert abs(in_sample[layer] - 0.5) < 0.1, in_sample
    with erase(embedded_model, eraser.random_control(seed=0)):
        control = probe_auc(embedded_model, fit, held_out, CONCEPT, layers)
    for layer in layers:  # as many random dimensions removed: the concept stays readable
        assert abs(control[layer] - before[layer]) < 0.03, (before, control)


def test_a_random_projection_of_the_same_rank_removes_no_more_than_chance(tiny_bert, splits, leace):
    fit, _ = splits
    control = leace.random_control(seed=0)
    assert control.layers == leace.layers and control.rank == leace.rank
    for layer in LAYERS:  # orthonormal: Q.T Q = I
        q = control.left[layer]
        assert torch.allclose(q.T @ q, torch.eye(control.rank), atol=1e-5)
    before = {layer: class_means(tiny_bert, fit, layer) for layer in LAYERS}
    with erase(tiny_bert, control):
        after = {layer: class_means(tiny_bert, fit, layer) for layer in LAYERS}
    for layer in LAYERS:
        gap_before = float((before[layer][0] - before[layer][1]).norm())
        gap_after = float((after[layer][0] - after[layer][1]).norm())
        # One random direction of 32 takes about 1/32 of the gap's square, not all of it.
        assert gap_after > 0.8 * gap_before, (layer, gap_before, gap_after)


def test_the_direction_is_the_difference_of_means_and_projecting_it_out_equalises_them(
    tiny_bert, splits
):
    fit, _ = splits
    direction = fit_direction(tiny_bert, fit, CONCEPT, LAYERS)
    for layer in LAYERS:
        # Each layer's direction, with the earlier layers' held (as they will be).
        earlier = LinearErasure(
            "direction", CONCEPT,
            *({k: v for k, v in part.items() if k < layer}
              for part in (direction.left, direction.right, direction.bias)),
        )  # fmt: skip
        with erase(tiny_bert, earlier) if earlier.left else contextlib.nullcontext():
            concept, other = class_means(tiny_bert, fit, layer)
        expected = (concept - other) / (concept - other).norm()
        assert torch.allclose(direction.left[layer][:, 0].double(), expected, atol=1e-5)
    with erase(tiny_bert, direction):
        for layer in LAYERS:
            concept, other = class_means(tiny_bert, fit, layer)
            d = direction.left[layer][:, 0].double()
            assert abs(float((concept - other) @ d)) < 1e-4  # none left along it


@pytest.mark.parametrize("kind", ["leace", "direction", "random"])
def test_an_erasure_is_idempotent_and_survives_saving(tiny_bert, splits, leace, tmp_path, kind):
    erasure = {
        "leace": leace,
        "direction": fit_direction(tiny_bert, splits[0], CONCEPT, LAYERS),
        "random": leace.random_control(seed=1),
    }[kind]
    x = torch.randn(7, int(tiny_bert.cfg.d_model))
    for layer in LAYERS:
        once = erasure.apply(layer, x)
        assert torch.allclose(erasure.apply(layer, once), once, atol=1e-4)
    loaded = LinearErasure.load(erasure.save(tmp_path / "erasure.safetensors"))
    assert (loaded.kind, loaded.concept, loaded.layers) == (kind, CONCEPT, LAYERS)
    for layer in LAYERS:
        assert torch.equal(loaded.apply(layer, x), erasure.apply(layer, x))


def test_the_erasure_is_held_through_training_unchanged_and_removed_on_exit(tiny_bert, splits):
    fit, _ = splits
    erasure = fit_direction(tiny_bert, fit, CONCEPT, LAYERS)
    saved = {layer: erasure.left[layer].clone() for layer in LAYERS}
    state = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    optimizer = torch.optim.SGD(tiny_bert.parameters(), lr=1e-2)
    batch = fit.collate(list(range(8)))
    seen: dict[int, torch.Tensor] = {}
    try:
        with erase(tiny_bert, erasure, permanent=True) as handle:
            tiny_bert.reset_hooks()  # other code's bookkeeping: a permanent erasure stays
            assert handle.active
            for _ in range(2):
                optimizer.zero_grad()
                logits = tiny_bert(batch.tokens, attention_mask=batch.attention_mask)
                logits.float().pow(2).mean().backward()
                optimizer.step()

            def capture(x, hook):
                seen[int(hook.name.split(".")[1])] = x.detach()

            with tiny_bert.hooks(fwd_hooks=[(resid_hook_name(lay), capture) for lay in LAYERS]):
                tiny_bert(batch.tokens, attention_mask=batch.attention_mask)
        for layer in LAYERS:
            assert torch.equal(erasure.left[layer], saved[layer])  # not a parameter
            d = erasure.left[layer][:, 0]
            assert float((seen[layer] @ d).abs().max()) < 1e-4  # erased after the steps too
        hooks = [
            h for layer in LAYERS for h in tiny_bert.hook_dict[resid_hook_name(layer)].fwd_hooks
        ]
        assert not handle.active and hooks == []
    finally:
        tiny_bert.load_state_dict(state)  # the session's shared model, as it was


def test_fitting_needs_a_known_concept_with_tokens_in_the_sentences(tiny_bert, corpus):
    from neuroplastic.data.concept import ConceptDataset
    from neuroplastic.data.load import concept_labels

    data = encode_split(corpus, tiny_bert.tokenizer, "train", limit=4, max_length=48)
    with pytest.raises(NeuroplasticError, match="unknown concept label"):
        fit_leace(tiny_bert, data, "PLACE", LAYERS)
    without = [s for s in corpus.train if not any(t.endswith("-LOC") for t in s.tags)][:8]
    assert without
    nowhere = ConceptDataset(
        without, tiny_bert.tokenizer, concept_labels(corpus), corpus.tag_names, max_length=48
    )
    with pytest.raises(NeuroplasticError, match="no LOC tokens in the sentences"):
        fit_leace(tiny_bert, nowhere, CONCEPT, LAYERS)
    with pytest.raises(NeuroplasticError, match="needs LOC tokens and other tokens; got 0"):
        fit_direction(tiny_bert, nowhere, CONCEPT, LAYERS)


def test_the_probe_draws_no_random_numbers_and_reads_the_hooks_the_model_holds(
    tiny_bert, splits, leace
):
    fit, held_out = splits
    state = torch.get_rng_state()
    plain = probe_auc(tiny_bert, fit, held_out, CONCEPT, LAYERS)
    assert torch.equal(torch.get_rng_state(), state)  # training after it is the same
    assert probe_auc(tiny_bert, fit, held_out, CONCEPT, LAYERS) == plain  # deterministic
    with erase(tiny_bert, leace):
        erased = probe_auc(tiny_bert, fit, held_out, CONCEPT, LAYERS)
    for layer in LAYERS:  # the erasure is what the probe read: nearer chance than without it
        assert abs(erased[layer] - 0.5) < abs(plain[layer] - 0.5) - 0.05, (plain, erased)


def test_layers_probed_in_groups_give_what_one_pass_gives(tiny_bert, splits, monkeypatch):
    import neuroplastic.core.probes as probes

    fit, held_out = splits
    together = probe_auc(tiny_bert, fit, held_out, CONCEPT, LAYERS)
    monkeypatch.setattr(probes, "PROBE_MEMORY", 1)  # one layer per pass
    assert probe_auc(tiny_bert, fit, held_out, CONCEPT, LAYERS) == together


def test_every_stage_of_a_run_records_where_the_concept_is_readable(tiny_run):
    _, summary = tiny_run
    for arm in summary["arms"].values():
        for entry in arm["stages"]:
            readable = entry["readable"]
            assert set(readable) == {"0", "1"}, entry["stage"]
            assert all(0.0 <= value <= 1.0 for value in readable.values())
            probes = entry["probes"]
            points = {"resid_post", "mlp_out", "resid_post_fixed", "mlp_out_fixed"}
            assert set(probes) == points | {"split", "head"}  # the head's own score too
            assert probes["split"]["n_fit"] + probes["split"]["n_score"] == 32  # validation
            for point in points:
                for reading in probes[point].values():
                    assert 0.5 <= reading["sign_free"] <= 1.0
                    assert reading["low"] <= reading["auc"] <= reading["high"]


def test_the_report_shows_where_the_concept_is_readable(tiny_run, tmp_path):
    import html
    import shutil

    from neuroplastic.report.run_report import write_report

    source, summary = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    page = write_report(copy).read_text(encoding="utf-8")
    assert "Where LOC is linearly readable" in page
    for arm in summary["arms"]:
        assert f"{arm} arm: sign-free probe readability at the residual stream" in page
        assert f"{arm} arm: sign-free probe readability at the MLP output" in page
        held = f"{arm} arm: raw probe AUC at the MLP output, the base's probe held fixed"
        assert html.escape(held) in page
    base = summary["arms"]["concept"]["stages"][0]["probes"]["resid_post"]["1"]
    assert f"{base['sign_free']:.3f}" in page
    assert "max(AUC, 1 - AUC)" in page


# -- the control: a random projection matched in removed variance ---------------------------------
def removed_by_hand(model, data, erasure: LinearErasure, layer: int) -> float:
    """The share of ``layer``'s variance ``erasure`` takes away, from the residual stream
    captured with its earlier layers held: var(x - erased x) summed over var(x) summed."""
    earlier = LinearErasure(
        erasure.kind,
        erasure.concept,
        *(
            {k: v for k, v in part.items() if k < layer}
            for part in (erasure.left, erasure.right, erasure.bias)
        ),
    )
    with erase(model, earlier) if earlier.left else contextlib.nullcontext():
        x = torch.cat([r[layer] for r, _ in residual_tokens(model, data, [layer])]).double()
    taken = x - erasure.apply(layer, x.float()).double()
    return float(taken.var(0).sum() / x.var(0).sum())


def test_a_matched_direction_removes_the_planted_share_a_uniform_one_misses():
    """A stream of 64 dimensions whose concept direction carries 30 times a dimension's
    variance: projecting out a direction half on it removes (1 + 15) / 94 = 17% of the
    variance. A uniformly random direction removes about 1/64 of it; the matched one, drawn from
    the same Gaussian, removes 17% to the tolerance, and is still random (seeds differ)."""
    d = 64
    u = torch.zeros(d, dtype=torch.float64)
    u[5] = 1.0
    covariance = torch.eye(d, dtype=torch.float64) + 30 * torch.outer(u, u)
    eraser = torch.zeros(d, dtype=torch.float64)
    eraser[5] = eraser[9] = 2**-0.5
    target = float(eraser @ covariance @ eraser / torch.trace(covariance))
    assert target == pytest.approx(16 / 94)

    def share(q):
        return float(torch.trace(q.T @ covariance @ q) / torch.trace(covariance))

    draws = []
    for seed in range(3):
        gaussian = torch.randn(
            d, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
        )
        uniform, _ = torch.linalg.qr(gaussian)
        assert share(uniform) < 0.06  # about (1 + 30 (u.q)^2) / 94: a few percent at most
        matched = matched_directions(covariance, gaussian, target)
        assert torch.allclose(matched.T @ matched, torch.eye(1, dtype=torch.float64))
        assert share(matched) == pytest.approx(target, rel=1e-5)
        draws.append(matched[:, 0])
    assert abs(float(draws[0] @ draws[1])) < 0.9  # different seeds: different directions


def test_a_matched_direction_can_remove_less_than_a_uniform_one_and_clamps_at_the_ends():
    d = 16
    covariance = torch.diag(torch.linspace(1.0, 16.0, d, dtype=torch.float64))
    total = float(torch.trace(covariance))
    gaussian = torch.randn(d, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for target in (1.5 / total, 0.05, 15.5 / total):  # below, near and above a uniform draw
        q = matched_directions(covariance, gaussian, target)
        assert float(q.T @ covariance @ q) / total == pytest.approx(target, rel=1e-5)
    # beyond the largest eigenvalue's share: the top direction, as close as it gets
    q = matched_directions(covariance, gaussian, 0.9)
    assert float(q.T @ covariance @ q) / total == pytest.approx(16 / total, rel=1e-3)


def test_the_control_removes_the_share_of_variance_the_eraser_removes(tiny_bert, splits, leace):
    fit, _ = splits
    control = fit_matched_control(tiny_bert, fit, leace, seed=0)
    assert control.kind == "random" and control.layers == leace.layers
    assert control.rank == leace.rank
    assert "same share of variance" in control.describe()
    for layer in LAYERS:
        q = control.left[layer]
        assert torch.allclose(q.T @ q, torch.eye(control.rank), atol=1e-5)
        assert torch.equal(control.right[layer], q.T)
        # recorded at fitting, and measured again by hand on each arm's own stream
        assert leace.removed[layer] == pytest.approx(
            removed_by_hand(tiny_bert, fit, leace, layer), rel=1e-3
        )
        assert control.removed[layer] == pytest.approx(leace.removed[layer], rel=1e-4)
        by_hand = removed_by_hand(tiny_bert, fit, control, layer)
        assert by_hand == pytest.approx(leace.removed[layer], rel=1e-3), layer
    # seeded: the same draw again, another with another seed
    again = fit_matched_control(tiny_bert, fit, leace, seed=0)
    assert all(torch.equal(again.left[k], control.left[k]) for k in LAYERS)
    other = fit_matched_control(tiny_bert, fit, leace, seed=1)
    assert not torch.allclose(other.left[0].abs(), control.left[0].abs())


def test_the_removed_shares_survive_saving_and_an_older_file_has_none(
    tiny_bert, splits, leace, tmp_path
):
    loaded = LinearErasure.load(leace.save(tmp_path / "leace.safetensors"))
    assert loaded.removed == pytest.approx(leace.removed)
    older = LinearErasure(leace.kind, leace.concept, leace.left, leace.right, leace.bias)
    assert LinearErasure.load(older.save(tmp_path / "older.safetensors")).removed == {}
    with pytest.raises(NeuroplasticError, match="records no share of removed variance"):
        fit_matched_control(tiny_bert, splits[0], older, seed=0)


def test_a_run_from_before_the_disjoint_probes_still_reports_its_raw_aucs(tiny_run, tmp_path):
    import json
    import shutil

    from neuroplastic.report.run_report import write_report

    source, summary = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(source, copy)
    older = json.loads((copy / "summary.json").read_text())
    for arm in older["arms"].values():
        for entry in arm["stages"]:
            del entry["probes"]
    (copy / "summary.json").write_text(json.dumps(older))
    page = write_report(copy).read_text(encoding="utf-8")
    assert "concept arm: probe AUC per layer and stage" in page
    assert "This run predates the probes fitted apart" in page
    base = summary["arms"]["concept"]["stages"][0]["readable"]["1"]
    assert f"{base:.3f}" in page


def test_an_erasure_saves_to_the_same_bytes_every_time_and_reads_older_files(leace, tmp_path):
    from safetensors.torch import save

    # safetensors orders a multi-key metadata map differently from one map to the next.
    saved = {leace.save(tmp_path / f"{i}.safetensors").read_bytes() for i in range(8)}
    assert len(saved) == 1
    # A file written before the one metadata key: kind, concept and removed as keys of their own.
    tensors = {
        f"{layer}.{part}": getattr(leace, part)[layer].clone().contiguous()
        for layer in leace.layers
        for part in ("left", "right", "bias")
    }
    removed = json.dumps({str(k): v for k, v in sorted(leace.removed.items())})
    older = tmp_path / "older.safetensors"
    older.write_bytes(
        save(tensors, metadata={"kind": "leace", "concept": leace.concept, "removed": removed})
    )
    loaded = LinearErasure.load(older)
    assert (loaded.kind, loaded.concept) == ("leace", leace.concept)
    assert loaded.removed == pytest.approx(leace.removed)
    assert all(torch.equal(loaded.left[k], leace.left[k]) for k in leace.layers)

"""Relearning or learning anew: the naive arm, savings, and retraining without the concept."""

import math
from dataclasses import replace

import pytest
import torch
from kills import killed_then_resumed
from safetensors.torch import load_file
from tiny import tiny_config

import neuroplastic.experiment.pipeline as experiment
from neuroplastic.core.curves import area_between, savings
from neuroplastic.core.relearn import (
    concept_masked,
    concept_neutral_loss,
    concept_tag_ids,
    mentions,
    relearn_data,
    relearn_indices,
)
from neuroplastic.core.training import TokenClassifier, tagging_loss
from neuroplastic.data.concept import IGNORE_TAG, ConceptDataset
from neuroplastic.data.load import concept_labels
from neuroplastic.errors import NeuroplasticError
from neuroplastic.store.rundir import RunDir


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def encoded(corpus, tiny_bert):
    return ConceptDataset(
        corpus.train[:64], tiny_bert.tokenizer, concept_labels(corpus), corpus.tag_names
    )


def test_masked_loss_gets_no_gradient_from_concept_tokens(encoded, tiny_bert):
    loc = encoded.label_id("LOC")
    batch = encoded.collate([i for i in range(len(encoded)) if mentions(encoded, i, "LOC")][:8])
    concept_tagged = (batch.concept_labels == loc) & (batch.tag_labels != IGNORE_TAG)
    assert concept_tagged.sum() >= 4  # the planted batch has concept words to be blind to
    # Every concept word relabelled as the outside tag: a different target on those tokens.
    outside = encoded.tag_names.index("O")
    relabelled = replace(batch, tag_labels=batch.tag_labels.masked_fill(concept_tagged, outside))
    torch.manual_seed(0)
    module = TokenClassifier(tiny_bert, len(encoded.tag_names)).eval()

    def loss_and_grads(loss_fn, b):
        module.zero_grad()
        loss = loss_fn(module, b)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]

    masked = concept_masked(tagging_loss, loc)
    loss_a, grads_a = loss_and_grads(masked, batch)
    loss_b, grads_b = loss_and_grads(masked, relabelled)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))
    # The unmasked loss does see the change (the test can fail), and the masked one equals
    # the loss over the other tokens alone, computed by hand.
    assert not torch.equal(tagging_loss(module, batch), tagging_loss(module, relabelled))
    with torch.no_grad():
        logits = module(batch.tokens, batch.attention_mask)
        kept = (batch.tag_labels != IGNORE_TAG) & ~concept_tagged
        by_hand = torch.nn.functional.cross_entropy(logits[kept], batch.tag_labels[kept])
    assert torch.allclose(loss_a, by_hand, atol=1e-6)
    tiny_bert.reset_hooks(including_permanent=True)


def test_the_naive_base_loss_neither_teaches_nor_suppresses_the_concept(encoded, tiny_bert):
    """The concept's classes are out of the softmax: their head rows get exactly zero gradient
    (the masked loss alone pushes them down through every other token), and the loss equals a
    cross-entropy computed by hand over the other classes and the other tokens."""
    loc = encoded.label_id("LOC")
    tags = concept_tag_ids(encoded.tag_names, "LOC")
    assert sorted(encoded.tag_names[t] for t in tags) == ["B-LOC", "I-LOC"]
    batch = encoded.collate(list(range(16)))
    torch.manual_seed(0)
    module = TokenClassifier(tiny_bert, len(encoded.tag_names)).eval()

    def head_grads(loss_fn):
        module.zero_grad()
        loss = loss_fn(module, batch)
        loss.backward()
        return loss.detach(), module.head.weight.grad.clone(), module.head.bias.grad.clone()

    loss, weight, bias = head_grads(concept_neutral_loss(loc, tags))
    assert torch.count_nonzero(weight[tags]) == 0 and torch.count_nonzero(bias[tags]) == 0
    others = [t for t in range(len(encoded.tag_names)) if t not in tags]
    assert torch.count_nonzero(weight[others]) > 0  # the other classes are trained
    _, masked_weight, _ = head_grads(concept_masked(tagging_loss, loc))
    assert torch.count_nonzero(masked_weight[tags]) > 0  # the suppression this loss removes
    with torch.no_grad():
        logits = module(batch.tokens, batch.attention_mask)
        kept = (batch.tag_labels != IGNORE_TAG) & (batch.concept_labels != loc)
        # the other classes' logits alone, labels renumbered among them
        renumber = {old: new for new, old in enumerate(others)}
        targets = torch.tensor([renumber[int(t)] for t in batch.tag_labels[kept]])
        by_hand = torch.nn.functional.cross_entropy(logits[kept][:, others], targets)
    assert torch.allclose(loss, by_hand, atol=1e-6)
    tiny_bert.reset_hooks(including_permanent=True)


def test_retain_set_never_mentions_the_concept_and_the_subset_always_does(encoded):
    retain = relearn_data(encoded, tiny_config(relearn="retain"))
    assert 0 < len(retain) < len(encoded)
    loc = retain.label_id("LOC")
    assert all(loc not in e.concept_labels for e in retain.encoded)
    assert all("LOC" not in s.entity_labels for s in retain.sentences)
    expected = sum(not mentions(encoded, i, "LOC") for i in range(len(encoded)))
    assert len(retain) == expected

    few = relearn_indices(encoded, tiny_config(relearn_sentences=5))
    assert len(few) == 5 and all(mentions(encoded, i, "LOC") for i in few)
    assert few == relearn_indices(encoded, tiny_config(relearn_sentences=5))  # seeded
    assert few != relearn_indices(encoded, tiny_config(relearn_sentences=5, seed=1))
    assert relearn_data(encoded, tiny_config()) is encoded  # same: nothing chosen


def test_impossible_relearn_sets_are_refused_before_training(encoded):
    many = sum(mentions(encoded, i, "LOC") for i in range(len(encoded)))
    with pytest.raises(NeuroplasticError, match=rf"more sentences than the {many}"):
        relearn_indices(encoded, tiny_config(relearn_sentences=many + 1))
    all_loc = encoded.subset([i for i in range(len(encoded)) if mentions(encoded, i, "LOC")])
    with pytest.raises(NeuroplasticError, match="every one of the"):
        relearn_indices(all_loc, tiny_config(relearn="retain"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"naive": True, "rounds": 2}, "separate experiments"),
        ({"naive": True, "preempt": "gradient"}, "separate experiments"),
        ({"naive": True, "checkpoint": "x.safetensors"}, "cannot start from --checkpoint"),
        ({"naive": True, "task": "lm", "model": "tiny-gpt2"}, "needs --task ner"),
        ({"relearn": "masked", "task": "lm", "model": "tiny-gpt2"}, "needs --task ner"),
        ({"relearn": "retain", "relearn_sentences": 4}, "give one of them"),
        ({"relearn_sentences": -1}, "must be >= 0"),
        ({"relearn": "forget"}, "relearn must be one of"),
    ],
)
def test_settings_that_cannot_mean_anything_are_refused(settings, message):
    with pytest.raises(NeuroplasticError, match=message):
        tiny_config(**settings)


# -- savings, by hand --------------------------------------------------------------------------
RELEARNED = {"step": [0, 1, 2, 4, 8], "f1": [0.0, 0.5, 0.9, 0.95, 0.95]}


def test_savings_by_hand():
    naive = {"step": [0, 1, 2, 4, 8], "f1": [0.0, 0.1, 0.2, 0.5, 0.9]}
    result = savings(RELEARNED, naive, target=0.9, until=8)
    assert result["steps_relearned"] == 2 and result["steps_naive"] == 8
    assert result["savings"] == pytest.approx(1 - 2 / 8) and result["bound"] == "exact"
    # Gaps 0, .4, .7, .45, .05 at steps 0, 1, 2, 4, 8: trapezoids .2 + .55 + 1.15 + 1.0 = 2.9.
    assert result["area_between"] == pytest.approx(2.9 / 8)
    # Until step 2 only: (.2 + .55) / 2.
    assert area_between(RELEARNED, naive, until=2) == pytest.approx(0.375)


def test_savings_count_the_steps_to_a_recovery_that_lasts():
    """A relearner that crosses the target at once and dips below it again is back for good
    only after the dip: savings use that (the first crossing is kept beside it)."""
    dipping = {"step": [0, 1, 2, 4, 8], "f1": [0.0, 0.95, 0.5, 0.95, 0.95]}
    naive = {"step": [0, 1, 2, 4, 8], "f1": [0.0, 0.1, 0.2, 0.5, 0.9]}
    result = savings(dipping, naive, target=0.9, until=8)
    lasting = 2 + 2 * (0.9 - 0.5) / (0.95 - 0.5)
    assert result["steps_relearned"] == pytest.approx(lasting)
    assert result["savings"] == pytest.approx(1 - lasting / 8)
    assert result["first_crossing"]["steps_relearned"] == pytest.approx(0.9 / 0.95)
    first = savings(dipping, naive, target=0.9, until=8, lasting=False)
    assert first["savings"] == pytest.approx(1 - (0.9 / 0.95) / 8)


def test_a_naive_arm_that_never_learns_is_censored_to_a_lower_bound():
    naive = {"step": [0, 1, 2, 4, 8], "f1": [0.0, 0.1, 0.2, 0.5, 0.8]}
    result = savings(RELEARNED, naive, target=0.9, until=8)
    assert not result["naive_reached"] and result["steps_naive"] is None
    assert result["savings"] == pytest.approx(1 - 2 / 8) and result["bound"] == "lower"


def test_a_concept_arm_that_never_relearns_is_censored_to_an_upper_bound():
    """Not dropped: relearning took longer than the concept arm's 8 steps, the naive arm got
    there in 4 + 4 x (0.9 - 0.5) / (0.95 - 0.5) steps, so savings is below 1 - 8 / that."""
    never = {"step": [0, 4, 8], "f1": [0.0, 0.3, 0.5]}
    naive = {"step": [0, 4, 8], "f1": [0.0, 0.5, 0.95]}
    result = savings(never, naive, 0.9, 8)
    naive_steps = 4 + 4 * 0.4 / 0.45
    assert result["steps_relearned"] is None and result["relearn_budget"] == 8
    assert result["bound"] == "upper" and result["steps_naive"] == pytest.approx(naive_steps)
    assert result["savings"] == pytest.approx(1 - 8 / naive_steps)


def test_savings_is_undefined_when_neither_arm_got_there_or_there_was_nothing_to_learn():
    never = {"step": [0, 4, 8], "f1": [0.0, 0.3, 0.5]}
    assert savings(never, never, 0.9, 8)["savings"] is None
    assert savings(never, never, 0.9, 8)["why_none"] == "neither arm reached the target"
    naive = {"step": [0, 4, 8], "f1": [0.0, 0.5, 0.95]}
    knows = {"step": [0, 4, 8], "f1": [0.95, 0.95, 0.95]}
    assert savings(RELEARNED, knows, 0.9, 8)["savings"] is None
    # Relearning no faster than first learning: zero savings; slower: negative.
    same = savings(naive, naive, 0.9, 8)
    assert same["savings"] == pytest.approx(0.0) and same["area_between"] == pytest.approx(0)
    slower = savings(naive, RELEARNED, 0.9, 8)
    assert slower["savings"] < 0 and slower["area_between"] < 0


def test_area_between_curves_on_different_grids_interpolates():
    upper = {"step": [0, 10], "f1": [0.0, 1.0]}  # F1 = step / 10
    lower = {"step": [0, 5, 10], "f1": [0.0, 0.0, 0.0]}
    assert area_between(upper, lower, until=10) == pytest.approx(0.5)
    assert area_between(upper, lower, until=5) == pytest.approx(0.25)
    assert math.isnan(area_between(upper, {"step": [20, 30], "f1": [0, 0]}, until=40))


# -- the naive arm in a run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def naive_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("naive")
    return out, experiment.run_experiment(tiny_config(naive=True), out, progress=False, log=quiet)


def test_the_naive_arm_holds_the_concept_arms_neurons_from_its_own_base(naive_run):
    out, summary = naive_run
    run = RunDir(out)
    assert list(summary["arms"]) == ["concept", "random", "naive"]
    assert run.neurons("naive").neurons == run.neurons("concept").neurons
    naive_base = summary["savings"]["naive_base"]
    assert naive_base["concept_in_loss"] is False
    assert naive_base["steps"] == summary["base"]["steps"]  # the concept base's steps exactly
    # Its base is its own, not the concept arm's (every other arm shares that one).
    concept_stages = summary["arms"]["concept"]["stages"]
    naive_stages = summary["arms"]["naive"]["stages"]
    assert naive_stages[0]["f1"] == naive_base["f1"] != concept_stages[0]["f1"]
    assert summary["arms"]["random"]["stages"][0]["f1"] == concept_stages[0]["f1"]
    assert "recovery" not in summary["arms"]["naive"]  # it had nothing to recover
    assert summary["savings"]["target"] == pytest.approx(0.9 * concept_stages[0]["f1"]["LOC"])


def test_the_sweep_takes_savings_at_every_target_from_the_runs_curves(naive_run):
    """Each target's savings recomputed by hand from the run's metrics (each arm's round-1
    evaluations), and the naive base's other types against the concept base's."""
    from neuroplastic.core.curves import SAVINGS_TARGETS, steps_to_lasting_recovery
    from neuroplastic.experiment.sweep import run_measures

    out, summary = naive_run
    saved = run_measures(out)["savings"]
    assert set(saved["targets"]) == {str(share) for share in SAVINGS_TARGETS}
    metrics = RunDir(out).metrics()

    def curve(arm):
        rows = metrics[(metrics["arm"] == arm) & (metrics["step"] >= 0)].sort_values("step")
        return {"step": list(rows["step"].astype(float)), "f1": list(rows["f1_LOC"])}

    base = summary["arms"]["concept"]["stages"][0]["f1"]
    for share, result in saved["targets"].items():
        target = float(share) * base["LOC"]
        assert result["target"] == pytest.approx(target)
        for arm, key in (("concept", "steps_relearned"), ("naive", "steps_naive")):
            expected = steps_to_lasting_recovery(curve(arm), target)
            assert (result[key] is None) == math.isnan(expected)
            if result[key] is not None:
                assert result[key] == pytest.approx(expected)
    assert saved["savings"] == saved["targets"]["0.9"]["savings"]
    naive_base = summary["arms"]["naive"]["stages"][0]["f1"]
    assert set(saved["naive_minus_concept_base"]) == set(base) - {"LOC", "overall"}
    for entity, gap in saved["naive_minus_concept_base"].items():
        assert gap == pytest.approx(naive_base[entity] - base[entity])
    assert summary["savings"]["naive_base"]["concept_in_softmax"] is False


def test_the_naive_base_differs_from_the_concept_base_in_the_loss_alone(tmp_path, monkeypatch):
    """With the concept's tokens and classes put back in its loss, the naive arm is the concept
    arm to the bit: the same initial weights and head, batches, dropout, schedule and steps."""
    monkeypatch.setattr(experiment, "naive_base_loss", lambda setup: setup.loss_fn())
    summary = experiment.run_experiment(
        tiny_config(naive=True, save_checkpoints=True), tmp_path, progress=False, log=quiet
    )
    concept = load_file(tmp_path / "checkpoints" / "concept" / "base.safetensors")
    naive = load_file(tmp_path / "checkpoints" / "naive" / "base.safetensors")
    assert concept.keys() == naive.keys()
    assert all(torch.equal(concept[k], naive[k]) for k in concept)
    # Then the same neurons held on the same batches: every evaluation equal.
    arms = summary["arms"]
    strip = [
        {k: v for k, v in s.items() if k != "gap_to_control"} for s in arms["concept"]["stages"]
    ]
    assert arms["naive"]["stages"] == strip


def test_every_arm_holds_its_own_bases_probes_fixed(tmp_path, monkeypatch):
    """The naive arm fine-tunes a base of its own: its later stages score that base's probes,
    every other arm the concept base's. The probes each base marker keeps are those fitted by
    hand on that base's weights (kept with --save-checkpoints), on the run's validation halves;
    and each later stage is scored with its own arm's."""
    import json

    import neuroplastic.experiment.stages as stages
    from neuroplastic.core.probes import readings_and_probes
    from neuroplastic.experiment.pipeline import _setup
    from neuroplastic.store.checkpoint import Checkpointer, load_weights

    held = []
    real = stages.point_readings

    def spy(fitted, scored, concept_id, fixed=None, *args, **kwargs):
        held.append(fixed)
        return real(fitted, scored, concept_id, fixed, *args, **kwargs)

    monkeypatch.setattr(stages, "point_readings", spy)
    config = tiny_config(naive=True, save_checkpoints=True)
    summary = experiment.run_experiment(config, tmp_path / "run", progress=False, log=quiet)
    run = RunDir(tmp_path / "run")
    kept = {
        arm: json.loads(run.marker_path(arm, "base").read_text())[stages.FIXED_PROBES]
        for arm in ("concept", "naive")
    }
    setup = _setup(config, Checkpointer(RunDir(tmp_path / "scratch")), False, quiet)
    split = setup.readout_split
    for arm, record in kept.items():
        load_weights(setup.module, run.checkpoint_path(arm, "base"))
        setup.module.eval()
        _, by_hand = readings_and_probes(
            setup.model,
            setup.validation_data.subset(split.predict),
            setup.validation_data.subset(split.truth),
            "LOC",
            range(int(setup.model.cfg.n_layers)),
        )
        for point, per_layer in by_hand.items():
            for layer, probe in per_layer.items():
                assert record[point][str(layer)] == pytest.approx(
                    probe.direction.tolist(), rel=1e-4, abs=1e-6
                ), (arm, point, layer)
    assert kept["concept"] != kept["naive"]
    # each stage after a base scored the probes of its own arm's base (none at the bases)
    later = [fixed for fixed in held if fixed is not None]

    def which(fixed) -> str:
        (arm,) = [
            arm
            for arm, record in kept.items()
            if all(
                fixed[point][int(layer)].direction.tolist() == values
                for point, per_layer in record.items()
                for layer, values in per_layer.items()
            )
        ]
        return arm

    stages_after_base = {  # (every arm's stages start with its base, shared or its own)
        arm: len(data["stages"]) - 1 for arm, data in summary["arms"].items()
    }
    assert len(held) - len(later) == 2  # the two bases
    owners = [which(fixed) for fixed in later]
    assert owners.count("naive") == stages_after_base["naive"]
    assert owners.count("concept") == stages_after_base["concept"] + stages_after_base["random"]
    for data in summary["arms"].values():
        for stage in data["stages"]:
            assert {"resid_post_fixed", "mlp_out_fixed"} <= set(stage["probes"])


def test_a_base_that_kept_no_probes_gives_later_stages_no_fixed_readings(tmp_path, monkeypatch):
    """A base recorded before the probes were kept (here: its record emptied) gives its later
    stages no `_fixed` readings, never another stage's probes; the run goes on."""
    import neuroplastic.experiment.stages as stages

    real = stages._readability

    def forgetful(*args):
        readable, probes, _ = real(*args)
        return readable, probes, {}

    monkeypatch.setattr(stages, "_readability", forgetful)
    summary = experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    later = [s for d in summary["arms"].values() for s in d["stages"] if s["stage"] != "base"]
    assert len(later) == 6  # both arms' pruned and two retraining stages
    for stage in later:
        assert {"resid_post", "mlp_out"} <= set(stage["probes"])
        assert not {"resid_post_fixed", "mlp_out_fixed"} & set(stage["probes"]), stage["stage"]


@pytest.mark.slow  # kills and resumptions: several tiny runs
@pytest.mark.parametrize(
    "arm, stage, when",
    [
        ("naive", "base", "mid-training"),
        ("naive", "base", "after-weights"),
        ("naive", "retrain-1", "before"),
    ],
)
def test_a_killed_naive_run_resumes_exactly(naive_run, tmp_path, monkeypatch, arm, stage, when):
    _, expected = naive_run
    config = tiny_config(naive=True)
    assert killed_then_resumed(monkeypatch, tmp_path, config, arm, stage, when) == expected


# -- retraining without the concept, in a run --------------------------------------------------
@pytest.mark.parametrize("relearn", ["masked", "retain"])
def test_both_arms_retrain_the_same_way_and_resume_exactly(tmp_path, monkeypatch, relearn):
    config = tiny_config(relearn=relearn)
    seen = []
    real = experiment.Trainer.__init__

    def record(self, module, loss_fn, dataset, *args, **kwargs):
        seen.append((loss_fn, len(dataset)))
        real(self, module, loss_fn, dataset, *args, **kwargs)

    monkeypatch.setattr(experiment.Trainer, "__init__", record)
    expected = experiment.run_experiment(config, tmp_path / "whole", progress=False, log=quiet)
    base, concept, control = seen[:3]
    assert base[0] is experiment.tagging_loss  # the base learns the concept as always
    assert concept[1] == control[1] == expected["relearn"]["sentences"]
    if relearn == "retain":
        assert expected["relearn"]["mention_concept"] == 0
        assert 0 < expected["relearn"]["sentences"] < expected["data"]["train_sentences"]
        assert concept[0] is control[0] is experiment.tagging_loss
    else:
        assert expected["relearn"]["sentences"] == expected["data"]["train_sentences"]
        assert concept[0] is not experiment.tagging_loss and control[0] is not base[0]
    monkeypatch.undo()
    killed = tmp_path / "killed"
    resumed = killed_then_resumed(
        monkeypatch, killed, config, "random", "retrain-1", "mid-training"
    )
    assert resumed == expected


def test_a_default_run_says_nothing_of_relearning(tiny_run):
    _, summary = tiny_run
    assert "relearn" not in summary and "savings" not in summary


# -- where it shows ----------------------------------------------------------------------------
def test_the_report_shows_relearning_beside_learning(naive_run, tmp_path):
    from neuroplastic.report.run_report import write_report

    out, summary = naive_run
    page = write_report(out, tmp_path / "report.html").read_text()
    assert "Relearning or learning?" in page
    naive_f1 = summary["savings"]["naive_base"]["f1"]["LOC"]
    assert f"The naive base reached LOC F1 {naive_f1:.3f}" in page


def test_the_sweep_carries_savings_and_leaves_the_naive_arm_out_of_recovery(naive_run, tmp_path):
    from neuroplastic.experiment.sweep import aggregate, run_measures
    from neuroplastic.report.sweep_report import build_sweep_report

    out, summary = naive_run
    measures = run_measures(out)
    assert "naive" not in measures["arms"]
    assert measures["savings"]["target"] == summary["savings"]["target"]
    assert measures["savings"]["curve"]["step"][0] == 0.0
    cell = aggregate([measures, {**measures, "seed": 1}])
    assert cell["savings"]["seeds"] == [0, 1]
    sweep = {"config": summary["config"], "seeds": [0, 1], "measures": {}, "cells": {"h": cell}}
    page = build_sweep_report(sweep).write(tmp_path / "sweep.html").read_text()
    assert "Relearning or learning?" in page


def test_savings_across_seeds_counts_a_censored_seed_at_its_bound():
    from neuroplastic.experiment.sweep import savings_across_seeds

    def run(seed, value, bound, naive_steps):
        return {
            "seed": seed,
            "savings": {
                "savings": value, "bound": bound, "steps_relearned": 2.0,
                "steps_naive": naive_steps, "naive_reached": naive_steps is not None,
                "naive_budget": 90.0, "area_between": 0.2, "naive_base_f1": 0.0,
                "first_stage_f1": 0.5,
                "curve": {"step": [0.0], "f1": [0.0]},
            },
        }  # fmt: skip

    # Every target aggregated as the headline one, with how many seeds reached it; the naive
    # base's other types paired against the concept base's.
    seeds = [run(0, 0.5, "exact", 4.0), run(1, 0.7, "exact", 6.0)]
    for seed, gap in zip(seeds, (-0.01, 0.03), strict=True):
        seed["savings"]["targets"] = {"0.5": dict(seed["savings"]), "0.9": dict(seed["savings"])}
        seed["savings"]["targets"]["0.9"].update(savings=None, bound=None, steps_naive=None,
                                                 naive_reached=False, why_none="x")  # fmt: skip
        seed["savings"]["naive_minus_concept_base"] = {"PER": gap}
    targets = savings_across_seeds(seeds)
    assert targets["targets"]["0.5"]["savings"]["mean"] == pytest.approx(0.6)
    assert targets["targets_reached"]["0.9"] == {"concept": 2, "naive": 0, "of": 2}
    assert targets["naive_minus_concept_base"]["PER"]["mean"] == pytest.approx(0.01)
    assert "equivalence" in targets["naive_minus_concept_base"]["PER"]

    across = savings_across_seeds(
        [run(0, 0.5, "exact", 4.0), run(1, 0.7, "exact", 6.0), run(2, 0.6, "lower", None)]
    )
    assert across["savings"]["censored"] == 1 and across["savings"]["mean"] is None
    assert across["savings"]["lower_bound"] == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert across["steps_naive"]["lower_bound"] == pytest.approx((4 + 6 + 90) / 3)
    exact = savings_across_seeds([run(0, 0.5, "exact", 4.0), run(1, 0.7, "exact", 6.0)])
    assert exact["savings"]["mean"] == pytest.approx(0.6) and exact["savings"]["censored"] == 0
    # A seed whose concept arm never relearned: an upper bound on its savings, never dropped;
    # beside a lower-bounded seed, nothing bounds the mean.
    slow = run(3, -0.5, "upper", 60.0)
    slow["savings"].update(steps_relearned=None, relearn_budget=90.0)
    upper = savings_across_seeds([run(0, 0.5, "exact", 4.0), slow])
    assert upper["savings"]["upper_bound"] == pytest.approx((0.5 - 0.5) / 2)
    assert upper["savings"]["censored_above"] == 1 and upper["savings"]["mean"] is None
    assert upper["steps_relearned"]["lower_bound"] == pytest.approx((2 + 90) / 2)
    both = savings_across_seeds([run(2, 0.6, "lower", None), slow])
    assert both["savings"]["method"] == "undetermined"
    # A seed where neither arm got there bounds nothing: undetermined too, never left out.
    lost = run(4, None, None, None)
    lost["savings"].update(
        steps_relearned=None, why_none=savings(RELEARNED, RELEARNED, 2, 8)["why_none"]
    )
    undetermined = savings_across_seeds(
        [run(0, 0.5, "exact", 4.0), run(1, 0.7, "exact", 6.0), lost]
    )
    assert undetermined["savings"]["method"] == "undetermined"
    assert undetermined["savings"]["undetermined"] == 1


@pytest.mark.slow  # the embedded pretrained model, two short fine-tunes
def test_a_base_fine_tuned_without_the_concept_never_tags_it(embedded_model, corpus):
    """The naive base's loss, on the pretrained model: the same fine-tune learns LOC with the
    concept in the loss and leaves it at zero F1 without, while the other types are learned."""
    from neuroplastic.core.training import TrainConfig, Trainer, evaluate

    labels = concept_labels(corpus)
    encode = {"tokenizer": embedded_model.tokenizer, "label_names": labels}
    train = ConceptDataset(corpus.train[:200], tag_names=corpus.tag_names, **encode)
    validation = ConceptDataset(corpus.validation[:60], tag_names=corpus.tag_names, **encode)
    initial = {k: v.detach().clone() for k, v in embedded_model.named_parameters()}
    scores = {}
    for name, loss_fn in (("taught", tagging_loss), ("naive", None)):
        with torch.no_grad():
            for key, parameter in embedded_model.named_parameters():
                parameter.copy_(initial[key])
        torch.manual_seed(0)
        module = TokenClassifier(embedded_model, len(corpus.tag_names))
        loss_fn = loss_fn or concept_neutral_loss(
            train.label_id("LOC"), concept_tag_ids(train.tag_names, "LOC")
        )
        config = TrainConfig(learning_rate=3e-4, batch_size=16)
        Trainer(module, loss_fn, train, 30, config, seed=0).run(30, progress=False)
        scores[name] = evaluate(module, validation, "ner", "LOC", progress=False).scores["f1"]
    with torch.no_grad():
        for key, parameter in embedded_model.named_parameters():
            parameter.copy_(initial[key])
    assert scores["taught"]["LOC"] > 0.5
    assert scores["naive"]["LOC"] < 0.05  # never tagged: chance for an untaught type is 0
    assert scores["naive"]["PER"] > 0.3  # while the types in its loss are learned

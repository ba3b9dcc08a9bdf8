"""The predictors of where the concept goes (neuroplastic.analysis.predict), wired into the
experiment, the report and the sweep (issue 10, part 2): computed for the concept arm at the pruned
stage, saved with it and listed in the manifest, without changing training; evaluated into
summary.json; shown in the run's report and, across seeds, in the sweep's."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from kills import SimulatedKill, kill_at
from safetensors.torch import load_file
from scipy import stats
from tiny import quiet, tiny_config

import neuroplastic.experiment.pipeline as experiment
import neuroplastic.experiment.predicting as predicting
import neuroplastic.experiment.sweep as sweep
from neuroplastic.analysis.arm_run import ArmRun
from neuroplastic.analysis.predict import PREDICTORS, Predictions, random_score, survivors
from neuroplastic.core.halves import split_probe
from neuroplastic.core.ranking import Ranking
from neuroplastic.errors import NeuroplasticError
from neuroplastic.report.run_report import build_report
from neuroplastic.report.sweep_report import build_sweep_report
from neuroplastic.store.rundir import RunDir

PREDICTIONS = "stages/concept/pruned/predictions.safetensors"


@pytest.fixture
def predicted(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def unpredicted(tmp_path_factory):
    """The same run on the code path without predictions (no arm predicted)."""
    out = tmp_path_factory.mktemp("unpredicted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predicting, "PREDICTED_ARMS", ())  # where _predicted looks it up
        summary = experiment.run_experiment(tiny_config(), out, progress=False, log=quiet)
    return out, summary


def stage_files(out):
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted((out / "stages").rglob("*.*"))
        if p.name not in ("predictions.safetensors", "causal.json")
    }


def test_predicting_changes_no_training_result(predicted, unpredicted):
    (out, summary), (plain_out, plain) = predicted, unpredicted
    assert "prediction" not in plain and not (plain_out / PREDICTIONS).exists()
    # Every loss, F1 and stage file (statistics, rankings, top tokens) to the byte.
    assert {k: v for k, v in summary.items() if k not in ("prediction", "causal")} == plain
    assert (out / "metrics.jsonl").read_bytes() == (plain_out / "metrics.jsonl").read_bytes()
    assert stage_files(out) == stage_files(plain_out)


def test_predictions_are_saved_with_the_concept_arms_pruned_stage(predicted):
    out, _ = predicted
    run = RunDir(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert PREDICTIONS in manifest
    # The control is predicted too (its null), with its own pruned stage.
    control = "stages/random/pruned/predictions.safetensors"
    assert control in manifest and set(load_file(str(out / control))) == set(PREDICTORS)
    tensors = load_file(str(out / PREDICTIONS))
    # similarity needs a base top token labelled LOC; the tiny run has some
    assert set(tensors) == set(PREDICTORS)
    removed = run.neurons("concept")
    # Every predictor reads the predict half of the probe sentences only.
    base, pruned = (predict_half(run, "concept", stage) for stage in ("base", "pruned"))
    at_base, at_pruned = survivors(base.alive, removed), survivors(pruned.alive, removed)
    for name in ("saliency_base", "coactivation"):
        assert torch.equal(~tensors[name].isnan(), at_base), name
    # Similarity reads the base top tokens taken on predict-half sentences: a neuron all of
    # whose top tokens come from the other half has nothing to read (NaN, ranked last).
    split = split_probe(len(run.sentences()), tiny_config().seed)
    readable = split.in_predict(run.stage("concept", "base").stats.top_sentence).any(-1)
    assert torch.equal(~tensors["similarity"].isnan(), at_base & readable)
    assert readable[at_base].float().mean() > 0.5  # most neurons keep something to read
    for name in ("saliency_pruned", "gradient", "random"):
        assert torch.equal(~tensors[name].isnan(), at_pruned), name
    # The ones read from saved artifacts, recomputed from them here.
    assert torch.equal(tensors["saliency_base"][at_base], base.saliency[at_base].double())
    assert torch.equal(tensors["saliency_pruned"][at_pruned], pruned.saliency[at_pruned].double())
    expected = random_score(at_pruned, seed=tiny_config().seed)
    torch.testing.assert_close(tensors["random"], expected, rtol=0, atol=0, equal_nan=True)
    # Attribution is non-negative; co-activation is an |r|.
    assert (tensors["gradient"][at_pruned] >= 0).all()
    assert (tensors["coactivation"][at_base] >= 0).all()
    assert (tensors["coactivation"][at_base] <= 1).all()


def predict_half(run, arm, stage):
    return half_ranking(run, arm, stage, "predict")


def truth_half(run, arm, stage):
    return half_ranking(run, arm, stage, "truth")


def half_ranking(run, arm, stage, half):
    return Ranking.from_stats(run.stage_halves(arm, stage)[half], "LOC", tiny_config().method)


def test_the_halves_split_the_probe_sentences_and_merge_into_the_stage(predicted, tmp_path):
    out, _ = predicted
    run = RunDir(out)
    split = split_probe(len(run.sentences()), tiny_config().seed)
    assert set(split.predict).isdisjoint(split.truth)
    assert sorted(split.predict + split.truth) == list(range(len(run.sentences())))
    assert split == split_probe(len(run.sentences()), tiny_config().seed)  # the same on resume
    assert split != split_probe(len(run.sentences()), tiny_config().seed + 1)
    for stage in ("base", "pruned", "retrain-2"):
        full = run.stage("concept", stage).stats
        halves = run.stage_halves("concept", stage)
        assert torch.equal(halves["predict"].count + halves["truth"].count, full.count)
        torch.testing.assert_close(halves["predict"].sum + halves["truth"].sum, full.sum)
        # each half's token count is its sentences' (the statistics are per sentence)
        assert 0 < int(halves["predict"].count.sum()) < int(full.count.sum())
    # By hand from the run's own encoding of its probe sentences: the predict half counts the
    # tokens of each label in its sentences, and its top tokens come from them alone.
    from neuroplastic.config import ExperimentConfig
    from neuroplastic.experiment.pipeline import _setup
    from neuroplastic.store.checkpoint import Checkpointer

    setup = _setup(ExperimentConfig.load(run.config_path), Checkpointer(RunDir(tmp_path / "s")),
                   False, quiet)  # fmt: skip
    tokens = setup.model.tokenizer.convert_ids_to_tokens
    assert [tokens(e.token_ids) for e in setup.probe_data.encoded] == run.sentences()
    for half, sentences in (("predict", split.predict), ("truth", split.truth)):
        stats = run.stage_halves("concept", "base")[half]
        counts = torch.zeros_like(stats.count)
        for i in sentences:
            labels = torch.tensor(setup.probe_data.encoded[i].concept_labels)
            counts += torch.bincount(labels[labels >= 0], minlength=len(counts))
        assert torch.equal(stats.count, counts)
        assert set(stats.top_sentence.unique().tolist()) <= set(sentences)


def hand_auc(scores, positive):
    """Pairwise: P(positive scores above negative), ties one half."""
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_the_summary_evaluates_every_predictor_against_what_happened(predicted):
    out, summary = predicted
    run = RunDir(out)
    every = pd.DataFrame(summary["prediction"])
    assert set(every["arm"]) == {"concept", "random"}  # the control's numbers: the null
    assert set(every["population"]) == {"paired"}  # both judged on the same neurons
    rows = every[every["arm"] == "concept"]
    assert rows[["predictor", "truth"]].apply(tuple, axis=1).tolist() == [
        (p, t) for p in PREDICTORS for t in ("gain", "entered", "last_top")
    ]
    # The "gain" truth by hand: the top 1% (here 1) of candidates by positive saliency gain.
    arm = ArmRun.load(run, "concept")
    # The truths read the other half of the probe sentences, which no predictor reads.
    pruned, last = (truth_half(run, "concept", stage) for stage in ("pruned", "retrain-2"))
    assert not torch.equal(pruned.scores, arm.stages["pruned"].ranking.scores)
    # Both arms are judged on the same neurons: alive at both stages in each arm (on the truth
    # half) and removed in neither; saliency is re-ranked among them at each stage.
    control = ArmRun.load(run, "random")
    control_pruned, control_last = (truth_half(run, "random", s) for s in ("pruned", "retrain-2"))
    candidates = (
        survivors(pruned.alive & last.alive, arm.ablated)
        & survivors(control_pruned.alive & control_last.alive, control.ablated)
    ).numpy()

    def saliency_among(ranking):
        ranks = stats.rankdata(-ranking.scores.double().numpy()[candidates], "average")
        return 1 - (ranks - 1) / (candidates.sum() - 1)

    gain = saliency_among(last) - saliency_among(pruned)
    n_top = max(1, round(0.01 * candidates.sum()))
    positive = gain >= np.sort(gain)[::-1][n_top - 1] - 1e-6
    positive &= gain > 0
    scores = Predictions.load(out / PREDICTIONS).scores
    for name in PREDICTORS:
        values = np.nan_to_num(scores[name].numpy()[candidates], nan=-np.inf)
        row = rows[(rows["predictor"] == name) & (rows["truth"] == "gain")].iloc[0]
        assert row["n_candidates"] == candidates.sum() < len(arm.ablated.mask().flatten())
        assert row["n_positive"] == positive.sum() == row["k"]
        assert row["base_rate"] == pytest.approx(positive.sum() / candidates.sum())
        assert row["auc"] == pytest.approx(hand_auc(values, positive))
    # No NaN in the file: undefined measures are null (valid JSON, and equal after a resume).
    assert "NaN" not in (out / "summary.json").read_text()


@pytest.mark.slow  # kills and resumptions: several runs each
@pytest.mark.parametrize(
    "arm, stage, when",
    [
        ("concept", "pruned", "after-predictions"),  # saved, but the stage not marked done
        ("concept", "retrain-1", "before"),  # the pruned stage done: its predictions kept
    ],
)
def test_a_resumed_run_has_the_same_predictions(predicted, tmp_path, monkeypatch, arm, stage, when):
    out, expected = predicted
    real_save = experiment.Checkpointer.save

    def before(event):
        if (event.arm, event.stage, event.moment, when) == (arm, stage, "trained", "before"):
            raise SimulatedKill

    def save(self, arm_, stage_, *args, **kwargs):
        if (arm_, stage_, when) == (arm, stage, "after-predictions"):
            assert (tmp_path / PREDICTIONS).is_file()
            raise SimulatedKill
        return real_save(self, arm_, stage_, *args, **kwargs)

    monkeypatch.setattr(experiment.Checkpointer, "save", save)
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(
            tiny_config(), tmp_path, progress=False, log=quiet, on_stage=before
        )
    monkeypatch.undo()
    resumed = experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet)
    assert resumed == expected
    assert (tmp_path / PREDICTIONS).read_bytes() == (out / PREDICTIONS).read_bytes()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == json.loads((out / "manifest.json").read_text())


def test_the_report_shows_the_prediction_with_its_chance_levels(predicted):
    out, summary = predicted
    html = build_report(RunDir(out), similarity="none").to_html()
    assert "<h2>Predicting the new home</h2>" in html
    gain = [r for r in summary["prediction"] if r["truth"] == "gain"]
    assert f"chance: AUC 0.5, precision {gain[0]['base_rate']:.3f}" in html
    for row in gain:
        assert f"<td>{row['auc']:.3f}</td>" in html
    assert "one seed&#x27;s description, not an estimate" in html


def test_a_run_without_predictions_has_no_prediction_section(unpredicted):
    out, _ = unpredicted
    html = build_report(RunDir(out), similarity="none").to_html()
    assert "Predicting the new home" not in html


def per_seed_run(seed, aucs, precisions, base_rate=0.25):
    """What run_measures gives for a run: its summary's prediction rows."""
    rows = []
    for name, auc, precision in zip(("gradient", "random"), aucs, precisions, strict=True):
        for truth in ("gain", "entered"):
            rows.append(
                {
                    "arm": "concept", "predictor": name, "truth": truth, "auc": auc,
                    "precision_at_k": precision, "k": 2, "n_candidates": 8, "n_positive": 2,
                    "n_unscored": 0, "base_rate": base_rate,
                }
            )  # fmt: skip
    rows[1] = {**rows[1], "auc": None, "precision_at_k": None, "n_positive": 0}  # no positive
    return {"seed": seed, "arms": {}, "prediction": rows}


def test_the_sweep_gives_each_predictor_a_mean_and_interval_across_seeds():
    runs = [
        per_seed_run(0, (0.9, 0.5), (1.0, 0.0)),
        per_seed_run(1, (0.7, 0.4), (0.5, 0.5)),
        per_seed_run(2, (0.8, 0.6), (0.5, 0.0)),
    ]
    rows = {
        (r["predictor"], r["truth"], r["measure"]): r for r in sweep.prediction_across_seeds(runs)
    }
    auc = rows["gradient", "gain", "auc"]
    half = stats.t.ppf(0.975, 2) * np.std([0.9, 0.7, 0.8], ddof=1) / math.sqrt(3)
    assert (auc["n_seeds"], auc["missing"]) == (3, 0)
    assert auc["mean"] == pytest.approx(0.8)
    # The t-interval would end above 1, outside an AUC's range: the seeds' range instead.
    assert 0.8 + half > 1
    assert (auc["ci_low"], auc["ci_high"]) == pytest.approx((0.7, 0.9))
    assert auc["method"] == "seed range"
    precision = rows["gradient", "gain", "precision_at_k"]
    spread = stats.t.ppf(0.975, 2) * np.std([1.0, 0.5, 0.5], ddof=1) / math.sqrt(3)
    assert 2 / 3 + spread > 1 and precision["method"] == "seed range"
    assert (precision["ci_low"], precision["ci_high"]) == (0.5, 1.0)
    lift = rows["random", "gain", "precision_lift"]
    assert lift["mean"] == pytest.approx(1 / 6 - 0.25)
    # The seed without positives for gradient/entered is missing, not a zero.
    entered = rows["gradient", "entered", "auc"]
    assert (entered["n_seeds"], entered["missing"]) == (0, 3)
    assert entered["mean"] is None and entered["ci_low"] is None
    assert rows["random", "entered", "auc"]["n_seeds"] == 3
    json.dumps(list(rows.values()), allow_nan=False)  # valid JSON: None, never NaN


def test_the_sweep_report_tables_and_plots_the_prediction(predicted):
    runs = [per_seed_run(s, (0.9 - s / 10, 0.5), (1.0, 0.0)) for s in range(3)]
    cell = {"prediction": sweep.prediction_across_seeds(runs)}
    result = {
        "config": json.loads((predicted[0] / "config.json").read_text()),
        "seeds": [0, 1, 2], "modes": ["hold"], "methods": ["probeless"],
        "measures": {}, "cells": {},
    }  # fmt: skip
    page = build_sweep_report(result)
    from neuroplastic.report.sweep_report import _prediction

    _prediction(page, cell, "LOC")
    html = page.to_html()
    assert "0.8 [" in html  # gradient, gain: mean 0.8 with its interval
    assert "n/a (n/a in 3 of 3 seeds)" in html
    assert "Chance: AUC 0.5, precision lift 0." in html
    assert html.count('class="np-plot"') == 1
    assert _prediction(page, {}, "LOC") is None  # a cell without predictions: nothing


@pytest.mark.slow  # kills and resumptions: several runs each
@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_damaged_predictions_of_a_killed_run_are_computed_again(
    predicted, tmp_path, monkeypatch, how
):
    """Killed before the concept arm's retrain-1 is done: the base and pruned weights are kept,
    so a damaged predictions file is computed again from them, to the byte."""
    out, expected = predicted
    kill = kill_at(monkeypatch, tmp_path, "concept", "retrain-1", "before")
    with pytest.raises(SimulatedKill):
        experiment.run_experiment(tiny_config(), tmp_path, progress=False, log=quiet, on_stage=kill)
    monkeypatch.undo()
    path = tmp_path / PREDICTIONS
    data = path.read_bytes()
    damaged = data[: len(data) // 2] if how == "truncated" else bytes(len(data))
    path.write_bytes(damaged)
    warnings = []
    resumed = experiment.run_experiment(
        tiny_config(), tmp_path, progress=False, log=quiet, warn=warnings.append
    )
    assert len(warnings) == 1 and warnings[0].startswith(f"{path} is corrupt or truncated (")
    assert warnings[0].endswith(
        "); recomputing stage pruned of the concept arm from state/concept/pruned.safetensors"
    )
    assert path.read_bytes() == (out / PREDICTIONS).read_bytes()
    assert resumed == expected


def test_damaged_predictions_of_a_finished_run_are_refused_with_what_to_do(predicted, tmp_path):
    """A complete run keeps no weights: the file cannot be recomputed, and deleting it would
    lose the evaluation on the next rerun. The refusal says so, and changes nothing."""
    out, expected = predicted
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = copy / PREDICTIONS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(NeuroplasticError, match=r"predictions.safetensors is corrupt") as error:
        experiment.run_experiment(tiny_config(), copy, progress=False, log=quiet)
    assert "kept in summary.json ('prediction')" in str(error.value)
    assert "Restore the file, or rerun into a new --out" in str(error.value)
    assert json.loads((copy / "summary.json").read_text()) == expected


def test_the_causal_truth_is_taken_in_the_retrained_model_and_reported(predicted):
    out, summary = predicted
    run = RunDir(out)
    record = summary["causal"]["concept"]
    assert set(summary["causal"]) == {"concept"}  # the control has nothing taken over
    assert list(record["lost"]) == [*PREDICTORS, "gainers", "last_top", "matched_random"]
    # The score it starts from is the last stage's own evaluation (same model, same hold).
    last = next(e for e in summary["arms"]["concept"]["stages"] if e["stage"] == "retrain-2")
    assert record["score"] == pytest.approx(last["f1"]["LOC"])
    # k is the truth's size: the top 1% of the truth half's candidates.
    pruned, final = (truth_half(run, "concept", s) for s in ("pruned", "retrain-2"))
    n = int(survivors(pruned.alive & final.alive, run.neurons("concept")).sum())
    assert record["k"] == max(1, round(0.01 * n))
    html = build_report(run, similarity="none").to_html()
    assert "Causal truth, concept arm" in html
    for name, value in record["lost"].items():
        assert f"<td>{name}</td>" in html and f"<td>{value:+.3f}</td>" in html
    # every other type's loss per set, beside the concept's: is the set the concept's?
    assert set(record["others_lost"]["gradient"]) == {"PER", "ORG", "MISC"}
    assert "F1 lost, mean</th>" in html
